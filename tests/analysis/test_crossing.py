"""The first crossing of a level by a sampled curve: one locator (analysis.phases.locate_first_crossing), used by
the phase times of any loss curve (first_crossing) and by the multi-stage experiments (stage_crossing).

References: the analytic crossing times of exp(-t) (-log theta) and of 1 + cos(t) (arccos(theta - 1), the first
of several), and scipy's brentq / bisection on the analytic curve over the whole sampled range.
"""
import math
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.optimize import bisect, brentq

from analysis.phases import first_crossing, locate_first_crossing

CURVES = {  # name: (L(t), dL/dt, first time with L <= theta)
    "exp": (lambda t: np.exp(-t), lambda t: -np.exp(-t), lambda th: -math.log(th)),
    "cos": (lambda t: 1.0 + np.cos(t), lambda t: -np.sin(t), lambda th: math.acos(th - 1.0)),
}
T = np.linspace(0.0, 9.0, 91)  # 1 + cos(t) reaches every level in (0, 2) first before pi, then again later


@pytest.mark.parametrize("curve", sorted(CURVES))
@pytest.mark.parametrize("theta", [1.5, 0.7, 0.3, 0.05])
def test_locator_with_an_exact_refinement_is_the_analytic_first_crossing(curve, theta):
    L, _, exact = CURVES[curve]
    f = (lambda s: float(L(s)) - theta)
    got = locate_first_crossing(T, L(T), theta, lambda i, j: brentq(f, T[i], T[j], xtol=1e-15))
    if theta >= L(T[0]):
        assert got == T[0]
        return
    assert got == pytest.approx(exact(theta), rel=1e-13, abs=1e-14)
    # the same root by bisection on the analytic curve, bracketed without the samples
    assert got == pytest.approx(bisect(f, 0.0, exact(theta) + 1e-3, xtol=1e-15), rel=1e-13)


@pytest.mark.parametrize("curve", sorted(CURVES))
@pytest.mark.parametrize("theta", [1.5, 0.7, 0.3])
def test_first_crossing_interpolates_to_the_analytic_time(curve, theta):
    """Cubic Hermite with the exact derivative (4th order: error ~ h^4 / 384 max |L''''| ~ 3e-7 at h = 0.1), and
    PCHIP in log t without it (3rd order, looser)."""
    L, dL, exact = CURVES[curve]
    if theta >= L(T[0]):  # crossed at the first sample
        assert first_crossing(T, L(T), theta, dL(T)) == first_crossing(T, L(T), theta) == T[0]
        return
    assert first_crossing(T, L(T), theta, dL(T)) == pytest.approx(exact(theta), abs=1e-6)
    assert first_crossing(T, L(T), theta) == pytest.approx(exact(theta), abs=2e-3)


def test_locator_edges():
    calls = []

    def refine(i, j):
        calls.append((i, j))
        return 0.5 * (T[i] + T[j])

    L = np.exp(-T)
    assert locate_first_crossing(T, L, 1.0, refine) == 0.0  # the first sample is on the level
    assert locate_first_crossing(T, L, 1e-9, refine) is None  # never reached
    assert locate_first_crossing(T, np.full_like(T, np.nan), 0.5, refine) is None  # NaN is never below
    Ln = L.copy()
    Ln[:5] = np.nan  # NaN counts as above the level: the bracket is the first finite sample at or below it
    assert locate_first_crossing(T, Ln, 0.9, refine) == 0.5 * (T[4] + T[5])
    assert calls == [(4, 5)]


def test_experiment_stage_crossing_is_the_locator_on_the_dense_output(monkeypatch):
    """analysis.results.experiment.stage_crossing brackets on the saved rows of its stage and refines on the dense
    output: with an analytic dense output (exp(-(t - 1)) in a stage that starts at t = 1) it returns the analytic
    time, and the start of the stage where the level already holds there."""
    from analysis.results import experiment

    rows_t = np.concatenate([np.linspace(0.0, 1.0, 5), 1.0 + T])
    stage_of = np.concatenate([np.zeros(5), np.ones(T.size)])
    loss = np.concatenate([np.full(5, 7.0), np.exp(-T)])
    run = SimpleNamespace(trajectory={"t": rows_t, "stage": stage_of, "all_loss": loss})
    stage = SimpleNamespace(index=1)
    monkeypatch.setattr(experiment, "set_loss_at", lambda run, stage, name, s: math.exp(-(s - 1.0)))
    for theta in (0.7, 0.3, 0.05):
        got = experiment.stage_crossing(run, stage, "all", theta)
        assert got == pytest.approx(1.0 - math.log(theta), rel=1e-12)
    assert experiment.stage_crossing(run, stage, "all", 1.0) == 1.0
    assert experiment.stage_crossing(run, stage, "all", 1e-9) is None
