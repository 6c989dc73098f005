"""Result objects for notebooks: short repr, DataFrame, plot() -> Figure, save() = the command line's files."""
import json
import os

import numpy as np
import pytest

from analysis import analyze_flow, analyze_training, derive_reduction
from analysis.sweeps.phase_sweep import run_sweep
from dynamics import FlowConfig, TrainConfig
from models import TaskConfig

TASK = TaskConfig(S=8, R=2, D=4, T=6, N=3)


def _files(folder):
    return sorted(os.listdir(folder))


@pytest.mark.slow
def test_flow_result_matches_the_command_line(tmp_path):
    from dynamics.run import main

    res = analyze_flow(FlowConfig(task=TASK, alpha=1e-3), progress=False)
    text = repr(res)
    assert len(text) < 400 and "t1=" in text and "array" not in text
    df = res.to_dataframe()
    assert list(df.columns) == list(res.trajectory) and len(df) == res.trajectory["t"].size
    np.testing.assert_array_equal(df["loss"].to_numpy(), res.trajectory["loss"])
    fig = res.plot()
    assert fig.axes and fig.axes[0].get_lines()
    res.save(str(tmp_path / "api"))
    assert main(["--S", "8", "--R", "2", "--D", "4", "--T", "6", "--N", "3", "--alpha", "1e-3",
                 "--out", str(tmp_path / "cli"), "--quiet"]) == 0
    assert _files(tmp_path / "api") == _files(tmp_path / "cli")
    a = json.loads((tmp_path / "api" / "results.json").read_text())
    b = json.loads((tmp_path / "cli" / "results.json").read_text())
    assert set(a) == set(b) and a["phases"] == b["phases"]  # the same computation, deterministic


@pytest.mark.slow
def test_training_result_matches_the_command_line(tmp_path):
    from models.train import main

    cfg = TrainConfig(task=TASK, steps=60, eval_every=20, seed=3)
    res = analyze_training(cfg, compare_flow=True, progress=False)
    assert len(repr(res)) < 500 and "flow_gap=" in repr(res)
    df = res.to_dataframe()
    assert {"step", "loss", "flow_time", "flow_loss"} <= set(df.columns) and len(df) == 4
    assert res.plot().axes
    res.save(str(tmp_path / "api"))
    assert main(["--S", "8", "--R", "2", "--D", "4", "--T", "6", "--N", "3", "--steps", "60", "--eval-every", "20",
                 "--seed", "3", "--compare-flow", "--out", str(tmp_path / "cli"), "--quiet"]) == 0
    assert _files(tmp_path / "api") == _files(tmp_path / "cli")
    a = json.loads((tmp_path / "api" / "results.json").read_text())
    b = json.loads((tmp_path / "cli" / "results.json").read_text())
    assert a["final"] == b["final"] and a["flow_gap"] == pytest.approx(b["flow_gap"], rel=1e-12)


@pytest.mark.slow
def test_sweep_and_derive_results(tmp_path):
    cols = {k: np.array(v, dtype=float) for k, v in dict(S=[8, 8], R=[2, 2], D=[4, 4], T=[32, 32], N=[20, 20],
                                                          alpha=[1e-4, 1e-3]).items()}
    sw = run_sweep(cols, progress=False)
    assert "2 configurations" in repr(sw) and len(sw.to_dataframe()) == 2
    figs = sw.plot()
    assert set(figs) == {"phase_times_alpha"}  # one value of S: no figure against S (tracker issue 23)
    sw.save(str(tmp_path / "sw"))
    assert _files(tmp_path / "sw") == ["phase_times_alpha.png", "slopes.json", "sweep.csv"]
    dv = derive_reduction(8, 2, 4, 1e-3)
    assert "proofs=" in repr(dv) and len(repr(dv)) < 300
    dv.save(str(tmp_path / "dv"))
    assert _files(tmp_path / "dv") == ["derivation.json", "derivation.md"]
    assert json.loads((tmp_path / "dv" / "derivation.json").read_text())["predicted"]["t1"] == pytest.approx(
        dv.predictions["predicted"]["t1"])
