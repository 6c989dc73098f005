"""Figures of training runs over seeds (analysis.sweeps.bands.training_bands): the mean of each loss with a band of
one standard deviation and a lighter min-max band.

- model 1 (linear attention): against flow time step x lr, around the exact gradient flow from the same init
  (the paper's SGD procedure as a band around the flow); the legend's title gives the largest distance of the
  mean from the flow and how often the flow lies inside the seeds' min-max band;
- model 2 (softmax head) and the transformer: against steps, with log|A| and log D marked; model 2 with the
  confirmation verdict of every seed and whether every seed confirmed in the title, and the verdict on the
  seeds' mean curves (those drawn) as the legend's heading, each saying which curves it judged (the transformer:
  its seeds only, model 2's claims are not its).

Every drawn data artist carries a ``gid``: ``flow:<column>`` for the exact flow, ``mean:<column>``,
``std:<column>`` and ``minmax:<column>`` for the bands, ``reference`` for a theory level.
"""
from __future__ import annotations

import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from figures.flow import legend_outside  # noqa: E402

CURVES = (("loss", "loss", "k"), ("relation_loss", "relation-only", "tab:blue"),
          ("subject_loss", "subject-only", "tab:red"))


def _band(ax, x, cols, name, label, color):
    mean, std = np.asarray(cols[f"{name}_mean"]), np.asarray(cols[f"{name}_std"])
    lo, hi = np.asarray(cols[f"{name}_min"]), np.asarray(cols[f"{name}_max"])
    ax.fill_between(x, lo, hi, color=color, alpha=0.12, lw=0, gid=f"minmax:{name}")
    ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.3, lw=0, label=f"{label}: mean ± std",
                    gid=f"std:{name}")
    ax.plot(x, mean, "--", color=color, lw=1.2, label=f"{label}: mean (min–max lighter)", gid=f"mean:{name}")


def _setting(config) -> str:
    c = config
    what = ("linear attention (model 1)" if c["model"] == "linear" else
            f"transformer d={c['d']} H={c['H']} d_h={c['d_h']} m={c['m']}" if c["model"] == "transformer" else
            f"softmax head d={c['d']} (model 2)")
    opt = "GD" if c["optimizer"] == "gd" else f"{c['optimizer'].upper()} batch {c['batch']}"
    return (f"{what}, {opt}, lr {c['lr']:g}, {c['steps']} steps; S={c['S']}, R={c['R']}, D={c['D']}, "
            f"T={c['T']}, N={c['N']}, init "
            + (f"{c['init'] if c['model'] == 'linear' else 'gaussian'} {c['init_scale']:g}"
               if c["model"] != "transformer" else "§11"))


def plot_bands(group: dict):
    """The figure of one group of analysis.sweeps.bands.BandsResult (a dict: columns, config, seeds, theory, and
    flow / verdicts)."""
    cols, config, seeds = group["columns"], group["config"], group["seeds"]
    th = group["theory"]
    linear = config["model"] == "linear"
    gap_panel = linear and "flow_loss" in cols
    if gap_panel:
        fig, (ax, ax2) = plt.subplots(2, 1, figsize=(10.5, 6.6), constrained_layout=True, sharex=True,
                                      gridspec_kw=dict(height_ratios=(2.2, 1)))
    else:
        fig, ax = plt.subplots(figsize=(10.5, 4.6), constrained_layout=True)
    x = np.asarray(cols["flow_time"] if linear else cols["step"], dtype=np.float64)
    if linear and group.get("flow") is not None:
        fl = group["flow"]
        for name, label, color in CURVES:
            ax.plot(fl["t"], fl[name], color=color, lw=3, alpha=0.35, label=f"exact flow: {label}",
                    gid=f"flow:{name}")
    opt = config["optimizer"].upper()
    for name, label, color in CURVES:
        _band(ax, x, cols, name, f"{opt} {label}", color)
    ax.axhline(th["log_A"], color="0.3", ls=":", lw=1, gid="reference", label=rf"$\log|A|$ = {th['log_A']:.3g}")
    ax.axhline(th["H_A_given_R"], color="0.3", ls="-.", lw=1, gid="reference",
               label=rf"$H(A|R)$ = {th['H_A_given_R']:.3g}")
    ax.set_ylabel("loss (nats)")
    ax.set_ylim(bottom=min(0.0, float(np.nanmin(cols["loss_min"])) if len(x) else 0.0))
    n = len(seeds)
    if linear:
        ax.set_xlabel(f"flow time t = step x lr (lr = {config['lr']:g})")
        title = f"{n} seeds around the exact gradient flow\n{_setting(config)}"
        gap, inside = group.get("mean_flow_gap"), group.get("inside_minmax")
        legend_title = None
        if gap is not None:
            legend_title = f"max |mean L - L_flow| = {gap:.3f}"
            if inside is not None:
                legend_title += f"\nflow inside min–max at {100 * inside:.0f} % of evaluations"
        legend_outside(ax, title=legend_title, title_fontsize=8)
    else:
        ax.set_xlabel("training step")
        ax.set_xscale("symlog", linthresh=max(1.0, float(x[x > 0][0]) if np.any(x > 0) else 1.0))
        ax.set_xlim(left=0.0, right=float(x[-1]) * 1.25 if len(x) and x[-1] > 0 else None)
        verdicts = group.get("verdicts") or []
        per = ", ".join(f"seed {v['seed']} {'yes' if v['confirmed'] else 'no'}" for v in verdicts)
        every = "yes" if group.get("overall") else "no"
        # two different verdicts, each saying which curves it judged: every seed's own curves, and the seeds'
        # mean curves drawn here; they can differ (2 of 3 seeds confirmed, the mean curves confirmed)
        title = (f"{n} seeds. Stages confirmed on each seed's own curves: {per} "
                 f"({group.get('n_confirmed', 0)} of {len(verdicts)}); overall (every seed): {every}"
                 if config["model"] == "softmax" else f"{n} seeds (seeds {', '.join(map(str, group['seeds']))})")
        title = textwrap.fill(title, 110)  # many seeds: several lines, never wider than the figure
        legend_title = None
        if group.get("mean_curve_confirmed") is not None:
            mean = "confirmed" if group["mean_curve_confirmed"] else "not confirmed"
            title += f"\nStages on the seeds' mean curves (drawn here): {mean}"
            legend_title = f"mean curves: stages {mean}\n(each seed's verdict: title)"
        title += f"\n{_setting(config)}"
        legend_outside(ax, title=legend_title, title_fontsize=8)
    if gap_panel:
        fl = np.asarray(cols["flow_loss"], dtype=np.float64)
        diff = {f"loss_{k}": np.asarray(cols[f"loss_{k}"]) - (fl if k != "std" else 0.0) for k in
                ("mean", "min", "max")}
        diff["loss_std"] = np.asarray(cols["loss_std"])
        _band(ax2, x, diff, "loss", f"{opt} loss - exact flow", "k")
        ax2.axhline(0.0, color="0.5", lw=0.8, gid="reference")
        ax2.set_ylabel("L - L_flow (nats)")
        ax2.set_xlabel(ax.get_xlabel())
        ax.set_xlabel("")
        legend_outside(ax2)
    if group.get("label") and group["label"] != "all runs":
        title = f"[{group['label']}] " + title
    ax.set_title(title, fontsize=9)
    return fig
