"""Batched exact flows: many configurations of one shape integrated as one (B, P) state.

    out = run_flows_batched([FlowConfig(task=TaskConfig(S=16, R=4, D=8, facts="random", seed=s))
                             for s in range(200)])
    out[3]["t1"], out[3]["t3"], out[3]["status"], out[3]["nfe"]

The runs may differ in fact table, frequencies, initialization (kind, alpha, file), t_max, eps_conv,
loss_target and max_steps; they must share the shape (S, R, D, T, N) and the solver settings (backend
``native``, method ``dopri5``, rtol, atol, dtype, device).

What is mirrored from the single run (:func:`dynamics.flow.solve.run_flow` with the levels of
:func:`analysis.phases.thresholds`), so that every run takes the same steps as its single run:

- the right-hand side is :meth:`models.population.PopulationObjective.flow_rhs` written with batched
  matrix products (the fast path); a run whose shifted normaliser would underflow (``Zp <= 1e-250``, far
  from any plateau) is evaluated by its own PopulationObjective instead, exactly as the single run would;
- Dormand-Prince 5(4) of :mod:`dynamics.ode.dopri5` with per-run step size, error norm (RMS of
  err / (atol + rtol max(|y0|, |y1|)) over the run's own P entries), accept/reject and PI control (the same
  SAFETY, MIN_FACTOR, MAX_FACTOR, BETA, the same starting step :func:`dynamics.ode.base.initial_step`), the same
  landing on t_max, and the same counters (n_steps, n_rejected, nfe);
- the automatic atol (:func:`dynamics.ode.tolerances.auto_atol` of the run's initial state) with the per-row floor
  of :class:`dynamics.ode.tolerances.RowAtol`, recomputed after accepted steps 1, 9, 17, ... of each run;
- events as :func:`dynamics.ode.engine.integrate`: after every accepted step the run's loss (from its FSAL stage)
  is compared with theta1, theta2 (SPEC §3, from that run's log|A| and H(A|R)) and eps_conv; a crossing is
  located by Brent's method on the step's 4th-order continuous extension (:class:`dynamics.ode.dopri5.Dopri5Interp`),
  with the loss of the run's own PopulationObjective, and reported on the crossed side; the run stops at the
  first time L <= loss_target and leaves the batch (the batch shrinks as runs finish, or, with ``slots``, a
  waiting run starts in its place: rows are independent, so a run's arithmetic does not depend on its company).

Only the phase times, counters and final loss are returned (no trajectory, no conservation monitoring: for
those use run_flow on the configuration of interest), and with ``plateau=True`` each run's PlateauWindow: the
steps around its smallest ``t |dL/dt|`` between t1 and t2 (read from the FSAL stage at every step end), on which
analysis.phases.flow_plateau locates the plateau as on a single run.
"""
from __future__ import annotations

import contextlib
import copy
import math
import time

import numpy as np
import torch

from common.errors import ConfigError, check_int
from models.linear import layout_of
from models.population import PopulationObjective
from models.task import make_task

from dynamics.flow.config import FlowConfig
from dynamics.ode.dopri5 import A as _A_TABLE
from dynamics.ode.dopri5 import BETA, D as _D_TABLE, E as _E_TABLE, MAX_FACTOR, MIN_FACTOR, ORDER, SAFETY, Dopri5Interp
from dynamics.ode.engine import locate_crossing
from dynamics.flow.solve import initial_state
from dynamics.ode.base import initial_step
from dynamics.threads import threads_for, torch_threads
from dynamics.ode.tolerances import ATOL_FACTOR, auto_atol

_TINY = 1e-250  # as models.population: below this a shifted normaliser may have lost terms to underflow
_SHARED = ("backend", "method", "rtol", "atol", "dtype", "device")  # solver settings every run must share
_SHAPE = ("S", "R", "D", "T", "N")


def _phase_levels(task, eps_conv: float) -> tuple:
    """(theta1, theta2, theta3) of SPEC §3 (the formula of analysis.phases.thresholds, a higher layer)."""
    return (0.5 * (task.log_A + task.H_A_given_R), 0.5 * task.H_A_given_R, float(eps_conv))


