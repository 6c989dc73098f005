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
(dynamics.experiment_file). ``task.S`` and ``flow.alpha`` are accepted as well.

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

A run that raises is recorded ``failed`` with its one-line error and the sweep goes on. On Dask a task whose
worker process dies (killed, out of memory) is retried once on another worker; if that dies too the run is
recorded failed. Each task's memory is estimated (the configurations' own estimates) before anything is
submitted, and a run that no worker can hold is refused (ConfigError) with the numbers.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import math
import os
import re
import time
from dataclasses import dataclass, field

import numpy as np

from common.errors import ConfigError, check_choice, check_int
from common.io import jsonable

KINDS = ("flow", "train", "experiment")
RESULTS_JSONL, RESULTS_CSV, SPEC_JSON = "results.jsonl", "results.csv", "spec.json"
MAX_RUNS = 1_000_000
MEMORY_FRACTION = 0.8  # a task may use at most this fraction of a worker's memory limit (Dask pauses at 80 %)
WORKER_PRELOAD = "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"  # local workers ignore Ctrl-C
WORKER_WAIT_SECONDS = 60  # how long a sweep on a running scheduler waits for its first worker
ALLOWED_FAILURES = 1  # a task whose worker dies is run once more; the second death marks it failed
TASK_SEED_NAME = "task_seed"  # the train kind's name of the task's seed (its own ``seed`` seeds the training)
BAND_STATS = ("mean", "std", "min", "max")


# ----------------------------------------------------------------------------- grid syntax (torch-free)
def parse_value(text: str):
    """A value as typed on the command line: ``none``/``null`` -> None, ``true``/``false`` -> bool, an integer
    -> int, a number -> float, anything else -> the string."""
    if not isinstance(text, str):
        return text
    s = text.strip()
    low = s.lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    if re.fullmatch(r"[+-]?\d+", s):
        return int(s)
    try:
        return float(s)
    except ValueError:
        return s


def parse_axis(text: str) -> tuple[str, list]:
    """``NAME=VALUES`` -> (name, values). VALUES: ``a,b,c`` (a list), ``LO:HI`` or ``LO:HI:STEP`` (the integers
    range(LO, HI, STEP)), ``log:LO:HI:COUNT`` (COUNT log-spaced numbers from LO to HI) or
    ``lin:LO:HI:COUNT`` (COUNT evenly spaced)."""
    name, eq, values = text.partition("=")
    name = name.strip()
    if not eq or not name or not values.strip():
        raise ConfigError(f"grid axis {text!r} is not NAME=VALUES (e.g. alpha=1e-5,1e-4 or seed=0:8 or "
                          "alpha=log:1e-6:1e-2:5)")
    v = values.strip()
    m = re.fullmatch(r"(log|lin):([^:]+):([^:]+):([^:]+)", v)
    if m:
        lo, hi, n = parse_value(m.group(2)), parse_value(m.group(3)), parse_value(m.group(4))
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (lo, hi)):
            raise ConfigError(f"grid axis {text!r}: LO and HI of {m.group(1)}:LO:HI:COUNT must be numbers")
        n = check_int(f"{name} COUNT", n, 1, MAX_RUNS)
        if m.group(1) == "log":
            if not (lo > 0 and hi > 0):
                raise ConfigError(f"grid axis {text!r}: log:LO:HI:COUNT needs LO > 0 and HI > 0")
            return name, [float(x) for x in np.geomspace(lo, hi, n)]
        return name, [float(x) for x in np.linspace(lo, hi, n)]
    m = re.fullmatch(r"([+-]?\d+):([+-]?\d+)(?::([+-]?\d+))?", v)
    if m:
        lo, hi, step = int(m.group(1)), int(m.group(2)), int(m.group(3) or 1)
        if step == 0:
            raise ConfigError(f"grid axis {text!r}: the STEP of LO:HI:STEP must not be 0")
        out = list(range(lo, hi, step))
        if not out:
            raise ConfigError(f"grid axis {text!r}: range({lo}, {hi}, {step}) is empty")
        if len(out) > MAX_RUNS:
            raise ConfigError(f"grid axis {text!r} has {len(out):,} values; at most {MAX_RUNS:,} runs are allowed")
        return name, out
    parts = [p for p in v.split(",")]
    if any(not p.strip() for p in parts):
        raise ConfigError(f"grid axis {text!r} has an empty value; separate values by single commas")
    return name, [parse_value(p) for p in parts]


def product_grid(axes) -> list[dict]:
    """Every combination of the axes ((name, values) pairs; the last varies fastest) as a list of dicts."""
    axes = list(axes)
    names = [n for n, _ in axes]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ConfigError(f"grid axis {dup!r} is given twice; give all its values in one NAME=VALUES")
    total = math.prod(len(list(v)) for _, v in axes) if axes else 1
    if total > MAX_RUNS:
        raise ConfigError(f"the grid has {total:,} runs; at most {MAX_RUNS:,} are allowed; split the sweep")
    return [dict(zip(names, combo)) for combo in itertools.product(*[list(v) for _, v in axes])]


def read_run_list(path: str) -> list[dict]:
    """A list of runs from a file: JSON (a list of objects), JSON lines (one object a line) or CSV (a header of
    field names, one run a row; values parsed as on the command line)."""
    if not os.path.isfile(path):
        raise ConfigError(f"run list {path!r} does not exist")
    try:
        with open(path) as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"run list {path!r} cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
    rows = None
    if path.endswith(".csv"):
        import csv
        import io

        reader = csv.DictReader(io.StringIO(text))
        rows = [{k.strip(): parse_value(v) for k, v in r.items() if k is not None and v not in (None, "")}
                for r in reader]  # an empty cell leaves the field at its base value
    else:
        try:
            doc = json.loads(text)
            rows = doc if isinstance(doc, list) else None
        except json.JSONDecodeError:
            try:
                rows = [json.loads(line) for line in text.splitlines() if line.strip()]
            except json.JSONDecodeError as exc:
                raise ConfigError(f"run list {path!r} is neither JSON, JSON lines nor CSV: {exc}") from None
    if not rows or not all(isinstance(r, dict) for r in rows):
        raise ConfigError(f"run list {path!r} must hold at least one run, each an object of field -> value")
    if len(rows) > MAX_RUNS:
        raise ConfigError(f"run list {path!r} has {len(rows):,} runs; at most {MAX_RUNS:,} are allowed")
    return rows


# ----------------------------------------------------------------------------- fields of each kind
def _task_fields() -> tuple:
    from models.task import TaskConfig

    return tuple(f.name for f in dataclasses.fields(TaskConfig))


