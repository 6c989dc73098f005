"""Sweeps of flows, experiments and training runs over a grid (or a list) of configuration fields: resumable,
on Dask (a LocalCluster, an existing cluster) or one after another in this process (issue 12).

    spec = SweepSpec(kind="flow", base={"S": 16, "R": 4, "D": 8},
                     grid=product_grid([("alpha", [1e-5, 1e-4]), ("seed", range(4))]), out="runs/grid")
    res = run_grid(spec, workers=2)     # a LocalCluster of 2 worker processes; workers=1: in this process
    res                                  # GridResult(8 runs: 8 done, 0 failed, 0 skipped, ...)
    res.to_dataframe()                   # results.csv: one row per run
    run_grid(spec, workers=2)           # again: every run is done, nothing runs (resume)

Fields are the configuration fields of the kind, by their names: ``flow``: dynamics.FlowConfig's (alpha, init,
rtol, t_max, ...) and models.TaskConfig's (S, R, D, T, N, facts, seed, zipf_subjects, ...); ``train``:
dynamics.TrainConfig's (model, optimizer, lr, batch, steps, seed, d, init_scale, ...), the task's (``task_seed``
for the task's seed) and ``compare_flow``; ``experiment``: the [task] and [flow] keys of an experiment file
(dynamics.experiment.file); ``capacity``: one capacity search (SPEC §9) per run, analysis.sweeps.capacity_runs's
CAPACITY_FIELDS (model, d, alpha or m, heads, ..., seed, lr, max_steps). ``task.S`` and ``flow.alpha`` are
accepted as well.

The sweep folder (``out``):

- ``spec.json``: the kind, base fields, grid and options. Running a sweep into a folder that holds another
  spec is refused (ConfigError naming the difference); the same spec continues where it stopped.
- ``results.jsonl``: one JSON object per finished run, appended (flush + fsync, under an exclusive lock) by the
  client process only, as each run ends: ``index``, ``key`` (a hash of the resolved configuration), ``status``
  (``done`` or ``failed``), ``error`` (one line), the grid fields, the run's numbers; a training run's history
  too. A partly written last line (a crash while appending) is ignored and cut off before the next append.
- ``results.csv``: the same rows without the histories, one per run in grid order, rewritten atomically when
  the sweep ends (also on Ctrl-C); pandas reads it.
- ``runs/<key>/`` (``keep_runs``): the run's results.json and trajectory.csv / history.csv.
- ``bands.csv``, ``bands.json``, ``bands*.png`` (kind ``train``): mean, standard deviation, min and max over
  seeds of every history column at every evaluated step (see :func:`training_bands`).
- kind ``train`` with an experiment file (staged trainer runs, analysis.sweeps.staged_runs): ``bands.csv``
  (the curves' bands per stage), ``bands.json``, ``stage_bands.csv`` (per stage and evaluation set the
  statistics over seeds of the phase times, end losses and steps, and the seeds the step budget cut) and
  ``experiment*.png``.
- ``bands.csv``, ``bands.json``, ``capacity.png``, ``capacity.pdf`` (kind ``capacity``: one capacity search
  per size and seed): mean, standard deviation, min and max of the capacity over seeds per size, and the
  scaling fit of every series (analysis.sweeps.capacity_runs.capacity_bands).

A run that raises is recorded ``failed`` with its one-line error and the sweep goes on. On Dask a task whose
worker process dies (killed, out of memory) is retried once on another worker; if that dies too the run is
recorded failed. Each task's memory is estimated (the configurations' own estimates) before anything is
submitted, and a run that no worker can hold is refused (ConfigError) with the numbers.

The parts live in their own modules, imported from there: analysis.sweeps.spec (the grid syntax, the fields of
each kind, SweepSpec and plan), analysis.sweeps.dask_tasks (generic task execution on Dask: run_tasks,
open_client), analysis.sweeps.results_log (results.jsonl and the sweep folder) and analysis.sweeps.bands (bands
over seeds). This module holds what one task does on a worker (execute) and the sweep itself (run_grid,
GridResult).
"""
from __future__ import annotations

import contextlib
import errno
import os
import time
from dataclasses import dataclass, field

import numpy as np

from common.errors import ConfigError, check_int

