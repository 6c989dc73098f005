"""A lean Dormand-Prince 5(4) stepper for very large states (backend ``native``).

torchdiffeq stores Runge-Kutta stages as the last axis of a (P, 7) tensor, so every
stage combination is a strided pass over memory; at P ~ 1e6 that bookkeeping costs
about three times the model's own right-hand side (measured: 140 ms of 200 ms per step
for S=1024, R=32, D=32). Here the stages are rows of a (7, P) array, combined by one
BLAS matrix-vector product each, and the right-hand side writes into its row directly.

Each accepted step returns its own dense interpolant, the method's 4th-order continuous
extension (Hairer, Norsett & Wanner, "Solving ODEs I", §II.6). A step is a pure function
of (y0, h), so :meth:`Dopri5Stepper.replay` re-takes a recorded step bit for bit: that is
how :mod:`dynamics.ode.engine` offers dense output over a whole run without keeping every
interpolant in memory. Error control as in §II.4: RMS norm of
err / (atol + rtol * max(|y0|, |y1|)), PI step-size control (:class:`dynamics.ode.controller.PIController`
with the settings below).

The method: J. R. Dormand & P. J. Prince, "A family of embedded Runge-Kutta formulae", J. Comput. Appl. Math.
6(1), 19-26 (1980); the continuous extension and the controller settings: E. Hairer, S. P. Norsett &
G. Wanner, "Solving Ordinary Differential Equations I", 2nd ed., Springer (1993), §II.4-II.6.
"""
from __future__ import annotations

import torch

from dynamics.ode.base import RowInterpolant, Stepper, starting_step
from dynamics.ode.controller import PIController

# Dormand & Prince (1980), RK5(4)7M: nodes, stage matrix, 5th-order weights, error weights.
C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
B = A[6] + (0.0,)  # 5th-order solution (first same as last: stage 7 is f(y1))
B_HAT = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
E = tuple(b - bh for b, bh in zip(B, B_HAT))  # error estimate weights (y5 - y4)
# Continuous extension of order 4 (Hairer, Norsett & Wanner, §II.6; the coefficients of their
# DOPRI5 code): y(t0 + theta h) from y0, y1, k1, k7 and h * sum_i D_i k_i.
D = (-12715105075 / 11282082432, 0.0, 87487479700 / 32700410799, -10690763975 / 1880347072,
     701980252875 / 199316789632, -1453857185 / 822651844, 69997945 / 29380423)
ORDER = 5
# the controller's settings (PIController)
SAFETY, MIN_FACTOR, MAX_FACTOR = 0.9, 0.2, 10.0
# PI step-size control (Hairer & Wanner's DOPRI5 code, beta = 0.04): damps the accept/reject
# oscillation of explicit methods that run at their stability limit, as this flow does on its plateaus.
BETA = 0.04


class Dopri5Interp(RowInterpolant):
    """Dense output of one accepted step on [t0, t1]: the 4th-order continuous extension.

    Holds one (5, P) array, rows y0, y1 (the step's exact end state), bspl = h k0 - (y1 - y0),
    r4 = (y1 - y0) - h k6 - bspl and r5 = h sum_j d_j k_j, so that

        y(t0 + th h) = y0 + th (dy + th1 (bspl + th (r4 + th1 r5)))      (dy = y1 - y0, th1 = 1 - th)
                     = th1 y0 + th y1 + th th1 bspl + th^2 th1 r4 + th^2 th1^2 r5

    is one matrix-vector product: one fresh (P,) array per evaluation and one (5, P) array per step instead of
    about seven (P,) temporaries each (fresh memory is what costs at P ~ 1e4-1e6: page faults, not arithmetic).
    The inputs are copied; none is kept.
    """

    def __init__(self, t0: float, t1: float, h: float, y0, y1, k0, k6, r5):
        self.t0, self.t1, self.h = t0, t1, h
        self.rows = rows = torch.empty((5, y0.numel()), dtype=y0.dtype, device=y0.device)
        rows[0].copy_(y0)
        rows[1].copy_(y1)
        torch.sub(y0, y1, out=rows[2]).add_(k0, alpha=h)  # bspl = h k0 - (y1 - y0)
        torch.sub(y1, y0, out=rows[3]).sub_(k6, alpha=h).sub_(rows[2])  # r4 = (y1 - y0) - h k6 - bspl
        rows[4].copy_(r5)
        self.y0, self.y1 = rows[0], rows[1]

    @classmethod
    def from_rows(cls, t0: float, t1: float, h: float, rows: torch.Tensor) -> "Dopri5Interp":
        """The interpolant whose (5, P) rows (y0, y1, bspl, r4, r5, as above) were computed elsewhere (batched);
        ``rows`` is kept, not copied."""
        self = cls.__new__(cls)
        self.t0, self.t1, self.h = t0, t1, h
        self.rows = rows
        self.y0, self.y1 = rows[0], rows[1]
        return self

    @staticmethod
    def batched_rows(y0, y1, K, h, d) -> torch.Tensor:
        """The (k, 5, P) rows of k steps at once: y0, y1 (k, P), stages K (k, 7, P), step sizes h (k, 1), the
        dense-output weights d (7,); the same formulas as __init__ with a per-row h."""
        k, P = y0.shape
        st = torch.empty((k, 5, P), dtype=y0.dtype, device=y0.device)
        st[:, 0], st[:, 1] = y0, y1
        torch.sub(y0, y1, out=st[:, 2]).add_(K[:, 0] * h)  # bspl = h k0 - (y1 - y0)
        torch.sub(y1, y0, out=st[:, 3]).sub_(K[:, 6] * h).sub_(st[:, 2])  # r4 = (y1 - y0) - h k6 - bspl
        torch.bmm((d[None, :] * h)[:, None, :], K, out=st[:, 4:5])  # r5 = h sum_j d_j k_j
        return st

    def weights(self, th: float) -> tuple:
        th1 = 1.0 - th
        return (th1, th, th * th1, th * th * th1, th * th * th1 * th1)