def field_names(kind: str) -> tuple:
    """The canonical field names a sweep of ``kind`` may set (see the module docstring)."""
    check_choice("kind", kind, KINDS)
    task = _task_fields()
    if kind == "flow":
        from dynamics.config import FlowConfig

        return task + tuple(f.name for f in dataclasses.fields(FlowConfig) if f.name != "task")
    if kind == "train":
        from dynamics.trainer import TrainConfig

        own = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name != "task")
        return tuple(TASK_SEED_NAME if n == "seed" else n for n in task) + own + ("compare_flow",)
    from dynamics.experiment_file import FLOW_KEYS, TASK_KEYS

    return tuple(TASK_KEYS) + tuple(FLOW_KEYS)


def canonical_name(kind: str, name: str) -> str:
    """``name`` as the kind's canonical field name (``task.S`` -> ``S``; train: ``task.seed`` -> ``task_seed``);
    ConfigError listing the allowed names if it is none of them."""
    names = field_names(kind)
    n = str(name).strip()
    section, dot, rest = n.partition(".")
    if dot:
        if section == "task" and rest in _task_fields():
            n = TASK_SEED_NAME if (kind == "train" and rest == "seed") else rest
        elif section == "flow" and kind in ("flow", "experiment"):
            n = rest
        else:
            n = ""
    if n not in names:
        raise ConfigError(f"field {name!r} is not a setting of a {kind} run; choose one of: {', '.join(names)}")
    return n


def _canonical_fields(kind: str, fields: dict, where: str) -> dict:
    out = {}
    for k, v in fields.items():
        c = canonical_name(kind, k)
        if c in out:
            raise ConfigError(f"{where}: field {c!r} is given twice (as {k!r} and another name)")
        out[c] = v
    return out


def config_fields(kind: str, config, *, compare_flow: bool = False) -> dict:
    """The canonical fields of a configuration object (a FlowConfig or TrainConfig): the inverse of
    :func:`build_config`, e.g. to sweep seeds around a configuration built elsewhere."""
    d = dataclasses.asdict(config)
    task = d.pop("task")
    if kind == "train":
        task[TASK_SEED_NAME] = task.pop("seed")
        d["compare_flow"] = bool(compare_flow)
    elif kind != "flow":
        raise ConfigError(f"config_fields: kind = {kind!r}; use 'flow' or 'train'")
    return {**task, **d}


def build_config(kind: str, fields: dict, experiment: dict | None = None):
    """The validated configuration of one run from canonical fields: a FlowConfig (flow), a (TrainConfig,
    compare_flow) pair (train) or an ExperimentConfig (experiment; ``experiment``: dict(doc, base_dir) of the
    parsed file). ConfigError (with the field's message) if a value is not allowed."""
    from models.task import TaskConfig

    task_names = set(_task_fields())
    if kind == "experiment":
        from dynamics.experiment_file import experiment_from_dict

        if experiment is None:
            raise ConfigError("an experiment sweep needs an experiment file")
        overrides = {(f"task.{k}" if k in task_names else f"flow.{k}"): v for k, v in fields.items()}
        return experiment_from_dict(experiment["doc"], base_dir=experiment["base_dir"], overrides=overrides)
    if kind == "train":
        task = {("seed" if k == TASK_SEED_NAME else k): v for k, v in fields.items()
                if k in task_names - {"seed"} or k == TASK_SEED_NAME}
        own = {k: v for k, v in fields.items() if k not in task_names - {"seed"} and k != TASK_SEED_NAME
               and k != "compare_flow"}
        from dynamics.trainer import TrainConfig

        compare = fields.get("compare_flow", False)
        if not isinstance(compare, bool):
            raise ConfigError(f"compare_flow = {compare!r} must be true or false")
        config = _construct(TrainConfig, own, TaskConfig, task)
        if compare and config.model != "linear":
            raise ConfigError("compare_flow needs model = 'linear' (the exact flow is model 1's)")
        return config, compare
    from dynamics.config import FlowConfig

    task = {k: v for k, v in fields.items() if k in task_names}
    own = {k: v for k, v in fields.items() if k not in task_names}
    return _construct(FlowConfig, own, TaskConfig, task)


def _construct(cls, own: dict, task_cls, task: dict):
    try:
        return cls(task=task_cls(**task), **own)
    except TypeError as exc:  # a value of the wrong type that the checks did not catch
        raise ConfigError(f"{exc}") from None


def resolved_dict(kind: str, config, experiment: dict | None = None) -> dict:
    """Every resolved setting of a run (what its key hashes)."""
    if kind == "flow":
        return dict(kind=kind, config=config.to_dict())
    if kind == "train":
        c, compare = config
        return dict(kind=kind, config=c.to_dict(), compare_flow=compare)
    return dict(kind=kind, flow=config.flow.to_dict(), experiment_sha=experiment["sha"],
                stages=[st.name for st in config.stages], eval_sets=list(config.set_names))


