"""Figures of a phase-time sweep (analysis.sweep): t1, t2, t3 and t2 - t1 against log(1/alpha) and against S.

Every series is drawn, each with its own colour, marker and line style; a figure legend to the right of the
panels names them. Where series coincide (t1 does not depend on S while the hallucination stage exists) their
markers are drawn concentric, largest first, and the legend says which coincide. Line gids: ``exact:<label>``
(markers, exact phase times) and ``leading:<label>`` (lines, leading order + O(1)). Log axes get at least
three labelled ticks.
"""
from __future__ import annotations

import math
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter  # noqa: E402

QUANTITIES = (("t1", "$t_1$ (end of stage 1)"), ("t2", "$t_2$ (end of stage 2)"),
              ("t3", "$t_3$ (loss $\\leq \\varepsilon$)"),
              ("plateau_length", "$t_2 - t_1$ (plateau length)"))
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h", "p", "*")
LINESTYLES = ("-", "--", "-.", ":")
MAX_SERIES = 40  # more series than this (huge grids): this many, evenly spaced, and the legend says so
COINCIDE_FRAC = 0.005  # series closer than this fraction of a panel's range lie on each other: markers concentric


def _leading(cols, name):
    if name == "plateau_length":
        return cols["t2_leading_o1"] - cols["t1_leading_o1"]
    return cols[f"{name}_leading_o1"]


def _groups(key) -> list:
    """(group key, row indices) for every distinct row of ``key`` (n, k), in sorted key order; O(n log n)."""
    if key.shape[0] == 0:
        return []
    uniq, inv = np.unique(key, axis=0, return_inverse=True)
    inv = np.asarray(inv).reshape(-1)
    order = np.argsort(inv, kind="stable")
    bounds = np.searchsorted(inv[order], np.arange(uniq.shape[0] + 1))
    return [(uniq[k], order[bounds[k]:bounds[k + 1]]) for k in range(uniq.shape[0])]


def _subsample(groups: list) -> tuple[list, int]:
    """At most MAX_SERIES groups, evenly spaced (first and last kept); with the number there were."""
    n = len(groups)
    if n <= MAX_SERIES:
        return groups, n
    keep = np.unique(np.round(np.linspace(0, n - 1, MAX_SERIES)).astype(int))
    return [groups[k] for k in keep], n


def _styles(n: int) -> list[dict]:
    """A distinct colour (tab10 up to ten series, else viridis), marker and line style per series."""
    if n <= 10:
        colors = [plt.get_cmap("tab10")(k) for k in range(n)]
    else:
        colors = [plt.get_cmap("viridis")(k / (n - 1)) for k in range(n)]
    return [dict(color=colors[k], marker=MARKERS[k % len(MARKERS)], ls=LINESTYLES[k % len(LINESTYLES)])
            for k in range(n)]


def _coincident(series, name, *, log: bool = False) -> list[list[int]]:
    """Groups (of >= 2 series indices) whose exact ``name`` values lie on each other at the same x: closer than
    COINCIDE_FRAC of the panel's range (in log y on a log axis) at every point, NaN where the other is NaN."""
    ys = []
    for _, _, c in series:
        y = np.asarray(c[name], dtype=np.float64)
        if log:
            with np.errstate(divide="ignore", invalid="ignore"):
                y = np.where(y > 0, np.log(y), np.nan)
        ys.append(y)
    finite = np.concatenate([y[np.isfinite(y)] for y in ys] or [np.zeros(0)])
    if finite.size == 0:
        return []
    tol = COINCIDE_FRAC * max(float(finite.max() - finite.min()), 1e-12 * max(1.0, float(np.abs(finite).max())))
    out, used = [], set()
    for i, (_, xi, _) in enumerate(series):
        if i in used or not np.any(np.isfinite(ys[i])):
            continue
        same = [i]
        for j in range(i + 1, len(series)):
            xj = series[j][1]
            if j in used or xj.shape != xi.shape or not np.allclose(xj, xi, rtol=1e-12):
                continue
            a, b = ys[i], ys[j]
            if np.array_equal(np.isnan(a), np.isnan(b)) and np.all(np.abs(a - b)[np.isfinite(a)] <= tol):
                same.append(j)
        if len(same) > 1:
            used.update(same)
            out.append(same)
    return out


def _tick(v: float) -> str:
    """A tick label: whole numbers in full (with thousands separators) up to a million, else 3 digits."""
    if 1 <= abs(v) < 1e6 and abs(v - round(v)) <= 1e-9 * abs(v):
        return f"{v:,.0f}"
    return f"{v:.3g}"


