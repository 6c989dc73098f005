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
import textwrap
from collections.abc import Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.ticker  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from common.io import save_figure  # noqa: E402
from figures.style import EVAL_SET_COLORS, FLOW_STYLE, set_colors  # noqa: E402

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
    """One colour per evaluation set, the same in every figure (figures.style.EVAL_SET_COLORS)."""
    return set_colors(names)


# how a set's curve is drawn when it lies on curves drawn before it (rank 1, 2, 3: it coincides with a set of
# rank 0, 1, 2): dotted, then dash-dotted, then loosely dotted, each on top and wider, so every colour stays
# visible (dashed is the exact flow's style, figures.style.FLOW_STYLE)
OVERLAY_STYLES = ((None, 1.4), ((0, (1, 1.5)), 2.4), ((0, (5, 1.5, 1, 1.5)), 2.0), ((0, (1, 4)), 3.0))
COINCIDE_FRAC = 0.005  # curves closer than this fraction of the panel's range over a whole stage lie on each other
# sets whose members are redefined at a stage switch (their curves jump there without any change of the model)
REDEFINED_SETS = ("train", "seen", "unseen")


def _legend_outside(ax, **kw):
    """A legend to the right of ``ax`` (never over its data area); constrained layout makes room for it."""
    return ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8,
                     frameon=False, **kw)


def _draw_stages(ax, spans, left: float, *, labels: bool):
    """Alternating light shading per stage, a vertical line where each later stage starts (a stage switch),
    names on top."""
    for k, (name, t0, t1) in enumerate(spans):
        lo = max(t0, left)
        if t1 > lo:
            ax.axvspan(lo, t1, color=STAGE_SHADES[k % 2], lw=0, zorder=0, gid="stage_span")
        if k > 0:
            ax.axvline(t0, color="0.25", ls=(0, (1, 1.5)), lw=1.3, zorder=1, gid="stage_boundary",
                       label="stage switch" if k == 1 else None)
        if labels and name:
            ax.text(lo, 1.01, f" {name}", transform=ax.get_xaxis_transform(), ha="left", va="bottom",
                    fontsize=8, color="0.25", clip_on=False, gid="stage_label")


def _stage_rows(cols: dict, spans) -> list[np.ndarray]:
    """Boolean row mask of every stage: the trajectory's ``stage`` column when it has one, else by time."""
    t = cols["t"]
    if "stage" in cols and len(np.unique(cols["stage"][np.isfinite(cols["stage"])])) == len(spans):
        return [cols["stage"] == k for k in range(len(spans))]
    return [(t >= t0) & (t <= t1) for _, t0, t1 in spans]


def coincidences(cols: dict, names: list[str], spans, metric: str = "loss") -> dict:
    """name -> [(earlier set, stage name), ...]: the stages over which the set's ``metric`` curve lies on that of
    a set drawn before it (closer than COINCIDE_FRAC of the curves' range at every row of the stage)."""
    drawn = [n for n in names if _nonempty(cols, n, metric)]
    ys = {n: cols[f"{n}_{metric}"] for n in drawn}
    finite = np.concatenate([y[np.isfinite(y)] for y in ys.values()] or [np.zeros(0)])
    if finite.size == 0:
        return {}
    tol = COINCIDE_FRAC * max(float(finite.max() - finite.min()), 1e-9)
    rows = _stage_rows(cols, spans)
    out = {}
    for j, b in enumerate(drawn):
        for a in drawn[:j]:
            for (stage, _, _), m in zip(spans, rows):
                ya, yb = ys[a][m], ys[b][m]
                ok = np.isfinite(ya) & np.isfinite(yb)
                if ok.sum() >= 2 and ok.sum() == np.isfinite(yb).sum() and np.all(np.abs(ya - yb)[ok] <= tol):
                    out.setdefault(b, []).append((a, stage))
    return out


def _overlay_ranks(names: list[str], same: dict) -> dict:
    """name -> 0 (drawn plain) or 1 + the largest rank of the earlier sets it lies on (capped)."""
    rank = {}
    for n in names:
        below = [rank.get(a, 0) for a, _ in same.get(n, ())]
        rank[n] = min(1 + max(below), len(OVERLAY_STYLES) - 1) if below else 0
    return rank


