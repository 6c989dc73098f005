"""Figures of one training run (dynamics.train): losses with shaded stages, and the exact-flow overlay."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from figures.flow import legend_outside, loss_axes  # noqa: E402


def run_title(config) -> str:
    t = config.task
    what = ("linear attention (model 1)" if config.model == "linear"
            else f"transformer, one layer, d={config.d}, H={config.H}, d_h={config.d_h}, m={config.m}"
            if config.model == "transformer" else f"softmax head, random embeddings d={config.d} (model 2)")
    opt = "full-batch GD on the exact loss" if config.optimizer == "gd" else \
        f"{config.optimizer.upper()}, batch {config.batch}"
    return (f"{what}: {opt}, lr {config.lr:g}\nS={t.S}, R={t.R}, D={t.D}, T={t.T}, N={t.N}, {t.facts} facts, "
            + (f"init {config.init if config.model == 'linear' else 'gaussian'} {config.init_scale:g}"
               if config.model != "transformer" else "init gaussian (SPEC §11 scales)"))


def overlay_axes(ax, step, lr, loss, flow, *, label="SGD", gap=None):
    """Model-1 run (loss vs flow time step*lr) drawn over the exact flow at the same times; the legend (titled
    with the largest gap, when given) lies to the right of the axes."""
    t = np.asarray(step) * lr
    for k, col, c in (("loss", "loss", "k"), ("relation_loss", "relation-only", "tab:blue"),
                      ("subject_loss", "subject-only", "tab:red")):
        ax.plot(flow["t"], flow[k], color=c, lw=3, alpha=0.35, label=f"exact flow: {col}", gid=f"flow:{k}")
    ax.plot(t, loss["loss"], "k--", lw=1.2, label=f"{label}: loss", gid="run:loss")
    ax.plot(t, loss["relation_loss"], "--", color="tab:blue", lw=1.2, label=f"{label}: relation-only",
            gid="run:relation_loss")
    ax.plot(t, loss["subject_loss"], "--", color="tab:red", lw=1.2, label=f"{label}: subject-only",
            gid="run:subject_loss")
    ax.set_xlabel(f"flow time t = step x lr (lr = {lr:g})")
    ax.set_ylabel("loss (nats)")
    legend_outside(ax, title=None if gap is None else f"max |L_{label} - L_flow| = {gap:.3f}",
                   title_fontsize=8)
    return ax


def plot_run(result, summary, pairing):
    """Figure of a TrainResult (loss.png / loss.pdf): left the run with stages (x = steps); right, with a
    flow pairing (``flow_gap(result)``), the overlay on the exact flow. summary: ``summarize_training``'s dict."""
    h, c = result.history, result.config
    th, ph = summary["theory"], summary["phases"]["steps"]
    ncol = 2 if pairing is not None else 1
    fig, axes = plt.subplots(1, ncol, figsize=(9.5 * ncol, 4.4), constrained_layout=True, squeeze=False)
    loss_axes(axes[0, 0], h["step"], h["loss"], h["relation_loss"], h["subject_loss"], log_A=th["log_A"],
              H_A_given_R=th["H_A_given_R"], t1=ph["t1"], t2=ph["t2"], t3=ph["t3"], plateau=ph.get("plateau"),
              xlabel="training step", title=run_title(c))
    if pairing is not None:
        overlay_axes(axes[0, 1], h["step"], c.lr, h, pairing["flow"], label=c.optimizer.upper(),
                     gap=pairing["flow_gap"])
        axes[0, 1].set_title("the same run against the exact gradient flow from the same init")
    return fig