def check_batch(configs) -> None:
    """ConfigError (one line) unless the configs are FlowConfigs of one shape and one solver setting."""
    configs = list(configs)
    if not configs:
        raise ConfigError("run_flows_batched needs at least one FlowConfig")
    for i, c in enumerate(configs):
        if not isinstance(c, FlowConfig):
            raise ConfigError(f"configs[{i}] is a {type(c).__name__}, not a FlowConfig")
    c0 = configs[0]
    for i, c in enumerate(configs[1:], 1):
        for k in _SHAPE:
            if getattr(c.task, k) != getattr(c0.task, k):
                raise ConfigError(f"configs[{i}] has {k} = {getattr(c.task, k)} but configs[0] has "
                                  f"{k} = {getattr(c0.task, k)}; a batch needs one shape (S, R, D, T, N)")
        for k in _SHARED:
            a, b = getattr(c, k), getattr(c0, k)
            if k == "rtol":
                a, b = c.resolved_rtol, c0.resolved_rtol
            if a != b:
                raise ConfigError(f"configs[{i}] has {k} = {a!r} but configs[0] has {k} = {b!r}; "
                                  "a batch needs one solver setting")
    if c0.backend != "native" or c0.method != "dopri5":
        raise ConfigError(f"batched flows integrate with backend 'native', method 'dopri5' only "
                          f"(got {c0.backend!r}/{c0.method!r})")
    if c0.dtype != "float64":
        raise ConfigError(f"batched flows run in float64 only (got dtype = {c0.dtype!r})")


def batch_memory_estimate_bytes(configs, slots: int | None = None) -> int:
    """Rough peak memory (bytes) of ``run_flows_batched(configs, slots=slots)``.

    The largest run's own estimate (FlowConfig.memory_estimate_bytes: its chunked direct paths and work arrays,
    which the batch needs for one run at a time) plus, for every further run, its rows of the batched arrays: the
    7 stages, about 8 work arrays and the plateau window's 10 rows of its (P,) state, and its objective's
    (S + R + 2) x |A| arrays. A sum of the
    runs' own estimates would count the 100 MB of direct-path chunks once per run (12 GiB for 128 small flows).
    With ``slots`` only that many runs hold batch rows at once; a waiting run holds its objective's tables (about
    four (S + R + 2) x |A| arrays).
    """
    configs = list(configs)
    if not configs:
        return 0
    active = len(configs) if slots is None else max(1, min(int(slots), len(configs)))
    first = max(int(c.memory_estimate_bytes()) for c in configs)
    t = configs[0].task
    # 7 stages, ~8 work arrays and (plateau=True; counted always) the window's two interpolants of 5 rows
    per_run = 8 * (25 * configs[0].state_size() + 12 * (t.S + t.R + 2) * t.R * t.D)
    per_waiting = 8 * 4 * (t.S + t.R + 2) * t.R * t.D
    return first + (active - 1) * per_run + (len(configs) - active) * per_waiting


