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
- Dormand-Prince 5(4) of :mod:`dynamics.ode.dopri5` (vectorized in :mod:`dynamics.ode.dopri5_batched`) with per-run step size, error norm (RMS of
  err / (atol + rtol max(|y0|, |y1|)) over the run's own P entries), accept/reject and PI control (the same
  SAFETY, MIN_FACTOR, MAX_FACTOR, BETA, the same starting step :func:`dynamics.ode.base.initial_step`), the same
  landing on t_max, and the same counters (n_steps, n_rejected, nfe);
- the automatic atol (:func:`dynamics.ode.tolerances.auto_atol` of the run's initial state) with the per-row floor
  of :class:`dynamics.ode.controller.RowAtol`, recomputed after accepted steps 1, 9, 17, ... of each run;
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
import math
import time

import numpy as np
import torch

from common.errors import ConfigError, check_int
from models.linear import layout_of
from models.population import PopulationObjective
from models.task import make_task

from dynamics.flow.batched_objective import BatchedObjective
from dynamics.flow.config import FlowConfig
from dynamics.flow.solve import initial_state
from dynamics.ode.controller import FLOOR_EVERY
from dynamics.ode.dopri5 import Dopri5Interp
from dynamics.ode.dopri5_batched import BatchedTableau, accept_factors, reject_steps, row_floors, starting_steps
from dynamics.ode.engine import locate_crossing
from dynamics.ode.status import Status
from dynamics.ode.tolerances import auto_atol, check_resolves, smallest_entry
from dynamics.threads import threads_for, torch_threads

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
    return _BatchRun(configs, dtype, device, return_states, slots, on_done, plateau).run()


class _BatchRun:
    """One call of run_flows_batched: per-run results and counters (indexed by run) and the active batch's per-row
    state (indexed by position in the batch: ``run`` maps a row to its run). :meth:`run` is the loop; each of the
    other methods is one named piece of it."""

    def __init__(self, configs, dtype, device, return_states, slots, on_done, plateau):
        self.wall0 = time.perf_counter()
        self.configs, self.dtype, self.device = configs, dtype, device
        self.return_states, self.slots, self.on_done, self.plateau = return_states, slots, on_done, plateau
        B0 = len(configs)
        self.tasks = tasks = [make_task(c.task) for c in configs]
        self.objs = objs = [PopulationObjective(t, dtype=dtype, device=device) for t in tasks]
        self.layout = layout = objs[0].layout
        if layout != layout_of(tasks[-1]):
            raise ConfigError("internal error: batch layouts differ")
        self.P, self.C, self.A = P, C, A = layout.size, layout.C, layout.A
        self.n = C * A
        self.rtol = configs[0].resolved_rtol
        self.fixed_atol = configs[0].atol
        self.bobj = BatchedObjective(objs, dtype=dtype, device=device, rows=[])
        self.atol0 = np.zeros(B0)
        self.row_floor = self.fixed_atol is None  # RowAtol: the native backend with the automatic atol
        self.levels = levels = np.array([_phase_levels(t, c.eps_conv) for t, c in zip(tasks, configs)])  # (B, 3)
        self.target = np.array([c.resolved_loss_target for c in configs])
        self.t_bound = np.array([c.t_max for c in configs], dtype=np.float64)
        self.max_steps = np.array([c.max_steps for c in configs], dtype=np.int64)
        self.res = [dict(t1=None, t2=None, t3=None, status=None, message="", t_final=0.0, final_loss=math.nan,
                         n_steps=0, n_rejected=0, nfe=0, direct_fallbacks=0, levels=tuple(levels[i]), atol=math.nan)
                    for i in range(B0)]
        self.found = np.full((B0, 3), np.nan)  # level crossings
        self.nfe = np.zeros(B0, dtype=np.int64)
        self.n_rej = np.zeros(B0, dtype=np.int64)
        self.steps = np.zeros(B0, dtype=np.int64)
        if plateau:  # the plateau window of each run (PlateauWindow): smallest t|dL/dt| at step ends in [t1, t2]
            # tokens per packed entry (dL/dt = -sum count F^2, F the right-hand side), as analysis.phases uses
            self.counts = torch.stack([layout.pack(o.count[:, None].expand(C, A), o.count) for o in objs])  # (n, P)
            self.last_rate = np.full(B0, np.nan)  # dL/dt at the run's last step end
            # per run: ts, losses, rates of the window's samples (start of the best step, its end, the next end)
            # and the steps' h; per active row: WB (B, 2, 5, P) the two steps' interpolant rows (Dopri5Interp's)
            self.win_t, self.win_L, self.win_r = (np.full((B0, 3), np.nan) for _ in range(3))
            self.win_h = np.full((B0, 2), np.nan)
            self.win_n = np.zeros(B0, dtype=np.int64)  # steps kept: 0 (none yet), 1 (the next one awaited) or 2
            self.closed = np.zeros(B0, dtype=bool)  # t2 passed: the window is complete
            self.win_threads = threads_for(P, device)  # the single run's
        self.tab = BatchedTableau(dtype, device)
        self.states = {}
        self.WB = torch.empty((0, 2, 5, P), dtype=dtype, device=device) if plateau else None
        self.pending = np.arange(B0)  # runs not yet started, in order
        self.run_of = np.zeros(0, dtype=np.int64)  # run index of each active row
        self.Y = torch.empty((0, P), dtype=dtype, device=device)
        self.K = torch.empty((0, 7, P), dtype=dtype, device=device)
        self.ATOL = torch.empty((0, P), dtype=dtype, device=device)
        self.t, self.h, self.err_old, self.loss_prev = np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0)
        self.done = np.zeros(0, dtype=bool)

    # ------------------------------------------------------------------ runs joining and leaving the batch
    def start(self, js: np.ndarray):
        """The first stage, loss, crossings at t0 and starting step of the runs ``js`` (as the engine's start)."""
        dtype, device, m = self.dtype, self.device, len(js)
        ys = []
        for j in js:
            Wt0, K0 = initial_state(self.configs[j], self.tasks[j], dtype, device)
            ys.append(self.layout.pack(Wt0, K0))
            if self.configs[j].init == "file":  # FlowConfig checked alpha's entries; a file's are known only now
                check_resolves(self.rtol, self.fixed_atol, smallest_entry(ys[-1]), dtype, where="init_file's state")
            self.atol0[j] = self.fixed_atol if self.fixed_atol is not None else auto_atol(ys[-1], self.rtol)
            self.res[j]["atol"] = float(self.atol0[j])
        Y_s = torch.stack(ys)  # (m, P)
        ATOL_s = torch.as_tensor(self.atol0[js], dtype=dtype, device=device)[:, None].expand(m, self.P).clone()
        K_s = torch.empty((m, 7, self.P), dtype=dtype, device=device)  # stages, (m, 7, P)
        view = self.bobj.view(js)
        loss_s = view.rhs(Y_s, K_s[:, 0], need_loss=True)
        self.nfe[js] += 1
        if self.plateau:
            self.last_rate[js] = (-(self.counts[js] * K_s[:, 0] * K_s[:, 0]).sum(1)).numpy()
        # initial loss crossings (the engine reports a level already crossed at t0 at t0)
        self.found[js] = np.where(loss_s[:, None] <= self.levels[js], 0.0, self.found[js])
        # the starting step (dynamics.ode.base.initial_step, with the atol of the start)
        h_s, evals = starting_steps(view.rhs, Y_s, K_s[:, 0], self.rtol, ATOL_s, self.t_bound[js])
        self.nfe[js] += evals
        return Y_s, K_s, ATOL_s, loss_s, h_s

    def finish(self, i_row: int, status: Status, message: str, t_fin: float, y_fin: torch.Tensor, loss_fin=None):
        """Record the result of the run in row i_row (it leaves the batch when :meth:`drop_finished` runs)."""
        j = int(self.run_of[i_row])
        r = self.res[j]
        r.update(status=status, message=message, t_final=float(t_fin), n_steps=int(self.steps[j]),
                 n_rejected=int(self.n_rej[j]), nfe=int(self.nfe[j]), direct_fallbacks=int(self.bobj.fallbacks[j]))
        if loss_fin is None:
            Wt_i, K_i = self.layout.unpack(y_fin)
            loss_fin = float(self.objs[j].loss(Wt_i, K_i))
        r["final_loss"] = float(loss_fin)
        for k, name in enumerate(("t1", "t2", "t3")):
            r[name] = None if np.isnan(self.found[j, k]) else float(self.found[j, k])
        if self.return_states:
            self.states[j] = y_fin.clone()
        if self.plateau:
            r["plateau_window"] = self.plateau_window(i_row, j) \
                if r["t1"] is not None and r["t2"] is not None and self.win_n[j] > 0 else None
        self.done[i_row] = True
        if self.on_done is not None:
            self.on_done(j, r)

    def plateau_window(self, i_row: int, j: int) -> "PlateauWindow":
        m = int(self.win_n[j])
        rows = self.WB[i_row, :m].clone()  # (m, 5, P): the row's slot is reused after it leaves
        wt = self.win_t
        its = [Dopri5Interp.from_rows(float(wt[j, q]), float(wt[j, q + 1]), float(self.win_h[j, q]), rows[q])
               for q in range(m)]
        return PlateauWindow(self.objs[j], wt[j, :m + 1], self.win_L[j, :m + 1], self.win_r[j, :m + 1], its,
                             threads=self.win_threads)

    def drop_finished(self) -> None:
        keep_np = np.nonzero(~self.done)[0]
        keep = torch.as_tensor(keep_np, device=self.device)
        self.Y, self.K, self.ATOL = self.Y[keep], self.K[keep], self.ATOL[keep]
        if self.plateau:
            self.WB = self.WB[keep]
        self.bobj.select(keep)
        self.run_of, self.t, self.h = self.run_of[keep_np], self.t[keep_np], self.h[keep_np]
        self.err_old, self.loss_prev = self.err_old[keep_np], self.loss_prev[keep_np]
        self.done = np.zeros(len(self.run_of), dtype=bool)

    def admit_waiting(self) -> bool:
        """Start waiting runs in the free slots (continuous batching: the batch stays full); True when one of
        them is already at its target at t0 (it stops there)."""
        free = self.slots - len(self.run_of)
        if free <= 0 or not self.pending.size:
            return False
        js, self.pending = self.pending[:free], self.pending[free:]
        Y_s, K_s, ATOL_s, loss_s, h_s = self.start(js)
        self.Y, self.K, self.ATOL = torch.cat([self.Y, Y_s]), torch.cat([self.K, K_s]), torch.cat([self.ATOL, ATOL_s])
        if self.plateau:
            self.WB = torch.cat([self.WB, torch.empty((len(js), 2, 5, self.P), dtype=self.dtype, device=self.device)])
        self.bobj.admit(js)
        B_old = len(self.run_of)
        self.run_of = np.concatenate([self.run_of, js])
        self.t = np.concatenate([self.t, np.zeros(len(js))])
        self.h = np.concatenate([self.h, h_s])
        self.err_old = np.concatenate([self.err_old, np.full(len(js), 1e-4)])
        self.loss_prev = np.concatenate([self.loss_prev, loss_s])
        self.done = np.zeros(len(self.run_of), dtype=bool)
        for i in range(B_old, len(self.run_of)):  # runs already at their target at t0 stop there
            if self.loss_prev[i] <= self.target[self.run_of[i]]:
                self.finish(i, Status.CONVERGED, "", 0.0, self.Y[i], self.loss_prev[i])
        return bool(self.done.any())

    def out_of_budget(self) -> bool:
        """Finish the runs whose step budget ran out (checked before each step, as the engine does)."""
        over = self.steps[self.run_of] >= self.max_steps[self.run_of]
        for i in np.nonzero(over)[0]:
            self.finish(i, Status.MAX_STEPS, f"the step budget of {self.max_steps[self.run_of[i]]} steps ran out "
                                             f"at t = {self.t[i]:.6g}", self.t[i], self.Y[i])
        return bool(over.any())

    # ------------------------------------------------------------------ one step attempt of every active run
    def attempt(self) -> None:
        """One DOPRI5 attempt per row: hit, hs, ytmp (new states), loss_new, ratio (error), finite, acc."""
        tb_run = self.t_bound[self.run_of]
        self.hit = self.t + self.h >= tb_run - 1e-15 * np.abs(tb_run)
        self.hs = np.where(self.hit, tb_run - self.t, self.h)
        hs_t = torch.as_tensor(self.hs, dtype=self.dtype, device=self.device)  # (B,)
        buf, shape = self.bobj.buffer, self.Y.shape
        self.ytmp = buf("ytmp", shape)
        self.loss_new = self.tab.stages(self.bobj.rhs, self.Y, self.K, hs_t, self.ytmp)
        self.nfe[self.run_of] += 6
        self.ratio = self.tab.error_ratios(self.Y, self.ytmp, self.K, hs_t, self.rtol, self.ATOL, buf("err", shape),
                                           buf("scale", shape), buf("scratch", shape))
        self.finite = torch.isfinite(self.ytmp).all(1).numpy()
        self.acc = self.ratio <= 1.0
        self.t_new = np.where(self.hit, tb_run, self.t + self.hs)

    def reject(self) -> None:
        """Rejected rows: a smaller step from the same start (or the end of a run whose step size collapsed)."""
        rej = ~self.acc
        self.n_rej[self.run_of[rej]] += 1
        self.h = np.where(rej, reject_steps(self.hs, self.ratio), self.h)
        t, h = self.t, self.h
        for i in np.nonzero(rej & (~np.isfinite(h) | (h <= 0) | (t + h == t)))[0]:
            self.finish(i, Status.FAILED, f"dopri5: the step size collapsed to {h[i]:.3g} at t = {t[i]:.6g}", t[i],
                        self.Y[i])

    def control(self) -> None:
        """Accepted rows: count the step, the next step size (PI control), err_old."""
        acc = self.acc
        self.steps[self.run_of[np.nonzero(acc)[0]]] += 1
        factor, r = accept_factors(self.ratio, self.err_old)
        new_h = np.where(~self.hit | (factor < 1), self.hs * factor, self.h)
        self.h = np.where(acc, new_h, self.h)
        self.err_old = np.where(acc, r, self.err_old)

    def events(self) -> dict:
        """Loss crossings of the accepted rows, located on their steps' interpolants; {row: (t_cut, interp,
        loss_at)} for the rows whose loss reached the target (crossings after it are dropped)."""
        run, levels, target, found = self.run_of, self.levels, self.target, self.found
        cross = self.acc[:, None] & np.isnan(found[run]) & (self.loss_new[:, None] <= levels[run])
        stop = self.acc & (self.loss_new <= target[run])
        cut = {}
        for i in np.nonzero(cross.any(1) | stop)[0]:
            j = int(run[i])
            ta, tb_i, hh = float(self.t[i]), float(self.t_new[i]), float(self.hs[i])
            K = self.K[i]
            interp = Dopri5Interp(ta, tb_i, hh, self.Y[i], self.ytmp[i], K[0], K[6], torch.mv(K.T, self.tab.d_row * hh))
            loss_at = _LossOnStep(self.layout, self.objs[j], interp)

            def locate(level, i=i, ta=ta, tb_i=tb_i, loss_at=loss_at):
                return locate_crossing(lambda s: loss_at(s) - level, ta, tb_i, self.loss_prev[i] - level,
                                       self.loss_new[i] - level)

            for k in np.nonzero(cross[i])[0]:
                found[j, k] = locate(levels[j, k])
            if stop[i]:
                same = [k for k in range(3) if levels[j, k] == target[j] and cross[i, k]]
                tc = found[j, same[0]] if same else locate(target[j])  # the same search gives the same time
                for k in range(3):  # crossings after the stop did not happen
                    if not np.isnan(found[j, k]) and found[j, k] > tc:
                        found[j, k] = np.nan
                cut[i] = (tc, interp, loss_at)
        return cut

    def track_plateau(self, ia) -> None:
        """Keep, per accepted run between t1 and t2, the step whose end has the smallest t|dL/dt| and the step
        after it (with t1 and t2 in one step: that step), reading dL/dt from the FSAL stage f(y_new); the steps'
        interpolant rows are written into the run's slot of WB by a few batched operations per step."""
        found, win_t, win_L, win_r, win_n = self.found, self.win_t, self.win_L, self.win_r, self.win_n
        run, device, hs = self.run_of, self.device, self.hs
        rows = ia[~np.isnan(found[run[ia], 0]) & ~self.closed[run[ia]]]
        if rows.size == 0:
            return
        js = run[rows]
        idx = torch.as_tensor(rows, device=device)
        F = self.K[idx, 6]  # (m, P) right-hand side at the new states
        rates = (-(self.counts[torch.as_tensor(js, device=device)] * F * F).sum(1)).numpy()
        tn, t2 = self.t_new[rows], found[js, 1]
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
            hk = torch.as_tensor(hs[kr], dtype=self.dtype, device=device)[:, None]  # (k, 1)
            st = Dopri5Interp.batched_rows(self.Y[ki], self.ytmp[ki], self.K[ki], hk, self.tab.d_row)  # (k, 5, P)
            f_pos = np.nonzero(first[keep])[0]
            s_pos = np.nonzero(second[keep])[0]
            if f_pos.size:
                self.WB[torch.as_tensor(kr[f_pos], device=device), 0] = st[torch.as_tensor(f_pos, device=device)]
            if s_pos.size:
                self.WB[torch.as_tensor(kr[s_pos], device=device), 1] = st[torch.as_tensor(s_pos, device=device)]
        jf, fr = js[first], rows[first]
        win_t[jf, 0], win_t[jf, 1], win_t[jf, 2] = self.t[fr], tn[first], np.nan
        win_L[jf, 0], win_L[jf, 1], win_L[jf, 2] = self.loss_prev[fr], self.loss_new[fr], np.nan
        win_r[jf, 0], win_r[jf, 1], win_r[jf, 2] = self.last_rate[jf], rates[first], np.nan
        self.win_h[jf, 0] = hs[fr]
        win_n[jf] = 1
        js2, sr = js[second], rows[second]
        win_t[js2, 2], win_L[js2, 2], win_r[js2, 2], self.win_h[js2, 1] = tn[second], self.loss_new[sr], \
            rates[second], hs[sr]
        win_n[js2] = 2
        self.closed[js[~np.isnan(t2)]] = True
        self.last_rate[js] = rates
        # (an untracked run's last_rate goes stale: a window's first sample matters only where it lies in
        # [t1, t2], and then it was a tracked step end; else it is unused, and flow_plateau skips it)

    def advance(self) -> None:
        """Accepted rows: the new state, FSAL stage, time and loss."""
        acc = self.acc
        acc_t = torch.as_tensor(acc, device=self.device)[:, None]
        if acc.all():  # the usual case: every run accepted
            self.Y.copy_(self.ytmp)
            self.K[:, 0].copy_(self.K[:, 6])
        else:
            self.Y = torch.where(acc_t, self.ytmp, self.Y)
            self.K[:, 0] = torch.where(acc_t, self.K[:, 6], self.K[:, 0])
        self.t = np.where(acc, self.t_new, self.t)
        self.loss_prev = np.where(acc, self.loss_new, self.loss_prev)

    def end_runs(self, cut: dict) -> None:
        """Finish the accepted rows that end here: non-finite state, loss target (at its crossing), t_max, or a
        collapsed step size (only those rows are visited: no per-row loop)."""
        t, h, Y, run, t_bound = self.t, self.h, self.Y, self.run_of, self.t_bound
        collapsed = ~np.isfinite(h) | (h <= 0) | (t + h == t)
        ends = self.acc & (~self.finite | (t >= t_bound[run]) | collapsed)
        for i in sorted(set(np.nonzero(ends)[0].tolist()) | set(cut)):
            if not self.finite[i]:
                self.finish(i, Status.FAILED, f"the state became non-finite at t = {t[i]:.6g}", t[i], Y[i], math.nan)
            elif i in cut:
                tc, interp, loss_at = cut[i]
                y_fin = Y[i] if tc == t[i] else interp(tc)
                self.finish(i, Status.CONVERGED, "", tc, y_fin, loss_at(tc) if tc != t[i] else self.loss_prev[i])
                r, j = self.res[run[i]], run[i]
                if not r["final_loss"] <= self.target[j]:
                    raise RuntimeError(f"internal error: run {j} stopped with loss {r['final_loss']:.9g} above its "
                                       f"target {self.target[j]:.9g}")
            elif t[i] >= t_bound[run[i]]:
                self.finish(i, Status.T_MAX, "", t[i], Y[i], self.loss_prev[i])
            elif collapsed[i]:
                self.finish(i, Status.FAILED, f"dopri5: the step size collapsed to {h[i]:.3g} at t = {t[i]:.6g}",
                            t[i], Y[i])

    def raise_floors(self) -> None:
        """The per-row atol floor (dynamics.ode.controller.RowAtol) after accepted steps 1, 9, 17, ... of each run."""
        upd = self.acc & (self.steps[self.run_of] % FLOOR_EVERY == 1) & ~self.done
        if upd.any():
            n, dtype, device = self.n, self.dtype, self.device
            iu = torch.as_tensor(np.nonzero(upd)[0], device=device)
            at = torch.as_tensor(self.atol0[self.run_of[upd.nonzero()[0]]], dtype=dtype, device=device)
            floor = row_floors(self.Y[iu, :n].view(-1, self.C, self.A), at, self.rtol)
            self.ATOL[iu, :n] = floor.expand(-1, self.C, self.A).reshape(-1, n)

    # ------------------------------------------------------------------ the loop
    def run(self) -> list:
        while True:
            if self.done.any():
                self.drop_finished()
            if self.admit_waiting():
                continue
            if len(self.run_of) == 0:
                break
            if self.out_of_budget():
                continue
            self.attempt()
            if not self.acc.all():
                self.reject()
            if not self.acc.any():
                continue
            self.control()
            cut = self.events()
            if self.plateau:
                self.track_plateau(np.nonzero(self.acc)[0])
            self.advance()
            self.end_runs(cut)
            if self.row_floor:
                self.raise_floors()
        wall = time.perf_counter() - self.wall0
        for j, r in enumerate(self.res):
            r["batch_wall_seconds"] = wall
            if self.return_states:
                r["final_state"] = self.states.get(j)
        return self.res


class _LossOnStep:
    """The loss of one run on one step's interpolant, memoized by time (the Brent searches of its crossings)."""

    def __init__(self, layout, objective, interp):
        self.layout, self.objective, self.interp, self.memo = layout, objective, interp, {}

    def __call__(self, s: float) -> float:
        if s not in self.memo:
            Wt_i, K_i = self.layout.unpack(self.interp(s))
            self.memo[s] = float(self.objective.loss(Wt_i, K_i))
        return self.memo[s]
