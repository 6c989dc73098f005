"""Staged trainer runs over seeds (a train sweep with an experiment file; ``frd-train --experiment FILE --seeds N``):
every row equals a separately run dynamics.train_schedule of the same seed (stage outcomes, phase times, curves),
the stage-aware bands equal numpy's statistics of those separate runs, a resumed sweep repeats no run, and the
command line writes them and exits 3 naming the seeds whose stage the step budget cut; bad input is refused.

References: dynamics.training.train_schedule run by hand per seed with TrainConfig(seed=s), its stages
(StageOutcome) and analysis.results.training.staged_phases; numpy mean, std (ddof 1), min and max over those runs,
and for the curves a loop over every (stage, step) collecting the seeds that evaluated there.
"""
import json
import os
import textwrap

import numpy as np
import pandas as pd
import pytest

from analysis.results.training import staged_phases
from analysis.sweeps.runner import run_grid
from analysis.sweeps.spec import SweepSpec
from dynamics.experiment.file import load_experiment
from dynamics.training import TrainConfig, train_schedule

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
until_loss = {level}

[[stages]]
name = "all"
train = {{}}
until_time = {time}

[experiment]
eval = ["all", "unseen"]
"""
COMMON = dict(steps=60, eval_every=1, eval_size=8192, device="cpu", threads=1)
# model 2 (one softmax head, Adam): until_time counts steps; model 1 (linear attention, SGD): flow time = step * lr
MODELS = {
    "softmax-adam": (dict(model="softmax", optimizer="adam", lr=0.05, d=16, init_scale=1e-2, batch=32), 0.8, 20),
    "linear-sgd": (dict(model="linear", optimizer="sgd", lr=1.0, init="uniform", init_scale=1e-3, batch=4), 0.6, 30),
}
SEEDS = (0, 1, 2)
SETS = ("train", "all", "unseen")


def write_file(tmp_path, kind, time=None, task_extra=""):
    _, level, t = MODELS[kind]
    path = tmp_path / f"{kind}.toml"
    text = textwrap.dedent(EXPERIMENT.format(level=level, time=t if time is None else time))
    path.write_text(text.replace("N = 3\n", "N = 3\n" + task_extra))
    return str(path)


def separate_runs(path, kind, steps=COMMON["steps"]):
    exp = load_experiment(path)
    settings = {**COMMON, **MODELS[kind][0], "steps": steps}
    return [train_schedule(TrainConfig(task=exp.flow.task, seed=s, **settings), exp.stages, eval_sets=exp.eval_sets)
            for s in SEEDS]


def sweep(path, kind, out, **kw):
    spec = SweepSpec(kind="train", base={**COMMON, **MODELS[kind][0]}, grid=tuple({"seed": s} for s in SEEDS),
                     out=str(out), experiment_file=path)
    return run_grid(spec, workers=1, **kw)


def value(x):
    return np.nan if x is None else float(x)


def stat_of(xs):
    x = np.array([value(v) for v in xs])
    x = x[np.isfinite(x)]
    if not x.size:
        return dict(n=0, mean=np.nan, std=np.nan, min=np.nan, max=np.nan)
    return dict(n=x.size, mean=x.mean(), std=x.std(ddof=1) if x.size > 1 else 0.0, min=x.min(), max=x.max())


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_rows_and_bands_equal_separate_runs(tmp_path, kind):
    path = write_file(tmp_path, kind)
    res = sweep(path, kind, tmp_path / "out")
    assert res.done == len(SEEDS) and not res.failed and not res.unfinished
    refs = separate_runs(path, kind)
    if kind == "softmax-adam":  # the loss rule ends the warm-up at different steps: stage 2 starts apart
        assert len({r.stages[0].step_end for r in refs}) > 1
    per_step = MODELS[kind][0]["lr"] if kind.startswith("linear") else 1.0
    # (a) every row is its seed's separate run: stage outcomes, phase times per set, curves
    for row, ref in zip(res.rows, refs):
        assert row["status"] == "done" and row["run_status"] == "completed"
        ph = staged_phases(ref)
        assert [o.reason for o in ref.stages] == ["loss", "time"]
        for o in ref.stages:
            n = o.name
            assert (row[f"{n}.index"], row[f"{n}.step_start"], row[f"{n}.step_end"], row[f"{n}.reason"]) == \
                (o.index, o.step_start, o.step_end, o.reason)
            assert row[f"{n}.steps"] == o.step_end - o.step_start and row[f"{n}.cut"] is False
            assert row[f"{n}.t_start"] == o.step_start * per_step and row[f"{n}.t_end"] == o.step_end * per_step
            assert row[f"{n}.end_loss"] == o.end_loss and row[f"{n}.end_loss_se"] == o.end_loss_se
            for v in SETS:
                for k in ("t1", "t2", "t3"):
                    assert row[f"{n}.{v}.{k}"] == ph[n][v][k], (n, v, k)
                    assert row[f"{n}.{v}.{k}_in_stage"] == (None if ph[n][v][k] is None else
                                                            ph[n][v][k] - o.step_start * per_step), (n, v, k)
        assert set(row["history"]) == set(ref.history)
        for c, x in ref.history.items():
            got = np.asarray(row["history"][c], dtype=np.float64)
            assert np.array_equal(got, np.asarray(x, dtype=np.float64), equal_nan=True), c
    # (b) the stage bands are numpy's statistics of the separate runs
    table = pd.read_csv(tmp_path / "out" / "stage_bands.csv", keep_default_na=False, na_values=[""])
    assert len(pd.read_csv(tmp_path / "out" / "results.csv")) == len(SEEDS)
    for k, name in enumerate(("warmup", "all")):
        outs = [r.stages[k] for r in refs]
        hist = [r.history for r in refs]
        rows_k = [np.flatnonzero(np.asarray(h["stage"]) == k) for h in hist]
        expect = {("", "steps"): [o.step_end - o.step_start for o in outs],
                  ("", "t_start"): [o.step_start * per_step for o in outs],
                  ("", "end_loss"): [o.end_loss for o in outs]}
        for v in SETS:
            col = "loss" if v == "train" else f"{v}_loss"
            expect[(v, "loss_end")] = [h[col][r[-1]] for h, r in zip(hist, rows_k)]
            for q in ("t1", "t2", "t3"):
                expect[(v, q)] = [staged_phases(r)[name][v][q] for r in refs]
                expect[(v, f"{q}_in_stage")] = [value(x) - o.step_start * per_step
                                                for x, o in zip(expect[(v, q)], outs)]
        for (v, q), xs in expect.items():
            got = table[(table.stage == name) & (table.set.fillna("") == v) & (table.quantity == q)]
            assert len(got) == 1, (name, v, q)
            want = stat_of(xs)
            assert int(got["n"].iloc[0]) == want["n"], (name, v, q)
            for s in ("mean", "std", "min", "max"):
                assert np.allclose(got[s].iloc[0], want[s], rtol=1e-12, atol=1e-15, equal_nan=True), (name, v, q, s)
        doc = json.loads((tmp_path / "out" / "bands.json").read_text())["groups"][0]["stages"][k]
        assert doc["name"] == name and doc["n_cut"] == 0 and doc["seeds_run"] == len(SEEDS)
    # (b) the curves' bands per stage, on the steps since each seed's start of the stage: at every (stage, step),
    # the seeds that evaluated there
    bands = pd.read_csv(tmp_path / "out" / "bands.csv")
    for k in (0, 1):
        part = bands[bands.stage == k]
        starts = [r.stages[k].step_start for r in refs]
        rel = [np.asarray(h["step"], dtype=np.float64) - s0 for h, s0 in zip(hist, starts)]
        in_k = [np.asarray(h["stage"]) == k for h in hist]
        ref_steps = sorted({float(x) for r, m in zip(rel, in_k) for x in r[m]})
        assert part["stage_step"].tolist() == ref_steps
        for _, b in part.iterrows():
            at = [np.flatnonzero(m & (r == b["stage_step"])) for r, m in zip(rel, in_k)]
            for col in ("loss", "all_loss", "all_accuracy", "step"):
                xs = [h[col][i[0]] for h, i in zip(hist, at) if i.size]
                want = stat_of(xs)
                assert b["n"] == want["n"]
                for s in ("mean", "std", "min", "max"):
                    assert np.isclose(b[f"{col}_{s}"], want[s], rtol=1e-12, atol=1e-15), (k, b["stage_step"], col, s)


def test_a_resumed_sweep_repeats_no_run(tmp_path):
    kind = "softmax-adam"
    path = write_file(tmp_path, kind)
    first = sweep(path, kind, tmp_path / "out", max_runs=1)
    assert first.done == 1
    seen = []
    second = sweep(path, kind, tmp_path / "out", on_row=lambda r: seen.append(r["params"]["seed"]))
    assert (second.done, second.skipped) == (2, 1) and seen == [1, 2]
    third = sweep(path, kind, tmp_path / "out", on_row=lambda r: seen.append(r))
    assert (third.done, third.skipped) == (0, 3) and seen == [1, 2]
    lines = (tmp_path / "out" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 3 and len({json.loads(x)["key"] for x in lines}) == 3
    # the key includes the file: the same sweep of an edited file into the folder is another sweep
    with open(path, "a") as f:
        f.write("\n# edited\n")
    from common.errors import ConfigError

    with pytest.raises(ConfigError, match="another sweep"):
        sweep(path, kind, tmp_path / "out")


def argv(kind, path, out, steps=COMMON["steps"]):
    c = {**COMMON, **MODELS[kind][0]}
    a = ["--model", c["model"], "--optimizer", c["optimizer"], "--lr", str(c["lr"]), "--init-scale",
         str(c["init_scale"]), "--batch", str(c["batch"]), "--steps", str(steps), "--eval-every", "1", "--eval-size",
         "8192", "--device", "cpu", "--threads", "1", "--experiment", path, "--seeds", str(len(SEEDS)),
         "--workers", "1", "--quiet", "--out", str(out)]
    return a + (["--d", str(c["d"])] if c["model"] == "softmax" else ["--init", c["init"]])


def test_frd_train_experiment_seeds_writes_the_bands(tmp_path, capsys):
    from models.train import main

    kind = "softmax-adam"
    # the file's whole [task] is the task: none of the command line's task defaults (S, ..., zipf) replaces it
    path = write_file(tmp_path, kind, task_extra="zipf_subjects = 1.0\nfacts = \"random\"\nseed = 3\n")
    out = tmp_path / "cli"
    assert main(argv(kind, path, out)) == 0
    for name in ("results.jsonl", "results.csv", "bands.csv", "bands.json", "stage_bands.csv", "experiment.png"):
        assert (out / name).is_file(), name
    printed = capsys.readouterr().out
    assert "stage warmup:" in printed and "stage all:" in printed
    refs = separate_runs(path, kind)
    assert refs[0].task.config.zipf_subjects == 1.0 and refs[0].task.config.facts == "random"
    rows = pd.read_csv(out / "results.csv")
    assert rows["seed"].tolist() == list(SEEDS)
    assert json.loads((out / "bands.json").read_text())["groups"][0]["config"]["zipf_subjects"] == 1.0
    assert rows["warmup.step_end"].tolist() == [r.stages[0].step_end for r in refs]
    assert np.array_equal(rows["all.end_loss"], [r.stages[1].end_loss for r in refs])


def test_frd_train_experiment_seeds_exits_3_naming_the_cut_seeds(tmp_path, capsys):
    from models.train import main

    kind = "linear-sgd"
    path = write_file(tmp_path, kind, time=1000)  # flow time 1000 = 1000 steps: more than --steps 40
    out = tmp_path / "cut"
    assert main(argv(kind, path, out, steps=40) + ["--no-plots"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "seed 0: all; seed 1: all; seed 2: all" in err[0], err
    refs = separate_runs(path, kind, steps=40)
    assert all(r.cut_stages == ("all",) for r in refs)  # the reference agrees: the budget cut stage 'all'
    rows = pd.read_csv(out / "results.csv")
    assert rows["status"].tolist() == ["unfinished"] * 3 and rows["all.cut"].tolist() == [True] * 3
    table = pd.read_csv(out / "stage_bands.csv")
    doc = json.loads((out / "bands.json").read_text())["groups"][0]["stages"]
    assert [s["n_cut"] for s in doc] == [0, 3] and doc[1]["cut_seeds"] == list(SEEDS)
    steps = table[(table.stage == "all") & (table.quantity == "steps")]
    assert steps["mean"].iloc[0] == 40 and steps["std"].iloc[0] == 0


@pytest.mark.parametrize("extra,content,start", [
    (["--seeds", "0"], None, "error: seeds = 0"),
    (["--seeds", "3"], "x = [\n", "not valid TOML"),
    (["--seeds", "3"], "[task]\nS = 8\n[[stages]]\nname = 'a'\ntrain = {}\nuntil_time = 0.2\n",
     "error: run 0 (seed=0): stage 'a': until_time = 0.2 is less than half a step"),
    (["--seeds", "3", "--compare-flow"], None, "error: --compare-flow"),
])
def test_bad_input_is_refused_and_writes_nothing(tmp_path, capsys, extra, content, start):
    from models.train import main

    kind = "softmax-adam"
    path = write_file(tmp_path, kind)
    if content is not None:
        with open(path, "w") as f:
            f.write(content)
    out = tmp_path / "bad"
    a = argv(kind, path, out)
    a = a[:a.index("--seeds")] + a[a.index("--seeds") + 2:] + extra
    before = sorted(os.listdir(tmp_path))
    assert main(a) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and start in err[0], err
    assert sorted(os.listdir(tmp_path)) == before and not out.exists()


def test_a_diverged_seed_is_unfinished_and_counted(tmp_path, capsys):
    from models.train import main

    kind = "linear-sgd"
    path = write_file(tmp_path, kind)
    exp = load_experiment(path)  # lr 4 is too large a step for model 1 here: the seeds diverge
    settings = {**COMMON, **MODELS[kind][0], "lr": 4.0, "batch": 64}
    refs = [train_schedule(TrainConfig(task=exp.flow.task, seed=s, **settings), exp.stages, eval_sets=exp.eval_sets)
            for s in SEEDS]
    diverged = [s for s, r in zip(SEEDS, refs) if r.status == "diverged"]
    assert diverged  # the case tested
    a = argv(kind, path, tmp_path / "div") + ["--no-plots"]
    i = a.index("--lr")
    a[i + 1] = "4.0"
    a[a.index("--batch") + 1] = "64"
    assert main(a) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"diverged: seed(s) {', '.join(map(str, diverged))}" in err[0], err
    rows = pd.read_csv(tmp_path / "div" / "results.csv")
    assert rows["run_status"].tolist() == [r.status if r.status == "diverged" else "completed" for r in refs]
    doc = json.loads((tmp_path / "div" / "bands.json").read_text())["groups"][0]["stages"]
    where = {o.name for r in refs for o in r.stages if o.reason == "diverged"}
    assert sorted(s for st in doc for s in st["diverged_seeds"]) == diverged and where
    for st in doc:  # a seed that diverged before a stage did not run it
        assert st["seeds_run"] == sum(len(r.stages) > st["index"] for r in refs)


def test_frd_grid_train_experiment_makes_the_same_rows_as_frd_train(tmp_path):
    from analysis.grid import main as grid_main
    from models.train import main as train_main

    kind = "softmax-adam"
    path = write_file(tmp_path, kind)
    c = {**COMMON, **MODELS[kind][0]}
    flags = ["--model", c["model"], "--optimizer", c["optimizer"], "--lr", str(c["lr"]), "--d", str(c["d"]),
             "--init-scale", str(c["init_scale"]), "--batch", str(c["batch"]), "--steps", str(c["steps"]),
             "--eval-every", "1", "--eval-size", "8192", "--device", "cpu"]
    assert grid_main(["train", "--experiment", path, *flags, "--set", "threads=1", "--grid", "seed=0:3",
                      "--workers", "1", "--quiet", "--no-plots", "--out", str(tmp_path / "grid")]) == 0
    assert train_main(argv(kind, path, tmp_path / "train") + ["--no-plots"]) == 0
    rows = [[json.loads(x) for x in (tmp_path / d / "results.jsonl").read_text().splitlines()]
            for d in ("grid", "train")]
    # the same resolved configurations (keys), so the same rows: the grid's fields and frd-train's flags agree
    assert [r["key"] for r in rows[0]] == [r["key"] for r in rows[1]]
    for a, b in zip(*rows):
        assert a["history"] == b["history"] and a["all.end_loss"] == b["all.end_loss"]
    tables = [pd.read_csv(tmp_path / d / "stage_bands.csv") for d in ("grid", "train")]
    assert tables[0].equals(tables[1])