class BatchedObjective:
    """The exact population flow of B tasks of one shape: ``rhs(Y, out)`` on states (B, P).

    Per run identical in exact arithmetic to PopulationObjective.flow_rhs (same formulas, batched GEMMs).
    ``objectives[i]`` is run i's own PopulationObjective (fallback and event losses).
    """

    def __init__(self, objectives: list, *, dtype=torch.float64, device="cpu", rows=None):
        self.objectives = list(objectives)
        self.layout = objectives[0].layout
        self.dtype, self.device = dtype, torch.device(device)
        kw = dict(dtype=dtype, device=self.device)
        # every run's tables (indexed by run); the active rows are gathered from them
        self._w = torch.stack([o.w for o in objectives]).to(**kw)  # (n, S, R)
        self._Ys = torch.stack([o.Ys for o in objectives]).to(**kw)  # (n, S, |A|)
        self._Yr = torch.stack([o.Yr for o in objectives]).to(**kw)  # (n, R, |A|)
        self._answers = torch.stack([o.answers for o in objectives]).to(self.device)  # (n, S, R)
        T, N = objectives[0].task.T, objectives[0].task.N
        self.mult_noise = float(T - 3)
        self.noise_speed = (T - 3) / N
        self.fallbacks = np.zeros(len(objectives), dtype=np.int64)
        self._bufs = {}
        self._set(torch.arange(len(objectives), device=self.device) if rows is None
                  else torch.as_tensor(rows, dtype=torch.long, device=self.device))

    def _set(self, idx: torch.Tensor) -> None:
        self.idx = idx  # (B,) run index of each active row
        self.w, self.Ys, self.Yr, self.answers = self._w[idx], self._Ys[idx], self._Yr[idx], self._answers[idx]

    def buffer(self, name: str, shape) -> torch.Tensor:
        """A work array reused across calls (fresh ~1 MB tensors per call cost page faults, not math)."""
        shape = tuple(shape)
        buf = self._bufs.get(name)
        if buf is None or tuple(buf.shape) != shape:
            buf = torch.empty(shape, dtype=self.dtype, device=self.device)
            self._bufs[name] = buf
        return buf

    def select(self, keep: torch.Tensor) -> None:
        """Keep only the rows ``keep`` (a LongTensor of row positions)."""
        self._set(self.idx[keep])

    def admit(self, runs) -> None:
        """Append rows for the runs ``runs`` (run indices) after the active ones."""
        self._set(torch.cat([self.idx, torch.as_tensor(runs, dtype=torch.long, device=self.device)]))

    def view(self, runs) -> "BatchedObjective":
        """The same objective on the rows ``runs`` only (its own work arrays; fallback counts shared)."""
        v = copy.copy(self)
        v._bufs = {}
        v._set(torch.as_tensor(runs, dtype=torch.long, device=self.device))
        return v

    def rhs(self, Y: torch.Tensor, out: torch.Tensor, need_loss: bool = False):
        """Write dY/dt = -grad L per row into ``out`` (B, P); return the losses (B,) numpy if need_loss."""
        L = self.layout
        S, R, C, A = L.S, L.R, L.C, L.A
        B = Y.shape[0]
        n = C * A
        Wt = Y[:, :n].view(B, C, A)
        K = Y[:, n:]
        c = (self.mult_noise * K[:, L.noise, None]) * Wt[:, L.noise] + K[:, L.eos, None] * Wt[:, L.eos]  # (B, |A|)
        xs = torch.mul(Wt[:, :S], K[:, :S, None], out=self.buffer("xs", (B, S, A)))
        xs.add_(c[:, None])  # (B, S, |A|) u_s + c
        ur = torch.mul(Wt[:, S:S + R], K[:, S:S + R, None], out=self.buffer("ur", (B, R, A)))  # (B, R, |A|)
        xs.sub_(xs.amax(dim=2, keepdim=True))
        ur.sub_(ur.amax(dim=2, keepdim=True))
        Es = torch.exp(xs, out=self.buffer("Es", (B, S, A)))
        Er = torch.exp(ur, out=self.buffer("Er", (B, R, A)))
        Zp = torch.bmm(Es, Er.transpose(1, 2))  # (B, S, R)
        M = self.w / Zp
        G = self.buffer("G", (B, C, A))
        Gs = torch.bmm(M, Er, out=self.buffer("Gs", (B, S, A))).mul_(Es).sub_(self.Ys)  # sum_r w p_hat - Ys
        Gr = torch.bmm(M.transpose(1, 2), Es, out=self.buffer("Gr", (B, R, A))).mul_(Er).sub_(self.Yr)
        G[:, :S].copy_(Gs)  # (bmm into a strided slice is 4x slower than into its own array)
        G[:, S:S + R].copy_(Gr)
        torch.sum(Gs, 1, out=G[:, L.eos])
        torch.mul(G[:, L.eos], self.noise_speed, out=G[:, L.noise])
        dW = out[:, :n].view(B, C, A)
        torch.mul(G, K[:, :, None], out=dW).neg_()
        torch.sum(G.mul_(Wt), 2, out=out[:, n:]).neg_()
        losses = None
        if need_loss:
            a = self.answers  # (B, S, R)
            target = xs.gather(2, a) + ur.transpose(1, 2).gather(1, a)  # (B, S, R)
            losses = (self.w * (torch.log(Zp) - target)).sum((1, 2)).numpy().copy()
        if not float(Zp.amin()) > _TINY:  # the single run takes its direct path here: do exactly that for these rows
            bad = ~(Zp > _TINY).flatten(1).all(1)
            for i in bad.nonzero()[:, 0].tolist():
                j = int(self.idx[i])
                obj = self.objectives[j]
                self.fallbacks[j] += 1
                obj.flow_rhs(Y[i], out[i])
                if need_loss:
                    Wt_i, K_i = L.unpack(Y[i])
                    losses[i] = float(obj.loss(Wt_i, K_i))
        return losses


