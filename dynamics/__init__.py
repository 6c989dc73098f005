"""Training dynamics of the models: the exact population gradient flow of model 1 (linear attention,
orthogonal embeddings) and the trainers of both models (GD, SGD, Adam); their pairing with the flow is
analysis's (:mod:`analysis.results.pairing`).

    from dynamics import FlowConfig, run_flow
    run = run_flow(FlowConfig(task=TaskConfig(S=16, R=4, D=8)), levels=(2.5, 1.0))
    run.crossings[1.0], run.trajectory["loss"], run.state_at(300.0), run.solver["nfe"]

    from dynamics import TrainConfig, train
    from analysis import flow_gap
    run = train(TrainConfig(task=TaskConfig(S=16, R=4, D=8), optimizer="sgd", steps=1000))
    flow_gap(run)["flow_gap"]
"""
from common.lazy import lazy_exports

# name -> submodule; loaded on first use, so that ``import dynamics.choices`` (the command lines' --help)
# does not import torch
_LAZY = {
    "FlowConfig": "flow.config",
    "balance": "flow.conservation", "column_sums": "flow.conservation", "conserved_quantities": "flow.conservation",
    "drift": "flow.conservation", "noise_eos_product": "flow.conservation",
    "Event": "ode.engine", "SaveAt": "ode.engine", "Solution": "ode.engine", "integrate": "ode.engine",
    "TRAJECTORY_COLUMNS": "flow.solve", "FlowMonitor": "flow.solve", "FlowRun": "flow.solve", "initial_state": "flow.solve",
    "run_flow": "flow.solve", "save_times": "flow.solve",
    "BACKENDS": "choices", "make_stepper": "ode.registry", "Status": "ode.status",
    "run_flows_batched": "flow.batched", "PlateauWindow": "flow.batched",
    "Trajectory": "flow.trajectory",
    "torch_threads": "threads",
    "HISTORY_COLUMNS": "training.base", "TrainResult": "training.base", "GDTrainer": "training.gd",
    "HeldOutEvaluator": "training.evaluation", "SampledTrainer": "training.sampled",
    "TrainConfig": "training.config", "resolve_device": "training.config",
    "train": "training.staged", "train_schedule": "training.staged", "ScheduleResult": "training.staged",
    "LR_MAX": "training.config",
    "EvalSpec": "experiment.schedule", "ExperimentConfig": "experiment.schedule", "ExperimentRun": "experiment.schedule", "Stage": "experiment.schedule",
    "StageRun": "experiment.schedule", "Stop": "experiment.schedule", "run_experiment": "experiment.schedule",
    "load_experiment": "experiment.file",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, globals(), _LAZY)
