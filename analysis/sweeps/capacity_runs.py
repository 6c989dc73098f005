"""Capacity searches as sweep runs (kind ``capacity`` of analysis.sweeps.runner and ``frd-grid capacity``;
SPEC §10): one run is the search of SPEC §9 for one model size and one seed, computed by analysis.capacity's
own run_sweep (memories) or run_transformer_sweep (transformer) on the settings of that one size and seed.

- CAPACITY_FIELDS: the fields of a run; capacity_settings(fields): its validated CapacitySettings or
  TransformerSettings (ConfigError: one line); capacity_memory_bytes(settings): its peak memory estimate.
- capacity_row(settings, keep): the run's numbers (capacity, flags, probes, parameter count, ...).
- capacity_bands(rows, spec): over the seeds of every size, mean / std / min / max of the capacity, and per
  series (the runs that differ only in size and seed) the log-log scaling fit with its 95 % interval
  (CapacityBandsResult: bands.csv, bands.json, capacity.png, capacity.pdf).

Torch is imported only when a run is built or executed, so that ``frd-grid --help`` stays cheap.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from common.errors import ConfigError, check_choice, check_int
from common.io import jsonable

MODELS = ("linear", "mlp", "construction", "transformer")
CAPACITY_FIELDS = ("model", "construction_of", "d", "alpha", "m", "target", "M", "heads", "head_dim", "attn_ratio",
                   "mlp_width", "mlp_ratio", "scaling", "D", "T", "batch", "eval_every", "restarts", "eval_size",
                   "seed", "lr", "max_steps", "rtol", "max_doublings", "dtype", "device")
MEMORY_ONLY = ("construction_of", "alpha", "m", "target", "M")
TRANSFORMER_ONLY = ("heads", "head_dim", "attn_ratio", "mlp_width", "mlp_ratio", "scaling", "D", "T", "batch",
                    "eval_every", "restarts", "eval_size")
# the fields that change the parameter count: runs that differ only in these and in seed form one series
SIZE_FIELDS = ("d", "alpha", "m", "heads", "head_dim", "attn_ratio", "mlp_width", "mlp_ratio")
DEFAULT_D = 8
BITS_PER_PARAM = 8.0  # the information bound's bits per parameter: frd-capacity's default (SPEC §9)
MAX_WIDTH = 2**24
# above this lower bound on a run's bytes (parameters and Adam moments alone) the bracket is not computed: the
# transformer's bracket counts task sizes up to P/4 facts one by one, and the run is refused anyway
HUGE_BYTES = 2**36


def _lrs(value) -> tuple:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def capacity_settings(fields: dict):
    """The settings of one capacity run (one size, one seed) from canonical fields: a CapacitySettings with
    ``with_construction`` off (models linear, mlp, construction) or a TransformerSettings (model transformer),
    each with ``ds = (d,)`` and ``seeds = (seed,)``. Unset fields keep frd-capacity's defaults (d 8, seed 0,
    lr 0.03, 2048 steps for memories and 1024 for the transformer). ``m`` (the MLP memory's width) may be given
    instead of ``alpha`` (then alpha = m/d). ConfigError (one line) if a value is not allowed, or if a field of
    the other kind of model is given."""
    f = dict(fields)
    model = check_choice("model", f.pop("model", "linear"), MODELS)
    d = check_int("d", f.pop("d", DEFAULT_D), 1, 2**31 - 1)
    seed = f.pop("seed", 0)
    lrs = _lrs(f.pop("lr", 3e-2))
    built = model == "construction" and f.get("construction_of") == "transformer"
    if model == "transformer" or built:
        f.pop("construction_of", None)
        given = [n for n in MEMORY_ONLY if n in f]
        if given:
            raise ConfigError(f"{given[0]} = {f[given[0]]!r} is a setting of the memories (models linear, mlp and "
                              "their constructions); for the transformer and its construction give heads, head_dim "
                              "or attn_ratio, mlp_width or mlp_ratio")
        from analysis.capacity.transformer import TransformerSettings

        settings = _construct(TransformerSettings, ds=(d,), seeds=(seed,), lrs=lrs, with_construction=built,
                              with_training=not built, **f)
    else:
        given = [n for n in TRANSFORMER_ONLY if n in f]
        if given:
            raise ConfigError(f"{given[0]} = {f[given[0]]!r} is a transformer setting; it applies with model = "
                              f"transformer, not {model}")
        kind = f.get("construction_of", "linear") if model == "construction" else model
        if model != "construction":
            f.pop("construction_of", None)  # read by model construction only: not part of a trained memory's run
        alpha = f.pop("alpha", None)
        if "m" in f:
            m = f.pop("m")
            if alpha is not None:
                raise ConfigError(f"m = {m!r} and alpha = {alpha!r} are both given; give the MLP width m or its "
                                  "ratio alpha = m/d, not both")
            if kind != "mlp":
                raise ConfigError(f"m = {m!r} is the MLP memory's width; model {model}"
                                  + (" of linear" if model == "construction" else "") + " has none (use model mlp)")
            alpha = check_int("m", m, 1, MAX_WIDTH) / d  # round(alpha·d) = m again
        if kind != "mlp":
            alpha = None  # a linear memory has no width: alpha changes nothing, so it is not part of the run
        from analysis.capacity.sweep import CapacitySettings

        settings = _construct(CapacitySettings, model=model, ds=(d,), seeds=(seed,), lrs=lrs,
                              alphas=(1.0 if alpha is None else alpha,), with_construction=False, **f)
    from common.errors import check_device

    check_device("device", settings.device)
    return settings


def _construct(cls, **kw):
    try:
        return cls(**kw)
    except TypeError as exc:  # a value of the wrong type that the checks did not catch
        raise ConfigError(f"{exc}") from None


def is_transformer(settings) -> bool:
    return settings.__class__.__name__ == "TransformerSettings"


def capacity_memory_bytes(settings) -> int:
    """Estimated peak bytes of the run: its largest probe (bracket top × 2^max_doublings), as frd-capacity's
    check_memory estimates it (trained models: the batched training step; constructions: the linear algebra)."""
    itemsize = 4 if settings.dtype == "float32" else 8
    lrs = len(settings.lrs)
    if is_transformer(settings):
        from models.transformer import transformer_parameter_count

        from analysis.capacity.transformer import construction_bytes, training_bytes

        shape = settings.shape(settings.ds[0])
        lower = 4 * itemsize * lrs * transformer_parameter_count(*shape)
        if lower > HUGE_BYTES:
            return int(lower)
        size = settings.bracket(*shape)[1] * 2**settings.max_doublings
        if not settings.with_training:  # the construction alone (model construction of transformer)
            return int(construction_bytes(settings, size, *shape))
        return int(training_bytes(settings, size, *shape))
    from analysis.capacity.oracles import construction_bytes, training_bytes

    d, m = settings.sizes()[0]
    N = settings.largest_N(d, m)
    M = settings.M if settings.target == "fixed" else N
    need = construction_bytes(settings.kind, N, d, m, M)
    if settings.model != "construction":
        need = max(need, training_bytes(settings.kind, N, d, m, M, lrs, itemsize))
    return int(need)


def capacity_row(settings, keep: bool = False) -> tuple[dict, dict | None]:
    """Search the capacity of the run's one size and seed; return its row and (keep) the files of its run
    folder (results.json: the search result; probes.csv: N and ok of every probe, in order). Row: model,
    memory (linear or mlp: the memory searched), d, m / heads, head_dim, mlp_width, parameters (P), capacity
    (memories: the largest N stored; transformer: the facts S·R stored, with size, S, R, D), below_bracket,
    above_bracket, n_probes, probes ("N:1 N:0 ..." in order), search_seconds, device."""
    if is_transformer(settings):
        from analysis.capacity.transformer import run_transformer_sweep

        res = run_transformer_sweep(settings)
        cols = res.rows()  # one row: the trained model's, or the construction's when it is searched alone
        searched = res.results if settings.with_training else res.construction
        row = dict(model=cols["model"][0], d=cols["d"][0], heads=cols["H"][0], head_dim=cols["d_h"][0],
                   mlp_width=cols["m"][0], parameters=cols["params"][0], capacity=int(cols["facts"][0]),
                   size=cols["size"][0], S=cols["S"][0], R=cols["R"][0], D=cols["D"][0])
        if not settings.with_training:
            row["memory"] = "transformer"  # the construction's kind, as construction rows of memories say
    else:
        from analysis.capacity.sweep import run_sweep

        res = run_sweep(settings)
        d, m = settings.sizes()[0]
        searched = res.results
        row = dict(model=settings.model, memory=settings.kind, d=d, m=m, parameters=res.results[0].params,
                   capacity=int(res.results[0].capacity[0]))
    r = searched[0]
    probes = [(int(N), bool(ok)) for N, ok in r.probes[0]]
    row.update(below_bracket=bool(r.below_bracket[0]), above_bracket=bool(r.above_bracket[0]),
               n_probes=len(probes), probes=" ".join(f"{N}:{int(ok)}" for N, ok in probes),
               search_seconds=res.seconds, device=res.device)
    files = None
    if keep:
        files = dict(results=res.to_dict(), table=("probes.csv", dict(N=[N for N, _ in probes],
                                                                       ok=[int(ok) for _, ok in probes])))
    return row, files


# ----------------------------------------------------------------------------- over seeds and sizes
@dataclass(frozen=True)
class CapacityBandsResult:
    """The capacity over seeds of every size, and the scaling fit of every series.

    groups: one dict per size (the runs that differ only in ``seed``): ``label``, ``params`` (the grid fields
    other than seed), ``series`` (index into ``series``), ``P`` (parameter count), ``seeds``, ``capacity``
    (per seed), ``n``, ``mean``, ``std`` (ddof 1; 0 with one seed), ``min``, ``max``, ``n_below_bracket``,
    ``n_above_bracket``. series: one dict per set of runs that differ only in size fields (d, alpha, m, heads,
    head_dim, attn_ratio, mlp_width, mlp_ratio) and seed: ``label``, ``params``, ``groups`` (indices), ``fit``
    (analysis.capacity.ScalingFit as a dict: slope, its 95 % interval ``ci``, ...; None with fewer than 3
    points inside their brackets or one parameter count) and ``fit_points``. title: the figure's title.
    bound: the information bound of SPEC §9 over the groups' parameter range at BITS_PER_PARAM bits per
    parameter (dict: params, capacity, bits_per_param, label), when every run has the same outputs per fact
    M (target and M of the memories; scaling and D of the transformer) and M > 1; else None."""

    groups: list
    series: list
    title: str
    bound: dict | None = None

    def lines(self) -> list[str]:
        """One line per size and one per fitted series, for the terminal."""
        out = []
        for g in self.groups:
            flags = "".join(f", {g[f'n_{w}_bracket']} {w} bracket" for w in ("below", "above") if g[f"n_{w}_bracket"])
            out.append(f"capacity [{g['label']}]: P={g['P']}, {g['n']} seeds {g['capacity']}: mean {g['mean']:.1f}, "
                       f"std {g['std']:.1f}, min {g['min']}, max {g['max']}{flags}")
        for s in self.series:
            f = s["fit"]
            if f is None:
                out.append(f"fit [{s['label']}]: none ({s['fit_points']} points inside their brackets; the fit needs "
                           ">= 3 and two parameter counts)")
            else:
                out.append(f"fit [{s['label']}]: capacity ~ P^{f['slope']:.3f}, 95% CI [{f['ci'][0]:.3f}, "
                           f"{f['ci'][1]:.3f}] over {f['n']} points (paper: slope ~ 1 up to log factors)")
        return out

    def to_dataframe(self):
        """bands.csv as a pandas DataFrame: one row per size."""
        import pandas as pd

        keys = []
        for g in self.groups:
            keys.extend(k for k in g["params"] if k not in keys)
        return pd.DataFrame([dict(series=self.series[g["series"]]["label"], **{k: g["params"].get(k) for k in keys},
                                  parameters=g["P"], n=g["n"], capacity_mean=g["mean"], capacity_std=g["std"],
                                  capacity_min=g["min"], capacity_max=g["max"],
                                  n_below_bracket=g["n_below_bracket"], n_above_bracket=g["n_above_bracket"])
                             for g in self.groups])

    def plot(self):
        """The capacity figure (figures.capacity.capacity_figure): per series, per-seed points, means and fit."""
        from figures.capacity import capacity_figure  # presentation: loaded on demand

        series = []
        for s in self.series:
            gs = [self.groups[i] for i in s["groups"]]
            width = max(len(g["capacity"]) for g in gs)
            cap = [list(g["capacity"]) + [float("nan")] * (width - len(g["capacity"])) for g in gs]
            series.append(dict(label=s["label"], params=[g["P"] for g in gs], capacity=cap, fit=s["fit"]))
        return capacity_figure(series, self.title, bound=self.bound)

    def save(self, folder: str, *, plots: bool = True) -> list:
        """Write bands.csv, bands.json and (plots) capacity.png and capacity.pdf into ``folder``, each atomically.
        Returns the file names."""
        from common.io import save_figure, write_json, write_text

        write_text(os.path.join(folder, "bands.csv"), self.to_dataframe().to_csv(index=False))
        write_json(os.path.join(folder, "bands.json"), dict(groups=self.groups, series=self.series, title=self.title,
                                                            information_bound=self.bound))
        names = ["bands.csv", "bands.json"]
        if plots:
            import matplotlib.pyplot as plt

            fig = self.plot()
            save_figure(fig, os.path.join(folder, "capacity.png"), dpi=150)
            save_figure(fig, os.path.join(folder, "capacity.pdf"))
            plt.close(fig)
            names += ["capacity.png", "capacity.pdf"]
        return names


def _key(params: dict) -> str:
    return json.dumps(jsonable(params), sort_keys=True)


def _describe(params: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())


def capacity_bands(rows: list[dict], spec=None) -> CapacityBandsResult | None:
    """Summary of the done capacity rows (None if there are none): groups of runs that differ only in seed,
    series of groups that differ only in size, the scaling fit of each series over its points inside their
    brackets (SPEC §9: every seed its own point)."""
    from analysis.capacity.fit import scaling_fit

    done = [r for r in rows if r.get("status") == "done" and r.get("capacity") is not None]
    if not done:
        return None
    base = dict(spec.base) if spec is not None else {}
    groups, series = {}, {}
    for r in sorted(done, key=lambda r: r.get("index", 0)):  # grid order
        params = {k: v for k, v in r.get("params", {}).items() if k != "seed"}
        groups.setdefault(_key(params), (params, []))[1].append(r)
    out_groups, out_series = [], []
    for params, members in groups.values():
        first = members[0]
        rest = {k: v for k, v in params.items() if k not in SIZE_FIELDS}
        name = f"construction of {first['memory']}" if first["model"] == "construction" else first["model"]
        other = {k: v for k, v in rest.items() if k != "model"}
        skey = _key(rest)
        if skey not in series:
            series[skey] = len(out_series)
            out_series.append(dict(label=name + (f" ({_describe(other)})" if other else ""), params=rest,
                                   groups=[]))
        caps = [int(r["capacity"]) for r in members]
        g = dict(label=_describe(params) or name, params=params, series=series[skey], P=int(first["parameters"]),
                 seeds=[r.get("params", {}).get("seed", base.get("seed", 0)) for r in members],
                 capacity=caps, n=len(caps), mean=float(np.mean(caps)),
                 std=float(np.std(caps, ddof=1)) if len(caps) > 1 else 0.0, min=min(caps), max=max(caps),
                 n_below_bracket=sum(bool(r["below_bracket"]) for r in members),
                 n_above_bracket=sum(bool(r["above_bracket"]) for r in members),
                 inside=[not (r["below_bracket"] or r["above_bracket"]) for r in members])
        out_series[series[skey]]["groups"].append(len(out_groups))
        out_groups.append(g)
    for s in out_series:
        pts = [(g["P"], c) for g in (out_groups[i] for i in s["groups"]) for c, ok in zip(g["capacity"], g["inside"])
               if ok]
        s["groups"].sort(key=lambda i: out_groups[i]["P"])  # the figure joins the means in order of P
        s["fit_points"] = len(pts)
        s["fit"] = (scaling_fit(*zip(*pts)).to_dict() if len(pts) >= 3 and len({p for p, _ in pts}) >= 2 and
                    min(c for _, c in pts) >= 1 else None)
    title = (f"Capacity sweep (frd-grid capacity): {len(done)} searches, {len(out_groups)} sizes"
             + (f"; {_describe({k: v for k, v in base.items() if k != 'device'})}" if base else ""))
    bound = _bound([{**base, **g["params"]} for g in out_groups], [g["P"] for g in out_groups])
    return CapacityBandsResult(groups=out_groups, series=out_series, title=title, bound=bound)


def _outputs(settings):
    """(what M is, M as a number or a function of the facts N) of one run's settings (SPEC §9)."""
    if is_transformer(settings):
        if settings.scaling == "distinct":
            return ("sqrt(N)",), lambda N: N ** 0.5
        return ("D", settings.D), settings.D
    if settings.target == "fixed":
        return ("M", settings.M), settings.M
    return ("N",), lambda N: N


def _bound(fields: list, params: list) -> dict | None:
    """The information bound over the parameter range when every group has the same outputs per fact, else None
    (as frd-capacity's figure: none when M = 1)."""
    from analysis.capacity.bound import bound_line

    outs = [_outputs(capacity_settings(f)) for f in fields]
    if len({key for key, _ in outs}) != 1 or not params:
        return None
    P, facts = bound_line(np.geomspace(min(params), max(params), 50), BITS_PER_PARAM, outs[0][1])
    if not np.isfinite(facts).all():
        return None
    return dict(params=P.tolist(), capacity=facts.tolist(), bits_per_param=BITS_PER_PARAM,
                label=f"information bound: N log2 M = b·P (b = {BITS_PER_PARAM:g} bits)")
