"""The sweep's grid and spec (analysis.sweeps.runner): the grid syntax of the command line (parse_value, parse_axis,
product_grid, read_run_list; torch-free, so that ``python -m analysis.grid --help`` stays cheap), the fields
of each kind (field_names, canonical_name, config_fields, build_config, resolved_dict, run_key), the spec
(SweepSpec, PlannedRun, load_experiment_doc, StagedTrain) and plan (every run validated and keyed)."""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import os
import re
from dataclasses import dataclass, field

import numpy as np

from common.errors import ConfigError, check_choice, check_int
from common.io import jsonable

KINDS = ("flow", "train", "experiment", "capacity")
MAX_RUNS = 1_000_000
# most flows one batched state holds: SweepSpec.batch (analysis.grid flow --batch-flows) and analysis.sweep's
# --batch-flows (analysis.sweeps.phase_sweep)
MAX_BATCH_FLOWS = 100_000
TASK_SEED_NAME = "task_seed"  # the train kind's name of the task's seed (its own ``seed`` seeds the training)


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


_LINLOG = re.compile(r"(log|lin):([^:]+):([^:]+):([^:]+)")
_RANGE = re.compile(r"([+-]?\d+):([+-]?\d+)(?::([+-]?\d+))?")


def _split_axis(text: str) -> tuple[str, str]:
    name, eq, values = str(text).partition("=")
    name = name.strip()
    if not eq or not name or not values.strip():
        raise ConfigError(f"grid axis {text!r} is not NAME=VALUES (e.g. alpha=1e-5,1e-4 or seed=0:8 or "
                          "alpha=log:1e-6:1e-2:5)")
    return name, values.strip()


def axis_size(text: str) -> int:
    """How many values ``NAME=VALUES`` gives, computed from the syntax alone (nothing is built: a range of
    10**13 integers is counted, not listed); ConfigError if the syntax is wrong."""
    name, v = _split_axis(text)
    m = _LINLOG.fullmatch(v)
    if m:
        n = parse_value(m.group(4))
        if isinstance(n, float) and n.is_integer() and abs(n) <= 2 ** 53:
            n = int(n)  # 1e3 as typed for 1000
        if isinstance(n, bool) or not isinstance(n, int):
            raise ConfigError(f"grid axis {text!r}: COUNT of {m.group(1)}:LO:HI:COUNT = {m.group(4)!r} is not an "
                              "integer; give an integer >= 1")
        if n < 1:
            raise ConfigError(f"grid axis {text!r}: COUNT of {m.group(1)}:LO:HI:COUNT = {n} is too small; give an "
                              "integer >= 1")
        return n
    m = _RANGE.fullmatch(v)
    if m:
        lo, hi, step = int(m.group(1)), int(m.group(2)), int(m.group(3) or 1)
        if step == 0:
            raise ConfigError(f"grid axis {text!r}: the STEP of LO:HI:STEP must not be 0")
        n = len(range(lo, hi, step))  # O(1): the range is never listed here
        if not n:
            raise ConfigError(f"grid axis {text!r}: range({lo}, {hi}, {step}) is empty")
        return n
    return v.count(",") + 1


def check_grid_size(sizes, listed: int | None = None) -> int:
    """The number of runs of axes of ``sizes`` ((name, count) pairs; with ``listed`` runs of a run list, every
    listed run with every combination); ConfigError naming the estimate if it exceeds MAX_RUNS."""
    sizes = list(sizes)
    total = math.prod(n for _, n in sizes) * (1 if listed is None else listed)
    if total > MAX_RUNS:
        parts = [f"{name}: {n:,} values" for name, n in sizes] + ([] if listed is None else
                                                                  [f"--list: {listed:,} runs"])
        raise ConfigError(f"the grid has {total:,} runs ({' x '.join(parts)}); at most {MAX_RUNS:,} are allowed; "
                          "split the sweep")
    return total


def _finite_number(text: str, what: str, raw: str) -> float:
    x = parse_value(raw)
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise ConfigError(f"grid axis {text!r}: {what} = {raw!r} is not a number; LO and HI must be finite numbers")
    if not math.isfinite(x):
        raise ConfigError(f"grid axis {text!r}: {what} = {raw!r} is not finite; LO and HI must be finite numbers")
    return x


