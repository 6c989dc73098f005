"""Capacity against parameter count, log-log (SPEC §10), drawn from plain arrays and dicts.

Each series: per-seed capacities as small points, their mean as a larger marker joined by a line, and its
fitted power law (dashed) when given; the legend names every series and fit (slope with its interval).
The information-theoretic bound (SPEC §9), when given, is a dashed grey line above them.
"""
from __future__ import annotations

import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

STYLES = (("C0", "o"), ("C1", "s"), ("C2", "^"), ("C3", "D"))


def capacity_figure(series, title: str, bound=None):
    """series: list of dicts with ``label`` (str), ``params`` (n,) parameter counts, ``capacity`` (n, S)
    per-seed capacities (number of facts), optional ``fit`` dict (slope, intercept, ci (low, high), level) of
    log capacity = intercept + slope · log params. bound: optional dict with ``params`` (k,), ``capacity`` (k,)
    (the bound's largest number of facts at each) and ``label``, drawn as given. Returns the matplotlib Figure."""
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    if bound:
        ax.plot(np.asarray(bound["params"], dtype=float), np.asarray(bound["capacity"], dtype=float),
                color="0.5", ls="--", lw=1.2, label=bound["label"])
    for i, s in enumerate(series):
        color, marker = STYLES[i % len(STYLES)]
        P = np.asarray(s["params"], dtype=float)                 # (n,)
        C = np.asarray(s["capacity"], dtype=float).reshape(len(P), -1)  # (n, S)
        order = np.argsort(P, kind="stable")  # the mean line runs left to right, whatever order the sizes came in
        P, C = P[order], C[order]
        ok = C >= 1  # a size whose lowest probe failed has capacity 0 and no place on a log axis
        ax.scatter(np.repeat(P, C.shape[1])[ok.ravel()], C[ok], s=12, color=color, alpha=0.4, marker=marker,
                   label=f"{s['label']} (each seed)")
        mean = np.array([row[m].mean() if m.any() else np.nan for row, m in zip(C, ok)])
        ax.plot(P, mean, color=color, marker=marker, ms=7, lw=1.2, label=f"{s['label']} (mean over seeds)")
        fit = s.get("fit")
        if fit:
            grid = np.geomspace(P.min(), P.max(), 50)
            lo, hi = fit["ci"]
            ax.plot(grid, np.exp(fit["intercept"]) * grid ** fit["slope"], color=color, ls="--", lw=1,
                    label=f"{s['label']} fit: slope {fit['slope']:.2f} "
                          f"[{lo:.2f}, {hi:.2f}] ({100 * fit['level']:.0f}% CI)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("parameters P (count)")
    ax.set_ylabel("capacity N* (facts stored at ≥ 99% accuracy)")
    ax.set_title(textwrap.fill(title, 90), fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    # below the axes: the bound line runs across the upper left, where a legend inside would hide it
    handles, labels = ax.get_legend_handles_labels()  # long labels wrapped so that two columns fit the width
    ax.legend(handles, [textwrap.fill(t, 48) for t in labels], fontsize=7, loc="upper center",
              bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    fig.tight_layout()
    return fig


def tradeoff_figure(accuracy, Hs, ms, params, title: str):
    """Heat map of accuracy (len(Hs), len(ms)) over heads H (rows) and MLP width m (columns), with lines of
    equal parameter count ``params`` (len(Hs), len(ms)) drawn as dashed contours (interpolated between cell
    centres; the axes are the grid's indices). Returns the matplotlib Figure."""
    acc = np.asarray(accuracy, dtype=float)
    P = np.asarray(params, dtype=float)
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    im = ax.imshow(acc, origin="lower", aspect="auto", vmin=0, vmax=1, cmap="viridis")
    if min(acc.shape) >= 2 and np.unique(P).size > 1:
        cs = ax.contour(np.arange(len(ms)), np.arange(len(Hs)), P, levels=6, colors="white", linewidths=0.8,
                        linestyles="--")
        ax.clabel(cs, fmt=lambda v: f"P={v:.0f}", fontsize=6, inline_spacing=2)
    ax.set_xticks(range(len(ms)), [str(m) for m in ms])
    ax.set_yticks(range(len(Hs)), [str(h) for h in Hs])
    ax.set_xlabel("MLP width m")
    ax.set_ylabel("heads H")
    for i in range(acc.shape[0]):
        for j in range(acc.shape[1]):
            # in the cell's lower part: the iso-parameter labels sit on the lines through the centres
            ax.text(j, i - 0.3, f"{acc[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="black" if acc[i, j] > 0.6 else "white")
    fig.colorbar(im, ax=ax, label="accuracy (fraction of facts)")
    ax.set_title(textwrap.fill(title, 80), fontsize=8)
    fig.tight_layout()
    return fig
