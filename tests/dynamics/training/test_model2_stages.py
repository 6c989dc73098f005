"""An experiment file drives model 2 (one softmax head, SGD on sampled batches) through its stages with the flow's
stop semantics (SPEC §6.1): until_time counts steps and ends the stage after exactly that many; until_loss ends
it at the first evaluation whose loss on the named set is <= the level (at its start when the level holds there,
as the flow's event at t0); the state carries over; a stage the step budget ends is reported as cut, never as
finished; the per-stage phase times follow the flow experiment's definitions on the recorded curve.

References: the recorded history read independently (first row at or below the level); the same schedule run
without the loss rule (where the first crossing is); the same trainer stepped by hand (SampledTrainer.step,
set_weights at the switch) for the carried state; per-sequence cross-entropies computed with torch for the
held-out standard error; H_v(A|R) counted from the fact table by hand.
"""
import dataclasses
import json
import math
import textwrap

import numpy as np
import pytest
import torch

from analysis.results.training import staged_phases, summarize_staged_training, summarize_training
from dynamics.experiment.file import load_experiment
from dynamics.experiment.schedule import Stop
from dynamics.training import HeldOutEvaluator, SampledTrainer, TrainConfig, train, train_schedule
from models.task import make_task

EXPERIMENT = """
[task]
S = 8
R = 2
D = 2
T = 6
N = 3

[distributions.first]
subjects = "0:4"

[[stages]]
name = "warmup"
train = "first"
until_time = 30

[[stages]]
name = "all"
train = {{}}
until_time = 100
until_loss = {level}
on = "all"

[experiment]
eval = ["all", "unseen"]
"""


