"""Multi-stage experiments on the exact flow (SPEC §6): a sequence of training distributions, each followed
until its stop rule, the state carried from one stage to the next, with evaluation sets measured exactly.

    exp = ExperimentConfig(flow=FlowConfig(task=TaskConfig(S=64, R=4, D=8)), stages=(
        Stage("pretrain", Distribution(subjects="0:32"), Stop(loss=0.01)),
        Stage("finetune", Distribution(subjects="32:64"), Stop(time=2000.0)),
    ), eval_sets=("all", "train", "seen", "unseen", EvalSpec("old", Distribution(subjects="0:32"))))
    run = run_experiment(exp)
    run.trajectory.to_dataframe()      # stage, t, <set>_<metric> columns, conservation drifts
    run.stages[0].t_end, run.stages[0].reason

Evaluation sets (each a weighting v(s, r) of the facts, SPEC §6; uniform over their facts unless said):

- ``all``: every fact; ``train``: the current stage's training weights;
- ``seen`` / ``unseen``: facts of subjects with positive training weight in some stage so far / in none
  (metrics NaN while the set is empty);
- ``top10`` / ``middle`` / ``bottom50``: subjects ranked by the first stage's subject frequency
  (sum_r w(s, r), ties by index): the most frequent 10 % (at least one), the least frequent 50 %, the rest;
- any named :class:`EvalSpec` (a :class:`models.weights.Distribution`).

Metrics per set, at every saved time: loss, relation_loss, subject_loss, hallucination_gap, p_true (mean
probability of the true answer), accuracy and excess (= loss - H_v(A|R), the loss above the best
predictor that knows only the relation; for unseen subjects a positive excess means confident wrong answers).
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from common.errors import ConfigError, check_positive
from models.population import PopulationObjective
from models.task import make_task
from models.weights import Distribution, uniform_over

from dynamics.flow.config import FlowConfig
from dynamics.flow.conservation import conserved_quantities
from dynamics.ode.engine import Event, Solution
from dynamics.ode.status import Status
from dynamics.flow.solve import (FlowMonitor, FlowProgress, time_grid_start, check_method_size, flow_numerics, initial_state,
                   save_times, solve)
from dynamics.threads import torch_threads
from dynamics.flow.trajectory import Trajectory

BUILTIN_SETS = ("all", "train", "seen", "unseen", "top10", "middle", "bottom50")
DEFAULT_SETS = BUILTIN_SETS
SET_METRICS = ("loss", "relation_loss", "subject_loss", "hallucination_gap", "p_true", "accuracy", "excess")


def excess(metrics: dict, entropy: float) -> float:
    """An evaluation set's excess loss: its loss minus H_v(A|R), the loss of the best relation-only predictor."""
    return metrics["loss"] - entropy


@dataclass(frozen=True)
class Stop:
    """When a stage ends: after ``time`` units of flow time, or when the loss on evaluation set ``on`` falls
    to ``loss``, whichever comes first (at least one of them). Every stage also ends at the experiment's
    ``t_max`` per stage (reason ``t_max``)."""

    time: float | None = None
    loss: float | None = None
    on: str = "train"

    def __post_init__(self):
        if self.time is None and self.loss is None:
            raise ConfigError("a stage needs a stop rule: until_time (flow time) or until_loss (a loss level), "
                              "or both")
        from dynamics.flow.reach import check_flow_time, check_loss_target

        if self.time is not None:  # a length and a level the flow can reach (dynamics.flow.reach)
            object.__setattr__(self, "time", check_flow_time(check_positive("until_time", self.time), "until_time"))
        if self.loss is not None:
            object.__setattr__(self, "loss", check_loss_target(check_positive("until_loss", self.loss), "until_loss"))
        if not isinstance(self.on, str) or not self.on:
            raise ConfigError(f"on = {self.on!r} must name an evaluation set")


@dataclass(frozen=True)
class Stage:
    """One stage: a name, its training distribution and its stop rule."""

    name: str
    train: Distribution
    until: Stop

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"stage name {self.name!r} must be a non-empty string")
        if not isinstance(self.train, Distribution):
            raise ConfigError(f"stage {self.name!r}: train must be a Distribution")
        if not isinstance(self.until, Stop):
            raise ConfigError(f"stage {self.name!r}: until must be a Stop")


@dataclass(frozen=True)
class EvalSpec:
    """A user evaluation set: a name and its weighting of the facts."""

    name: str
    weights: Distribution

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ConfigError(f"evaluation set name {self.name!r} must be an identifier (letters, digits, _)")
        if self.name in BUILTIN_SETS:
            raise ConfigError(f"evaluation set name {self.name!r} is built in; choose another name")


