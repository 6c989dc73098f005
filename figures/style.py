"""Shared drawing conventions of every figure: one colour per evaluation set, whatever plot draws it.

``set_color(name)`` is the colour of evaluation set ``name`` (``EVAL_SET_COLORS`` for the built-in and the
shipped experiments' sets; any other name gets a colour fixed by the name itself, so it too is the same in
every plot). The exact flow drawn next to a trained run uses its set's colour with ``FLOW_STYLE``.
"""
from __future__ import annotations

import zlib

# every built-in evaluation set of dynamics.experiment.schedule (all, train, seen, unseen, top10, middle,
# bottom50) and the shipped experiments' named sets (old, new): one colour each, never reused
EVAL_SET_COLORS = {
    "all": "#000000",        # black
    "train": "#1f77b4",      # blue
    "seen": "#ff7f0e",       # orange
    "unseen": "#d62728",     # red
    "old": "#9467bd",        # purple
    "new": "#2ca02c",        # green
    "top10": "#17becf",      # cyan
    "middle": "#bcbd22",     # olive
    "bottom50": "#8c564b",   # brown
}
# other names: one of these, by a hash of the name (stable across runs and processes)
EXTRA_COLORS = ("#e377c2", "#7f7f7f", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd",
                "#e6550d", "#31a354")
# the exact gradient flow drawn with a trained run: dashed, in the set's colour
FLOW_STYLE = dict(ls=(0, (5, 3)), lw=1.6, alpha=0.9)


def set_color(name: str) -> str:
    """The colour of evaluation set ``name``: the table's, else a fixed one chosen by the name."""
    name = str(name)
    if name in EVAL_SET_COLORS:
        return EVAL_SET_COLORS[name]
    return EXTRA_COLORS[zlib.crc32(name.encode()) % len(EXTRA_COLORS)]


def set_colors(names) -> dict:
    """name -> colour for every name (see :func:`set_color`)."""
    return {n: set_color(n) for n in names}
