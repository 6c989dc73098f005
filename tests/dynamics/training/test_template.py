"""The training loop is written once (Trainer.run, dynamics.training.base) and both trainers run it: the same
history columns, evaluation steps, divergence and early-stop rules.

References: a scripted trainer whose loss after k steps is a given list (the loop's rules applied by hand to
that list); for the real trainers, the same trainers stepped by hand (GD: the exact loss each step returns;
SGD: each batch loss, read off the running sum) and the divergence rule applied to those losses.
"""
import math
import types

import numpy as np
import pytest
import torch

from dynamics.experiment.schedule import Stage, Stop
from dynamics.training import (DIVERGENCE_FACTOR, HISTORY_COLUMNS, EvalSchedule, GDTrainer, Leg, SampledTrainer,
                               TrainConfig, Trainer, train, train_schedule)
from dynamics.training.base import Measurement
from models.task import TaskConfig
from models.weights import Distribution
from helpers import TINY

TASK = TINY


def test_both_trainers_run_the_one_template():
    for cls in (SampledTrainer, GDTrainer):
        assert issubclass(cls, Trainer) and cls.run is Trainer.run
        for name in ("run", "_run", "_run_leg", "_evaluate_at", "_result"):
            assert name not in vars(cls), (cls.__name__, name)


class ScriptedTrainer(Trainer):
    """A trainer whose state is its step count k and whose loss after k steps is losses[k]."""

    def __init__(self, config, losses):
        self.config, self.device, self.losses, self.k = config, torch.device("cpu"), losses, 0
        self.task = types.SimpleNamespace(log_A=1.0)

    def set_weights(self, weights):
        pass

    def _begin_run(self):
        self.limit = math.inf

    def _set_limit(self, limit):
        self.limit = limit

    def _measure(self, step, leg):
        loss = self.losses[self.k]
        m = {"train": dict(loss=loss, relation_loss=0.0, subject_loss=0.0, accuracy=0.0, hallucination_gap=0.0,
                           p_true=0.0)}
        return Measurement(m, None if loss <= self.limit else step, loss)

    def _advance(self, n):
        for i in range(n):
            if not self.losses[self.k] <= self.limit:
                return i, True
            self.k += 1
        return n, False

    def _trained_model(self):
        return self.k


def scripted(losses, steps=20, **kw):
    return ScriptedTrainer(TrainConfig(task=TASK, steps=steps, eval_every=5, device="cpu", **kw), list(losses))


def test_template_evaluates_on_the_schedule_and_at_the_end():
    losses = [2.0 - 0.05 * k for k in range(24)]
    t = scripted(losses, steps=22, eval_geometric=1)
    res = t.run(progress=False)
    expected = [0] + [k for k in range(1, 23) if k in EvalSchedule(5, 1, 22) or k == 22]
    assert expected == [0, 1, 2, 4, 5, 8, 10, 15, 16, 20, 22]
    assert list(res.history["step"]) == expected
    assert np.array_equal(res.history["loss"], [losses[k] for k in expected])
    assert set(res.history) == set(HISTORY_COLUMNS) | {"flow_time"}
    assert res.status == "completed" and res.diverged_at is None and res.model == 22
    assert [(o.step_start, o.step_end, o.reason) for o in t.outcomes] == [(0, 22, "steps")]


@pytest.mark.parametrize("bad", [math.inf, math.nan, DIVERGENCE_FACTOR * 2.0 * 1.0001])
def test_template_stops_at_the_first_bad_loss_between_evaluations(bad):
    losses = [2.0] * 7 + [bad] + [1.0] * 20  # limit: DIVERGENCE_FACTOR x max(log|A| = 1, L(0) = 2)
    t = scripted(losses)
    res = t.run(progress=False)
    assert res.status == "diverged" and res.diverged_at == 7 and res.model == 7
    assert list(res.history["step"]) == [0, 5]  # the rows before it
    assert [(o.step_end, o.reason) for o in t.outcomes] == [(7, "diverged")]