def parse_axis(text: str) -> tuple[str, list]:
    """``NAME=VALUES`` -> (name, values). VALUES: ``a,b,c`` (a list), ``LO:HI`` or ``LO:HI:STEP`` (the integers
    range(LO, HI, STEP)), ``log:LO:HI:COUNT`` (COUNT log-spaced numbers from LO to HI) or
    ``lin:LO:HI:COUNT`` (COUNT evenly spaced). The size is checked (:func:`axis_size`, at most MAX_RUNS values)
    before any value is built; LO and HI must be finite (no numpy warning, one ConfigError)."""
    name, v = _split_axis(text)
    n = axis_size(text)
    if n > MAX_RUNS:
        raise ConfigError(f"grid axis {text!r} has {n:,} values; at most {MAX_RUNS:,} runs are allowed")
    m = _LINLOG.fullmatch(v)
    if m:
        lo, hi = _finite_number(text, "LO", m.group(2)), _finite_number(text, "HI", m.group(3))
        if m.group(1) == "log" and not (lo > 0 and hi > 0):
            raise ConfigError(f"grid axis {text!r}: log:LO:HI:COUNT needs LO > 0 and HI > 0")
        with np.errstate(all="raise"):
            try:
                values = np.geomspace(lo, hi, n) if m.group(1) == "log" else np.linspace(lo, hi, n)
            except FloatingPointError:
                values = np.array([np.inf])
        if not np.all(np.isfinite(values)):
            raise ConfigError(f"grid axis {text!r}: the values overflow (LO and HI too far apart); give LO and HI "
                              "of at most about 1e307 in size")
        return name, [float(x) for x in values]
    m = _RANGE.fullmatch(v)
    if m:
        return name, list(range(int(m.group(1)), int(m.group(2)), int(m.group(3) or 1)))
    parts = [p for p in v.split(",")]
    if any(not p.strip() for p in parts):
        raise ConfigError(f"grid axis {text!r} has an empty value; separate values by single commas")
    return name, [parse_value(p) for p in parts]


def product_grid(axes) -> list[dict]:
    """Every combination of the axes ((name, values) pairs; the last varies fastest) as a list of dicts."""
    axes = [(n, v if isinstance(v, (list, tuple, range)) else list(v)) for n, v in axes]
    names = [n for n, _ in axes]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ConfigError(f"grid axis {dup!r} is given twice; give all its values in one NAME=VALUES")
    check_grid_size((n, len(v)) for n, v in axes)
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
        header = [str(h).strip() for h in (reader.fieldnames or [])]
        dup = next((h for i, h in enumerate(header) if h in header[:i]), None)
        if dup is not None:  # DictReader would keep the last column of that name silently
            raise ConfigError(f"run list {path!r}: column {dup!r} appears twice in the CSV header; give each field "
                              "one column")
        rows = [{k.strip(): parse_value(v) for k, v in r.items() if k is not None and v not in (None, "")}
                for r in reader]  # an empty cell leaves the field at its base value
    else:
        def unique_keys(pairs):
            seen = {}
            for k, v in pairs:
                if k in seen:
                    raise ConfigError(f"run list {path!r}: field {k!r} is given twice in one run; give each field "
                                      "once")
                seen[k] = v
            return seen

        try:
            doc = json.loads(text, object_pairs_hook=unique_keys)
            rows = doc if isinstance(doc, list) else None
        except json.JSONDecodeError:
            try:
                rows = [json.loads(line, object_pairs_hook=unique_keys) for line in text.splitlines()
                        if line.strip()]
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
    if kind == "capacity":
        from analysis.sweeps.capacity_runs import CAPACITY_FIELDS

        return CAPACITY_FIELDS
    task = _task_fields()
    if kind == "flow":
        from dynamics.flow.config import FlowConfig

        return task + tuple(f.name for f in dataclasses.fields(FlowConfig) if f.name != "task")
    if kind == "train":
        from dynamics.training import TrainConfig

        own = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name != "task")
        return tuple(TASK_SEED_NAME if n == "seed" else n for n in task) + own + ("compare_flow",)
    from dynamics.experiment.file import FLOW_KEYS, TASK_KEYS

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


