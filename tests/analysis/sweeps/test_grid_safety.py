"""Issue 24: the frd-grid program's safety: runs that did not finish, --list against --grid, sizes before anything
is built, one client per sweep folder, a full disk, Ctrl-C's last line and who may connect to the scheduler (the
TLS cluster test is in test_grid_tls.py)."""
from __future__ import annotations

import json
import os
import warnings

import pytest

from analysis.grid import main
from analysis.sweeps.spec import MAX_RUNS, axis_size, check_grid_size, read_run_list
from common.errors import ConfigError

TINY_ARGS = ["--S", "8", "--R", "2", "--D", "4", "--T", "4", "--N", "2", "--eps-conv", "0.1", "--facts", "balanced"]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# ----------------------------------------------------------------------------- sizes before anything is built
def test_axis_sizes_are_computed_from_the_syntax():
    assert axis_size("seed=0:10000000000000") == 10**13
    assert axis_size("seed=2:8:3") == 2 and axis_size("a=1,2,3") == 3 and axis_size("a=log:1:2:1e3") == 1000
    with pytest.raises(ConfigError, match=r"10,000,000,000,000 runs \(seed: 10,000,000,000,000 values\)"):
        check_grid_size([("seed", 10**13)])
    with pytest.raises(ConfigError, match=r"alpha: 1,001 values x --list: 1,000 runs"):
        check_grid_size([("alpha", 1001)], 1000)
    assert check_grid_size([("a", 1000)], 1000) == MAX_RUNS


@pytest.mark.parametrize("grid", [["seed=0:10000000000000"], ["seed=0:300000000"],
                                  ["seed=0:1000", "alpha=lin:1e-5:1e-3:1001"]])
def test_a_huge_grid_is_refused_before_any_axis_is_built(tmp_path, capsys, monkeypatch, grid):
    from analysis.sweeps import runner

    def never(text):
        raise AssertionError(f"parse_axis({text!r}) built an axis before the size was checked")

    monkeypatch.setattr(runner, "parse_axis", never)
    out = tmp_path / "never"
    args = ["flow"] + [x for g in grid for x in ("--grid", g)]
    assert main(args + ["--out", str(out), "--quiet"]) == 2
    line = one_error_line(capsys)
    assert "runs (" in line and f"at most {MAX_RUNS:,}" in line
    assert not out.exists()


@pytest.mark.parametrize("axis,match", [("alpha=lin:0:inf:3", "HI = 'inf' is not finite"),
                                        ("alpha=log:nan:1:3", "LO = 'nan' is not finite"),
                                        ("alpha=lin:-1e308:1e308:3", "overflow"),
                                        ("alpha=lin:0:1:2.5", "COUNT")])
def test_non_finite_range_ends_give_one_line_and_no_numpy_warning(tmp_path, capsys, axis, match):
    out = tmp_path / "never"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["flow", "--grid", axis, "--out", str(out), "--quiet"]) == 2
    assert [str(w.message) for w in caught] == []
    assert match in one_error_line(capsys)
    assert not out.exists()


# ----------------------------------------------------------------------------- --list against --grid
def test_a_field_both_listed_and_gridded_is_refused(tmp_path, capsys):
    lst = tmp_path / "runs.json"
    lst.write_text(json.dumps([{"alpha": 1e-3, "seed": 1}, {"alpha": 1e-2, "seed": 2}]))
    out = tmp_path / "never"
    assert main(["flow", *TINY_ARGS, "--list", str(lst), "--grid", "seed=0:2", "--out", str(out), "--quiet"]) == 2
    line = one_error_line(capsys)
    assert "'seed'" in line and "--list" in line and "--grid" in line
    assert not out.exists()


def test_a_duplicated_csv_column_is_refused_naming_it(tmp_path, capsys):
    lst = tmp_path / "runs.csv"
    lst.write_text("alpha,seed,alpha\n1e-3,0,1e-2\n")
    with pytest.raises(ConfigError, match="column 'alpha' appears twice"):
        read_run_list(str(lst))
    out = tmp_path / "never"
    assert main(["flow", *TINY_ARGS, "--list", str(lst), "--out", str(out), "--quiet"]) == 2
    assert "'alpha'" in one_error_line(capsys)
    assert not out.exists()


def test_a_duplicated_json_key_is_refused_naming_it(tmp_path):
    lst = tmp_path / "runs.json"
    lst.write_text('[{"alpha": 1e-3, "alpha": 1e-2}]')
    with pytest.raises(ConfigError, match="field 'alpha' is given twice"):
        read_run_list(str(lst))


# ----------------------------------------------------------------------------- a run that did not finish
def jsonl(folder):
    with open(os.path.join(folder, "results.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.mark.parametrize("batch", ["1", "2"])
def test_a_run_out_of_steps_is_unfinished_and_the_grid_exits_3(tmp_path, capsys, batch):
    out = str(tmp_path / "g")
    argv = ["flow", *TINY_ARGS, "--grid", "max_steps=5,100000", "--batch-flows", batch, "--workers", "1",
            "--out", out, "--quiet"]
    assert main(argv) == 3
    line = one_error_line(capsys)
    assert "1 run(s) did not finish (runs 0;" in line and "max_steps" in line
    rows = jsonl(out)
    assert [(r["index"], r["status"], r["run_status"]) for r in rows] == [(0, "unfinished", "max_steps"),
                                                                         (1, "done", "converged")]
    assert "step budget" in rows[0]["error"]
    # resume: the unfinished run is skipped like a failed one (the same configuration runs out again), exit 3
    assert main(argv) == 3 and len(jsonl(out)) == 2
    capsys.readouterr()
    assert main(argv + ["--retry-failed"]) == 3
    assert [r["index"] for r in jsonl(out)] == [0, 1, 0]
