"""Analysis: phase detection on any loss curve, the symbolic reduction of the flow and its predictions,
sweeps, and the reports of training runs (summary, confirmation of the stages).

Every name loads on first use (the phases and reports need scipy, the flow study torch, the reduction
sympy), so ``import analysis`` and the command lines' ``--help`` stay cheap:

    from analysis import analyze_flow            # integrate the exact flow and find its phases
    from analysis import phase_times, escape_rates, hallucination_stage_exists, run_reduced
    from analysis import staircase, hallucination, origin_rates   # any fact weights (beyond uniform data)
    from analysis import run_grid, SweepSpec                      # resumable sweeps on Dask
    from analysis import flow_gap, schedule_flow_gap              # a model-1 training run against the exact flow
"""
from common.lazy import lazy_exports

_LAZY = {
    "confirmation_report": "results.confirm",
    "Phases": "phases", "Plateau": "phases", "detect_phases": "phases", "first_crossing": "phases",
    "flow_phases": "phases", "flow_plateau": "phases", "batched_plateau": "phases", "hermite_crossing": "phases", "plateau_index": "phases",
    "thresholds": "phases",
    "escape_rates": "theory.modes", "hallucination_stage_exists": "theory.modes", "phase_times": "theory.reduced_solution",
    "plateau_levels": "theory.modes", "Modes": "theory.modes", "ReducedSolution": "theory.reduced_solution",
    "derivation": "theory.reduction", "proofs": "theory.reduction", "class_rhs_numpy": "theory.reduction",
    "run_reduced": "theory.reduced_flow", "run_mode": "theory.reduced_flow", "check_reducible": "theory.reduced_flow",
    "analyze_flow": "results.flow", "FlowResult": "results.flow", "theory_of": "results.flow",
    "run_sweep": "sweeps.phase_sweep", "SweepResult": "sweeps.phase_sweep",
    "derive_reduction": "theory.derivation", "DeriveResult": "theory.derivation",
    "summarize_training": "results.training", "history_columns": "results.training",
    "analyze_training": "results.training", "TrainingResult": "results.training",
    "flow_at": "results.pairing", "flow_gap": "results.pairing", "schedule_flow_gap": "results.pairing",
    "analyze_experiment": "results.experiment", "ExperimentResult": "results.experiment", "experiment_phases": "results.experiment",
    "SweepSpec": "sweeps.spec", "GridResult": "sweeps.runner", "BandsResult": "sweeps.bands", "run_grid": "sweeps.runner",
    "run_tasks": "sweeps.dask_tasks", "training_bands": "sweeps.bands", "capacity_bands": "sweeps.capacity_runs",
    "CapacityBandsResult": "sweeps.capacity_runs", "product_grid": "sweeps.spec", "parse_axis": "sweeps.spec",
    "origin_rates": "theory.escape", "rates_at": "theory.escape", "jacobian_rates": "theory.escape",
    "staircase": "theory.staircase", "escape_schedule": "theory.staircase", "Staircase": "theory.staircase",
    "hallucination": "theory.hallucination", "general_theory": "theory.general",
    "LumpedFlow": "theory.lumped", "run_lumped": "theory.lumped", "find_classes": "theory.lumped",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, globals(), _LAZY)
