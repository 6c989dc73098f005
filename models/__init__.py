"""The task and its sampler, model 1 (linear attention) with its exact population loss, and model 2 (softmax head).

Names load on first use (``from models import TaskConfig`` imports models.task only), so the command lines'
``--help`` does not import torch.
"""
from common.lazy import lazy_exports

_LAZY = {
    "INIT_KINDS": "linear", "Layout": "linear", "compress": "linear", "expand": "linear", "init_linear": "linear",
    "layout_of": "linear", "sequence_logits": "linear", "AlphaRange": "linear", "FLOW_ALPHA": "linear",
    "QUADRATURE_ALPHA": "linear", "init_entries": "linear",
    "LinearAttentionModel": "modules", "SoftmaxAttentionModel": "modules",
    "PopulationObjective": "population", "EvalSet": "population",
    "Distribution": "weights",
    "Batch": "sampler", "TaskSampler": "sampler",
    "FACT_KINDS": "task", "Task": "task", "TaskConfig": "task", "load_fact_table": "task", "make_task": "task",
    "zipf": "task",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, globals(), _LAZY)
