"""The figure of staged trainer runs over seeds (analysis.sweeps.staged_runs.staged_bands; ``frd-train --experiment
FILE --seeds N``): per evaluation set the mean loss over seeds (a line) and the seeds' min-max (a band), each
stage drawn on its own (a boundary step belongs to both stages, as in a run's history), against the run's time
(flow time step * lr for model 1, steps for model 2); where each stage starts, a vertical line at the seeds'
mean start and a grey span over their min-max; log|A| dotted.

Input (plain data): ``curves`` with ``t``, ``stage`` and ``<set>_mean``, ``<set>_min``, ``<set>_max``; ``sets``;
``stages`` (dicts name, index, start and end as n/mean/std/min/max statistics, n_cut, seeds_run); ``time_unit``,
``seeds``, ``label``, ``log_A``, ``model``, ``optimizer``.

Every drawn data artist carries a ``gid``: ``mean:<set>``, ``minmax:<set>``, ``stage_boundary``,
``stage_start_range``, ``reference``.
"""
from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from figures.style import set_colors  # noqa: E402


def plot_staged_bands(data: dict):
    """The figure (a matplotlib Figure) of one group of seeds; see the module docstring for ``data``."""
    curves, sets = data["curves"], data["sets"]
    colors = set_colors(sets)
    fig, ax = plt.subplots(figsize=(8.5, 4.6), layout="constrained")
    stage = np.asarray(curves["stage"])
    t = np.asarray(curves["t"], dtype=np.float64)
    for v in sets:
        if f"{v}_mean" not in curves:
            continue
        mean, lo, hi = (np.asarray(curves[f"{v}_{s}"], dtype=np.float64) for s in ("mean", "min", "max"))
        for j, k in enumerate(np.unique(stage)):
            rows = (stage == k) & np.isfinite(mean)
            if not rows.any():
                continue
            ax.fill_between(t[rows], lo[rows], hi[rows], color=colors[v], alpha=0.18, lw=0, gid=f"minmax:{v}")
            ax.plot(t[rows], mean[rows], color=colors[v], lw=1.6, gid=f"mean:{v}",
                    label=f"{v}: mean (min–max shaded)" if j == 0 else None)
    for s in data["stages"][1:]:
        st = s["start"]
        if st["n"] == 0:
            continue
        if st["max"] > st["min"]:
            ax.axvspan(st["min"], st["max"], color="0.5", alpha=0.15, lw=0, gid="stage_start_range")
        ax.axvline(st["mean"], color="0.3", ls="--", lw=1.0, gid="stage_boundary")
    for s in data["stages"]:
        st = s["start"]
        if st["n"]:
            cut = f", cut {s['n_cut']}/{s['seeds_run']}" if s["n_cut"] else ""
            ax.annotate(f"{s['name']}{cut}", xy=(st["mean"], 1.0), xycoords=("data", "axes fraction"),
                        xytext=(3, -12), textcoords="offset points", fontsize=8, color="0.25")
    log_A = data.get("log_A")
    if log_A is not None and math.isfinite(log_A):
        ax.axhline(log_A, color="0.4", ls=":", lw=1.0, gid="reference", label="log|A|")
    ax.set_xlabel("flow time (step × lr)" if str(data["time_unit"]).startswith("flow") else "step")
    ax.set_ylabel("loss (nats)")
    ax.set_title(f"{data.get('model')} / {data.get('optimizer')}: {len(data['seeds'])} seeds "
                 f"({', '.join(map(str, data['seeds'][:8]))}{', ...' if len(data['seeds']) > 8 else ''}); "
                 f"{data['label']}", fontsize=10)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    return fig
