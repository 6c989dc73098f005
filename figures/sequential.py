"""The paper's sequential-learning figure (model 1's exact flow above model 2's training) and model 1's SGD
against the exact flow: what ``frd-paper`` (figures.paper) draws, from plain data (curves, phase times)."""
from __future__ import annotations

import math

from figures.flow import legend_outside, loss_axes
from figures.train import overlay_axes


def _nice_ceil(x: float) -> float:
    """The smallest of 1, 2, 5 x 10^k that is >= x > 0."""
    e = math.floor(math.log10(x))
    for m in (1.0, 2.0, 5.0, 10.0):
        if m * 10.0 ** e >= x * (1 - 1e-12):
            return m * 10.0 ** e
    return 10.0 ** (e + 1)


def step_axis(ax, steps, t1, t2, t3, eval_every: int) -> float | None:
    """A step axis for a run evaluated every ``eval_every`` steps: linear from 0 to a threshold past t1 (twice
    t1, rounded up to 1, 2 or 5 x 10^k; without t1 ten evaluations), logarithmic beyond (symlog), running 25 %
    past the last step in the log part so a phase line at the end stays inside. Returns the threshold, or
    None when the run ends inside it (the axis stays linear)."""
    import numpy as np
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    steps = np.asarray(steps, dtype=np.float64)
    last = float(steps[-1]) if steps.size else 0.0
    base = 2.0 * t1 if t1 is not None and t1 > 0 else 10.0 * eval_every
    lt = _nice_ceil(max(base, float(eval_every), 1.0))
    if last <= 2 * lt:  # nothing worth a log part: the linear axis of loss_axes (0 to 5 % past the end)
        return None
    ax.set_xscale("symlog", linthresh=lt, linscale=1.0)
    right = max([last] + [x for x in (t1, t2, t3) if x is not None]) * 1.25
    ax.set_xlim(0, right)
    decades = range(math.floor(math.log10(lt)), math.floor(math.log10(right)) + 1)
    ticks = [0.0, lt / 2, lt] + [10.0 ** k for k in decades if lt * 1.5 <= 10.0 ** k <= right]
    if len(ticks) < 5:  # a short log part: 2 and 5 x 10^k as well
        ticks = sorted(set(ticks) | {m * 10.0 ** k for k in decades for m in (1, 2, 5)
                                     if lt * 1.5 <= m * 10.0 ** k <= right})
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v == 0 or v >= 1 else f"{v:g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.axvline(lt, color="0.5", lw=0.6, ls=(0, (1, 3)), gid="linthresh",
               label=f"step axis: linear up to {lt:,.0f}, log beyond")
    ax.set_xlabel(f"training step (linear scale up to {lt:,.0f}, log scale beyond)")
    return lt


def sequential_figure(tr, ph, th, h, sp, soft_theory, *, alpha: float, d: int, optimizer: str, lr: float,
                      eval_every: int, device: str, task: dict):
    """Two panels, one above the other (10.5 in wide: 1575 px at 150 dpi, every text at 9 pt or more).

    Top: model 1's exact flow: ``tr`` its trajectory columns (t, loss, relation_loss, subject_loss), ``ph``
    its phases (t1, t2, t3, plateau), ``th`` its theory (log_A, H_A_given_R), ``alpha`` its init scale. Bottom:
    model 2's training: ``h`` its history (step, losses), ``sp`` its phase steps (t1, t2, t3, plateau),
    ``soft_theory`` (log_A, H_A_given_R), trained with ``optimizer`` at ``lr`` on ``device``, evaluated every
    ``eval_every`` steps, embedding dimension ``d``. ``task``: S, R, D, T, N for the title."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(10.5, 9.0), constrained_layout=True)
    loss_axes(axes[0], tr["t"], tr["loss"], tr["relation_loss"], tr["subject_loss"], log_A=th["log_A"],
              H_A_given_R=th["H_A_given_R"], t1=ph.t1, t2=ph.t2, t3=ph.t3, plateau=ph.plateau,
              legend_fontsize=9,
              title=f"Model 1: exact gradient flow (linear attention, one-hot), balanced init {alpha:g}")
    opt = "SGD" if optimizer == "sgd" else "Adam"
    # the trainer evaluates every eval_every steps (a linear schedule): a dot per evaluation, and a step axis
    # linear over stage 1 and logarithmic beyond (symlog), so stage 1 is not drawn as long straight segments
    loss_axes(axes[1], h["step"], h["loss"], h["relation_loss"], h["subject_loss"],
              log_A=soft_theory["log_A"], H_A_given_R=soft_theory["H_A_given_R"],
              t1=sp["t1"], t2=sp["t2"], t3=sp["t3"], plateau=sp["plateau"], xlabel="training step", markers=True,
              legend=False, title=f"Model 2: softmax attention, random embeddings (d={d}), {opt} lr "
                                  f"{lr:g}, batch 1024, on {device}\n"
                                  f"dots: held-out loss, evaluated at every multiple of {eval_every} steps "
                                  f"and, early on, at 8 steps per doubling (1, 2, 3, ...)")
    step_axis(axes[1], h["step"], sp["t1"], sp["t2"], sp["t3"], eval_every)
    legend_outside(axes[1], fontsize=9)
    for ax in axes:
        ax.title.set_fontsize(10)
        ax.tick_params(labelsize=9)
    fig.suptitle(f"Sequential learning of factual recall: S={task['S']}, R={task['R']}, D={task['D']}, "
                 f"T={task['T']}, N={task['N']}\n"
                 f"(stage 1: uniform, stage 2: relation only = hallucination, stage 3: facts)", fontsize=11)
    return fig


def sgd_vs_flow_figure(hs, lr: float, pairing: dict, *, steps: int, device: str, task: dict):
    """Model 1 trained by SGD (``hs`` its history, step size ``lr``, ``steps`` steps on ``device``) against the
    exact flow from the same start (``pairing``: the flow's curves and the gap, analysis.flow_gap)."""
    import matplotlib.pyplot as plt

    fig2, ax2 = plt.subplots(figsize=(10, 4.4), constrained_layout=True)
    overlay_axes(ax2, hs["step"], lr, hs, pairing["flow"], label="SGD", gap=pairing["flow_gap"])
    ax2.set_title(f"Model 1: SGD (uniform init 1e-5, lr 0.1, batch 1024, {steps} steps) vs exact flow\n"
                  f"S={task['S']}, R={task['R']}, D={task['D']}, T={task['T']}, N={task['N']}; on {device}",
                  fontsize=10)
    return fig2
