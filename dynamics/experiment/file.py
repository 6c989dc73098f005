"""Experiment files (TOML) -> :class:`dynamics.experiment.schedule.ExperimentConfig`, every key validated.

The format (every table optional except ``[[stages]]``)::

    [task]                      # models.TaskConfig: S, R, D, T, N, facts, facts_file, zipf_subjects,
    S = 64                      #   zipf_relations, seed
    R = 4
    D = 8

    [flow]                      # dynamics.FlowConfig: init, alpha, init_file, t_max (the longest any
    alpha = 1e-5                #   stage may run), eps_conv, backend, method, rtol, atol, dtype, device,
                                #   samples_per_octave, max_steps

    [distributions.old]         # named training distributions (models.weights.Distribution):
    subjects = "0:32"           #   zipf_subjects, zipf_relations, subjects, relations ("lo:hi" or a list),
    [distributions.new]         #   weights_file (.npy/.csv of S x R weights), mix
    subjects = "32:64"
    [distributions.replay]
    mix = [[0.9, "new"], [0.1, "old"]]   # coefficient, distribution name

    [eval_sets.old]             # named evaluation sets, same keys as distributions
    subjects = "0:32"

    [experiment]
    eval = ["all", "train", "seen", "unseen", "old"]   # default: every built-in set and every [eval_sets]

    [[stages]]
    name = "pretrain"
    train = "old"               # a [distributions] name, or an inline table {zipf_subjects = 1.0}
    until_loss = 0.01           # stop when the loss on `on` (default "train") falls to this level ...
    [[stages]]
    name = "finetune"
    train = "replay"
    until_time = 2000.0         # ... or after this much flow time (either or both; at least one)

Relative paths (facts_file, init_file, weights_file) are relative to the experiment file's folder.
"""
from __future__ import annotations

import dataclasses
import os
import tomllib

from common.errors import ConfigError
from models.task import TaskConfig
from models.weights import Distribution

from dynamics.flow.config import FlowConfig
from dynamics.experiment.schedule import BUILTIN_SETS, EvalSpec, ExperimentConfig, Stage, Stop

TOP_KEYS = ("task", "flow", "distributions", "eval_sets", "experiment", "stages")
TASK_KEYS = tuple(f.name for f in dataclasses.fields(TaskConfig))
FLOW_KEYS = tuple(f.name for f in dataclasses.fields(FlowConfig) if f.name not in ("task", "loss_target"))
DIST_KEYS = ("zipf_subjects", "zipf_relations", "subjects", "relations", "weights_file", "mix")
STAGE_KEYS = ("name", "train", "until_time", "until_loss", "on")
EXPERIMENT_KEYS = ("eval",)
PATH_KEYS = ("facts_file", "init_file", "weights_file")
MAX_FILE_BYTES = 2 ** 20  # experiment files are a few kB; a larger one is refused before it is read


def _check_keys(where: str, table, allowed) -> dict:
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table, got {table!r}")
    unknown = [k for k in table if k not in allowed]
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(allowed)}")
    return table


def _paths(table: dict, base: str) -> dict:
    out = dict(table)
    for k in PATH_KEYS:
        if isinstance(out.get(k), str) and not os.path.isabs(out[k]):
            out[k] = os.path.join(base, out[k])
    return out