def checked_stages(stages) -> tuple:
    """The stages as a tuple: at least one, each a :class:`Stage`, names distinct. ConfigError otherwise."""
    stages = tuple(stages)
    if not stages:
        raise ConfigError("a schedule needs at least one stage")
    if not all(isinstance(st, Stage) for st in stages):
        raise ConfigError("stages must be dynamics.experiment.schedule.Stage objects")
    names = [st.name for st in stages]
    if len(set(names)) != len(names):
        raise ConfigError(f"stage names must be distinct, got {names}")
    return stages


def checked_sets(eval_sets, stages) -> tuple:
    """The evaluation sets, validated: built-in names or :class:`EvalSpec` objects, each once, with ``train``
    prepended when not listed (the training loss is always reported), and every stage's ``until_loss`` set
    among them. ConfigError otherwise."""
    sets = tuple(eval_sets)
    seen = set()
    for e in sets:
        n = e.name if isinstance(e, EvalSpec) else e
        if not isinstance(e, EvalSpec) and e not in BUILTIN_SETS:
            raise ConfigError(f"evaluation set {e!r} is not built in ({', '.join(BUILTIN_SETS)}); "
                              "define it with dynamics.experiment.schedule.EvalSpec (an [eval_sets.NAME] table in a file)")
        if n in seen:
            raise ConfigError(f"evaluation set {n!r} is listed twice")
        seen.add(n)
    if "train" not in seen:
        sets = ("train",) + sets
        seen.add("train")
    for st in stages:
        if st.until.loss is not None and st.until.on not in seen:
            raise ConfigError(f"stage {st.name!r}: until_loss is measured on {st.until.on!r}, which is not "
                              f"an evaluation set; choose one of: {', '.join(sorted(seen))}")
    return sets


@dataclass(frozen=True)
class ExperimentConfig:
    """A multi-stage experiment. ``flow`` gives the task, initialization, solver and ``t_max`` (the longest
    any one stage may run); its loss target is not used (each stage has its own stop rule)."""

    flow: FlowConfig
    stages: tuple
    eval_sets: tuple = DEFAULT_SETS

    def __post_init__(self):
        if not isinstance(self.flow, FlowConfig):
            raise ConfigError("flow must be a FlowConfig")
        from dynamics.flow.reach import check_flow_time, check_noise_stiffness

        check_flow_time(self.flow.t_max)  # the longest a stage may run: within reach (its loss target is unused)
        check_noise_stiffness(self.flow)
        stages = checked_stages(self.stages)
        object.__setattr__(self, "stages", stages)
        object.__setattr__(self, "eval_sets", checked_sets(self.eval_sets, stages))

    @property
    def set_names(self) -> tuple:
        return tuple(e.name if isinstance(e, EvalSpec) else e for e in self.eval_sets)


@dataclass(frozen=True)
class StageRun:
    """One integrated stage: [t_start, t_end], why it ended (``time``, ``loss``, ``t_max``, ``max_steps``,
    ``failed``), its solver statistics and the H(A|R) of every evaluation set during it."""

    name: str
    index: int
    t_start: float
    t_end: float
    reason: str
    message: str
    solver: dict
    entropies: dict  # set name -> H_v(A|R) (NaN for an empty set)
    set_sizes: dict  # set name -> number of facts with positive weight
    solution: Solution = field(repr=False)
    objective: PopulationObjective = field(repr=False)


@dataclass(frozen=True)
class ExperimentRun:
    """A finished (or stopped) experiment. status: ``completed`` when every stage ended by its own rule,
    else the reason the last stage ended (``t_max``, ``max_steps``, ``failed``)."""

    config: ExperimentConfig
    status: str
    stages: tuple
    trajectory: Trajectory = field(repr=False)
    conservation: dict
    wall_seconds: float
    threads: int = field(repr=False, default=0)
    stage_sets: tuple = field(repr=False, default=())  # per stage: set name -> models.population.EvalSet

    @contextlib.contextmanager
    def numerics(self):
        with torch_threads(self.threads), torch.inference_mode():
            yield

    def stage_at(self, t: float) -> StageRun:
        """The stage whose span holds t (the later one at a boundary)."""
        for st in reversed(self.stages):
            if st.t_start <= t:
                return st
        return self.stages[0]

    def state_at(self, t: float) -> torch.Tensor:
        """Packed state (P,) at flow time t, from the stage's dense output."""
        return self.stage_at(t).solution(t)

    def metrics_at(self, t: float) -> dict:
        """set name -> metrics of every evaluation set at flow time t (exact, on the dense output)."""
        st = self.stage_at(t)
        with self.numerics():
            Wt, K = st.objective.layout.unpack(self.state_at(t))
            m = st.objective.metrics(Wt, K, sets=self.stage_sets[st.index])
        for name, d in m.items():
            d["excess"] = excess(d, st.entropies[name])
        return m

    @property
    def final_state(self) -> tuple:
        st = self.stages[-1]
        Wt, K = st.objective.layout.unpack(st.solution.y_final)
        return Wt.cpu().numpy().copy(), K.cpu().numpy().copy()


