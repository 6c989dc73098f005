"""The training loop shared by every trainer (:class:`Trainer`, a template method), its result
(:class:`TrainResult`) and the stages it runs through (:class:`Leg`, :class:`StageOutcome`).

A run is one or more legs (a plain run: one leg of ``config.steps`` steps; :func:`dynamics.training.staged.
train_schedule`: one per stage). Each leg evaluates at its start, at the steps of its :class:`EvalSchedule`
(counted from its start) and at its end, and ends early when its loss rule is met at an evaluation.

Evaluation (every ``eval_every`` steps and at the last step):
- sampled trainers: a fixed held-out set of ``eval_size`` sequences (drawn once with its own
  seed) -> loss, relation-only loss, subject-only loss, accuracy, hallucination gap (SPEC §3),
  each a mean over the held-out sequences;
- GD (model 1): the exact population metrics of :class:`models.population.PopulationObjective`.

Divergence: every trainer stops at the first loss that is not finite or above DIVERGENCE_FACTOR x
max(log|A|, the loss at step 0) (the sampled trainers: any batch loss, tracked on the device and read at
evaluations; GD: the exact loss of every step), keeps the history before it and returns status "diverged"
with ``diverged_at`` (the step); "completed" otherwise.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from models.task import Task

from dynamics.flow.trajectory import Trajectory
from dynamics.threads import torch_threads
from dynamics.training.config import TrainConfig
from dynamics.training.evaluation import EvalSchedule

HISTORY_COLUMNS = ("step", "loss", "relation_loss", "subject_loss", "accuracy", "hallucination_gap", "p_true",
                   "train_loss")
METRICS = HISTORY_COLUMNS[1:7]  # p_true: mean probability of the true answer (informative where accuracy is not)
# Divergence: a loss that is not finite, or above DIVERGENCE_FACTOR x max(log|A|, the loss at step 0). Training
# starts near the uniform prediction (loss log|A|); a stable step size never multiplies the loss by 100, while a
# far too large one can keep it finite but huge (model 2 at lr 1e6: 2e5 nats, its logits bounded by the unit
# embeddings). The trainers stop there and report status "diverged".
DIVERGENCE_FACTOR = 100.0


@dataclass
class TrainResult:
    """One training run. history: a Trajectory (time column ``step``) of HISTORY_COLUMNS, plus ``flow_time``
    (= step * lr) for model 1; ``to_dataframe()`` gives pandas."""

    config: TrainConfig
    task: Task
    device: torch.device
    history: Trajectory
    train_seconds: float
    sequences_per_second: float | None
    steps_per_second: float
    model: object = field(repr=False, default=None)
    status: str = "completed"  # completed | diverged (a loss not finite or > DIVERGENCE_FACTOR x its start)
    diverged_at: int | None = None  # diverged: the first step whose loss was bad (updates made before it)

    def __repr__(self) -> str:
        c, t, h = self.config, self.config.task, self.history
        final = f"{h['loss'][-1]:.6g}" if len(h["loss"]) else "None"
        div = f", status='diverged', diverged_at={self.diverged_at}" if self.status == "diverged" else ""
        return (f"TrainResult(model={c.model!r}, optimizer={c.optimizer!r}, lr={c.lr:g}, S={t.S}, R={t.R}, "
                f"D={t.D}, steps={c.steps}, device={self.device.type!r}, final_loss={final}{div}, "
                f"steps_per_second={self.steps_per_second:.4g})")

    def to_dataframe(self):
        """The history as a pandas DataFrame, one row per evaluation."""
        return self.history.to_dataframe()


@dataclass(frozen=True)
class StageOutcome:
    """One stage of :func:`train_schedule`: steps [step_start, step_end] and why it ended: ``time`` (its
    until_time, round(time / lr) steps), ``loss`` (until_loss reached at an evaluation), ``steps`` (the
    config's ``steps``, the most any one stage may take: the budget ran out before the stage's own rule was
    met) or ``diverged``; ``weights`` its (S, R) training weights. ``on``: the set its loss rule reads;
    ``end_loss``: the loss on ``on`` at the stage's last recorded evaluation (None if it has none) and
    ``end_loss_se`` its standard error (sampled trainers: the held-out estimate's; None for GD, exact)."""

    name: str
    index: int
    step_start: int
    step_end: int
    reason: str
    weights: np.ndarray = field(repr=False, compare=False)
    on: str = "train"
    end_loss: float | None = None
    end_loss_se: float | None = None

    @property
    def steps(self) -> int:
        return self.step_end - self.step_start

    @property
    def by_own_rule(self) -> bool:
        """Whether the stage ended by its own stop rule (``time`` or ``loss``), not by the step budget or a
        divergence."""
        return self.reason in ("time", "loss")


@dataclass(frozen=True)
class Leg:
    """One stage as the trainers' run loop sees it: at most ``steps`` steps, ending early when the loss on
    evaluation set ``on`` is <= ``loss`` at an evaluation, else with ``end_reason``. ``weights``: training
    weights; ``sets``: name -> (S, R) evaluation weights (None: empty). The plain run is one leg with
    ``sets`` None (training metrics only, the history of HISTORY_COLUMNS)."""

    steps: int
    index: int = 0
    name: str = ""
    weights: np.ndarray | None = None
    loss: float | None = None
    on: str = "train"
    end_reason: str = "steps"
    sets: dict | None = None

    def reached(self, m: dict) -> bool:
        """Whether evaluation ``m`` (set name -> metrics) ends this leg by its loss rule."""
        return self.loss is not None and m.get(self.on) is not None and m[self.on]["loss"] <= self.loss


def _new_history(legs) -> dict:
    hist = {k: [] for k in HISTORY_COLUMNS}
    if legs[0].sets is not None:
        hist["stage"] = []
        for name in legs[0].sets:
            if name != "train":
                hist.update({f"{name}_{k}": [] for k in METRICS})
    return hist


def _append_row(hist: dict, step: int, leg: Leg, m: dict, train_loss: float) -> None:
    """One history row: m is set name -> metrics (an empty set absent); the train set's are the plain columns."""
    hist["step"].append(step)
    for k in METRICS:
        hist[k].append(m["train"][k])
    hist["train_loss"].append(train_loss)
    if leg.sets is not None:
        hist["stage"].append(leg.index)
        for name in leg.sets:
            if name != "train":
                d = m.get(name)
                for k in METRICS:
                    hist[f"{name}_{k}"].append(math.nan if d is None else d[k])


class Measurement(NamedTuple):
    """What a trainer's :meth:`Trainer._measure` found at an evaluation: ``metrics`` (set name -> metrics),
    ``diverged_at`` (the step of the first bad loss; None while there is none) and ``train_loss`` (the
    history's ``train_loss`` column for this row)."""

    metrics: dict
    diverged_at: int | None
    train_loss: float = math.nan


class Trainer:
    """A trainer: :meth:`run` is the training loop of every trainer, written once (legs, evaluation cadence,
    history, divergence, early stop, progress, timing); a subclass supplies the steps and the measurements:

    - ``config``, ``task``, ``device`` (set by its constructor) and :meth:`set_weights` (train on other
      (S, R) fact weights from now on);
    - :meth:`_begin_run` (reset per-run state), :meth:`_begin_leg` (ready the leg's evaluation sets);
    - :meth:`_measure` (evaluate now: metrics, divergence, train loss) and :meth:`_set_limit` (the divergence
      limit, known after the step-0 evaluation);
    - :meth:`_advance` (train up to n steps, stopping at a bad loss it sees) and :meth:`_warm_up` (steps
      taken before a leg's loop, e.g. a CUDA graph capture);
    - :meth:`_trained_model` (the result's ``model``) and :meth:`_sequences_per_second`.

    After a run, ``outcomes`` holds a :class:`StageOutcome` per leg run.
    """

    config: TrainConfig
    task: Task
    device: torch.device

    def set_weights(self, weights) -> None:
        raise NotImplementedError

    def run(self, progress: bool | None = None, plan=None) -> TrainResult:
        """Train for ``config.steps`` steps, or through ``plan`` (the legs of :func:`train_schedule`, built
        there; their outcomes are left in ``self.outcomes``)."""
        legs = tuple(plan) if plan is not None else (Leg(steps=self.config.steps),)
        with torch_threads(self.config.threads if self.device.type == "cpu" else 0):
            return self._run(legs, progress)

    def _run(self, legs: tuple, progress) -> TrainResult:
        from common.progress import Progress

        c = self.config
        self._begin_run()
        self._history = _new_history(legs)
        self._diverged_at = None
        self._train_time, self._t0 = 0.0, time.perf_counter()
        self.outcomes = []
        step = 0
        # a bar on a terminal, a line every 30 s with ETA elsewhere (no carriage returns in log files)
        bar = Progress(sum(leg.steps for leg in legs), f"{c.model}/{c.optimizer}", enabled=progress)
        for leg in legs:
            step, reason = self._run_leg(leg, step, bar)
            if reason == "diverged":
                break
        bar.close()
        self.outcomes = tuple(self.outcomes)
        return self._result(step)

    def _run_leg(self, leg: Leg, start: int, bar) -> tuple[int, str | None]:
        """Train through one leg from step ``start``; returns the step it ended at and why it ended early
        (``diverged``, ``loss``; None: it ran its steps). Appends its StageOutcome to ``self.outcomes``."""
        c = self.config
        if leg.sets is not None:
            self.set_weights(leg.weights)
        self._begin_leg(leg)
        self._leg_last = None  # the metrics of the leg's last recorded evaluation
        step, end = start, start + leg.steps
        reason = self._evaluate_at(step, leg)
        if reason is None:
            done = self._warm_up(end - step)
            if done:
                step += done
                bar.update(done)
        sched = EvalSchedule(c.eval_every, c.eval_geometric, end - start)
        while reason is None and step < end:
            n = min(sched.next_after(step - start) - (step - start), end - step)
            done, bad = self._advance(n)
            step += done
            bar.update(done)
            if bad:  # the loss of the state after ``step`` steps was bad
                self._diverged_at, reason = step, "diverged"
            elif (step - start) in sched or step == end:
                reason = self._evaluate_at(step, leg)
        last = self._leg_last.get(leg.on) if self._leg_last is not None else None
        self.outcomes.append(StageOutcome(leg.name, leg.index, start, step, reason or leg.end_reason, leg.weights,
                                          on=leg.on, end_loss=None if last is None else last["loss"],
                                          end_loss_se=None if last is None else last.get("loss_se")))
        return step, reason

    def _evaluate_at(self, step: int, leg: Leg) -> str | None:
        """Record the evaluation at ``step`` (its time is not training time); the reason it ends the leg, if any:
        ``diverged`` (nothing recorded) at the first evaluation that finds a bad loss, ``loss`` (recorded)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._train_time += time.perf_counter() - self._t0
        m = self._measure(step, leg)
        if m.diverged_at is None:
            if step == 0:
                self._set_limit(DIVERGENCE_FACTOR * max(self.task.log_A, m.metrics["train"]["loss"]))
            _append_row(self._history, step, leg, m.metrics, m.train_loss)
            self._leg_last = m.metrics
        else:
            self._diverged_at = m.diverged_at
        self._t0 = time.perf_counter()
        if m.diverged_at is not None:
            return "diverged"
        return "loss" if leg.reached(m.metrics) else None

    def _result(self, step: int) -> TrainResult:
        c = self.config
        history = {k: np.asarray(v, dtype=np.float64) for k, v in self._history.items()}
        if c.model == "linear":
            history["flow_time"] = history["step"] * c.lr  # step k of model 1 is flow time k * lr
        seconds = max(self._train_time, 1e-12)
        return TrainResult(config=c, task=self.task, device=self.device, history=Trajectory(history, "step"),
                           train_seconds=seconds, sequences_per_second=self._sequences_per_second(step, seconds),
                           steps_per_second=step / seconds, model=self._trained_model(),
                           status="completed" if self._diverged_at is None else "diverged",
                           diverged_at=self._diverged_at)

    # ------------------------------------------------------------------ hooks of the subclasses
    def _begin_run(self) -> None:
        """Reset what one run keeps (called at the start of :meth:`run`)."""

    def _begin_leg(self, leg: Leg) -> None:
        """Ready the leg's evaluation (its training weights are already set)."""

    def _measure(self, step: int, leg: Leg) -> Measurement:
        """Evaluate the model at ``step`` on the leg's sets ({"train": ...} for a plain run)."""
        raise NotImplementedError

    def _set_limit(self, limit: float) -> None:
        """The divergence limit, from the step-0 evaluation on."""
        raise NotImplementedError

    def _warm_up(self, remaining: int) -> int:
        """Steps trained before the leg's loop (``remaining``: the leg's steps left); none by default."""
        return 0

    def _advance(self, n: int) -> tuple[int, bool]:
        """Train ``n`` steps: (steps counted, whether a bad loss stopped it after that many)."""
        raise NotImplementedError

    def _trained_model(self):
        raise NotImplementedError

    def _sequences_per_second(self, steps: int, seconds: float) -> float | None:
        return None
