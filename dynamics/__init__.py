"""Exact population gradient flow of model 1 (linear attention, orthogonal embeddings).

    from dynamics import FlowConfig, run_flow
    result = run_flow(FlowConfig(task=TaskConfig(S=16, R=4, D=8)))
    result.phases.t1, result.trajectory["loss"], result.solver["nfe"]
"""
from .config import FlowConfig
from .conservation import balance, column_sums, conserved_quantities, drift, noise_eos_product
from .flow import TRAJECTORY_COLUMNS, FlowResult, initial_state, run_flow

__all__ = ["FlowConfig", "FlowResult", "TRAJECTORY_COLUMNS", "balance", "column_sums", "conserved_quantities",
           "drift", "initial_state", "noise_eos_product", "run_flow"]