from analysis.sweeps.dask_tasks import check_scheduler, check_task_memory, one_line, open_client, run_tasks
from analysis.sweeps.spec import SweepSpec, build_config, describe, load_experiment_doc, plan
from analysis.sweeps.results_log import (RESULTS_CSV, RESULTS_JSONL, SPEC_JSON, ResultsLog, SweepLock, folder_entries,
                                         latest_rows, prepare_folder, write_results_csv, write_run_folder)
from analysis.sweeps.bands import training_bands


# ----------------------------------------------------------------------------- what one task does (workers)
def _where() -> str:
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


PLATEAU_FIELDS = ("t", "loss", "relation_loss", "subject_loss", "hallucination_gap")  # flow rows' plateau_* columns


def _flow_row(res) -> dict:
    ph = res.phases
    row = dict(run_status=res.status, message=res.message, t1=ph.t1, t2=ph.t2, t3=ph.t3)
    pl = ph.plateau
    for k in PLATEAU_FIELDS:
        row[f"plateau_{k}"] = None if pl is None else getattr(pl, k)
    row["final_loss"] = float(res.trajectory["loss"][-1])
    row["t_final"] = float(res.trajectory["t"][-1])
    for law, v in res.conservation.items():
        row[f"drift_{law}"] = v
    for k in ("n_steps", "n_rejected", "nfe"):
        row[k] = res.solver.get(k)
    row["integration_seconds"] = res.integration_seconds
    return row


def _train_row(res) -> dict:
    s = res.summary
    ph = s["phases"]["steps"]
    row = dict(run_status=s["status"], diverged_at=s["diverged_at"], t1=ph["t1"], t2=ph["t2"], t3=ph["t3"],
               plateau_loss=None if ph.get("plateau") is None else ph["plateau"]["loss"])
    for k in ("loss", "relation_loss", "subject_loss", "accuracy", "hallucination_gap"):
        row[f"final_{k}"] = None if s["final"] is None else s["final"][k]
    if "flow_gap" in s:
        row["flow_gap"] = s["flow_gap"]
        row["flow_gap_step"] = s["flow_gap_at"]["step"]
    if "confirmation" in s:
        cf = s["confirmation"]
        row["confirmed"] = cf["all_confirmed"]
        for claim in ("first_plateau", "second_plateau", "hallucination_gap", "convergence"):
            row[f"confirmed_{claim}"] = cf[claim]["confirmed"]
    tp = s["throughput"]
    row["train_seconds"] = tp["train_seconds"]
    row["steps_per_second"] = tp["steps_per_second"]
    return row


def _experiment_row(res) -> dict:
    row = dict(run_status=res.status)
    for st in res.stage_table():
        n = st["name"]
        row[f"{n}.t_start"], row[f"{n}.t_end"], row[f"{n}.reason"] = st["t_start"], st["t_end"], st["reason"]
        for set_name, ph in st["phases"].items():
            for k in ("t1", "t2", "t3"):
                row[f"{n}.{set_name}.{k}"] = ph[k]
            row[f"{n}.{set_name}.loss_end"] = st["at_end"][set_name]["loss"]
    return row


UNFINISHED_RUN_STATUSES = {"flow": ("max_steps", "failed"), "train": ("diverged", "cut")}  # else experiment: not completed


def did_not_finish(kind: str, run_status) -> bool:
    """True if a run that returned ended without finishing, as its own program (dynamics.run, models.train,
    dynamics.experiment) would exit 3: a flow that ran out of steps or whose solver failed, a diverged training
    run, a staged training run with a stage cut by the step budget, an experiment with a stage that did not reach
    its stop rule."""
    if run_status is None:
        return False
    if kind == "experiment":
        return str(run_status) != "completed"
    return str(run_status) in UNFINISHED_RUN_STATUSES.get(kind, ())


def _finish_status(kind: str, row: dict) -> dict:
    """``status`` unfinished (the reason in ``error``) for a run that returned without finishing."""
    if did_not_finish(kind, row.get("run_status")):
        row["status"] = "unfinished"
        why = f"run_status {row['run_status']}"
        if row.get("message"):
            why += f": {row['message']}"
        elif row.get("diverged_at") is not None:
            why += f" at step {row['diverged_at']}"
        text = " ".join(why.split())
        row["error"] = text if len(text) <= 500 else text[:497] + "..."
    return row