def _distribution(where: str, name: str, spec, named: dict, base: str, stack=()) -> Distribution:
    """A Distribution from a table (or, for a stage's ``train``, the name of one)."""
    if isinstance(spec, str):
        if spec not in named:
            raise ConfigError(f"{where}: distribution {spec!r} is not defined; define [distributions.{spec}]"
                              + (f" (defined: {', '.join(named)})" if named else ""))
        return _distribution(f"[distributions.{spec}]", spec, named[spec], named, base, stack)
    spec = dict(_check_keys(where, spec, DIST_KEYS))
    if name in stack:
        raise ConfigError(f"{where}: distribution {name!r} mixes itself (a cycle through {' -> '.join(stack)})")
    if "mix" in spec:
        mix = spec.pop("mix")
        if not isinstance(mix, list) or not mix:
            raise ConfigError(f"{where}: mix must be a non-empty list of [coefficient, name] pairs")
        parts = []
        for item in mix:
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[1], str)
                    and isinstance(item[0], (int, float)) and not isinstance(item[0], bool)):
                raise ConfigError(f"{where}: mix entry {item!r} must be [coefficient, \"name\"]")
            if item[1] not in named:
                raise ConfigError(f"{where}: mix names {item[1]!r}, which is not a [distributions] table")
            parts.append((item[0], _distribution(f"[distributions.{item[1]}]", item[1], named[item[1]], named,
                                                 base, stack + (name,))))
        spec["mix"] = tuple(parts)
    try:
        return Distribution(name=name, **_paths(spec, base))
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def experiment_from_dict(doc: dict, *, base_dir: str = ".", overrides: dict | None = None) -> ExperimentConfig:
    """Build and validate the experiment of a parsed file. overrides: {"task.S": 256, "flow.alpha": 1e-3, ...}
    (the command line's flags) replace file values."""
    doc = _check_keys("the experiment file", doc, TOP_KEYS)
    task = dict(_check_keys("[task]", doc.get("task", {}), TASK_KEYS))
    flow = dict(_check_keys("[flow]", doc.get("flow", {}), FLOW_KEYS))
    for key, value in (overrides or {}).items():
        section, _, field_name = key.partition(".")
        target = {"task": task, "flow": flow}.get(section)
        if target is None or field_name not in (TASK_KEYS if section == "task" else FLOW_KEYS):
            raise ConfigError(f"override {key!r}: not a [task] or [flow] key; allowed: "
                              + ", ".join([f"task.{k}" for k in TASK_KEYS] + [f"flow.{k}" for k in FLOW_KEYS]))
        target[field_name] = value
    base = base_dir
    try:
        task_config = TaskConfig(**_paths(task, base))
    except TypeError as exc:
        raise ConfigError(f"[task]: {exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"[task]: {exc}") from None
    try:
        flow_config = FlowConfig(task=task_config, **_paths(flow, base))
    except ConfigError as exc:
        raise ConfigError(f"[flow]: {exc}") from None
    named = doc.get("distributions", {})
    if not isinstance(named, dict):
        raise ConfigError("[distributions] must be a table of named distributions")
    for k, v in named.items():  # every definition checked, used or not
        _distribution(f"[distributions.{k}]", k, v, named, base)
    user_sets = doc.get("eval_sets", {})
    if not isinstance(user_sets, dict):
        raise ConfigError("[eval_sets] must be a table of named evaluation sets")
    specs = {}
    for k, v in user_sets.items():
        if k in BUILTIN_SETS:
            raise ConfigError(f"[eval_sets.{k}]: {k!r} is a built-in set; choose another name")
        specs[k] = EvalSpec(k, _distribution(f"[eval_sets.{k}]", k, v, named, base))
    exp = _check_keys("[experiment]", doc.get("experiment", {}), EXPERIMENT_KEYS)
    if "eval" in exp:
        if not isinstance(exp["eval"], list) or not all(isinstance(x, str) for x in exp["eval"]):
            raise ConfigError("[experiment] eval must be a list of set names")
        sets = []
        for n in exp["eval"]:
            if n in specs:
                sets.append(specs[n])
            elif n in BUILTIN_SETS:
                sets.append(n)
            else:
                raise ConfigError(f"[experiment] eval: {n!r} is neither built in ({', '.join(BUILTIN_SETS)}) nor "
                                  f"an [eval_sets.{n}] table")
    else:
        sets = list(BUILTIN_SETS) + list(specs.values())
    stages_doc = doc.get("stages")
    if not isinstance(stages_doc, list) or not stages_doc:
        raise ConfigError("the experiment file needs at least one [[stages]] table (name, train, until_time "
                          "and/or until_loss)")
    stages = []
    for i, sd in enumerate(stages_doc):
        where = f"[[stages]] #{i + 1}"
        sd = _check_keys(where, sd, STAGE_KEYS)
        name = sd.get("name", f"stage{i + 1}")
        where = f"stage {name!r}"
        train = sd.get("train", {})
        dist = _distribution(where, train if isinstance(train, str) else f"{name}.train", train, named, base)
        try:
            stop = Stop(time=sd.get("until_time"), loss=sd.get("until_loss"), on=sd.get("on", "train"))
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        stages.append(Stage(name, dist, stop))
    return ExperimentConfig(flow=flow_config, stages=tuple(stages), eval_sets=tuple(sets))


def load_experiment(path: str, *, overrides: dict | None = None) -> ExperimentConfig:
    """Read and validate an experiment file (ConfigError naming the file and the bad key or value)."""
    if not os.path.isfile(path):
        raise ConfigError(f"experiment file {path!r} does not exist")
    try:
        size = os.path.getsize(path)
        if size > MAX_FILE_BYTES:  # checked before reading: a 100 MB value is not parsed, nor echoed
            raise ConfigError(f"{path}: is {size / 2**20:.1f} MiB; an experiment file is at most "
                              f"{MAX_FILE_BYTES // 2**20} MiB of TOML")
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
        text = raw.decode("utf-8")
        doc = tomllib.loads(text)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); an "
                          f"experiment file is TOML, which is UTF-8") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to parse (arrays or tables inside one another hundreds of "
                          f"levels deep); an experiment file needs a few levels") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        return experiment_from_dict(doc, base_dir=os.path.dirname(os.path.abspath(path)), overrides=overrides)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
