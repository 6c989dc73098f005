"""Figures of one exact-flow run: losses with stages, phase times and the plateau, and conservation drift.

Every drawn data artist carries a ``gid``: ``loss``, ``relation_loss``, ``subject_loss`` for the curves,
``reference`` for a theory level, ``phase:t1`` / ``phase:t2`` / ``phase:t3`` for a phase time, ``plateau`` for
the plateau point, ``drift:<column>`` for a conservation drift, ``tolerance`` for the solver's error scale.
Legends lie to the right of the axes, never over the data.
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

STAGE_COLORS = ("#dbe9f6", "#fde9c9", "#dff0d8")
PHASE_NAMES = (("t1", "end of stage 1"), ("t2", "end of stage 2"), ("t3", r"loss $\leq \varepsilon$"))
X_MARGIN = 0.05  # the time axis runs 5 % past the last sample, so a phase line at the end stays inside


def legend_outside(ax, **kw):
    """A legend to the right of ``ax`` (never over its data area); constrained layout makes room for it."""
    kw.setdefault("fontsize", 8)
    return ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False, **kw)


def fmt_time(x: float) -> str:
    """A time for a label: 4 significant digits, whole numbers with thousands separators from 10,000 on."""
    return f"{x:,.0f}" if 1e4 <= abs(x) < 1e9 else f"{x:.4g}"


def _plateau_point(plateau):
    """(t, loss) of a Plateau object or its dict, or None."""
    if plateau is None:
        return None
    if isinstance(plateau, dict):
        return float(plateau["t"]), float(plateau["loss"])
    return float(plateau.t), float(plateau.loss)


def loss_axes(ax, t, loss, relation_loss, subject_loss, *, log_A, H_A_given_R, t1=None, t2=None, t3=None,
              plateau=None, xlabel="flow time t", title=None, markers=False, legend=True, legend_fontsize=8):
    """Draw total / relation-only / subject-only losses, theory levels, stages, phase times and the plateau
    point (a Plateau or its dict: ``t``, ``loss``) on ``ax``. ``markers``: a dot at every sample (where the
    samples are sparse, so straight segments between them are not taken for data). The x axis runs from 0 to
    5 % past the last sample (linear); a caller that changes the scale sets its own limits. ``legend_fontsize``:
    the legend's font size in points."""
    t = np.asarray(t)
    t_end = float(t[-1])
    edges = [0.0] + [x for x in (t1, t2) if x is not None] + [t_end]
    for k in range(len(edges) - 1):
        ax.axvspan(edges[k], edges[k + 1], color=STAGE_COLORS[k % 3], alpha=0.6, lw=0,
                   label=f"stage {k + 1}", gid=f"stage:{k + 1}")
    mk = dict(marker="o", ms=2.5) if markers else {}
    ax.plot(t, loss, color="k", lw=2, label="loss $L$", gid="loss", **mk)
    ax.plot(t, relation_loss, color="tab:blue", lw=1.5, label="relation-only loss", gid="relation_loss", **mk)
    ax.plot(t, subject_loss, color="tab:red", lw=1.5, label="subject-only loss", gid="subject_loss", **mk)
    ax.axhline(log_A, color="0.3", ls="--", lw=1, gid="reference",
               label=rf"$\log|\mathcal{{A}}|$ = {log_A:.3g} (uniform prediction)")
    ax.axhline(H_A_given_R, color="0.3", ls="-.", lw=1, gid="reference",
               label=rf"$H(A|R)$ = {H_A_given_R:.3g} (relation-only predictor)")
    for (key, what), x in zip(PHASE_NAMES, (t1, t2, t3)):
        if x is not None:
            name = f"$t_{key[1]}$"
            ax.axvline(x, color="0.2", ls=":", lw=1, gid=f"phase:{key}", label=f"{name} = {fmt_time(x)} ({what})")
            ax.text(x, log_A * 1.04 if log_A > 0 else 1.04, name, ha="center", va="bottom", fontsize=9)
    pt = _plateau_point(plateau)
    if pt is not None:
        ax.plot([pt[0]], [pt[1]], ls="none", marker="D", ms=7, mfc="white", mec="k", mew=1.5, zorder=5,
                gid="plateau", label=f"plateau: $L$ = {pt[1]:.3f} at {fmt_time(pt[0])}\n"
                                     r"(smallest $|dL/d\log t|$ in $[t_1, t_2]$)")
    # a run that ends at t = 0 (target met at once) or a task with |A| = 1 (log|A| = 0) still gets an axis span
    right = max([t_end] + [x for x in (t1, t2, t3) if x is not None])
    ax.set_xlim(0, right * (1 + X_MARGIN) if right > 0 else 1.0)
    top = log_A if log_A > 0 else 1.0
    ax.set_ylim(-0.05 * top, top * 1.12)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("loss (nats)")
    if title:
        ax.set_title(title)
    if legend:
        legend_outside(ax, fontsize=legend_fontsize)
    return ax


