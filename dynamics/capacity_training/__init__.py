"""Adam training of associative memories (SPEC §7, full batch) and of one-layer transformers (SPEC §11, fresh
batches), batched over many models of one shape."""
from dynamics.capacity_training.adam import BatchedAdam
from dynamics.capacity_training.config import MemoryTrainConfig
from dynamics.capacity_training.trainer import BatchRun, train_batch, train_one
from dynamics.capacity_training.transformer import (TransformerRun, TransformerTrainConfig, train_transformer,
                                                    train_transformers)

__all__ = ["BatchedAdam", "MemoryTrainConfig", "BatchRun", "train_batch", "train_one", "TransformerRun",
           "TransformerTrainConfig", "train_transformer", "train_transformers"]
