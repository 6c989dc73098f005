"""Issue 12: sweeps on the runner (analysis.sweeps.runner, analysis.grid), in this process (the Dask cluster tests are in
test_grid_cluster.py): the grid syntax, stable keys, resume after an interrupt, failures recorded, a partly
written results line, memory refusal, bands over seeds, the command line and models.train --seeds."""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from analysis.sweeps.dask_tasks import check_task_memory, run_tasks
from analysis.sweeps.results_log import ResultsLog
from analysis.sweeps.runner import run_grid
from analysis.sweeps.spec import SweepSpec, build_config, parse_axis, parse_value, plan, product_grid
from common.errors import ConfigError

TINY = dict(S=8, R=2, D=4, T=4, N=2)
TRAIN = dict(TINY, steps=60, batch=32, eval_every=20, device="cpu", lr=0.5, init_scale=1e-2)
EXP = """
[task]
S = 8
R = 2
D = 4
T = 4
N = 2
facts = "balanced"
[flow]
alpha = 1e-3
[distributions.first]
subjects = "{subjects}"
[experiment]
eval = ["all", "train"]
[[stages]]
name = "first"
train = "first"
until_time = 30.0
[[stages]]
name = "rest"
train = {{}}
until_time = 30.0
"""


def flow_spec(out, alphas=(1e-3, 1e-2), seeds=(0, 1), **kw):
    grid = product_grid([("alpha", list(alphas)), ("seed", list(seeds))])
    return SweepSpec(kind="flow", base=dict(TINY, facts="balanced", eps_conv=0.1), grid=tuple(grid), out=str(out),
                     **kw)


