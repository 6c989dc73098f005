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
    from analysis.sweeps import spec

    def never(text):
        raise AssertionError(f"parse_axis({text!r}) built an axis before the size was checked")

    monkeypatch.setattr(spec, "parse_axis", never)
    out = tmp_path / "never"
    args = ["flow"] + [x for g in grid for x in ("--grid", g)]
    assert main(args + ["--out", str(out), "--quiet"]) == 2
    line = one_error_line(capsys)
    assert "runs (" in line and f"at most {MAX_RUNS:,}" in line
    assert not out.exists()


@pytest.mark.parametrize("axis,match", [("alpha=lin:0:inf:3", "HI = 'inf' is not finite"),
                                        ("alpha=log:nan:1:3", "LO = 'nan' is not finite"),
                                        ("alpha=lin:-1e308:1e308:3", "overflow")])
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


# ----------------------------------------------------------------------------- one client per sweep folder
HOLD = """
import sys
from analysis.sweeps.results_log import SweepLock
lock = SweepLock(sys.argv[1], sys.argv[1]).acquire()
print("locked", flush=True)
sys.stdin.read()
"""


def test_a_second_client_on_the_same_folder_is_refused_and_a_crash_frees_it(tmp_path, capsys):
    import signal
    import subprocess
    import sys

    from helpers import ROOT

    out = str(tmp_path / "g")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, out], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        argv = ["flow", *TINY_ARGS, "--grid", "seed=0:2", "--workers", "1", "--out", out, "--quiet"]
        assert main(argv) == 2
        assert one_error_line(capsys) == (f"error: another frd-grid is using {out} (pid {holder.pid}); wait until "
                                          "it ends, or choose another --out")
        assert os.listdir(out) == [".frd-grid.lock"]  # nothing written by the refused client
        holder.send_signal(signal.SIGKILL)  # a crash: the OS drops the lock, the stale file locks nothing
        holder.wait(timeout=30)
        assert main(argv) == 0
        assert len(jsonl(out)) == 2 and ".frd-grid.lock" not in os.listdir(out)
    finally:
        holder.kill()
        holder.wait(timeout=30)


