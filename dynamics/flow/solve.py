"""The exact population gradient flow of model 1: integrate, monitor, locate loss crossings.

    run = run_flow(FlowConfig(task=TaskConfig(S=16, R=4, D=8)), levels=(2.5, 1.0))
    run.crossings[1.0], run.trajectory["loss"], run.params_at(300.0), run.solver["nfe"]

The flow knows nothing of phases (they are defined in :mod:`analysis.phases`): a caller asks for the
first times the loss falls to given levels, which the engine locates on its dense interpolant.
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from common.errors import ConfigError
from models.linear import compress, init_linear
from models.population import PopulationObjective
from models.task import Task, make_task

from dynamics.flow.config import FlowConfig
from dynamics.flow.conservation import conserved_quantities, drift
from dynamics.choices import IMPLICIT
from dynamics.ode.controller import RowAtol
from dynamics.ode.engine import Event, SaveAt, Solution, integrate
from dynamics.ode.registry import make_stepper
from dynamics.ode.status import Status, flow_status
from dynamics.ode.tolerances import auto_atol, check_resolves, smallest_entry
from dynamics.threads import threads_for, torch_threads
from dynamics.flow.trajectory import Trajectory

TRAJECTORY_COLUMNS = ("t", "loss", "relation_loss", "subject_loss", "accuracy", "hallucination_gap", "p_true",
                      "invariant_drift")
_CLASSES = ("subject", "relation", "noise", "eos")
_PROGRESS_SECONDS = 30.0  # a run not on a terminal reports one line this often


@dataclass(frozen=True)
class FlowRun:
    """One integrated flow. ``trajectory``: the monitored columns at the saved times.

    status: a :class:`dynamics.ode.status.Status`: ``converged`` (the loss reached the target; checked on the
    final state), ``t_max``, ``max_steps`` or ``failed`` (``message`` says why). crossings: level -> first time L <= level
    (None if not reached). ``state_at(t)`` gives the packed state anywhere in [0, t_final] (dense output),