class Dopri5Stepper(Stepper):
    """Adaptive DOPRI5 for y' = f(y, out) on one flat torch tensor, one accepted step at a time.

    f(y, out) must write f(y) into ``out`` (shape (P,)) and may return it. ``stats`` counts
    accepted steps, rejected steps and evaluations of f (``nfe_replay``: those of replayed steps).
    The interpolant of the last step is built only on request (:meth:`interpolant`): at P ~ 1e6
    building it costs about one right-hand side, and most steps need none.
    """

    name = "dopri5"
    replayable = True

    def __init__(self, f, t0: float, y0: torch.Tensor, rtol: float, atol, *, first_step: float | None = None,
                 atol_floor=None):
        super().__init__(t0, y0, PIController(rtol, atol, order=ORDER, safety=SAFETY, min_factor=MIN_FACTOR,
                                              max_factor=MAX_FACTOR, beta=BETA, floor=atol_floor))
        self.f = f
        self.stats = dict(n_steps=0, n_rejected=0, nfe=0, nfe_replay=0)
        P, dt_, dev = y0.numel(), y0.dtype, y0.device
        self.k = torch.empty((7, P), dtype=dt_, device=dev)  # stage derivatives, one per row
        # work arrays, allocated once: fresh 8 MB tensors per step cost page faults at P ~ 1e6
        self._ytmp, self._yprev, self._err, self._scale, self._scratch = (torch.empty_like(self.y) for _ in range(5))
        self._a_rows = [torch.tensor(a, dtype=dt_, device=dev) for a in A]
        self._e_row = torch.tensor(E, dtype=dt_, device=dev)
        self._d_row = torch.tensor(D, dtype=dt_, device=dev)
        self._eval(self.y, self.k[0])
        self.h = first_step
        self._fsal_pending = False  # k[6] = f(y) still has to move to k[0]

    def _eval(self, y, out, counter="nfe"):
        self.stats[counter] += 1
        return self.f(y, out)

    def _initial_step(self, span: float) -> float:
        return starting_step(self._eval, self.y, self.k[0], self.controller.rtol, self.controller.atol, ORDER, span)

    def _stages(self, y, k, hs, ytmp, counter="nfe"):
        """Fill k[1:7] for a step of size hs from y (k[0] = f(y) given); ytmp ends as the 5th-order y1."""
        for i in range(1, 7):
            torch.addmv(y, k[:i].T, self._a_rows[i] * hs, out=ytmp)  # y + hs * sum_j a_ij k_j
            self._eval(ytmp, k[i], counter)
        return ytmp  # a_7j = b_j: the last stage point is the 5th-order solution; k[6] = f(y1) (FSAL)

    def _interp(self, t0, t1, hs, y0, y1, k) -> Dopri5Interp:
        return Dopri5Interp(t0, t1, hs, y0, y1, k[0], k[6], torch.mv(k.T, self._d_row * hs))

    def _step_impl(self, t_bound: float) -> tuple:
        k, ctrl = self.k, self.controller
        if self._fsal_pending:
            k[0].copy_(k[6])
            self._fsal_pending = False
        if self.h is None:
            self.h = self._initial_step(t_bound - self.t)
        while True:
            h = self.h
            hit = self.t + h >= t_bound - 1e-15 * abs(t_bound)
            hs = t_bound - self.t if hit else h
            y_new = self._stages(self.y, k, hs, self._ytmp)
            torch.mv(k.T, self._e_row * hs, out=self._err)
            ratio = ctrl.norm(self._err, self.y, y_new, self._scale, self._scratch)
            if ctrl.accepts(ratio):
                break
            self.stats["n_rejected"] += 1
            self.h = hs * ctrl.reject_factor(ratio)
            self.check_step_size(self.h)
        self.stats["n_steps"] += 1
        t0, t1 = self.t, (t_bound if hit else self.t + hs)
        # rotate buffers: the old state becomes y_prev, the stage point becomes the state
        self._yprev, self.y, self._ytmp = self.y, y_new, self._yprev
        self._fsal_pending = True
        self.t = t1
        factor = ctrl.accept_factor(ratio)
        if not hit or factor < 1:
            self.h = hs * factor
        self.check_step_size(self.h)
        return t0, t1, hs

    def _dense_output_impl(self) -> Dopri5Interp:
        t0, t1, hs = self.last
        return self._interp(t0, t1, hs, self._yprev, self.y, self.k)

    def _replay_impl(self, t0: float, y0: torch.Tensor, t1: float, h: float) -> Dopri5Interp:
        """The recorded step recomputed bit for bit (a pure function of (y0, h))."""
        k = torch.empty_like(self.k)
        self._eval(y0, k[0], "nfe_replay")
        y1 = self._stages(y0, k, h, torch.empty_like(y0), "nfe_replay")
        return self._interp(t0, t1, h, y0, y1, k)
