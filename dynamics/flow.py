"""The exact population gradient flow of model 1: integrate, monitor, find the phases."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from analysis.phases import Phases, Plateau, first_crossing, thresholds
from models.errors import ConfigError
from models.linear import compress, init_linear
from models.population import PopulationObjective
from models.task import Task, make_task

from .config import FlowConfig
from .conservation import conserved_quantities, drift
from .integrate import make_backend
from .tolerances import auto_atol

TRAJECTORY_COLUMNS = ("t", "loss", "relation_loss", "subject_loss", "accuracy", "hallucination_gap",
                      "invariant_drift")
_CLASSES = ("subject", "relation", "noise", "eos")
_SINGLE_THREAD_BELOW = 200_000  # state entries
_REFINE_POINTS = 17  # fine grid inside a bracketing interval (Hermite error shrinks 16^4-fold)


@dataclass(frozen=True)
class FlowResult:
    """Everything a run produced. ``trajectory`` maps column name -> (n,) array."""

    config: FlowConfig
    status: str  # "converged" (loss target reached) or "t_max"
    trajectory: dict
    phases: Phases
    theory: dict
    conservation: dict  # law name -> max drift over the run
    solver: dict
    wall_seconds: float
    integration_seconds: float
    final_state: tuple = field(repr=False)  # compressed (Wt (C, |A|), K (C,)) as numpy

    @property
    def invariant_max_drift(self) -> float:
        return self.conservation["balance"]

    def to_dict(self) -> dict:
        """The content of results.json."""
        ph = self.phases.to_dict()
        return dict(
            config=self.config.to_dict(),
            status=self.status,
            phases=dict(t1=ph["t1"], t2=ph["t2"], t3=ph["t3"], plateau=ph["plateau"],
                        thresholds=dict(theta1=ph["theta1"], theta2=ph["theta2"], theta3=ph["theta3"])),
            theory=self.theory,
            invariant_max_drift=self.invariant_max_drift,
            conservation_max_drift=self.conservation,
            final=dict((k, float(v[-1])) for k, v in self.trajectory.items() if k != "t") | {
                "t": float(self.trajectory["t"][-1])},
            solver=self.solver,
            wall_seconds=self.wall_seconds,
            integration_seconds=self.integration_seconds,
        )


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


class _Monitor:
    """Computes one trajectory row from a state."""

    def __init__(self, obj: PopulationObjective, q0: dict):
        self.obj, self.layout, self.q0 = obj, obj.layout, q0
        L = self.layout
        self.class_rows = dict(subject=slice(0, L.S), relation=slice(L.S, L.S + L.R),
                               noise=slice(L.noise, L.noise + 1), eos=slice(L.eos, L.eos + 1))

    def loss_rate(self, y):
        Wt, K = self.layout.unpack(y)
        loss, rate = self.obj.loss_rate(Wt, K)
        return float(loss), float(rate)

    def row(self, t: float, y: torch.Tensor) -> dict:
        Wt, K = self.layout.unpack(y)
        m = self.obj.metrics(Wt, K)
        _, rate = self.obj.loss_rate(Wt, K)
        d = drift(self.q0, conserved_quantities(self.layout, Wt, K))
        row = dict(t=t, loss=m["loss"], relation_loss=m["relation_loss"], subject_loss=m["subject_loss"],
                   accuracy=m["accuracy"], hallucination_gap=m["hallucination_gap"],
                   invariant_drift=d.pop("balance"))
        for k, v in d.items():
            row[f"{k}_drift"] = v
        row["dloss_dt"] = float(rate)
        for name, sl in self.class_rows.items():
            row[f"W_{name}"] = float(Wt[sl].pow(2).sum(1).mean().sqrt())  # per-token RMS of |W[:, z]|
            row[f"K_{name}"] = float(K[sl].pow(2).mean().sqrt())
        return row


def _time_grid_start(obj: PopulationObjective, Wt, K) -> float:
    """One e-folding time of the fastest token at the start: 1 / max_z speed_z |dL/du_z|."""
    _, G = obj.grad_u(Wt, K)
    lam = float((obj.speed * G.norm(dim=1)).max())
    return 1.0 / lam if lam > 0 and math.isfinite(lam) else 1.0


def run_flow(config: FlowConfig, *, progress: bool | None = None) -> FlowResult:
    """Integrate the exact flow of ``config`` and return trajectory, phases and statistics.

    progress: show a progress bar (None: only on a terminal).
    """
    wall0 = time.perf_counter()
    config.check_memory()
    task = make_task(config.task)
    dtype, device = config.torch_dtype, torch.device(config.device)
    obj = PopulationObjective(task, dtype=dtype, device=device)
    layout = obj.layout
    Wt0, K0 = initial_state(config, task, dtype, device)
    y0 = layout.pack(Wt0, K0)
    rtol = config.resolved_rtol
    atol = config.atol if config.atol is not None else auto_atol(y0, rtol)
    backend = make_backend(config.backend, config.method, obj.flow_rhs, rtol=rtol, atol=atol)
    if config.backend == "scipy" and config.method in ("LSODA", "BDF", "Radau") and layout.size > 20000:
        raise ConfigError(f"method = {config.method!r} would form a dense {layout.size} x {layout.size} "
                          "Jacobian; use DOP853 or the torchdiffeq backend for this size")
    monitor = _Monitor(obj, conserved_quantities(layout, Wt0, K0))
    th = thresholds(task.log_A, task.H_A_given_R, config.eps_conv)
    target = config.resolved_loss_target

    # Small states: one thread. Each op is microseconds of work, so a second thread only adds
    # synchronisation, and on a busy machine an oversubscribed pool makes tiny ops 50x slower.
    threads = torch.get_num_threads()
    if layout.size < _SINGLE_THREAD_BELOW and device.type == "cpu":
        torch.set_num_threads(1)
    try:
        with torch.inference_mode():  # less per-op overhead than no_grad; nothing here is differentiated
            run = _Run(config, backend, monitor, th, target, progress)
            integ0 = time.perf_counter()
            run.integrate(y0, _time_grid_start(obj, Wt0, K0))
            integration_seconds = time.perf_counter() - integ0
    finally:
        torch.set_num_threads(threads)

    traj = {k: np.array([r.get(k, np.nan) for r in run.rows]) for k in run.rows[0]}
    theory = dict(log_A=task.log_A, H_A_given_R=task.H_A_given_R, log_D=math.log(task.D))
    conservation = {"balance": float(np.max(traj["invariant_drift"]))}
    for k in traj:
        if k.endswith("_drift") and k != "invariant_drift":
            conservation[k[: -len("_drift")]] = float(np.max(traj[k]))
    solver = dict(backend=config.backend, method=config.method, rtol=rtol, atol=atol, **backend.stats,
                  refinements=run.refinements, direct_fallbacks=obj.fallbacks,
                  saved_points=len(run.rows), status=run.status,
                  phase_time_error_estimate=run.phase_err)
    Wt, K = layout.unpack(run.y_final)
    return FlowResult(config=config, status=run.status, trajectory=traj, phases=run.phases(),
                      theory=theory, conservation=conservation, solver=solver,
                      wall_seconds=time.perf_counter() - wall0, integration_seconds=integration_seconds,
                      final_state=(Wt.cpu().numpy().copy(), K.cpu().numpy().copy()))


class _Run:
    """The chunked integration loop with online crossing detection and refinement."""

    def __init__(self, config, backend, monitor, th, target, progress):
        self.config, self.backend, self.monitor = config, backend, monitor
        self.th, self.target = th, target
        self.rows: list[dict] = []
        self.cross = {}  # 1, 2, 3, "target" -> refined time
        self.phase_err = {}
        self.refinements = 0
        self.status = "t_max"
        self.best = None  # plateau candidate: (rate, k, y_before, t_before)
        self.plateau_bracket = None
        self.y_final = None
        self.progress = progress

    # ---- refinement -----------------------------------------------------------
    def _fine(self, y_a, t_a, t_b, n=_REFINE_POINTS):
        self.refinements += 1
        ts = np.linspace(t_a, t_b, n)
        ys = self.backend.solve(y_a, ts)
        return ts, ys

    def _refine_crossing(self, y_a, row_a, row_b, theta):
        ts, ys = self._fine(y_a, row_a["t"], row_b["t"])
        Ls, dLs = zip(*(self.monitor.loss_rate(y) for y in ys))
        t_fine = first_crossing(ts, np.array(Ls), theta, np.array(dLs))
        t_coarse = first_crossing([row_a["t"], row_b["t"]], [row_a["loss"], row_b["loss"]], theta,
                                  [row_a["dloss_dt"], row_b["dloss_dt"]])
        return t_fine, abs(t_fine - t_coarse)

    # ---- main loop --------------------------------------------------------------
    def integrate(self, y0, t_first):
        from tqdm.auto import tqdm

        cfg = self.config
        spo = cfg.samples_per_octave
        bar = tqdm(desc="flow", unit=" pts", disable=(None if self.progress is None else not self.progress),
                   leave=False, dynamic_ncols=True)
        self._add(0.0, y0, None, None)
        t_a, y_a = 0.0, y0
        chunk_end = min(t_first, cfg.t_max)
        grid = np.linspace(0.0, chunk_end, 17)
        while True:
            ys = self.backend.solve(y_a, grid)
            stop = False
            for k in range(1, len(grid)):
                stop = self._add(float(grid[k]), ys[k], ys[k - 1], bar)
                if stop:
                    break
            t_a, y_a = float(grid[-1]), ys[-1].clone()
            del ys
            if stop or t_a >= cfg.t_max:
                break
            chunk_end = min(2.0 * t_a, cfg.t_max)
            grid = np.geomspace(t_a, chunk_end, spo + 1)
            grid[0] = t_a
        bar.close()
        if not stop:
            self.y_final = y_a
        self._finish_plateau()

    def _add(self, t, y, y_prev, bar) -> bool:
        """Record a saved point; returns True when the loss target was reached (run ends)."""
        row = self.monitor.row(t, y)
        prev = self.rows[-1] if self.rows else None
        L = row["loss"]
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"t={t:.4g} loss={L:.4g}")
        if prev is None:
            for i, th in enumerate(self.th, start=1):
                if L <= th:
                    self.cross[i] = 0.0
                    self.phase_err[f"t{i}"] = 0.0
            self.rows.append(row)
            self._track_plateau(row, y_prev)
            return L <= self.target
        for i, th in enumerate(self.th, start=1):
            if i not in self.cross and L <= th:
                self.cross[i], self.phase_err[f"t{i}"] = self._refine_crossing(y_prev, prev, row, th)
        if L <= self.target:
            if self.target == self.th[2] and 3 in self.cross:
                t_star = self.cross[3]  # the loss target is eps_conv: t3 was just refined
            else:
                t_star, _ = self._refine_crossing(y_prev, prev, row, self.target)
            ys = self.backend.solve(y_prev, np.array([prev["t"], t_star]))
            self.y_final = ys[-1].clone()
            row = self.monitor.row(t_star, self.y_final)
            self.rows.append(row)
            self._track_plateau(row, y_prev)
            self.status = "converged"
            return True
        self.rows.append(row)
        self._track_plateau(row, y_prev)
        return False

    def _track_plateau(self, row, y_prev):
        """Keep the sample in [t1, t2] with the smallest |dL/d log t| and the state just before it."""
        k = len(self.rows) - 1
        if self.best is not None and self.best[1] == k - 1 and self.plateau_bracket is None:
            # the sample after the current best closes its bracket
            self.best = self.best[:4] + (row["t"],)
        if 1 not in self.cross or self.plateau_bracket is not None:
            return
        t = row["t"]
        if 2 in self.cross and t > self.cross[2]:
            self.plateau_bracket = self.best
            return
        rate = abs(t * row["dloss_dt"])
        if t >= self.cross[1] and (self.best is None or rate < self.best[0]):
            t_before = self.rows[k - 1]["t"] if k > 0 else t
            y_before = y_prev.clone() if y_prev is not None else None
            self.best = (rate, k, y_before, t_before, t)
        if 2 in self.cross:
            self.plateau_bracket = self.best

    def _finish_plateau(self):
        if self.plateau_bracket is None and 2 in self.cross:
            self.plateau_bracket = self.best
        self._plateau = None
        b = self.plateau_bracket
        if b is None or 1 not in self.cross or 2 not in self.cross:
            return
        _, k, y_before, t_before, t_after = b
        t1, t2 = self.cross[1], self.cross[2]
        if y_before is None or t_after <= t_before:
            r = self.rows[k]
            self._plateau = Plateau(t=r["t"], loss=r["loss"], relation_loss=r["relation_loss"],
                                    subject_loss=r["subject_loss"], hallucination_gap=r["hallucination_gap"])
            return
        ts, ys = self._fine(y_before, t_before, t_after, 2 * _REFINE_POINTS - 1)
        best = None
        for t, y in zip(ts, ys):
            if not (t1 <= t <= t2):
                continue
            L, rate = self.monitor.loss_rate(y)
            score = abs(t * rate)
            if best is None or score < best[0]:
                best = (score, t, y)
        if best is None:
            return
        _, t, y = best
        Wt, K = self.monitor.layout.unpack(y)
        m = self.monitor.obj.metrics(Wt, K, accuracy=False)
        self._plateau = Plateau(t=float(t), loss=m["loss"], relation_loss=m["relation_loss"],
                                subject_loss=m["subject_loss"], hallucination_gap=m["hallucination_gap"])

    def phases(self) -> Phases:
        return Phases(t1=self.cross.get(1), t2=self.cross.get(2), t3=self.cross.get(3), plateau=self._plateau,
                      theta1=self.th[0], theta2=self.th[1], theta3=self.th[2])