``params_at(t)`` the full (W, K) of SPEC §2 and ``classes_at(t)`` the same per token class.
    """

    config: FlowConfig
    status: Status
    message: str
    trajectory: Trajectory = field(repr=False)
    crossings: dict
    conservation: dict  # law name -> max drift over the saved times
    solver: dict
    wall_seconds: float
    integration_seconds: float
    objective: PopulationObjective = field(repr=False)
    solution: Solution = field(repr=False)
    threads: int = field(repr=False, default=0)  # torch threads for this state size (0: torch's default)

    @contextlib.contextmanager
    def numerics(self):
        """Context for further evaluations on this run: its thread count, no autograd."""
        with torch_threads(self.threads), torch.inference_mode():
            yield

    @property
    def t_final(self) -> float:
        return self.solution.t_final

    @property
    def final_state(self) -> tuple:
        """Compressed (Wt (C, |A|), K (C,)) numpy arrays at the final time."""
        Wt, K = self.objective.layout.unpack(self.solution.y_final)
        return Wt.cpu().numpy().copy(), K.cpu().numpy().copy()

    def state_at(self, t: float) -> torch.Tensor:
        """Packed state (P,) at flow time t, from the solver's interpolant: the compressed ``Wt`` (C, |A|)
        flattened, then ``K`` (C,) (models.linear.Layout; :meth:`params_at` and :meth:`classes_at` name them)."""
        return self.solution(t)

    def params_at(self, t: float) -> tuple:
        """Model 1's parameters at flow time t as SPEC §2 writes them: ``(W, K)``, numpy float64 arrays of shapes
        (|A|, |V|) and (|V|,), the token axis in the vocabulary's order (subjects, relations, the N noise tokens,
        which the flow keeps identical, then EOS), by models.linear.expand."""
        from models.linear import expand

        Wt, K = self.objective.layout.unpack(self.state_at(t))
        return expand(self.objective.task, Wt.cpu().numpy(), K.cpu().numpy())

    def classes_at(self, t: float) -> dict:
        """The parameters at flow time t per token class: ``{"subject": (W, K), "relation": ..., "noise": ...,
        "eos": ...}`` with ``W`` (|A|, n) the columns W[:, z] and ``K`` (n,) the scores K[z] of the class's n
        tokens (n = S, R, 1 and 1: the noise tokens share one column in the flow), numpy float64."""
        L = self.objective.layout
        Wt, K = L.unpack(self.state_at(t))
        Wt, K = Wt.cpu().numpy(), K.cpu().numpy()
        rows = dict(subject=slice(0, L.S), relation=slice(L.S, L.S + L.R), noise=slice(L.noise, L.noise + 1),
                    eos=slice(L.eos, L.eos + 1))
        return {name: (Wt[sl].T.copy(), K[sl].copy()) for name, sl in rows.items()}

    def metrics_at(self, t: float) -> dict:
        """The metrics of SPEC §3 at flow time t (exact population values of the interpolated state)."""
        with self.numerics():
            Wt, K = self.objective.layout.unpack(self.state_at(t))
            return self.objective.metrics(Wt, K)


def initial_state(config: FlowConfig, task: Task, dtype, device):
    """Compressed (Wt, K) for the configured initialization (ConfigError on bad arrays)."""
    if config.init == "file":
        try:
            with np.load(config.init_file, allow_pickle=False) as z:
                if "W" not in z or "K" not in z:
                    raise ConfigError(f"init_file = {config.init_file!r} must hold arrays named 'W' and 'K'")
                W, K = z["W"], z["K"]
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(f"init_file = {config.init_file!r} could not be read as .npz "
                              f"({type(exc).__name__})") from None
        Wt, Kc = compress(task, W, K)
        return (torch.as_tensor(Wt, dtype=dtype, device=device), torch.as_tensor(Kc, dtype=dtype, device=device))
    return init_linear(task, config.init, config.alpha, dtype=dtype, device=device)


class FlowMonitor:
    """One trajectory row (every column of trajectory.csv) from a state."""

    def __init__(self, obj: PopulationObjective, q0: dict):
        self.obj, self.layout, self.q0 = obj, obj.layout, q0
        self.reused = 0  # loss evaluations answered from the solver's last right-hand side
        L = self.layout
        self.class_rows = dict(subject=slice(0, L.S), relation=slice(L.S, L.S + L.R),
                               noise=slice(L.noise, L.noise + 1), eos=slice(L.eos, L.eos + 1))
        avg = torch.zeros(L.C, len(self.class_rows), dtype=obj.dtype, device=obj.device)  # (C, 4) class means
        for j, sl in enumerate(self.class_rows.values()):
            avg[sl, j] = 1.0 / (sl.stop - sl.start)
        self._class_mean = avg

    def loss(self, t: float, y: torch.Tensor) -> float:
        # at a step's end the solver has just evaluated the right-hand side there (FSAL): reuse its forward pass
        cached = self.obj.loss_at_last_rhs(y)
        if cached is not None:
            self.reused += 1
            return float(cached)
        Wt, K = self.layout.unpack(y)
        return float(self.obj.loss(Wt, K))

    def row(self, t: float, y: torch.Tensor) -> dict:
        Wt, K = self.layout.unpack(y)
        m = self.obj.metrics(Wt, K, rate=True)  # dL/dt from the same exponentials as the metrics
        row = dict(t=t, loss=m["loss"], relation_loss=m["relation_loss"], subject_loss=m["subject_loss"],
                   accuracy=m["accuracy"], hallucination_gap=m["hallucination_gap"], p_true=m["p_true"])
        row.update(self.state_columns(Wt, K))
        row["dloss_dt"] = m["dloss_dt"]
        sq = torch.stack((torch.linalg.vector_norm(Wt, dim=1).square_(), K * K))  # (2, C) |W[:, z]|^2 and K_z^2
        (w_rms, k_rms) = (sq @ self._class_mean).sqrt_().tolist()  # per-token RMS in each class, one pass
        for j, name in enumerate(self.class_rows):
            row[f"W_{name}"] = w_rms[j]
            row[f"K_{name}"] = k_rms[j]
        return row

    def state_columns(self, Wt, K) -> dict:
        """invariant_drift (the balance law) and ``<law>_drift`` of every other conserved quantity."""
        d = drift(self.q0, conserved_quantities(self.layout, Wt, K))
        row = dict(invariant_drift=d.pop("balance"))
        for k, v in d.items():
            row[f"{k}_drift"] = v
        return row


def save_times(t_first: float, t_max: float, samples_per_octave: int) -> np.ndarray:
    """The saved times: 16 linear intervals on [0, t_first], then samples_per_octave per doubling of t."""
    t_first = min(t_first, t_max)
    parts = [np.linspace(0.0, t_first, 17)]
    t = t_first
    while t < t_max:
        nxt = min(2.0 * t, t_max)
        parts.append(np.geomspace(t, nxt, samples_per_octave + 1)[1:])
        t = nxt
    return np.concatenate(parts)


def time_grid_start(obj: PopulationObjective, Wt, K) -> float:
    """One e-folding time of the fastest token at the start: 1 / max_z speed_z |dL/du_z|."""
    _, G = obj.grad_u(Wt, K)
    lam = float((obj.speed * G.norm(dim=1)).max())
    return 1.0 / lam if lam > 0 and math.isfinite(lam) else 1.0


class FlowProgress:
    """A tqdm bar on a terminal; elsewhere one line on stderr every ~30 s, so a log shows the run is alive."""

    def __init__(self, enabled: bool | None, t_max: float, target: float | None = None):
        self.tty = sys.stderr.isatty()
        self.enabled = self.tty if enabled is None else enabled
        self.bar = None
        self.last = time.monotonic()
        self.t_max = t_max
        self.target = target  # the loss that ends the run: a flow has no step total, its progress is the loss
        if self.enabled and self.tty:
            from tqdm.auto import tqdm

            self.bar = tqdm(desc="flow", unit=" steps", leave=False, dynamic_ncols=True)
        self.loss = math.nan

    def __call__(self, t, y, steps):
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            if steps % 16 == 0:
                goal = f"->{self.target:g}" if self.target is not None else ""
                self.bar.set_postfix_str(f"t={t:.4g} loss={self.loss:.4g}{goal}")
        elif time.monotonic() - self.last >= _PROGRESS_SECONDS:
            self.last = time.monotonic()
            goal = f" (stops at {self.target:g})" if self.target is not None else ""
            sys.stderr.write(f"flow: t = {t:.6g} of at most {self.t_max:g}, loss {self.loss:.6g}{goal}, {steps} steps\n")
            sys.stderr.flush()

    def close(self):
        if self.bar is not None:
            self.bar.close()


def check_method_size(config: FlowConfig, layout) -> None:
    if config.backend == "scipy" and config.method in IMPLICIT and layout.size > 20000:
        raise ConfigError(f"method = {config.method!r} would form a dense {layout.size} x {layout.size} "
                          "Jacobian; use DOP853 or the native backend for this size")


@dataclass(frozen=True)
class FlowNumerics:
    """Solver settings of one flow, fixed at its initial state and kept across stages of an experiment.

    atol: the automatic atol is tied to the *initial* state's smallest entry, so a later stage starting
    from a grown state keeps the same absolute floor (and the same per-row floor, ``row_atol``).
    threads: 1 for small states (each op is microseconds of work: a second thread only adds
    synchronisation, and on a busy machine an oversubscribed pool makes tiny ops 50x slower), else 0.
    """

    rtol: float
    atol: float
    row_atol: RowAtol | None
    threads: int

    def describe(self, config: FlowConfig) -> dict:
        return dict(backend=config.backend, method=config.method, rtol=self.rtol, atol=self.atol,
                    atol_row_floor=self.row_atol is not None)  # atol raised to 1e-3 rtol max_a |W[a, z]| per row


def flow_numerics(config: FlowConfig, layout, y0: torch.Tensor, device) -> FlowNumerics:
    rtol = config.resolved_rtol
    if config.init == "file":  # FlowConfig checked alpha's entries; a file's are known only now
        check_resolves(rtol, config.atol, smallest_entry(y0), config.torch_dtype, where="init_file's state")
    atol = config.atol if config.atol is not None else auto_atol(y0, rtol)
    # automatic atol with the native solver: a floor relative to each token's row, which the stepper's controller
    # raises itself after accepted steps 1, 9, 17, ... (the row maxima move slowly: every 8th step is plenty)
    row_atol = RowAtol(layout, y0, rtol, atol) if config.atol is None and config.backend == "native" else None
    threads = threads_for(layout.size, device)
    return FlowNumerics(rtol=rtol, atol=atol, row_atol=row_atol, threads=threads)


def solve(config: FlowConfig, obj: PopulationObjective, y0: torch.Tensor, t0: float, t_end: float, ts, save,
          num: FlowNumerics, *, events=(), stop: Event | None = None, bar=None, last_saved=None) -> Solution:
    """Integrate dy/dt = -grad L of ``obj`` from (t0, y0) to t_end or the stop event (the engine's Solution).

    save(t, y) is called at the times ``ts``; when the run ends before t_end (stop, step budget, failure)
    it is called once more at the final time unless ``last_saved()`` already equals it.
    Call inside ``torch_threads(num.threads)`` and ``torch.inference_mode()``.
    """
    steps = [0]

    def on_step(t, y):
        steps[0] += 1
        if bar is not None:
            bar(t, y, steps[0])

    stepper = make_stepper(config.backend, config.method, obj.flow_rhs, t0, y0, rtol=num.rtol, atol=num.atol,
                           t_bound=t_end, atol_floor=num.row_atol)
    sol = integrate(stepper, t_end, saveat=SaveAt(ts, save), events=events, stop=stop, max_steps=config.max_steps,
                    on_step=on_step)
    if sol.status is not Status.T_END and (last_saved is None or last_saved() != sol.t_final):
        # the run ends on the stop crossing, or where the step budget ran out or the solver failed
        # (the last finite state): its row closes the table
        save(sol.t_final, sol.y_final)
    return sol


def run_flow(config: FlowConfig, *, levels=(), progress: bool | None = None) -> FlowRun:
    """Integrate the exact flow of ``config``; locate the first times the loss falls to each of ``levels``.

    progress: a progress bar on a terminal, a line every ~30 s elsewhere (None: only on a terminal).
    """
    wall0 = time.perf_counter()
    config.check_memory()
    task = make_task(config.task)
    dtype, device = config.torch_dtype, torch.device(config.device)
    obj = PopulationObjective(task, dtype=dtype, device=device)
    layout = obj.layout
    Wt0, K0 = initial_state(config, task, dtype, device)
    y0 = layout.pack(Wt0, K0)
    check_method_size(config, layout)
    monitor = FlowMonitor(obj, conserved_quantities(layout, Wt0, K0))
    target = config.resolved_loss_target
    levels = tuple(float(x) for x in levels)
    bar = FlowProgress(progress, config.t_max, target)
    rows: list[dict] = []

    def save(t, y):
        row = monitor.row(t, y)
        bar.loss = row["loss"]
        rows.append(row)
        return row["loss"]

    num = flow_numerics(config, layout, y0, device)
    try:
        # nothing here is differentiated; no_grad rather than inference_mode because inference tensors keep no
        # version counter, and the step-end loss reuse (PopulationObjective.loss_at_last_rhs) needs it as proof
        # that the state was not written since its last right-hand side
        with torch_threads(num.threads), torch.no_grad():
            ts = save_times(time_grid_start(obj, Wt0, K0), config.t_max, config.samples_per_octave)
            integ0 = time.perf_counter()
            sol = solve(config, obj, y0, 0.0, config.t_max, ts, save, num,
                        events=[Event("loss", monitor.loss, levels)] if levels else [],
                        stop=Event("loss_target", monitor.loss, (target,)), bar=bar, last_saved=lambda: rows[-1]["t"])
            integration_seconds = time.perf_counter() - integ0
            final_loss = monitor.loss(sol.t_final, sol.y_final)
    finally:
        bar.close()
    status = flow_status(sol.status)
    if status is Status.CONVERGED and not final_loss <= target:  # never assumed: checked on the final state
        raise RuntimeError(f"internal error: the run stopped at t = {sol.t_final:.9g} with loss "
                           f"{final_loss:.9g} above the target {target:.9g}")
    traj = Trajectory({k: [r.get(k, np.nan) for r in rows] for k in rows[0]}, time="t")
    conservation = {"balance": float(np.max(traj["invariant_drift"]))}
    for k in traj:
        if k.endswith("_drift") and k != "invariant_drift":
            conservation[k[: -len("_drift")]] = float(np.max(traj[k]))
    solver = dict(**num.describe(config), **{k: v for k, v in sol.stats.items() if k != "last_dt"},
                  direct_fallbacks=obj.fallbacks, saved_points=len(rows), status=status)
    crossings = dict(zip(levels, sol.events["loss"])) if levels else {}
    return FlowRun(config=config, status=status, message=sol.message, trajectory=traj, crossings=crossings,
                   conservation=conservation, solver=solver, wall_seconds=time.perf_counter() - wall0,
                   integration_seconds=integration_seconds, objective=obj, solution=sol, threads=num.threads)
