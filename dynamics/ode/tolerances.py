"""Default solver tolerances, keyed by dtype, in one place.

rtol: the flow's interesting events are exponential escapes from tiny parameters
(size alpha), so the error must be controlled relative to each entry; 1e-9 in float64
moves the phase times by far less than 1e-6 relative (checked in tests against a
1e-12 run) and keeps the conservation-law drift near 1e-9.

atol: "auto" means 1e-3 * rtol * (smallest nonzero |entry| of the initial state), so
even the tiniest initial entries are integrated to relative accuracy ~rtol instead of
being swamped by an absolute floor; with the native solver it is raised, entry by entry,
to 1e-3 * rtol * the largest |entry| of the same token's row as the run goes (the stepper's controller
applies that floor itself: dynamics.ode.controller.RowAtol).
"""
import torch

from common.errors import check_positive

DEFAULT_RTOL = {torch.float64: 1e-9, torch.float32: 1e-5}
ATOL_FACTOR = 1e-3  # atol = ATOL_FACTOR * rtol * min |y0 != 0|

# Valid rtol of the flow, per dtype (checked by FlowConfig and analysis.sweep --full-rtol). Below the lower
# bound the dtype cannot deliver the accuracy asked for (float64 rounding is 1.1e-16 per operation and a step
# combines ~10 terms; float32's is 6e-8): the error estimate can still be pushed under such a tolerance by
# ever smaller steps, so the solver crawls (rtol 1e-30 took 5e-13-sized steps: ~1e15 steps to t3) instead
# of failing. Above the upper bound the phase times are meaningless: at rtol 1e-2 t1 is off by 1 % and the
# conservation law Q_z drifts by 1.6 (it is 0 at the start); at rtol >= 0.3 the explicit solver accepts
# unstable steps, the state blows up to 1e153 and the run never reaches the loss target.
RTOL_RANGE = {torch.float64: (1e-14, 1e-3), torch.float32: (1e-7, 1e-3)}
RTOL_WHY = {torch.float64: "float64 rounding cannot deliver less than 1e-14; above 1e-3 the phase times "
                           "are meaningless",
            torch.float32: "float32 rounding cannot deliver less than 1e-7; above 1e-3 the phase times "
                           "are meaningless"}


def check_rtol(name: str, value, dtype=torch.float64) -> float:
    """``value`` as a float if it lies in RTOL_RANGE[dtype], else ConfigError naming the value, range and reason."""
    lo, hi = RTOL_RANGE[dtype]
    return check_positive(name, value, minimum=lo, maximum=hi,
                          why=RTOL_WHY[dtype])


def check_atol(name: str, value) -> float:
    """``value`` as a float if it is finite and > 0, else ConfigError."""
    return check_positive(name, value)


# Tolerances the tests use when comparing two float64 computations of the same quantity.
TEST_RTOL = {torch.float64: 1e-12, torch.float32: 1e-5}


def auto_atol(y0: torch.Tensor, rtol: float) -> float:
    """ATOL_FACTOR * rtol * (smallest nonzero |entry| of y0), or ATOL_FACTOR * rtol for an all-zero y0."""
    nz = y0.abs()[y0 != 0]
    floor = float(nz.min()) if nz.numel() else 1.0
    return ATOL_FACTOR * rtol * floor