def run_key(resolved: dict) -> str:
    """A stable short key of a resolved configuration: the first 16 hex digits of the SHA-256 of its canonical
    JSON (sorted keys, no spaces)."""
    text = json.dumps(jsonable(resolved), sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- the spec
@dataclass(frozen=True)
class SweepSpec:
    """A sweep: ``kind`` (flow, train or experiment), ``base`` fields (canonical name -> value; unset fields
    keep the configuration's defaults), ``grid`` (one dict of field overrides per run), ``out`` (the sweep
    folder), ``experiment_file`` (kind experiment: the TOML file whose [task] and [flow] the fields override),
    ``batch`` (kind flow: up to this many flows of one shape per task, integrated together by
    dynamics.run_flows_batched: phase times and step counts only, no plateau, conservation or trajectory;
    1: one run per task) and ``keep_runs`` (write each run's own folder under out/runs/)."""

    kind: str
    base: dict = field(default_factory=dict)
    grid: tuple = ({},)
    out: str | None = None
    experiment_file: str | None = None
    batch: int = 1
    keep_runs: bool = False

    def __post_init__(self):
        check_choice("kind", self.kind, KINDS)
        if not isinstance(self.base, dict):
            raise ConfigError("base must be a dict of field -> value")
        grid = tuple(self.grid)
        if not grid:
            raise ConfigError("the grid is empty; give at least one run")
        if len(grid) > MAX_RUNS:
            raise ConfigError(f"the grid has {len(grid):,} runs; at most {MAX_RUNS:,} are allowed; split the sweep")
        if not all(isinstance(g, dict) for g in grid):
            raise ConfigError("every grid entry must be a dict of field -> value")
        object.__setattr__(self, "base", _canonical_fields(self.kind, self.base, "base"))
        object.__setattr__(self, "grid", tuple(_canonical_fields(self.kind, g, f"grid run {i}")
                                               for i, g in enumerate(grid)))
        object.__setattr__(self, "batch", check_int("batch", self.batch, 1, 100_000))
        if self.batch > 1 and self.kind != "flow":
            raise ConfigError(f"batch = {self.batch} applies to flow sweeps only (the batched solver integrates "
                              "flows); use batch = 1")
        if self.kind == "experiment":
            if not self.experiment_file:
                raise ConfigError("an experiment sweep needs experiment_file (a TOML experiment file)")
        elif self.experiment_file is not None:
            raise ConfigError(f"experiment_file is for experiment sweeps, not {self.kind}")

    @property
    def varied(self) -> list:
        """The fields set by the grid, in order of first appearance."""
        out = []
        for g in self.grid:
            out.extend(k for k in g if k not in out)
        return out

    def to_dict(self) -> dict:
        """spec.json (without ``out``, so a sweep folder may be moved, and without ``keep_runs``)."""
        d = dict(kind=self.kind, base=jsonable(self.base), grid=[jsonable(g) for g in self.grid],
                 batch=self.batch)  # keep_runs changes no result: it may differ between the calls of a sweep
        if self.experiment_file is not None:
            d["experiment_file"] = os.path.abspath(self.experiment_file)
        return d


@dataclass(frozen=True)
class PlannedRun:
    """One run of a sweep: its position in the grid, its key, its grid fields and all its canonical fields."""

    index: int
    key: str
    params: dict
    fields: dict
    memory_bytes: int
    shape: tuple = ()  # flows: what a batch must share (shape and solver settings)


def load_experiment_doc(path: str) -> dict:
    """dict(doc, base_dir, sha) of an experiment file (ConfigError if unreadable or not TOML)."""
    import tomllib

    if not path or not os.path.isfile(path):
        raise ConfigError(f"experiment file {path!r} does not exist")
    try:
        with open(path, "rb") as f:
            raw = f.read()
        doc = tomllib.loads(raw.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    return dict(doc=doc, base_dir=os.path.dirname(os.path.abspath(path)), sha=hashlib.sha256(raw).hexdigest())


def _memory_of(kind: str, config) -> int:
    if kind == "flow":
        return int(config.memory_estimate_bytes())
    if kind == "train":
        c, compare = config
        return int(sum(c.memory_estimate_bytes(compare).values()))
    return int(config.flow.memory_estimate_bytes())


def _describe(params: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items()) or "the base configuration"


def plan(spec: SweepSpec, experiment: dict | None = None) -> list[PlannedRun]:
    """Validate every run of ``spec`` and give each its key (ConfigError naming the run if a value is not
    allowed, or if two runs resolve to the same configuration)."""
    if spec.kind == "experiment" and experiment is None:
        experiment = load_experiment_doc(spec.experiment_file)
    runs, seen = [], {}
    for i, g in enumerate(spec.grid):
        fields = {**spec.base, **g}
        try:
            config = build_config(spec.kind, fields, experiment)
        except ConfigError as exc:
            raise ConfigError(f"run {i} ({_describe(g)}): {exc}") from None
        key = run_key(resolved_dict(spec.kind, config, experiment))
        if key in seen:
            raise ConfigError(f"runs {seen[key]} ({_describe(spec.grid[seen[key]])}) and {i} ({_describe(g)}) "
                              "are the same configuration; give each run once")
        seen[key] = i
        shape = ()
        if spec.kind == "flow":
            t = config.task
            shape = (t.S, t.R, t.D, t.T, t.N, config.backend, config.method, config.resolved_rtol, config.atol,
                     config.dtype, config.device)
        runs.append(PlannedRun(index=i, key=key, params=dict(g), fields=fields,
                               memory_bytes=_memory_of(spec.kind, config), shape=shape))
    if spec.batch > 1:
        from dynamics.batched import check_batch

        for r in runs:
            try:
                check_batch([build_config("flow", r.fields)])
            except ConfigError as exc:
                raise ConfigError(f"run {r.index} ({_describe(r.params)}) cannot be batched: {exc}") from None
    return runs


# ----------------------------------------------------------------------------- what one task does (workers)
def one_line(exc: BaseException) -> str:
    """``Type: message`` on one line, at most 500 characters."""
    text = " ".join(str(exc).split())
    line = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return line if len(line) <= 500 else line[:497] + "..."


def _where() -> str:
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


def _flow_row(res) -> dict:
    ph = res.phases
    row = dict(run_status=res.status, message=res.message, t1=ph.t1, t2=ph.t2, t3=ph.t3)
    pl = ph.plateau
    for k in ("t", "loss", "relation_loss", "subject_loss", "hallucination_gap"):
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


def _run_single(kind: str, fields: dict, experiment: dict | None, keep: bool) -> dict:
    """One run in this process: the row of numbers (``history`` for training; ``files`` with ``keep``)."""
    from dynamics.threads import torch_threads

    config = build_config(kind, fields, experiment)
    with torch_threads(1):  # the same thread count everywhere: numbers equal to the serial run's
        if kind == "flow":
            from .results import analyze_flow

            res = analyze_flow(config, progress=False)
            row = _flow_row(res)
            files = dict(results=res.to_dict(), table=("trajectory.csv", dict(res.trajectory))) if keep else None
        elif kind == "train":
            from .training import analyze_training, history_columns

            c, compare = config
            res = analyze_training(c, compare_flow=compare, progress=False)
            row = _train_row(res)
            hist = history_columns(res.run, res.pairing)
            row["history"] = {k: np.asarray(v, dtype=np.float64).tolist() for k, v in hist.items()}
            if res.summary.get("confirmation") is not None:
                row["confirmation"] = res.summary["confirmation"]
            files = dict(results=res.summary, table=("history.csv", hist)) if keep else None
        else:
            from .experiment import analyze_experiment

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
        from dynamics.batched import run_flows_batched

        t0 = time.perf_counter()
        try:
            configs = [build_config("flow", r["fields"]) for r in task["runs"]]
            results = run_flows_batched(configs, threads=1)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - recorded, the sweep goes on
            line = one_line(exc)
            return [dict(index=r["index"], key=r["key"], status="failed", error=line, worker=_where())
                    for r in task["runs"]]
        wall = time.perf_counter() - t0
        for r, res in zip(task["runs"], results):
            row = dict(index=r["index"], key=r["key"], status="done", error="", run_status=res["status"],
                       message=res["message"], t1=res["t1"], t2=res["t2"], t3=res["t3"], final_loss=res["final_loss"],
                       t_final=res["t_final"], n_steps=res["n_steps"], n_rejected=res["n_rejected"],
                       nfe=res["nfe"], batched=len(results), wall_seconds=wall / len(results), worker=_where())
            out.append(row)
        return out
    for r in task["runs"]:
        t0 = time.perf_counter()
        try:
            row = _run_single(kind, r["fields"], task.get("experiment"), task.get("keep", False))
            row = dict(index=r["index"], key=r["key"], status="done", error="", **row)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - recorded, the sweep goes on
            row = dict(index=r["index"], key=r["key"], status="failed", error=one_line(exc))
        row["wall_seconds"] = time.perf_counter() - t0
        row["worker"] = _where()
        out.append(row)
    return out


# ----------------------------------------------------------------------------- generic task execution
def call_task(fn, item):
    """``("done", fn(item))`` or ``("failed", one-line error)``: what a worker sends back."""
    try:
        return "done", fn(item)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001
        return "failed", one_line(exc)


def _configure_scheduler(n, dask_scheduler=None):
    """On the scheduler: a task is retried after ``n`` deaths of its worker, and each worker thread holds one
    task at a time (worker-saturation 1.0), so that a dying worker takes down only the run it was running
    (every task assigned to a dead worker counts that death)."""
    dask_scheduler.allowed_failures = n
    dask_scheduler.WORKER_SATURATION = 1.0
    return n


def worker_memory_limits(client) -> list[int]:
    """Each worker's memory limit in bytes (0 where it has none)."""
    info = client.scheduler_info(n_workers=-1) if _takes_n_workers(client) else client.scheduler_info()
    return [int(w.get("memory_limit") or 0) for w in info.get("workers", {}).values()]


def _takes_n_workers(client) -> bool:
    import inspect

    try:
        return "n_workers" in inspect.signature(client.scheduler_info).parameters
    except (TypeError, ValueError):
        return False


def check_task_memory(needs, labels, client=None) -> None:
    """ConfigError if a task needs more memory than any worker (or, in this process, this machine) can hold."""
    if client is None:
        from dynamics.config import available_memory_bytes

        have, what = available_memory_bytes(), "this machine has available"
    else:
        limits = worker_memory_limits(client)
        if not limits or any(x == 0 for x in limits):
            return  # no worker, or a worker without a limit: nothing to compare with
        have, what = max(limits), "the largest worker's memory limit is"
    for need, label in zip(needs, labels):
        if need is not None and need > MEMORY_FRACTION * have:
            raise ConfigError(f"{label} needs about {need / 2**30:,.2f} GiB but {what} {have / 2**30:,.2f} GiB "
                              f"(at most {MEMORY_FRACTION:.0%} of it per task); give the workers more memory "
                              "(dask worker --memory-limit) or shrink the run")


def run_tasks(fn, items, *, client=None, on_result=None, memory_bytes=None, labels=None, window=None) -> list:
    """Run ``fn(item)`` for every item: on the Dask ``client``'s workers, or in this process (client None), and
    call ``on_result(i, status, value)`` in this process as each ends (status ``done`` with fn's value, or
    ``failed`` with a one-line error; a task whose worker died twice is failed). ``memory_bytes``: each task's
    estimate, checked against the workers before anything is submitted. At most ``window`` tasks are in flight
    (default 4 per worker thread). Returns the (status, value) pairs in the items' order (None where the loop
    was interrupted). A KeyboardInterrupt (Ctrl-C) cancels the tasks in flight and propagates."""
    items = list(items)
    labels = list(labels) if labels is not None else [f"task {i}" for i in range(len(items))]
    if memory_bytes is not None:
        check_task_memory(list(memory_bytes), labels, client)
    outcomes = [None] * len(items)

    def record(i, status, value):
        outcomes[i] = (status, value)
        if on_result is not None:
            on_result(i, status, value)

    if client is None:
        for i, item in enumerate(items):
            status, value = call_task(fn, item)
            record(i, status, value)
        return outcomes
    import uuid

    from distributed import as_completed
    from distributed.client import FutureCancelledError

    try:
        from distributed.scheduler import KilledWorker
    except ImportError:  # pragma: no cover - older layouts
        from distributed import KilledWorker
    with contextlib.suppress(Exception):
        client.run_on_scheduler(_configure_scheduler, ALLOWED_FAILURES)
    if window is None:
        threads = sum(client.nthreads().values()) or 1
        window = 4 * threads
    token = uuid.uuid4().hex[:8]
    index_of = {}
    pending = iter(range(len(items)))

    def submit():
        i = next(pending, None)
        if i is None:
            return None
        fut = client.submit(call_task, fn, items[i], key=f"frd-{token}-{i}", pure=False)
        index_of[fut.key] = i
        return fut

    first = [f for f in (submit() for _ in range(min(window, len(items)))) if f is not None]
    ac = as_completed(first)
    live = set(first)
    try:
        for fut in ac:
            live.discard(fut)
            i = index_of[fut.key]
            try:
                status, value = fut.result()
            except KilledWorker:
                status, value = "failed", (f"the worker process died twice while running it (killed, crashed or "
                                           f"out of memory; retried {ALLOWED_FAILURES}x)")
            except FutureCancelledError:
                status, value = "failed", "cancelled (the scheduler or its workers went away)"
            except Exception as exc:  # noqa: BLE001 - e.g. the task could not be deserialised on the worker
                status, value = "failed", one_line(exc)
            fut.release()
            nxt = submit()
            if nxt is not None:
                ac.add(nxt)
                live.add(nxt)
            record(i, status, value)
    finally:
        if live:
            with contextlib.suppress(Exception):
                client.cancel(list(live), force=True)
    return outcomes


def check_scheduler(scheduler) -> str:
    """``local`` or a scheduler address (tcp://HOST:PORT, tls://, ws://, wss://, inproc://); else ConfigError."""
    if scheduler in (None, "", "local"):
        return "local"
    if not re.fullmatch(r"(tcp|tls|ws|wss|inproc)://\S+", str(scheduler)):
        raise ConfigError(f"scheduler = {scheduler!r} is neither 'local' nor an address such as "
                          "tcp://HOST:8786")
    return str(scheduler)


@contextlib.contextmanager
def open_client(scheduler: str = "local", workers: int | None = None):
    """A Dask client for ``scheduler``: ``local`` starts a LocalCluster of ``workers`` processes with one thread
    each (default: one per CPU core) and closes it at the end; ``tcp://HOST:PORT`` connects to a running
    scheduler. ``workers = 1`` with ``local`` yields None: run in this process, without Dask."""
    if scheduler in (None, "", "local"):
        n = workers if workers else (os.cpu_count() or 1)
        n = check_int("workers", n, 1, 4096)
        if n == 1:
            yield None
            return
        import logging

        import dask
        from distributed import Client, LocalCluster

        # Ctrl-C reaches every process of the terminal's group: the workers ignore it and this process, which
        # records the rows, stops them (otherwise each worker prints a KeyboardInterrupt traceback)
        with dask.config.set({"distributed.scheduler.allowed-failures": ALLOWED_FAILURES,
                              "distributed.scheduler.worker-saturation": 1.0,
                              "distributed.worker.preload": [WORKER_PRELOAD],
                              # the statistical profiler samples the running task's stack every 10 ms and holds
                              # the GIL meanwhile: it slowed the flows' many small torch calls
                              "distributed.worker.profile.enabled": False}):
            cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                                   silence_logs=logging.CRITICAL)
        try:
            client = Client(cluster)
            try:
                yield client
            finally:
                with contextlib.suppress(Exception):
                    client.close()
        finally:
            with contextlib.suppress(Exception):
                cluster.close()
        return
    check_scheduler(scheduler)
    from distributed import Client

    try:
        client = Client(scheduler, timeout=20)
    except (OSError, TimeoutError) as exc:
        raise ConfigError(f"could not connect to the Dask scheduler at {scheduler}: {one_line(exc)}; start one "
                          "with `dask scheduler` and workers with `dask worker ADDRESS`") from None
    try:
        try:
            client.wait_for_workers(1, timeout=WORKER_WAIT_SECONDS)
        except (TimeoutError, OSError):
            raise ConfigError(f"no worker joined the Dask scheduler at {scheduler} within {WORKER_WAIT_SECONDS} s; "
                              "start workers with `dask worker ADDRESS`") from None
        yield client
    finally:
        with contextlib.suppress(Exception):
            client.close()


# ----------------------------------------------------------------------------- the results file
class ResultsLog:
    """``results.jsonl`` of a sweep folder: rows appended one line each, atomically enough to survive a crash
    (flush + fsync under an exclusive lock; a partly written last line is ignored, and cut off before the
    next append)."""

    def __init__(self, folder: str):
        self.path = os.path.join(folder, RESULTS_JSONL)

    def read(self) -> list[dict]:
        """Every complete row, in file order (a last line without its newline, or not JSON, is skipped)."""
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return []
        rows = []
        lines = data.split(b"\n")
        for line in lines[:-1]:  # the part after the last newline is incomplete (or empty)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(row, dict) and "key" in row:
                rows.append(row)
        return rows

    def append(self, row: dict) -> None:
        """Append ``row`` as one line (numpy values converted, non-finite floats as null)."""
        from common.signals import critical_section

        line = json.dumps(jsonable(row), allow_nan=False, separators=(",", ":")).encode() + b"\n"

        with critical_section():  # Ctrl-C waits until the line is complete
            self._append(line)

    def _append(self, line: bytes) -> None:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.lseek(fd, 0, os.SEEK_END)
            if size:
                os.lseek(fd, size - 1, os.SEEK_SET)
                if os.read(fd, 1) != b"\n":  # a crash cut the last line: drop it (its run runs again)
                    cut = _last_newline(fd, size)
                    os.ftruncate(fd, cut)
                    size = cut
            os.lseek(fd, size, os.SEEK_SET)
            view = memoryview(line)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)  # releases the lock


