"""The task and its sampler, model 1 (linear attention) with its exact population loss, and model 2 (softmax head).

Names load on first use (``from models import TaskConfig`` imports models.task only), so the command lines'
``--help`` does not import torch.
"""
import importlib
import os

_LAZY = {
    "INIT_KINDS": "linear", "Layout": "linear", "compress": "linear", "expand": "linear", "init_linear": "linear",
    "layout_of": "linear", "sequence_logits": "linear",
    "LinearAttentionModel": "modules", "SoftmaxAttentionModel": "modules",
    "PopulationObjective": "population", "EvalSet": "population",
    "Distribution": "weights",
    "Batch": "sampler", "TaskSampler": "sampler",
    "FACT_KINDS": "task", "Task": "task", "TaskConfig": "task", "load_fact_table": "task", "make_task": "task",
    "zipf": "task",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    elif os.path.exists(os.path.join(os.path.dirname(__file__), f"{name}.py")):  # models.population etc.
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