@dataclass(frozen=True)
class StagedTrain:
    """One staged trainer run (kind train with an experiment file; SPEC §6.1): ``config`` (a TrainConfig whose
    task is the file's [task], with the run's task fields applied over it) trained through the stages and
    evaluation sets of ``experiment`` (an ExperimentConfig) by dynamics.train_schedule."""

    config: object
    experiment: object


def build_config(kind: str, fields: dict, experiment: dict | None = None):
    """The validated configuration of one run from canonical fields: a FlowConfig (flow), a (TrainConfig,
    compare_flow) pair (train) or a StagedTrain (train with an experiment file: ``experiment`` = dict(doc,
    base_dir) of the parsed file), an ExperimentConfig (experiment; ``experiment`` as for train), a
    CapacitySettings or TransformerSettings of one size and seed (capacity: analysis.sweeps.capacity_runs).
    ConfigError (with the field's message) if a value is not allowed."""
    if kind == "capacity":
        from analysis.sweeps.capacity_runs import capacity_settings

        return capacity_settings(fields)
    from models.task import TaskConfig

    task_names = set(_task_fields())
    if kind == "experiment":
        from dynamics.experiment.file import experiment_from_dict

        if experiment is None:
            raise ConfigError("an experiment sweep needs an experiment file")
        overrides = {(f"task.{k}" if k in task_names else f"flow.{k}"): v for k, v in fields.items()}
        return experiment_from_dict(experiment["doc"], base_dir=experiment["base_dir"], overrides=overrides)
    if kind == "train" and experiment is not None:
        return _staged_train(fields, experiment, task_names)
    if kind == "train":
        task = {("seed" if k == TASK_SEED_NAME else k): v for k, v in fields.items()
                if k in task_names - {"seed"} or k == TASK_SEED_NAME}
        own = {k: v for k, v in fields.items() if k not in task_names - {"seed"} and k != TASK_SEED_NAME
               and k != "compare_flow"}
        from dynamics.training import TrainConfig

        compare = fields.get("compare_flow", False)
        if not isinstance(compare, bool):
            raise ConfigError(f"compare_flow = {compare!r} must be true or false")
        config = _construct(TrainConfig, own, TaskConfig, task)
        if compare and config.model != "linear":
            raise ConfigError("compare_flow needs model = 'linear' (the exact flow is model 1's)")
        return config, compare
    from dynamics.flow.config import FlowConfig

    task = {k: v for k, v in fields.items() if k in task_names}
    own = {k: v for k, v in fields.items() if k not in task_names}
    return _construct(FlowConfig, own, TaskConfig, task)


def _staged_train(fields: dict, experiment: dict, task_names: set) -> StagedTrain:
    """A StagedTrain: the file's [task] with the run's task fields over it (as the experiment kind overrides
    it), the other fields the TrainConfig's; every stage's stop rule checked against the trainer's step."""
    from dynamics.experiment.file import experiment_from_dict
    from dynamics.training import TrainConfig
    from dynamics.training.staged import stage_leg

    if fields.get("compare_flow", False) is not False:
        raise ConfigError(f"compare_flow = {fields['compare_flow']!r}: the exact flow is not paired with the rows "
                          "of a staged sweep; leave compare_flow unset (frd-train --experiment FILE --compare-flow "
                          "pairs one seed)")
    overrides = {f"task.{'seed' if k == TASK_SEED_NAME else k}": v for k, v in fields.items()
                 if k in task_names - {"seed"} or k == TASK_SEED_NAME}
    exp = experiment_from_dict(experiment["doc"], base_dir=experiment["base_dir"], overrides=overrides)
    own = {k: v for k, v in fields.items() if k not in task_names - {"seed"} and k != TASK_SEED_NAME
           and k != "compare_flow"}
    try:
        config = TrainConfig(task=exp.flow.task, **own)
    except TypeError as exc:
        raise ConfigError(f"{exc}") from None
    for i, st in enumerate(exp.stages):  # until_time shorter than half a step: refused here, before any run
        stage_leg(config, i, st, None, None)
    return StagedTrain(config=config, experiment=exp)


