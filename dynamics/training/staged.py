"""Training runs from a configuration: one stage (:func:`train`) or the stages of a multi-stage experiment
in order (:func:`train_schedule`, SPEC §6, whose result is a :class:`ScheduleResult`). Both pick the trainer
the config names (:func:`make_trainer`: GD, or SGD / Adam on sampled batches)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from common.errors import ConfigError
from models.task import Task, make_task

from dynamics.training.base import Leg, Trainer, TrainResult
from dynamics.training.config import TrainConfig
from dynamics.training.gd import GDTrainer
from dynamics.training.sampled import SampledTrainer


@dataclass(repr=False)
class ScheduleResult(TrainResult):
    """A :func:`train_schedule` run. Its history has, besides the TrainResult columns (whose metrics are on
    the ``train`` set, the current stage's weights), ``stage`` (stage index of the row) and
    ``<set>_<metric>`` for every other evaluation set (NaN while a set is empty). Every stage has a row at
    its start and at its end, so a boundary step appears twice (end of one stage, start of the next), as in
    the flow's trajectory. ``stages``: a StageOutcome per stage run; ``schedule``: the Stage objects;
    ``stage_sets``: per stage in the schedule, set name -> its (S, R) evaluation weights (None: empty then).

    A stage cut by the step budget (reason ``steps``) did not meet its own rule: :attr:`finished` is False
    and :attr:`cut_stages` names it. Unlike the flow, which ends the experiment at such a stage (status
    ``t_max``), the trainers go on to the next stage, so that a model that cannot reach a loss level (a
    capacity-limited model 2 on a plateau) still runs the later stages; the report says it was cut."""

    stages: tuple = ()
    schedule: tuple = field(default=(), repr=False)
    eval_sets: tuple = ()
    stage_sets: tuple = field(default=(), repr=False)

    @property
    def finished(self) -> bool:
        """Every stage of the schedule ran and ended by its own stop rule (``time`` or ``loss``)."""
        return len(self.stages) == len(self.schedule) and all(o.by_own_rule for o in self.stages)

    @property
    def cut_stages(self) -> tuple:
        """Names of the stages the step budget ended before their own rule was met (reason ``steps``)."""
        return tuple(o.name for o in self.stages if o.reason == "steps")


def make_trainer(config: TrainConfig, task: Task | None = None, weights=None) -> Trainer:
    """The trainer the config names: GD (optimizer ``gd``) or the sampled trainer (``sgd``, ``adam``)."""
    cls = GDTrainer if config.optimizer == "gd" else SampledTrainer
    return cls(config, task, weights=weights)


def train(config: TrainConfig, progress: bool | None = None, task: Task | None = None) -> TrainResult:
    """Run the trainer the config names and return its history."""
    return make_trainer(config, task).run(progress=progress)


def train_schedule(config: TrainConfig, stages, *, eval_sets=("train",), progress: bool | None = None,
                   task: Task | None = None) -> ScheduleResult:
    """Train through the stages of a multi-stage experiment (SPEC §6; :class:`dynamics.experiment.schedule.Stage`) in
    order, with one model and one optimizer state (and one sampling generator) carried from stage to stage.

    Each stage trains on its resolved Distribution w: sampled batches from w (SGD, Adam) or the exact
    population loss under w (GD). Stop rules:
    - ``time``: model 1 (whose step k is flow time k * lr): round(time / lr) steps; model 2 and the
      transformer (no flow to pair with): ``time`` counts optimizer steps, round(time);
    - ``loss`` on set ``on``: checked at every evaluation (the stage's start, every ``eval_every`` steps
      counted from the stage's start, its end); the stage ends at the first evaluation whose loss on that set
      is <= the level. GD measures it with the exact population metrics of the set; the sampled trainers
      (SGD of either model, Adam) with the held-out evaluator, eval_size sequences drawn (seeded) from the
      set's weights, the numbers the history records (the same sequences at every evaluation; each stage's
      outcome keeps the loss on ``on`` at its end and that estimate's standard error, ``end_loss_se``);
    - every stage ends after at most ``config.steps`` steps (reason ``steps``: cut by the budget, not by its
      own rule; the result's ``finished`` is then False and ``cut_stages`` names it; the later stages run).
    eval_sets: names of dynamics.experiment.schedule's built-in sets (``train``: the current stage's weights, ``all``,
    ``seen``, ``unseen``, ``top10``, ``middle``, ``bottom50``) or EvalSpec objects; ``train`` is always
    measured. Returns a :class:`ScheduleResult` (the history gets ``stage`` and, for model 1, ``flow_time``).
    """

    from dynamics.experiment.schedule import EvalSpec, checked_sets, checked_stages, stage_plans

    c = config
    stages = checked_stages(stages)
    checked = checked_sets(eval_sets, stages)
    specs = ["train"] + [e for e in checked if e != "train"]  # the train set's metrics are the plain columns
    task = task if task is not None else make_task(c.task)
    weights, plans = stage_plans(tuple(specs), stages, task)  # every recipe checked before any work
    legs = [stage_leg(c, i, st, w, sets) for i, (st, w, sets) in enumerate(zip(stages, weights, plans))]
    trainer = make_trainer(c, task, weights=weights[0])
    run = trainer.run(progress=progress, plan=legs)
    return ScheduleResult(**{f.name: getattr(run, f.name) for f in dataclasses.fields(TrainResult)},
                          stages=trainer.outcomes, schedule=stages,
                          eval_sets=tuple(e.name if isinstance(e, EvalSpec) else e for e in specs),
                          stage_sets=tuple(plans))


def stage_leg(config: TrainConfig, index: int, stage, weights, sets) -> Leg:
    """Stage ``index`` as the trainers' loop runs it: its training ``weights``, evaluation ``sets`` and stop
    rules (``time`` -> round(time / lr) steps for model 1, round(time) for model 2 and the transformer, capped at
    config.steps)."""
    c, st = config, stage
    steps, end = c.steps, "steps"
    if st.until.time is not None:
        per_step = c.lr if c.model == "linear" else 1.0  # model 2, transformer: until_time is a number of steps
        n = int(round(st.until.time / per_step))
        if n < 1:
            raise ConfigError(f"stage {st.name!r}: until_time = {st.until.time:g} is less than half a step "
                              + (f"(lr = {c.lr:g}); lengthen the stage or lower lr" if c.model == "linear"
                                 else f"(for the {c.model} model until_time counts steps)"))
        if n <= c.steps:
            steps, end = n, "time"
    return Leg(steps=steps, index=index, name=st.name, weights=weights, loss=st.until.loss, on=st.until.on,
               end_reason=end, sets=sets)
