"""Analysis: phase detection on any loss curve, the symbolic reduction of the flow and its predictions,
sweeps, and the reports of training runs (summary, confirmation of the stages).

Every name loads on first use (the phases and reports need scipy, the flow study torch, the reduction
sympy), so ``import analysis`` and the command lines' ``--help`` stay cheap:

    from analysis import analyze_flow            # integrate the exact flow and find its phases
    from analysis import phase_times, escape_rates, hallucination_stage_exists, run_reduced
    from analysis import staircase, hallucination, origin_rates   # any fact weights (beyond uniform data)
    from analysis import run_grid, SweepSpec                      # resumable sweeps on Dask
"""
from common.lazy import lazy_exports

_LAZY = {
    "confirmation_report": "confirm",
    "Phases": "phases", "Plateau": "phases", "detect_phases": "phases", "first_crossing": "phases",
    "flow_phases": "phases", "flow_plateau": "phases", "batched_plateau": "phases", "hermite_crossing": "phases", "plateau_index": "phases",
    "thresholds": "phases",
    "escape_rates": "predict", "hallucination_stage_exists": "predict", "phase_times": "predict",
    "plateau_levels": "predict", "Modes": "predict", "ReducedSolution": "predict",
    "derivation": "reduction", "proofs": "reduction", "class_rhs_numpy": "reduction",
    "run_reduced": "reduced_flow", "run_mode": "reduced_flow", "check_reducible": "reduced_flow",
    "analyze_flow": "results", "FlowResult": "results", "theory_of": "results",
    "run_sweep": "sweep", "SweepResult": "sweep", "derive_reduction": "derive", "DeriveResult": "derive", "summarize_training": "training", "history_columns": "training",
    "analyze_training": "training", "TrainingResult": "training",
    "analyze_experiment": "experiment", "ExperimentResult": "experiment", "experiment_phases": "experiment",
    "SweepSpec": "runner", "GridResult": "runner", "BandsResult": "runner", "run_grid": "runner",
    "run_tasks": "runner", "training_bands": "runner", "product_grid": "runner", "parse_axis": "runner",
    "origin_rates": "escape", "rates_at": "escape", "jacobian_rates": "escape",
    "staircase": "staircase", "escape_schedule": "staircase", "Staircase": "staircase",
    "hallucination": "hallucination", "general_theory": "theory",
    "LumpedFlow": "lumped", "run_lumped": "lumped", "find_classes": "lumped",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, globals(), _LAZY)
