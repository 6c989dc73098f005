"""Issue 12 acceptance on Dask: a 12-run sweep on a LocalCluster of 2 worker processes gives the serial numbers;
an interrupted sweep re-run executes exactly the missing runs; a failing run and a killed worker are recorded
(the killed task retried once); a scheduler and a worker started as separate processes on localhost run a
sweep given to the command line as --scheduler tcp://127.0.0.1:PORT."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import cloudpickle
import pandas as pd
import pytest

from analysis.sweeps.dask_tasks import open_client, run_tasks
from analysis.sweeps.runner import run_grid
from analysis.sweeps.spec import SweepSpec, plan, product_grid

pytest.importorskip("distributed")

from helpers import ROOT, wait_until_listening  # noqa: E402

pytestmark = pytest.mark.slow  # a Dask cluster: scheduler and worker processes
TINY = dict(S=8, R=2, D=4, T=4, N=2, facts="balanced", eps_conv=0.1, samples_per_octave=8)
NUMBERS = ("t1", "t2", "t3", "plateau_t", "plateau_loss", "final_loss", "t_final", "drift_balance",
           "drift_column_sums", "n_steps", "n_rejected", "nfe", "run_status")

# the workers unpickle this module's functions by value (tests/ is not a package they can import)
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def twelve(out):
    grid = product_grid([("alpha", [1e-2, 3e-2, 1e-1]), ("seed", [0, 1]), ("init", ["balanced", "uniform"])])
    return SweepSpec(kind="flow", base=TINY, grid=tuple(grid), out=str(out))


def jsonl_keys(folder):
    with open(os.path.join(folder, "results.jsonl")) as f:
        return [json.loads(line)["key"] for line in f if line.strip()]


@pytest.fixture(scope="module")
def client():
    with open_client("local", 2) as c:
        yield c


def test_local_cluster_gives_the_serial_numbers(tmp_path, client):
    assert len(client.nthreads()) == 2  # two worker processes
    serial = run_grid(twelve(tmp_path / "serial"), workers=1)
    dist = run_grid(twelve(tmp_path / "dist"), client=client)
    assert serial.done == dist.done == 12
    assert len({r["worker"] for r in dist.rows}) == 2 and {r["worker"] for r in dist.rows}.isdisjoint(
        {r["worker"] for r in serial.rows})
    for a, b in zip(serial.rows, dist.rows):
        assert a["key"] == b["key"]
        for k in NUMBERS:
            if isinstance(a[k], float):
                assert abs(a[k] - b[k]) <= 1e-12 * max(1.0, abs(a[k])), (k, a[k], b[k])
            else:
                assert a[k] == b[k], k
    assert len(pd.read_csv(tmp_path / "dist" / "results.csv")) == 12


def test_interrupted_cluster_sweep_resumes_with_the_missing_runs(tmp_path, client):
    out = tmp_path / "grid"
    spec = twelve(out)
    keys = [r.key for r in plan(spec)]
    first = []

    def stop_halfway(row):
        first.append(row["key"])
        if len(first) == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_grid(spec, client=client, on_row=stop_halfway)
    assert len(jsonl_keys(out)) == 6
    second = []
    res = run_grid(spec, client=client, on_row=lambda row: second.append(row["key"]))
    assert sorted(second) == sorted(set(keys) - set(first)) and (res.done, res.skipped) == (6, 6)
    assert sorted(jsonl_keys(out)) == sorted(keys)  # each run exactly once


def test_failing_run_recorded_on_the_cluster(tmp_path, client):
    spec = SweepSpec(kind="flow", base=dict(TINY, init="file"), grid=({"init_file": str(tmp_path / "none.npz")},
                                                                      {"init_file": None, "init": "balanced"}),
                     out=str(tmp_path / "f"))
    res = run_grid(spec, client=client)
    assert (res.done, res.failed) == (1, 1)
    err = res.failed_rows[0]["error"]
    assert "none.npz" in err and "\n" not in err


def test_a_run_no_worker_can_hold_is_refused(tmp_path, client):
    from common.errors import ConfigError

    out = tmp_path / "big"
    spec = SweepSpec(kind="flow", base=dict(S=100_000, R=32, D=32), grid=({"alpha": 1e-5},), out=str(out))
    with pytest.raises(ConfigError, match=r"run 0 \(alpha=1e-05, key \w+\) needs about [\d,.]+ GiB but the largest "
                                          r"worker's memory limit is"):
        run_grid(spec, client=client)
    assert not out.exists()


def behave(item):
    """Test task: ``ok`` returns; ``once`` kills its worker process on the first attempt; ``always`` on every
    attempt. Attempts are counted in files (the worker's memory dies with it)."""
    mode, folder, name = item
    marker = os.path.join(folder, name)
    with open(marker, "a") as f:
        f.write("x")
    attempts = os.path.getsize(marker)
    if mode == "always" or (mode == "once" and attempts == 1):
        os.kill(os.getpid(), signal.SIGKILL)
    return f"{name} after {attempts} attempt(s)"


def test_killed_worker_is_retried_once_then_failed(tmp_path, client):
    items = [("ok", str(tmp_path), "a"), ("once", str(tmp_path), "b"), ("always", str(tmp_path), "c"),
             ("ok", str(tmp_path), "d")]
    seen = []
    out = run_tasks(behave, items, client=client, on_result=lambda i, s, v: seen.append(i))
    # a finished task whose result was still held by a worker that died is computed again: no harm to a run
    assert out[0][0] == out[3][0] == "done" and out[0][1].startswith("a after")
    assert out[1] == ("done", f"b after {os.path.getsize(tmp_path / 'b')} attempt(s)")
    assert os.path.getsize(tmp_path / "b") >= 2  # its worker died once: run again
    assert out[2][0] == "failed" and "died twice" in out[2][1]
    assert os.path.getsize(tmp_path / "c") == 2  # tried twice, not more
    assert sorted(seen) == [0, 1, 2, 3]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_separate_scheduler_and_worker_over_tcp(tmp_path):
    port = free_port()
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), TQDM_DISABLE="1")
    addr = f"tcp://127.0.0.1:{port}"
    procs = []
    try:
        procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                       "--port", str(port), "--dashboard-address", ":0", "--no-dashboard"],
                                      cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", addr, "--nworkers", "1",
                                       "--nthreads", "1", "--no-dashboard"], cwd=ROOT, env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        out = tmp_path / "tcp"
        args = [sys.executable, "-m", "analysis.grid", "flow", "--S", "8", "--R", "2", "--D", "4", "--T", "4", "--N",
                "2", "--eps-conv", "0.1", "--grid", "alpha=1e-3,1e-2", "--grid", "seed=0:2", "--facts", "balanced",
                "--scheduler", addr, "--out", str(out)]
        if not wait_until_listening(port):
            pytest.fail("the scheduler did not start")
        r = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        assert "4 done, 0 failed" in r.stdout
        df = pd.read_csv(out / "results.csv")
        assert list(df["status"]) == ["done"] * 4 and df["worker"].nunique() == 1
        assert df["worker"][0].split(":")[-1] not in {str(p.pid) for p in procs[:1]}
        r = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "4 skipped" in r.stdout
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
