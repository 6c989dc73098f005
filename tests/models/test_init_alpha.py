"""The balanced initialization and the range of alpha: one formula and one check, used by every caller.

References are written here from SPEC §2 (K = alpha, W = alpha / sqrt|A|, so K^2 = sum_a W[a, z]^2) and from the
documented bounds (the flow: 1e-300 <= alpha <= 1e4; the quadratures: 0 < alpha <= 1e100), not read off the code.
"""
import math

import numpy as np
import pytest

from common.errors import ConfigError
from models.linear import FLOW_ALPHA, QUADRATURE_ALPHA, init_entries, init_linear
from models.task import TaskConfig, make_task

SIZES = [(8, 2, 4), (6, 3, 3), (5, 1, 7)]
ALPHAS = [1e-300, 1e-5, 0.37, 3.0, 1e4]


@pytest.mark.parametrize("S,R,D", SIZES)
@pytest.mark.parametrize("alpha", ALPHAS)
def test_balanced_entries_are_alpha_over_sqrt_A(S, R, D, alpha):
    A = R * D
    w, k = init_entries("balanced", alpha, A)
    assert k == alpha
    assert w == np.float64(alpha) / np.sqrt(np.float64(A))  # both square roots are correctly rounded
    assert math.isclose(k * k, A * w * w, rel_tol=1e-15) or alpha < 1e-150  # balanced: K^2 = sum_a W^2
    assert init_entries("uniform", alpha, A) == (alpha, alpha)


@pytest.mark.parametrize("S,R,D", SIZES)
@pytest.mark.parametrize("init", ["balanced", "uniform"])
def test_the_three_initializations_agree(S, R, D, init):
    """models.linear.init_linear, the class-reduced flow's initial classes and the lumped flow's initial state
    hold the same W and K entries, bit for bit."""
    from analysis.theory.lumped import LumpedFlow
    from analysis.theory.reduced_flow import initial_classes
    from dynamics.flow.config import FlowConfig

    alpha = 3e-4
    tc = TaskConfig(S=S, R=R, D=D)
    task = make_task(tc)
    w_ref = alpha / np.sqrt(float(R * D)) if init == "balanced" else alpha

    Wt, K = init_linear(task, init, alpha)
    assert np.all(Wt.numpy() == w_ref) and np.all(K.numpy() == alpha)

    cls = initial_classes(FlowConfig(task=tc, init=init, alpha=alpha))
    # order of analysis.theory.reduction.PARAM_NAMES: w1, w0, k, v1, v0, kap, wn, kn, we, ke
    assert np.all(cls[[0, 1, 3, 4, 6, 8]] == w_ref) and np.all(cls[[2, 5, 7, 9]] == alpha)

    if init == "balanced":  # the lumped flow starts balanced only
        flow = LumpedFlow(task)
        v = flow.unpack(flow.initial(alpha))
        for name, part in v.items():
            assert np.all(part.numpy() == (alpha if name.startswith("K") else w_ref)), name


REJECTED_BY_BOTH = [0.0, -1e-5, float("nan"), float("inf"), -float("inf"), 1e300]
FLOW_ONLY_REJECTS = [1e-301, 5e-324, 1.0000001e4, 1e50, 1e100]
BOTH_ACCEPT = [1e-300, 1e-5, 1.0, 1e4]


@pytest.mark.parametrize("alpha", REJECTED_BY_BOTH + FLOW_ONLY_REJECTS + BOTH_ACCEPT)
def test_flow_range_is_the_documented_one_everywhere(alpha):
    """FlowConfig and the sweep's band (FLOW_ALPHA.contains) accept exactly 1e-300 <= alpha <= 1e4."""
    from dynamics.flow.config import FlowConfig

    inside = bool(1e-300 <= alpha <= 1e4)  # NaN: False
    assert FLOW_ALPHA.contains(alpha) is inside
    if inside:
        assert FlowConfig(alpha=alpha, rtol=1e-14).alpha == alpha
        assert FLOW_ALPHA.check(alpha) == alpha
    else:
        with pytest.raises(ConfigError, match="alpha"):
            FlowConfig(alpha=alpha, rtol=1e-14)
        with pytest.raises(ConfigError, match="alpha"):
            FLOW_ALPHA.check(alpha)


@pytest.mark.parametrize("alpha", REJECTED_BY_BOTH + FLOW_ONLY_REJECTS + BOTH_ACCEPT + [1e101])
def test_quadrature_range_is_the_documented_one_everywhere(alpha):
    """The reduced-flow quadratures (Modes, phase_times) and analysis.derive accept exactly 0 < alpha <= 1e100,
    scalars and arrays alike."""
    from analysis.derive import derive_reduction
    from analysis.theory.modes import Modes

    inside = bool(0 < alpha <= 1e100)
    assert QUADRATURE_ALPHA.contains(alpha) is inside
    batch = np.array([1e-5, alpha, 2.0])
    assert list(QUADRATURE_ALPHA.contains(batch)) == [True, inside, True]
    if inside:
        Modes(8, 2, 4, batch)
        Modes(8, 2, 4, alpha)
    else:
        for call in (lambda: Modes(8, 2, 4, batch), lambda: Modes(8, 2, 4, alpha),
                     lambda: derive_reduction(8, 2, 4, alpha)):
            with pytest.raises(ValueError, match="alpha"):
                call()
