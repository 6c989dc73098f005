"""Figures of a phase-time sweep (analysis.sweep): t1, t2, t3 and t2 - t1 against log(1/alpha) and against S."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

QUANTITIES = (("t1", "$t_1$ (end of stage 1)"), ("t2", "$t_2$ (end of stage 2)"),
              ("t3", "$t_3$ (loss $\\leq \\varepsilon$)"),
              ("plateau_length", "$t_2 - t_1$ (plateau length)"))


def _leading(cols, name):
    if name == "plateau_length":
        return cols["t2_leading_o1"] - cols["t1_leading_o1"]
    return cols[f"{name}_leading_o1"]


def plot_sweep(cols, slopes) -> dict:
    """Figures ``phase_times_alpha`` (one panel per quantity, one colour per (S, R, D)) and ``phase_times_S``.

    cols: sweep.csv columns (name -> (n,) array); slopes: the fitted slopes (list of dicts).
    Returns name -> Figure (saved as ``{name}.png``).

    Markers: exact phase times of each configuration (reduced quadrature or full run).
    Lines: leading-order prediction [log(1/alpha^2) + O(1) term] / rate of the mode that crosses.
    """
    key = np.stack([cols["S"], cols["R"], cols["D"]], axis=1)
    groups = np.unique(key, axis=0)
    fig, axes = plt.subplots(2, 2, figsize=(10, 7.5), constrained_layout=True)
    cmap = plt.get_cmap("viridis")
    x_all = np.log(1 / cols["alpha"])
    for gi, g in enumerate(groups):
        sel = np.all(key == g, axis=1)
        order = np.argsort(x_all[sel])
        color = cmap(gi / max(1, len(groups) - 1))
        for ax, (name, label) in zip(axes.flat, QUANTITIES):
            x = x_all[sel][order]
            ax.plot(x, cols[name][sel][order], "o", color=color, ms=4,
                    label=f"S={int(g[0])}, R={int(g[1])}, D={int(g[2])}" if name == "t1" else None)
            ax.plot(x, _leading(cols, name)[sel][order], "-", color=color, lw=1)
    for ax, (name, label) in zip(axes.flat, QUANTITIES):
        ax.set_xlabel(r"$\log(1/\alpha)$")
        ax.set_ylabel(f"{label}\n(flow time)")  # linear axes: t is linear in log(1/alpha)
        fitted = [s for s in slopes if s["quantity"] == name and s["against"] == "log(1/alpha)"]
        if fitted:
            txt = "\n".join(f"S={s['S']}: slope {s['fitted']:.4g} (pred. {s['predicted']:.4g})"
                            for s in fitted[:6] if s["fitted"] is not None)
            ax.text(0.02, 0.98, txt, transform=ax.transAxes, va="top", fontsize=7,
                    bbox=dict(facecolor="white", alpha=0.8, lw=0))
    axes.flat[0].legend(fontsize=7, loc="lower right")
    fig.suptitle("Phase times against the initialization scale: markers exact (reduced flow), "
                 "lines leading order + O(1)", fontsize=10)
    figs = {"phase_times_alpha": fig}

    key2 = np.stack([cols["R"], cols["D"], cols["alpha"]], axis=1)
    groups2 = [g for g in np.unique(key2, axis=0) if np.unique(cols["S"][np.all(key2 == g, axis=1)]).size >= 2]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7.5), constrained_layout=True)
    for gi, g in enumerate(groups2[:8]):
        sel = np.all(key2 == g, axis=1)
        order = np.argsort(cols["S"][sel])
        color = cmap(gi / max(1, min(8, len(groups2)) - 1))
        for ax, (name, label) in zip(axes.flat, QUANTITIES):
            S = cols["S"][sel][order]
            ax.plot(S, cols[name][sel][order], "o", color=color, ms=4,
                    label=f"R={int(g[0])}, D={int(g[1])}, alpha={g[2]:.2g}" if name == "t1" else None)
            ax.plot(S, _leading(cols, name)[sel][order], "-", color=color, lw=1)
    for ax, (name, label) in zip(axes.flat, QUANTITIES):
        ax.set_xscale("log")
        plotted = np.concatenate([np.asarray(line.get_ydata(), dtype=np.float64) for line in ax.get_lines()] or [[]])
        if np.any(np.isfinite(plotted) & (plotted > 0)):  # a phase that never happens (null, or all at t = 0)
            ax.set_yscale("log")                           # stays on a linear axis
        Svals = np.unique(cols["S"])
        if Svals.size <= 12:  # label the grid's S values themselves, not powers of ten
            ax.set_xticks(Svals, [str(int(v)) for v in Svals])
            ax.minorticks_off()
        ax.set_xlabel("number of subjects S")
        ax.set_ylabel(f"{label}\n(flow time)")
    if groups2:
        axes.flat[0].legend(fontsize=7, loc="best")
    fig.suptitle("Phase times against S: markers exact (reduced flow), lines leading order + O(1) "
                 "(t2, t3 grow like S; t1 does not depend on S while the hallucination stage exists)", fontsize=9)
    figs["phase_times_S"] = fig
    return figs
