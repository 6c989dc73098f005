"""Figures of a multi-stage experiment (dynamics.experiment.schedule.run_experiment, SPEC §6): the loss, the probability
of the true answer and the hallucination measure of every evaluation set against flow time, with the stages;
and a plain sweep figure (one quantity against one parameter, one line per series).

Input: the trajectory as a mapping column -> 1-D array (``run.trajectory``, a dict, or a pandas DataFrame)
with ``stage``, ``t`` and ``<set>_<metric>`` columns; the stages as dicts (``name``, ``t_start``, ``t_end``,
``reason``) or ``StageRun`` objects; ``log_A``; the H(A|R) levels as one dict set -> H, one such dict per
stage (a list, or a dict stage name -> dict), or, when omitted, taken from the stages' ``entropies``.

Every drawn artist carries a ``gid``: ``set:<name>`` for a set's curve, ``stage_boundary`` for the vertical
line where a stage starts, ``reference`` for a theory level.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from common.io import save_figure  # noqa: E402

# the metric whose column names a set (``<set>_p_true``); set names may themselves contain underscores
_MARKER_METRIC = "_p_true"
STAGE_SHADES = ("#f2f2f2", "#ffffff")
LOG_X_DECADES = 2.0  # a log time axis when t spans more than this many decades from its first positive value


def _columns(traj) -> dict:
    """Column name -> float64 array, from a dict, a Trajectory or a pandas DataFrame."""
    if not hasattr(traj, "keys"):
        raise TypeError(f"trajectory must be a mapping column -> array or a DataFrame, not {type(traj).__name__}")
    cols = {str(k): np.asarray(traj[k], dtype=np.float64) for k in traj.keys()}
    if "t" not in cols:
        raise ValueError(f"trajectory has no flow-time column 't' (columns: {', '.join(cols)})")
    return cols


def set_names(traj) -> list[str]:
    """Every evaluation set of the trajectory, in column order (empty ones included)."""
    cols = traj if isinstance(traj, dict) else _columns(traj)
    return [k[: -len(_MARKER_METRIC)] for k in cols
            if k.endswith(_MARKER_METRIC) and f"{k[: -len(_MARKER_METRIC)]}_loss" in cols]


def _nonempty(cols: dict, name: str, metric: str) -> bool:
    col = cols.get(f"{name}_{metric}")
    return col is not None and bool(np.any(np.isfinite(col)))


def _field(stage, key, default=None):
    if isinstance(stage, Mapping):
        return stage.get(key, default)
    return getattr(stage, key, default)


def _stage_spans(stages, cols: dict) -> list[tuple[str, float, float]]:
    """(name, t_start, t_end) of every stage: from ``stages``, else from the trajectory's ``stage`` column."""
    if stages:
        return [(str(_field(st, "name", f"stage {i + 1}")), float(_field(st, "t_start")), float(_field(st, "t_end")))
                for i, st in enumerate(stages)]
    t = cols["t"]
    if "stage" not in cols or t.size == 0:
        return [("", float(t[0]) if t.size else 0.0, float(t[-1]) if t.size else 0.0)]
    out = []
    for k in np.unique(cols["stage"][np.isfinite(cols["stage"])]):
        ts = t[cols["stage"] == k]
        out.append((f"stage {int(k) + 1}", float(ts[0]), float(ts[-1])))
    return out


def _stage_entropies(entropies, stages, n_stages: int) -> list[dict]:
    """One dict set -> H(A|R) per stage (empty dicts where unknown)."""
    if entropies is None:
        return [dict(_field(st, "entropies", None) or {}) for st in (stages or [])] or [{}] * n_stages
    if isinstance(entropies, Mapping):
        if entropies and all(isinstance(v, Mapping) for v in entropies.values()):  # stage name -> dict
            names = [str(_field(st, "name", "")) for st in (stages or [])]
            return [dict(entropies.get(n, {})) for n in names] or [dict(v) for v in entropies.values()]
        return [dict(entropies)] * n_stages
    return [dict(e or {}) for e in entropies]


def _is_log_time(t: np.ndarray) -> bool:
    t = t[np.isfinite(t)]
    pos = t[t > 0]
    return pos.size > 0 and float(pos.max()) / float(pos.min()) > 10.0 ** LOG_X_DECADES