def _run_single(kind: str, fields: dict, experiment: dict | None, keep: bool) -> dict:
    """One run in this process: the row of numbers (``history`` for training; ``files`` with ``keep``)."""
    from dynamics.threads import torch_threads

    config = build_config(kind, fields, experiment)
    with torch_threads(1):  # the same thread count everywhere: numbers equal to the serial run's
        if kind == "flow":
            from analysis.results.flow import analyze_flow

            res = analyze_flow(config, progress=False)
            row = _flow_row(res)
            files = dict(results=res.to_dict(), table=("trajectory.csv", dict(res.trajectory))) if keep else None
        elif kind == "train" and experiment is not None:  # staged trainer runs (analysis.sweeps.staged_runs)
            from analysis.sweeps.staged_runs import staged_row

            row, files = staged_row(config, experiment, keep)
        elif kind == "train":
            from analysis.results.training import analyze_training, history_columns

            c, compare = config
            res = analyze_training(c, compare_flow=compare, progress=False)
            row = _train_row(res)
            hist = history_columns(res.run, res.pairing)
            row["history"] = {k: np.asarray(v, dtype=np.float64).tolist() for k, v in hist.items()}
            if res.summary.get("confirmation") is not None:
                row["confirmation"] = res.summary["confirmation"]
            files = dict(results=res.summary, table=("history.csv", hist)) if keep else None
        elif kind == "capacity":
            from analysis.sweeps.capacity_runs import capacity_row

            row, files = capacity_row(config, keep)
        else:
            from analysis.results.experiment import analyze_experiment

            res = analyze_experiment(config, progress=False)
            row = _experiment_row(res)
            files = dict(results=res.to_dict(), table=("trajectory.csv", dict(res.trajectory))) if keep else None
    if files is not None:
        row["files"] = files
    return row


def execute(task: dict) -> list[dict]:
    """Run one task (a dict: kind, runs = [dict(index, key, fields)], experiment, keep, batched) and return one
    row per run: ``status`` done with the run's numbers, or failed with ``error``. Runs on a Dask worker or in
    this process; a failing run does not stop the others of its task."""
    kind, out = task["kind"], []
    if task.get("batched"):
        from dynamics.flow.batched import run_flows_batched

        from analysis.phases import batched_plateau

        t0 = time.perf_counter()
        try:
            configs = [build_config("flow", r["fields"]) for r in task["runs"]]
            plateaus = {}

            def locate(j, res):  # each run's plateau as it finishes
                plateaus[j] = batched_plateau(res)

            results = run_flows_batched(configs, threads=1, plateau=True, on_done=locate)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - recorded, the sweep goes on
            line = one_line(exc)
            return [dict(index=r["index"], key=r["key"], status="failed", error=line, worker=_where())
                    for r in task["runs"]]
        wall = time.perf_counter() - t0
        for j, (r, res) in enumerate(zip(task["runs"], results)):
            pl = plateaus.get(j)
            row = dict(index=r["index"], key=r["key"], status="done", error="", run_status=res["status"],
                       message=res["message"], t1=res["t1"], t2=res["t2"], t3=res["t3"],
                       **{f"plateau_{k}": None if pl is None else getattr(pl, k) for k in PLATEAU_FIELDS},
                       final_loss=res["final_loss"],
                       t_final=res["t_final"], n_steps=res["n_steps"], n_rejected=res["n_rejected"],
                       nfe=res["nfe"], batched=len(results), wall_seconds=wall / len(results), worker=_where())
            out.append(_finish_status(kind, row))
        return out
    for r in task["runs"]:
        t0 = time.perf_counter()
        try:
            row = _run_single(kind, r["fields"], task.get("experiment"), task.get("keep", False))
            row = _finish_status(kind, dict(index=r["index"], key=r["key"], status="done", error="", **row))
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - recorded, the sweep goes on
            row = dict(index=r["index"], key=r["key"], status="failed", error=one_line(exc))
        row["wall_seconds"] = time.perf_counter() - t0
        row["worker"] = _where()
        out.append(row)
    return out


