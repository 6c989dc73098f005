"""Pairing of model-1 training runs with the exact flow (SPEC §2): the flow at the runs' flow times
(flow_at), the largest loss difference over a run's evaluations (flow_gap) and over a multi-stage run's
(schedule_flow_gap). Step k of model 1 at step size lr is flow time k * lr.
"""
from __future__ import annotations

import numpy as np

from common.errors import ConfigError
from dynamics.flow.config import FlowConfig
from dynamics.flow.solve import run_flow
from dynamics.training.base import TrainResult
from dynamics.training.staged import ScheduleResult
from models.linear import init_linear
from models.population import PopulationObjective
from models.task import Task, TaskConfig

FLOW_COLUMNS = ("loss", "relation_loss", "subject_loss", "accuracy", "hallucination_gap")
PAIRING_RTOL = 1e-11  # flow_gap to ~1e-10 absolute (rtol 1e-9 leaves ~2e-8 at S16; measured against rtol 1e-12)


def flow_at(task: TaskConfig | Task, init: str, scale: float, times, rtol: float = PAIRING_RTOL) -> dict:
    """The exact flow of model 1 (SPEC §2) from ``init_linear(task, init, scale)``, evaluated at flow times.

    Integrates with the flow engine (:func:`dynamics.flow.solve.run_flow`, float64, rtol 1e-11) up to
    max(times) and reads each requested time off its dense output. Returns column -> (len(times),) numpy
    arrays: ``t`` and the exact population metrics (FLOW_COLUMNS). times: non-negative.
    """
    if isinstance(task, Task):
        task = task.config
    times = np.asarray(times, dtype=np.float64)
    if times.size and times.min() < 0:
        raise ConfigError("flow times must be >= 0")
    # no early stop: a loss target no float64 loss reaches
    config = FlowConfig(task=task, init=init, alpha=scale, t_max=max(float(times.max(initial=0.0)), 1e-300),
                        loss_target=1e-300, rtol=rtol)
    run = run_flow(config, progress=False)
    if run.status == "converged" and run.t_final == 0.0:
        # the loss is already ~0 at t = 0 (|A| = 1: the one answer is certain): a stationary point, the flow stays
        rows = [run.metrics_at(0.0)] * times.size
    elif run.status != "t_max":
        raise RuntimeError(f"the flow stopped before t = {config.t_max:g}: {run.status} {run.message}")
    else:
        rows = [run.metrics_at(float(t)) for t in times]
    out = {"t": times}
    for col in FLOW_COLUMNS:
        out[col] = np.array([r[col] for r in rows])
    return out


def flow_gap(result: TrainResult, flow: dict | None = None) -> dict:
    """Pair a model-1 run with the exact flow from the same initialization.

    Evaluation k of the run (step k, flow time k*lr) is compared with the flow at k*lr:
    flow_gap = max_k |L_train(k) - L_flow(k*lr)|, where it is reached, and the curves.
    """
    c, h = result.config, result.history
    if c.model != "linear":
        raise ConfigError("the exact flow exists for model = 'linear' only")
    if flow is None:
        flow = flow_at(c.task, c.init, c.init_scale, h["flow_time"])
    gap = np.abs(h["loss"] - flow["loss"])
    k = int(np.argmax(gap))
    return dict(flow_gap=float(gap[k]), at_step=int(h["step"][k]), at_flow_time=float(h["flow_time"][k]),
                flow_loss=flow["loss"], gap=gap, flow=flow)


def schedule_flow_gap(result: ScheduleResult, stages=None, flow_config: FlowConfig | None = None,
                      rtol: float = PAIRING_RTOL) -> dict:
    """Pair a model-1 :func:`train_schedule` run with the exact multi-stage flow from the same initialization.

    The flow (:func:`dynamics.experiment.schedule.run_experiment`, rtol 1e-11) runs the same stages (default the
    result's own) with the stage boundaries the run actually used: stage k is followed for steps_k * lr
    units of flow time (steps_k: the steps it took, whatever ended it), so both switch distribution at the
    same flow times. Each recorded evaluation (stage k, step j) is compared with the flow at j * lr, under
    stage k's training weights (a boundary row with the stage it belongs to):
    flow_gap = max |L_train - L_flow|, where it is reached, and the curves. flow_config: solver settings
    (backend, method, device, ...) for the flow; its task, init and t_max are replaced by the run's.
    """
    import dataclasses

    from dynamics.experiment.schedule import ExperimentConfig, Stage, Stop, run_experiment

    c, h = result.config, result.history
    if c.model != "linear":
        raise ConfigError("the exact flow exists for model = 'linear' only")
    stages = tuple(stages) if stages is not None else tuple(result.schedule)
    outs = result.stages
    if len(stages) < len(outs) or [st.name for st in stages[:len(outs)]] != [o.name for o in outs]:
        raise ConfigError("stages do not match the run's stages")
    ran = [(st, o) for st, o in zip(stages, outs) if o.steps > 0]  # a stage that ended at its start: no time
    flow_stages = tuple(Stage(st.name, st.train, Stop(time=o.steps * c.lr)) for st, o in ran)
    base = flow_config if flow_config is not None else FlowConfig(task=c.task)
    times = h["flow_time"]
    fc = dataclasses.replace(base, task=c.task, init=c.init, alpha=c.init_scale, init_file=None, rtol=rtol,
                             t_max=max([st.until.time for st in flow_stages], default=1.0))
    flow = {"t": np.asarray(times, dtype=np.float64)}
    for col in FLOW_COLUMNS:
        flow[col] = np.full(len(times), np.nan)
    if flow_stages:
        run = run_experiment(ExperimentConfig(flow=fc, stages=flow_stages, eval_sets=("train",)), progress=False)
        if run.status != "completed":
            raise RuntimeError(f"the flow stopped early: {run.status} {run.stages[-1].message}")
        by_index = {o.index: fr for (_, o), fr in zip(ran, run.stages)}
    else:  # every stage ended at step 0: the state never moved
        run, by_index = None, {}
    task = result.task
    objs = {}
    init_state = None
    for i, (k, t) in enumerate(zip(h["stage"].astype(int), times)):
        if k not in objs:
            objs[k] = PopulationObjective(task, weights=outs[k].weights)
        if run is None:
            if init_state is None:
                init_state = init_linear(task, c.init, c.init_scale)
            Wt, K = init_state
            m = objs[k].metrics(Wt, K)
        else:
            fr = by_index.get(k) or run.stage_at(t)
            tt = min(max(float(t), fr.t_start), fr.t_end)  # step * lr vs the flow's summed boundaries: ~1 ulp
            with run.numerics():
                Wt, K = fr.objective.layout.unpack(fr.solution(tt))
                m = objs[k].metrics(Wt, K)
        for col in FLOW_COLUMNS:
            flow[col][i] = m[col]
    gap = np.abs(h["loss"] - flow["loss"])
    j = int(np.argmax(gap))
    return dict(flow_gap=float(gap[j]), at_step=int(h["step"][j]), at_flow_time=float(times[j]),
                at_stage=int(h["stage"][j]), flow_loss=flow["loss"], gap=gap, flow=flow, run=run)
