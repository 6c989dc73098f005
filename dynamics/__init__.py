"""Training dynamics of the models: the exact population gradient flow of model 1 (linear attention,
orthogonal embeddings) and the trainers of both models (GD, SGD, Adam) with their pairing to the flow.

    from dynamics import FlowConfig, run_flow
    run = run_flow(FlowConfig(task=TaskConfig(S=16, R=4, D=8)), levels=(2.5, 1.0))
    run.crossings[1.0], run.trajectory["loss"], run.state_at(300.0), run.solver["nfe"]

    from dynamics import TrainConfig, train, flow_gap
    run = train(TrainConfig(task=TaskConfig(S=16, R=4, D=8), optimizer="sgd", steps=1000))
    flow_gap(run)["flow_gap"]
"""
from common.lazy import lazy_exports

# name -> submodule; loaded on first use, so that ``import dynamics.choices`` (the command lines' --help)
# does not import torch
_LAZY = {
    "FlowConfig": "config",
    "balance": "conservation", "column_sums": "conservation", "conserved_quantities": "conservation",
    "drift": "conservation", "noise_eos_product": "conservation",
    "Event": "engine", "SaveAt": "engine", "Solution": "engine", "integrate": "engine",
    "TRAJECTORY_COLUMNS": "flow", "FlowMonitor": "flow", "FlowRun": "flow", "initial_state": "flow",
    "run_flow": "flow", "save_times": "flow",
    "BACKENDS": "solvers", "make_stepper": "solvers",
    "run_flows_batched": "batched", "PlateauWindow": "batched",
    "Trajectory": "trajectory",
    "torch_threads": "threads",
    "HISTORY_COLUMNS": "trainer", "GDTrainer": "trainer", "HeldOutEvaluator": "trainer", "SampledTrainer": "trainer",
    "TrainConfig": "trainer", "TrainResult": "trainer", "flow_at": "trainer", "flow_gap": "trainer",
    "resolve_device": "trainer", "train": "trainer", "train_schedule": "trainer", "schedule_flow_gap": "trainer",
    "ScheduleResult": "trainer",
    "EvalSpec": "schedule", "ExperimentConfig": "schedule", "ExperimentRun": "schedule", "Stage": "schedule",
    "StageRun": "schedule", "Stop": "schedule", "run_experiment": "schedule",
    "load_experiment": "experiment_file",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, globals(), _LAZY)
