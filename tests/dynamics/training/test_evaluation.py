"""Trainer evaluations: the geometric schedule (early steps on a log axis) and p_true, the mean probability of
the true answer, against independent references."""
import math

import pytest
import torch

from dynamics import TrainConfig, train
from dynamics.training import EvalSchedule, HeldOutEvaluator
from models.task import TaskConfig, make_task
from helpers import TINY


def test_schedule_is_multiples_plus_rounded_powers():
    steps, every, g = 1000, 50, 4
    sched = EvalSchedule(every, g, steps)
    expected = {k for k in range(1, steps + 1) if k % every == 0}
    expected |= {int(round(2 ** (i / g))) for i in range(0, 200) if round(2 ** (i / g)) <= steps}
    visited, o = [], 0
    while o < steps:
        o = sched.next_after(o)
        visited.append(o)
    assert set(v for v in visited if v <= steps) == expected
    assert all(k in sched for k in expected) and 51 not in sched


@pytest.mark.parametrize("optimizer", ["gd", "sgd"])
def test_history_steps_follow_the_schedule(optimizer):
    cfg = TrainConfig(task=TINY, model="linear", optimizer=optimizer, lr=0.1, batch=64,
                      steps=300, eval_every=100, eval_geometric=2, init="balanced", init_scale=1e-2,
                      eval_size=8192, device="cpu")
    h = train(cfg, progress=False).history
    sched = EvalSchedule(100, 2, 300)
    expected = [0] + [k for k in range(1, 301) if k in sched]
    assert list(h["step"].astype(int)) == expected
    assert expected[:6] == [0, 1, 2, 3, 4, 6]


def test_held_out_p_true_is_the_mean_softmax_probability_of_the_target():
    task = make_task(TaskConfig(S=6, R=3, D=4))
    ev = HeldOutEvaluator(task, 8192, "cpu", seed=1)
    torch.manual_seed(0)
    table = torch.randn(task.vocab_size, task.num_answers)

    def model(tokens):  # any fixed logits: a sum of per-token rows
        return table[tokens].sum(1)

    m = ev(model)
    logits = model(ev.batch.tokens).double()
    p = torch.softmax(logits, dim=1).gather(1, ev.batch.targets[:, None])[:, 0]
    assert m["p_true"] == pytest.approx(float(p.mean()), rel=1e-5)  # float32 sums in the evaluator
    assert m["p_true"] >= math.exp(-m["loss"]) * (1 - 1e-6)  # Jensen: E e^-l >= e^-E l
