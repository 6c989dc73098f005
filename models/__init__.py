"""The task and its sampler, model 1 (linear attention) with its exact population loss, and model 2 (softmax head)."""
from .linear import INIT_KINDS, Layout, compress, expand, init_linear, layout_of, sequence_logits
from .modules import LinearAttentionModel, SoftmaxAttentionModel
from .population import PopulationObjective
from .sampler import Batch, TaskSampler
from .task import FACT_KINDS, Task, TaskConfig, load_fact_table, make_task, zipf

__all__ = ["FACT_KINDS", "INIT_KINDS", "Layout", "PopulationObjective", "Task", "TaskConfig",
           "compress", "expand", "init_linear", "layout_of", "load_fact_table", "make_task",
           "sequence_logits", "zipf", "Batch", "TaskSampler", "LinearAttentionModel", "SoftmaxAttentionModel"]