# ----------------------------------------------------------------------------- the sweep
@dataclass(frozen=True)
class GridResult:
    """A sweep's outcome: ``rows`` (the last row recorded for every run of the spec, grid order; a run not
    yet run is absent), counts of this call (``done``, ``failed``: run now; ``skipped``: recorded before),
    ``wall_seconds``, ``runs_per_second`` (runs finished now per second of wall time), ``bands`` (kind train: a
    BandsResult; kind capacity: a CapacityBandsResult; else None) and ``folder``. An interrupted sweep returns none:
    the KeyboardInterrupt goes on to the caller after results.csv is rewritten from what was recorded."""

    spec: SweepSpec = field(repr=False)
    rows: list = field(repr=False)
    total: int
    done: int
    failed: int
    skipped: int
    wall_seconds: float
    runs_per_second: float
    folder: str | None = None
    bands: object = field(repr=False, default=None)
    unfinished: int = 0

    def __repr__(self) -> str:
        return (f"GridResult({self.total} runs: {self.done} done, "
                + (f"{self.unfinished} unfinished, " if self.unfinished else "")
                + f"{self.failed} failed, {self.skipped} skipped; "
                f"{self.wall_seconds:.3g} s, {self.runs_per_second:.3g} runs/s)")

    def summary_line(self) -> str:
        left = self.total - self.done - self.unfinished - self.failed - self.skipped
        return (f"{self.total} runs: {self.done} done, "
                + (f"{self.unfinished} unfinished, " if self.unfinished else "")
                + f"{self.failed} failed, {self.skipped} skipped (recorded "
                f"before)" + (f", {left} not run" if left else "") + f"; wall {self.wall_seconds:.1f} s, "
                f"{self.runs_per_second:.3g} runs/s")

    @property
    def failed_rows(self) -> list:
        return [r for r in self.rows if r.get("status") == "failed"]

    @property
    def unfinished_rows(self) -> list:
        """Runs that returned without finishing (status unfinished: a flow out of steps or whose solver failed,
        a diverged training run, an experiment stage short of its stop rule)."""
        return [r for r in self.rows if r.get("status") == "unfinished"]

    def to_dataframe(self):
        """results.csv as a pandas DataFrame."""
        import pandas as pd

        if self.folder is not None and os.path.isfile(os.path.join(self.folder, RESULTS_CSV)):
            return pd.read_csv(os.path.join(self.folder, RESULTS_CSV))
        return pd.DataFrame([{k: v for k, v in r.items() if k not in ("history", "files", "confirmation")}
                             for r in self.rows])


def run_grid(spec: SweepSpec, *, scheduler: str = "local", workers: int | None = None, client=None,
              progress: bool | None = False, max_runs: int | None = None, on_row=None, retry_failed: bool = False,
              overwrite: bool = False, plots: bool = False, security=None, insecure_tcp: bool = False) -> GridResult:
    """Run every run of ``spec`` not recorded yet in its folder ``spec.out`` and record each as it ends.

    scheduler / workers: see :func:`open_client` (``workers = 1``: in this process; default a LocalCluster
    with one worker process per core); ``client``: an existing distributed.Client (then scheduler and workers
    are ignored). Runs recorded ``done`` are skipped; runs recorded ``failed`` or ``unfinished`` too (the same
    configuration gives the same outcome again) unless ``retry_failed``.
    max_runs: run at most this many of the remaining runs (re-run to continue). on_row(row): called in this
    process after each row is recorded (raising KeyboardInterrupt there stops the sweep like Ctrl-C).
    progress: a bar on a terminal (None: only there; False: off) with counts and ETA. overwrite: start over
    in a folder that holds another sweep. plots: draw the bands figure (kind train). security: a
    distributed.security.Security for a tls:// scheduler (:func:`make_security`; None: Dask's configuration);
    insecure_tcp: accept a plain tcp:// scheduler on another host (see :func:`check_scheduler`).
    """
    t_start = time.perf_counter()
    if not spec.out:
        raise ConfigError("the sweep needs a folder: give SweepSpec(out=...)")
    experiment = load_experiment_doc(spec.experiment_file) if spec.experiment_file is not None else None
    runs = plan(spec, experiment)
    if max_runs is not None:
        max_runs = check_int("max_runs", max_runs, 0)
    if client is None:
        check_scheduler(scheduler, insecure_tcp)
        if workers is not None:
            check_int("workers", workers, 1, 4096)
    spec_doc = spec.to_dict()
    if experiment is not None:
        spec_doc["experiment_sha256"] = experiment["sha"]
    folder, resumed = prepare_folder(spec.out, spec_doc, overwrite=overwrite, create=False)  # checks only
    # one client per sweep folder: a second one would run every missing run again (SweepLock)
    lock = SweepLock(folder, spec.out).acquire()
    try:
        return _run_locked(spec, runs, experiment, spec_doc, folder, lock, t_start=t_start, scheduler=scheduler,
                           workers=workers, client=client, security=security, insecure_tcp=insecure_tcp, progress=progress, max_runs=max_runs, on_row=on_row,
                           retry_failed=retry_failed, overwrite=overwrite, plots=plots)
    finally:
        lock.release()