def test_template_ends_a_leg_at_the_first_evaluation_at_or_below_its_level():
    losses = [2.0 - 0.1 * k for k in range(40)]  # 1.2 at step 8 (not evaluated), 1.0 at step 10
    plan = [Leg(steps=30, index=0, name="a", loss=1.05, sets={"train": None}, end_reason="time"),
            Leg(steps=4, index=1, name="b", sets={"train": None}, end_reason="time")]
    t = scripted(losses, steps=30)
    res = t.run(progress=False, plan=plan)
    assert [(o.name, o.step_start, o.step_end, o.reason) for o in t.outcomes] == \
        [("a", 0, 10, "loss"), ("b", 10, 14, "time")]
    assert list(res.history["step"]) == [0, 5, 10, 10, 14] and list(res.history["stage"]) == [0, 0, 0, 1, 1]


def small(optimizer, **kw):
    base = dict(task=TASK, model="linear", optimizer=optimizer, lr=0.5, batch=64, steps=20, eval_every=5,
                init="balanced", init_scale=1e-2, device="cpu")
    return TrainConfig(**{**base, **kw})


def test_gd_and_sgd_histories_have_the_same_columns_and_rows():
    runs = [train(small(o), progress=False) for o in ("gd", "sgd")]
    for r in runs:
        assert list(r.history) == list(HISTORY_COLUMNS) + ["flow_time"]
        assert list(r.history["step"]) == [0, 5, 10, 15, 20]
    assert np.isnan(runs[0].history["train_loss"]).sum() == 0  # GD: the exact loss of the row
    assert np.isnan(runs[1].history["train_loss"]).tolist() == [True] + [False] * 4  # SGD: no batch before step 0
    stages = (Stage("a", Distribution(subjects="0:2"), Stop(time=2.5)), Stage("b", Distribution(), Stop(time=5.0)))
    staged = [train_schedule(small(o), stages, eval_sets=("all",), progress=False) for o in ("gd", "sgd")]
    assert list(staged[0].history) == list(staged[1].history)
    assert [(o.step_start, o.step_end, o.reason) for o in staged[0].stages] == \
        [(o.step_start, o.step_end, o.reason) for o in staged[1].stages] == [(0, 5, "time"), (5, 15, "time")]


def first_bad(losses, task=TASK):
    """The divergence rule applied by hand: the first k whose loss (of the state after k steps) is not finite
    or above DIVERGENCE_FACTOR x max(log|A|, L(0))."""
    limit = DIVERGENCE_FACTOR * max(math.log(task.R * task.D), losses[0])
    return next(k for k, x in enumerate(losses) if not x <= limit)


def test_sgd_divergence_is_the_first_bad_batch_loss():
    cfg = small("sgd", lr=30.0, init_scale=1.0, batch=32, steps=20)
    ref = SampledTrainer(cfg)
    sums = [0.0]
    for _ in range(20):
        ref.step()
        sums.append(float(ref.train_sum))
    batch_losses = [b - a for a, b in zip(sums, sums[1:])]  # the batch loss at the state after k steps
    k = first_bad(batch_losses)
    assert 0 < k < 5  # between the evaluations at steps 0 and 5
    res = train(cfg, progress=False)
    assert res.status == "diverged" and res.diverged_at == k and list(res.history["step"]) == [0]


def test_gd_divergence_is_the_first_bad_exact_loss():
    cfg = small("gd", task=TaskConfig(), lr=1e29, init="uniform", init_scale=1e100, steps=20)
    ref = GDTrainer(cfg)
    k = first_bad([ref.step() for _ in range(20)], cfg.task)
    assert 0 < k < 5
    res = train(cfg, progress=False)
    assert res.status == "diverged" and res.diverged_at == k
    assert list(res.history["step"]) == [s for s in (0, 5, 10, 15) if s < k]
