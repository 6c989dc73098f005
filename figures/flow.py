"""Figures of one exact-flow run: losses with stages and phase times, and conservation drift."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

STAGE_COLORS = ("#dbe9f6", "#fde9c9", "#dff0d8")


def loss_axes(ax, t, loss, relation_loss, subject_loss, *, log_A, H_A_given_R, t1=None, t2=None, t3=None,
              xlabel="flow time t", title=None):
    """Draw total / relation-only / subject-only losses, theory levels, stages and phase times on ``ax``."""
    t = np.asarray(t)
    t_end = float(t[-1])
    edges = [0.0] + [x for x in (t1, t2) if x is not None] + [t_end]
    for k in range(len(edges) - 1):
        ax.axvspan(edges[k], edges[k + 1], color=STAGE_COLORS[k % 3], alpha=0.6, lw=0,
                   label=f"stage {k + 1}")
    ax.plot(t, loss, color="k", lw=2, label="loss $L$")
    ax.plot(t, relation_loss, color="tab:blue", lw=1.5, label="relation-only loss")
    ax.plot(t, subject_loss, color="tab:red", lw=1.5, label="subject-only loss")
    ax.axhline(log_A, color="0.3", ls="--", lw=1)
    ax.axhline(H_A_given_R, color="0.3", ls="--", lw=1)
    ax.text(t_end, log_A, r" $\log|\mathcal{A}|$", va="center", ha="left", fontsize=9)
    ax.text(t_end, H_A_given_R, r" $H(A|R)$", va="center", ha="left", fontsize=9)
    for name, x in (("$t_1$", t1), ("$t_2$", t2), ("$t_3$", t3)):
        if x is not None:
            ax.axvline(x, color="0.2", ls=":", lw=1)
            ax.text(x, log_A * 1.04, name, ha="right" if x > 0.97 * t_end else "center", va="bottom",
                    fontsize=9)
    # a run that ends at t = 0 (target met at once) or a task with |A| = 1 (log|A| = 0) still gets an axis span
    ax.set_xlim(0, t_end if t_end > 0 else 1.0)
    top = log_A if log_A > 0 else 1.0
    ax.set_ylim(-0.05 * top, top * 1.12)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("loss (nats)")
    if title:
        ax.set_title(title)
    # between the H(A|R) line and zero on the right, where every curve has already settled
    ax.legend(loc="center right", bbox_to_anchor=(1.0, 0.3), fontsize=8, framealpha=0.9)
    return ax


def plot_loss(result):
    """Figure of a FlowResult's losses with stages, theory levels and phase times (loss.png / loss.pdf)."""
    tr, ph, th = result.trajectory, result.phases, result.theory
    cfg = result.config.task
    fig, ax = plt.subplots(figsize=(7, 4.2), constrained_layout=True)
    loss_axes(ax, tr["t"], tr["loss"], tr["relation_loss"], tr["subject_loss"], log_A=th["log_A"],
              H_A_given_R=th["H_A_given_R"], t1=ph.t1, t2=ph.t2, t3=ph.t3,
              title=f"Exact gradient flow of the linear-attention model\n"
                    f"S={cfg.S}, R={cfg.R}, D={cfg.D}, T={cfg.T}, N={cfg.N}, {cfg.facts} facts, "
                    f"{result.config.init} init {result.config.alpha:g}")
    return fig


def plot_invariant(result):
    """Figure of the drift of every conserved quantity against t (log scale; exact zeros omitted) (invariant.png)."""
    tr = result.trajectory
    fig, ax = plt.subplots(figsize=(6.4, 3.8), constrained_layout=True)
    t = tr["t"]
    labels = {"invariant_drift": r"$\max_z |Q_z(t)-Q_z(0)|$,  $Q_z=K_z^2-\|W_{:,z}\|^2$",
              "column_sums_drift": r"$\max_z |M_z(t)-M_z(0)|$,  $M_z=\sum_a W_{a,z}$",
              "noise_eos_product_drift": r"$|P(t)-P(0)|$,  $P=K_nK_E-\langle W_{:,n},W_{:,E}\rangle$"}
    for k in ["invariant_drift"] + [k for k in tr if k.endswith("_drift") and k != "invariant_drift"]:
        d = np.asarray(tr[k])
        keep = d > 0  # log axis: the exact zero at t = 0 is not drawn
        ax.semilogy(t[keep], d[keep], lw=1.5 if k == "invariant_drift" else 1, label=labels.get(k, k))
    scale = max(float(np.max(tr["K_subject"])), float(np.max(tr["K_relation"]))) ** 2
    ax.axhline(result.solver["rtol"] * scale, color="0.4", ls=":", lw=1,
               label=rf"rtol $\times \max_z K_z^2$ = {result.solver['rtol'] * scale:.1e}")
    ax.set_xlabel("flow time t")
    ax.set_ylabel("absolute drift")
    ax.set_title(f"Conservation laws along the flow ({result.solver['backend']}/{result.solver['method']}, "
                 f"rtol {result.solver['rtol']:g})")
    ax.legend(fontsize=8, loc="lower right")
    return fig