def label_log_axis(axis, lo: float, hi: float) -> None:
    """At least three labelled major ticks on a log ``axis`` spanning [lo, hi] (0 < lo < hi): decades, else
    1-2-5, else 1-9 per decade, else three geometric steps; minor ticks unlabelled. Many decades: matplotlib's."""
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
        return
    e0, e1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    ticks = []
    for subs in ((1.0,), (1.0, 2.0, 5.0), tuple(float(m) for m in range(1, 10))):
        ticks = [m * 10.0 ** e for e in range(e0, e1 + 1) for m in subs]
        ticks = [v for v in ticks if lo * (1 - 1e-9) <= v <= hi * (1 + 1e-9)]
        if len(ticks) >= 3:
            break
    else:
        ticks = list(np.geomspace(lo, hi, 5)[1:-1])
    if len(ticks) > 8 and len(ticks) >= 3 and ticks[1] / ticks[0] >= 10:  # many decades: the default is fine
        return
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(FuncFormatter(lambda v, _: _tick(v)))
    axis.set_minor_formatter(NullFormatter())


def _coincidence_note(qlabel: str, labels: list[str]) -> str:
    """E.g. '$t_1$: S=16, 32, 64 coincide (same R=4, D=8): concentric markers', from labels 'k=v, k=v'."""
    parsed = [dict(part.split("=", 1) for part in lab.split(", ")) for lab in labels]
    keys = list(parsed[0])
    if any(list(p) != keys for p in parsed):
        return f"{qlabel}: " + "; ".join(labels) + " coincide: concentric markers"
    vary = [k for k in keys if len({p[k] for p in parsed}) > 1]
    same = [k for k in keys if k not in vary]
    text = " and ".join(f"{k}=" + ", ".join(p[k] for p in parsed) for k in vary)
    if same:
        text += " (same " + ", ".join(f"{k}={parsed[0][k]}" for k in same) + ")"
    return f"{qlabel}: {text} coincide: concentric markers"


def _draw(axes, series, xlabel, *, log_x: bool, xticks=None, total=None,
          key_note: str = "markers: exact phase times (reduced flow or full run)\nlines: leading order + O(1)"):
    """Draw ``series`` (label, x, columns) on the four quantity panels; returns the legend handles. ``total``:
    the number of series there were, when only some are drawn."""
    styles = _styles(len(series))
    notes = []
    for ax, (name, qlabel) in zip(axes, QUANTITIES):
        # series that coincide on this panel get concentric open markers: the first drawn largest
        size = {}
        for group in _coincident(series, name, log=log_x):
            m = len(group)
            size.update({k: 4.0 + 8.0 * (m - 1 - p) / (m - 1) for p, k in enumerate(group)})
            notes.append(_coincidence_note(qlabel.split(" (")[0], [series[k][0] for k in group]))
        for gi, ((label, x, c), st) in enumerate(zip(series, styles)):
            ax.plot(x, c[name], ls="none", marker=st["marker"], ms=size.get(gi, 5.0), mfc="none", mec=st["color"],
                    mew=1.2, zorder=3, gid=f"exact:{label}", label=label if name == "t1" else None)
            if np.any(np.isfinite(np.asarray(c["leading:" + name], dtype=np.float64))):  # none: no empty line
                ax.plot(x, c["leading:" + name], ls=st["ls"], color=st["color"], lw=1, zorder=2,
                        gid=f"leading:{label}")
        if log_x:
            ax.set_xscale("log")
            if xticks is not None:
                ax.set_xticks(xticks, [f"{v:g}" for v in xticks])
                ax.minorticks_off()
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{qlabel}\n(flow time)")
    lines = _has_lines(series)
    handles = [Line2D([], [], color=st["color"], marker=st["marker"], mfc="none", ls=st["ls"] if lines else "none",
                      lw=1, label=label) for (label, _, _), st in zip(series, styles)]
    handles.append(Line2D([], [], ls="none", label=key_note))
    if total is not None and total > len(series):
        notes.insert(0, f"showing {len(series)} of {total:,} series, evenly spaced; every row is in sweep.csv")
    handles += [Line2D([], [], ls="none", label=textwrap.fill(t, 48)) for t in notes]
    return handles


def _suptitle(fig, text, fontsize):
    """A title over the panels, left-aligned and wrapped, so it stays clear of the legend at the top right."""
    fig.suptitle(textwrap.fill(text, 95), x=0.01, ha="left", fontsize=fontsize)