def plot_loss(result):
    """Figure of a FlowResult's losses with stages, theory levels, phase times and the plateau (loss.png / .pdf)."""
    tr, ph, th = result.trajectory, result.phases, result.theory
    cfg = result.config.task
    fig, ax = plt.subplots(figsize=(9.5, 4.2), constrained_layout=True)
    loss_axes(ax, tr["t"], tr["loss"], tr["relation_loss"], tr["subject_loss"], log_A=th["log_A"],
              H_A_given_R=th["H_A_given_R"], t1=ph.t1, t2=ph.t2, t3=ph.t3, plateau=ph.plateau,
              title=f"Exact gradient flow of the linear-attention model\n"
                    f"S={cfg.S}, R={cfg.R}, D={cfg.D}, T={cfg.T}, N={cfg.N}, {cfg.facts} facts, "
                    f"{result.config.init} init {result.config.alpha:g}")
    return fig


def plot_invariant(result):
    """Figure of the drift of every conserved quantity against t (log scale; exact zeros omitted), with the
    solver's error scale and the phase times t1, t2, t3 (invariant.png)."""
    tr, ph = result.trajectory, result.phases
    fig, ax = plt.subplots(figsize=(9.5, 3.8), constrained_layout=True)
    t = np.asarray(tr["t"])
    labels = {"invariant_drift": r"$\max_z |Q_z(t)-Q_z(0)|$,  $Q_z=K_z^2-\|W_{:,z}\|^2$",
              "column_sums_drift": r"$\max_z |M_z(t)-M_z(0)|$,  $M_z=\sum_a W_{a,z}$",
              "noise_eos_product_drift": r"$|P(t)-P(0)|$,  $P=K_nK_E-\langle W_{:,n},W_{:,E}\rangle$"}
    for k in ["invariant_drift"] + [k for k in tr if k.endswith("_drift") and k != "invariant_drift"]:
        d = np.asarray(tr[k])
        keep = d > 0  # log axis: the exact zero at t = 0 is not drawn
        label = labels.get(k, k) + ("" if keep.any() else " (exactly 0: not drawn)")
        ax.semilogy(t[keep], d[keep], lw=1.5 if k == "invariant_drift" else 1, label=label, gid=f"drift:{k}")
    scale = max(float(np.max(tr["K_subject"])), float(np.max(tr["K_relation"]))) ** 2
    tol = result.solver["rtol"] * scale
    ax.axhline(tol, color="0.4", ls=(0, (1, 1.5)), lw=1, gid="tolerance",
               label=f"solver error scale: rtol $\\times \\max_z K_z^2$ = {tol:.1e}\n"
                     "(relative tolerance $\\times$ size of the terms of $Q_z$;\n"
                     " a drift below it is within the integration error)")
    for (key, what), x in zip(PHASE_NAMES, (ph.t1, ph.t2, ph.t3)):
        if x is not None:
            ax.axvline(x, color="0.2", ls=(0, (4, 2, 1, 2)) if key != "t3" else "--", lw=0.8, gid=f"phase:{key}",
                       label=f"$t_{key[1]}$ = {fmt_time(x)} ({what})")
            ax.text(x, 1.01, f"$t_{key[1]}$", transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                    fontsize=9)
    t_end = float(t[-1]) if t.size else 0.0
    right = max([t_end] + [x for x in (ph.t1, ph.t2, ph.t3) if x is not None])
    ax.set_xlim(0, right * (1 + X_MARGIN) if right > 0 else 1.0)
    ax.set_xlabel("flow time t")
    ax.set_ylabel("absolute drift")
    ax.set_title(f"Conservation laws along the flow ({result.solver['backend']}/{result.solver['method']}, "
                 f"rtol {result.solver['rtol']:g})", pad=14)
    legend_outside(ax)
    return fig
