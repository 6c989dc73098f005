"""Step-size control: the tolerances, the error norm, accept/reject, the next step's factor and the per-row
atol floor, owned by one object per stepper.

- :class:`StepController`: rtol and atol (checked: finite and > 0, ConfigError saying what to pass), the
  scaled RMS error norm of Hairer, Norsett & Wanner (Solving ODEs I, §II.4), the accept rule (error ratio
  <= 1; a NaN ratio is a rejection) and, optionally, an atol *floor* that the controller raises itself after
  accepted steps 1, 1 + every, 1 + 2 every, ... (:class:`RowAtol`: the flow's per-row floor). Nobody assigns a
  stepper's atol from outside: a stepper tells its controller each accepted step (:meth:`after_accept`).
- :class:`PIController`: the PI control of Hairer & Wanner's DOPRI5 code (beta = 0.04), for DOPRI5.
- :class:`Rock4Controller`: the control of Abdulle's ROCK4 code (the elementary and the predictive,
  Gustafsson factor, growth limits that depend on the step's history), for ROCK4.
"""
from __future__ import annotations

import math

import torch

from common.errors import ConfigError, check_positive
from dynamics.ode.tolerances import ATOL_FACTOR

FLOOR_EVERY = 8  # accepted steps between updates of the atol floor (the row maxima move slowly)


def scaled_rms(err: torch.Tensor, y0: torch.Tensor, y1: torch.Tensor, rtol: float, atol, scale: torch.Tensor,
               scratch: torch.Tensor) -> float:
    """RMS of err / (atol + rtol max(|y0|, |y1|)) (Hairer, Norsett & Wanner, §II.4); atol a float or a (P,)
    tensor. Overwrites err, and uses scale and scratch ((P,) work arrays) to avoid allocations."""
    torch.maximum(torch.abs(y0, out=scale), torch.abs(y1, out=scratch), out=scale)
    scale.mul_(rtol).add_(atol)
    return float(torch.linalg.vector_norm(err.div_(scale)) / math.sqrt(err.numel()))


class RowAtol:
    """The automatic atol with a floor relative to each token's row: per entry W[a, z] of the state,
    max(atol, ATOL_FACTOR * rtol * max_a |W[a, z]|); atol on K. ``floor(y)`` returns it as a (P,) tensor (one
    buffer, rewritten in place). A :class:`StepController` given this floor applies it itself after accepted
    steps 1, 9, 17, ... (native backend, automatic atol only: :func:`dynamics.flow.solve.flow_numerics`).

    Why: the automatic atol is tied to the smallest *initial* entry, 1.8e-33 at alpha = 1e-20. When some
    token's parameters have grown (random tables: the noise and EOS tokens learn the answer frequencies first,
    K_noise 1e-20 -> 2.7e-5) while some of its entries should stay put (answers whose predicted mass already
    equals their frequency: dW/dt is a cancellation, 0 up to rounding), those entries receive rounding noise of
    ~eps * K_noise ~ 1e-22 per unit time in the right-hand side, and resolving that noise to 1e-30 forced steps
    of ~5e-6 with half of them rejected: ~3e8 steps to t3 (the run with --facts random --alpha 1e-20 never
    ended). An entry 1e3/rtol times smaller than the largest one of its row moves the logits by less than
    1e-3 rtol of that row's contribution, so the floor costs no accuracy (the phase times of the default run
    move by 1e-9 relative, towards an rtol = 1e-12 reference) and alpha = 1e-20 now takes 3,400 steps.
    """

    def __init__(self, layout, y0: torch.Tensor, rtol: float, atol: float):
        self.layout, self.atol, self.factor = layout, float(atol), ATOL_FACTOR * float(rtol)
        self.buf = torch.full_like(y0, self.atol)  # (P,): W part per row, K part atol
        self._W = layout.unpack(self.buf)[0]  # (C, |A|) view

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        Wt = self.layout.unpack(y)[0]  # (C, |A|)
        rowmax = torch.linalg.vector_norm(Wt, ord=float("inf"), dim=1, keepdim=True)  # (C, 1) max_a |W[a, z]|
        self._W.copy_(rowmax.mul_(self.factor).clamp_min_(self.atol).expand_as(self._W))
        return self.buf