def _set_colors(names: list[str]) -> dict:
    """Distinct colours: ``all`` black, the others from tab10 (tab20 beyond nine sets)."""
    others = [n for n in names if n != "all"]
    cmap = plt.get_cmap("tab10" if len(others) <= 9 else "tab20")
    palette = [c for k, c in enumerate(cmap.colors) if not (cmap.name == "tab10" and k == 7)]  # tab10 grey
    out = {"all": "k"} if "all" in names else {}
    out.update({n: palette[k % len(palette)] for k, n in enumerate(others)})
    return out


def _legend_outside(ax, **kw):
    """A legend to the right of ``ax`` (never over its data area); constrained layout makes room for it."""
    return ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8,
                     frameon=False, **kw)


def _draw_stages(ax, spans, left: float, *, labels: bool):
    """Alternating light shading per stage, a vertical line where each later stage starts, names on top."""
    for k, (name, t0, t1) in enumerate(spans):
        lo = max(t0, left)
        if t1 > lo:
            ax.axvspan(lo, t1, color=STAGE_SHADES[k % 2], lw=0, zorder=0, gid="stage_span")
        if k > 0:
            ax.axvline(t0, color="0.35", ls=":", lw=1.0, zorder=1, gid="stage_boundary")
        if labels and name:
            ax.text(lo, 1.01, f" {name}", transform=ax.get_xaxis_transform(), ha="left", va="bottom",
                    fontsize=8, color="0.25", clip_on=False, gid="stage_label")


def _plot_sets(ax, t, cols, names, metric, colors, *, lw_all=2.0):
    drawn = []
    for name in names:
        if not _nonempty(cols, name, metric):
            continue
        ax.plot(t, cols[f"{name}_{metric}"], color=colors[name], lw=lw_all if name == "all" else 1.4,
                label=name, gid=f"set:{name}", zorder=3)
        drawn.append(name)
    return drawn


def _level_lines(ax, spans, levels: list, left: float, **kw):
    """A horizontal theory level: one line if it is the same in every stage, else one segment per stage."""
    vals = [v for v in levels if v is not None and math.isfinite(v)]
    if not vals:
        return
    if np.allclose(vals, vals[0], rtol=1e-12, atol=1e-12):
        ax.axhline(vals[0], gid="reference", **kw)
        return
    label = kw.pop("label", None)
    for (_, t0, t1), v in zip(spans, levels):
        if v is not None and math.isfinite(v):
            ax.plot([max(t0, left), t1], [v, v], gid="reference", label=label, **kw)
            label = None


