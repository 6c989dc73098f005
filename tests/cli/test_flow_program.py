"""python -m dynamics.run: files written, columns, and rejection of bad input."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from dynamics.run import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository


def test_cli_writes_every_file(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["--S", "16", "--R", "4", "--D", "8", "--out", str(out)]) == 0
    for name in ("results.json", "trajectory.csv", "loss.png", "loss.pdf", "invariant.png"):
        assert (out / name).stat().st_size > 0, name
    res = json.loads((out / "results.json").read_text())
    for key in ("config", "phases", "theory", "invariant_max_drift", "solver", "wall_seconds"):
        assert key in res
    assert set(res["phases"]) >= {"t1", "t2", "t3", "plateau"}
    assert set(res["phases"]["plateau"]) >= {"t", "loss", "relation_loss", "subject_loss", "hallucination_gap"}
    assert res["theory"]["log_A"] == pytest.approx(math.log(32))
    assert res["theory"]["H_A_given_R"] == pytest.approx(math.log(8))
    assert res["config"]["task"]["S"] == 16 and res["config"]["rtol"] == 1e-9
    for key in ("n_steps", "nfe", "status"):
        assert key in res["solver"]
    header = (out / "trajectory.csv").read_text().splitlines()[0].split(",")
    assert header[:8] == ["t", "loss", "relation_loss", "subject_loss", "accuracy", "hallucination_gap", "p_true",
                          "invariant_drift"]
    data = np.loadtxt(out / "trajectory.csv", delimiter=",", skiprows=1)
    # mean probability of the true answer: 1/|A| from the symmetric start, exp(-loss) <= p_true <= 1 after
    # (Jensen: E exp(-l) >= exp(-E l))
    p_true = data[:, 6]
    assert p_true[0] == pytest.approx(1 / 32, rel=1e-12)
    assert np.all(p_true >= np.exp(-data[:, 1]) * (1 - 1e-12)) and np.all(p_true <= 1)
    assert data.shape[0] >= 200 and data.shape[1] == len(header)
    # the phase times in the JSON are where the saved curve crosses the thresholds
    t, L = data[:, 0], data[:, 1]
    th1 = res["phases"]["thresholds"]["theta1"]
    k = np.argmax(L <= th1)
    assert t[k - 1] < res["phases"]["t1"] <= t[k]
    printed = capsys.readouterr().out
    assert "t1=" in printed and "plateau" in printed and "RHS evaluations" in printed
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]


BAD = [
    (["--S", "0"], "S = 0"),
    (["--S", "abc"], "--S"),
    (["--R", "-2"], "R = -2"),
    (["--D", "3", "--facts", "balanced"], "divide"),
    (["--T", "2"], "T = 2"),
    (["--N", "0"], "N = 0"),
    (["--alpha", "0"], "alpha"),
    (["--alpha", "nan"], "alpha"),
    (["--alpha", "inf"], "alpha"),
    (["--t-max", "-1"], "t_max"),
    (["--rtol", "0"], "rtol"),
    (["--atol", "-1e-9"], "atol"),
    (["--backend", "julia"], "backend"),
    (["--method", "euler"], "method"),
    (["--backend", "scipy", "--method", "dopri5"], "method"),
    (["--facts", "sorted"], "facts"),
    (["--facts-file", "/nonexistent/table.npy"], "does not exist"),
    (["--S", "300000", "--R", "300", "--D", "300"], "GiB"),
    (["--dtype", "float16"], "dtype"),
]


@pytest.mark.parametrize("argv,match", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, capsys, argv, match):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(main(argv + ["--out", str(out)]))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert match in err
    assert "Traceback" not in err
    assert not out.exists()
    assert os.listdir(tmp_path) == []


def test_malformed_facts_file_rejected(tmp_path, capsys):
    bad = tmp_path / "facts.csv"
    bad.write_text("0,8\n1,x\n")
    out = tmp_path / "out"
    assert main(["--S", "2", "--R", "2", "--D", "8", "--facts-file", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "facts.csv" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.slow
def test_module_entry_point_exit_status():
    r = subprocess.run([sys.executable, "-m", "dynamics.run", "--S", "-1"], cwd=ROOT, capture_output=True,
                       text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "S = -1" in r.stderr
    r = subprocess.run([sys.executable, "-m", "dynamics.run", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0
    for flag in ("--S", "--R", "--D", "--T", "--N", "--facts", "--facts-file", "--zipf-subjects",
                 "--zipf-relations", "--seed", "--init", "--alpha", "--t-max", "--loss-target", "--backend",
                 "--method", "--rtol", "--atol", "--dtype", "--out"):
        assert flag in r.stdout
