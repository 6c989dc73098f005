"""Full-batch Adam training of associative memories (SPEC §7), batched over many memories of one shape."""
from dynamics.capacity_training.adam import BatchedAdam
from dynamics.capacity_training.config import MemoryTrainConfig
from dynamics.capacity_training.trainer import BatchRun, train_batch, train_one

__all__ = ["BatchedAdam", "MemoryTrainConfig", "BatchRun", "train_batch", "train_one"]
