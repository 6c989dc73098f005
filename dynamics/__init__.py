"""Training dynamics of the models: the exact population gradient flow of model 1 (linear attention,
orthogonal embeddings) and the trainers of both models (GD, SGD, Adam) with their pairing to the flow.

    from dynamics import FlowConfig, run_flow
    run = run_flow(FlowConfig(task=TaskConfig(S=16, R=4, D=8)), levels=(2.5, 1.0))
    run.crossings[1.0], run.trajectory["loss"], run.state_at(300.0), run.solver["nfe"]

    from dynamics import TrainConfig, train, flow_gap
    run = train(TrainConfig(task=TaskConfig(S=16, R=4, D=8), optimizer="sgd", steps=1000))
    flow_gap(run)["flow_gap"]
"""
from .config import FlowConfig
from .conservation import balance, column_sums, conserved_quantities, drift, noise_eos_product
from .engine import Event, SaveAt, Solution, integrate
from .flow import TRAJECTORY_COLUMNS, FlowMonitor, FlowRun, initial_state, run_flow, save_times
from .solvers import BACKENDS, make_stepper
from .trajectory import Trajectory
from .threads import torch_threads
from .trainer import (HISTORY_COLUMNS, GDTrainer, HeldOutEvaluator, SampledTrainer, TrainConfig, TrainResult,
                      flow_at, flow_gap, resolve_device, train)

__all__ = ["BACKENDS", "Event", "FlowMonitor", "FlowRun", "SaveAt", "Solution", "Trajectory", "integrate",
           "make_stepper", "save_times", "FlowConfig", "TRAJECTORY_COLUMNS", "balance", "column_sums", "conserved_quantities",
           "drift", "initial_state", "noise_eos_product", "run_flow",
           "GDTrainer", "HISTORY_COLUMNS", "HeldOutEvaluator", "SampledTrainer", "TrainConfig", "TrainResult",
           "flow_at", "flow_gap", "resolve_device", "torch_threads", "train"]
