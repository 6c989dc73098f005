"""python -m analysis.capacity (SPEC §10): outputs of a tiny run, and bad input refused with exit status 2,
one line on stderr and nothing written."""
import json
import math
import os
import subprocess
import sys

import pandas as pd
import pytest

from analysis.capacity.__main__ import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["--d", "3", "4", "--seeds", "0", "1", "--max-steps", "150", "--rtol", "0.3", "--max-doublings", "2", "--quiet"]


@pytest.mark.slow
def test_tiny_run_writes_every_output(tmp_path):
    out = tmp_path / "cap"
    assert main(TINY + ["--out", str(out)]) == 0
    assert sorted(os.listdir(out)) == ["capacity.csv", "capacity.pdf", "capacity.png", "results.json"]
    df = pd.read_csv(out / "capacity.csv")
    assert list(df.columns) == ["model", "d", "m", "params", "seed", "capacity", "below_bracket", "above_bracket"]
    assert set(df.model) == {"linear", "construction"} and len(df) == 2 * 2 * 2
    assert (df.params == df.d**2).all()
    res = json.loads((out / "results.json").read_text())
    lin = df[df.model == "linear"]
    assert [c for r in res["results"] for c in r["capacity"]] == list(lin.capacity)
    assert res["fit"]["n"] == 4 and res["fit"]["ci"][0] <= res["fit"]["slope"] <= res["fit"]["ci"][1]
    assert res["device"].startswith("cpu")
    bound = res["information_bound"]  # identity target, M = N, default b = 8: N log2 N = 8·P
    assert bound["bits_per_param"] == 8 and bound["params"][0] == 9 and bound["params"][-1] == 16
    assert all(n * math.log2(n) == pytest.approx(8 * p) for p, n in zip(bound["params"], bound["capacity"]))


@pytest.mark.parametrize("args, match", [
    (["--d", "0"], "d = 0"),
    (["--alpha", "-1", "--model", "mlp"], "alpha"),
    (["--seeds", "1", "1"], "repeats a seed"),
    (["--lr", "nan"], "lr"),
    (["--target", "fixed"], "M is unset"),
    (["--M", "4"], "M = 4"),
    (["--max-steps", "-3"], "max_steps"),
    (["--device", "tpu"], "device"),
    (["--d", "100000"], "GiB"),
    (["--model", "conv"], "invalid choice"),
    (["--bits-per-param", "0"], "bits_per_param"),
    (["--bits-per-param", "nan"], "bits_per_param"),
    (["--bits-per-param=-8"], "bits_per_param"),
])
def test_bad_input_exit_2_one_line_nothing_written(tmp_path, capsys, args, match):
    out = tmp_path / "never"
    with pytest.raises(SystemExit) if "invalid choice" in match else _nothing():
        code = main(args + ["--out", str(out), "--quiet"])
        assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and match in err and "Traceback" not in err
    assert not out.exists() and os.listdir(tmp_path) == []


def test_existing_output_is_refused_before_computing(tmp_path, capsys):
    out = tmp_path / "full"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main(TINY + ["--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and os.listdir(out) == ["keep.txt"]


@pytest.mark.slow
def test_real_process_bad_input_and_help():
    bad = subprocess.run([sys.executable, "-m", "analysis.capacity", "--d", "-2"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "d = -2" in bad.stderr
    ok = subprocess.run([sys.executable, "-m", "analysis.capacity", "--help"], cwd=ROOT, capture_output=True,
                        text=True, timeout=60)
    assert ok.returncode == 0 and "--alpha" in ok.stdout and "--device" in ok.stdout


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
