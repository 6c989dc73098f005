"""`frd-train --seeds N` (models.train through the sweep runner) writes bands (mean, standard deviation with
ddof 1, min and max over seeds of every history column) and per-seed rows equal to those of N separately run
single-seed trainings, for model 1, model 2 and the transformer (whose bands carry no confirmation verdicts:
those are model 2's claims).

Reference: N runs of dynamics.training.train with TrainConfig(seed=s) built by hand, and numpy's statistics of
their histories; each run's phase times from analysis.results.training.summarize_training.
"""
import os

import numpy as np
import pandas as pd
import pytest

from analysis.results.training import summarize_training
from dynamics.training import HISTORY_COLUMNS, TrainConfig, train
from models.task import TaskConfig

TASK = TaskConfig(S=8, R=2, D=4, T=4, N=2)
COMMON = dict(steps=40, batch=32, eval_every=10, device="cpu", eval_size=8192, threads=1)
MODELS = {
    "linear": dict(model="linear", optimizer="sgd", lr=0.5, init="uniform", init_scale=1e-3),
    "softmax": dict(model="softmax", optimizer="sgd", lr=4.0, init_scale=1e-3, d=16),
    "transformer": dict(model="transformer", optimizer="adam", lr=0.01, d=8, H=2, d_h=4, m=3),
}
N_SEEDS = 3


def argv_of(kind):
    c = {**COMMON, **MODELS[kind]}
    argv = ["--S", "8", "--R", "2", "--D", "4", "--T", "4", "--N", "2", "--model", c["model"], "--optimizer",
            c["optimizer"], "--lr", str(c["lr"]), "--steps", str(c["steps"]),
            "--batch", str(c["batch"]), "--eval-every", str(c["eval_every"]), "--device", "cpu", "--threads", "1"]
    if kind != "transformer":
        argv += ["--init-scale", str(c["init_scale"])]
    if kind == "transformer":
        argv += ["--d", str(c["d"]), "--H", str(c["H"]), "--d-h", str(c["d_h"]), "--m", str(c["m"])]
    elif kind == "softmax":
        argv += ["--d", str(c["d"])]
    else:
        argv += ["--init", c["init"]]
    return argv


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_seed_bands_equal_the_statistics_of_separate_runs(tmp_path, kind):
    from models.train import main

    out = tmp_path / kind
    assert main(argv_of(kind) + ["--seeds", str(N_SEEDS), "--workers", "1", "--no-plots", "--quiet",
                                 "--out", str(out)]) == 0
    bands = pd.read_csv(out / "bands.csv")
    runs = [train(TrainConfig(task=TASK, seed=s, **COMMON, **MODELS[kind]), progress=False) for s in range(N_SEEDS)]
    steps = runs[0].history["step"]
    assert all(np.array_equal(r.history["step"], steps) for r in runs)
    assert np.array_equal(bands["step"], steps) and np.all(bands["n"] == N_SEEDS)
    for col in HISTORY_COLUMNS[1:]:
        x = np.array([r.history[col] for r in runs])  # (seeds, evaluations)
        if col == "train_loss":  # NaN at step 0 (no steps yet): the bands skip NaN
            x = x[:, 1:]
            b = bands.iloc[1:]
        else:
            b = bands
        assert np.allclose(b[f"{col}_mean"], x.mean(0), rtol=1e-14, atol=1e-15), col  # nanmean: same sum, ~1 ulp
        assert np.allclose(b[f"{col}_std"], x.std(0, ddof=1), rtol=1e-12, atol=1e-15), col
        assert np.array_equal(b[f"{col}_min"], x.min(0)) and np.array_equal(b[f"{col}_max"], x.max(0)), col
    assert np.ptp(np.array([r.history["loss"][-1] for r in runs])) > 0  # the seeds differ
    rows = pd.read_csv(out / "results.csv").sort_values("seed")
    assert list(rows["seed"]) == list(range(N_SEEDS))
    for (_, row), r in zip(rows.iterrows(), runs):
        s = summarize_training(r)
        assert row["final_loss"] == s["final"]["loss"]
        for k in ("t1", "t2", "t3"):
            v = s["phases"]["steps"][k]
            assert (pd.isna(row[k]) and v is None) or row[k] == pytest.approx(v, rel=1e-12), k
    if kind == "linear":
        assert np.array_equal(bands["flow_time"], steps * MODELS[kind]["lr"])
    assert os.path.isfile(out / "bands.json")
    if kind == "transformer":
        import json

        (group,) = json.loads((out / "bands.json").read_text())["groups"]
        assert group.get("verdicts") is None and group["config"]["model"] == "transformer"
        assert "confirmed" not in rows.columns
