"""The stepper contract of :mod:`dynamics.ode.engine` (:class:`Stepper`, :class:`Interpolant`), how a solve can
fail, and the starting step of Hairer, Norsett & Wanner.

A *stepper* advances y' = f(y) one accepted step at a time; the engine needs nothing else from a method. The
contract is the base class below: public methods live here and call the subclass's ``_..._impl`` hooks.
"""
from __future__ import annotations

import math

import torch


class SolverFailure(RuntimeError):
    """The solver cannot go on (the message says where and why)."""


class StepSizeCollapse(SolverFailure):
    """The step size underflowed: the problem is too stiff or the tolerance is unattainable."""


class Interpolant:
    """Dense output of one accepted step on [t0, t1]: ``interp(t) -> (P,)`` tensor for t0 <= t <= t1.

    Attributes t0, t1 (floats), y0, y1 ((P,) states at the ends: ``interp(t1)`` is exactly y1, the step's end
    state, which the engine's replay chains on). ``nbytes``: the memory it holds (the engine's dense-output
    budget counts it). Subclasses set t0, t1, y0, y1 and implement ``__call__`` and ``nbytes``.
    """

    t0: float
    t1: float
    y0: torch.Tensor
    y1: torch.Tensor

    def __call__(self, t: float) -> torch.Tensor:
        raise NotImplementedError

    @property
    def nbytes(self) -> int:
        raise NotImplementedError


class RowInterpolant(Interpolant):
    """Dense output that is a fixed linear combination of rows stored per step: ``interp(t) = rowsᵀ w(θ)``
    with θ = (t - t0) / h and ``rows`` (k, P). Subclasses set ``rows`` and ``h`` and implement
    :meth:`weights`; ``interp(t1)`` is exactly y1."""

    rows: torch.Tensor
    h: float

    def weights(self, th: float) -> tuple:
        """The k weights of the rows at θ in [0, 1]."""
        raise NotImplementedError

    @property
    def nbytes(self) -> int:
        return self.rows.numel() * self.rows.element_size()

    def __call__(self, t: float) -> torch.Tensor:
        """State (P,) at t in [t0, t1] (a new tensor); exactly y1 at t1."""
        if t == self.t1:
            return self.y1
        w = torch.tensor(self.weights((t - self.t0) / self.h), dtype=self.rows.dtype, device=self.rows.device)
        return torch.mv(self.rows.T, w)