def _same_note(pairs: list, stage_order: list[str]) -> str:
    """E.g. '= train, seen in pretrain; = all in finetune' from [(set, stage), ...], stages in run order."""
    by_stage = {}
    for a, stage in pairs:
        by_stage.setdefault(stage, []).append(a)
    parts = [f"= {', '.join(by_stage[st])}" + (f" in {st}" if len(stage_order) > 1 and st else "")
             for st in stage_order if st in by_stage]
    return "; ".join(parts)


def _plot_sets(ax, t, cols, names, metric, colors, *, rank=None, lw_all=2.0):
    drawn = []
    for name in names:
        if not _nonempty(cols, name, metric):
            continue
        ls, lw = OVERLAY_STYLES[(rank or {}).get(name, 0)]
        if name == "all" and ls is None:
            lw = lw_all
        ax.plot(t, cols[f"{name}_{metric}"], color=colors[name], lw=lw, ls=ls or "-", label=name,
                gid=f"set:{name}", zorder=3 + (rank or {}).get(name, 0))
        drawn.append(name)
    return drawn


def _plot_flow(ax, flow: dict | None, names, metric, colors) -> bool:
    """The exact flow's ``metric`` of every set it has, dashed in the set's colour; True if any was drawn."""
    if not flow:
        return False
    t = np.asarray(flow["t"], dtype=np.float64)
    any_drawn = False
    for name in names:
        y = flow.get(f"{name}_{metric}")
        if y is None or not np.any(np.isfinite(np.asarray(y, dtype=np.float64))):
            continue
        ax.plot(t, np.asarray(y, dtype=np.float64), color=colors[name], zorder=6, gid=f"flow:{name}",
                label=f"{name}: exact flow", **FLOW_STYLE)
        any_drawn = True
    return any_drawn


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


def _above_uniform(cols, names, spans, log_A: float) -> str | None:
    """A note when a set's loss rises above log|A| (the uniform prediction's loss) after the start."""
    if not math.isfinite(log_A):
        return None
    t = cols["t"]
    tol = 1e-3 * max(1.0, log_A)
    hits = {}
    for n in names:
        if not _nonempty(cols, n, "loss"):
            continue
        over = np.isfinite(cols[f"{n}_loss"]) & (cols[f"{n}_loss"] > log_A + tol)
        if np.any(over):
            hits[n] = (float(t[over].min()), float(t[over].max()), float(np.nanmax(cols[f"{n}_loss"])))
    if not hits:
        return None
    lo, hi = min(v[0] for v in hits.values()), max(v[1] for v in hits.values())
    top = max(v[2] for v in hits.values())
    return (f"Loss above log|A| ({', '.join(hits)}; up to {top:.3g} nats, t ≈ {lo:.3g}–{hi:.3g}): not a drawing "
            "artefact. The training weights favour other facts' answers (frequent or trained subjects), so many of "
            "these facts' true answers get less than 1/|A|: the mean of -log p rises while the mean probability "
            "of the true answer stays near 1/|A|.")


def _caption(cols, names, spans, log_A, *, flow_drawn: bool) -> str:
    lines = []
    redefined = [n for n in REDEFINED_SETS if n in names and any(_nonempty(cols, n, m) for m in ("loss", "p_true"))]
    if len(spans) > 1:
        text = "Dotted vertical lines: stage switches."
        if redefined:
            fixed = [n for n in names if n not in REDEFINED_SETS]
            text += (f" There {', '.join(redefined)} change members (train = the new stage's weights; seen/unseen = "
                     "subjects trained on so far / not yet), so their curves jump: a change of set, not forgetting.")
            if fixed:
                text += f" Fixed sets ({', '.join(fixed)}) show forgetting as a rise."
        lines.append(text)
    note = _above_uniform(cols, names, spans, log_A)
    if note:
        lines.append(note)
    if flow_drawn:
        lines.append("Dashed: the exact gradient flow from the same initialization, in its set's colour.")
    return "\n".join(textwrap.fill(x, 130) for x in lines)


