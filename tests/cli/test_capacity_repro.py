"""experiments/capacity.py (the CPU-scale reproduction of the capacity figures) at toy sizes: it writes every
figure's files, and its numbers are the library's, checked against separately run computations."""
import importlib.util
import json
import os
import sys

import numpy as np
import pandas as pd
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location("capacity_repro", os.path.join(ROOT, "experiments", "capacity.py"))
repro = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = repro  # its job functions are pickled by name for the worker processes
_spec.loader.exec_module(repro)


@pytest.mark.slow
def test_tiny_reproduction_writes_every_figure_and_matches_separate_runs(tmp_path):
    from analysis.capacity.sweep import run_sweep
    from dynamics.capacity_training import TransformerTrainConfig, train_transformers
    from models.transformer import TransformerConfig

    out = tmp_path / "repro"
    assert repro.main(["--tiny", "--quiet", "--workers", "2", "--out", str(out)]) == 0
    assert sorted(os.listdir(out)) == sorted(f"{n}.{e}" for n in repro.FIGURES for e in ("csv", "json", "png"))
    # transformer figure: parameter counts are the paper's 4·H·d_h·d + 2·m·d, facts S·R, one row per size and seed
    tf = pd.read_csv(out / "transformer.csv")
    assert (tf.params == 4 * tf.H * tf.d_h * tf.d + 2 * tf.m * tf.d).all() and (tf.facts == tf.S * tf.R).all()
    # each shape's trained series and its construction's (SPEC §8), 2 sizes x 2 seeds each
    assert set(tf.series) == {f"{x}{c}" for x in repro.TINY_TRANSFORMER_SHAPES for c in ("", ": construction")}
    assert len(tf) == 2 * 2 * 2 * 2 and set(tf.model) == {"transformer", "construction"}
    # memory figure: linear memories have d² parameters; one series per model
    mem = pd.read_csv(out / "memory.csv")
    lin = mem[mem.series.str.startswith("linear")]
    assert (lin.params == lin.d ** 2).all()
    assert set(mem.series) == set(repro.TINY_MEMORY_FLAGS) | {"linear: construction"}  # the one with construction
    assert set(mem[mem.series == "linear: construction"].model) == {"construction"}
    # the fixed-target series is frd-capacity's search with those flags, run here
    label = "linear, M = 4 outputs"
    direct = run_sweep(repro.settings_of(repro.TINY_MEMORY_FLAGS[label]))
    assert sorted(mem[mem.series == label].capacity) == sorted(c for r in direct.results for c in r.capacity)
    # trade-off cell (H=2, m=8), computed in a worker process, equals a transformer of that shape trained here
    g = repro.TINY_TRADEOFF
    cfg = TransformerConfig(S=g["S"], R=g["R"], D=g["D"], d=g["d"], H=2, d_h=g["d_h"], m=8, T=g["T"], seed=g["seed"])
    run = train_transformers([cfg], list(g["lrs"]), TransformerTrainConfig(batch=g["batch"], max_steps=g["max_steps"],
                                                                           eval_every=g["eval_every"], record=False))
    to = pd.read_csv(out / "tradeoff.csv")
    cell = to[(to.H == 2) & (to.m == 8)]
    assert np.isclose(cell.accuracy.item(), run.best_accuracy.max()) and cell.params.item() == cfg.params
    body = json.loads((out / "tradeoff.json").read_text())
    assert np.shape(body["accuracy"]) == (len(g["Hs"]), len(g["ms"]))


def test_docs_with_tiny_is_refused(tmp_path, capsys):
    out = tmp_path / "never"
    assert repro.main(["--tiny", "--docs", "--out", str(out)]) == 2
    assert "--docs with --tiny" in capsys.readouterr().err and not out.exists()


def test_shipped_settings_pass_frd_capacitys_checks():
    """Every full-size sweep is one frd-capacity accepts (valid flags, memory within half of what is free)."""
    mem, tf, _ = repro.settings_blocks(tiny=False)
    assert repro.check_settings(repro.FIGURES, mem, tf) is None


def test_too_large_sweep_refused_before_running(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(repro.TINY_MEMORY_FLAGS, "mlp", "--model mlp --d 4096 --seeds 0")
    out = tmp_path / "never"
    assert repro.main(["--tiny", "--only", "memory", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "mlp: " in err and "GiB" in err and not out.exists()


@pytest.mark.parametrize("args, match", [(["--tradeoff-steps", "0"], "--tradeoff-steps 0"),
                                         (["--tradeoff-steps", "8", "--docs"], "--docs with --tradeoff-steps")])
def test_bad_tradeoff_steps_refused(tmp_path, capsys, args, match):
    out = tmp_path / "never"
    assert repro.main(["--only", "tradeoff", "--out", str(out)] + args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and match in err and not out.exists()


@pytest.mark.slow
def test_tradeoff_steps_sets_the_maps_training(tmp_path):
    """--tradeoff-steps K: every cell trained K steps; a cell equals a transformer of its shape trained K steps."""
    from dynamics.capacity_training import TransformerTrainConfig, train_transformers
    from models.transformer import TransformerConfig

    out = tmp_path / "t"
    assert repro.main(["--tiny", "--only", "tradeoff", "--tradeoff-steps", "12", "--quiet", "--workers", "1",
                       "--out", str(out)]) == 0
    body = json.loads((out / "tradeoff.json").read_text())
    assert body["settings"]["max_steps"] == 12
    g = repro.TINY_TRADEOFF
    cfg = TransformerConfig(S=g["S"], R=g["R"], D=g["D"], d=g["d"], H=1, d_h=g["d_h"], m=4, T=g["T"], seed=g["seed"])
    run = train_transformers([cfg], list(g["lrs"]), TransformerTrainConfig(batch=g["batch"], max_steps=12,
                                                                           eval_every=g["eval_every"], record=False))
    cell = pd.read_csv(out / "tradeoff.csv").query("H == 1 and m == 4")
    assert np.isclose(cell.accuracy.item(), run.best_accuracy.max())