def _last_newline(fd: int, size: int) -> int:
    """The offset just after the last newline before ``size`` (0 if none)."""
    pos = size
    while pos > 0:
        start = max(0, pos - 65536)
        os.lseek(fd, start, os.SEEK_SET)
        chunk = os.read(fd, pos - start)
        k = chunk.rfind(b"\n")
        if k >= 0:
            return start + k + 1
        pos = start
    return 0


def latest_rows(rows) -> dict:
    """key -> the last row recorded for it."""
    out = {}
    for r in rows:
        out[r["key"]] = r
    return out


# ----------------------------------------------------------------------------- the sweep folder
def _flat(d: dict, prefix="") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def spec_difference(old: dict, new: dict) -> str | None:
    """A phrase naming the first difference between two spec.json contents (None if they are the same)."""
    if old == new:
        return None
    for k in ("kind", "experiment_file", "batch"):
        if old.get(k) != new.get(k):
            return f"{k} is {old.get(k)!r} there and {new.get(k)!r} here"
    fo, fn = _flat(old.get("base", {})), _flat(new.get("base", {}))
    for k in list(fo) + [k for k in fn if k not in fo]:
        if fo.get(k, "unset") != fn.get(k, "unset"):
            return f"base field {k} is {fo.get(k, 'unset')!r} there and {fn.get(k, 'unset')!r} here"
    go, gn = old.get("grid", []), new.get("grid", [])
    if len(go) != len(gn):
        return f"the grid has {len(go)} runs there and {len(gn)} here"
    for i, (a, b) in enumerate(zip(go, gn)):
        if a != b:
            return f"grid run {i} is {_describe(a)} there and {_describe(b)} here"
    return "the specs differ"


