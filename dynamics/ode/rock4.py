"""ROCK4, a stabilized explicit Runge-Kutta method of order 4 for stiff-ish large states (backend ``native``).

Why: on the flow's plateaus the Jacobian has a negative eigenvalue ~150-400 times larger than the rate
that sets the accuracy (the slow escape), so an explicit method of fixed stage count (DOPRI5) sits at its
stability limit and takes steps of ~3/rho however smooth the solution is. A Chebyshev method instead buys
a real stability interval that grows with the *square* of its stage count: doubling the stages doubles
the cost per step but quadruples the largest stable step.

The method (A. Abdulle, "Fourth order Chebyshev methods with recurrence relation", SIAM J. Sci.
Comput. 23(6), 2002) in our words. One step of size h from y0 with f0 = f(y0):

1. Recurrence part, ms stages. K_0 = y0, K_1 = y0 + h mu_1 f0, and for j = 2..ms
   ``K_j = K_{j-1} + h mu_j f(K_{j-1}) + kappa_j (K_{j-1} - K_{j-2})``.
   On y' = lambda y this builds K_ms = P(h lambda) y0 with P a polynomial of degree ms from a family
   orthogonal with respect to a weight chosen so that P, multiplied by the finishing polynomial below,
   stays bounded by 1 on a long piece [-l_s, 0] of the negative real axis (l_s ~ 0.35 s^2 for s stages
   in all). The recurrence is three-term, so only two states are kept whatever ms is.
2. Finishing procedure: a 4-stage explicit Runge-Kutta step (coefficients a_ij, b_i depending on ms)
   from u = K_ms; composing it with the recurrence gives a method of order 4.
3. Error estimate: an embedded solution of order 3 that reuses the four finishing stages plus
   f(y1) (first-same-as-last: that evaluation is the next step's f0 anyway), err = y1 - y1_hat.

Cost: ms + 4 new evaluations of f per step attempt. The stage count is chosen per step from h * rho
(rho: an estimate of the spectral radius of the Jacobian): the smallest tabulated ms whose total
s = ms + 4 stages satisfy 0.353 s^2 - 3 > h rho (Abdulle's rule; the tables used reach ms = 138, beyond
which the step is shortened). Coefficients: :mod:`dynamics.ode.rock4_tables` (published numbers, with source).

Spectral radius: nonlinear power iteration on f itself, ``rho ~ |f(y + eps v) - f(y)| / |eps v|`` with
eps |v| = sqrt(machine eps) |y| (a relative perturbation: large enough to rise above rounding of f,
small enough to stay in the linear regime), the next v being the difference just computed; it stops
when two successive estimates agree to 5 % (at most 50 iterations). The vector is kept and warm-starts
the next estimate, which then converges in 2-3 evaluations. rho is re-estimated every RHO_EVERY = 25
accepted steps and after every rejection (a rejection is how an outdated, too small rho shows), and
multiplied by RHO_SAFETY = 1.2: the iteration approaches the dominant eigenvalue from below, and a
stage count chosen from an underestimate would leave the stiffest mode just outside the stability
interval (as in Abdulle's code and OrdinaryDiffEq.jl). Its evaluations count in ``nfe`` and, separately,
in ``nfe_spectral``.

Step-size control (:class:`dynamics.ode.controller.Rock4Controller`, with the settings below) as in Abdulle's codes: fac = (1/err)^(1/4) with err the RMS norm of
(y1 - y1_hat) / (atol + rtol max(|y0|, |y1|)); after two accepted steps in a row also the predictive
(Gustafsson) factor errp^(1/4) fac^2 (h / hp) that uses the previous step's error errp and size hp, the
smaller of the two; then fac = min(facmax, max(0.1, 0.8 fac)) with facmax 5 on the first step, 2 after,
and 1 on the step that follows a rejection.

Dense output: the cubic Hermite interpolant of (y0, y1, f0, f1) on each step, 3rd-order accurate (local
error O(h^4)); f1 = f(y1) is computed for the error estimate anyway. A step is a pure function of (y0, h)
and its stage count: the stage count of every accepted step is recorded (a few bytes per step), so
:meth:`Rock4Stepper.replay` recomputes a step bit for bit, as :mod:`dynamics.ode.engine` needs.

Testing hooks: ``fixed_step=h`` takes every step of size h and accepts it whatever its error;
``fixed_stages=ms`` forces the recurrence degree (one of the tabulated ``MS``) and skips the spectral
radius estimate.
"""
from __future__ import annotations