def _ordered_sets(known: list[str], sets) -> list[str]:
    """The sets to draw, in drawing order: ``sets`` (each checked against the trajectory's), else every set, the
    built-in ones first in a fixed order (so overlays and legends match across plots)."""
    if sets is None:
        return sorted(known, key=lambda n: (list(EVAL_SET_COLORS).index(n) if n in EVAL_SET_COLORS
                                            else len(EVAL_SET_COLORS)))
    names = list(sets)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"no evaluation set {', '.join(map(repr, unknown))} in the trajectory "
                         f"(it has {', '.join(known) or 'none'})")
    return names


def _time_axis(t: np.ndarray) -> tuple[bool, float, float]:
    """(log scale?, left end, right end) of the time axis: logarithmic when t spans more than LOG_X_DECADES
    decades from its first positive value (which is then the left end)."""
    log_x = _is_log_time(t)
    finite = t[np.isfinite(t)]
    t_hi = float(finite.max()) if finite.size else 1.0
    if log_x:
        left = float(finite[finite > 0].min())
    else:
        left = float(finite.min()) if finite.size else 0.0
        if t_hi <= left:
            t_hi = left + 1.0
    return log_x, left, t_hi


def _panels(spans, left: float, log_x: bool):
    """The figure and its three panels sharing the time axis, each with the stages shaded (names on the top
    one) and a grid."""
    fig, axes = plt.subplots(3, 1, figsize=(8.5, 10.0), sharex=True, constrained_layout=True)
    for ax in axes:
        if log_x:
            ax.set_xscale("log", nonpositive="mask")
        _draw_stages(ax, spans, left, labels=ax is axes[0])
        ax.grid(True, which="major", lw=0.4, color="0.85", zorder=0)
    return fig, axes


def _label_coinciding(ax, drawn: list[str], same: dict, spans) -> None:
    """A set drawn over another says so in the legend: its label gets '(= <set> in <stage>; ...)'."""
    for line in ax.get_lines():
        n = str(line.get_gid() or "")[4:]
        if n in drawn and same.get(n):
            line.set_label(f"{n} ({_same_note(same[n], [sp[0] for sp in spans])})")


def _loss_panel(ax, t, cols, names, colors, rank, same, spans, ents, left, *, log_A, flow) -> bool:
    """Panel 1: every set's loss (coinciding ones labelled), the exact flow's, log|A| and H(A|R) of ``all``;
    the sets' legend. True if the flow was drawn."""
    drawn = _plot_sets(ax, t, cols, names, "loss", colors, rank=rank)
    _label_coinciding(ax, drawn, same, spans)
    flow_drawn = _plot_flow(ax, flow, names, "loss", colors)
    ax.axhline(log_A, color="0.3", ls="--", lw=1, gid="reference", label=rf"$\log|A|$ = {log_A:.3g} (uniform)")
    h_all = [e.get("all") for e in ents]
    if any(v is not None and math.isfinite(v) for v in h_all):
        h0 = next(v for v in h_all if v is not None and math.isfinite(v))
        _level_lines(ax, spans, h_all, left, color="0.3", ls=(0, (2, 2)), lw=1,
                     label=rf"$H(A|R)$ of all = {h0:.3g} (relation only)")
    ax.set_ylabel("loss (nats)")
    ax.set_ylim(bottom=min(0.0, ax.get_ylim()[0]))
    _legend_outside(ax, title="evaluation set")
    return flow_drawn


def _probability_panel(ax, t, cols, names, colors, rank, *, log_A, flow) -> bool:
    """Panel 2: every set's mean probability of the true answer, the exact flow's, 1/|A|. True if the flow was
    drawn."""
    _plot_sets(ax, t, cols, names, "p_true", colors, rank=rank)
    flow_drawn = _plot_flow(ax, flow, names, "p_true", colors)
    if math.isfinite(log_A):
        uniform = ax.axhline(math.exp(-log_A), color="0.3", ls="--", lw=1, gid="reference",
                             label=r"$1/|A|$ (uniform)")
        _legend_outside(ax, handles=[uniform])  # the sets' colours are those of the legend above
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("mean probability of\nthe true answer")
    return flow_drawn