def _disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def _full_disk_of(write) -> OSError | None:
    """Call write(): a full disk (ENOSPC, EDQUOT) is returned instead of raised; any other error is raised."""
    try:
        write()
    except OSError as exc:
        if not _disk_full(exc):
            raise
        return exc
    return None


@dataclass
class _SweepPlan:
    """What this call does in the sweep folder: the runs recorded before (skipped) and the tasks to submit."""

    folder: str
    resumed: bool  # the folder already holds this sweep
    log: ResultsLog
    keys: set  # every run's key
    skip: set  # the keys recorded before that are not run again
    todo: list  # the runs to run now
    tasks: list  # one task per run, or per batch of flows of one shape
    labels: list  # each task as a memory refusal names it
    memory: list  # each task's memory estimate in bytes


def _task_runs(spec, todo: list) -> list[list]:
    """The runs of each task: one run each, or batches of up to spec.batch flows of one shape and solver setting."""
    if spec.batch > 1:
        groups = {}
        for r in todo:
            groups.setdefault(r.shape, []).append(r)
        return [g[i:i + spec.batch] for g in groups.values() for i in range(0, len(g), spec.batch)]
    return [[r] for r in todo]


def _task_memory(spec, task_runs: list[list]) -> list:
    """Each task's memory estimate in bytes: its runs' own estimates, or a batch's shared state."""
    if spec.batch > 1:  # one batched state: the runs share the direct-path chunks (dynamics.flow.batched's estimate)
        from dynamics.flow.batched import batch_memory_estimate_bytes

        return [batch_memory_estimate_bytes([build_config("flow", r.fields) for r in tr]) for tr in task_runs]
    return [sum(r.memory_bytes for r in tr) for tr in task_runs]


def _plan_sweep(spec, runs, experiment, spec_doc, *, overwrite, retry_failed, max_runs) -> _SweepPlan:
    """Read what the folder has recorded, skip those runs (a failed or unfinished one too unless retry_failed),
    keep at most max_runs of the others and group them into tasks."""
    # again under the lock: another client may have written the folder between the check and the lock
    folder, resumed = prepare_folder(spec.out, spec_doc, overwrite=overwrite, create=False)
    log = ResultsLog(folder)
    known = latest_rows(log.read()) if resumed else {}
    keys = {r.key for r in runs}
    skip = {k for k, r in known.items() if k in keys and (r.get("status") == "done" or not retry_failed)}
    todo = [r for r in runs if r.key not in skip]
    if max_runs is not None:
        todo = todo[:max_runs]
    task_runs = _task_runs(spec, todo)
    tasks = [dict(kind=spec.kind, runs=[dict(index=r.index, key=r.key, fields=r.fields) for r in tr],
                  experiment=experiment, keep=spec.keep_runs, batched=spec.batch > 1) for tr in task_runs]
    labels = [f"run {tr[0].index} ({describe(tr[0].params)}, key {tr[0].key})" if len(tr) == 1 else
              f"a batch of {len(tr)} runs from run {tr[0].index}" for tr in task_runs]
    return _SweepPlan(folder=folder, resumed=resumed, log=log, keys=keys, skip=skip, todo=todo, tasks=tasks,
                      labels=labels, memory=_task_memory(spec, task_runs))