class StepController:
    """Tolerances, error norm, accept rule and atol floor of one stepper (see the module docstring).

    rtol, atol: finite and > 0 (atol a float, or a (P,) tensor of such entries). floor: None, or a callable
    y -> (P,) tensor (e.g. :class:`RowAtol`) that replaces atol after accepted steps 1, 1 + floor_every, ...
    """

    def __init__(self, rtol, atol, *, floor=None, floor_every: int = FLOOR_EVERY):
        self._rtol = check_positive("rtol", rtol)
        if isinstance(atol, torch.Tensor):
            if not bool((torch.isfinite(atol) & (atol > 0)).all()):
                raise ConfigError("atol has entries that are not finite numbers > 0; every entry of a tensor atol "
                                  "must be finite and > 0 (or pass one float)")
            self._atol = atol
        else:
            self._atol = check_positive("atol", atol)
        if floor is not None and not callable(floor):
            raise ConfigError(f"floor = {floor!r} is not callable; pass a callable y -> (P,) atol tensor "
                              "(e.g. dynamics.ode.controller.RowAtol) or None")
        if isinstance(floor_every, bool) or not isinstance(floor_every, int) or floor_every < 1:
            raise ConfigError(f"floor_every = {floor_every!r} is not allowed; pass a whole number >= 1")
        self.floor, self.floor_every = floor, floor_every

    @property
    def rtol(self) -> float:
        return self._rtol

    @property
    def atol(self):
        """The absolute tolerance in force: the initial float until the floor first applies, then its tensor."""
        return self._atol

    def norm(self, err, y0, y1, scale, scratch) -> float:
        """RMS of err / (atol + rtol max(|y0|, |y1|)); overwrites err, scale and scratch."""
        return scaled_rms(err, y0, y1, self._rtol, self._atol, scale, scratch)

    @staticmethod
    def accepts(ratio: float) -> bool:
        """Whether a step with this error ratio is accepted (<= 1; a NaN ratio is a rejection)."""
        return ratio <= 1.0

    def after_accept(self, n_accepted: int, y: torch.Tensor) -> None:
        """Called by the stepper after its n-th accepted step (state y): the floor is recomputed after accepted
        steps 1, 1 + floor_every, ... and is the atol of the steps that follow."""
        if self.floor is not None and n_accepted % self.floor_every == 1 % self.floor_every:
            self._atol = self.floor(y)


class PIController(StepController):
    """PI step-size control (Hairer & Wanner's DOPRI5 code): after a rejection h *= max(min_factor,
    safety ratio^-(1/order - 0.75 beta)); after an acceptance h *= the same times err_old^beta (err_old: the
    previous accepted ratio, 1e-4 at the start), clipped to [min_factor, max_factor]. beta = 0.04 damps the
    accept/reject oscillation of explicit methods that run at their stability limit (the flow's plateaus)."""

    def __init__(self, rtol, atol, *, order: int, safety: float = 0.9, min_factor: float = 0.2,
                 max_factor: float = 10.0, beta: float = 0.04, **kw):
        super().__init__(rtol, atol, **kw)
        if not 0 < min_factor <= 1 <= max_factor or not 0 < safety <= 1 or not 0 <= beta < 1 / order:
            raise ConfigError(f"PIController: need 0 < min_factor <= 1 <= max_factor, 0 < safety <= 1 and "
                              f"0 <= beta < 1/order (got min_factor={min_factor}, max_factor={max_factor}, "
                              f"safety={safety}, beta={beta}, order={order})")
        self.order, self.safety, self.min_factor, self.max_factor, self.beta = order, safety, min_factor, max_factor, beta
        self.exponent = beta * 0.75 - 1 / order
        self.err_old = 1e-4  # previous accepted error ratio

    def reject_factor(self, ratio: float) -> float:
        return max(self.min_factor, self.safety * ratio ** self.exponent)

    def accept_factor(self, ratio: float) -> float:
        """The next step's factor after an accepted step of this ratio (remembers it as err_old)."""
        r = max(ratio, 1e-10)
        factor = min(self.max_factor, max(self.min_factor, self.safety * r ** self.exponent * self.err_old ** self.beta))
        self.err_old = r
        return factor


class Rock4Controller(StepController):
    """Step-size control of Abdulle's ROCK4 code: fac = (1/err)^(1/4); after two accepted steps in a row also the
    predictive (Gustafsson) factor errp^(1/4) fac^2 (h / hp), the smaller of the two; then
    fac = min(facmax, max(min_factor, safety fac)) with facmax = max_factor_first on the first step, max_factor
    after, and 1 on the step that follows a rejection. After a rejection h *= max(min_factor, safety err^-1/4)
    (min_factor for a non-finite err)."""

    def __init__(self, rtol, atol, *, order: int = 4, safety: float = 0.8, min_factor: float = 0.1,
                 max_factor_first: float = 5.0, max_factor: float = 2.0, **kw):
        super().__init__(rtol, atol, **kw)
        self.order, self.safety, self.min_factor, self.max_factor = order, safety, min_factor, max_factor
        self.facmax = max_factor_first
        self.rejected_last = False
        self.errp = self.hp = None  # error ratio and size of the previous accepted step

    def reject_factor(self, ratio: float) -> float:
        fac = self.min_factor if not math.isfinite(ratio) else max(self.min_factor, self.safety * ratio ** (-1 / self.order))
        self.rejected_last, self.facmax = True, 1.0
        return fac

    def accept_factor(self, ratio: float, h: float) -> float:
        """The next step's factor after an accepted step of this ratio and size h."""
        r = max(ratio, 1e-10)
        fac = r ** (-1 / self.order)
        if self.errp is not None and not self.rejected_last:
            fac = min(fac, self.errp ** (1 / self.order) * fac * fac * (h / self.hp))  # predictive (Gustafsson)
        fac = min(self.facmax, max(self.min_factor, self.safety * fac))
        self.errp, self.hp = r, h
        self.facmax, self.rejected_last = self.max_factor, False
        return fac
