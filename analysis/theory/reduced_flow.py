"""``--mode reduced``: integrate the lambdified class-reduced flow instead of the full system.

The state is the 10 class parameters of :mod:`analysis.theory.reduction` (w1, w0, k, v1, v0, kap, wn, kn,
we, ke). Every quantity the full run reports (losses, accuracy, hallucination gap, conservation
drifts, dL/dt, per-class norms) has a closed form in them, so the result is a
:class:`dynamics.flow.solve.FlowResult` with the same keys and trajectory columns as ``--mode full``.

Tolerances: scipy's DOP853 with rtol = the run's rtol (default 1e-9; tests use 1e-10) and
atol = 1e-3 rtol alpha / sqrt|A| (the smallest initial entry), as in the full flow. Phase times are
roots of L(t) - theta on the solver's dense output (brentq, xtol 1e-13 relative), so they carry
the integration error only.
"""
from __future__ import annotations

import dataclasses
import math
import time

import numpy as np

from common.errors import ConfigError, check_choice
from dynamics.flow.solve import save_times
from dynamics.ode.adapters import SCIPY_RTOL_MIN
from dynamics.flow.trajectory import Trajectory
from models.linear import init_entries
from models.task import make_task

from analysis.phases import Phases, Plateau, locate_first_crossing, thresholds
from analysis.theory.modes import escape_rates
from analysis.results.flow import FlowResult, analyze_flow

_REQUIREMENTS = ("the reduced flow needs: a structured or balanced fact table in which every answer "
                 "is held by S/D subjects (D divides S), uniform frequencies (zipf exponents 0) and "
                 "a balanced or uniform initialization; use --mode full")


