"""An experiment file drives the one-layer transformer (SPEC §11, Adam on sampled batches) through its stages with
the stop semantics of model 2 (SPEC §6.1): until_time counts steps and ends the stage after exactly that many;
until_loss ends it at the first evaluation whose loss on the named set is <= the level (at its start when the
level holds there); the model and Adam's state carry over; a stage the step budget ends is reported as cut, the
command exits 3; the results claim nothing of model 2's (no confirmation report).

References: the recorded history read independently (first row at or below the level); the same schedule run
without the loss rule; the same trainer stepped by hand (SampledTrainer.step, set_weights at the switch).
"""
import dataclasses
import json
import textwrap

import numpy as np
import torch

from analysis.results.training import summarize_staged_training, summarize_training
from dynamics.experiment.file import load_experiment
from dynamics.experiment.schedule import Stop
from dynamics.training import SampledTrainer, TrainConfig, train, train_schedule
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

SHAPE = dict(d=8, H=1, d_h=4, m=0)


def experiment(tmp_path, level, name="exp.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(EXPERIMENT.format(level=level)))
    return load_experiment(str(path))


def config(task, steps=400):
    return TrainConfig(task=task, model="transformer", optimizer="adam", lr=0.01, batch=64, steps=steps,
                       eval_every=5, device="cpu", seed=1, **SHAPE)


def stage_rows(h, k):
    return np.flatnonzero(h["stage"] == k)


def test_transformer_stages_follow_the_stop_rules(tmp_path):
    exp = experiment(tmp_path, level=0.5)
    cfg = config(exp.flow.task)
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
    assert h["all_loss"][rows[-1]] <= level and np.all(h["all_loss"][rows[:-1]] > level)
    assert o[1].on == "all" and o[1].end_loss == h["all_loss"][rows[-1]]
    for k in h:  # the same run as without the rule, up to the stop
        assert np.array_equal(h[k], ref.history[k][: len(h[k])], equal_nan=True), k

    # the model and Adam's state carried over: one trainer stepped by hand, switched after 30 steps
    task = make_task(exp.flow.task)
    w1, w2 = (st.train.resolve(task) for st in exp.stages)
    hand = SampledTrainer(cfg, task, weights=w1)
    assert type(hand.model).__name__ == "TransformerModule" and hand.adam is not None
    for _ in range(30):
        hand.step()
    hand.set_weights(w2)
    for _ in range(5 * j):
        hand.step()
    for p, q in zip(res.model.parameters(), hand.params):
        assert torch.equal(p, q)
    summary = summarize_staged_training(res, "exp2.toml")
    assert summary["finished"] is True and "confirmation" not in summary
    assert [s["reason"] for s in summary["stages"]] == ["time", "loss"]


def test_a_level_met_at_the_start_ends_the_stage_there(tmp_path):
    exp = experiment(tmp_path, level=100.0)
    res = train_schedule(config(exp.flow.task), exp.stages, eval_sets=exp.eval_sets)
    assert [(o.step_start, o.step_end, o.reason) for o in res.stages] == [(0, 30, "time"), (30, 30, "loss")]
    assert res.finished


def test_the_step_budget_is_reported_as_cut_and_the_command_exits_3(tmp_path, capsys):
    exp = experiment(tmp_path, level=1e-3)  # not reached in 20 steps
    res = train_schedule(config(exp.flow.task, steps=20), exp.stages, eval_sets=exp.eval_sets)
    o = res.stages
    assert [(x.step_start, x.step_end, x.reason) for x in o] == [(0, 20, "steps"), (20, 40, "steps")]
    assert not res.finished and res.cut_stages == ("warmup", "all") and res.status == "completed"
    summary = summarize_staged_training(res, "exp.toml")
    assert summary["finished"] is False and summary["cut_stages"] == ["warmup", "all"]
    from models.train import main

    out = tmp_path / "cut"
    argv = ["--experiment", str(tmp_path / "exp.toml"), "--model", "transformer", "--d", "8", "--H", "1",
            "--d-h", "4", "--lr", "0.01", "--batch", "64", "--steps", "20", "--eval-every", "5", "--seed", "1",
            "--device", "cpu", "--no-plots", "--quiet", "--out", str(out)]
    assert main(argv) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "warmup, all" in err[0] and "--steps" in err[0]
    saved = json.loads((out / "results.json").read_text())
    assert saved["finished"] is False and saved["time_unit"] == "steps"
    # the command's run is the one above: same stages, same history
    assert [(s["step_start"], s["step_end"], s["reason"]) for s in saved["stages"]] == \
        [(x.step_start, x.step_end, x.reason) for x in o]
    # a one-stage run: phases and final metrics, none of model 2's claims
    plain = train(config(exp.flow.task, steps=20), progress=False)
    s = summarize_training(plain)
    assert s["status"] == "completed" and s["time_unit"] == "steps" and "confirmation" not in s
    assert s["config"]["model"] == "transformer" and s["config"]["H"] == 1 and s["config"]["init_scale"] is None
