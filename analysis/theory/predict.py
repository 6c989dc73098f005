"""Predictions from the reduced flow, vectorised over batches of configurations, under the names the programs
import them by. They live by concept:

- :mod:`analysis.theory.modes`: the two modes (:class:`Modes`) and their closed forms (escape rates, plateau
  levels, the hallucination condition);
- :mod:`analysis.theory.quadrature`: the exact solution of one mode (tau, its inverse margin_at, Ein, R2);
- :mod:`analysis.theory.reduced_solution`: the loss along the flow (:class:`ReducedSolution`) and the phase times
  t1, t2, t3 (exact and leading order);
- :mod:`analysis.theory.plateau`: the SPEC §3 plateau between t1 and t2.
"""
from __future__ import annotations

from models.linear import QUADRATURE_ALPHA

from analysis.theory.modes import Modes, escape_rates, hallucination_stage_exists, plateau_levels
from analysis.theory.plateau import PLATEAU_CHUNK, plateau, plateau_score, plateaus
from analysis.theory.quadrature import M_CAP, asinh_ratio, ein, margin_at, mode_loss, mode_rate, tau
from analysis.theory.reduced_solution import ReducedSolution, phase_times, separated_estimates

ALPHA_MAX = QUADRATURE_ALPHA.maximum  # old name of the largest scale the quadratures support: analysis.derive uses it

__all__ = ["ALPHA_MAX", "M_CAP", "Modes", "PLATEAU_CHUNK", "ReducedSolution", "asinh_ratio", "ein", "escape_rates",
           "hallucination_stage_exists", "margin_at", "mode_loss", "mode_rate", "phase_times", "plateau",
           "plateau_levels", "plateau_score", "plateaus", "separated_estimates", "tau"]
