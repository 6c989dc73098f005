"""experiments/findings.py (issue 22) at a tiny size: the script runs end to end and its tables hold what
they claim, checked against separately run computations (the exact flow through analyze_experiment, the
theory's quadrature, a least-squares fit by numpy, the seed bands recomputed from the per-seed CSV rows)."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_findings():
    spec = importlib.util.spec_from_file_location("findings", os.path.join(ROOT, "experiments", "findings.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules["findings"] = mod  # as `import findings` would: cloudpickle sends its functions to Dask by value
    spec.loader.exec_module(mod)
    return mod


TINY = ["--flow-S", "16,32,64", "--softmax-S", "16,24", "--S", "16", "--seeds", "2", "--ratios", "4",
        "--transformer-ratios", "2", "--steps", "150", "--finetune-steps", "60", "--finetune-time", "600"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("findings") / "out")
    assert load_findings().main(TINY + ["--only", "scaling", "--only", "finetune", "--out", out]) == 0
    return out


def flow_experiment(S, stages, eval_sets):
    from analysis.results.experiment import analyze_experiment
    from dynamics.experiment.schedule import ExperimentConfig
    from dynamics.flow.config import FlowConfig
    from models.task import TaskConfig

    return analyze_experiment(ExperimentConfig(
        flow=FlowConfig(task=TaskConfig(S=S, R=4, D=8, facts="balanced"), alpha=1e-5, eps_conv=1e-2, t_max=1e8),
        stages=stages, eval_sets=eval_sets), progress=False)


@pytest.mark.slow
def test_outputs_load_one_row_per_run(tiny):
    import pandas as pd

    df = pd.read_csv(os.path.join(tiny, "scaling.csv"))
    assert (df.model == "flow").sum() == 3 and (df.model == "theory").sum() == 3
    soft = df[df.model == "softmax"]
    assert len(soft) == 2 * 1 * 2 and set(soft.seed) == {0, 1}  # S values x ratios x seeds
    assert sorted(soft.d.unique()) == [round(4 * math.sqrt(16 * 4)), round(4 * math.sqrt(24 * 4))]
    for name in ("scaling.png", "finetune.png", "finetune.csv", "finetune.json"):
        assert os.path.getsize(os.path.join(tiny, name)) > 0


@pytest.mark.slow
def test_flow_and_theory_rows_match_separate_computations(tiny):
    import pandas as pd

    from dynamics.experiment.schedule import Stage, Stop
    from models.weights import Distribution

    df = pd.read_csv(os.path.join(tiny, "scaling.csv"))
    for S in (16, 32, 64):
        ph = flow_experiment(S, (Stage("s", Distribution(), Stop(loss=1e-2, on="all")),), ("all",)).phases["s"]["all"]
        flow = df[(df.model == "flow") & (df.S == S)].iloc[0]
        theory = df[(df.model == "theory") & (df.S == S)].iloc[0]
        assert flow.plateau_length == pytest.approx(ph["t2"] - ph["t1"], rel=1e-9)
        # the ODE solution and the quadrature of the reduced flow are independent computations
        assert theory.plateau_length == pytest.approx(flow.plateau_length, rel=1e-6)
    fits = json.load(open(os.path.join(tiny, "scaling.json")))["summary"]["fits"]
    for model in ("flow", "theory"):
        pts = df[df.model == model]
        b = np.polyfit(np.log(pts.S), np.log(pts.plateau_length), 1)[0]
        assert fits[model]["exponent"] == pytest.approx(b, rel=1e-9)
        assert fits[model]["lo"] < b < fits[model]["hi"]


@pytest.mark.slow
def test_seed_bands_are_the_per_seed_rows_statistics(tiny):
    import pandas as pd

    df = pd.read_csv(os.path.join(tiny, "scaling.csv"))
    entries = json.load(open(os.path.join(tiny, "scaling.json")))["summary"]["entries"]
    soft = [e for e in entries if e["model"] in ("softmax", "transformer")]
    assert len(soft) == 4  # two models x two S values
    for e in soft:
        rows = df[(df.model == e["model"]) & (df.S == e["setting"]) & (df.ratio == e["ratio"])]
        for m in ("t1", "loss_all_end"):
            v = rows[m].dropna().to_numpy()
            assert e[m]["n"] == len(v) and e[m]["n_runs"] == len(rows) == 2
            if len(v):
                assert e[m]["mean"] == pytest.approx(v.mean(), rel=1e-12)
                assert e[m]["min"] == pytest.approx(v.min()) and e[m]["max"] == pytest.approx(v.max())
            if len(v) == 2:
                assert e[m]["std"] == pytest.approx(abs(v[0] - v[1]) / math.sqrt(2), rel=1e-9, abs=1e-12)


@pytest.mark.slow
def test_finetune_flow_row_is_the_separately_run_experiment(tiny):
    import pandas as pd

    from dynamics.experiment.schedule import EvalSpec, Stage, Stop
    from models.weights import Distribution

    df = pd.read_csv(os.path.join(tiny, "finetune.csv"))
    old, new = Distribution(subjects="0:8"), Distribution(subjects="8:16")
    res = flow_experiment(16, (Stage("pre", old, Stop(loss=1e-2)),
                               Stage("ft", Distribution(mix=((0.9, new), (0.1, old))), Stop(time=600.0))),
                          ("all", EvalSpec("old", old), EvalSpec("new", new)))
    tr = res.trajectory
    ft = np.asarray(tr["stage"]) == 1
    row = df[(df.model == "flow") & (df.rho == 0.1)].iloc[0]
    assert row.t_pretrain == pytest.approx(res.run.stages[0].t_end, rel=1e-9)
    assert row.old_loss_max == pytest.approx(np.asarray(tr["old_loss"])[ft].max(), rel=1e-9)
    assert row.old_loss_end == pytest.approx(np.asarray(tr["old_loss"])[ft][-1], rel=1e-9)
    assert row.new_t_eps_after == pytest.approx(res.phases["ft"]["new"]["t3"] - res.run.stages[0].t_end, rel=1e-6)
    assert bool(row.collapse) == (row.old_loss_max >= math.log(8) / 2)


@pytest.mark.slow
def test_transformer_row_is_the_separately_trained_transformer(tiny):
    """A transformer row of the fine-tuning table equals train_schedule run here with the TrainConfig the issue's
    definitions give (d = ratio sqrt(S R), H = 2, d_h = d/2, m = d, Adam 0.01), through the same stages."""
    import pandas as pd

    from dynamics.experiment.schedule import EvalSpec, Stage, Stop
    from dynamics.training.config import TrainConfig
    from dynamics.training.staged import train_schedule
    from models.task import TaskConfig
    from models.weights import Distribution

    df = pd.read_csv(os.path.join(tiny, "finetune.csv"))
    row = df[(df.model == "transformer") & (df.rho == 0.1) & (df.seed == 1)].iloc[0]
    d = round(2 * math.sqrt(16 * 4))
    assert row.d == d and row.params == 4 * 2 * (d // 2) * d + 2 * d * d
    old, new = Distribution(subjects="0:8"), Distribution(subjects="8:16")
    cfg = TrainConfig(task=TaskConfig(S=16, R=4, D=8, T=4, N=2, facts="balanced", seed=1), model="transformer",
                      optimizer="adam", lr=1e-2, batch=256, steps=150, d=d, H=2, d_h=d // 2, m=d, seed=1,
                      eval_every=40, eval_geometric=4, eval_size=8192, eps_conv=1e-2, device="cpu", threads=1)
    res = train_schedule(cfg, (Stage("pre", old, Stop(loss=1e-2)),
                               Stage("ft", Distribution(mix=((0.9, new), (0.1, old))), Stop(time=60))),
                         eval_sets=("all", "train", EvalSpec("old", old), EvalSpec("new", new)), progress=False)
    h = res.history
    ft = np.asarray(h["stage"]) == 1
    assert row.t_pretrain == res.stages[0].step_end
    assert row.old_loss_max == pytest.approx(np.asarray(h["old_loss"])[ft].max(), rel=1e-6)
    assert row.old_loss_end == pytest.approx(np.asarray(h["old_loss"])[ft][-1], rel=1e-6)


@pytest.mark.slow
def test_dask_workers_give_the_rows_of_the_in_process_run(tiny, tmp_path):
    """--jobs 2 (a Dask LocalCluster, runs finishing in any order) writes the rows the in-process run wrote, in
    the same order, number for number (each run is seeded; only its wall time differs)."""
    import pandas as pd

    out = str(tmp_path / "dask")
    assert load_findings().main(TINY + ["--only", "finetune", "--jobs", "2", "--out", out]) == 0
    here = pd.read_csv(os.path.join(tiny, "finetune.csv")).drop(columns=["wall_s"])
    there = pd.read_csv(os.path.join(out, "finetune.csv")).drop(columns=["wall_s"])
    pd.testing.assert_frame_equal(here, there)


@pytest.mark.parametrize("flag,value", [("--ratios", "2,-1"), ("--S", "15"), ("--betas", "a"), ("--eps", "2"),
                                        ("--device", "mps"), ("--scheduler", "tcp://10.1.2.3:8786"),
                                        ("--jobs", "0")])
def test_bad_values_exit_2_one_line_nothing_written(tmp_path, capsys, flag, value):
    out = tmp_path / "out"
    assert load_findings().main([flag, value, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and flag.lstrip("-") in err and "Traceback" not in err
    assert not out.exists()


def test_device_auto_without_a_gpu_says_the_cpu_is_used(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    assert load_findings().resolved_device("auto") == "cpu"
    assert "CPU" in capsys.readouterr().err


def test_docs_from_an_empty_folder_exits_2(tmp_path, capsys):
    assert load_findings().main(["--docs-from", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--docs-from" in err
