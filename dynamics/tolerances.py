"""Default solver tolerances, keyed by dtype, in one place.

rtol: the flow's interesting events are exponential escapes from tiny parameters
(size alpha), so the error must be controlled relative to each entry; 1e-9 in float64
moves the phase times by far less than 1e-6 relative (checked in tests against a
1e-12 run) and keeps the conservation-law drift near 1e-9.

atol: "auto" means 1e-3 * rtol * (smallest nonzero |entry| of the initial state), so
even the tiniest initial entries are integrated to relative accuracy ~rtol instead of
being swamped by an absolute floor.
"""
import torch

DEFAULT_RTOL = {torch.float64: 1e-9, torch.float32: 1e-5}
ATOL_FACTOR = 1e-3  # atol = ATOL_FACTOR * rtol * min |y0 != 0|

# Tolerances the tests use when comparing two float64 computations of the same quantity.
TEST_RTOL = {torch.float64: 1e-12, torch.float32: 1e-5}


def auto_atol(y0: torch.Tensor, rtol: float) -> float:
    nz = y0.abs()[y0 != 0]
    floor = float(nz.min()) if nz.numel() else 1.0
    return ATOL_FACTOR * rtol * floor