import bisect
import math
from array import array

import torch

from dynamics.ode.rock4_tables import FPA, FPB, FPBE, MS, RECF
from dynamics.ode.base import RowInterpolant, Stepper, starting_step
from dynamics.ode.controller import Rock4Controller

ORDER = 4
SAFETY, MIN_FACTOR = 0.8, 0.1
MAX_FACTOR_FIRST, MAX_FACTOR = 5.0, 2.0  # growth limit on the first accepted step / afterwards
RHO_EVERY = 25  # accepted steps between spectral-radius estimates
RHO_SAFETY = 1.2
RHO_TOL, RHO_MAXITER = 0.05, 50
# stage rule: s = ms + 4 stages in all are used for h rho < 0.353 s^2 - 3 (Abdulle)
STAB_SLOPE, STAB_OFFSET = 0.353, 3.0
# Degrees not used: the tabulated polynomials of degrees 129 and 148 exceed 1 in modulus near h lambda = -8
# (max 1.006 and 1.008, in float64 and in 50-digit arithmetic alike; every other degree stays <= 1 on its
# whole interval, tests/dynamics/ode/test_rock4.py), so a mode there would grow by ~0.5 % a step; 138 covers their range.
UNUSED_DEGREES = (129, 148)
USED = tuple(i for i, m in enumerate(MS) if m not in UNUSED_DEGREES)  # indices into MS, increasing degree
S_MAX = MS[USED[-1]] + 4
HRHO_MAX = STAB_SLOPE * S_MAX ** 2 - STAB_OFFSET  # the longest stability interval used
# where each degree's recurrence coefficients start in RECF (2 ms - 1 numbers per degree)
RECF_START = tuple(sum(2 * m - 1 for m in MS[:i]) for i in range(len(MS)))


def degree_index(h_rho: float) -> int:
    """Index into MS of the cheapest tabulated method that is stable for the real eigenvalue -h_rho."""
    s = int(math.sqrt((STAB_OFFSET + max(h_rho, 0.0)) / STAB_SLOPE)) + 1  # total stages: 0.353 s^2 - 3 > h rho
    ms = max(s - 4, 1)
    for i in USED:
        if MS[i] >= ms:
            return i
    return USED[-1]


class HermiteInterp(RowInterpolant):
    """Dense output of one step on [t0, t1]: the cubic Hermite interpolant of (y0, y1, f0, f1).

    Holds one (4, P) array, rows y0, y1, d0 = h f0 - (y1 - y0), d1 = h f1 - (y1 - y0), so that
    y(t0 + th h) = (1 - th) y0 + th y1 + th (1 - th)^2 d0 - th^2 (1 - th) d1 is one BLAS pass.
    """

    def __init__(self, t0: float, t1: float, h: float, y0, y1, f0, f1):
        self.t0, self.t1, self.h = t0, t1, h
        self.rows = rows = torch.empty((4, y0.numel()), dtype=y0.dtype, device=y0.device)
        rows[0].copy_(y0)
        rows[1].copy_(y1)
        torch.sub(y0, y1, out=rows[2]).add_(f0, alpha=h)
        torch.sub(y0, y1, out=rows[3]).add_(f1, alpha=h)
        self.y0, self.y1 = rows[0], rows[1]

    def weights(self, th: float) -> tuple:
        th1 = 1.0 - th
        return (th1, th, th * th1 * th1, -th * th * th1)

    def __call__(self, t: float) -> torch.Tensor:
        """State (P,) at t in [t0, t1]; exactly y0 at t0 and y1 at t1."""
        return self.y0 if t == self.t0 and t != self.t1 else super().__call__(t)


