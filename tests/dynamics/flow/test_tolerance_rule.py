"""The tolerance rule (docs/numerics.md, "Which tolerances resolve the flow"; issue 24 §1-2): every accepted
(rtol, atol, dtype, alpha), the edges of the accepted ranges included, gives phase times within the documented
accuracy of a tight reference (float64, rtol 1e-12); every refused combination is exit status 2 and one line."""
from __future__ import annotations

import functools
import math

import pytest

from analysis.theory.reduced_flow import run_mode
from common.errors import ConfigError
from dynamics import FlowConfig
from dynamics.ode.tolerances import ATOL_MAX_FACTOR
from models.linear import init_entries
from tests.helpers import TINY

A = TINY.R * TINY.D


def smallest(alpha: float) -> float:
    return min(init_entries("balanced", alpha, A))


@functools.lru_cache(maxsize=None)
def reference(alpha: float) -> tuple:
    ph = run_mode("full", FlowConfig(task=TINY, alpha=alpha, rtol=1e-12), progress=False).phases
    return ph.t1, ph.t2, ph.t3


def documented_accuracy(rtol: float, alpha: float, dtype: str) -> float:
    """The relative accuracy of the phase times docs/numerics.md states: 10 rtol max(1, alpha^2), plus 1e-11 in
    float64 and 1e-5 in float32 (the dtype's rounding of the loss where it crosses the thresholds)."""
    return 10 * rtol * max(1.0, alpha * alpha) + (1e-11 if dtype == "float64" else 1e-5)


EDGE = ATOL_MAX_FACTOR  # atol at the largest accepted value, rtol x the smallest initial entry
# (dtype, rtol, atol factor (None: automatic), alpha): the rtol range's ends, the largest accepted atol, the
# smallest alpha each dtype accepts at that rtol (float32: rtol x entry >= 1.4e-42 and entries >= 1.2e-38) and
# the largest alpha^2 rtol allows (float64's smallest alpha, 1e-300, takes 3 minutes here: 1e-30 stands in)
ACCEPTED = [
    ("float64", 1e-9, None, 1e-5), ("float64", 1e-9, EDGE, 1e-5), ("float64", 1e-14, EDGE, 1e-5),
    ("float64", 1e-3, None, 1e-5), ("float64", 1e-3, EDGE, 1e-5), ("float64", 1e-9, EDGE, 1e-30),
    ("float64", 1e-6, EDGE, 10.0), ("float64", 1e-12, None, 100.0),
    ("float32", 1e-5, None, 1e-5), ("float32", 1e-7, EDGE, 1e-5), ("float32", 1e-3, EDGE, 1e-5),
    ("float32", 1e-7, None, 2 * 1.5e-35), ("float32", 1e-3, EDGE, 2 * 1.2e-38), ("float32", 1e-7, None, 30.0),
]


@pytest.mark.slow  # a reference per alpha (1-10 s) and 14 runs
@pytest.mark.parametrize("dtype,rtol,factor,alpha", ACCEPTED)
def test_accepted_tolerances_give_the_documented_accuracy(dtype, rtol, factor, alpha):
    atol = None if factor is None else factor * rtol * smallest(alpha)
    run = run_mode("full", FlowConfig(task=TINY, alpha=alpha, rtol=rtol, atol=atol, dtype=dtype), progress=False)
    assert str(run.status) == "converged"
    got = (run.phases.t1, run.phases.t2, run.phases.t3)
    for name, a, b in zip(("t1", "t2", "t3"), got, reference(alpha)):
        assert a is not None, name
        assert abs(a - b) / b <= documented_accuracy(rtol, alpha, dtype), (name, a, b)


REFUSED = [
    (["--atol", "1e300"], "atol = 1e+300 is too large"),
    (["--atol", "1"], "atol = 1 is too large"),
    (["--rtol", "1e-6", "--atol", "1e-11"], "atol = 1e-11 is too large"),  # 2 x the largest accepted (5e-12)
    (["--dtype", "float32", "--atol", "1e-50"], "atol = 1e-50 rounds to 0 in float32"),
    (["--dtype", "float32", "--alpha", "1e-40"], "alpha = 1e-40 has entries of 5e-41, below float32"),
    (["--dtype", "float32", "--rtol", "1e-7", "--alpha", "1e-37"], "rtol = 1e-07 cannot resolve alpha = 1e-37"),
    (["--dtype", "float32", "--alpha", "100", "--rtol", "1e-7"], "alpha = 100 with rtol = 1e-07"),
]


@pytest.mark.parametrize("argv,start", REFUSED)
def test_refused_combinations_are_one_line_and_exit_2(argv, start, tmp_path, capsys):
    from dynamics.run import main

    out = tmp_path / "o"
    assert main(["--S", "4", "--R", "2", "--D", "2", "--quiet", "--out", str(out)] + argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {start}"), err
    assert not out.exists()


def test_the_edges_are_accepted_and_just_beyond_refused():
    for dtype, rtol in (("float64", 1e-9), ("float32", 1e-5)):
        edge = ATOL_MAX_FACTOR * rtol * smallest(1e-5)
        FlowConfig(task=TINY, dtype=dtype, rtol=rtol, atol=edge)
        with pytest.raises(ConfigError, match="largest accepted is rtol x that entry"):
            FlowConfig(task=TINY, dtype=dtype, rtol=rtol, atol=edge * (1 + 1e-9))
    FlowConfig(task=TINY, dtype="float32", rtol=1e-7, alpha=2 * 1.5e-35)
    with pytest.raises(ConfigError, match="cannot resolve"):
        FlowConfig(task=TINY, dtype="float32", rtol=1e-7, alpha=2 * 1.3e-35)
    assert math.isfinite(smallest(1e-300))
