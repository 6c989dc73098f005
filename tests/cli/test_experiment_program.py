"""Experiment files and `python -m dynamics.experiment`: the format, flags over file values, outputs, and a
one-line message with exit status 2 and nothing written for every kind of bad file."""
import json
import os
import textwrap

import numpy as np
import pandas as pd
import pytest

from dynamics.experiment.__main__ import main
from dynamics.experiment.file import load_experiment

GOOD = """
[task]
S = 16
R = 2
D = 4
facts = "balanced"

[flow]
alpha = 1e-3

[distributions.old]
subjects = "0:8"
[distributions.new]
subjects = "8:16"
[distributions.replay]
mix = [[0.7, "new"], [0.3, "old"]]

[eval_sets.old]
subjects = "0:8"

[[stages]]
name = "pretrain"
train = "old"
until_loss = 0.05

[[stages]]
name = "finetune"
train = "replay"
until_time = 300.0
"""


def write(tmp_path, text, name="exp.toml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return str(p)


def test_file_builds_the_experiment_and_flags_override(tmp_path):
    cfg = load_experiment(write(tmp_path, GOOD), overrides={"task.S": 32, "flow.alpha": 1e-4})
    assert cfg.flow.task.S == 32 and cfg.flow.alpha == 1e-4 and cfg.flow.task.R == 2
    assert [s.name for s in cfg.stages] == ["pretrain", "finetune"]
    assert cfg.stages[0].until.loss == 0.05 and cfg.stages[1].until.time == 300.0
    mix = cfg.stages[1].train.mix
    assert [c for c, _ in mix] == [0.7, 0.3] and [d.name for _, d in mix] == ["new", "old"]
    assert "old" in cfg.set_names and "unseen" in cfg.set_names


@pytest.mark.slow
def test_cli_outputs(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([write(tmp_path, GOOD), "--out", str(out), "--quiet", "--set", "flow.samples_per_octave=8"]) == 0
    res = json.load(open(out / "results.json"))
    df = pd.read_csv(out / "trajectory.csv")
    assert res["config"]["flow"]["samples_per_octave"] == 8
    st = res["stages"]
    assert [s["name"] for s in st] == ["pretrain", "finetune"]
    assert st[0]["reason"] == "loss" and st[1]["reason"] == "time"
    assert st[1]["t_end"] == pytest.approx(st[0]["t_end"] + 300.0, rel=1e-15)
    # the stage column and one column per set and metric; the pretraining loss ends at its stop level
    assert set(df["stage"]) == {0, 1}
    last0 = df[df["stage"] == 0].iloc[-1]
    assert last0["train_loss"] == pytest.approx(0.05, abs=1e-9)
    assert last0["t"] == pytest.approx(st[0]["t_end"])
    for col in ("all_loss", "old_p_true", "unseen_excess", "seen_accuracy", "top10_relation_loss"):
        assert col in df.columns
    # unseen = the subjects 8..15 during pre-training, empty afterwards
    assert df[df["stage"] == 0]["unseen_loss"].notna().all() and df[df["stage"] == 1]["unseen_loss"].isna().all()
    # the old set is the first stage's training set: identical columns during stage 0
    np.testing.assert_allclose(df[df["stage"] == 0]["old_loss"], df[df["stage"] == 0]["train_loss"], rtol=1e-13)
    # phase times per set are first crossings located on the dense output: the row before is above the level
    t3 = st[1]["phases"]["train"]["t3"]
    if t3 is not None and t3 > st[1]["t_start"]:
        rows = df[(df["stage"] == 1) & (df["t"] < t3)]
        assert (rows["train_loss"] > 0.01).all()
    assert (out / "experiment.png").stat().st_size > 0


@pytest.mark.slow
def test_phase_times_match_a_brute_force_crossing(tmp_path):
    """t2 of a set = the first time its exact loss on the dense output is <= H(A|R)/2, checked by bisection on
    metrics_at (independent of the Brent refinement)."""
    from analysis.results.experiment import analyze_experiment

    cfg = load_experiment(write(tmp_path, GOOD))
    res = analyze_experiment(cfg)
    ph = res.phases["pretrain"]["seen"]
    t3, theta = ph["t2"], ph["theta2"]
    assert t3 is not None and theta == pytest.approx(res.run.stages[0].entropies["seen"] / 2)
    st = res.run.stages[0]
    lo, hi = st.t_start, t3 + 1e-6 * t3
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if res.run.metrics_at(mid)["seen"]["loss"] <= theta:
            hi = mid
        else:
            lo = mid
    # monotone decay near the crossing: bisection finds the same first crossing
    assert hi == pytest.approx(t3, rel=1e-9)


BAD = [
    ("unknown top key", GOOD + "\n[solver]\nx = 1\n", "unknown key 'solver'"),
    ("unknown stage key", GOOD.replace('until_time = 300.0', 'until_time = 300.0\nuntil_step = 3'),
     "unknown key 'until_step'"),
    ("unknown task key", GOOD.replace("S = 16", "S = 16\nSS = 3"), "unknown key 'SS'"),
    ("negative weight", GOOD + "\n[distributions.bad]\nmix = [[-0.5, \"old\"]]\n", "-0.5"),
    ("all-zero mix", GOOD + "\n[distributions.bad]\nmix = [[0.0, \"old\"]]\n", "all mix coefficients are zero"),
    ("empty subset", GOOD.replace('subjects = "0:8"\n[distributions.new]', 'subjects = []\n[distributions.new]'),
     "subjects is empty"),
    ("subset out of range", GOOD.replace('"8:16"', '"8:99"'), "8:99"),
    ("no stop rule", GOOD.replace("until_time = 300.0", ""), "needs a stop rule"),
    ("never stops", GOOD.replace('until_time = 300.0', 'until_loss = 0.01\non = "old"').replace(
        'mix = [[0.7, "new"], [0.3, "old"]]', 'mix = [[1.0, "new"], [0.0, "old"]]'), "can never stop"),
    ("undefined distribution", GOOD.replace('train = "replay"', 'train = "nope"'), "'nope' is not defined"),
    ("bad value", GOOD.replace("alpha = 1e-3", "alpha = -1.0"), "alpha"),
    ("not toml", "[task\nS=", "not valid TOML"),
    ("no stages", "[task]\nS = 8\n", "at least one [[stages]]"),
    ("zero stop level", GOOD.replace("until_loss = 0.05", "until_loss = 0.0"), "until_loss"),
]


@pytest.mark.parametrize("label,text,needle", BAD, ids=[b[0] for b in BAD])
def test_bad_files_one_line_exit_2_nothing_written(tmp_path, capsys, label, text, needle):
    out = tmp_path / "out"
    code = main([write(tmp_path, text), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: ") and needle in err, err
    assert "Traceback" not in err
    assert not out.exists()
    assert [p for p in os.listdir(tmp_path) if p != "exp.toml"] == []


def test_help_documents_the_format(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for word in ("[[stages]]", "until_loss", "until_time", "[distributions.", "mix", "[eval_sets.", "unseen",
                 "trajectory.csv", "results.json", "--set"):
        assert word in text


@pytest.mark.parametrize("name", ["frequency", "warmup", "finetune"])
def test_shipped_experiment_files_are_valid(name):
    """The experiment files in experiments/ describe the README's runs (S = 256, balanced table)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
    cfg = load_experiment(os.path.join(root, "experiments", f"{name}.toml"))
    assert cfg.flow.task.S == 256 and cfg.flow.task.facts == "balanced"
    assert all(s.until.loss is not None or s.until.time is not None for s in cfg.stages)


@pytest.mark.slow
def test_train_cli_runs_an_experiment_file_and_tracks_the_flow(tmp_path):
    """models.train --experiment: GD through two stages switches at until_time / lr steps and stays within
    the one-stage GD-vs-flow gap's order of the exact two-stage flow (the step-size error of GD at lr 0.1)."""
    from models.train import main as train_main

    f = write(tmp_path, """
        [task]
        S = 16
        R = 4
        D = 8
        [distributions.first]
        subjects = "0:8"
        [[stages]]
        name = "warmup"
        train = "first"
        until_time = 100.0
        [[stages]]
        name = "all"
        train = {}
        until_time = 200.0
        """)
    out = tmp_path / "tr"
    assert train_main(["--experiment", f, "--optimizer", "gd", "--init", "balanced", "--init-scale", "1e-2",
                       "--compare-flow", "--out", str(out), "--quiet", "--no-plots"]) == 0
    res = json.load(open(out / "results.json"))
    assert [(s["step_start"], s["step_end"], s["reason"]) for s in res["stages"]] == [(0, 1000, "time"),
                                                                                     (1000, 3000, "time")]
    hist = pd.read_csv(out / "history.csv")
    assert set(hist["stage"]) == {0, 1}
    assert 0 < res["flow_gap"] < 0.05
    assert np.nanmax(np.abs(hist["loss"] - hist["flow_loss"])) == pytest.approx(res["flow_gap"], rel=1e-12)
