"""Issue 21: capacity searches as sweep runs (analysis.sweeps.capacity_runs, ``frd-grid capacity``), in this
process: every run's capacity equals a separately run analysis.capacity search of the same seeds (all seeds of
a size searched together, in lockstep, as frd-capacity does), the summary over seeds equals numpy's statistics
of those capacities and the fit analysis.capacity's own; a finished sweep run again does nothing and an
interrupted one runs only its missing runs; bad input is one line, exit status 2, nothing written. The sweep on
a LocalCluster of worker processes is in the slow test at the end."""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from analysis.capacity.sweep import CapacitySettings, run_sweep
from analysis.sweeps.capacity_runs import capacity_settings
from analysis.sweeps.runner import run_grid
from analysis.sweeps.spec import SweepSpec, product_grid

BASE = dict(model="linear", max_steps=100, dtype="float64")  # float64: the trainers agree to ~1e-10
DS, SEEDS = (3, 4), (0, 1)


def linear_spec(out):
    return SweepSpec(kind="capacity", base=BASE, grid=tuple(product_grid([("d", list(DS)), ("seed", list(SEEDS))])),
                     out=str(out))


@pytest.fixture(scope="module")
def reference():
    """frd-capacity's sweep of the same sizes and seeds, run separately (seeds trained together as one batch)."""
    return run_sweep(CapacitySettings(model="linear", ds=DS, seeds=SEEDS, max_steps=100, dtype="float64",
                                      with_construction=False))


def jsonl_keys(folder):
    with open(os.path.join(folder, "results.jsonl")) as f:
        return [json.loads(line)["key"] for line in f if line.strip()]


def test_each_run_equals_the_separate_search_and_the_summary_its_statistics(tmp_path, reference):
    res = run_grid(linear_spec(tmp_path / "g"), workers=1)
    assert (res.total, res.done, res.failed) == (4, 4, 0)
    df = pd.read_csv(tmp_path / "g" / "results.csv")
    assert len(df) == 4 and list(df["status"]) == ["done"] * 4
    for d, ref in zip(DS, reference.results):
        for i, seed in enumerate(SEEDS):
            row = df[(df["d"] == d) & (df["seed"] == seed)].iloc[0]
            assert row["capacity"] == ref.capacity[i] and row["parameters"] == ref.params == d * d
            assert bool(row["below_bracket"]) == ref.below_bracket[i]
            assert bool(row["above_bracket"]) == ref.above_bracket[i]
            assert row["probes"] == " ".join(f"{N}:{int(ok)}" for N, ok in ref.probes[i])
    bands = res.bands
    assert [g["P"] for g in bands.groups] == [9, 16]
    for g, ref in zip(bands.groups, reference.results):
        caps = np.array(ref.capacity, dtype=float)
        assert g["seeds"] == list(SEEDS) and g["capacity"] == list(ref.capacity)
        assert g["mean"] == pytest.approx(caps.mean()) and g["std"] == pytest.approx(caps.std(ddof=1))
        assert (g["min"], g["max"]) == (caps.min(), caps.max())
    (series,) = bands.series
    if reference.fit is None:
        assert series["fit"] is None
    else:
        assert series["fit"]["slope"] == pytest.approx(reference.fit.slope, rel=1e-12)
        assert series["fit"]["ci"] == pytest.approx(list(reference.fit.ci), rel=1e-12)
    # the information bound at P = 9, b = 8 bits, M = N: the root of N log2 N = 72 (SPEC §9)
    n = bands.bound["capacity"][0]
    assert bands.bound["params"][0] == 9 and n * np.log2(n) == pytest.approx(72.0, rel=1e-9)
    saved = pd.read_csv(tmp_path / "g" / "bands.csv")
    assert list(saved["capacity_mean"]) == pytest.approx([g["mean"] for g in bands.groups])
    assert json.loads((tmp_path / "g" / "bands.json").read_text())["series"][0]["fit_points"] == series["fit_points"]


def test_resume_runs_only_the_missing_runs(tmp_path):
    out = tmp_path / "r"
    first = []
    res = run_grid(linear_spec(out), workers=1, max_runs=1, on_row=lambda r: first.append(r["key"]))
    assert res.done == 1 and len(first) == 1
    second = []
    res = run_grid(linear_spec(out), workers=1, on_row=lambda r: second.append(r["key"]))
    assert (res.done, res.skipped) == (3, 1) and set(second).isdisjoint(first) and len(second) == 3
    third = []
    res = run_grid(linear_spec(out), workers=1, on_row=lambda r: third.append(r["key"]))
    assert (res.done, res.skipped) == (0, 4) and third == []
    assert sorted(jsonl_keys(out)) == sorted(first + second)  # each run recorded once
    assert len(pd.read_csv(out / "results.csv")) == 4


def test_transformer_run_equals_the_separate_search(tmp_path):
    from analysis.capacity.transformer import TransformerSettings, run_transformer_sweep

    small = dict(max_steps=48, max_doublings=0, rtol=0.3, dtype="float64")
    spec = SweepSpec(kind="capacity", base=dict(model="transformer", d=8, heads=2, **small), grid=({"seed": 1},),
                     out=str(tmp_path / "t"))
    (row,) = run_grid(spec, workers=1).rows
    ref = run_transformer_sweep(TransformerSettings(ds=(8,), heads=2, seeds=(1,), **small))
    assert row["capacity"] == ref.facts[0][0] and row["size"] == ref.results[0].capacity[0]
    assert (row["head_dim"], row["parameters"]) == (4, 4 * 2 * 4 * 8)  # d_h = α·d/H; P = 4·H·d_h·d