def prepare_folder(out: str, spec_doc: dict, *, overwrite: bool = False, create: bool = True) -> tuple[str, bool]:
    """Create the sweep folder with spec.json, or check that an existing one holds the same spec (resume).
    Refused (ConfigError): a folder that holds another sweep (unless ``overwrite``: it is emptied and the
    sweep starts over) or other files (unless ``overwrite``). ``create = False`` only checks. Returns (the
    absolute path, whether it continues a sweep: its results.jsonl counts)."""
    import shutil

    from common.io import check_out, write_json

    if not out or not str(out).strip():
        raise ConfigError("out is empty; give the sweep folder with --out")
    target = os.path.realpath(os.path.abspath(out))
    spec_path = os.path.join(target, SPEC_JSON)
    if os.path.isfile(spec_path) and not overwrite:
        try:
            with open(spec_path) as f:
                old = json.load(f)
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"out = {out!r} holds an unreadable {SPEC_JSON} ({exc}); pass --overwrite to start "
                              "the sweep over, or choose another --out") from None
        diff = spec_difference(old, spec_doc)
        if diff is not None:
            raise ConfigError(f"out = {out!r} holds another sweep ({diff}); re-run the same command to continue "
                              "that one, pass --overwrite to start over, or choose another --out")
        return target, True
    if os.path.lexists(target):
        if not os.path.isdir(target):
            raise ConfigError(f"out = {out!r} exists and is not a folder; give a folder path with --out")
        if os.listdir(target):
            if not overwrite:
                raise ConfigError(f"out = {out!r} already exists, is not empty and holds no sweep ({SPEC_JSON}); "
                                  "pass --overwrite to replace it, or choose another --out")
            cwd = os.path.realpath(os.getcwd())
            if cwd == target or cwd.startswith(target.rstrip(os.sep) + os.sep):
                raise ConfigError(f"out = {out!r} is the working folder or one of its parents; --overwrite will "
                                  "not replace it; choose another --out")
            if not os.path.isfile(spec_path):
                check_out(out, overwrite=True)  # an output folder of files only, as every program's --overwrite
            if create:
                shutil.rmtree(target)
    else:
        check_out(out)  # a place where a folder can be created
    if create:
        os.makedirs(target, exist_ok=True)
        write_json(spec_path, spec_doc)
    return target, False


