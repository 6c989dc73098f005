"""python -m analysis.capacity --model transformer (SPEC §11): bad input refused with exit status 2, one line
on stderr and nothing written (sizes over memory before allocating), and a tiny run's outputs."""
import os

import pandas as pd
import pytest

from analysis.capacity.__main__ import main

T = ["--model", "transformer"]


@pytest.mark.parametrize("args, match", [
    (T + ["--d", "0"], "d = 0"),
    (T + ["--mlp-width", "-1"], "mlp_width = -1"),
    (T + ["--d", "10", "--heads", "3"], "not a positive integer head dimension"),
    (T + ["--heads", "0"], "heads = 0"),
    (T + ["--T", "2"], "T = 2"),
    (T + ["--batch", "0"], "batch = 0"),
    (T + ["--alpha", "2"], "--mlp-ratio"),
    (T + ["--full-grid"], "--tradeoff"),
    (["--heads", "4"], "add --model transformer"),
    (T + ["--d", "4096", "--batch", "1000000"], "GiB"),
    (["--model", "construction", "--construction-of", "transformer", "--tradeoff"], "--model transformer"),
    (["--construction-of", "transformer"], "read with --model construction"),
    (["--model", "construction", "--construction-of", "transformer", "--d", "8", "--mlp-width", "2000000"], "GiB"),
])
def test_bad_input_exit_2_one_line_nothing_written(tmp_path, capsys, args, match):
    out = tmp_path / "never"
    assert main(args + ["--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and match in err and "Traceback" not in err
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_tiny_transformer_run_writes_every_output(tmp_path):
    out = tmp_path / "cap"
    assert main(T + ["--d", "8", "16", "--seeds", "0", "1", "--max-steps", "128", "--rtol", "0.5",
                     "--max-doublings", "0", "--quiet", "--out", str(out)]) == 0
    assert sorted(os.listdir(out)) == ["capacity.csv", "capacity.pdf", "capacity.png", "results.json"]
    df = pd.read_csv(out / "capacity.csv")
    assert (df.params == 4 * df.H * df.d_h * df.d + 2 * df.m * df.d).all() and (df.facts == df.S * df.R).all()


@pytest.mark.slow
def test_tiny_tradeoff_writes_map(tmp_path):
    out = tmp_path / "trade"
    assert main(T + ["--tradeoff", "--max-steps", "4", "--quiet", "--out", str(out)]) == 0
    df = pd.read_csv(out / "tradeoff.csv")
    assert list(df.columns) == ["H", "m", "params", "accuracy"] and len(df) == 6
    assert (df.params == 4 * df.H * 8 * 32 + 2 * df.m * 32).all()


def test_construction_only_run_is_the_constructions_search(tmp_path):
    """--model construction --construction-of transformer: no training; every row is the construction's, and
    each seed's capacity is what the library's construction search gives."""
    from analysis.capacity.transformer import TransformerSettings, run_transformer_sweep

    out = tmp_path / "built"
    assert main(["--model", "construction", "--construction-of", "transformer", "--d", "8", "16", "--seeds", "0", "1",
                 "--quiet", "--out", str(out)]) == 0
    df = pd.read_csv(out / "capacity.csv")
    assert set(df.model) == {"construction"} and len(df) == 4
    ref = run_transformer_sweep(TransformerSettings(ds=(8, 16), seeds=(0, 1), with_construction=True,
                                                    with_training=False))
    assert df.facts.tolist() == [f for facts in ref.construction_facts for f in facts]