def jsonl_rows(folder):
    with open(os.path.join(folder, "results.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


# ----------------------------------------------------------------------------- grid syntax and keys
def test_grid_syntax():
    assert parse_value("1e-5") == 1e-5 and parse_value("3") == 3 and parse_value("none") is None
    assert parse_value("true") is True and parse_value("balanced") == "balanced"
    assert parse_axis("seed=0:4") == ("seed", [0, 1, 2, 3])
    assert parse_axis("seed=2:8:3") == ("seed", [2, 5])
    assert parse_axis("alpha=1e-5,1e-4") == ("alpha", [1e-5, 1e-4])
    name, vals = parse_axis("alpha=log:1e-6:1e-2:5")
    assert name == "alpha" and np.allclose(vals, [1e-6, 1e-5, 1e-4, 1e-3, 1e-2])
    assert parse_axis("lr=lin:0.1:0.4:4")[1] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    grid = product_grid([parse_axis("a=1,2"), parse_axis("b=x,y,z")])
    assert len(grid) == 6 and grid[1] == {"a": 1, "b": "y"}
    for bad in ("alpha", "=1", "seed=5:2", "alpha=1,,2", "alpha=log:0:1:3", "seed=0:4:0"):
        with pytest.raises(ConfigError):
            parse_axis(bad)
    with pytest.raises(ConfigError, match="twice"):
        product_grid([("a", [1]), ("a", [2])])


def test_keys_stable_and_names_checked(tmp_path):
    runs = plan(flow_spec(tmp_path / "x"))
    again = plan(flow_spec(tmp_path / "y"))
    assert [r.key for r in runs] == [r.key for r in again] and len({r.key for r in runs}) == 4
    # the same configuration spelled two ways is one key: 1e-3 and 0.001, task.S and S
    a = plan(SweepSpec(kind="flow", base={"task.S": 8, "R": 2, "D": 4}, grid=({"alpha": 0.001},)))[0].key
    b = plan(SweepSpec(kind="flow", base={"S": 8, "R": 2, "D": 4}, grid=({"alpha": 1e-3},)))[0].key
    assert a == b
    with pytest.raises(ConfigError, match="not a setting of a flow run"):
        SweepSpec(kind="flow", grid=({"alfa": 1.0},))
    with pytest.raises(ConfigError, match="same configuration"):
        plan(SweepSpec(kind="flow", base=TINY, grid=({"alpha": 1e-3}, {"alpha": 0.001})))
    with pytest.raises(ConfigError, match=r"run 1 \(alpha=-1\)"):
        plan(SweepSpec(kind="flow", base=TINY, grid=({"alpha": 1e-3}, {"alpha": -1})))
    # train: seed seeds the training, task_seed the fact table
    r = plan(SweepSpec(kind="train", base=TRAIN, grid=({"seed": 1, "task_seed": 2},)))[0]
    config, _ = build_config("train", r.fields)
    assert config.seed == 1 and config.task.seed == 2


# ----------------------------------------------------------------------------- serial sweep, resume, interrupt
@pytest.mark.slow
def test_serial_sweep_resume_and_spec_check(tmp_path):
    out = tmp_path / "grid"
    res = run_grid(flow_spec(out), workers=1)
    assert (res.total, res.done, res.failed, res.skipped) == (4, 4, 0, 0)
    df = pd.read_csv(out / "results.csv")
    assert list(df["index"]) == [0, 1, 2, 3] and set(df["status"]) == {"done"}
    assert {"alpha", "seed", "t1", "t2", "t3", "plateau_loss", "nfe", "drift_balance"} <= set(df.columns)
    from analysis import analyze_flow

    one = analyze_flow(build_config("flow", plan(flow_spec(out))[2].fields), progress=False)
    assert df["t1"][2] == one.phases.t1 and df["nfe"][2] == one.solver["nfe"]
    again = run_grid(flow_spec(out), workers=1)
    assert (again.done, again.skipped) == (0, 4) and len(jsonl_rows(out)) == 4
    with pytest.raises(ConfigError, match="grid run 1 is alpha=0.001, seed=1 there and alpha=0.001, seed=2 here"):
        run_grid(flow_spec(out, seeds=(0, 2)), workers=1)
    fresh = run_grid(flow_spec(out, seeds=(0, 2)), workers=1, overwrite=True)
    assert fresh.done == 4 and len(jsonl_rows(out)) == 4


@pytest.mark.slow
def test_interrupted_sweep_runs_exactly_the_missing_runs(tmp_path):
    out = tmp_path / "grid"
    spec = flow_spec(out, alphas=(1e-3, 3e-3, 1e-2), seeds=(0, 1))
    keys = [r.key for r in plan(spec)]
    seen = []

    def stop_halfway(row):
        seen.append(row["key"])
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_grid(spec, workers=1, on_row=stop_halfway)
    first = list(seen)
    assert len(first) == 3 and len(jsonl_rows(out)) == 3
    assert len(pd.read_csv(out / "results.csv")) == 3  # results.csv is written on the way out too
    second = []
    res = run_grid(spec, workers=1, on_row=lambda row: second.append(row["key"]))
    assert sorted(second) == sorted(set(keys) - set(first))
    assert (res.done, res.skipped) == (3, 3)
    recorded = [r["key"] for r in jsonl_rows(out)]
    assert sorted(recorded) == sorted(keys)  # each run once
    assert list(pd.read_csv(out / "results.csv")["key"]) == keys


@pytest.mark.slow
def test_max_runs_then_continue(tmp_path):
    out = tmp_path / "grid"
    res = run_grid(flow_spec(out), workers=1, max_runs=1)
    assert (res.done, res.total) == (1, 4) and "3 not run" in res.summary_line()
    res = run_grid(flow_spec(out), workers=1)
    assert (res.done, res.skipped) == (3, 1)


def test_partial_last_line_is_ignored_and_cut(tmp_path):
    log = ResultsLog(str(tmp_path))
    log.append(dict(key="a", index=0, status="done", x=1.5))
    with open(log.path, "ab") as f:
        f.write(b'{"key": "b", "index": 1, "sta')  # a crash in the middle of an append
    assert [r["key"] for r in log.read()] == ["a"]
    log.append(dict(key="c", index=2, status="done", x=float("nan")))
    assert [r["key"] for r in log.read()] == ["a", "c"] and log.read()[1]["x"] is None
    with open(log.path) as f:
        assert f.read().count("\n") == 2


@pytest.mark.slow
def test_failing_runs_are_recorded_and_the_sweep_goes_on(tmp_path):
    exp = tmp_path / "exp.toml"
    exp.write_text(EXP.format(subjects="0:4"))
    out = tmp_path / "grid"
    # subjects 0:32 passes the file's checks (the table has 8 subjects only when the stage is resolved)
    good = run_grid(SweepSpec(kind="experiment", experiment_file=str(exp), grid=({"alpha": 1e-3}, {"alpha": 1e-2}),
                              out=str(out)), workers=1)
    assert good.done == 2
    df = pd.read_csv(out / "results.csv")
    assert {"first.all.t1", "rest.all.t3", "first.t_end"} <= set(df.columns)
    assert df["first.t_end"][0] == pytest.approx(30.0)
    bad = tmp_path / "bad.toml"
    bad.write_text(EXP.format(subjects="0:32"))
    out2 = tmp_path / "grid2"
    res = run_grid(SweepSpec(kind="experiment", experiment_file=str(bad), grid=({"alpha": 1e-3}, {"S": 32}),
                             out=str(out2)), workers=1)
    assert (res.done, res.failed) == (1, 1)
    failed = res.failed_rows[0]
    assert failed["index"] == 0 and "subjects" in failed["error"] and "\n" not in failed["error"]
    # failed runs are skipped on resume unless retry_failed
    assert run_grid(res.spec, workers=1).skipped == 2
    assert run_grid(res.spec, workers=1, retry_failed=True).failed == 1
    df = pd.read_csv(out2 / "results.csv")
    assert len(df) == 2 and list(df["status"]) == ["failed", "done"]


def test_run_tasks_in_process_records_errors():
    got = []
    out = run_tasks(lambda x: 10 // x, [1, 0, 5], on_result=lambda i, s, v: got.append((i, s)))
    assert out[0] == ("done", 10) and out[2] == ("done", 2)
    assert out[1][0] == "failed" and out[1][1].startswith("ZeroDivisionError")
    assert got == [(0, "done"), (1, "failed"), (2, "done")]


def test_memory_is_checked_before_submission():
    with pytest.raises(ConfigError, match=r"run 7 \(alpha=1\) needs about 1,024.00 GiB"):
        check_task_memory([1, 2**40], ["run 0", "run 7 (alpha=1)"])
    check_task_memory([2**20], ["run 0"])


@pytest.mark.slow
def test_batched_flows_match_single_runs(tmp_path):
    spec = SweepSpec(kind="flow", base=dict(TINY, facts="random"), grid=tuple({"seed": s} for s in range(3)),
                     out=str(tmp_path / "b"), batch=3)
    res = run_grid(spec, workers=1)
    single = run_grid(SweepSpec(kind="flow", base=dict(TINY, facts="random"),
                                grid=tuple({"seed": s} for s in range(3)), out=str(tmp_path / "s")), workers=1)
    for a, b in zip(res.rows, single.rows):
        assert a["key"] == b["key"] and a["batched"] == 3
        for k in ("t1", "t2", "t3"):
            assert a[k] == pytest.approx(b[k], rel=1e-12)
        assert a["nfe"] == b["nfe"]
        # the plateau from the batched run's window of steps, as the single run's from its dense output
        assert b["plateau_t"] is not None
        for k in ("plateau_t", "plateau_loss", "plateau_relation_loss", "plateau_subject_loss",
                  "plateau_hallucination_gap"):
            assert a[k] == pytest.approx(b[k], rel=1e-9, abs=1e-12), k
    with pytest.raises(ConfigError, match="batched"):
        plan(SweepSpec(kind="flow", base=dict(TINY, method="rock4"), grid=({"alpha": 1e-3},), batch=2))


# ----------------------------------------------------------------------------- seeds and bands
@pytest.mark.slow
def test_training_bands_over_seeds(tmp_path):
    out = tmp_path / "seeds"
    spec = SweepSpec(kind="train", base=dict(TRAIN, compare_flow=True), grid=tuple({"seed": s} for s in range(3)),
                     out=str(out))
    res = run_grid(spec, workers=1, plots=True)
    assert res.done == 3 and res.bands is not None
    bands = pd.read_csv(out / "bands.csv")
    loss = np.array([r["history"]["loss"] for r in res.rows])
    assert np.allclose(bands["loss_mean"], loss.mean(0), rtol=0, atol=1e-12)
    assert np.allclose(bands["loss_std"], loss.std(0, ddof=1), rtol=0, atol=1e-12)
    assert np.allclose(bands["loss_min"], loss.min(0)) and np.allclose(bands["loss_max"], loss.max(0))
    assert list(bands["n"]) == [3] * len(bands) and list(bands["step"]) == res.rows[0]["history"]["step"]
    for col in ("relation_loss", "subject_loss", "accuracy", "p_true", "flow_loss"):
        assert {f"{col}_mean", f"{col}_std", f"{col}_min", f"{col}_max"} <= set(bands.columns)
    g = res.bands.groups[0]
    assert g["seeds"] == [0, 1, 2] and g["mean_flow_gap"] > 0 and 0 <= g["inside_minmax"] <= 1
    # the exact flow in the bands is the flow each run was paired with
    assert np.allclose(bands["flow_loss"], bands["flow_loss_mean"], atol=1e-8)
    assert (out / "bands.png").stat().st_size > 10_000
    meta = json.loads((out / "bands.json").read_text())
    assert meta["groups"][0]["flow"]["t"][0] == 0.0


def test_softmax_bands_carry_verdicts(tmp_path):
    out = tmp_path / "soft"
    base = dict(TINY, model="softmax", d=16, steps=60, batch=32, eval_every=20, device="cpu", lr=4.0,
                init_scale=1e-3)
    res = run_grid(SweepSpec(kind="train", base=base, grid=tuple({"seed": s} for s in range(2)), out=str(out)),
                   workers=1, plots=True)
    g = res.bands.groups[0]
    assert [v["seed"] for v in g["verdicts"]] == [0, 1]
    assert g["overall"] == all(r["confirmed"] for r in res.rows)
    assert g["n_confirmed"] == sum(r["confirmed"] for r in res.rows)
    assert "mean_curve_confirmed" in g and (out / "bands.png").exists()
    from figures.bands import plot_bands

    fig = plot_bands(g)
    assert "overall" in fig.axes[0].get_title() and "seed" not in g["params"]


# ----------------------------------------------------------------------------- command lines
def test_cli_in_process_and_resume(tmp_path, capsys):
    from analysis.grid import main

    out = str(tmp_path / "cli")
    argv = ["flow", "--S", "8", "--R", "2", "--D", "4", "--T", "4", "--N", "2", "--eps-conv", "0.1",
            "--grid", "alpha=1e-3,1e-2", "--workers", "1", "--out", out, "--quiet"]
    assert main(argv) == 0
    assert main(argv[:-1]) == 0
    assert "2 skipped" in capsys.readouterr().out
    assert len(jsonl_rows(out)) == 2


@pytest.mark.parametrize("args,match", [
    (["flow", "--grid", "alpha"], "NAME=VALUES"),
    (["flow", "--grid", "alfa=1,2"], "not a setting of a flow run"),
    (["flow", "--alpha", "1e-3", "--grid", "alpha=1e-3,1e-2"], "set for every run"),
    (["flow", "--grid", "alpha=-1,1e-3"], "alpha"),
    (["train", "--grid", "seed=0:2", "--workers", "0"], "workers"),
    (["flow", "--grid", "alpha=1e-3", "--scheduler", "nowhere"], "scheduler"),
    (["experiment", "/no/such.toml", "--grid", "alpha=1e-3"], "does not exist"),
])
def test_cli_bad_input_one_line_exit_2_nothing_written(tmp_path, capsys, args, match):
    from analysis.grid import main

    out = tmp_path / "never"
    assert main(args + ["--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and match in err
    assert not out.exists()


def test_cli_refuses_a_folder_that_holds_no_sweep(tmp_path, capsys):
    from analysis.grid import main

    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert main(["flow", "--grid", "alpha=1e-3", "--out", str(tmp_path / "busy"), "--quiet"]) == 2
    assert "holds no sweep" in capsys.readouterr().err
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_train_seeds_flag(tmp_path, capsys):
    from models.train import main

    out = str(tmp_path / "seeds")
    assert main(["--S", "8", "--R", "2", "--D", "4", "--T", "4", "--N", "2", "--steps", "40", "--batch", "32",
                 "--eval-every", "20", "--device", "cpu", "--seeds", "2", "--workers", "1", "--no-plots", "--quiet",
                 "--out", out]) == 0
    df = pd.read_csv(os.path.join(out, "results.csv"))
    assert list(df["seed"]) == [0, 1] and os.path.isfile(os.path.join(out, "bands.csv"))
    assert "2 seeds" in capsys.readouterr().out


def test_cli_run_list_and_run_folders(tmp_path, capsys):
    from analysis.grid import main

    listing = tmp_path / "runs.csv"
    listing.write_text("alpha,init\n1e-3,balanced\n1e-2,\n")  # an empty cell keeps the base value
    out = tmp_path / "listed"
    assert main(["flow", "--S", "8", "--R", "2", "--D", "4", "--T", "4", "--N", "2", "--eps-conv", "0.1", "--init",
                 "uniform", "--list", str(listing), "--workers", "1", "--keep-runs", "--out", str(out),
                 "--quiet"]) == 2  # init is set for every run and listed: refused
    assert "set for every run" in capsys.readouterr().err and not out.exists()
    listing.write_text("alpha,init\n1e-3,balanced\n1e-2,uniform\n")
    assert main(["flow", "--S", "8", "--R", "2", "--D", "4", "--T", "4", "--N", "2", "--eps-conv", "0.1",
                 "--list", str(listing), "--workers", "1", "--keep-runs", "--out", str(out), "--quiet"]) == 0
    df = pd.read_csv(out / "results.csv")
    assert list(df["init"]) == ["balanced", "uniform"] and list(df["alpha"]) == [1e-3, 1e-2]
    for key in df["key"]:
        saved = json.loads((out / "runs" / key / "results.json").read_text())
        assert saved["key"] == key and saved["results"]["status"] == "converged"
        assert len(pd.read_csv(out / "runs" / key / "trajectory.csv")) > 10