def _finish(fig, handles, n_series: int) -> None:
    if n_series:
        fig.legend(handles=handles, loc="outside right upper", fontsize=7, frameon=False,
                   ncols=1 + (n_series - 1) // 24, handlelength=3)


ZIPF_FIELDS = ("zipf_subjects", "zipf_relations")


def _key_fields(cols, x_field: str) -> list[str]:
    """The grid fields that tell series apart on a figure against ``x_field``: S, R, D, alpha, and each Zipf
    exponent the grid has and sets anywhere (it varies, or is not 0)."""
    fields = [k for k in ("S", "R", "D", "alpha") if k in cols]
    fields += [k for k in ZIPF_FIELDS if k in cols and np.any(np.asarray(cols[k], dtype=np.float64) != 0)]
    return [k for k in fields if k != x_field]


def _field_text(k: str, v: float) -> str:
    return f"{k}={int(v)}" if k in ("S", "R", "D") else (f"alpha={v:.2g}" if k == "alpha" else f"{k}={v:g}")


def _series(cols, x_field: str, x_all, columns) -> tuple[list, int, list[str]]:
    """(series, number there were, key fields): one series per distinct value of the key fields with at least
    two distinct x values (a series with one x is a point, not a dependence on x), sorted by x."""
    fields = _key_fields(cols, x_field)
    key = np.stack([np.asarray(cols[k], dtype=np.float64) for k in fields], axis=1)
    xs = np.asarray(cols[x_field], dtype=np.float64)
    groups = [(g, idx) for g, idx in _groups(key) if np.unique(xs[idx]).size >= 2]
    groups, total = _subsample(groups)
    series = []
    for g, idx in groups:
        idx = idx[np.argsort(x_all[idx], kind="stable")]
        series.append((", ".join(_field_text(k, v) for k, v in zip(fields, g)), np.asarray(x_all[idx], float),
                       columns(idx)))
    return series, total, fields


def _has_lines(series) -> bool:
    return any(np.any(np.isfinite(np.asarray(c["leading:" + name], dtype=np.float64)))
               for _, _, c in series for name, _ in QUANTITIES)


def _lines_note(series, what: str) -> tuple[str, str]:
    """(legend key note, title clause) about the lines: what they are, or that none could be drawn."""
    if not _has_lines(series):
        return ("markers: exact phase times (reduced flow or full run)\nno lines: " + what + "\nis computed for "
                "reduced-flow rows only", "markers exact (no leading-order line for these rows)")
    partial = any(not np.any(np.isfinite(np.asarray(c["leading:t1"], dtype=np.float64))) for _, _, c in series)
    return ("markers: exact phase times (reduced flow or full run)\nlines: " + what
            + ("\n(reduced-flow rows only)" if partial else ""),
            "markers exact, lines " + what + (" where defined" if partial else ""))


def plot_sweep(cols, slopes) -> dict:
    """Figures ``phase_times_alpha`` (one panel per quantity, one series per setting of the other grid fields,
    drawn when some series has at least two values of alpha) and ``phase_times_S`` (likewise against S), and
    ``phase_times_zipf`` when a Zipf exponent varies. A figure whose x axis would hold one value per series
    is not drawn (the sweep then has the figures of the fields that do vary). Series labels name every grid
    field that tells series apart (S, R, D, alpha, and the Zipf exponents when set).

    cols: sweep.csv columns (name -> (n,) array); slopes: the fitted slopes (list of dicts).
    Returns name -> Figure (saved as ``{name}.png``).

    Markers: exact phase times of each configuration (reduced quadrature or full run).
    Lines: leading-order prediction [log(1/alpha^2) + O(1) term] / rate of the mode that crosses (reduced-flow
    rows; the title says only what is drawn).
    """
    names = [name for name, _ in QUANTITIES]
    n = np.asarray(cols["S"]).size
    lead = {}
    for name in names:
        try:
            lead[name] = np.asarray(_leading(cols, name), dtype=np.float64)
        except KeyError:  # no leading-order columns at all
            lead[name] = np.full(n, np.nan)

    def columns(idx):
        c = {name: np.asarray(cols[name], dtype=np.float64)[idx] for name in names}
        c.update({"leading:" + name: lead[name][idx] for name in names})
        return c

    figs = {}
    # against log(1/alpha): one series per setting of the other fields
    series, total, fields = _series(cols, "alpha", np.log(1 / np.asarray(cols["alpha"], dtype=np.float64)), columns)
    if series:
        key_note, clause = _lines_note(series, "leading order + O(1)")
        fig, axs = plt.subplots(2, 2, figsize=(12.5, 7.8), layout="constrained")
        axes = list(axs.flat)
        handles = _draw(axes, series, r"$\log(1/\alpha)$", log_x=False, total=total,  # t is linear in log(1/alpha)
                        key_note=key_note)
        for ax, (name, _) in zip(axes, QUANTITIES):
            fitted = [s for s in slopes if s["quantity"] == name and s["against"] == "log(1/alpha)"
                      and s["fitted"] is not None]
            if fitted:
                vary = [k for k in ("S", "R", "D") if len({s[k] for s in fitted}) > 1] or ["S"]
                parts = [", ".join(f"{k}={s[k]}" for k in vary) + f": {s['fitted']:.4g} ({s['predicted']:.4g})"
                         for s in fitted]
                lines = ["; ".join(parts[i:i + 3]) for i in range(0, len(parts), 3)]
                if len(lines) > 4:
                    lines = lines[:4] + [f"... {len(parts) - 12} more in slopes.json"]
                ax.set_title("slope against log(1/alpha), fitted (predicted):\n" + "\n".join(lines), fontsize=7,
                             loc="left")
        _finish(fig, handles, len(series))
        _suptitle(fig, f"Phase times against the initialization scale: {clause}", fontsize=10)
        figs["phase_times_alpha"] = fig

    # against S: one series per setting of the other fields with at least two values of S (every one of them)
    series, total, fields = _series(cols, "S", np.asarray(cols["S"], dtype=np.float64), columns)
    if series:
        key_note, clause = _lines_note(series, "leading order + O(1)")
        fig, axs = plt.subplots(2, 2, figsize=(12.5, 7.8), layout="constrained")
        axes = list(axs.flat)
        Svals = np.unique(np.concatenate([x for _, x, _ in series]))
        handles = _draw(axes, series, "number of subjects S", log_x=True, total=total, key_note=key_note,
                        xticks=Svals if Svals.size <= 12 else None)  # label the grid's S values themselves
        for ax in axes:
            plotted = np.concatenate([np.asarray(line.get_ydata(), dtype=np.float64) for line in ax.get_lines()]
                                     or [[]])
            if np.any(np.isfinite(plotted) & (plotted > 0)):  # a phase that never happens (null, or all at t = 0)
                ax.set_yscale("log")                           # stays on a linear axis
                label_log_axis(ax.yaxis, *ax.get_ylim())
            if Svals.size > 12:
                label_log_axis(ax.xaxis, *ax.get_xlim())
        _finish(fig, handles, len(series))
        _suptitle(fig, f"Phase times against S: {clause} (t2, t3 grow like S; t1 does not depend on S while the "
                       "hallucination stage exists)", fontsize=9)
        figs["phase_times_S"] = fig
    if any(k in cols and np.unique(cols[k]).size > 1 for k in ZIPF_FIELDS):
        fig = plot_zipf(cols)
        if fig is not None:
            figs["phase_times_zipf"] = fig
    return figs


def plot_zipf(cols):
    """Phase times against the Zipf exponent that varies most (subjects or relations): markers measured on the
    full flow, lines the leading-order escape schedule of analysis.theory.staircase (no O(1) term), one series per
    setting of the other grid fields (S, R, D, alpha, the other exponent when set) with at least two exponents;
    None when there is no such series."""
    names = [name for name, _ in QUANTITIES]
    vary = max(ZIPF_FIELDS, key=lambda k: np.unique(cols[k]).size)
    lead = {f"t{i}": np.asarray(cols[f"t{i}_leading"], dtype=np.float64) for i in (1, 2, 3)}
    lead["plateau_length"] = lead["t2"] - lead["t1"]

    def columns(idx):
        c = {name: np.asarray(cols[name], dtype=np.float64)[idx] for name in names}
        c.update({"leading:" + name: lead[name][idx] for name in names})
        return c

    series, total, _ = _series(cols, vary, np.asarray(cols[vary], dtype=np.float64), columns)
    if not series:
        return None
    fig, axs = plt.subplots(2, 2, figsize=(12.5, 7.8), layout="constrained")
    axes = list(axs.flat)
    key_note = "markers: phase times of the full flow"
    if _has_lines(series):
        key_note += "\nlines: leading-order escape schedule\n(saddle to saddle, no O(1) term)"
    handles = _draw(axes, series, f"Zipf exponent of the {vary.replace('zipf_', '')}", log_x=False, total=total,
                    key_note=key_note)
    for ax in axes:
        plotted = np.concatenate([np.asarray(line.get_ydata(), dtype=np.float64) for line in ax.get_lines()]
                                 or [[]])
        if np.any(np.isfinite(plotted) & (plotted > 0)):
            ax.set_yscale("log")
            label_log_axis(ax.yaxis, *ax.get_ylim())
    _finish(fig, handles, len(series))
    _suptitle(fig, "Phase times against frequency imbalance: thresholds of SPEC §3 with H(A|R) under the "
                   "Zipf weights; markers measured on the exact flow"
                   + (", lines predicted at leading order" if _has_lines(series) else ""), fontsize=9)
    return fig
