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

from common.errors import ConfigError, check_positive

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


# The tolerance rule (docs/numerics.md, "Which tolerances resolve the flow"). The flow's dynamics start from its
# smallest entries (size ~alpha: the escape grows them exponentially from there), so the error control must
# resolve those entries *relatively*:
#
# 1. atol <= ATOL_MAX_FACTOR * rtol * m, m = the smallest nonzero |entry| of the initial state. Then the error
#    scale atol + rtol |y| of every entry at least as large as m is at most 2 rtol |y|: the control stays
#    relative. Measured at S8/R2/D4, alpha 1e-5 (phase times against an rtol 1e-12 run): atol = c rtol m with
#    c = 1e-3 (the automatic atol) ... 100 keeps the accuracy of the automatic atol at every rtol (rtol 1e-9:
#    2.4e-9 ... 3.4e-9); c = 1e4 loses a factor 50-300 (rtol 1e-9: 1.8e-7; rtol 1e-12: 3.3e-10); atol 1 and
#    1e300 (S16/R4/D8) give t1 = t2 = t3 or a t1 off by 30 %. c = 1 leaves two decades of margin.
# 2. rtol * m >= SCALE_GRANULES * the dtype's smallest subnormal: the error scale of the smallest entries must be
#    far above the dtype's absolute granularity, or rounding alone fails the error test. Measured in float32
#    (S8/R2/D4): rtol 1e-7 at alpha 1e-37 (rtol m ~ 2.5 granules) fails after 25 steps; alpha 1e-37 at rtol 1e-5
#    (250 granules) and alpha 1e-34 at rtol 1e-7 (2,500) are within 3e-6 and 1.5e-7 of float64. An initial
#    entry below the dtype's smallest normal number (float32: 1.2e-38) is refused as well: it has lost bits
#    before the run starts (alpha 1e-40 failed at step 0 in float32 with rtol 1e-5). That alpha^2 underflows
#    (float32, alpha < 1e-19) is harmless: the right-hand side is linear in the entries while they are small,
#    and the logits only matter once the entries are O(1) (float32 at alpha 1e-25 and 1e-30: phase times
#    within 3e-6 of float64).
# 3. atol itself must be representable in the dtype (at least its smallest subnormal), or it rounds to 0.
ATOL_MAX_FACTOR = 1.0
SCALE_GRANULES = 1e3


def check_resolves(rtol: float, atol: float | None, smallest: float, dtype=torch.float64, *,
                   where: str = "the initial state") -> None:
    """ConfigError unless (rtol, atol, dtype) resolve a state whose smallest nonzero |entry| is ``smallest``
    (the rule above; atol None: the automatic one). ``where`` names the state in the message (alpha's, a file's)."""
    info = torch.finfo(dtype)
    name = str(dtype).removeprefix("torch.")
    if not smallest > 0 or smallest != smallest:
        return  # an all-zero state: the automatic atol is ATOL_FACTOR * rtol; nothing to resolve relatively
    if smallest < info.tiny:
        raise ConfigError(f"{where} has entries of {smallest:.3g}, below {name}'s smallest normal number "
                          f"{info.tiny:.3g}; use a larger alpha" + (" or float64" if dtype != torch.float64 else ""))
    if rtol * smallest < SCALE_GRANULES * info.smallest_normal * info.eps:
        need = SCALE_GRANULES * info.smallest_normal * info.eps / rtol
        raise ConfigError(f"rtol = {rtol:g} cannot resolve {where} in {name} (smallest entry {smallest:.3g}; rtol x "
                          f"entry must be >= {SCALE_GRANULES * info.smallest_normal * info.eps:.2g}): needs entries "
                          f">= {need:.2g}, a larger rtol" + (" or float64" if dtype != torch.float64 else ""))
    if atol is None:
        return
    if atol < info.smallest_normal * info.eps:
        raise ConfigError(f"atol = {atol:g} rounds to 0 in {name}; pass atol >= {info.smallest_normal * info.eps:.2g} "
                          "or leave it to the automatic one")
    largest = ATOL_MAX_FACTOR * rtol * smallest
    if atol > largest:
        raise ConfigError(f"atol = {atol:g} is too large for {where} (smallest initial entry {smallest:.3g}): the "
                          f"largest accepted is rtol x that entry = {largest:.3g} (or leave atol to the automatic one)")


def smallest_entry(y0: torch.Tensor) -> float:
    """The smallest nonzero |entry| of y0 (0.0 for an all-zero y0)."""
    nz = y0.abs()[y0 != 0]
    return float(nz.min()) if nz.numel() else 0.0


# Tolerances the tests use when comparing two float64 computations of the same quantity.
TEST_RTOL = {torch.float64: 1e-12, torch.float32: 1e-5}


def auto_atol(y0: torch.Tensor, rtol: float) -> float:
    """ATOL_FACTOR * rtol * (smallest nonzero |entry| of y0), or ATOL_FACTOR * rtol for an all-zero y0."""
    nz = y0.abs()[y0 != 0]
    floor = float(nz.min()) if nz.numel() else 1.0
    return ATOL_FACTOR * rtol * floor