def test_transformer_construction_runs_equal_the_separate_search(tmp_path):
    """model construction of transformer: no training; each run's facts are the construction search's."""
    from analysis.capacity.transformer import TransformerSettings, run_transformer_sweep

    spec = SweepSpec(kind="capacity", base=dict(model="construction", construction_of="transformer", heads=2),
                     grid=tuple(product_grid([("d", [8, 16]), ("seed", [0, 1])])), out=str(tmp_path / "c"))
    rows = run_grid(spec, workers=1).rows
    ref = run_transformer_sweep(TransformerSettings(ds=(8, 16), heads=2, seeds=(0, 1), with_construction=True,
                                                    with_training=False))
    got = {(r["params"]["d"], r["params"]["seed"]): r["capacity"] for r in rows}
    assert got == {(d, s): ref.construction_facts[i][j] for i, d in enumerate((8, 16)) for j, s in enumerate((0, 1))}
    assert {r["model"] for r in rows} == {"construction"} and {r["memory"] for r in rows} == {"transformer"}


def test_cli_writes_the_outputs_and_continues(tmp_path, capsys):
    from analysis.grid import main

    out = tmp_path / "cli"
    argv = ["capacity", "--model", "mlp", "--m", "3", "--max-steps", "60", "--max-doublings", "0",
            "--grid", "d=3,4", "--workers", "1", "--out", str(out)]
    assert main(argv + ["--keep-runs"]) == 0
    text = capsys.readouterr().out
    assert "capacity [d=3]" in text and "capacity [d=4]" in text and "fit [mlp]" in text
    for name in ("spec.json", "results.jsonl", "results.csv", "bands.csv", "bands.json", "capacity.png",
                 "capacity.pdf"):
        assert (out / name).stat().st_size > 0, name
    df = pd.read_csv(out / "results.csv")
    assert list(df["m"]) == [3, 3] and list(df["parameters"]) == [2 * 3 * d + 3 for d in (3, 4)]  # 2md + m
    for key, probes in zip(df["key"], df["probes"]):  # --keep-runs: each run's probes in its own folder
        kept = pd.read_csv(out / "runs" / key / "probes.csv")
        assert " ".join(f"{int(n)}:{int(ok)}" for n, ok in zip(kept["N"], kept["ok"])) == probes
    assert main(argv + ["--no-plots"]) == 0 and "0 done, 0 failed, 2 skipped" in capsys.readouterr().out
    other = [a if a != "60" else "61" for a in argv]  # another spec in the same folder: refused
    assert main(other + ["--no-plots"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "max_steps" in err, err


@pytest.mark.parametrize("args,match", [
    (["--grid", "d=0,3"], "d = 0 is too small"),
    (["--model", "mlp", "--m", "-1"], "m = -1 is too small"),
    (["--model", "transformer", "--d", "8", "--heads", "3"], "is not a positive integer head dimension"),
    (["--model", "transformer", "--d", "8", "--heads", "2", "--head-dim", "0"], "head_dim = 0 is too small"),
    (["--model", "cnn"], "model = 'cnn' is unknown"),
    (["--model", "linear", "--heads", "2"], "is a transformer setting"),
    (["--model", "linear", "--m", "4"], "has none"),
    (["--d", "100000", "--max-doublings", "20"], "needs about"),  # memory: refused before anything is allocated
    (["--grid", "model=linear,mlp", "--grid", "alpha=1,2"], "are the same configuration"),
    (["--grid", "lr=0,0.1"], "lr = 0"),
])
def test_cli_bad_input_one_line_exit_2_nothing_written(tmp_path, capsys, args, match):
    from analysis.grid import main

    out = tmp_path / "never"
    assert main(["capacity"] + args + ["--workers", "1", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and match in err, err
    assert not out.exists()


@pytest.mark.slow  # a LocalCluster: scheduler and worker processes
def test_local_cluster_gives_the_separate_searches(tmp_path, reference):
    pytest.importorskip("distributed")
    res = run_grid(linear_spec(tmp_path / "dist"), workers=2)
    assert res.done == 4 and all(not r["worker"].endswith(f":{os.getpid()}") for r in res.rows)  # on workers
    by = {(r["params"]["d"], r["params"]["seed"]): r["capacity"] for r in res.rows}
    assert by == {(d, s): ref.capacity[i] for d, ref in zip(DS, reference.results) for i, s in enumerate(SEEDS)}


@pytest.mark.parametrize("model", ["linear", "mlp", "transformer"])
def test_unset_fields_keep_frd_capacity_defaults(model):
    """A grid run with only model, d and seed set searches with the settings frd-capacity builds from the same
    three flags (its parser's defaults): the two programs give one capacity for one seed. The one difference by
    design: a grid run has no construction curve (a figure of the whole sweep, not of one run)."""
    from analysis.capacity.__main__ import build_parser, settings_from_args

    cli = settings_from_args(build_parser().parse_args(["--model", model, "--d", "8", "--seeds", "0"])).to_dict()
    grid = capacity_settings({"model": model, "d": 8, "seed": 0}).to_dict()
    cli.pop("with_construction", None), grid.pop("with_construction", None)
    assert cli == grid