class Stepper:
    """One adaptive method for y' = f(y) on a flat (P,) torch tensor, advanced one accepted step at a time.

    What the engine uses:

    - ``t`` (float) and ``y`` ((P,) tensor, read-only for callers): the current time and state;
    - :meth:`step` ``(t_bound) -> (t0, t1, h)``: one accepted step, never past ``t_bound`` (it lands on it
      exactly when it gets there);
    - :meth:`interpolant` ``() -> Interpolant``: dense output of the last step from the method's own
      continuous extension;
    - :meth:`replay` ``(t0, y0, t1, h) -> Interpolant``: that step recomputed from its start;
      ``replayable`` says whether the result is the same as the first time, bit for bit (then the engine may
      drop old interpolants and rebuild them, keeping memory bounded);
    - ``stats``: counters (``n_steps``, ``n_rejected``, ``nfe``, ...; copied into the Solution);
    - ``controller`` (:class:`dynamics.ode.controller.StepController`): rtol, atol (read them as
      ``stepper.rtol`` / ``stepper.atol``; they cannot be assigned), error norm, accept/reject, atol floor.

    How to add a method:

    1. Write its coefficients (a Butcher tableau, recurrence tables, ...) as module constants with the
       citation they come from, and its order.
    2. Subclass :class:`Interpolant` for its dense output (or reuse one: any interpolant that is exact at t1).
    3. Subclass :class:`Stepper`: set ``name`` and ``replayable``; in ``__init__`` call
       ``super().__init__(t0, y0, controller)`` with a controller of :mod:`dynamics.ode.controller` (or your
       own StepController subclass), then allocate work arrays and fill ``stats``.
    4. Implement ``_step_impl(t_bound) -> (t0, t1, h)``: attempt steps (ask ``self.controller`` for the error
       norm, the accept rule and the factors) until one is accepted; set ``self.t``, ``self.y`` to its end,
       count it in ``stats["n_steps"]``; land exactly on t_bound when t + h reaches it (within 1e-15 relative);
       raise :class:`StepSizeCollapse` (``self.check_step_size(h)``) when h underflows. Do not call the
       controller's ``after_accept``: :meth:`step` does.
    5. Implement ``_dense_output_impl() -> Interpolant`` for the step ``self.last`` = (t0, t1, h) just taken.
    6. Implement ``_replay_impl(t0, y0, t1, h) -> Interpolant``: the same step from its recorded start (count
       its evaluations apart, e.g. ``stats["nfe_replay"]``). If it cannot be bit for bit, set
       ``replayable = False``.
    7. Register it in :mod:`dynamics.ode.registry` under (backend, method) and add the method name to
       :mod:`dynamics.choices` (the command lines' choices); implement the classmethod :meth:`build` if the
       constructor's arguments differ from the default's. tests/dynamics/ode/test_registry.py checks that the
       two agree; add a test of its order against an exact solution.
    """

    name = "stepper"
    replayable = True

    def __init__(self, t0: float, y0: torch.Tensor, controller):
        self.t = float(t0)
        self.y = y0.clone()  # (P,) current state; read-only for callers
        self.controller = controller
        self.n_accepted = 0  # accepted steps, as the controller counts them (its atol floor)
        self.last = None  # (t0, t1, h) of the last accepted step
        self.stats: dict = {}

    @classmethod
    def build(cls, f, method: str, t0: float, y0: torch.Tensor, *, rtol: float, atol, t_bound: float,
              atol_floor=None) -> "Stepper":
        """The stepper for :func:`dynamics.ode.registry.make_stepper`: f(y, out=None) -> (P,) (a native stepper
        writes into ``out``). Native methods: ``cls(f, t0, y0, rtol, atol, atol_floor=...)``."""
        return cls(lambda y, out: f(y, out=out), t0, y0, rtol, atol, atol_floor=atol_floor)

    @property
    def rtol(self) -> float:
        return self.controller.rtol

    @property
    def atol(self):
        return self.controller.atol

    # ------------------------------------------------------------------ the contract
    def step(self, t_bound: float) -> tuple:
        """Take one accepted step from (t, y) towards t_bound (landing on it exactly at the end).

        Returns (t0, t1, h) of the step; afterwards ``t``, ``y`` are the new time and state."""
        if not t_bound > self.t:
            raise ValueError(f"{self.name}: t_bound = {t_bound!r} must lie after the current time t = {self.t!r}")
        self.last = self._step_impl(t_bound)
        self.n_accepted += 1
        self.controller.after_accept(self.n_accepted, self.y)
        return self.last

    def interpolant(self) -> Interpolant:
        """Dense output of the last accepted step (valid until the next call of :meth:`step`)."""
        if self.last is None:
            raise RuntimeError(f"{self.name}: no step taken yet; call step() before interpolant()")
        return self._dense_output_impl()

    def replay(self, t0: float, y0: torch.Tensor, t1: float, h: float) -> Interpolant:
        """The interpolant of the recorded accepted step (t0, y0) -> t1 of size h, recomputed from its start."""
        return self._replay_impl(t0, y0, t1, h)

    def check_step_size(self, h: float) -> None:
        """StepSizeCollapse unless h is finite, > 0 and moves t."""
        if not math.isfinite(h) or h <= 0 or self.t + h == self.t:
            raise StepSizeCollapse(f"{self.name}: the step size collapsed to {h:.3g} at t = {self.t:.6g}")

    # ------------------------------------------------------------------ what a method implements
    def _step_impl(self, t_bound: float) -> tuple:
        raise NotImplementedError

    def _dense_output_impl(self) -> Interpolant:
        raise NotImplementedError

    def _replay_impl(self, t0: float, y0: torch.Tensor, t1: float, h: float) -> Interpolant:
        raise NotImplementedError


def initial_step(f0_norm: float, y0_norm: float, f1_diff_norm, order: int, span: float) -> float:
    """Hairer, Norsett & Wanner's starting step (Solving ODEs I, §II.4), from scaled RMS norms.

    f0_norm = |f(y0)|, y0_norm = |y0| (both divided by atol + rtol |y0|); f1_diff_norm(h0) returns
    |f(y0 + h0 f0) - f0| in the same norm (one extra evaluation of f).
    """
    h0 = 1e-6 if y0_norm < 1e-5 or f0_norm < 1e-5 else 0.01 * y0_norm / f0_norm
    h0 = min(h0, span)
    d2 = f1_diff_norm(h0) / h0
    h1 = max(1e-6, h0 * 1e-3) if max(f0_norm, d2) <= 1e-15 else (0.01 / max(f0_norm, d2)) ** (1 / order)
    return min(100 * h0, h1, span)


def starting_step(f, y0: torch.Tensor, f0: torch.Tensor, rtol: float, atol, order: int, span: float) -> float:
    """:func:`initial_step` for y' = f(y) from (y0, f0 = f(y0)), norms scaled by atol + rtol |y0|;
    f(y, out) is called once."""
    scale = y0.abs() * rtol + atol

    def rms(v):
        return float(torch.linalg.vector_norm(v / scale)) / math.sqrt(v.numel())

    return initial_step(rms(f0), rms(y0), lambda h0: rms(f(y0 + h0 * f0, torch.empty_like(y0)) - f0), order, span)