class _Recorder:
    """Records every run as its result comes back (its run folder, its results.jsonl row, the counts and the
    progress bar, on_row) and remembers what was being written, for a full disk's message."""

    def __init__(self, spec, plan: _SweepPlan, runs, progress, on_row):
        from common.progress import Progress

        self.spec, self.plan, self.on_row = spec, plan, on_row
        self.by_key = {r.key: r for r in runs}
        self.counts = dict(done=0, failed=0, unfinished=0)
        self.bar = Progress(len(plan.todo), f"{spec.kind} sweep", unit=" runs", enabled=progress)
        self.writing = "spec.json"  # what was being written: named if the disk is full
        self.started = False  # the folder was made (or emptied) for this sweep

    def record_row(self, row) -> None:
        """Write one finished run: its run folder (keep_runs, done), its results.jsonl row; count it."""
        r = self.by_key[row["key"]]
        row["params"] = r.params
        if self.spec.keep_runs and row.get("status") == "done":
            self.writing = f"runs/{row['key']}/"
            write_run_folder(self.plan.folder, row, r.params)
        row.pop("files", None)
        self.writing = RESULTS_JSONL
        self.plan.log.append(row)
        counts = self.counts
        counts[row["status"]] = counts.get(row["status"], 0) + 1
        self.bar.update(1)
        self.bar.set_postfix_str(f"{counts['done']} done, " + (f"{counts['unfinished']} unfinished, "
                                                               if counts["unfinished"] else "")
                                 + f"{counts['failed']} failed")
        if self.on_row is not None:
            self.on_row(row)

    def on_result(self, i, status, value) -> None:
        """Task i's outcome from run_tasks: its rows, or (the task itself failed: its worker died twice) every run
        of it failed with the error."""
        if status == "done":
            for row in value:
                self.record_row(row)
        else:
            for r in self.plan.tasks[i]["runs"]:
                self.record_row(dict(index=r["index"], key=r["key"], status="failed", error=value))


def _start_tasks(cl, spec, spec_doc, plan: _SweepPlan, rec: _Recorder, overwrite) -> None:
    """On client cl (None: in this process): check each task's memory before the folder is made and anything
    submitted, make the folder, run the tasks."""
    check_task_memory(plan.memory, plan.labels, cl)
    rec.started = True
    prepare_folder(spec.out, spec_doc, overwrite=overwrite and not plan.resumed)
    if plan.tasks:
        run_tasks(execute, plan.tasks, client=cl, on_result=rec.on_result)


def _submit(spec, spec_doc, plan: _SweepPlan, rec: _Recorder, *, scheduler, workers, client, security,
            insecure_tcp, overwrite) -> None:
    """Run the plan's tasks on the given client, or on one opened for the sweep (none when nothing is to run)."""
    if not plan.tasks or client is not None:
        _start_tasks(client, spec, spec_doc, plan, rec, overwrite)
    else:
        with open_client(scheduler, workers, security=security, insecure_tcp=insecure_tcp) as cl:
            _start_tasks(cl, spec, spec_doc, plan, rec, overwrite)


def _run_and_write_csv(spec, spec_doc, plan: _SweepPlan, rec: _Recorder, **submit) -> tuple[list, OSError | None]:
    """Run the tasks, then (also on Ctrl-C or an error) close the bar and rewrite results.csv from results.jsonl.
    Returns every recorded row and the error of a full disk (None if none); other errors are raised."""
    full = None
    try:
        full = _full_disk_of(lambda: _submit(spec, spec_doc, plan, rec, **submit))
    finally:  # also on Ctrl-C: results.csv then holds every run recorded so far
        rec.bar.close()
        rows_all = plan.log.read()
        if full is None and os.path.isfile(os.path.join(plan.folder, SPEC_JSON)):
            rec.writing = RESULTS_CSV
            full = _full_disk_of(lambda: write_results_csv(plan.folder, [r for r in rows_all if r["key"] in plan.keys],
                                                           spec.varied))
    return rows_all, full