def check_reducible(config) -> None:
    """Raise ConfigError (one line) unless ``config`` (a FlowConfig) satisfies the reduction's assumptions."""
    t = config.task
    if t.S % t.D != 0:
        raise ConfigError(f"S = {t.S}, D = {t.D}: D does not divide S, so answers have unequal subject "
                          "counts; " + _REQUIREMENTS)
    if t.facts not in ("structured", "balanced"):
        # a random or user table qualifies only if it happens to give every answer S/D subjects
        task = make_task(t)
        counts = np.stack([np.bincount(task.answers[:, r] - r * t.D, minlength=t.D) for r in range(t.R)])
        if not np.all(counts == t.S // t.D):
            lo, hi = int(counts.min()), int(counts.max())
            raise ConfigError(f"facts = {t.facts!r} gives answers between {lo} and {hi} subjects (the reduction "
                              f"needs exactly S/D = {t.S // t.D} each); " + _REQUIREMENTS)
    if t.zipf_subjects != 0 or t.zipf_relations != 0:
        raise ConfigError(f"zipf_subjects = {t.zipf_subjects:g}, zipf_relations = {t.zipf_relations:g}: "
                          "non-uniform frequencies break the class symmetry; " + _REQUIREMENTS)
    if config.init not in ("balanced", "uniform"):
        raise ConfigError(f"init = {config.init!r}: user arrays are not constant on the symmetry classes; "
                          + _REQUIREMENTS)
    if config.dtype != "float64":
        raise ConfigError(f"dtype = {config.dtype!r}: the reduced flow runs in float64 only; "
                          "drop --dtype or use --mode full")


def initial_classes(config) -> np.ndarray:
    """(10,) initial class parameters (order of analysis.theory.reduction.PARAM_NAMES)."""
    t = config.task
    w, kk = init_entries(config.init, config.alpha, t.R * t.D)
    return np.array([w, w, kk, w, w, kk, w, kk, w, kk], dtype=np.float64)


class ClassMetrics:
    """Closed forms of every monitored quantity on class parameters y (10, n)."""

    def __init__(self, S, R, D, T, N):
        self.S, self.R, self.D, self.T, self.N = S, R, D, T, N

    def margins(self, y):
        return y[2] * (y[0] - y[1]), y[5] * (y[3] - y[4])

    def losses(self, y):
        a, b = self.margins(y)
        LS = np.log1p((self.D - 1) * np.exp(-a))
        LR = np.log1p((self.R - 1) * np.exp(-b))
        return LS, LR

    def loss_of(self, y) -> float:
        """The loss of one state y (10,)."""
        LS, LR = self.losses(np.asarray(y).reshape(10, -1))
        return float((LS + LR)[0])

    def conserved(self, y):
        R, D, T, N = self.R, self.D, self.T, self.N
        w1, w0, k, v1, v0, kap, wn, kn, we, ke = y
        q = dict(
            balance=np.stack([k**2 - R * w1**2 - R * (D - 1) * w0**2, kap**2 - D * v1**2 - D * (R - 1) * v0**2,
                              kn**2 - R * D * wn**2, ke**2 - R * D * we**2]),
            column_sums=np.stack([R * w1 + R * (D - 1) * w0, D * v1 + D * (R - 1) * v0, R * D * wn, R * D * we]),
        )
        if T - 3 == N:
            q["noise_eos_product"] = (kn * ke - R * D * wn * we)[None]
        return q

    def rows(self, t, y, dy):
        """Trajectory columns (dict of (n,) arrays) at times t (n,), states y (10, n), derivatives dy (10, n)."""
        from analysis.theory.reduction import MULTIPLICITY, PARAMS, S as sS, R as sR, D as sD, N as sN  # sympy, on demand

        S, R, D = self.S, self.R, self.D
        a, b = self.margins(y)
        LS, LR = self.losses(y)
        q = self.conserved(y)
        q0 = self.conserved(y[:, :1])
        cols = dict(t=t, loss=LS + LR, relation_loss=LR, subject_loss=LS,
                    accuracy=((a > 0) | (D == 1)) & ((b > 0) | (R == 1)),
                    # KL(uniform on r's block || p_hat) = log(e^a + D - 1) - a/D - log D + L_R
                    hallucination_gap=np.logaddexp(a, math.log(D - 1) if D > 1 else -np.inf) - a / D
                    - math.log(D) + LR)
        cols["accuracy"] = cols["accuracy"].astype(np.float64)
        cols["p_true"] = np.exp(-(LS + LR))  # every fact has the same loss in the class-symmetric state
        cols["invariant_drift"] = np.abs(q["balance"] - q0["balance"]).max(0)
        for name in q:
            if name != "balance":
                cols[f"{name}_drift"] = np.abs(q[name] - q0[name]).max(0)
        # dL/dt = -sum over real entries of (d entry/dt)^2 = -sum_p n_p (dp/dt)^2
        subs = {sS: S, sR: R, sD: D, sN: self.N}
        mult = np.array([float(MULTIPLICITY[p].subs(subs)) for p in PARAMS])
        cols["dloss_dt"] = -(mult[:, None] * dy**2).sum(0)
        w1, w0, k, v1, v0, kap, wn, kn, we, ke = y
        cols["W_subject"] = np.sqrt(R * w1**2 + R * (D - 1) * w0**2)
        cols["K_subject"] = np.abs(k)
        cols["W_relation"] = np.sqrt(D * v1**2 + D * (R - 1) * v0**2)
        cols["K_relation"] = np.abs(kap)
        cols["W_noise"] = np.sqrt(R * D) * np.abs(wn)
        cols["K_noise"] = np.abs(kn)
        cols["W_eos"] = np.sqrt(R * D) * np.abs(we)
        cols["K_eos"] = np.abs(ke)
        return cols


def expand_state(config, y) -> tuple:
    """Class parameters (10,) -> compressed full state (Wt (C, |A|), K (C,)) of models.linear."""
    task = make_task(config.task)
    S, R, D = task.S, task.R, task.D
    A = R * D
    w1, w0, k, v1, v0, kap, wn, kn, we, ke = y
    Wt = np.empty((S + R + 2, A))
    Wt[:S] = w0
    Wt[np.arange(S)[:, None], task.answers] = w1
    blocks = np.arange(A) // D
    Wt[S:S + R] = np.where(blocks[None, :] == np.arange(R)[:, None], v1, v0)
    Wt[S + R], Wt[S + R + 1] = wn, we
    K = np.concatenate([np.full(S, k), np.full(R, kap), [kn, ke]])
    return Wt, K


class ExpandedState:
    """The compressed full state (Wt (C, |A|), K (C,)) of a reduced run, built only when it is read.

    Behaves as the pair ``(Wt, K)`` (index, unpack, iterate). The reduced run itself needs 10 numbers; the
    expansion needs C x |A| floats (8 GB at S = 100000, R = D = 100), so it is not made unless asked for.
    """

    def __init__(self, config, y):
        self.config, self.y = config, np.asarray(y, dtype=np.float64).copy()
        self._pair = None

    def _get(self) -> tuple:
        if self._pair is None:
            self._pair = expand_state(self.config, self.y)
        return self._pair

    def __getitem__(self, i):
        return self._get()[i]

    def __iter__(self):
        return iter(self._get())

    def __len__(self) -> int:
        return 2

    def __repr__(self) -> str:
        return f"ExpandedState(class parameters {np.array2string(self.y, precision=4)})"


def reduced_memory_estimate_bytes(config) -> int:
    """Rough peak memory of a reduced run: the saved trajectory (a few hundred rows of ~30 columns of 10
    class parameters), the fact table when it must be built (random or user tables: S x R answers and
    weights, the R x |A| p(a|r)) and a fixed allowance for sympy's lambdified flow and scipy."""
    t = config.task
    table = 0 if t.facts in ("structured", "balanced") else 8 * (3 * t.S * t.R + t.R * t.R * t.D)
    return int(256 * 2**20 + table)


def check_reduced_memory(config, available: int | None = None) -> None:
    """Raise ConfigError if a reduced run of ``config`` would not fit in this machine's memory."""
    from common.memory import available_memory_bytes

    need = reduced_memory_estimate_bytes(config)
    have = available if available is not None else available_memory_bytes()
    if need > 0.8 * have:
        t = config.task
        raise ConfigError(f"the reduced run of S = {t.S}, R = {t.R}, D = {t.D} (facts {t.facts}) needs about "
                          f"{need / 2**30:.1f} GiB but this machine has {have / 2**30:.1f} GiB available; "
                          "reduce S or R, or use a structured or balanced table")


@dataclasses.dataclass
class _ClassRun:
    """The integrated class flow: scipy's solution (dense output), the saved times and states, and its budget."""

    sol: object
    ts: np.ndarray
    ys: np.ndarray
    status: str
    rtol: float
    atol: float
    nfe: int
    seconds: float


def _integrate_classes(config, f, met: ClassMetrics, dims: tuple, eval_times) -> _ClassRun:
    """DOP853 on the 10 class parameters from the initial classes, saved on the full flow's times, stopped at the
    loss target (not before the last of ``eval_times``)."""
    from scipy.integrate import solve_ivp

    S, R, D, T, N = dims
    y0 = initial_classes(config)
    rtol = max(config.resolved_rtol, SCIPY_RTOL_MIN)  # scipy's floor, 2.2e-14 (it warns below it)
    atol = config.atol if config.atol is not None else 1e-3 * rtol * float(np.min(np.abs(y0)))
    target = config.resolved_loss_target
    nfe = [0]

    def fun(_t, y):
        nfe[0] += 1
        return f(y, *dims)

    t_keep = 0.0 if eval_times is None else float(np.max(eval_times, initial=0.0))

    def stop(t_, y):  # the run ends at L = target (but not before the last requested time)
        return met.loss_of(y) - target if t_ >= t_keep else 1.0

    stop.terminal, stop.direction = True, -1
    integ0 = time.perf_counter()
    # the same saved times as the full flow, starting from one e-folding time of the fastest mode
    r = escape_rates(S, R, D)
    lam = max(float(r["subject"]), float(r["relation"]), 1e-300)
    t_eval = save_times(1.0 / lam, config.t_max, config.samples_per_octave)
    t_end = max(config.t_max, t_keep)
    # the target is met at t = 0 (eps_conv >= log|A|, or R = D = 1 where L = 0): converged there, as the full run
    met0 = t_keep == 0.0 and met.loss_of(y0) <= target
    if met0 and t_eval.size > 1:
        t_end = float(t_eval[1])  # one short step, so the solver's objects exist; only t = 0 is kept
    t_eval = t_eval[t_eval <= t_end]
    sol = solve_ivp(fun, (0.0, t_end), y0, method="DOP853", rtol=rtol, atol=atol, t_eval=t_eval,
                    events=stop, dense_output=True)
    if sol.status == -1:
        raise RuntimeError(f"reduced flow integration failed: {sol.message}")
    seconds = time.perf_counter() - integ0
    ts, ys = sol.t, sol.y
    status = "t_max"
    if sol.t_events[0].size:
        te = float(sol.t_events[0][0])  # root of L - target on the dense output (scipy's event search)
        keep = ts < te
        ts = np.append(ts[keep], te)
        ys = np.column_stack([ys[:, keep], sol.sol(te)])
        status = "converged"
    if met0:
        ts, ys, status = ts[:1], ys[:, :1], "converged"
    return _ClassRun(sol=sol, ts=ts, ys=ys, status=status, rtol=rtol, atol=atol, nfe=int(nfe[0]), seconds=seconds)


def _class_phases(config, run: _ClassRun, traj: dict, f, met: ClassMetrics, dims: tuple) -> Phases:
    """t1, t2, t3 (Brent's roots of L - theta on the dense output, bracketed on the saved rows) and the plateau (the
    bounded minimum of |t dL/dt| in log t, bracketed on a 65-point grid over [t1, t2])."""
    from scipy.optimize import brentq, minimize_scalar

    S, R, D = dims[:3]
    th = thresholds(math.log(R * D), math.log(D), config.eps_conv)
    ts, sol = run.ts, run.sol

    def L_at(x):
        return met.loss_of(sol.sol(x))

    def crossing(theta):
        return locate_first_crossing(ts, traj["loss"], theta, lambda i, j: float(
            brentq(lambda x: L_at(x) - theta, ts[i], ts[j], xtol=1e-13 * ts[j], rtol=1e-15)))

    t1, t2, t3 = (crossing(x) for x in th)
    if t3 is None and run.status == "converged" and config.resolved_loss_target == th[2]:
        t3 = float(ts[-1])  # the run stopped on this very crossing
    plateau = None
    if t1 is not None and t2 is not None and t2 > t1 > 0:
        def score(x):
            tt = math.exp(x)
            y = sol.sol(tt)
            dy = f(y, *dims)
            return abs(tt * float(met.rows(np.array([tt]), y[:, None], dy[:, None])["dloss_dt"][0]))

        xs = np.linspace(math.log(t1), math.log(t2), 65)
        vals = [score(x) for x in xs]
        j = int(np.argmin(vals))
        lo, hi = xs[max(0, j - 1)], xs[min(len(xs) - 1, j + 1)]
        xb = minimize_scalar(score, bounds=(lo, hi), method="bounded", options=dict(xatol=1e-10)).x
        tp = math.exp(xb)
        y = sol.sol(tp)
        row = met.rows(np.array([tp]), y[:, None], f(y, *dims)[:, None])
        plateau = Plateau(t=tp, loss=float(row["loss"][0]), relation_loss=float(row["relation_loss"][0]),
                          subject_loss=float(row["subject_loss"][0]),
                          hallucination_gap=float(row["hallucination_gap"][0]))
    return Phases(t1=t1, t2=t2, t3=t3, plateau=plateau, theta1=th[0], theta2=th[1], theta3=th[2])


def run_reduced(config, *, progress=None, eval_times=None):
    """Integrate the reduced flow of ``config`` (a FlowConfig) and return a dynamics.flow.solve.FlowResult.

    eval_times: optional (n,) times; then returns (result, loss at those times from the dense output),
    which is how ``--mode compare`` puts both runs on the full run's time grid.
    progress: accepted for symmetry with run_flow (the reduced run takes milliseconds).
    """
    from analysis.theory.reduction import class_rhs_numpy  # sympy: loaded only when a reduced run is asked for

    wall0 = time.perf_counter()
    check_reduced_memory(config)
    check_reducible(config)
    tc = config.task
    dims = (tc.S, tc.R, tc.D, tc.T, tc.N)
    f = class_rhs_numpy()
    met = ClassMetrics(*dims)
    run = _integrate_classes(config, f, met, dims, eval_times)
    ts, ys = run.ts, run.ys
    traj = met.rows(ts, ys, f(ys, *dims))
    phases = _class_phases(config, run, traj, f, met, dims)
    H = math.log(tc.D)
    theory = dict(log_A=math.log(tc.R * tc.D), H_A_given_R=H, log_D=H)
    conservation = {"balance": float(np.max(traj["invariant_drift"]))}
    for k_ in traj:
        if k_.endswith("_drift") and k_ != "invariant_drift":
            conservation[k_[: -len("_drift")]] = float(np.max(traj[k_]))
    solver = dict(backend="reduced", method="DOP853", rtol=run.rtol, atol=run.atol, n_steps=len(run.sol.sol.ts) - 1,
                  n_rejected=None,
                  nfe=run.nfe, direct_fallbacks=0, saved_points=int(ts.size), status=run.status, state_size=10)
    y_end = ys[:, -1]
    result = FlowResult(config=config, status=run.status, trajectory=Trajectory(traj, time="t"), phases=phases,
                        theory=theory,
                        conservation=conservation, solver=solver, wall_seconds=time.perf_counter() - wall0,
                        integration_seconds=run.seconds, final_state=ExpandedState(config, y_end))
    if eval_times is None:
        return result
    te = np.asarray(eval_times, dtype=np.float64)
    if te.size and (te.min() < 0 or te.max() > ts[-1] * (1 + 1e-12)):
        raise ValueError("eval_times must lie inside the integrated interval")
    yy = run.sol.sol(np.clip(te, 0, ts[-1]))
    LS, LR = met.losses(yy.reshape(10, -1))
    return result, LS + LR


MODES = ("full", "reduced", "compare")


def run_mode(mode: str, config, *, progress=None):
    """Run ``config`` in ``mode``: full (dynamics.run_flow), reduced (run_reduced) or compare (both).

    compare returns the full run's result with ``compare`` = dict(max_loss_diff = max over the full run's
    saved times of |L_full - L_reduced|, the reduced loss read off its dense output at those times;
    phase times of both and their relative differences; wall seconds of both).
    """
    check_choice("mode", mode, MODES)
    if mode != "full":
        check_reducible(config)
    if mode == "reduced":
        return run_reduced(config, progress=progress)
    full = analyze_flow(config, progress=progress)
    if mode == "full":
        return full
    red, L_red = run_reduced(config, eval_times=full.trajectory["t"])
    diff = np.abs(full.trajectory["loss"] - L_red)
    cmp = dict(max_loss_diff=float(diff.max()), at_t=float(full.trajectory["t"][int(diff.argmax())]),
               points=int(diff.size), full_wall_seconds=full.wall_seconds, reduced_wall_seconds=red.wall_seconds)
    for name in ("t1", "t2", "t3"):
        a, b = getattr(full.phases, name), getattr(red.phases, name)
        cmp[f"{name}_full"], cmp[f"{name}_reduced"] = a, b
        cmp[f"{name}_rel_diff"] = abs(a - b) / a if a and b is not None else None
    return dataclasses.replace(full, compare=cmp)