def _excess_panel(ax, t, cols, colors, spans, ents, left, *, log_A) -> None:
    """Panel 3 when ``unseen`` has an excess loss: that curve, its uniform-start level log|A| - H(A|R) and 0 (the
    relation-only predictor), with a legend saying what they mean."""
    ax.plot(t, cols["unseen_excess"], color=colors["unseen"], lw=1.6, gid="set:unseen",
            label="unseen: excess = loss $-$ $H(A|R)$,\nthe loss above the relation-only\npredictor's", zorder=3)
    h_unseen = [e.get("unseen") for e in ents]
    if math.isfinite(log_A) and any(v is not None and math.isfinite(v) for v in h_unseen):
        _level_lines(ax, spans, [None if v is None else log_A - v for v in h_unseen], left, color="0.3",
                     ls="--", lw=1, label=r"$\log|A| - H(A|R)$: uniform" + "\nprediction (the start)")
    ax.axhline(0.0, color="0.3", ls=(0, (2, 2)), lw=1, gid="reference",
               label="0: relation-only predictor $p(a|r)$")
    ax.set_ylabel("excess loss of unseen\nsubjects (nats)")
    ax.set_ylim(bottom=min(-0.05, ax.get_ylim()[0]))
    handles = ax.get_legend_handles_labels()[0]
    handles.append(Line2D([], [], ls="none", label="above 0 once $p(a|r)$ is learned:\nconfident wrong answers"))
    _legend_outside(ax, handles=handles)


def _gap_panel(ax, t, cols, names, colors, rank, *, flow) -> bool:
    """Panel 3 otherwise: every set's hallucination gap (coloured as in the loss panel's legend) and the exact
    flow's. True if the flow was drawn."""
    _plot_sets(ax, t, cols, names, "hallucination_gap", colors, rank=rank)
    flow_drawn = _plot_flow(ax, flow, names, "hallucination_gap", colors)
    ax.set_ylabel("hallucination gap\n" + r"KL$(p(\cdot|r)\,\|\,\hat p)$ (nats)")
    ax.set_ylim(bottom=min(0.0, ax.get_ylim()[0]))
    return flow_drawn


def _caption_and_title(fig, cols, names, spans, log_A, title, *, flow_drawn: bool) -> None:
    """The caption under the panels (stage switches, a loss above log|A|, the dashed flow) and the title
    (default: the stages' names in order)."""
    caption = _caption(cols, names, spans, log_A, flow_drawn=flow_drawn)
    if caption:
        fig.supxlabel(caption, fontsize=8, x=0.01, ha="left", color="0.2", gid="caption")
    if title is None:
        title = "Multi-stage experiment: " + r" $\to$ ".join(n for n, _, _ in spans if n)
    fig.suptitle(title, fontsize=11)