def write_results_csv(folder: str, rows: list[dict], varied=()) -> str:
    """results.csv: one row per run (the last recorded), in grid order, without histories and run files."""
    import pandas as pd

    from common.io import write_text

    skip = {"history", "files", "confirmation"}
    rows = sorted(latest_rows(rows).values(), key=lambda r: r.get("index", 0))
    first = ["index", "key", "status", "error"] + [v for v in varied]
    cols = list(first)
    for r in rows:
        for k in r.get("params", {}):
            if k not in cols:
                cols.append(k)
        for k in r:
            if k not in cols and k not in skip and k != "params":
                cols.append(k)
    table = []
    for r in rows:
        flat = {**{k: v for k, v in r.items() if k not in skip and k != "params"}, **r.get("params", {})}
        table.append({c: flat.get(c) for c in cols})
    df = pd.DataFrame(table, columns=cols)
    path = os.path.join(folder, RESULTS_CSV)
    write_text(path, df.to_csv(index=False))
    return path


def _write_run_folder(folder: str, row: dict, params: dict) -> None:
    from common.io import output_dir, write_csv, write_json

    files = row.get("files")
    if not files:
        return
    dest = os.path.join(folder, "runs", row["key"])
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    with output_dir(dest, overwrite=True) as d:
        write_json(os.path.join(d, "results.json"), dict(key=row["key"], index=row["index"], params=params,
                                                         results=files["results"]))
        name, cols = files["table"]
        write_csv(os.path.join(d, name), cols)


# ----------------------------------------------------------------------------- the sweep
@dataclass(frozen=True)
class GridResult:
    """A sweep's outcome: ``rows`` (the last row recorded for every run of the spec, grid order; a run not
    yet run is absent), counts of this call (``done``, ``failed``: run now; ``skipped``: recorded before),
    ``wall_seconds``, ``runs_per_second`` (runs finished now per second of wall time), ``interrupted``,
    ``bands`` (kind train: a BandsResult, else None) and ``folder``."""

    spec: SweepSpec = field(repr=False)
    rows: list = field(repr=False)
    total: int
    done: int
    failed: int
    skipped: int
    wall_seconds: float
    runs_per_second: float
    interrupted: bool = False
    folder: str | None = None
    bands: object = field(repr=False, default=None)

    def __repr__(self) -> str:
        return (f"GridResult({self.total} runs: {self.done} done, {self.failed} failed, {self.skipped} skipped; "
                f"{self.wall_seconds:.3g} s, {self.runs_per_second:.3g} runs/s"
                f"{', interrupted' if self.interrupted else ''})")

    def summary_line(self) -> str:
        left = self.total - self.done - self.failed - self.skipped
        return (f"{self.total} runs: {self.done} done, {self.failed} failed, {self.skipped} skipped (recorded "
                f"before)" + (f", {left} not run" if left else "") + f"; wall {self.wall_seconds:.1f} s, "
                f"{self.runs_per_second:.3g} runs/s")

    @property
    def failed_rows(self) -> list:
        return [r for r in self.rows if r.get("status") == "failed"]

    def to_dataframe(self):
        """results.csv as a pandas DataFrame."""
        import pandas as pd

        if self.folder is not None and os.path.isfile(os.path.join(self.folder, RESULTS_CSV)):
            return pd.read_csv(os.path.join(self.folder, RESULTS_CSV))
        return pd.DataFrame([{k: v for k, v in r.items() if k not in ("history", "files", "confirmation")}
                             for r in self.rows])


