"""The figure of staged trainer runs over seeds (analysis.sweeps.staged_runs.staged_bands; ``frd-train --experiment
FILE --seeds N``): per evaluation set the mean loss over seeds (a line) and the seeds' min-max (a band), each stage
on the time counted from each seed's start of that stage (a grid common to the seeds). Where every seed starts
every stage at the same time (stages ended by until_time), one axis: the stages side by side at their start,
a vertical line where each later stage starts. Where the seeds' stages start apart (an until_loss rule ended an
earlier stage at different times), one panel per stage, its x axis the time since the stage's start, its title
the start (mean ± std over seeds) and the seeds the budget cut; a grey span marks where the seeds' stages ended
(min to max of their lengths). log|A| dotted. Time: flow time step * lr for model 1, steps for model 2.

Input (plain data): ``curves`` with ``t`` (time in the stage), ``stage`` and ``<set>_mean``, ``<set>_min``,
``<set>_max``; ``sets``; ``stages`` (dicts name, index, start, end and length as n/mean/std/min/max statistics,
n_cut, seeds_run); ``time_unit``, ``seeds``, ``label``, ``log_A``, ``model``, ``optimizer``.

Every drawn data artist carries a ``gid``: ``mean:<set>``, ``minmax:<set>``, ``stage_boundary``,
``stage_end_range``, ``reference``.
"""
from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from figures.style import set_colors  # noqa: E402


def _aligned(stages) -> bool:
    """Every stage starts at the same time in every seed that ran it."""
    return all(s["start"]["n"] == 0 or s["start"]["max"] == s["start"]["min"] for s in stages)


def plot_staged_bands(data: dict):
    """The figure (a matplotlib Figure) of one group of seeds; see the module docstring for ``data``."""
    curves, sets, stages = data["curves"], data["sets"], data["stages"]
    colors = set_colors(sets)
    one_axis = _aligned(stages) or len(stages) == 1
    n_ax = 1 if one_axis else len(stages)
    fig, axes = plt.subplots(1, n_ax, figsize=(8.5 if one_axis else 3.6 * n_ax + 2.5, 4.6), sharey=True,
                             layout="constrained", squeeze=False)
    axes = axes[0]
    stage = np.asarray(curves["stage"])
    t = np.asarray(curves["t"], dtype=np.float64)
    for j, s in enumerate(stages):
        ax = axes[0 if one_axis else j]
        rows_k = stage == s["index"]
        offset = (s["start"]["mean"] if s["start"]["n"] else 0.0) if one_axis else 0.0
        for rank, v in enumerate(sets):
            if f"{v}_mean" not in curves:
                continue
            lw = max(2.6 - 0.6 * rank, 0.9)  # earlier sets wider: a set whose curve lies on another's stays visible
            mean, lo, hi = (np.asarray(curves[f"{v}_{q}"], dtype=np.float64) for q in ("mean", "min", "max"))
            rows = rows_k & np.isfinite(mean)
            if not rows.any():
                continue
            ax.fill_between(offset + t[rows], lo[rows], hi[rows], color=colors[v], alpha=0.18, lw=0,
                            gid=f"minmax:{v}")
            ax.plot(offset + t[rows], mean[rows], color=colors[v], lw=lw, gid=f"mean:{v}",
                    label=f"{v}: mean (min–max shaded)" if j == 0 or not one_axis else None)
        cut = f", cut {s['n_cut']}/{s['seeds_run']}" if s["n_cut"] else ""
        if one_axis:
            if j > 0 and s["start"]["n"]:
                ax.axvline(offset, color="0.3", ls="--", lw=1.0, gid="stage_boundary")
            ax.annotate(f"{s['name']}{cut}", xy=(offset, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -12),
                        textcoords="offset points", fontsize=8, color="0.25")
        else:
            st, ln = s["start"], s["length"]
            if ln["n"] and ln["max"] > ln["min"]:
                ax.axvspan(ln["min"], ln["max"], color="0.5", alpha=0.15, lw=0, gid="stage_end_range")
            start = "-" if not st["n"] else f"{st['mean']:.4g} ± {st['std']:.2g}"
            ax.set_title(f"{s['name']} (starts at {start}{cut})", fontsize=9)
            ax.set_xlabel(("flow time" if str(data["time_unit"]).startswith("flow") else "steps")
                          + " since the stage's start")
    log_A = data.get("log_A")
    for ax in axes:
        if log_A is not None and math.isfinite(log_A):
            ax.axhline(log_A, color="0.4", ls=":", lw=1.0, gid="reference", label="log|A|" if ax is axes[0] else None)
    if one_axis:
        axes[0].set_xlabel("flow time (step × lr)" if str(data["time_unit"]).startswith("flow") else "step")
    axes[0].set_ylabel("loss (nats)")
    fig.suptitle(f"{data.get('model')} / {data.get('optimizer')}: {len(data['seeds'])} seeds "
                 f"({', '.join(map(str, data['seeds'][:8]))}{', ...' if len(data['seeds']) > 8 else ''}); "
                 f"{data['label']}", fontsize=10)
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    axes[-1].legend(handles, labels, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    return fig
