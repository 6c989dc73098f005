"""Associative memories over random embeddings on the sphere (SPEC §7-8): instances, models, metrics,
constructions."""
from models.memory.config import MEMORY_KINDS, TARGET_KINDS, MemoryConfig, parameter_count
from models.memory.embeddings import instance, sphere, target_map
from models.memory.metrics import (ACCURACY_TARGET, accuracy, correct_count, logits, loss, loss_and_grad,
                                   needed_count)
from models.memory.models import MODELS, LinearMemory, MLPMemory, stack_params

__all__ = ["MEMORY_KINDS", "TARGET_KINDS", "MemoryConfig", "parameter_count", "instance", "sphere", "target_map",
           "ACCURACY_TARGET", "accuracy", "correct_count", "needed_count", "logits", "loss", "loss_and_grad",
           "MODELS", "LinearMemory", "MLPMemory", "stack_params"]