@pytest.mark.slow
def test_two_grid_processes_on_one_folder_run_each_task_once(tmp_path):
    import subprocess
    import sys

    from helpers import ROOT

    out = str(tmp_path / "g")
    argv = [sys.executable, "-m", "analysis.grid", "flow", *TINY_ARGS, "--grid", "seed=0:6", "--workers", "1",
            "--out", out, "--quiet"]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    first = subprocess.Popen(argv, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    while not os.path.exists(os.path.join(out, ".frd-grid.lock")):  # the first client holds the folder
        assert first.poll() is None, first.stderr.read()
    second = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert first.wait(timeout=120) == 0, first.stderr.read()
    if second.returncode != 0:  # 0 only if the first had ended before the second looked (then all skipped)
        assert second.returncode == 2
        assert second.stderr == f"error: another frd-grid is using {out} (pid {first.pid}); wait until it ends, or " \
                                "choose another --out\n"
    assert sorted(r["index"] for r in jsonl(out)) == [0, 1, 2, 3, 4, 5]


# ----------------------------------------------------------------------------- a full disk
def enospc(*args, **kwargs):
    import errno

    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_writing_results_csv_keeps_the_finished_runs(tmp_path, capsys, monkeypatch):
    import common.io

    real = common.io.write_text
    monkeypatch.setattr(common.io, "write_text",
                        lambda path, text: enospc() if path.endswith("results.csv") else real(path, text))
    out = str(tmp_path / "g")
    assert main(["flow", *TINY_ARGS, "--grid", "seed=0:2", "--workers", "1", "--out", out, "--quiet"]) == 2
    line = one_error_line(capsys)
    assert "disk is full" in line and "results.csv" in line and "2 finished run(s) are recorded" in line
    assert sorted(os.listdir(out)) == ["results.jsonl", "spec.json"] and len(jsonl(out)) == 2
    monkeypatch.setattr(common.io, "write_text", real)
    assert main(["flow", *TINY_ARGS, "--grid", "seed=0:2", "--workers", "1", "--out", out, "--quiet"]) == 0
    assert sorted(os.listdir(out)) == ["results.csv", "results.jsonl", "spec.json"]


def test_disk_full_keeping_run_folders_leaves_nothing(tmp_path, capsys, monkeypatch):
    import common.io

    monkeypatch.setattr(common.io, "write_csv", enospc)  # the first run's trajectory.csv
    out = tmp_path / "g"
    assert main(["flow", *TINY_ARGS, "--grid", "seed=0:2", "--workers", "1", "--keep-runs", "--out", str(out),
                 "--quiet"]) == 2
    line = one_error_line(capsys)
    assert "disk is full" in line and "/runs/" in line and "nothing was written" in line
    assert not out.exists()


def test_disk_full_appending_a_row_keeps_the_rows_before(tmp_path, capsys, monkeypatch):
    from analysis.sweeps.results_log import ResultsLog

    real, calls = ResultsLog._append, []

    def second_fails(self, line):
        calls.append(line)
        return enospc() if len(calls) == 2 else real(self, line)

    monkeypatch.setattr(ResultsLog, "_append", second_fails)
    out = str(tmp_path / "g")
    assert main(["flow", *TINY_ARGS, "--grid", "seed=0:3", "--workers", "1", "--out", out, "--quiet"]) == 2
    line = one_error_line(capsys)
    assert "results.jsonl" in line and "the 1 finished run(s) are recorded" in line
    assert len(calls) == 2 and [r["index"] for r in jsonl(out)] == [0]  # stopped at the full disk
    assert sorted(os.listdir(out)) == ["results.jsonl", "spec.json"]


def test_train_seeds_on_a_full_disk_is_one_line(tmp_path, capsys, monkeypatch):
    import common.io

    from models.train import main as train_main

    real = common.io.write_text
    monkeypatch.setattr(common.io, "write_text",
                        lambda path, text: enospc() if path.endswith(".csv") else real(path, text))
    out = str(tmp_path / "seeds")
    assert train_main(["--S", "8", "--R", "2", "--D", "4", "--T", "4", "--N", "2", "--steps", "40", "--batch", "32",
                       "--eval-every", "20", "--device", "cpu", "--seeds", "2", "--workers", "1", "--no-plots",
                       "--quiet", "--out", out]) == 2
    assert "disk is full" in one_error_line(capsys)
    assert sorted(os.listdir(out)) == ["results.jsonl", "spec.json"]


def _mount_tmpfs(path, size: str) -> None:
    import subprocess

    os.makedirs(path, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root and mount rights): {r.stderr.strip()}")


@pytest.mark.slow
@pytest.mark.parametrize("size", ["200k", "24k"])
def test_keep_runs_on_a_real_full_tmpfs(tmp_path, size):
    import subprocess
    import sys

    from helpers import ROOT

    disk = tmp_path / "disk"
    _mount_tmpfs(disk, size)
    try:
        out = disk / "g"
        r = subprocess.run([sys.executable, "-m", "analysis.grid", "flow", *TINY_ARGS, "--grid", "seed=0:6",
                            "--workers", "1", "--keep-runs", "--out", str(out), "--quiet"], cwd=ROOT,
                           capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")))
        assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and "disk is full" in r.stderr, r.stderr
        if not out.exists():  # nothing recorded: nothing left
            assert "nothing was written" in r.stderr
            assert os.listdir(disk) == []
        else:
            rows = jsonl(out)
            assert rows and f"the {len(rows)} finished run(s) are recorded" in r.stderr
            assert sorted(os.listdir(out)) == ["results.jsonl", "runs", "spec.json"]
            assert sorted(os.listdir(out / "runs")) == sorted(r["key"] for r in rows)  # complete folders only
    finally:
        subprocess.run(["umount", str(disk)], check=False)


# ----------------------------------------------------------------------------- Ctrl-C's last line
LEAK = """
import os, sys
if sys.argv[1] != "plain":
    from analysis.sweeps.dask_tasks import quiet_resource_tracker, stop_resource_tracker
    quiet_resource_tracker()
from multiprocessing import resource_tracker
resource_tracker.register("/frd-test-leak-%d" % os.getpid(), "semaphore")  # what a killed worker leaves behind
if sys.argv[1] == "stop":
    stop_resource_tracker()  # what frd-grid's interrupted line does first
sys.stderr.write("interrupted; the last line\\n")
sys.stderr.flush()
os._exit(130)
"""


def test_the_resource_tracker_prints_nothing_after_the_interrupted_line():
    import subprocess
    import sys

    from helpers import ROOT

    def stderr_lines(mode):  # read to its end: the tracker, which inherits stderr, has exited too
        r = subprocess.run([sys.executable, "-c", LEAK, mode], cwd=ROOT, capture_output=True, text=True, timeout=60)
        return r.stderr.strip().splitlines()

    # what this guards against: multiprocessing's warning, printed after the program's last line
    plain = stderr_lines("plain")
    assert plain[0] == "interrupted; the last line" and any("leaked semaphore" in x for x in plain[1:]), plain
    for mode in ("quiet", "stop"):
        assert stderr_lines(mode) == ["interrupted; the last line"]
