"""Seeds and bands (analysis.sweeps.runner): mean, standard deviation, min and max over seeds of the training runs'
histories (training_bands, band_columns, BandsResult), with the exact flow (model 1) or the confirmation
verdicts (model 2) of each group."""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import numpy as np

from common.errors import ConfigError
from common.io import jsonable

from analysis.sweeps.spec import SweepSpec, build_config, config_fields, describe

BAND_STATS = ("mean", "std", "min", "max")


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
        from common.io import write_csv, write_json

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
            names += save_group_figures(self.plot(), folder, "bands")
        return names


def save_group_figures(figures: list, folder: str, stem: str) -> list:
    """Save one figure per group into ``folder`` atomically (``<stem>.png`` for a single group, else
    ``<stem>-<k>.png``), closing each. Returns the file names."""
    import matplotlib.pyplot as plt

    from common.io import save_figure

    names = []
    for k, fig in enumerate(figures):
        name = f"{stem}.png" if len(figures) == 1 else f"{stem}-{k}.png"
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
    # a diverged run (status unfinished) keeps its history up to the divergence: it is in the bands as before
    done = [r for r in rows if r.get("status") in ("done", "unfinished") and r.get("history")]
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
        g = dict(label=describe(params) if params else "all runs", params=params, seeds=seeds,
                 config=config_fields("train", config, compare_flow=compare), columns=cols,
                 statuses=[r.get("run_status") for r in members])
        task = _task_of(config)
        g["theory"] = dict(log_A=task.log_A, H_A_given_R=task.H_A_given_R, log_D=math.log(task.D))
        if config.model == "linear":
            cols["flow_time"] = cols["step"] * config.lr
            g.update(_flow_band(config, cols))
        elif config.model == "softmax":  # model 2's claims (SPEC §4); the transformer gets the bands only
            g.update(_verdicts(members, seeds, cols, g["theory"], config.eps_conv))
        out.append(g)
    return BandsResult(groups=out)


def _task_of(config):
    from models.task import make_task

    return make_task(config.task)


def _flow_band(config, cols) -> dict:
    """The exact flow of model 1 from the runs' init, to the last evaluated flow time, and its distance to the
    seeds' band."""
    from dynamics.flow.config import FlowConfig
    from models.linear import FLOW_ALPHA

    from analysis.results.flow import analyze_flow

    none = dict(flow=None, mean_flow_gap=None, inside_minmax=None)
    t_end = float(np.nanmax(cols["flow_time"])) if cols["flow_time"].size else 0.0
    if not FLOW_ALPHA.contains(config.init_scale) or t_end <= 0:
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
    from analysis.results.confirm import confirmation_report

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