class Rock4Stepper(Stepper):
    """Adaptive ROCK4 for y' = f(y, out) on one flat torch tensor, one accepted step at a time.

    f(y, out) must write f(y) into ``out`` (shape (P,)) and may return it. ``atol`` is a float or a
    (P,) tensor; ``atol_floor`` (optional) a floor the controller applies itself (:class:`dynamics.ode.controller.
    StepController`). ``stats``: accepted and rejected steps,
    ``nfe`` (every evaluation of f: steps, spectral radius, starting step), ``nfe_spectral`` (those of the
    power iteration), ``n_spectral`` (estimates made), ``nfe_replay`` (replayed steps), ``rho`` (last
    estimate, safety factor included), ``stages_max`` / ``stages_mean`` (s = ms + 4 over accepted steps).
    """

    name = "rock4"
    replayable = True

    def __init__(self, f, t0: float, y0: torch.Tensor, rtol: float, atol, *, first_step: float | None = None,
                 fixed_step: float | None = None, fixed_stages: int | None = None, rho_every: int = RHO_EVERY,
                 atol_floor=None):
        if fixed_stages is not None and fixed_stages not in MS:
            raise ValueError(f"fixed_stages = {fixed_stages!r} is not a tabulated ROCK4 degree; choose from {MS}")
        if fixed_step is not None and not (math.isfinite(fixed_step) and fixed_step > 0):
            raise ValueError(f"fixed_step = {fixed_step!r} must be finite and > 0")
        super().__init__(t0, y0, Rock4Controller(rtol, atol, order=ORDER, safety=SAFETY, min_factor=MIN_FACTOR,
                                                 max_factor_first=MAX_FACTOR_FIRST, max_factor=MAX_FACTOR,
                                                 floor=atol_floor))
        self.f = f
        self.fixed_step, self.rho_every = fixed_step, int(rho_every)
        self.fixed_index = MS.index(fixed_stages) if fixed_stages is not None else None
        self.stats = dict(n_steps=0, n_rejected=0, nfe=0, nfe_spectral=0, n_spectral=0, nfe_replay=0, rho=None,
                          stages_max=0, stages_mean=0.0)
        self.f0 = torch.empty_like(self.y)  # f(y)
        # work arrays, allocated once (fresh 8 MB tensors per stage cost page faults at P ~ 1e6)
        P, kw = y0.numel(), dict(dtype=y0.dtype, device=y0.device)
        self.k = torch.empty((4, P), **kw)  # finishing stages, one per row
        self._pairs = (torch.empty((2, P), **kw), torch.empty((2, P), **kw))  # recurrence: rows (K_j, f(K_j))
        (self._ytmp, self._ynew, self._fnew, self._yprev, self._fprev, self._err, self._scale,
         self._scratch) = (torch.empty_like(self.y) for _ in range(8))
        self._coef: dict[int, tuple] = {}
        self._eval(self.y, self.f0)
        self.h = fixed_step if fixed_step is not None else first_step
        self.rho = None
        self._rho_v = None  # the power iteration's last direction (warm start)
        self._since_rho = 0
        # (t0, h, degree index) of every accepted step, for replay: 17 bytes a step
        self._rec_t0, self._rec_h, self._rec_deg = array("d"), array("d"), array("B")

    # ------------------------------------------------------------------ pieces
    def _eval(self, y, out, counter=None):
        self.stats["nfe_replay" if counter == "replay" else "nfe"] += 1
        if counter == "spectral":
            self.stats["nfe_spectral"] += 1
        return self.f(y, out)

    def _initial_step(self, span: float) -> float:
        return starting_step(self._eval, self.y, self.f0, self.controller.rtol, self.controller.atol, ORDER, span)

    def _estimate_rho(self) -> float:
        """Spectral radius of df/dy at y by nonlinear power iteration (see the module docstring), x RHO_SAFETY."""
        y, f0 = self.y, self.f0
        z, fz = self._ytmp, self._ynew  # free between steps
        v = self._rho_v if self._rho_v is not None else f0
        y_norm, v_norm = float(torch.linalg.vector_norm(y)), float(torch.linalg.vector_norm(v))
        sq = math.sqrt(torch.finfo(y.dtype).eps)
        dz = y_norm * sq if y_norm > 0 else sq
        if v_norm > 0:
            torch.add(y, v, alpha=dz / v_norm, out=z)
        elif y_norm > 0:
            torch.add(y, y, alpha=sq, out=z)
        else:
            z.fill_(dz / math.sqrt(y.numel()))
        est = 0.0
        for it in range(1, RHO_MAXITER + 1):
            self._eval(z, fz, "spectral")
            fz.sub_(f0)  # f(z) - f(y) ~ J (z - y)
            d_norm = float(torch.linalg.vector_norm(fz))
            prev, est = est, d_norm / dz
            if it >= 2 and abs(est - prev) <= RHO_TOL * est:
                break
            if d_norm > 0:
                torch.add(y, fz, alpha=dz / d_norm, out=z)
            else:  # f did not move: try another direction (flip one entry of z - y)
                z.sub_(y)
                j = it % z.numel()
                z[j] = -z[j]
                z.add_(y)
        if not math.isfinite(est):
            est = 0.0
        self._rho_v = torch.sub(z, y, out=self._rho_v) if self._rho_v is not None else z - y
        self.stats["n_spectral"] += 1
        self._since_rho = 0
        self.rho = RHO_SAFETY * est
        self.stats["rho"] = self.rho
        return self.rho

    def _coefficients(self, i: int) -> tuple:
        """(a31/a32, a41..a43, b, b - b_hat) rows of degree index i as tensors (cached), and the scalars."""
        c = self._coef.get(i)
        if c is None:
            a21, a31, a32, a41, a42, a43 = FPA[i]
            b, be = FPB[i], FPBE[i]
            kw = dict(dtype=self.y.dtype, device=self.y.device)
            c = (a21, torch.tensor((a31, a32), **kw), torch.tensor((a41, a42, a43), **kw), torch.tensor(b, **kw),
                 torch.tensor([b[j] - be[j] for j in range(4)], **kw), be[4])
            self._coef[i] = c
        return c

    def _advance(self, y0, f0, h: float, i: int, bufs, counter=None):
        """One ROCK4 step of size h and degree index i from (y0, f0 = f(y0)).

        bufs = ((pa, pb) two (2, P), k (4, P), ytmp, ynew, fnew, err); returns (y1, f1, err) living in ynew,
        fnew, err. The recurrence keeps K_{j-1} and f(K_{j-1}) as the two rows of one array, so that
        K_j = (1 + kappa_j) K_{j-1} + h mu_j f(K_{j-1}) - kappa_j K_{j-2} is one BLAS pass (addmv, written over
        K_{j-2}): at P ~ 1e6 a pass over the state costs about half a right-hand side here.
        """
        (pa, pb), k, ytmp, ynew, fnew, err = bufs
        ms, r = MS[i], RECF_START[i]
        # recurrence: K_1 = y0 + h mu_1 f0; K_j = K_{j-1} + h mu_j f(K_{j-1}) + kappa_j (K_{j-1} - K_{j-2})
        torch.add(y0, f0, alpha=h * RECF[r], out=pa[0])
        for j in range(2, ms + 1):
            mu, kappa = RECF[r + 2 * j - 3], RECF[r + 2 * j - 2]
            self._eval(pa[0], pa[1], counter)  # pa = (K_{j-1}, f(K_{j-1})); pb[0] = K_{j-2} (y0 for j = 2)
            w = torch.tensor((1.0 + kappa, h * mu), dtype=y0.dtype, device=y0.device)
            if j == 2:
                torch.addmv(y0, pa.T, w, beta=-kappa, out=pb[0])
            else:
                pb[0].addmv_(pa.T, w, beta=-kappa)
            pa, pb = pb, pa
        u = pa[0]
        # finishing procedure: 4-stage explicit RK from u, then f(y1) for the embedded estimate
        a21, a3, a4, b, e, be5 = self._coefficients(i)
        self._eval(u, k[0], counter)
        torch.add(u, k[0], alpha=h * a21, out=ytmp)
        self._eval(ytmp, k[1], counter)
        torch.addmv(u, k[:2].T, a3 * h, out=ytmp)
        self._eval(ytmp, k[2], counter)
        torch.addmv(u, k[:3].T, a4 * h, out=ytmp)
        self._eval(ytmp, k[3], counter)
        torch.addmv(u, k.T, b * h, out=ynew)
        self._eval(ynew, fnew, counter)
        torch.mv(k.T, e * h, out=err)  # y1 - y1_hat = h (sum_i (b_i - b^_i) k_i - b^_5 f1)
        err.add_(fnew, alpha=-h * be5)
        return ynew, fnew, err

    def _bufs(self):
        return (self._pairs, self.k, self._ytmp, self._ynew, self._fnew, self._err)

    # ------------------------------------------------------------------ protocol
    def _step_impl(self, t_bound: float) -> tuple:
        ctrl = self.controller
        if self.h is None:
            self.h = self._initial_step(t_bound - self.t)
        while True:
            if self.fixed_index is None and (self.rho is None or self._since_rho >= self.rho_every):
                self._estimate_rho()
            h = self.h
            hit = self.t + h >= t_bound - 1e-15 * abs(t_bound)
            hs = t_bound - self.t if hit else h
            if self.fixed_index is not None:
                i = self.fixed_index
            else:
                if hs * self.rho > HRHO_MAX:  # beyond the longest tabulated stability interval
                    hs, hit = 0.8 * HRHO_MAX / self.rho, False
                    self.check_step_size(hs)
                i = degree_index(hs * self.rho)
            y_new, f_new, err = self._advance(self.y, self.f0, hs, i, self._bufs())
            if self.fixed_step is not None:
                ratio = 0.0
                break
            ratio = ctrl.norm(err, self.y, y_new, self._scale, self._scratch)
            if ctrl.accepts(ratio):  # (a NaN ratio is a rejection)
                break
            self.stats["n_rejected"] += 1
            self.h = hs * ctrl.reject_factor(ratio)
            self._since_rho = self.rho_every  # an outdated rho shows as a rejection: estimate it again
            self.check_step_size(self.h)
        n = self.stats["n_steps"] = self.stats["n_steps"] + 1
        s = MS[i] + 4
        self.stats["stages_max"] = max(self.stats["stages_max"], s)
        self.stats["stages_mean"] += (s - self.stats["stages_mean"]) / n
        t0, t1 = self.t, (t_bound if hit else self.t + hs)
        self._rec_t0.append(t0)
        self._rec_h.append(hs)
        self._rec_deg.append(i)
        # rotate buffers: the old state and slope become the previous ones, the new ones the current
        self._yprev, self.y, self._ynew = self.y, y_new, self._yprev
        self._fprev, self.f0, self._fnew = self.f0, f_new, self._fprev
        self.t = t1
        self._since_rho += 1
        if self.fixed_step is not None:
            self.h = self.fixed_step
            return t0, t1, hs
        fac = ctrl.accept_factor(ratio, hs)
        if not hit or fac < 1:
            self.h = hs * fac
        self.check_step_size(self.h)
        return t0, t1, hs

    def _dense_output_impl(self) -> HermiteInterp:
        t0, t1, hs = self.last
        return HermiteInterp(t0, t1, hs, self._yprev, self.y, self._fprev, self.f0)

    def _replay_impl(self, t0: float, y0: torch.Tensor, t1: float, h: float) -> HermiteInterp:
        """The recorded step recomputed bit for bit (its degree is looked up in the record)."""
        j = bisect.bisect_left(self._rec_t0, t0)
        if j == len(self._rec_t0) or self._rec_t0[j] != t0 or self._rec_h[j] != h:
            raise ValueError(f"rock4: no accepted step of size {h!r} from t = {t0!r} to replay")
        f0 = torch.empty_like(y0)
        self._eval(y0, f0, "replay")
        bufs = ((torch.empty_like(self._pairs[0]), torch.empty_like(self._pairs[1])), torch.empty_like(self.k),
                torch.empty_like(y0), torch.empty_like(y0), torch.empty_like(y0), torch.empty_like(y0))
        y1, f1, _ = self._advance(y0, f0, h, self._rec_deg[j], bufs, "replay")
        return HermiteInterp(t0, t1, h, y0, y1, f0, f1)