def experiment_figure(traj, stages, *, log_A, entropies=None, sets=None, title=None, flow=None):
    """Figure of a multi-stage experiment, three panels sharing the time axis.

    1. loss of every evaluation set, with log|A| (uniform prediction) and H(A|R) of ``all`` (relation-only
       level) as dashed lines; 2. mean probability of the true answer; 3. the ``unseen`` set's excess loss
       (loss - H(A|R): its loss above that of the relation-only predictor p(a|r); log|A| - H(A|R) at the
       uniform start, 0 at p(a|r), above 0 once p(a|r) is learned: confident wrong answers) when it has any
       value, else every set's hallucination gap. Each set has one colour in every figure
       (figures.style.EVAL_SET_COLORS). A set whose curve lies on an earlier set's over a whole stage is
       drawn dotted (dash-dotted, ...) on top, and its legend entry says which it equals where. Stage switches are
       dotted vertical lines, stage names on top; a caption under the panels says that train/seen/unseen are
       redefined there, and explains a loss above log|A| when there is one. Sets with no value (all NaN, e.g.
       ``unseen`` once every subject was seen) are not drawn. ``sets`` picks and orders the sets (default: all
       of them: the built-in ones in the order of figures.style.EVAL_SET_COLORS, then the others in column
       order). ``flow``: the exact flow at the same times (``t`` and ``<set>_<metric>``
       columns), drawn dashed in the set's colour. The time axis is logarithmic when t spans more than two
       decades from its first positive value (rows at t = 0 are then off the axis), else linear.
    """
    cols = _columns(traj)
    names = _ordered_sets(set_names(cols), sets)
    t = cols["t"]
    spans = _stage_spans(stages, cols)
    ents = _stage_entropies(entropies, stages, len(spans))
    colors = _set_colors(names)
    same = coincidences(cols, names, spans)
    rank = _overlay_ranks(names, same)
    log_x, left, t_hi = _time_axis(t)
    fig, (ax1, ax2, ax3) = _panels(spans, left, log_x)
    flow_drawn = _loss_panel(ax1, t, cols, names, colors, rank, same, spans, ents, left, log_A=log_A, flow=flow)
    flow_drawn |= _probability_panel(ax2, t, cols, names, colors, rank, log_A=log_A, flow=flow)
    if "unseen" in names and _nonempty(cols, "unseen", "excess"):
        _excess_panel(ax3, t, cols, colors, spans, ents, left, log_A=log_A)
    else:
        flow_drawn |= _gap_panel(ax3, t, cols, names, colors, rank, flow=flow)
    ax3.set_xlim(left, t_hi)
    ax3.set_xlabel("flow time t (log scale)" if log_x else "flow time t")
    _caption_and_title(fig, cols, names, spans, log_A, title, flow_drawn=flow_drawn)
    return fig


def sweep_figure(x, ys, *, xlabel, ylabel, title=None, logy=False, logx=False, references=None, xticks=None,
                 styles=None):
    """One line with markers per series ``ys`` (name -> values at ``x``; NaN where not reached, left as a gap),
    legend outside the axes. E.g. time to eps against the Zipf exponent, total time against warm-up size k.

    ``references``: label -> y, each a horizontal line across the axes (gid ``reference``), for a value that
    does not depend on x (e.g. the time without warm-up); ``xticks``: x values to label (e.g. the grid's, on a
    log axis); ``styles``: series name -> Line2D keywords (colour, line style, marker) replacing the default."""
    x = np.asarray(x, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(7.5, 4.4), constrained_layout=True)
    markers = ("o", "s", "^", "D", "v", "P", "X", "*")
    cmap = plt.get_cmap("tab10")
    for k, (name, y) in enumerate(ys.items()):
        y = np.asarray(y, dtype=np.float64)
        if y.shape != x.shape:
            raise ValueError(f"series {name!r} has {y.size} values for {x.size} x values")
        kw = dict(marker=markers[k % len(markers)], ms=5, lw=1.4, color=cmap(k % 10))
        kw.update((styles or {}).get(name, {}))
        ax.plot(x, y, label=str(name), gid=f"series:{name}", **kw)
    ref_styles = ("--", "-.", ":")
    for k, (name, y) in enumerate((references or {}).items()):
        ax.axhline(float(y), color="0.35", ls=ref_styles[k % len(ref_styles)], lw=1.2, label=str(name),
                   gid="reference")
    if logy:
        ax.set_yscale("log", nonpositive="mask")
    if logx:
        ax.set_xscale("log", nonpositive="mask")
    if xticks is not None:
        ax.set_xticks(list(xticks), [f"{v:g}" for v in xticks])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, lw=0.4, color="0.85")
    if title:
        ax.set_title(title, fontsize=10)
    if ys or references:
        _legend_outside(ax)
    return fig


def save_experiment_figures(folder, traj, stages, *, log_A, entropies=None, flow=None) -> list[str]:
    """Write ``experiment.png`` and ``experiment.pdf`` of :func:`experiment_figure` into ``folder`` (created if
    missing), each atomically; returns the written paths. ``flow``: as in :func:`experiment_figure`."""
    os.makedirs(folder, exist_ok=True)
    fig = experiment_figure(traj, stages, log_A=log_A, entropies=entropies, flow=flow)
    paths = []
    try:
        for ext in ("png", "pdf"):
            path = os.path.join(folder, f"experiment.{ext}")
            save_figure(fig, path, dpi=150)
            paths.append(path)
    finally:
        plt.close(fig)
    return paths