def experiment_figure(traj, stages, *, log_A, entropies=None, sets=None, title=None):
    """Figure of a multi-stage experiment, three panels sharing the flow-time axis.

    1. loss of every evaluation set, with log|A| (uniform prediction) and H(A|R) of ``all`` (relation-only
       level) as dashed lines; 2. mean probability of the true answer; 3. the ``unseen`` set's excess loss
       (loss - H(A|R); > 0 means confident wrong answers) when it has any value, else every set's
       hallucination gap. Stage starts are dotted vertical lines, stage names on top. Sets with no value
       (all NaN, e.g. ``unseen`` once every subject was seen) are not drawn. ``sets`` picks and orders the
       sets (default: all of them, in column order). The time axis is logarithmic when t spans more than two
       decades from its first positive value (rows at t = 0 are then off the axis), else linear.
    """
    cols = _columns(traj)
    known = set_names(cols)
    if sets is None:
        names = known
    else:
        names = list(sets)
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"no evaluation set {', '.join(map(repr, unknown))} in the trajectory "
                             f"(it has {', '.join(known) or 'none'})")
    t = cols["t"]
    spans = _stage_spans(stages, cols)
    ents = _stage_entropies(entropies, stages, len(spans))
    colors = _set_colors(names)
    log_x = _is_log_time(t)
    finite = t[np.isfinite(t)]
    t_hi = float(finite.max()) if finite.size else 1.0
    if log_x:
        left = float(finite[finite > 0].min())
    else:
        left = float(finite.min()) if finite.size else 0.0
        if t_hi <= left:
            t_hi = left + 1.0

    fig, axes = plt.subplots(3, 1, figsize=(8.5, 9.5), sharex=True, constrained_layout=True)
    ax1, ax2, ax3 = axes
    for ax in axes:
        if log_x:
            ax.set_xscale("log", nonpositive="mask")
        _draw_stages(ax, spans, left, labels=ax is ax1)
        ax.grid(True, which="major", lw=0.4, color="0.85", zorder=0)

    # panel 1: losses
    _plot_sets(ax1, t, cols, names, "loss", colors)
    ax1.axhline(log_A, color="0.3", ls="--", lw=1, gid="reference", label=rf"$\log|A|$ = {log_A:.3g} (uniform)")
    h_all = [e.get("all") for e in ents]
    if any(v is not None and math.isfinite(v) for v in h_all):
        h0 = next(v for v in h_all if v is not None and math.isfinite(v))
        _level_lines(ax1, spans, h_all, left, color="0.3", ls=(0, (2, 2)), lw=1,
                     label=rf"$H(A|R)$ of all = {h0:.3g} (relation only)")
    ax1.set_ylabel("loss (nats)")
    ax1.set_ylim(bottom=min(0.0, ax1.get_ylim()[0]))
    _legend_outside(ax1, title="evaluation set")

    # panel 2: probability of the true answer
    _plot_sets(ax2, t, cols, names, "p_true", colors)
    if math.isfinite(log_A):
        uniform = ax2.axhline(math.exp(-log_A), color="0.3", ls="--", lw=1, gid="reference",
                              label=r"$1/|A|$ (uniform)")
        _legend_outside(ax2, handles=[uniform])  # the sets' colours are those of the legend above
    ax2.set_ylim(-0.02, 1.02)
    ax2.set_ylabel("mean probability of\nthe true answer")

    # panel 3: confident wrong answers on unseen subjects, or the hallucination gap
    if "unseen" in names and _nonempty(cols, "unseen", "excess"):
        ax3.plot(t, cols["unseen_excess"], color=colors["unseen"], lw=1.6, gid="set:unseen",
                 label="unseen: loss $-$ $H(A|R)$\n(> 0: confident wrong answers)", zorder=3)
        ax3.axhline(0.0, color="0.3", ls="--", lw=1, gid="reference",
                    label="0: relation-only predictor $p(a|r)$")
        ax3.set_ylabel("excess loss of unseen\nsubjects (nats)")
        ax3.set_ylim(bottom=min(-0.05, ax3.get_ylim()[0]))
        _legend_outside(ax3)
    else:  # one curve per set, coloured as in the legend of the loss panel
        _plot_sets(ax3, t, cols, names, "hallucination_gap", colors)
        ax3.set_ylabel("hallucination gap\n" + r"KL$(p(\cdot|r)\,\|\,\hat p)$ (nats)")
        ax3.set_ylim(bottom=min(0.0, ax3.get_ylim()[0]))
    ax3.set_xlim(left, t_hi)
    ax3.set_xlabel("flow time t (log scale)" if log_x else "flow time t")
    if title is None:
        title = "Multi-stage experiment: " + r" $\to$ ".join(n for n, _, _ in spans if n)
    fig.suptitle(title, fontsize=11)
    return fig


def sweep_figure(x, ys, *, xlabel, ylabel, title=None, logy=False, logx=False):
    """One line with markers per series ``ys`` (name -> values at ``x``; NaN where not reached, left as a gap),
    legend outside the axes. E.g. time to eps against the Zipf exponent, total time against warm-up size k."""
    x = np.asarray(x, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(7.5, 4.4), constrained_layout=True)
    markers = ("o", "s", "^", "D", "v", "P", "X", "*")
    cmap = plt.get_cmap("tab10")
    for k, (name, y) in enumerate(ys.items()):
        y = np.asarray(y, dtype=np.float64)
        if y.shape != x.shape:
            raise ValueError(f"series {name!r} has {y.size} values for {x.size} x values")
        ax.plot(x, y, marker=markers[k % len(markers)], ms=5, lw=1.4, color=cmap(k % 10), label=str(name),
                gid=f"series:{name}")
    if logy:
        ax.set_yscale("log", nonpositive="mask")
    if logx:
        ax.set_xscale("log", nonpositive="mask")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, lw=0.4, color="0.85")
    if title:
        ax.set_title(title, fontsize=10)
    if ys:
        _legend_outside(ax)
    return fig


def save_experiment_figures(folder, traj, stages, *, log_A, entropies=None) -> list[str]:
    """Write ``experiment.png`` and ``experiment.pdf`` of :func:`experiment_figure` into ``folder`` (created if
    missing), each atomically; returns the written paths."""
    os.makedirs(folder, exist_ok=True)
    fig = experiment_figure(traj, stages, log_A=log_A, entropies=entropies)
    paths = []
    try:
        for ext in ("png", "pdf"):
            path = os.path.join(folder, f"experiment.{ext}")
            save_figure(fig, path, dpi=150)
            paths.append(path)
    finally:
        plt.close(fig)
    return paths
