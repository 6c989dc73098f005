"""The grid's train kind runs the transformer: its fields (H, d_h, m, d) come from TrainConfig's, and every row (its
history and final numbers) equals a direct dynamics.training.train of the same TrainConfig built by hand; the
bands figure of transformer groups draws without model 2's verdicts."""
import json
import os

import numpy as np

from analysis.sweeps.spec import field_names
from dynamics.training import HISTORY_COLUMNS, TrainConfig, train
from models.task import TaskConfig

TASK = dict(S=8, R=2, D=4, T=4, N=2)
OWN = dict(model="transformer", optimizer="adam", lr=0.01, d=8, d_h=4, m=3, steps=30, batch=32, eval_every=10,
           device="cpu", threads=1)


def test_grid_rows_equal_direct_transformer_runs(tmp_path, capsys):
    from analysis.grid import main

    assert {"H", "d_h", "m", "d"} <= set(field_names("train"))
    out = tmp_path / "grid"
    argv = ["train", "--S", "8", "--R", "2", "--D", "4", "--T", "4", "--N", "2", "--model", "transformer",
            "--optimizer", "adam", "--lr", "0.01", "--d", "8", "--d-h", "4", "--m", "3", "--steps", "30", "--batch",
            "32", "--eval-every", "10", "--device", "cpu", "--grid", "H=1,2", "--workers", "1", "--out", str(out),
            "--quiet"]
    assert main(argv) == 0
    with open(os.path.join(out, "results.jsonl")) as f:
        rows = sorted((json.loads(line) for line in f if line.strip()), key=lambda r: r["params"]["H"])
    assert [r["params"]["H"] for r in rows] == [1, 2] and all(r["status"] == "done" for r in rows)
    finals = []
    for r in rows:
        direct = train(TrainConfig(task=TaskConfig(**TASK), H=r["params"]["H"], **OWN), progress=False)
        for col in HISTORY_COLUMNS:
            assert np.array_equal(np.asarray(r["history"][col], dtype=float), direct.history[col], equal_nan=True), col
        assert r["final_loss"] == direct.history["loss"][-1]
        assert "confirmed" not in r  # model 2's claims are not the transformer's
        finals.append(r["final_loss"])
    assert finals[0] != finals[1]  # H is read: the two rows are different runs
    assert all((out / f"bands-{k}.png").stat().st_size > 10_000 for k in range(2))  # one figure per H