def _save_bands(spec, rows: list, folder: str, rec: _Recorder, plots,
                experiment=None) -> tuple[object, OSError | None]:
    """Kind train: the bands over seeds of the rows (staged runs: analysis.sweeps.staged_runs); kind capacity:
    the capacity over seeds per size and the scaling fits (analysis.sweeps.capacity_runs); saved in the folder.
    Returns them (None if there are none) and the error of a full disk (None if none)."""
    if experiment is not None:
        from analysis.sweeps.staged_runs import staged_bands

        bands = staged_bands(rows, spec, experiment)
        if bands is None:
            return None, None
        rec.writing = "the bands (bands.csv, bands.json, stage_bands.csv, experiment.png)"
        return bands, _full_disk_of(lambda: bands.save(folder, plots=plots))
    if spec.kind == "capacity":
        from analysis.sweeps.capacity_runs import capacity_bands

        bands = capacity_bands(rows, spec)
    else:
        bands = training_bands(rows, spec)
    if bands is None:
        return None, None
    rec.writing = "the bands (bands.csv, bands.json, " + ("capacity.png)" if spec.kind == "capacity" else "bands.png)")
    return bands, _full_disk_of(lambda: bands.save(folder, plots=plots))


def _run_locked(spec, runs, experiment, spec_doc, folder, lock, *, t_start, scheduler, workers, client, security,
                insecure_tcp, progress,
                max_runs, on_row, retry_failed, overwrite, plots) -> GridResult:
    """run_grid's sweep, under the folder's lock: plan it, run and record the runs, write results.csv and the
    bands; a full disk leaves the folder clean and is a ConfigError saying what was kept."""
    plan = _plan_sweep(spec, runs, experiment, spec_doc, overwrite=overwrite, retry_failed=retry_failed,
                       max_runs=max_runs)
    rec = _Recorder(spec, plan, runs, progress, on_row)
    rows_all, full = _run_and_write_csv(spec, spec_doc, plan, rec, scheduler=scheduler, workers=workers,
                                        client=client, security=security, insecure_tcp=insecure_tcp,
                                        overwrite=overwrite)
    latest = latest_rows(rows_all)
    rows = [latest[r.key] for r in runs if r.key in latest]
    bands = None
    if full is None and spec.kind in ("train", "capacity"):
        bands, full = _save_bands(spec, rows, plan.folder, rec, plots, experiment if spec.kind == "train" else None)
    if full is not None:
        raise ConfigError(_after_disk_full(full, plan.folder, spec.out, rec.writing, rows, plan.resumed,
                                           rec.started))
    wall = time.perf_counter() - t_start
    counts = rec.counts
    ran = counts["done"] + counts["failed"] + counts["unfinished"]
    return GridResult(spec=spec, rows=rows, total=len(runs), done=counts["done"], failed=counts["failed"],
                      skipped=len(plan.skip), wall_seconds=wall, runs_per_second=ran / wall if wall > 0 else 0.0,
                      folder=plan.folder, bands=bands, unfinished=counts["unfinished"])


def _after_disk_full(exc: OSError, folder: str, shown: str, writing: str, rows: list, resumed: bool,
                     started: bool) -> str:
    """Leave the sweep folder in a clean state after a full disk (ENOSPC, EDQUOT) and return the line to print.
    No run recorded and the folder made for this sweep: everything written is removed (the lock's release removes
    the folder it created). Runs recorded: spec.json and results.jsonl stay (the same command continues), the
    bands and a results.csv that could not be brought up to date are removed, and so is an empty runs/."""
    import shutil

    from common.signals import critical_section

    why = exc.strerror or os.strerror(exc.errno)
    head = f"the disk is full ({why}) while writing {os.path.join(shown, writing)}"
    with critical_section():
        for name in ("bands.csv", "bands.json", "stage_bands.csv"):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(folder, name))
        for name in os.listdir(folder) if os.path.isdir(folder) else ():
            if (name.startswith(("bands", "experiment")) and name.endswith(".png")) or name in ("capacity.png",
                                                                                               "capacity.pdf"):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, name))
        if not rows:
            if started and not resumed:
                for e in folder_entries(folder):
                    path = os.path.join(folder, e)
                    if os.path.isdir(path) and not os.path.islink(path):
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        with contextlib.suppress(OSError):
                            os.unlink(path)
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(folder, "runs"))  # only if empty
            return f"{head}; no run was recorded and nothing was written; free some space and run the same command " \
                   "again"
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(folder, RESULTS_CSV))  # out of date: written again by the next call
        with contextlib.suppress(OSError):
            os.rmdir(os.path.join(folder, "runs"))  # only if empty
    return (f"{head}; the {len(rows)} finished run(s) are recorded in {os.path.join(shown, RESULTS_JSONL)} "
            f"(results.csv and the bands are not written); free some space and run the same command again to "
            "continue")