def experiment(tmp_path, level, name="exp.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(EXPERIMENT.format(level=level)))
    return load_experiment(str(path))


def config(task, steps=400):
    return TrainConfig(task=task, model="softmax", optimizer="sgd", lr=4.0, batch=64, steps=steps, eval_every=5,
                       init_scale=1e-2, d=16, device="cpu", seed=1)


def stage_rows(h, k):
    return np.flatnonzero(h["stage"] == k)


def test_model2_stages_follow_the_flows_stop_rules(tmp_path):
    exp = experiment(tmp_path, level=0.5)
    cfg = config(exp.flow.task)
    # the same schedule without the loss rule: stage 2 runs its 100 steps
    timed = tuple(exp.stages[:1]) + (dataclasses.replace(exp.stages[1], until=Stop(time=100)),)
    ref = train_schedule(cfg, timed, eval_sets=exp.eval_sets)
    assert [(o.step_start, o.step_end, o.reason) for o in ref.stages] == [(0, 30, "time"), (30, 130, "time")]
    assert ref.finished and ref.cut_stages == ()
    L = ref.history["all_loss"][stage_rows(ref.history, 1)]
    level = float(0.5 * (L[0] + L.min()))  # reached inside stage 2, not at its start
    j = int(np.flatnonzero(L <= level)[0])
    assert 0 < j < len(L) - 1

    exp = experiment(tmp_path, level=repr(level), name="exp2.toml")
    res = train_schedule(cfg, exp.stages, eval_sets=exp.eval_sets)
    o = res.stages
    assert (o[0].step_end, o[0].reason) == (30, "time")  # until_time = 30: exactly 30 steps
    assert (o[1].step_start, o[1].step_end, o[1].reason) == (30, 30 + 5 * j, "loss")
    assert res.finished and res.status == "completed"
    h = res.history
    rows = stage_rows(h, 1)
    # the rule read off the recorded curve: the last row of the stage is the first at or below the level
    assert h["all_loss"][rows[-1]] <= level and np.all(h["all_loss"][rows[:-1]] > level)
    assert o[1].on == "all" and o[1].end_loss == h["all_loss"][rows[-1]]
    for k in h:  # the same run as without the rule, up to the stop
        assert np.array_equal(h[k], ref.history[k][: len(h[k])], equal_nan=True), k

    # the state carried over: one trainer stepped by hand, switched after 30 steps
    task = make_task(exp.flow.task)
    w1, w2 = (st.train.resolve(task) for st in exp.stages)
    hand = SampledTrainer(cfg, task, weights=w1)
    for _ in range(30):
        hand.step()
    hand.set_weights(w2)
    for _ in range(5 * j):
        hand.step()
    for p, q in zip(res.model.parameters(), hand.params):
        assert torch.equal(p, q)

    # the held-out standard error at the stop: per-sequence losses of the stop set's sequences
    ev = HeldOutEvaluator(task, cfg.eval_size, "cpu", seed=0, weights=res.stage_sets[1]["all"])
    with torch.no_grad():
        ce = torch.nn.functional.cross_entropy(hand.model(ev.batch.tokens), ev.batch.targets, reduction="none")
    got = ev(hand.model)
    assert got["loss_se"] == pytest.approx(float(ce.double().std()) / math.sqrt(cfg.eval_size), rel=1e-4)
    assert o[1].end_loss_se is not None and 0 < o[1].end_loss_se < 0.05


def test_a_level_met_at_the_start_ends_the_stage_there(tmp_path):
    exp = experiment(tmp_path, level=100.0)
    res = train_schedule(config(exp.flow.task), exp.stages, eval_sets=exp.eval_sets)
    assert [(o.step_start, o.step_end, o.reason) for o in res.stages] == [(0, 30, "time"), (30, 30, "loss")]
    assert res.finished


def test_the_step_budget_is_reported_as_cut_not_finished(tmp_path, capsys):
    exp = experiment(tmp_path, level=1e-3)  # model 2 at d = 16 does not get there in 60 steps
    res = train_schedule(config(exp.flow.task, steps=20), exp.stages, eval_sets=exp.eval_sets)
    o = res.stages
    assert [(x.step_start, x.step_end, x.reason) for x in o] == [(0, 20, "steps"), (20, 40, "steps")]
    assert not o[0].by_own_rule and not res.finished and res.cut_stages == ("warmup", "all")
    assert res.status == "completed"  # not diverged: the status keeps its meaning, finished says the rest
    summary = summarize_staged_training(res, "exp.toml")
    assert summary["finished"] is False and summary["cut_stages"] == ["warmup", "all"]
    assert [s["by_own_rule"] for s in summary["stages"]] == [False, False]
    assert summary["stages"][1]["phases"]["all"]["t3"] is None  # no evaluation at or below eps_conv
    # the command line: results written, exit 3 (ran but did not finish), one line saying why
    from models.train import main

    out = tmp_path / "cut"
    argv = ["--experiment", str(tmp_path / "exp.toml"), "--model", "softmax", "--d", "16", "--lr", "4",
            "--batch", "64", "--steps", "20", "--eval-every", "5", "--init-scale", "1e-2", "--seed", "1",
            "--device", "cpu", "--no-plots", "--quiet", "--out", str(out)]
    assert main(argv) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "warmup, all" in err[0] and "--steps" in err[0]
    saved = json.loads((out / "results.json").read_text())
    assert saved["finished"] is False and saved["time_unit"] == "steps"
    # over seeds (the sweep runner): the same cut in every seed, named, exit 3; seed 1's row is the run above
    assert main(argv[:-1] + [str(tmp_path / "seeds"), "--seeds", "2", "--workers", "1"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "seed 1: warmup, all; seed 2: warmup, all" in err[0], err
    row = json.loads((tmp_path / "seeds" / "results.jsonl").read_text().splitlines()[0])
    assert row["params"] == {"seed": 1} and row["run_status"] == "cut"
    assert [row[f"{st['name']}.end_loss"] for st in saved["stages"]] == [st["end_loss"] for st in saved["stages"]]
    # a one-stage run ends at its budget: converged only if an evaluation reached eps_conv
    plain = train(config(exp.flow.task, steps=20), progress=False)
    s = summarize_training(plain)
    assert s["status"] == "completed" and s["time_unit"] == "steps"
    assert np.min(plain.history["loss"]) > 0.01 and s["converged"] is False


def entropy_by_hand(answers, subjects, R):
    """H_v(A|R) of v uniform over the facts of ``subjects``: the answers' frequencies per relation, counted."""
    H = 0.0
    for r in range(R):
        _, counts = np.unique(answers[subjects, r], return_counts=True)
        p = counts / counts.sum()
        H += -(p * np.log(p)).sum() / R
    return H


def test_stage_phases_are_first_crossings_of_the_recorded_curve_per_set(tmp_path):
    exp = experiment(tmp_path, level=1e-3)
    res = train_schedule(config(exp.flow.task), exp.stages, eval_sets=exp.eval_sets)
    task, h = res.task, res.history
    phases = staged_phases(res)
    assert set(phases) == {"warmup", "all"} and set(phases["all"]) == {"train", "all", "unseen"}
    H_all = entropy_by_hand(task.answers, np.arange(8), 2)
    H_seen = entropy_by_hand(task.answers, np.arange(4), 2)
    # stage 1 trains subjects 0..3 (its train set); unseen = subjects 4..7, empty once stage 2 trains them all
    assert phases["warmup"]["train"]["theta2"] == pytest.approx(H_seen / 2, abs=1e-12)
    assert phases["warmup"]["all"]["theta1"] == pytest.approx((task.log_A + H_all) / 2, abs=1e-12)
    assert phases["all"]["unseen"] == dict(t1=None, t2=None, t3=None, theta1=None, theta2=None, theta3=0.01)
    assert phases["warmup"]["unseen"]["t1"] is None or phases["warmup"]["unseen"]["t1"] >= 0
    for o in res.stages:
        rows = stage_rows(h, o.index)
        t = h["step"][rows]  # model 2: time in steps
        for name, ph in phases[o.name].items():
            if ph["theta1"] is None:
                continue
            L = h["loss" if name == "train" else f"{name}_loss"][rows]
            for k in ("t1", "t2", "t3"):
                below = np.flatnonzero(L <= ph[k.replace("t", "theta")])
                if below.size == 0:
                    assert ph[k] is None, (o.name, name, k)
                elif below[0] == 0:
                    assert ph[k] == t[0]  # the level holds at the stage's start
                else:
                    i = below[0]  # the crossing lies between the bracketing evaluations
                    assert t[i - 1] <= ph[k] <= t[i], (o.name, name, k)
    summary = summarize_staged_training(res, "exp.toml")
    assert summary["stages"][0]["phases"] == phases["warmup"]
    assert summary["stages"][0]["H_A_given_R"]["all"] == pytest.approx(H_all, abs=1e-12)
    assert summary["stages"][1]["H_A_given_R"]["unseen"] is None
