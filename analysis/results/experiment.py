"""The result of a multi-stage experiment (SPEC §6): the integrated stages with phase times per evaluation set.

    res = analyze_experiment(ExperimentConfig(...))
    res.phases["pretrain"]["all"]["t3"]     # first time in that stage the loss on `all` is <= eps_conv
    res.to_dataframe(); res.plot(); res.save("runs/mine")

Phase times per stage and evaluation set v follow SPEC §3 with v's own levels: t1 = first time in the stage
with L_v <= (log|A| + H_v(A|R)) / 2, t2 = first time with L_v <= H_v(A|R) / 2, t3 = first time with
L_v <= eps_conv (the stage's start time if the level already holds there; None if not reached in the stage).
Crossings are bracketed on the saved rows and located by Brent's method on the solver's dense output
(dynamics.ode.engine.locate_crossing, as the flow's own events).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np

from dynamics.ode.engine import locate_crossing
from dynamics.experiment.schedule import ExperimentConfig, ExperimentRun, run_experiment
from models.task import make_task

from analysis.phases import locate_first_crossing, thresholds


@dataclass(frozen=True)
class ExperimentResult:
    """An experiment with its phases. ``phases[stage][set]`` = dict(t1, t2, t3, theta1, theta2, theta3)."""

    config: ExperimentConfig
    status: str
    run: ExperimentRun = field(repr=False)
    phases: dict = field(repr=False)
    theory: dict = field(repr=False)

    @property
    def trajectory(self):
        return self.run.trajectory

    def __repr__(self) -> str:
        t = self.config.flow.task
        parts = ", ".join(f"{s.name}: [{s.t_start:.6g}, {s.t_end:.6g}] ({s.reason})" for s in self.run.stages)
        return (f"ExperimentResult(S={t.S}, R={t.R}, D={t.D}, status={self.status!r}, stages={{{parts}}}, "
                f"sets={list(self.config.set_names)})")

    def to_dataframe(self):
        """The trajectory as a pandas DataFrame (``stage`` column, ``<set>_<metric>`` columns)."""
        import pandas as pd

        df = pd.DataFrame(dict(self.trajectory))
        df["stage"] = df["stage"].astype(int)
        return df

    def stage_table(self) -> list:
        """One dict per stage: name, start/end time, why it ended, solver statistics, phase times per set,
        the entropy H_v(A|R) and size of every set, and every set's metrics at the stage's end."""
        out = []
        tr = self.trajectory
        for st in self.run.stages:
            rows = np.nonzero(np.asarray(tr["stage"]) == st.index)[0]
            last = int(rows[-1])
            end = {name: {m: _num(tr[f"{name}_{m}"][last]) for m in ("loss", "relation_loss", "subject_loss",
                                                                       "hallucination_gap", "p_true", "accuracy",
                                                                       "excess")}
                   for name in self.config.set_names}
            out.append(dict(name=st.name, index=st.index, t_start=st.t_start, t_end=st.t_end, duration=st.t_end -
                            st.t_start, reason=st.reason, message=st.message, solver=st.solver,
                            phases=self.phases[st.name],
                            H_A_given_R={k: _num(v) for k, v in st.entropies.items()}, set_sizes=st.set_sizes,
                            at_end=end))
        return out

    def to_dict(self) -> dict:
        """The content of results.json."""
        c = self.config
        return dict(config=dict(flow=c.flow.to_dict(), stages=[_stage_dict(s) for s in c.stages],
                                eval_sets=list(c.set_names)),
                    status=self.status, theory=self.theory, stages=self.stage_table(),
                    conservation_max_drift=self.run.conservation, wall_seconds=self.run.wall_seconds)

    def plot(self):
        """The experiment figure (matplotlib Figure): loss and p_true per set, stage boundaries marked."""
        from figures.experiment import experiment_figure  # presentation, loaded on demand

        return experiment_figure(self.trajectory, self._stage_dicts(), log_A=self.theory["log_A"],
                                 entropies=self._entropies(), title=self._title())

    def _stage_dicts(self) -> list:
        return [dict(name=s.name, t_start=s.t_start, t_end=s.t_end, reason=s.reason) for s in self.run.stages]

    def _entropies(self) -> list:
        return [dict(s.entropies) for s in self.run.stages]

    def _title(self) -> str:
        t = self.config.flow.task
        return f"S={t.S}, R={t.R}, D={t.D}, alpha={self.config.flow.alpha:g}: " + " -> ".join(
            s.name for s in self.run.stages)

    def save(self, folder: str, *, plots: bool = True, overwrite: bool = False) -> list:
        """Write results.json, trajectory.csv and (plots) the figures into ``folder`` (built whole, then
        put in place; an existing non-empty folder is refused unless ``overwrite``). Returns the file names."""
        from common.io import output_dir, write_csv, write_json

        names = ["results.json", "trajectory.csv"]
        with output_dir(folder, overwrite=overwrite) as d:
            write_json(os.path.join(d, "results.json"), self.to_dict())
            write_csv(os.path.join(d, "trajectory.csv"), self.trajectory)
            if plots:
                from figures.experiment import save_experiment_figures  # presentation, loaded on demand

                written = save_experiment_figures(d, self.trajectory, self._stage_dicts(),
                                                  log_A=self.theory["log_A"], entropies=self._entropies())
                names += [os.path.basename(p) for p in written]
        return names


def _num(x):
    x = float(x)
    return x if math.isfinite(x) else None


def _stage_dict(s) -> dict:
    d = dict(name=s.name, until_time=s.until.time, until_loss=s.until.loss, on=s.until.on)
    tr = s.train
    d["train"] = {k: (list(v) if isinstance(v, tuple) and k != "mix" else v)
                  for k, v in dict(zipf_subjects=tr.zipf_subjects, zipf_relations=tr.zipf_relations,
                                   subjects=tr.subjects, relations=tr.relations, weights_file=tr.weights_file,
                                   name=tr.name).items() if v is not None}
    if tr.mix:
        d["train"]["mix"] = [[c, m.name] for c, m in tr.mix]
    if tr.weights is not None:
        d["train"]["weights"] = "array"
    return d


def set_loss_at(run: ExperimentRun, stage, name: str, t: float) -> float:
    """Loss on evaluation set ``name`` at flow time t inside ``stage`` (exact, on the dense output)."""
    es = run.stage_sets[stage.index][name]
    with run.numerics():
        Wt, K = stage.objective.layout.unpack(stage.solution(t))
        return float(stage.objective.loss(Wt, K, weights=es.w))


def stage_crossing(run: ExperimentRun, stage, name: str, theta: float) -> float | None:
    """First time in ``stage`` with L_name <= theta (t_start if it holds there; None if never)."""
    tr = run.trajectory
    rows = np.nonzero(np.asarray(tr["stage"]) == stage.index)[0]
    t = np.asarray(tr["t"])[rows]
    L = np.asarray(tr[f"{name}_loss"])[rows]
    if not np.isfinite(L).any():
        return None

    def on_dense_output(i, j):  # the engine's event locator: Brent's root on the dense output, on the crossed side
        lo, hi = float(t[i]), float(t[j])
        if hi <= lo:
            return hi
        return locate_crossing(lambda s: set_loss_at(run, stage, name, s) - theta, lo, hi, float(L[i]) - theta,
                               float(L[j]) - theta)

    return locate_first_crossing(t, L, theta, on_dense_output)


def experiment_phases(run: ExperimentRun, log_A: float) -> dict:
    """stage name -> set name -> dict(t1, t2, t3, theta1, theta2, theta3) (see the module docstring)."""
    eps = run.config.flow.eps_conv
    out = {}
    for st in run.stages:
        per = {}
        for name, H in st.entropies.items():
            if not math.isfinite(H):
                per[name] = dict(t1=None, t2=None, t3=None, theta1=None, theta2=None, theta3=eps)
                continue
            th = thresholds(log_A, H, eps)
            times = [stage_crossing(run, st, name, x) for x in th]
            per[name] = dict(t1=times[0], t2=times[1], t3=times[2], theta1=th[0], theta2=th[1], theta3=th[2])
        out[st.name] = per
    return out


def analyze_experiment(config: ExperimentConfig, *, progress: bool | None = None) -> ExperimentResult:
    """Run every stage of ``config`` (dynamics.experiment.schedule.run_experiment) and find the phases per set."""
    task = make_task(config.flow.task)
    run = run_experiment(config, progress=progress)
    theory = dict(log_A=task.log_A, log_D=math.log(task.D))
    return ExperimentResult(config=config, status=run.status, run=run, phases=experiment_phases(run, task.log_A),
                            theory=theory)