def run_grid(spec: SweepSpec, *, scheduler: str = "local", workers: int | None = None, client=None,
              progress: bool | None = False, max_runs: int | None = None, on_row=None, retry_failed: bool = False,
              overwrite: bool = False, plots: bool = False) -> GridResult:
    """Run every run of ``spec`` not recorded yet in its folder ``spec.out`` and record each as it ends.

    scheduler / workers: see :func:`open_client` (``workers = 1``: in this process; default a LocalCluster
    with one worker process per core); ``client``: an existing distributed.Client (then scheduler and workers
    are ignored). Runs recorded ``done`` are skipped; runs recorded ``failed`` too unless ``retry_failed``.
    max_runs: run at most this many of the remaining runs (re-run to continue). on_row(row): called in this
    process after each row is recorded (raising KeyboardInterrupt there stops the sweep like Ctrl-C).
    progress: a bar on a terminal (None: only there; False: off) with counts and ETA. overwrite: start over
    in a folder that holds another sweep. plots: draw the bands figure (kind train).
    """
    t_start = time.perf_counter()
    if not spec.out:
        raise ConfigError("the sweep needs a folder: give SweepSpec(out=...)")
    experiment = load_experiment_doc(spec.experiment_file) if spec.kind == "experiment" else None
    runs = plan(spec, experiment)
    if max_runs is not None:
        max_runs = check_int("max_runs", max_runs, 0)
    if client is None:
        check_scheduler(scheduler)
        if workers is not None:
            check_int("workers", workers, 1, 4096)
    spec_doc = spec.to_dict()
    if experiment is not None:
        spec_doc["experiment_sha256"] = experiment["sha"]
    folder, resumed = prepare_folder(spec.out, spec_doc, overwrite=overwrite, create=False)  # checks only
    log = ResultsLog(folder)
    known = latest_rows(log.read()) if resumed else {}
    keys = {r.key for r in runs}
    skip = {k for k, r in known.items() if k in keys and (r.get("status") == "done" or not retry_failed)}
    todo = [r for r in runs if r.key not in skip]
    if max_runs is not None:
        todo = todo[:max_runs]
    # tasks: one run each, or batches of flows of one shape and solver setting
    if spec.batch > 1:
        groups = {}
        for r in todo:
            groups.setdefault(r.shape, []).append(r)
        task_runs = [g[i:i + spec.batch] for g in groups.values() for i in range(0, len(g), spec.batch)]
    else:
        task_runs = [[r] for r in todo]
    tasks = [dict(kind=spec.kind, runs=[dict(index=r.index, key=r.key, fields=r.fields) for r in tr],
                  experiment=experiment, keep=spec.keep_runs, batched=spec.batch > 1) for tr in task_runs]
    labels = [f"run {tr[0].index} ({_describe(tr[0].params)}, key {tr[0].key})" if len(tr) == 1 else
              f"a batch of {len(tr)} runs from run {tr[0].index}" for tr in task_runs]
    if spec.batch > 1:  # one batched state: the runs share the direct-path chunks (dynamics.batched's estimate)
        from dynamics.batched import batch_memory_estimate_bytes

        memory = [batch_memory_estimate_bytes([build_config("flow", r.fields) for r in tr]) for tr in task_runs]
    else:
        memory = [sum(r.memory_bytes for r in tr) for tr in task_runs]
    by_key = {r.key: r for r in runs}
    counts = dict(done=0, failed=0)
    from common.progress import Progress

    bar = Progress(len(todo), f"{spec.kind} sweep", unit=" runs", enabled=progress)
    interrupted = False

    def record_row(row):
        r = by_key[row["key"]]
        row["params"] = r.params
        if spec.keep_runs and row.get("status") == "done":
            _write_run_folder(folder, row, r.params)
        row.pop("files", None)
        log.append(row)
        counts[row["status"]] = counts.get(row["status"], 0) + 1
        bar.update(1)
        bar.set_postfix_str(f"{counts['done']} done, {counts['failed']} failed")
        if on_row is not None:
            on_row(row)

    def on_result(i, status, value):
        if status == "done":
            for row in value:
                record_row(row)
        else:  # the task itself failed (its worker died twice): every run of it is failed
            for r in tasks[i]["runs"]:
                record_row(dict(index=r["index"], key=r["key"], status="failed", error=value))

    def start(cl):
        check_task_memory(memory, labels, cl)  # before the folder is made and anything submitted
        prepare_folder(spec.out, spec_doc, overwrite=overwrite and not resumed)
        if tasks:
            run_tasks(execute, tasks, client=cl, on_result=on_result)

    try:
        if not tasks or client is not None:
            start(client)
        else:
            with open_client(scheduler, workers) as cl:
                start(cl)
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        bar.close()
        rows_all = log.read()
        if os.path.isfile(os.path.join(folder, SPEC_JSON)):
            write_results_csv(folder, [r for r in rows_all if r["key"] in keys], spec.varied)
    latest = latest_rows(rows_all)
    rows = [latest[r.key] for r in runs if r.key in latest]
    bands = None
    if spec.kind == "train":
        bands = training_bands(rows, spec)
        if bands is not None:
            bands.save(folder, plots=plots)
    wall = time.perf_counter() - t_start
    ran = counts["done"] + counts["failed"]
    return GridResult(spec=spec, rows=rows, total=len(runs), done=counts["done"], failed=counts["failed"],
                      skipped=len(skip), wall_seconds=wall, runs_per_second=ran / wall if wall > 0 else 0.0,
                      interrupted=interrupted, folder=folder, bands=bands)


# ----------------------------------------------------------------------------- seeds and bands
@dataclass(frozen=True)
class BandsResult:
    """Mean, standard deviation (ddof 1; 0 with one seed), min and max over the seeds of every history column,
    per group of runs that differ only in ``seed``. ``groups``: one dict per group with ``label``, ``params``
    (the grid fields other than seed), ``seeds``, ``config`` (the first run's training fields), ``columns``
    (step, n, flow_time for model 1, ``<col>_mean``, ``_std``, ``_min``, ``_max``), and for model 1 the exact
    flow (``flow``: t and losses; ``flow_loss_at_steps``, ``mean_flow_gap`` = max_k |mean L(k) - L_flow(k lr)|,
    ``inside_minmax`` = the fraction of evaluations where the flow lies within the seeds' min-max), for model 2
    the confirmation verdict per seed, the counts and ``overall`` (every seed confirmed) and the verdict of
    the mean curves."""

    groups: list

    def __repr__(self) -> str:
        parts = []
        for g in self.groups:
            extra = ""
            if g.get("verdicts") is not None:
                extra = f", confirmed {g['n_confirmed']}/{len(g['verdicts'])}, overall {g['overall']}"
            if g.get("mean_flow_gap") is not None:
                extra = f", mean_flow_gap={g['mean_flow_gap']:.4g}"
            parts.append(f"{g['label']}: {len(g['seeds'])} seeds{extra}")
        return f"BandsResult({'; '.join(parts)})"

    def to_dataframe(self):
        """bands.csv as a pandas DataFrame (a ``group`` column numbers the groups of bands.json)."""
        import pandas as pd

        return pd.concat([pd.DataFrame(dict(group=np.full(len(g["columns"]["step"]), k), **g["columns"]))
                          for k, g in enumerate(self.groups)], ignore_index=True)

    def plot(self) -> list:
        """One matplotlib Figure per group (figures.bands.plot_bands)."""
        from figures.bands import plot_bands  # presentation: figures is the top layer, loaded on demand

        return [plot_bands(g) for g in self.groups]

    def save(self, folder: str, *, plots: bool = True) -> list:
        """Write bands.csv, bands.json and (plots) bands.png (bands-<k>.png for several groups) into the sweep
        folder ``folder``, each file atomically. Returns the file names."""
        from common.io import save_figure, write_csv, write_json

        names = ["bands.csv", "bands.json"]
        order = ["group"]
        for g in self.groups:
            order.extend(c for c in g["columns"] if c not in order)
        cols = {c: [] for c in order}
        for k, g in enumerate(self.groups):
            n = len(g["columns"]["step"])
            for c in order:
                v = np.full(n, float(k)) if c == "group" else g["columns"].get(c, np.full(n, np.nan))
                cols[c].append(np.asarray(v, dtype=np.float64))
        write_csv(os.path.join(folder, "bands.csv"), {c: np.concatenate(v) for c, v in cols.items()})
        meta = [{k: v for k, v in g.items() if k != "columns"} for g in self.groups]
        write_json(os.path.join(folder, "bands.json"), dict(groups=meta))
        if plots:
            import matplotlib.pyplot as plt

            for k, fig in enumerate(self.plot()):
                name = "bands.png" if len(self.groups) == 1 else f"bands-{k}.png"
                save_figure(fig, os.path.join(folder, name), dpi=140)
                plt.close(fig)
                names.append(name)
        return names


