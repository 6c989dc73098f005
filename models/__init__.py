"""The task, model 1 (linear attention) and its exact population loss."""
from .errors import ConfigError
from .linear import INIT_KINDS, Layout, compress, expand, init_linear, layout_of, sequence_logits
from .population import PopulationObjective
from .task import FACT_KINDS, Task, TaskConfig, load_fact_table, make_task, zipf
from .sampler import Batch, TaskSampler  # noqa: E402  (issue 4)
from .modules import LinearAttentionModel, SoftmaxAttentionModel  # noqa: E402  (issue 4)

__all__ = ["ConfigError", "FACT_KINDS", "INIT_KINDS", "Layout", "PopulationObjective", "Task", "TaskConfig",
           "compress", "expand", "init_linear", "layout_of", "load_fact_table", "make_task",
           "sequence_logits", "zipf", "Batch", "TaskSampler", "LinearAttentionModel", "SoftmaxAttentionModel"]
