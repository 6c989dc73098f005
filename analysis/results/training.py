"""Reports of one training run (dynamics.train): the summary written to results.json, the history columns,
and the result object a notebook gets from ``analyze_training(config)`` (repr, to_dataframe, plot, save);
and those of a staged run (dynamics.train_schedule, ``python -m models.train --experiment``): its summary,
history columns and the curves of its figure.

Time is in steps; for model 1 the phases are also given in flow time (step k is flow time k*lr). A staged
run's phase times per stage and evaluation set (:func:`staged_phases`) follow the flow experiment's definitions
(analysis.results.experiment) located on the sampled curve, in the run's time unit (:func:`staged_time_column`).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np

from common.cli import describe_device
from common.errors import ConfigError
from dynamics.training import HISTORY_COLUMNS, train

from analysis.results.confirm import confirmation_report
from analysis.results.pairing import flow_gap
from analysis.phases import detect_phases, first_crossing, thresholds


def recorded_config(config, device) -> dict:
    """The settings a run used, as results.json records them: ``config.to_dict()`` (a dynamics.TrainConfig)
    with every entry the run used as it was used, and ``None`` for every entry the run does not read.

    - ``init``: model 1's ``uniform`` or ``balanced``; model 2 ``gaussian`` (W_KQ, W_OV entries drawn
      N(0, init_std^2), ``init_std`` = init_scale / sqrt(d), added beside it): TrainConfig's ``init`` field is
      model 1's only and its default ``uniform`` is not what model 2 does;
    - ``device``: the device the run ran on (``cpu``, ``cuda:0``), not the request (``auto``);
    - the transformer: ``init`` = ``gaussian-spec11`` (the fixed scales of SPEC §11: W_Q, W_K, W_V std
      1/sqrt(d_h), W_O, W_1 1/sqrt(d), W_2 1/sqrt(m)), so ``init_scale`` is not read; nor is ``manual_grad``
      (autograd);
    - not read, hence ``None``: ``d`` and ``manual_grad`` for model 1 (its SGD step is always hand-written),
      ``H``, ``d_h`` and ``m`` for models 1 and 2,
      ``batch``, ``seed`` and ``eval_size`` for full-batch GD (no sampling, exact evaluation),
      ``cuda_graph`` off CUDA, ``threads`` on CUDA.
    """
    import torch

    c = config.to_dict()
    dev = torch.device(device)
    c["device"] = str(dev)
    if config.model == "softmax":
        c["init"] = "gaussian"
        c["init_std"] = config.init_scale / config.d ** 0.5
    elif config.model == "transformer":  # the fixed scales of SPEC §11; gradients by autograd
        c["init"] = "gaussian-spec11"
        c["init_scale"] = c["manual_grad"] = None
    else:
        c["d"] = c["manual_grad"] = None
    if config.model != "transformer":
        c["H"] = c["d_h"] = c["m"] = None
    if config.optimizer == "gd":
        c["batch"] = c["seed"] = c["eval_size"] = None
    if dev.type != "cuda":
        c["cuda_graph"] = None
    else:
        c["threads"] = None
    return c


def summarize_training(result, pairing=None) -> dict:
    """results.json content of a run: config (:func:`recorded_config`: the settings used), device, theory
    levels, throughput, phases, final metrics.

    result: a TrainResult; pairing: ``flow_gap(result)`` or None. Model 1 adds the phases in flow time
    (and with a pairing ``flow_gap`` and where it is reached); model 2 adds the confirmation report (its claims
    are model 2's, SPEC §4: the transformer gets the phases and final metrics only).
    """
    c, h, task = result.config, result.history, result.task
    th = dict(log_A=task.log_A, H_A_given_R=task.H_A_given_R)
    empty = len(h["step"]) == 0  # diverged at step 0: the initial loss was not finite
    if empty:
        ph = dict(t1=None, t2=None, t3=None, plateau=None,
                  **dict(zip(("theta1", "theta2", "theta3"), thresholds(th["log_A"], th["H_A_given_R"], c.eps_conv))))
    else:
        ph = detect_phases(h["step"], h["loss"], h["relation_loss"], h["subject_loss"], h["hallucination_gap"],
                           log_A=th["log_A"], H_A_given_R=th["H_A_given_R"], eps_conv=c.eps_conv).to_dict()
    status = getattr(result, "status", "completed")
    out = dict(config=recorded_config(c, result.device), device=describe_device(result.device), theory=th,
               # completed, or diverged: at step diverged_at a loss was not finite or above 100 x its start
               # (dynamics.training.base.DIVERGENCE_FACTOR) and training stopped there
               status=status, diverged_at=getattr(result, "diverged_at", None),
               # a run ends when its steps run out, whatever its loss: converged only where an evaluation has the
               # loss at or below eps_conv (t3 reached), so a plateau at the budget's end is not convergence
               converged=ph["t3"] is not None,
               time_unit="steps" + (" (and flow time = step * lr in phases.flow_time)" if c.model == "linear"
                                    else ""),
               throughput=dict(sequences_per_second=result.sequences_per_second,
                               steps_per_second=result.steps_per_second, train_seconds=result.train_seconds),
               phases=dict(steps=ph),
               final=None if empty else {k: float(h[k][-1]) for k in ("loss", "relation_loss", "subject_loss",
                                                                      "accuracy", "hallucination_gap")})
    if c.model == "linear":  # step k is flow time k*lr
        ft = {k: (v * c.lr if isinstance(v, float) and k in ("t1", "t2", "t3") else v)
              for k, v in ph.items() if k != "plateau"}
        ft["plateau"] = None if ph["plateau"] is None else dict(ph["plateau"], t=ph["plateau"]["t"] * c.lr)
        out["phases"]["flow_time"] = ft
    if pairing is not None:
        out["flow_gap"] = pairing["flow_gap"]
        out["flow_gap_at"] = dict(step=pairing["at_step"], flow_time=pairing["at_flow_time"])
    if c.model == "softmax" and not empty:
        out["confirmation"] = confirmation_report(h, log_A=th["log_A"], H_A_given_R=th["H_A_given_R"],
                                                  eps_conv=c.eps_conv)
    return out


def history_columns(result, pairing=None) -> dict:
    """history.csv columns, name -> (n_eval,) array: HISTORY_COLUMNS, [flow_time], [flow_loss,
    flow_relation_loss, flow_subject_loss] (the exact flow at the same flow times, with a pairing)."""
    cols = {k: result.history[k] for k in HISTORY_COLUMNS}
    if "flow_time" in result.history:
        cols["flow_time"] = result.history["flow_time"]
    if pairing is not None:
        for k in ("loss", "relation_loss", "subject_loss"):
            cols[f"flow_{k}"] = pairing["flow"][k]
    return cols


def staged_time_column(history) -> str:
    """The time column of a staged run's history: ``flow_time`` for model 1 (step k is flow time k*lr), else
    ``step``."""
    return "flow_time" if "flow_time" in history else "step"


def summarize_staged_training(result, experiment: str, pairing=None) -> dict:
    """results.json content of a staged run: config, the experiment file, status, the stages (where each
    started and ended, in steps and in the time unit, and why it ended), the time unit, the final metrics.

    result: a ScheduleResult (dynamics.train_schedule); experiment: the experiment file's path; pairing:
    ``schedule_flow_gap(result, ...)`` or None (with one, ``flow_gap`` and where it is reached). Model 1's
    times are flow times (step * lr), model 2's steps.
    """
    c, h = result.config, result.history
    in_flow_time = staged_time_column(h) == "flow_time"
    phases, entropies = staged_phases(result), staged_entropies(result)
    stages = [dict(name=o.name, index=o.index, step_start=o.step_start, step_end=o.step_end, reason=o.reason,
                   by_own_rule=o.by_own_rule, t_start=o.step_start * (c.lr if in_flow_time else 1),
                   t_end=o.step_end * (c.lr if in_flow_time else 1), on=o.on, end_loss=o.end_loss,
                   end_loss_se=o.end_loss_se, phases=phases.get(o.name, {}),
                   H_A_given_R={k: _num(v) for k, v in entropies[o.index].items()} if o.index < len(entropies)
                   else {}) for o in result.stages]
    out = dict(config=recorded_config(c, result.device), experiment=experiment, status=result.status, stages=stages,
               # finished: every stage ended by its own rule; cut_stages: those the step budget ended instead
               finished=result.finished, cut_stages=list(result.cut_stages),
               time_unit="flow time (step * lr)" if in_flow_time else "steps",
               theory=dict(log_A=result.task.log_A, eps_conv=c.eps_conv),
               final={k: float(h[k][-1]) for k in h if k not in ("step", "stage")} if len(h["step"]) else None)
    if pairing is not None:
        out["flow_gap"] = pairing["flow_gap"]
        out["flow_gap_at"] = dict(step=pairing["at_step"], flow_time=pairing["at_flow_time"],
                                  stage=pairing["at_stage"])
    return out


def _num(x):
    return float(x) if x is not None and math.isfinite(x) else None


def staged_entropies(result) -> list:
    """Per stage of the schedule, set name -> H_v(A|R) in nats of its evaluation weights v then (NaN where the
    set is empty), as the flow experiment's StageRun.entropies."""
    task = result.task
    return [{name: (math.nan if v is None else task.entropy_given_relation(v)) for name, v in sets.items()}
            for sets in result.stage_sets]


def staged_phases(result) -> dict:
    """Phase times of a staged trainer run (a dynamics.training.ScheduleResult): stage name -> set name ->
    dict(t1, t2, t3, theta1, theta2, theta3), the definitions of the flow experiment's phases
    (analysis.results.experiment.experiment_phases) on the sampled curve.

    For stage k and evaluation set v, with v's levels ``thresholds(log|A|, H_v(A|R), eps_conv)`` (H_v of v's
    weights in that stage): the first time in the stage with L_v <= the level; the stage's start time where it
    holds at the stage's first row; None where no evaluation of the stage reaches it (t3 needs an evaluation
    with L_v <= eps_conv: a plateau above it is never taken for convergence). Between the two evaluations that
    bracket a crossing it is located on the PCHIP interpolant in log t (analysis.phases.first_crossing). An
    empty set gets None for every time and level but theta3. Times in the run's time unit
    (:func:`staged_time_column`: flow time = step * lr for model 1, steps for model 2), as the stages' t_start
    and t_end. The train set's curve is the history's plain ``loss`` column, every other set's
    ``<set>_loss``."""
    h, c, task = result.history, result.config, result.task
    if not len(h["step"]):
        return {}
    t_all = np.asarray(h[staged_time_column(h)], dtype=np.float64)
    stage_col = np.asarray(h["stage"]).astype(int)
    entropies = staged_entropies(result)
    out = {}
    for o in result.stages:
        rows = np.nonzero(stage_col == o.index)[0]
        per = {}
        for name, H in entropies[o.index].items():
            L = np.asarray(h["loss" if name == "train" else f"{name}_loss"], dtype=np.float64)[rows]
            if not math.isfinite(H) or rows.size == 0 or not np.isfinite(L).any():
                per[name] = dict(t1=None, t2=None, t3=None, theta1=None, theta2=None, theta3=c.eps_conv)
                continue
            th = thresholds(task.log_A, H, c.eps_conv)
            times = [first_crossing(t_all[rows], L, x) for x in th]
            per[name] = dict(t1=times[0], t2=times[1], t3=times[2], theta1=th[0], theta2=th[1], theta3=th[2])
        out[o.name] = per
    return out


def staged_history_columns(result, pairing=None) -> dict:
    """history.csv columns of a staged run, name -> (n_eval,) array: every history column, and with a pairing
    ``flow_loss`` (the exact multi-stage flow's loss at the same flow times)."""
    cols = {k: result.history[k] for k in result.history}
    if pairing is not None:
        cols["flow_loss"] = pairing["flow"]["loss"]
    return cols


# the trainer's train-set metrics are the plain history columns: the figure names them as a set (train_*)
TRAIN_SET_METRICS = ("loss", "relation_loss", "subject_loss", "hallucination_gap", "p_true", "accuracy")


def staged_figure_curves(columns: dict, time_column: str) -> dict:
    """The curves figures.experiment.save_experiment_figures draws from a staged run's history columns: the
    time column as ``t``, the train-set metrics as ``train_<metric>``, the rest as they are."""
    curves = {("t" if k == time_column else k): v for k, v in columns.items()}
    for k in TRAIN_SET_METRICS:
        if k in curves:
            curves[f"train_{k}"] = curves.pop(k)
    return curves


@dataclass(frozen=True)
class TrainingResult:
    """A training run with its report: ``run`` (dynamics.TrainResult), ``summary`` (the results.json content:
    phases, throughput, flow gap, confirmation) and ``pairing`` (``flow_gap(run)`` with --compare-flow, else
    None)."""

    run: object
    summary: dict = field(repr=False)
    pairing: dict | None = field(repr=False, default=None)

    def __repr__(self) -> str:
        ph, f = self.summary["phases"]["steps"], self.summary["final"]

        def g(x):
            return "None" if x is None else f"{x:.6g}"

        extra = f", flow_gap={self.pairing['flow_gap']:.4g}" if self.pairing is not None else ""
        if "confirmation" in self.summary:
            extra += f", all_confirmed={self.summary['confirmation']['all_confirmed']}"
        return (f"TrainingResult({self.run!r}, t1={g(ph['t1'])}, t2={g(ph['t2'])}, t3={g(ph['t3'])}, "
                f"final_loss={g(f['loss'] if f else None)}, status={self.summary.get('status')!r}{extra})")

    @property
    def history(self):
        return self.run.history

    def to_dataframe(self):
        """history.csv as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame(history_columns(self.run, self.pairing))

    def plot(self):
        """The loss figure (a matplotlib Figure), with the exact-flow overlay when paired."""
        from figures.train import plot_run  # presentation: figures is the top layer, loaded on demand

        return plot_run(self.run, self.summary, self.pairing)

    def save(self, folder: str, *, plots: bool = True, overwrite: bool = False) -> None:
        """Write results.json, history.csv and (plots) loss.png, loss.pdf into ``folder``, as a whole
        (common.io.output_dir; an existing non-empty ``folder`` is refused unless ``overwrite``)."""
        from common.io import output_dir, save_figure, write_csv, write_json

        with output_dir(folder, overwrite=overwrite) as d:
            write_json(os.path.join(d, "results.json"), self.summary)
            write_csv(os.path.join(d, "history.csv"), history_columns(self.run, self.pairing))
            if plots and len(self.run.history["step"]):  # no figure of an empty history (diverged at step 0)
                import matplotlib.pyplot as plt

                fig = self.plot()
                for name in ("loss.png", "loss.pdf"):
                    save_figure(fig, os.path.join(d, name), dpi=150)
                plt.close(fig)


def analyze_training(config, *, compare_flow: bool = False, progress: bool | None = None) -> TrainingResult:
    """Train as ``config`` (a dynamics.TrainConfig) says and report it; compare_flow pairs model 1 with its
    exact flow (flow_gap = max_k |L_train(k) - L_flow(k lr)|)."""
    if compare_flow and config.model != "linear":
        raise ConfigError("compare_flow needs model = 'linear' (the exact flow is model 1's)")
    run = train(config, progress=progress)
    pairing = flow_gap(run) if compare_flow and len(run.history["step"]) else None
    return TrainingResult(run=run, summary=summarize_training(run, pairing), pairing=pairing)
