"""Staged trainer runs as sweep rows and their bands over seeds (analysis.sweeps.runner; SPEC §6.1).

A train sweep with an experiment file (``frd-grid train --experiment FILE``, ``frd-train --experiment FILE
--seeds N``) runs, per row, dynamics.train_schedule of one TrainConfig (one seed) through the file's stages and
evaluation sets. :func:`staged_row` is such a row: per stage ``<stage>.index``, ``.step_start``,
``.step_end``, ``.steps``, ``.t_start``, ``.t_end`` (the run's time unit: flow time step * lr for model 1,
steps for model 2), ``.reason`` (time, loss, steps or diverged), ``.by_own_rule``, ``.cut`` (ended by the step
budget), ``.on``, ``.end_loss`` and ``.end_loss_se`` (the loss on ``on`` at the stage's end and its held-out
standard error), and per evaluation set ``<stage>.<set>.t1``, ``.t2``, ``.t3`` (analysis.results.training
.staged_phases; no plateau is defined for staged runs), ``.t1_in_stage``, ``.t2_in_stage``, ``.t3_in_stage``
(t_i minus the stage's t_start: where the seeds' stages start at different times, after an ``until_loss``
rule, these compare the stage's own course) and ``.loss_end`` (the set's loss at the stage's last row);
``history``: every history column (``stage``, ``<set>_<metric>``).

:func:`staged_bands` groups the rows that differ only in ``seed`` and gives, per group, for every stage the
mean, standard deviation (ddof 1; 0 with one seed; NaN with none), min, max and ``n`` (the seeds with a value)
over seeds of the steps the stage took, its t_start / t_end, end_loss, and per set of t1, t2, t3, the same
from the stage's start and loss_end
(a phase time no evaluation reached counts in no statistic: ``n`` says how many seeds reached it), the seeds
the budget cut and those that diverged; and per stage the bands of every history column on the steps counted
from each seed's start of the stage, a grid common to the seeds (analysis.sweeps.bands.band_columns, as for
plain runs).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import numpy as np

from common.io import jsonable

from analysis.sweeps.bands import BandsResult, band_columns, save_group_figures
from analysis.sweeps.spec import build_config, config_fields, describe

PHASE_KEYS = ("t1", "t2", "t3")
STAGE_QUANTITIES = ("steps", "t_start", "t_end", "end_loss", "end_loss_se")
IN_STAGE_KEYS = tuple(f"{k}_in_stage" for k in PHASE_KEYS)  # t_i - the stage's t_start: seeds' stages start apart
SET_QUANTITIES = PHASE_KEYS + IN_STAGE_KEYS + ("loss_end",)
STAT_KEYS = ("n", "mean", "std", "min", "max")


# ----------------------------------------------------------------------------- one row (a worker)
def staged_row(run, experiment: dict, keep: bool) -> tuple[dict, dict | None]:
    """Train ``run`` (a spec.StagedTrain) through its stages; (the row, the run folder's files with ``keep``)."""
    from dynamics.training import train_schedule

    from analysis.results.training import staged_history_columns, summarize_staged_training

    exp = run.experiment
    result = train_schedule(run.config, exp.stages, eval_sets=exp.eval_sets, progress=False)
    summary = summarize_staged_training(result, experiment.get("path", f"sha256:{experiment.get('sha')}"))
    cols = staged_history_columns(result)
    row = staged_columns(summary, cols)
    row["train_seconds"] = result.train_seconds
    row["history"] = {k: np.asarray(v, dtype=np.float64).tolist() for k, v in cols.items()}
    files = dict(results=summary, table=("history.csv", cols)) if keep else None
    return row, files


def staged_columns(summary: dict, history: dict) -> dict:
    """The row's numbers from a staged run's summary (summarize_staged_training) and history columns: run_status
    (completed, cut: some stage ended by the step budget, or diverged), message, and the per-stage columns of
    the module docstring."""
    cut = list(summary["cut_stages"])
    status = "diverged" if summary["status"] == "diverged" else ("cut" if cut else "completed")
    message = ""
    if status == "diverged":
        message = f"training diverged in stage {summary['stages'][-1]['name']}" if summary["stages"] else \
            "training diverged at the start"
    elif cut:
        message = (f"stage(s) {', '.join(cut)} used all {summary['config']['steps']} steps without meeting their "
                   "stop rule")
    row = dict(run_status=status, message=message, cut_stages=";".join(cut))
    stage_col = np.asarray(history["stage"], dtype=np.float64)
    for st in summary["stages"]:
        n = st["name"]
        for k in ("index", "step_start", "step_end"):
            row[f"{n}.{k}"] = st[k]
        row[f"{n}.steps"] = st["step_end"] - st["step_start"]
        for k in ("t_start", "t_end", "reason", "by_own_rule"):
            row[f"{n}.{k}"] = st[k]
        row[f"{n}.cut"] = st["reason"] == "steps"
        for k in ("on", "end_loss", "end_loss_se"):
            row[f"{n}.{k}"] = st[k]
        last = np.flatnonzero(stage_col == st["index"])
        for set_name, ph in st["phases"].items():
            for k in PHASE_KEYS:
                row[f"{n}.{set_name}.{k}"] = ph[k]
                row[f"{n}.{set_name}.{k}_in_stage"] = None if ph[k] is None else ph[k] - st["t_start"]
            col = "loss" if set_name == "train" else f"{set_name}_loss"
            row[f"{n}.{set_name}.loss_end"] = float(history[col][last[-1]]) if last.size else None
    return row


# ----------------------------------------------------------------------------- bands over seeds
def stats(values) -> dict:
    """n (finite values), mean, std (ddof 1; 0 for one value), min, max of ``values`` (None counts as missing;
    NaN statistics where none is finite)."""
    x = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    x = x[np.isfinite(x)]
    if not x.size:
        return dict(n=0, mean=math.nan, std=math.nan, min=math.nan, max=math.nan)
    return dict(n=int(x.size), mean=float(x.mean()), std=float(x.std(ddof=1)) if x.size > 1 else 0.0,
                min=float(x.min()), max=float(x.max()))


@dataclass(frozen=True)
class StagedBandsResult(BandsResult):
    """Bands over seeds of staged trainer runs (:func:`staged_bands`). Each group (see BandsResult) has, besides
    ``label``, ``params``, ``seeds``, ``config`` and ``columns`` (``stage``, ``stage_step``: steps since each
    seed's start of the stage, ``n`` and ``<col>_mean/_std/_min/_max``, the run's step as ``step_*``), ``stages`` (one dict per stage of the file: name, index,
    ``seeds_run``, ``cut_seeds``, ``diverged_seeds``, ``n_cut`` and per quantity the statistics of STAT_KEYS;
    ``sets``: set -> quantity -> statistics), ``sets`` (the evaluation sets), ``time_unit`` and ``lr``."""

    def __repr__(self) -> str:
        parts = [f"{g['label']}: {len(g['seeds'])} seeds, cut {sum(s['n_cut'] for s in g['stages'])}"
                 for g in self.groups]
        return f"StagedBandsResult({'; '.join(parts)})"

    def stage_table(self) -> dict:
        """stage_bands.csv's columns: one row per group, stage, set ('' for the stage's own quantities) and
        quantity, with n, mean, std, min, max."""
        recs = []
        for k, g in enumerate(self.groups):
            for s in g["stages"]:
                items = [("", q, s[q]) for q in STAGE_QUANTITIES]
                items += [(name, q, per[q]) for name, per in s["sets"].items() for q in SET_QUANTITIES]
                for set_name, q, st in items:
                    recs.append(dict(group=k, stage=s["name"], stage_index=s["index"], set=set_name, quantity=q,
                                     **st))
        return {c: [r[c] for r in recs] for c in ("group", "stage", "stage_index", "set", "quantity")
                + STAT_KEYS}

    def lines(self) -> list[str]:
        """A summary per group and stage: mean ± std over seeds of each phase time (with how many seeds
        reached it), and how many seeds the step budget cut."""
        out = []
        for g in self.groups:
            head = f"[{g['label']}] " if len(self.groups) > 1 else ""
            for s in g["stages"]:
                st = s["steps"]
                line = (f"{head}stage {s['name']}: {s['seeds_run']} of {len(g['seeds'])} seeds ran it, steps "
                        f"{_pm(st)}; cut by the step budget: {s['n_cut']}"
                        + (f" (seeds {', '.join(map(str, s['cut_seeds']))})" if s["cut_seeds"] else ""))
                apart = s["t_start"]["n"] > 1 and s["t_start"]["max"] > s["t_start"]["min"]
                phases = [f"{name} " + ", ".join(f"{q} {_pm(per[q])}"
                                                 + (f" (from the stage's start {_pm(per[q + '_in_stage'])})"
                                                    if apart else "") + f" ({per[q]['n']}/{s['seeds_run']})"
                                                 for q in PHASE_KEYS)
                          for name, per in s["sets"].items()]
                out.append(line + "; " + "; ".join(phases) + f" ({g['time_unit']})")
        return out

    def plot(self) -> list:
        """One matplotlib Figure per group (figures.staged_bands.plot_staged_bands)."""
        from figures.staged_bands import plot_staged_bands  # presentation: the top layer, loaded on demand

        return [plot_staged_bands(_figure_data(g)) for g in self.groups]

    def to_dataframe(self):
        """bands.csv as a pandas DataFrame (a ``group`` column numbers the groups of bands.json)."""
        import pandas as pd

        return pd.concat([pd.DataFrame(dict(group=np.full(len(g["columns"]["stage"]), k), **g["columns"]))
                          for k, g in enumerate(self.groups)], ignore_index=True)

    def save(self, folder: str, *, plots: bool = True) -> list:
        """bands.csv (the curves' bands: ``group``, ``stage``, ``stage_step`` and the statistics), bands.json
        (the groups without the columns), stage_bands.csv (:meth:`stage_table`) and (plots) experiment.png
        (experiment-<k>.png for several groups), each written atomically. Returns the file names."""
        import pandas as pd

        from common.io import write_json, write_text

        write_text(os.path.join(folder, "bands.csv"), self.to_dataframe().to_csv(index=False))
        write_json(os.path.join(folder, "bands.json"),
                   dict(groups=[{k: v for k, v in g.items() if k != "columns"} for g in self.groups]))
        names = ["bands.csv", "bands.json"]

        write_text(os.path.join(folder, "stage_bands.csv"), pd.DataFrame(self.stage_table()).to_csv(index=False))
        names.append("stage_bands.csv")
        if plots:
            names += save_group_figures(self.plot(), folder, "experiment")
        return names


def _pm(st: dict) -> str:
    return "-" if st["n"] == 0 else f"{st['mean']:.4g} ± {st['std']:.2g}"


def staged_bands(rows: list[dict], spec, experiment: dict) -> StagedBandsResult | None:
    """Bands over seeds of the staged rows that ran (done, cut or diverged, with a history), one group per
    setting of the other grid fields (see the module docstring)."""
    ran = [r for r in rows if r.get("status") in ("done", "unfinished") and r.get("history")]
    if not ran:
        return None
    groups = {}
    for r in ran:
        params = {k: v for k, v in r.get("params", {}).items() if k != "seed"}
        groups.setdefault(json.dumps(jsonable(params), sort_keys=True), (params, []))[1].append(r)
    out = []
    for params, members in groups.values():
        run = build_config("train", {**spec.base, **params}, experiment)
        config, exp = run.config, run.experiment
        seeds = [r.get("params", {}).get("seed", config.seed) for r in members]
        sets = ["train"] + [s for s in exp.set_names if s != "train"]
        stages = [_stage_stats(st.name, i, members, seeds, sets) for i, st in enumerate(exp.stages)]
        out.append(dict(label=describe(params) if params else "all runs", params=params, seeds=seeds,
                        config={k: v for k, v in config_fields("train", config).items() if k != "compare_flow"},
                        statuses=[r.get("run_status") for r in members], sets=sets, stages=stages,
                        time_unit="flow time (step * lr)" if config.model == "linear" else "steps",
                        lr=config.lr, log_A=_log_A(config),
                        columns=_stage_curves([r["history"] for r in members], len(exp.stages))))
    return StagedBandsResult(groups=out)


def _log_A(config) -> float:
    from models.task import make_task

    return float(make_task(config.task).log_A)


def _stage_stats(name: str, index: int, members: list, seeds: list, sets: list) -> dict:
    """One stage's statistics over the seeds (a seed that did not reach it counts in none)."""
    reached = [r for r in members if r.get(f"{name}.reason") is not None]
    s = dict(name=name, index=index, seeds_run=len(reached),
             cut_seeds=[sd for sd, r in zip(seeds, members) if r.get(f"{name}.cut")],
             diverged_seeds=[sd for sd, r in zip(seeds, members) if r.get(f"{name}.reason") == "diverged"])
    s["n_cut"] = len(s["cut_seeds"])
    for q in STAGE_QUANTITIES:
        s[q] = stats([r.get(f"{name}.{q}") for r in members])
    s["sets"] = {v: {q: stats([r.get(f"{name}.{v}.{q}") for r in members]) for q in SET_QUANTITIES}
                 for v in sets}
    return s


def _stage_curves(histories: list[dict], n_stages: int) -> dict:
    """Per stage, the bands of every history column over the seeds that ran it, on the steps counted from each
    seed's start of the stage (its evaluations are every eval_every steps from there, so the grid is common to
    the seeds even where an ``until_loss`` rule ended the stage before at different steps): band_columns on
    the union of those steps, as for plain runs. Stacked in stage order: ``stage``, ``stage_step``, ``n`` and
    ``<col>_mean/_std/_min/_max``, the run's own step among them as ``step_*`` (each seed's rows of the stage
    only: a boundary step belongs to both stages, as in one run's history)."""
    parts = []
    for k in range(n_stages):
        subs = []
        for h in histories:
            mask = np.asarray(h["stage"], dtype=np.float64) == k
            if mask.any():
                step = np.asarray(h["step"], dtype=np.float64)[mask]
                sub = {c: np.asarray(v, dtype=np.float64)[mask] for c, v in h.items() if c not in ("stage", "step")}
                subs.append(dict(step=step - step[0], run_step=step, **sub))
        if subs:
            cols = band_columns(subs)
            cols = {("step_" + c[len("run_step_"):] if c.startswith("run_step_") else c): v for c, v in cols.items()}
            parts.append(dict(stage=np.full(len(cols["n"]), float(k)), stage_step=cols.pop("step"), **cols))
    if not parts:
        return dict(stage=np.zeros(0), stage_step=np.zeros(0), n=np.zeros(0))
    names = list(parts[0])
    for p in parts[1:]:
        names.extend(c for c in p if c not in names)
    return {c: np.concatenate([p.get(c, np.full(len(p["stage"]), np.nan)) for p in parts]) for c in names}


def _figure_data(g: dict) -> dict:
    """The plain data figures.staged_bands draws: time in the stage, stage, mean/min/max loss per set, the
    stages' spans (start and end statistics over seeds)."""
    cols = g["columns"]
    per_step = g["lr"] if g["time_unit"].startswith("flow") else 1.0
    curves = dict(t=np.asarray(cols["stage_step"]) * per_step, stage=np.asarray(cols["stage"]),
                  n=np.asarray(cols["n"]))
    for v in g["sets"]:
        c = "loss" if v == "train" else f"{v}_loss"
        if f"{c}_mean" in cols:
            for s in ("mean", "min", "max"):
                curves[f"{v}_{s}"] = np.asarray(cols[f"{c}_{s}"])
    spans = [dict(name=s["name"], index=s["index"], start=s["t_start"], end=s["t_end"], n_cut=s["n_cut"],
                  seeds_run=s["seeds_run"], length={k: (v * per_step if k != "n" else v) for k, v in s["steps"].items()})
             for s in g["stages"]]
    return dict(curves=curves, sets=list(g["sets"]), stages=spans, time_unit=g["time_unit"], seeds=g["seeds"],
                label=g["label"], log_A=g["log_A"], model=g["config"].get("model"),
                optimizer=g["config"].get("optimizer"))
