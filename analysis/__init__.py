"""Analysis: phase detection on any loss curve, the symbolic reduction of the flow and its predictions.

The reduction modules (sympy) load lazily, so ``import analysis`` stays cheap for the full flow:

    from analysis import phase_times, escape_rates, hallucination_stage_exists, run_reduced
"""
from .phases import Phases, Plateau, detect_phases, first_crossing, hermite_crossing, plateau_index, thresholds

_LAZY = {
    "escape_rates": "predict", "hallucination_stage_exists": "predict", "phase_times": "predict",
    "plateau_levels": "predict", "Modes": "predict", "ReducedSolution": "predict",
    "derivation": "reduction", "proofs": "reduction", "class_rhs_numpy": "reduction",
    "run_reduced": "reduced_flow", "run_mode": "reduced_flow", "check_reducible": "reduced_flow",
    "run_sweep": "sweep",
}

__all__ = ["Phases", "Plateau", "detect_phases", "first_crossing", "hermite_crossing", "plateau_index",
           "thresholds", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")