def _construct(cls, own: dict, task_cls, task: dict):
    try:
        return cls(task=task_cls(**task), **own)
    except TypeError as exc:  # a value of the wrong type that the checks did not catch
        raise ConfigError(f"{exc}") from None


def resolved_dict(kind: str, config, experiment: dict | None = None) -> dict:
    """Every resolved setting of a run (what its key hashes)."""
    if kind == "flow":
        return dict(kind=kind, config=config.to_dict())
    if kind == "train" and isinstance(config, StagedTrain):  # the file's sha and stages, as the experiment kind
        exp = config.experiment
        return dict(kind=kind, config=config.config.to_dict(), experiment_sha=experiment["sha"],
                    stages=[st.name for st in exp.stages], eval_sets=list(exp.set_names))
    if kind == "train":
        c, compare = config
        return dict(kind=kind, config=c.to_dict(), compare_flow=compare)
    if kind == "capacity":
        return dict(kind=kind, model=type(config).__name__, settings=config.to_dict())
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
    """A sweep: ``kind`` (flow, train, experiment or capacity), ``base`` fields (canonical name -> value;
    unset fields keep the configuration's defaults), ``grid`` (one dict of field overrides per run), ``out`` (the sweep
    folder), ``experiment_file`` (kind experiment: the TOML file whose [task] and [flow] the fields override;
    kind train: the file whose stages each run trains through, dynamics.train_schedule, its [task] overridden by
    the task fields),
    ``batch`` (kind flow: up to this many flows of one shape per task, integrated together by
    dynamics.run_flows_batched: phase times, plateau and step counts, no conservation or trajectory;
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
        object.__setattr__(self, "batch", check_int("batch", self.batch, 1, MAX_BATCH_FLOWS))
        if self.batch > 1 and self.kind != "flow":
            raise ConfigError(f"batch = {self.batch} applies to flow sweeps only (the batched solver integrates "
                              "flows); use batch = 1")
        if self.kind == "experiment":
            if not self.experiment_file:
                raise ConfigError("an experiment sweep needs experiment_file (a TOML experiment file)")
        elif self.experiment_file is not None and self.kind != "train":
            raise ConfigError(f"experiment_file is for experiment and train sweeps, not {self.kind}")

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
    return dict(doc=doc, base_dir=os.path.dirname(os.path.abspath(path)), sha=hashlib.sha256(raw).hexdigest(),
                path=os.path.abspath(path))


def _memory_of(kind: str, config) -> int:
    if kind == "flow":
        return int(config.memory_estimate_bytes())
    if kind == "train" and isinstance(config, StagedTrain):
        return int(sum(config.config.memory_estimate_bytes(False).values()))
    if kind == "train":
        c, compare = config
        return int(sum(c.memory_estimate_bytes(compare).values()))
    if kind == "capacity":
        from analysis.sweeps.capacity_runs import capacity_memory_bytes

        return capacity_memory_bytes(config)
    return int(config.flow.memory_estimate_bytes())


def describe(params: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items()) or "the base configuration"


def plan(spec: SweepSpec, experiment: dict | None = None) -> list[PlannedRun]:
    """Validate every run of ``spec`` and give each its key (ConfigError naming the run if a value is not
    allowed, or if two runs resolve to the same configuration)."""
    if spec.experiment_file is not None and experiment is None:
        experiment = load_experiment_doc(spec.experiment_file)
    runs, seen = [], {}
    for i, g in enumerate(spec.grid):
        fields = {**spec.base, **g}
        try:
            config = build_config(spec.kind, fields, experiment)
        except ConfigError as exc:
            raise ConfigError(f"run {i} ({describe(g)}): {exc}") from None
        key = run_key(resolved_dict(spec.kind, config, experiment))
        if key in seen:
            raise ConfigError(f"runs {seen[key]} ({describe(spec.grid[seen[key]])}) and {i} ({describe(g)}) "
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
        from dynamics.flow.batched import check_batch

        for r in runs:
            try:
                check_batch([build_config("flow", r.fields)])
            except ConfigError as exc:
                raise ConfigError(f"run {r.index} ({describe(r.params)}) cannot be batched: {exc}") from None
    return runs