class PlateauWindow:
    """The dense output of one batched run around its smallest ``t |dL/dt|`` at a step end in [t1, t2]: the
    steps ending there and after it, enough to locate SPEC §3's plateau exactly
    (analysis.phases.flow_plateau takes it as it takes a FlowRun).

    ``trajectory``: t, loss, dloss_dt at the step ends of those steps (and the start of the first); ``state_at``
    on their interpolants; ``objective``, ``numerics()`` and ``metrics_at`` as FlowRun's. The single run brackets
    with its saved samples instead, so the two agree (to the root finder's tolerance) where ``t |dL/dt|`` has one
    minimum near its smallest sample, as on every flow tested.
    """

    def __init__(self, objective, ts, losses, rates, interps, threads: int):
        self.objective = objective
        self.trajectory = dict(t=np.array(ts, dtype=np.float64), loss=np.array(losses, dtype=np.float64),
                               dloss_dt=np.array(rates, dtype=np.float64))
        self._interps = list(interps)  # Dopri5Interp, consecutive steps
        self.threads = threads

    @contextlib.contextmanager
    def numerics(self):
        """Context for evaluations on this window: the single run's thread count, no autograd."""
        with torch_threads(self.threads), torch.inference_mode():
            yield

    def state_at(self, t: float) -> torch.Tensor:
        """Packed state (P,) at t in the window (the step that ends at or after t, as the single run's)."""
        for it in self._interps:
            if t <= it.t1:
                return it(t)
        return self._interps[-1](t)

    def metrics_at(self, t: float) -> dict:
        with self.numerics():
            Wt, K = self.objective.layout.unpack(self.state_at(t))
            return self.objective.metrics(Wt, K)


def run_flows_batched(configs, *, threads: int | None = None, return_states: bool = False,
                      slots: int | None = None, on_done=None, plateau: bool = False) -> list[dict]:
    """Integrate every FlowConfig of ``configs`` (one shape, one solver setting) as one batched state.

    Returns one dict per config, in order: t1, t2, t3 (None where not reached), status (``converged``,
    ``t_max``, ``max_steps`` or ``failed``), message, t_final, final_loss, n_steps, n_rejected, nfe,
    direct_fallbacks, levels (theta1, theta2, theta3), atol; with ``return_states`` also final_state
    (the packed (P,) state at t_final).

    slots: at most this many runs are integrated at once (default: all of them); when a run finishes, the next
    waiting config starts in its place, so the batch stays full while configs wait (continuous batching: runs
    differ in step count by 2x or more, and a batch that only shrinks spends its last steps nearly empty). Memory
    is that of ``slots`` runs (batch_memory_estimate_bytes(configs, slots=...)). Every run takes the steps of
    its single run whatever the slots. on_done(i, result): called as run i finishes (progress reporting).
    plateau: also return ``plateau_window`` (a PlateauWindow where t1 and t2 were both reached, else None):
    analysis.phases.flow_plateau(window, t1, t2) gives the run's plateau (SPEC §3) as on a single run.
    threads: torch threads (0: torch's default; None: one thread when the batched state (slots x P entries) is
    below dynamics.threads.SINGLE_THREAD_BELOW on the CPU (threads_for, as run_flow does): measured 0.7 flows/s with two
    spin-waiting threads on a loaded 2-core machine against 11.9 with one).
    """
    configs = list(configs)
    check_batch(configs)
    slots = len(configs) if slots is None else check_int("slots", slots, 1, None)
    slots = min(slots, len(configs))
    c0 = configs[0]
    dtype, device = c0.torch_dtype, torch.device(c0.device)
    if threads is None:
        P = layout_of(make_task(c0.task)).size
        threads = threads_for(slots * P, device)
    with torch_threads(threads), torch.inference_mode():
        return _run(configs, dtype, device, return_states, slots, on_done, plateau)


