"""Training of models 1 and 2 on sampled batches or the population loss (GD, SGD, Adam), one stage or many.

    from dynamics.training import TrainConfig, train
    run = train(TrainConfig(task=TaskConfig(S=16, R=4, D=8), optimizer="sgd", steps=1000))
    run.history["loss"], run.to_dataframe()

Modules: ``config`` (TrainConfig, resolve_device), ``evaluation`` (HeldOutEvaluator, EvalSchedule), ``base``
(the Trainer base class whose ``run`` is every trainer's loop; TrainResult), ``sampled`` (SampledTrainer: SGD and
Adam on sampled batches), ``gd`` (GDTrainer: GD on the exact population loss of model 1) and ``staged`` (train,
train_schedule, ScheduleResult). The pairing of a model-1 run with the exact flow is
:mod:`analysis.results.pairing`'s. Every name loads on first use (torch only then).
"""
from common.lazy import lazy_exports

_LAZY = {
    "LR_MAX": "config", "MAX_THREADS": "config", "TrainConfig": "config", "resolve_device": "config",
    "EvalSchedule": "evaluation", "HeldOutEvaluator": "evaluation",
    "DIVERGENCE_FACTOR": "base", "HISTORY_COLUMNS": "base", "Leg": "base", "StageOutcome": "base", "Trainer": "base",
    "TrainResult": "base",
    "SampledTrainer": "sampled",
    "GDTrainer": "gd",
    "ScheduleResult": "staged", "make_trainer": "staged", "train": "staged", "train_schedule": "staged",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, globals(), _LAZY)