def band_columns(histories: list[dict]) -> dict:
    """``step``, ``n`` (runs evaluated at that step) and ``<col>_mean/_std/_min/_max`` over runs at every step
    any run evaluated (a run that diverged early counts only where it has a value)."""
    steps = np.unique(np.concatenate([np.asarray(h["step"], dtype=np.float64) for h in histories]))
    names = [c for c in histories[0] if c != "step"]
    for h in histories[1:]:
        names.extend(c for c in h if c != "step" and c not in names)
    out = dict(step=steps)
    grid = {c: np.full((len(histories), steps.size), np.nan) for c in names}
    for i, h in enumerate(histories):
        pos = np.searchsorted(steps, np.asarray(h["step"], dtype=np.float64))
        for c in names:
            if c in h:
                grid[c][i, pos] = np.asarray(h[c], dtype=np.float64)
    n = np.sum(np.isfinite(grid[names[0]]), axis=0) if names else np.zeros(steps.size)
    out["n"] = n.astype(np.float64)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns (a step no run reached with a value)
        for c in names:
            g = grid[c]
            cnt = np.sum(np.isfinite(g), axis=0)
            out[f"{c}_mean"] = np.nanmean(g, axis=0)
            out[f"{c}_std"] = np.where(cnt > 1, np.nanstd(g, axis=0, ddof=1) if len(histories) > 1 else 0.0,
                                       np.where(cnt == 1, 0.0, np.nan))
            out[f"{c}_min"] = np.nanmin(g, axis=0)
            out[f"{c}_max"] = np.nanmax(g, axis=0)
    return out


def training_bands(rows: list[dict], spec: SweepSpec | None = None) -> BandsResult | None:
    """Bands over seeds of the done training rows (with histories), one group per setting of the other grid
    fields; model 1 groups get the exact flow from the same init, model 2 groups the confirmation verdicts."""
    done = [r for r in rows if r.get("status") == "done" and r.get("history")]
    if not done:
        return None
    base = dict(spec.base) if spec is not None else {}
    groups = {}
    for r in done:
        params = {k: v for k, v in r.get("params", {}).items() if k != "seed"}
        groups.setdefault(json.dumps(jsonable(params), sort_keys=True), (params, []))[1].append(r)
    out = []
    for params, members in groups.values():
        fields = {**base, **params}
        config, compare = build_config("train", fields)
        seeds = [r.get("params", {}).get("seed", config.seed) for r in members]
        cols = band_columns([r["history"] for r in members])
        g = dict(label=_describe(params) if params else "all runs", params=params, seeds=seeds,
                 config=config_fields("train", config, compare_flow=compare), columns=cols,
                 statuses=[r.get("run_status") for r in members])
        task = _task_of(config)
        g["theory"] = dict(log_A=task.log_A, H_A_given_R=task.H_A_given_R, log_D=math.log(task.D))
        if config.model == "linear":
            cols["flow_time"] = cols["step"] * config.lr
            g.update(_flow_band(config, cols))
        else:
            g.update(_verdicts(members, seeds, cols, g["theory"], config.eps_conv))
        out.append(g)
    return BandsResult(groups=out)


def _task_of(config):
    from models.task import make_task

    return make_task(config.task)


def _flow_band(config, cols) -> dict:
    """The exact flow of model 1 from the runs' init, to the last evaluated flow time, and its distance to the
    seeds' band."""
    from dynamics.config import ALPHA_MAX, ALPHA_MIN, FlowConfig

    from .results import analyze_flow

    none = dict(flow=None, mean_flow_gap=None, inside_minmax=None)
    t_end = float(np.nanmax(cols["flow_time"])) if cols["flow_time"].size else 0.0
    if not (ALPHA_MIN <= config.init_scale <= ALPHA_MAX) or t_end <= 0:
        return none
    try:
        fc = FlowConfig(task=config.task, init=config.init, alpha=config.init_scale, t_max=t_end,
                        loss_target=1e-300, rtol=1e-11)
        fc.check_memory()
        res = analyze_flow(fc, progress=False)
    except ConfigError:  # a flow this machine cannot integrate: bands without it
        return none
    if res.status != "t_max":
        return none
    run = res.run
    times = cols["flow_time"]
    at = np.array([run.metrics_at(float(min(t, run.t_final)))["loss"] for t in times])
    cols["flow_loss"] = at
    gap = np.abs(cols["loss_mean"] - at)
    tol = 1e-6 * np.maximum(1.0, np.abs(at))  # the trainers' losses are float32
    inside = (at >= cols["loss_min"] - tol) & (at <= cols["loss_max"] + tol)
    tr = res.trajectory
    flow = {k: np.asarray(tr[k], dtype=np.float64) for k in ("t", "loss", "relation_loss", "subject_loss")}
    return dict(flow=flow, flow_status=res.status, mean_flow_gap=float(np.nanmax(gap)) if gap.size else None,
                mean_flow_gap_at_step=float(cols["step"][int(np.nanargmax(gap))]) if gap.size else None,
                inside_minmax=float(np.mean(inside)) if inside.size else None)


def _verdicts(members, seeds, cols, theory, eps_conv) -> dict:
    from .confirm import confirmation_report

    per = []
    for s, r in zip(seeds, members):
        cf = r.get("confirmation") or {}
        claims = {k: bool(cf.get(k, {}).get("confirmed", False)) for k in
                  ("first_plateau", "second_plateau", "hallucination_gap", "convergence")}
        per.append(dict(seed=s, confirmed=bool(r.get("confirmed", False)), claims=claims))
    mean_hist = {k: cols[f"{k}_mean"] for k in ("loss", "relation_loss", "subject_loss", "hallucination_gap",
                                                 "accuracy")}
    mean_hist["step"] = cols["step"]
    ok = np.all([np.isfinite(v) for v in mean_hist.values()], axis=0)
    mean_report = None
    if ok.any():
        mean_report = confirmation_report({k: v[ok] for k, v in mean_hist.items()}, log_A=theory["log_A"],
                                          H_A_given_R=theory["H_A_given_R"], eps_conv=eps_conv)
    n_ok = sum(v["confirmed"] for v in per)
    return dict(verdicts=per, n_confirmed=n_ok, overall=bool(per) and n_ok == len(per),
                claims_confirmed={k: sum(v["claims"][k] for v in per) for k in per[0]["claims"]} if per else {},
                mean_curve_confirmed=None if mean_report is None else mean_report["all_confirmed"])


__all__ = ["KINDS", "SweepSpec", "PlannedRun", "GridResult", "BandsResult", "ResultsLog", "parse_value",
           "parse_axis", "product_grid", "read_run_list", "field_names", "canonical_name", "config_fields",
           "build_config", "resolved_dict", "run_key", "plan", "execute", "call_task", "run_tasks", "open_client",
           "run_grid", "training_bands", "band_columns", "prepare_folder", "spec_difference", "write_results_csv",
           "check_task_memory", "check_scheduler", "worker_memory_limits", "latest_rows", "load_experiment_doc", "one_line",
           "jsonable"]