def _run(configs, dtype, device, return_states, slots, on_done, plateau):
    wall0 = time.perf_counter()
    B0 = len(configs)
    tasks = [make_task(c.task) for c in configs]
    objs = [PopulationObjective(t, dtype=dtype, device=device) for t in tasks]
    layout = objs[0].layout
    if layout != layout_of(tasks[-1]):
        raise ConfigError("internal error: batch layouts differ")
    P, C, A = layout.size, layout.C, layout.A
    n = C * A
    rtol = configs[0].resolved_rtol
    fixed_atol = configs[0].atol
    bobj = BatchedObjective(objs, dtype=dtype, device=device, rows=[])
    atol0 = np.zeros(B0)
    row_floor = fixed_atol is None  # RowAtol: the native backend with the automatic atol
    levels = np.array([_phase_levels(t, c.eps_conv) for t, c in zip(tasks, configs)])  # (B, 3)
    target = np.array([c.resolved_loss_target for c in configs])
    t_bound = np.array([c.t_max for c in configs], dtype=np.float64)
    max_steps = np.array([c.max_steps for c in configs], dtype=np.int64)

    # per-run results (indexed by run) and per-row state (indexed by position in the active batch)
    res = [dict(t1=None, t2=None, t3=None, status=None, message="", t_final=0.0, final_loss=math.nan,
                n_steps=0, n_rejected=0, nfe=0, direct_fallbacks=0, levels=tuple(levels[i]), atol=math.nan)
           for i in range(B0)]
    found = np.full((B0, 3), np.nan)  # level crossings
    nfe = np.zeros(B0, dtype=np.int64)
    n_rej = np.zeros(B0, dtype=np.int64)
    steps = np.zeros(B0, dtype=np.int64)
    sq = math.sqrt(P)
    if plateau:  # the plateau window of each run (PlateauWindow): smallest t|dL/dt| at step ends in [t1, t2]
        # tokens per packed entry (dL/dt = -sum count F^2, F the right-hand side), as analysis.phases uses
        counts = torch.stack([layout.pack(o.count[:, None].expand(C, A), o.count) for o in objs])  # (n, P)
        last_rate = np.full(B0, np.nan)  # dL/dt at the run's last step end
        # per run: ts, losses, rates of the window's samples (start of the best step, its end, the next end) and
        # the steps' h; per active row: WB (B, 2, 5, P) the two steps' interpolant rows (Dopri5Interp's layout)
        win_t, win_L, win_r = np.full((B0, 3), np.nan), np.full((B0, 3), np.nan), np.full((B0, 3), np.nan)
        win_h = np.full((B0, 2), np.nan)
        win_n = np.zeros(B0, dtype=np.int64)  # steps kept: 0 (none yet), 1 (the next one awaited) or 2
        closed = np.zeros(B0, dtype=bool)  # t2 passed: the window is complete
        win_threads = threads_for(P, device)  # the single run's

    def start(js: np.ndarray):
        """The first stage, loss, crossings at t0 and starting step of the runs ``js`` (as the engine's start)."""
        m = len(js)
        ys = []
        for j in js:
            Wt0, K0 = initial_state(configs[j], tasks[j], dtype, device)
            ys.append(layout.pack(Wt0, K0))
            atol0[j] = fixed_atol if fixed_atol is not None else auto_atol(ys[-1], rtol)
            res[j]["atol"] = float(atol0[j])
        Y_s = torch.stack(ys)  # (m, P)
        ATOL_s = torch.as_tensor(atol0[js], dtype=dtype, device=device)[:, None].expand(m, P).clone()  # (m, P)
        K_s = torch.empty((m, 7, P), dtype=dtype, device=device)  # stages, (m, 7, P)
        view = bobj.view(js)
        loss_s = view.rhs(Y_s, K_s[:, 0], need_loss=True)
        nfe[js] += 1
        if plateau:
            last_rate[js] = (-(counts[js] * K_s[:, 0] * K_s[:, 0]).sum(1)).numpy()
        # initial loss crossings (the engine reports a level already crossed at t0 at t0)
        found[js] = np.where(loss_s[:, None] <= levels[js], 0.0, found[js])
        # the starting step (dynamics.ode.base.initial_step, with the atol of the start)
        f0 = K_s[:, 0]
        scale = Y_s.abs() * rtol + ATOL_s
        f0n = (torch.linalg.vector_norm(f0 / scale, dim=1) / sq).numpy()
        y0n = (torch.linalg.vector_norm(Y_s / scale, dim=1) / sq).numpy()
        span = t_bound[js]
        h0 = np.where((y0n < 1e-5) | (f0n < 1e-5), 1e-6, 0.01 * y0n / np.where(f0n > 0, f0n, 1.0))
        h0 = np.minimum(h0, span)
        f1 = torch.empty_like(Y_s)
        view.rhs(Y_s + torch.as_tensor(h0, dtype=dtype)[:, None] * f0, f1)
        nfe[js] += 1
        d1n = (torch.linalg.vector_norm((f1 - f0) / scale, dim=1) / sq).numpy()
        h_s = np.array([initial_step(float(f0n[i]), float(y0n[i]), lambda _h, v=float(d1n[i]): v, ORDER,
                                     float(span[i])) for i in range(m)])
        return Y_s, K_s, ATOL_s, loss_s, h_s

    a_rows = [torch.tensor(a, dtype=dtype, device=device) for a in _A_TABLE]
    e_row = torch.tensor(_E_TABLE, dtype=dtype, device=device)
    d_row = torch.tensor(_D_TABLE, dtype=dtype, device=device)
    expo = BETA * 0.75 - 1 / ORDER
    states = {}

    def finish(i_row: int, status: str, message: str, t_fin: float, y_fin: torch.Tensor, loss_fin=None):
        j = int(run[i_row])
        r = res[j]
        r.update(status=status, message=message, t_final=float(t_fin), n_steps=int(steps[j]),
                 n_rejected=int(n_rej[j]), nfe=int(nfe[j]), direct_fallbacks=int(bobj.fallbacks[j]))
        if loss_fin is None:
            Wt_i, K_i = layout.unpack(y_fin)
            loss_fin = float(objs[j].loss(Wt_i, K_i))
        r["final_loss"] = float(loss_fin)
        for k, name in enumerate(("t1", "t2", "t3")):
            r[name] = None if np.isnan(found[j, k]) else float(found[j, k])
        if return_states:
            states[j] = y_fin.clone()
        if plateau:
            ok = r["t1"] is not None and r["t2"] is not None and win_n[j] > 0
            r["plateau_window"] = None
            if ok:
                m = int(win_n[j])
                rows = WB[i_row, :m].clone()  # (m, 5, P): the row's slot is reused after it leaves
                its = [Dopri5Interp.from_rows(float(win_t[j, q]), float(win_t[j, q + 1]), float(win_h[j, q]), rows[q])
                       for q in range(m)]
                r["plateau_window"] = PlateauWindow(objs[j], win_t[j, :m + 1], win_L[j, :m + 1], win_r[j, :m + 1],
                                                    its, threads=win_threads)
        if on_done is not None:
            on_done(j, r)

    def _track_plateau(ia):
        """Keep, per accepted run between t1 and t2, the step whose end has the smallest t|dL/dt| and the step
        after it (with t1 and t2 in one step: that step), reading dL/dt from the FSAL stage f(y_new); the steps'
        interpolant rows are written into the run's slot of WB by a few batched operations per step."""
        rows = ia[~np.isnan(found[run[ia], 0]) & ~closed[run[ia]]]
        if rows.size == 0:
            return
        js = run[rows]
        idx = torch.as_tensor(rows, device=device)
        F = K[idx, 6]  # (m, P) right-hand side at the new states
        rates = (-(counts[torch.as_tensor(js, device=device)] * F * F).sum(1)).numpy()
        tn, t2 = t_new[rows], found[js, 1]
        before_t2 = np.isnan(t2) | (tn <= t2)
        score = np.abs(tn * rates)
        best = np.where(win_n[js] > 0, np.abs(win_t[js, 1] * win_r[js, 1]), np.inf)  # at the kept step's end
        new_best = before_t2 & (score < best)
        second = ~new_best & (win_n[js] == 1)  # a tracked run with one step kept awaits the step after it
        only = ~np.isnan(t2) & ~new_best & ~second & (win_n[js] == 0)  # t1 and t2 in this one step
        first = new_best | only
        keep = first | second
        if keep.any():
            kr = rows[keep]
            ki = torch.as_tensor(kr, device=device)
            hk = torch.as_tensor(hs[kr], dtype=dtype, device=device)[:, None]  # (k, 1)
            st = Dopri5Interp.batched_rows(Y[ki], ytmp[ki], K[ki], hk, d_row)  # (k, 5, P)
            f_pos = np.nonzero(first[keep])[0]
            s_pos = np.nonzero(second[keep])[0]
            if f_pos.size:
                WB[torch.as_tensor(kr[f_pos], device=device), 0] = st[torch.as_tensor(f_pos, device=device)]
            if s_pos.size:
                WB[torch.as_tensor(kr[s_pos], device=device), 1] = st[torch.as_tensor(s_pos, device=device)]
        jf, fr = js[first], rows[first]
        win_t[jf, 0], win_t[jf, 1], win_t[jf, 2] = t[fr], tn[first], np.nan
        win_L[jf, 0], win_L[jf, 1], win_L[jf, 2] = loss_prev[fr], loss_new[fr], np.nan
        win_r[jf, 0], win_r[jf, 1], win_r[jf, 2] = last_rate[jf], rates[first], np.nan
        win_h[jf, 0] = hs[fr]
        win_n[jf] = 1
        js2, sr = js[second], rows[second]
        win_t[js2, 2], win_L[js2, 2], win_r[js2, 2], win_h[js2, 1] = tn[second], loss_new[sr], rates[second], hs[sr]
        win_n[js2] = 2
        closed[js[~np.isnan(t2)]] = True
        last_rate[js] = rates
        # (an untracked run's last_rate goes stale: a window's first sample matters only where it lies in
        # [t1, t2], and then it was a tracked step end; else it is unused, and flow_plateau skips it)

    WB = torch.empty((0, 2, 5, P), dtype=dtype, device=device) if plateau else None
    pending = np.arange(B0)  # runs not yet started, in order
    run = np.zeros(0, dtype=np.int64)  # run index of each active row
    Y = torch.empty((0, P), dtype=dtype, device=device)
    K = torch.empty((0, 7, P), dtype=dtype, device=device)
    ATOL = torch.empty((0, P), dtype=dtype, device=device)
    t, h, err_old, loss_prev = np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0)
    done = np.zeros(0, dtype=bool)

    while True:
        # ---- drop finished runs
        if done.any():
            keep_np = np.nonzero(~done)[0]
            keep = torch.as_tensor(keep_np, device=device)
            Y, K, ATOL = Y[keep], K[keep], ATOL[keep]
            if plateau:
                WB = WB[keep]
            bobj.select(keep)
            run, t, h, err_old, loss_prev = run[keep_np], t[keep_np], h[keep_np], err_old[keep_np], loss_prev[keep_np]
            done = np.zeros(len(run), dtype=bool)
        # ---- start waiting runs in the free slots (continuous batching: the batch stays full)
        free = slots - len(run)
        if free > 0 and pending.size:
            js, pending = pending[:free], pending[free:]
            Y_s, K_s, ATOL_s, loss_s, h_s = start(js)
            Y, K, ATOL = torch.cat([Y, Y_s]), torch.cat([K, K_s]), torch.cat([ATOL, ATOL_s])
            if plateau:
                WB = torch.cat([WB, torch.empty((len(js), 2, 5, P), dtype=dtype, device=device)])
            bobj.admit(js)
            B_old = len(run)
            run = np.concatenate([run, js])
            t = np.concatenate([t, np.zeros(len(js))])
            h = np.concatenate([h, h_s])
            err_old = np.concatenate([err_old, np.full(len(js), 1e-4)])
            loss_prev = np.concatenate([loss_prev, loss_s])
            done = np.zeros(len(run), dtype=bool)
            for i in range(B_old, len(run)):  # runs already at their target at t0 stop there
                if loss_prev[i] <= target[run[i]]:
                    finish(i, "converged", "", 0.0, Y[i], loss_prev[i])
                    done[i] = True
            if done.any():
                continue
        B = len(run)
        if B == 0:
            break
        # ---- step budget (checked before each step, as the engine does)
        over = steps[run] >= max_steps[run]
        if over.any():
            for i in np.nonzero(over)[0]:
                finish(i, "max_steps", f"the step budget of {max_steps[run[i]]} steps ran out at t = {t[i]:.6g}",
                       t[i], Y[i])
                done[i] = True
            continue
        # ---- one attempt per run
        tb_run = t_bound[run]
        hit = t + h >= tb_run - 1e-15 * np.abs(tb_run)
        hs = np.where(hit, tb_run - t, h)
        hs_t = torch.as_tensor(hs, dtype=dtype, device=device)  # (B,)
        ytmp = bobj.buffer("ytmp", Y.shape)
        for i in range(1, 7):
            coef = (a_rows[i][None, :] * hs_t[:, None])[:, None, :]  # (B, 1, i)
            torch.baddbmm(Y[:, None, :], coef, K[:, :i], out=ytmp[:, None, :])
            if i < 6:
                bobj.rhs(ytmp, K[:, i])
            else:
                loss_new = bobj.rhs(ytmp, K[:, i], need_loss=True)
        nfe[run] += 6
        err = bobj.buffer("err", Y.shape)
        torch.bmm((e_row[None, :] * hs_t[:, None])[:, None, :], K, out=err[:, None, :])  # (B, P)
        scale = torch.abs(Y, out=bobj.buffer("scale", Y.shape))
        torch.maximum(scale, torch.abs(ytmp, out=bobj.buffer("scratch", Y.shape)), out=scale)
        scale.mul_(rtol).add_(ATOL)
        ratio = (torch.linalg.vector_norm(err.div_(scale), dim=1) / sq).numpy()
        finite = torch.isfinite(ytmp).all(1).numpy()
        acc = ratio <= 1.0
        rej = ~acc
        # ---- rejected runs: smaller step, same start
        if rej.any():
            n_rej[run[rej]] += 1
            h = np.where(rej, hs * np.fmax(MIN_FACTOR, SAFETY * ratio ** expo), h)
            bad_h = rej & (~np.isfinite(h) | (h <= 0) | (t + h == t))
            for i in np.nonzero(bad_h)[0]:
                finish(i, "failed", f"dopri5: the step size collapsed to {h[i]:.3g} at t = {t[i]:.6g}", t[i], Y[i])
                done[i] = True
        if not acc.any():
            continue
        ia = np.nonzero(acc)[0]
        steps[run[ia]] += 1
        t_new = np.where(hit, tb_run, t + hs)
        r = np.maximum(ratio, 1e-10)
        factor = np.fmin(MAX_FACTOR, np.fmax(MIN_FACTOR, SAFETY * r ** expo * err_old ** BETA))
        new_h = np.where(~hit | (factor < 1), hs * factor, h)
        h = np.where(acc, new_h, h)
        err_old = np.where(acc, r, err_old)
        # ---- events of the accepted runs, then their new state
        lv = levels[run]  # (B, 3)
        fnd = found[run]
        cross = acc[:, None] & np.isnan(fnd) & (loss_new[:, None] <= lv)
        stop = acc & (loss_new <= target[run])
        cut = {}
        for i in np.nonzero(cross.any(1) | stop)[0]:
            j = int(run[i])
            ta, tb_i, hh = float(t[i]), float(t_new[i]), float(hs[i])
            interp = Dopri5Interp(ta, tb_i, hh, Y[i], ytmp[i], K[i, 0], K[i, 6],
                                  torch.mv(K[i].T, d_row * hh))
            obj = objs[j]
            memo = {}

            def loss_at(s, interp=interp, obj=obj, memo=memo):
                if s not in memo:
                    Wt_i, K_i = layout.unpack(interp(s))
                    memo[s] = float(obj.loss(Wt_i, K_i))
                return memo[s]

            def locate(level, i=i, ta=ta, tb_i=tb_i, loss_at=loss_at):
                return locate_crossing(lambda s: loss_at(s) - level, ta, tb_i, loss_prev[i] - level,
                                       loss_new[i] - level)

            for k in np.nonzero(cross[i])[0]:
                found[j, k] = locate(levels[j, k])
            if stop[i]:
                same = [k for k in range(3) if levels[j, k] == target[j] and cross[i, k]]
                tc = found[j, same[0]] if same else locate(target[j])  # the same search gives the same time
                for k in range(3):  # crossings after the stop did not happen
                    if not np.isnan(found[j, k]) and found[j, k] > tc:
                        found[j, k] = np.nan
                cut[i] = (tc, interp, loss_at)
        if plateau:
            _track_plateau(ia)
        # accepted rows: state, FSAL stage, row atol
        acc_t = torch.as_tensor(acc, device=device)[:, None]
        if acc.all():  # the usual case: every run accepted
            Y.copy_(ytmp)
            K[:, 0].copy_(K[:, 6])
        else:
            Y = torch.where(acc_t, ytmp, Y)
            K[:, 0] = torch.where(acc_t, K[:, 6], K[:, 0])
        t = np.where(acc, t_new, t)
        loss_prev = np.where(acc, loss_new, loss_prev)
        collapsed = ~np.isfinite(h) | (h <= 0) | (t + h == t)
        ends = acc & (~finite | (t >= t_bound[run]) | collapsed)
        for i in sorted(set(np.nonzero(ends)[0].tolist()) | set(cut)):  # only rows that end here: no per-row loop
            if not finite[i]:
                finish(i, "failed", f"the state became non-finite at t = {t[i]:.6g}", t[i], Y[i], math.nan)
                done[i] = True
            elif i in cut:
                tc, interp, loss_at = cut[i]
                y_fin = Y[i] if tc == t[i] else interp(tc)
                finish(i, "converged", "", tc, y_fin, loss_at(tc) if tc != t[i] else loss_prev[i])
                if not res[run[i]]["final_loss"] <= target[run[i]]:
                    raise RuntimeError(f"internal error: run {run[i]} stopped with loss "
                                       f"{res[run[i]]['final_loss']:.9g} above its target {target[run[i]]:.9g}")
                done[i] = True
            elif t[i] >= t_bound[run[i]]:
                finish(i, "t_max", "", t[i], Y[i], loss_prev[i])
                done[i] = True
            elif collapsed[i]:
                finish(i, "failed", f"dopri5: the step size collapsed to {h[i]:.3g} at t = {t[i]:.6g}", t[i], Y[i])
                done[i] = True
        if row_floor:  # dynamics.ode.tolerances.RowAtol after accepted steps 1, 9, 17, ... of each run
            upd = acc & (steps[run] % 8 == 1) & ~done
            if upd.any():
                iu = torch.as_tensor(np.nonzero(upd)[0], device=device)
                Wt = Y[iu, :n].view(-1, C, A)
                rowmax = torch.linalg.vector_norm(Wt, ord=float("inf"), dim=2, keepdim=True)
                at = torch.as_tensor(atol0[run[upd.nonzero()[0]]], dtype=dtype, device=device)
                floor = torch.maximum(rowmax * (ATOL_FACTOR * rtol), at[:, None, None])
                ATOL[iu, :n] = floor.expand(-1, C, A).reshape(-1, n)
    wall = time.perf_counter() - wall0
    for j, r in enumerate(res):
        r["batch_wall_seconds"] = wall
        if return_states:
            r["final_state"] = states.get(j)
    return res