def frequency_bins(w1: np.ndarray) -> dict:
    """Subject indices of the top 10 %, middle and bottom 50 % by first-stage frequency."""
    S = w1.shape[0]
    order = np.lexsort((np.arange(S), -w1.sum(1)))  # descending frequency, ties by index
    n_top = max(1, int(math.ceil(0.1 * S)))
    n_bottom = min(S - n_top, S // 2)
    return dict(top10=order[:n_top], middle=order[n_top:S - n_bottom], bottom50=order[S - n_bottom:])


def resolve_sets(eval_sets, task, w_stage: np.ndarray, seen_subjects: np.ndarray, bins: dict) -> dict:
    """set name -> (S, R) weights (None for an empty set) for one stage."""
    out = {}
    for e in eval_sets:
        if isinstance(e, EvalSpec):
            out[e.name] = e.weights.resolve(task)
            continue
        if e == "all":
            out[e] = uniform_over(task, name="all")
        elif e == "train":
            out[e] = w_stage
        elif e in ("seen", "unseen"):
            subj = np.nonzero(seen_subjects if e == "seen" else ~seen_subjects)[0]
            out[e] = uniform_over(task, subjects=subj, name=e) if subj.size else None
        else:
            subj = bins[e]
            out[e] = uniform_over(task, subjects=subj, name=e) if subj.size else None
    return out


def stage_plans(eval_sets, stages, task) -> tuple:
    """(weights, sets) per stage: each stage's resolved training weights (S, R), and its evaluation sets
    (set name -> (S, R) weights, None where empty: ``seen``/``unseen`` follow the stages so far, the frequency
    bins the first stage). ConfigError if a stage's until_loss set is empty in that stage."""
    weights = [st.train.resolve(task) for st in stages]
    bins = frequency_bins(weights[0])
    seen = np.zeros(task.S, dtype=bool)
    plans = []
    for st, w in zip(stages, weights):
        seen = seen | (w.sum(1) > 0)
        sets = resolve_sets(eval_sets, task, w, seen, bins)
        if st.until.loss is not None and sets[st.until.on] is None:
            raise ConfigError(f"stage {st.name!r}: until_loss is measured on {st.until.on!r}, which is empty "
                              "in this stage; stop on another set or by until_time")
        plans.append(sets)
    return weights, plans


class _Monitor:
    """One trajectory row: every evaluation set's metrics, the conservation drifts and dL/dt on the train set."""

    def __init__(self, obj: PopulationObjective, base: FlowMonitor, sets: dict, entropies: dict, stage: int,
                 stage_name: str):
        self.obj, self.base, self.sets, self.entropies = obj, base, sets, entropies
        self.stage, self.stage_name = stage, stage_name
        self.layout = obj.layout
        self.names = tuple(entropies)  # every set, empty ones included

    def row(self, t: float, y: torch.Tensor) -> dict:
        Wt, K = self.layout.unpack(y)
        m = self.obj.metrics(Wt, K, sets=self.sets, rate=True)  # rate: dL/dt of the training loss
        row = dict(stage=self.stage, t=t)
        for name in self.names:
            d = m.get(name)
            for k in SET_METRICS:
                if d is None:
                    row[f"{name}_{k}"] = math.nan
                elif k == "excess":
                    row[f"{name}_{k}"] = excess(d, self.entropies[name])
                else:
                    row[f"{name}_{k}"] = d[k]
        row.update(self.base.state_columns(Wt, K))
        row["train_dloss_dt"] = m["dloss_dt"]
        return row

    def loss_fn(self, name: str):
        es = self.sets[name]
        layout, obj = self.layout, self.obj

        def f(t, y):
            Wt, K = layout.unpack(y)
            return float(obj.loss(Wt, K, weights=es.w))

        return f


def run_experiment(config: ExperimentConfig, *, progress: bool | None = None) -> ExperimentRun:
    """Integrate every stage of ``config`` in order, the state carried over; see the module docstring."""
    wall0 = time.perf_counter()
    fc = config.flow
    fc.check_memory()
    task = make_task(fc.task)
    dtype, device = fc.torch_dtype, torch.device(fc.device)
    weights, plans = stage_plans(config.eval_sets, config.stages, task)  # every recipe checked before any work
    for st, w, sets in zip(config.stages, weights, plans):
        v = sets.get(st.until.on)
        if st.until.loss is not None and st.until.time is None and np.any((v > 0) & (w == 0)):
            raise ConfigError(f"stage {st.name!r} can never stop: until_loss = {st.until.loss:g} is measured on "
                              f"{st.until.on!r}, which holds facts this stage does not train; add until_time "
                              "or stop on a set the stage trains")
    Wt0, K0 = initial_state(fc, task, dtype, device)
    layout_obj = PopulationObjective(task, weights=weights[0], dtype=dtype, device=device)
    layout = layout_obj.layout
    check_method_size(fc, layout)
    y = layout.pack(Wt0, K0)
    num = flow_numerics(fc, layout, y, device)
    base = FlowMonitor(layout_obj, conserved_quantities(layout, Wt0, K0))
    rows: list[dict] = []
    stage_runs, stage_sets = [], []
    t0 = 0.0
    status = "completed"
    bar = FlowProgress(progress, fc.t_max * len(config.stages))
    try:
        with torch_threads(num.threads), torch.inference_mode():
            for i, (st, w, vsets) in enumerate(zip(config.stages, weights, plans)):
                obj = layout_obj if i == 0 else PopulationObjective(task, weights=w, dtype=dtype, device=device)
                sets = {n: (obj.train_set if n == "train" else obj.eval_set(v)) for n, v in vsets.items()
                        if v is not None}
                entropies = {n: (sets[n].H_A_given_R if n in sets else math.nan) for n in vsets}
                mon = _Monitor(obj, base, sets, entropies, i, st.name)

                def save(t, yy, mon=mon):
                    row = mon.row(t, yy)
                    bar.loss = row["train_loss"]
                    rows.append(row)
                    return row["train_loss"]

                t_end = t0 + (st.until.time if st.until.time is not None else fc.t_max)
                t_end = min(t_end, t0 + fc.t_max)
                Wt, K = layout.unpack(y)
                ts = t0 + save_times(time_grid_start(obj, Wt, K), t_end - t0, fc.samples_per_octave)
                ts[-1] = t_end  # no rounding past the stage's end
                stop = Event("until_loss", mon.loss_fn(st.until.on), (st.until.loss,)) \
                    if st.until.loss is not None else None
                n_rows = len(rows)
                sol = solve(fc, obj, y, t0, t_end, ts, save, num, stop=stop, bar=bar,
                            last_saved=lambda: rows[-1]["t"] if len(rows) > n_rows else None)
                if sol.status is Status.STOPPED:
                    reason = "loss"
                elif sol.status is Status.T_END:
                    reason = "time" if st.until.time is not None and st.until.time <= fc.t_max else "t_max"
                else:
                    reason = sol.status
                sizes = {n: int((v > 0).sum()) if v is not None else 0 for n, v in vsets.items()}
                stage_runs.append(StageRun(name=st.name, index=i, t_start=t0, t_end=sol.t_final, reason=reason,
                                           message=sol.message,
                                           solver=dict(**num.describe(fc), **{k: v for k, v in sol.stats.items()
                                                                              if k != "last_dt"}),
                                           entropies=entropies, set_sizes=sizes, solution=sol, objective=obj))
                stage_sets.append(sets)
                if reason not in ("loss", "time"):
                    status = reason
                    break
                y, t0 = sol.y_final, sol.t_final
    finally:
        bar.close()
    traj = Trajectory({k: [r.get(k, np.nan) for r in rows] for k in rows[0]}, time="t")
    conservation = {"balance": float(np.max(traj["invariant_drift"]))}
    for k in traj:
        if k.endswith("_drift") and k != "invariant_drift":
            conservation[k[: -len("_drift")]] = float(np.max(traj[k]))
    return ExperimentRun(config=config, status=status, stages=tuple(stage_runs), trajectory=traj,
                         conservation=conservation, wall_seconds=time.perf_counter() - wall0, threads=num.threads,
                         stage_sets=tuple(stage_sets))
