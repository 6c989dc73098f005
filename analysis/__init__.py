"""Analysis: phase detection on any loss curve, the symbolic reduction of the flow and its predictions,
sweeps, and the reports of training runs (summary, confirmation of the stages).

The flow study (torch), the reduction modules (sympy) and the training reports load lazily, so
``import analysis`` stays cheap:

    from analysis import analyze_flow            # integrate the exact flow and find its phases
    from analysis import phase_times, escape_rates, hallucination_stage_exists, run_reduced
"""
from .confirm import confirmation_report
from .phases import (Phases, Plateau, detect_phases, first_crossing, flow_phases, flow_plateau, hermite_crossing,
                     plateau_index, thresholds)

_LAZY = {
    "escape_rates": "predict", "hallucination_stage_exists": "predict", "phase_times": "predict",
    "plateau_levels": "predict", "Modes": "predict", "ReducedSolution": "predict",
    "derivation": "reduction", "proofs": "reduction", "class_rhs_numpy": "reduction",
    "run_reduced": "reduced_flow", "run_mode": "reduced_flow", "check_reducible": "reduced_flow",
    "analyze_flow": "results", "FlowResult": "results", "theory_of": "results",
    "run_sweep": "sweep", "SweepResult": "sweep", "derive_reduction": "derive", "DeriveResult": "derive", "summarize_training": "training", "history_columns": "training",
    "analyze_training": "training", "TrainingResult": "training",
}

__all__ = ["Phases", "Plateau", "confirmation_report", "detect_phases", "first_crossing", "flow_phases",
           "flow_plateau", "hermite_crossing",
           "plateau_index", "thresholds", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")
