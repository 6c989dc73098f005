"""Capacity against parameter count, log-log (SPEC §10), drawn from plain arrays and dicts.

Each series: per-seed capacities as small points, their mean as a larger marker joined by a line, and its
fitted power law (dashed) when given; the legend names every series once, with its fit's slope and interval.
The information-theoretic bound (SPEC §9), when given, is a dashed grey line above them.
"""
from __future__ import annotations

import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

STYLES = tuple(zip([f"C{i}" for i in range(10)], "os^DvPX<>*"))  # ten series, each its own colour and marker
WIDTH, AXES_HEIGHT = 7.0, 3.8                                      # inches; the figure grows with its legend


def capacity_figure(series, title: str, bound=None):
    """series: list of dicts with ``label`` (str), ``params`` (n,) parameter counts, ``capacity`` (n, S)
    per-seed capacities (number of facts), optional ``fit`` dict (slope, intercept, ci (low, high), level) of
    log capacity = intercept + slope · log params. bound: optional dict with ``params`` (k,), ``capacity`` (k,)
    (the bound's largest number of facts at each) and ``label``, drawn as given. Returns the matplotlib Figure.

    One legend entry per series (its mean over seeds, with the fitted slope and interval), one for the bound,
    and a key for the small markers (each seed) and the dashed lines (fits); the legend sits below the axes
    and the figure is made tall enough to hold it, so the axes keep their size however many series."""
    fig, ax = plt.subplots(figsize=(WIDTH, AXES_HEIGHT + 2))
    if bound:
        ax.plot(np.asarray(bound["params"], dtype=float), np.asarray(bound["capacity"], dtype=float),
                color="0.5", ls="--", lw=1.2, label=bound["label"])
    level = None
    for i, s in enumerate(series):
        color, marker = STYLES[i % len(STYLES)]
        P = np.asarray(s["params"], dtype=float)                 # (n,)
        C = np.asarray(s["capacity"], dtype=float).reshape(len(P), -1)  # (n, S)
        order = np.argsort(P, kind="stable")  # the mean line runs left to right, whatever order the sizes came in
        P, C = P[order], C[order]
        ok = C >= 1  # a size whose lowest probe failed has capacity 0 and no place on a log axis
        ax.scatter(np.repeat(P, C.shape[1])[ok.ravel()], C[ok], s=12, color=color, alpha=0.4, marker=marker,
                   label="_each seed")
        mean = np.array([row[m].mean() if m.any() else np.nan for row, m in zip(C, ok)])
        fit = s.get("fit")
        text = s["label"]
        if fit:
            grid = np.geomspace(P.min(), P.max(), 50)
            lo, hi = fit["ci"]
            level = fit["level"]
            ax.plot(grid, np.exp(fit["intercept"]) * grid ** fit["slope"], color=color, ls="--", lw=1,
                    label="_fit")
            text += f": slope {fit['slope']:.2f} [{lo:.2f}, {hi:.2f}]"
        ax.plot(P, mean, color=color, marker=marker, ms=7, lw=1.2, label=text)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("parameters P (count)")
    ax.set_ylabel("capacity N* (facts stored at ≥ 99% accuracy)")
    ax.grid(True, which="both", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    handles += [plt.Line2D([], [], color="0.3", marker="o", ls="none", ms=4, alpha=0.5),
                plt.Line2D([], [], color="0.3", ls="--", lw=1)]
    labels += ["small markers: each seed; large: mean over seeds",
               "dashed: fitted power law" + (f" (slope, {100 * level:.0f}% CI)" if level else "")]
    # below the axes: the bound line runs across the upper left, where a legend inside would hide it
    leg = fig.legend(handles, [textwrap.fill(t, 52) for t in labels], fontsize=7, loc="lower center",
                     bbox_to_anchor=(0.5, 0.0), ncol=2, frameon=False)
    title_lines = textwrap.fill(title, 100).count("\n") + 1
    ax.set_title(textwrap.fill(title, 100), fontsize=8)
    fig.canvas.draw()
    legend_h = leg.get_window_extent().height / fig.dpi              # inches
    top_h, axis_h = 0.25 + 0.14 * title_lines, 0.6                   # title above; tick and axis labels below
    height = top_h + AXES_HEIGHT + axis_h + legend_h + 0.1
    fig.set_size_inches(WIDTH, height)
    fig.subplots_adjust(left=0.1, right=0.97, top=1 - top_h / height, bottom=(legend_h + axis_h + 0.1) / height)
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
