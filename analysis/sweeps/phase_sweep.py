"""The phase-time sweep (the library half of ``python -m analysis.sweep``, frd-sweep): t1, t2, t3 for every row
of a grid of (S, R, D, T, N, alpha, Zipf exponents), the reduced system in batches, the full system otherwise.

Configurations the reduction covers (equal subject counts per answer, uniform frequencies) are solved all
at once by the exact quadrature of the reduced flow (analysis.theory.reduced_solution.phase_times: each
configuration stops at its own t3). The others go through the full system (analysis.analyze_flow) one by one, or with
``batch_flows`` B >= 2 up to B of one shape (S, R, D, T, N) together through dynamics.flow.batched.run_flows_batched
(phase times and plateau_loss, no trajectory; column batched = 1). :func:`run_sweep` returns a
:class:`SweepResult`: sweep.csv (one row per configuration), slopes.json (fitted and predicted slopes of t1,
t2, t3 and t2 - t1 against log(1/alpha) and against S) and figures.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from common.errors import ConfigError, check_int

from analysis.sweeps.spec import MAX_BATCH_FLOWS

# The largest grid a sweep accepts, and its memory: measured peak 320 MB at 10,000 configurations and 425 MB at
# 100,000 (2-core CPU, --no-plots), i.e. ~1.2 kB per configuration over a ~310 MB base; the estimate keeps a
# margin. A million configurations (the maximum; S 16 32 64 128, alpha 1e-6 to 1e-2): 1.5 GB peak and 147 s in
# all before plateau_loss was filled for reduced rows; with it 2.3 GB peak and 366 s (on a shared machine; the
# phase times alone took 144 s there and the plateaus about as long again), writing sweep.csv included.
MAX_CONFIGS = 1_000_000
_BASE_BYTES, _BYTES_PER_CONFIG = 512 * 2**20, 4096


def grid_memory_estimate_bytes(n_configs: int) -> int:
    """Rough peak memory of a sweep over ``n_configs`` configurations (reduced ones; full runs add their own)."""
    return int(_BASE_BYTES + _BYTES_PER_CONFIG * n_configs)


def check_grid_size(n_configs: int, available: int | None = None) -> None:
    """ConfigError if the grid has more than MAX_CONFIGS configurations or would not fit in memory."""
    if n_configs > MAX_CONFIGS:
        raise ConfigError(f"the grid has {n_configs:,} configurations (alphas x S x R x D x T x N), needing about "
                          f"{grid_memory_estimate_bytes(n_configs) / 2**30:,.1f} GiB; at most {MAX_CONFIGS:,} are "
                          "allowed; split the sweep")
    from common.memory import available_memory_bytes  # not dynamics.flow.config: that would load torch

    need = grid_memory_estimate_bytes(n_configs)
    have = available if available is not None else available_memory_bytes()
    if need > 0.8 * have:
        raise ConfigError(f"the grid of {n_configs:,} configurations needs about {need / 2**30:.1f} GiB but this "
                          f"machine has {have / 2**30:.1f} GiB available; split the sweep")


def _zipf(cols, zipf: float = 0.0) -> tuple:
    """Per-row subject and relation Zipf exponents (the grid's columns, or ``zipf`` for subjects and 0)."""
    n = cols["S"].size
    zs = np.asarray(cols["zipf_subjects"], dtype=np.float64) if "zipf_subjects" in cols else np.full(n, float(zipf))
    zr = np.asarray(cols["zipf_relations"], dtype=np.float64) if "zipf_relations" in cols else np.zeros(n)
    return zs, zr


def reducible_mask(cols, facts: str, zipf: float = 0.0, seed: int = 0) -> np.ndarray:
    """Which rows the reduction covers: D | S, a table with equal subject counts, uniform frequencies."""
    zs, zr = _zipf(cols, zipf)
    ok = (cols["S"] % cols["D"] == 0) & (zs == 0) & (zr == 0)
    if facts == "random":
        from models.task import TaskConfig, make_task

        for i in np.nonzero(ok)[0]:
            t = make_task(TaskConfig(S=int(cols["S"][i]), R=int(cols["R"][i]), D=int(cols["D"][i]),
                                     facts="random", seed=seed))
            counts = np.stack([np.bincount(t.answers[:, r] - r * t.D, minlength=t.D) for r in range(t.R)])
            ok[i] = bool(np.all(counts == t.S // t.D))
    return ok


@dataclass(frozen=True)
class SweepResult:
    """Phase times over a grid: ``columns`` (sweep.csv: name -> (n,) array, one row per configuration),
    ``slopes`` (slopes.json: fitted and predicted slopes), counts and timings."""

    columns: dict = field(repr=False)
    slopes: list = field(repr=False)
    n_reduced: int
    n_full: int
    reduced_seconds: float
    full_seconds: float
    facts: str
    eps_conv: float

    def __repr__(self) -> str:
        n = self.columns["S"].size
        return (f"SweepResult({n} configurations: {self.n_reduced} reduced in {self.reduced_seconds:.3g} s, "
                f"{self.n_full} full in {self.full_seconds:.3g} s; facts={self.facts!r}, eps_conv={self.eps_conv:g})")

    def to_dataframe(self):
        """sweep.csv as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame(self.columns)

    def plot(self) -> dict:
        """Figures name -> matplotlib Figure: phase_times_alpha, phase_times_S."""
        from figures.sweep import plot_sweep  # presentation: figures is the top layer, loaded on demand

        return plot_sweep(self.columns, self.slopes)

    def save(self, folder: str, *, plots: bool = True, overwrite: bool = False) -> None:
        """Write sweep.csv, slopes.json and (plots) phase_times_alpha.png, phase_times_S.png into ``folder``, as
        a whole (common.io.output_dir; an existing non-empty ``folder`` is refused unless ``overwrite``)."""
        from common.io import output_dir, save_figure, write_csv, write_json

        with output_dir(folder, overwrite=overwrite) as d:
            write_csv(os.path.join(d, "sweep.csv"), self.columns)
            write_json(os.path.join(d, "slopes.json"), dict(
                slopes=self.slopes, n_reduced=self.n_reduced, n_full=self.n_full,
                reduced_seconds=self.reduced_seconds, full_seconds=self.full_seconds, facts=self.facts,
                eps_conv=self.eps_conv))
            if plots:
                import matplotlib.pyplot as plt

                for name, fig in self.plot().items():
                    save_figure(fig, os.path.join(d, f"{name}.png"), dpi=130)
                    plt.close(fig)


def _check_max_full(red: np.ndarray, max_full: int) -> None:
    """ConfigError if more than ``max_full`` rows fall outside the reduction (``red``: reducible_mask)."""
    if (~red).sum() > max_full:
        raise ConfigError(f"{int((~red).sum())} configurations need the full system (more than --max-full "
                          f"{max_full}); shrink the grid or raise --max-full")


def check_full_runs(cols, *, facts="structured", seed=0, zipf=0.0, eps_conv=1e-2, full_rtol=None,
                    max_full=200) -> np.ndarray:
    """Check, before any work, the full-system rows of a sweep: at most ``max_full`` of them, and each one's
    dynamics.FlowConfig valid and within memory (ConfigError otherwise). Returns reducible_mask(cols, ...)."""
    red = reducible_mask(cols, facts, zipf, seed)
    _check_max_full(red, max_full)
    for i in np.nonzero(~red)[0]:  # every full-system run is validated and its memory estimated up front
        full_config(cols, i, facts=facts, seed=seed, zipf=zipf, eps_conv=eps_conv, full_rtol=full_rtol).check_memory()
    return red


def full_config(cols, i: int, *, facts="structured", seed=0, zipf=0.0, eps_conv=1e-2, full_rtol=None):
    """The dynamics.FlowConfig of row ``i`` of the grid, for a full-system run (ConfigError if invalid)."""
    from dynamics import FlowConfig
    from models.task import TaskConfig

    zs, zr = _zipf(cols, zipf)
    task = TaskConfig(S=int(cols["S"][i]), R=int(cols["R"][i]), D=int(cols["D"][i]), T=int(cols["T"][i]),
                      N=int(cols["N"][i]), facts=facts, seed=seed, zipf_subjects=float(zs[i]),
                      zipf_relations=float(zr[i]))
    return FlowConfig(task=task, alpha=float(cols["alpha"][i]), eps_conv=eps_conv, rtol=full_rtol)


def schedule_phase_times(config) -> dict:
    """Leading-order t1, t2, t3 of a dynamics.FlowConfig from the escape schedule of analysis.theory.staircase (any
    weights): the escape time of the first mode whose escape brings the level to or below each threshold of
    SPEC §3 (thresholds with H(A|R) under the task's weights). Also ``hallucination_visible`` at leading order.
    """
    from models.task import make_task

    from analysis.theory.hallucination import leading_order
    from analysis.theory.staircase import escape_schedule

    task = make_task(config.task)
    w = task.fact_weights
    sched = escape_schedule(task, w, config.alpha)
    H = task.entropy_given_relation(w)
    out = {}
    for k, theta in (("t1", 0.5 * (math.log(task.num_answers) + H)), ("t2", 0.5 * H), ("t3", config.eps_conv)):
        t = next((st.t for st in sched if st.level <= theta), None)
        out[k] = np.nan if t is None else t
    out["hallucination_visible"] = bool(leading_order(task, w, config.alpha, schedule=sched)["visible"]) and H > 0
    return out


def _record_full(out: dict, i: int, config, status: str, times) -> None:
    """Write row ``i``'s full-system results into ``out``: finished (status), t1, t2, t3 (``times``: name ->
    float or None, None -> NaN) and the leading-order columns of schedule_phase_times(config)."""
    out["finished"][i] = float(status in ("converged", "t_max"))  # not max_steps / failed (times partial)
    for k in ("t1", "t2", "t3"):
        v = times[k]
        out[k][i] = np.nan if v is None else v
    lead = schedule_phase_times(config)
    for k in ("t1", "t2", "t3"):
        out[k + "_leading"][i] = lead[k]
    out["hallucination_visible_leading"][i] = float(lead["hallucination_visible"])


def _run_full_batched(cols, idx, out: dict, bar, batch_flows: int, **kw) -> np.ndarray:
    """Integrate the full-system rows ``idx`` ((m,) ints) with dynamics.flow.batched.run_flows_batched: grouped by
    shape (S, R, D, T, N), each group in one call with at most ``batch_flows`` runs at once (its ``slots``); fills
    ``out`` as the one-by-one path does (plateau_loss from each run's PlateauWindow) and sets out["batched"] = 1.
    ``kw``: full_config's. Returns the rows the batched solver cannot take (a method other than dopri5: states from
    dynamics.flow.config.ROCK4_MIN_SIZE entries), for one-by-one runs."""
    from common.memory import available_memory_bytes
    from dynamics.flow.batched import batch_memory_estimate_bytes, check_batch, run_flows_batched

    from analysis.phases import batched_plateau

    configs = {int(i): full_config(cols, i, **kw) for i in idx}
    ok, rest = [], []
    for i in configs:
        try:
            check_batch([configs[i]])
        except ConfigError:
            rest.append(i)
        else:
            ok.append(i)
    ok = np.array(ok, dtype=np.int64)
    key = np.stack([np.asarray(cols[k])[ok] for k in ("S", "R", "D", "T", "N")], axis=1)
    groups = [ok[pos] for _, pos in _groups(key, np.ones(ok.size, dtype=bool))]
    have = available_memory_bytes()
    for rows in groups:  # every group checked before any is integrated
        need = batch_memory_estimate_bytes([configs[int(i)] for i in rows], slots=batch_flows)
        if need > 0.8 * have:
            c = configs[int(rows[0])].task
            raise ConfigError(f"a batch of {min(batch_flows, rows.size)} flows of S = {c.S}, R = {c.R}, D = {c.D} "
                              f"needs about {need / 2**30:.1f} GiB but this machine has {have / 2**30:.1f} GiB "
                              "available; lower --batch-flows")
    for rows in groups:
        # one call per shape: at most batch_flows at once, a waiting run starting as soon as one finishes
        def done(j, res, rows=rows):  # each run's plateau as it finishes (its window is then freed)
            pl = batched_plateau(res)
            if pl is not None:
                out["plateau_loss"][rows[j]] = pl.loss
            bar.update(1)

        results = run_flows_batched([configs[int(i)] for i in rows], slots=batch_flows, on_done=done, plateau=True)
        for i, res in zip(rows, results):
            _record_full(out, int(i), configs[int(i)], res["status"], res)
            out["batched"][i] = 1.0
    return np.array(rest, dtype=np.int64)


def run_sweep(cols, *, facts="structured", seed=0, zipf=0.0, eps_conv=1e-2, full_rtol=None, progress=None,
              max_full=200, batch_flows=0) -> SweepResult:
    """Phase times for every row of ``cols`` (grid columns, name -> (n,) array), with fitted slopes.

    Full-system rows run one at a time through analysis.analyze_flow (``batch_flows`` 0 or 1), or, with
    ``batch_flows`` = B >= 2, up to B of one shape (S, R, D, T, N) at a time through the batched solver
    (dynamics.flow.batched.run_flows_batched: the same phase times and plateau_loss, no trajectory; column
    ``batched`` = 1 on those rows, 0 elsewhere, in both modes).
    """
    from analysis.theory.modes import escape_rates, hallucination_stage_exists
    from analysis.theory.plateau import plateaus
    from analysis.theory.reduced_phases import phase_times_any  # NaN where a phase does not exist (D = 1)

    max_full = check_int("max_full", max_full, 0)
    batch_flows = check_int("batch_flows", batch_flows, 0, MAX_BATCH_FLOWS)
    n = cols["S"].size
    red = reducible_mask(cols, facts, zipf, seed)
    _check_max_full(red, max_full)
    out = {k: np.asarray(v, dtype=np.float64) for k, v in cols.items()}
    for k in ("t1", "t2", "t3", "t1_leading", "t2_leading", "t3_leading", "t1_leading_o1", "t2_leading_o1",
              "t3_leading_o1", "plateau_loss"):
        out[k] = np.full(n, np.nan)
    out["reduced"] = red.astype(np.float64)
    out["finished"] = np.ones(n)  # 0 where a full-system run ran out of steps or failed (its times are partial)
    out["batched"] = np.zeros(n)  # 1 where the batched solver ran the row; in every CSV
    r = escape_rates(cols["S"], cols["R"], cols["D"])
    out["rate_subject"], out["rate_relation"] = r["subject"], r["relation"]
    out["hallucination_stage_exists"] = hallucination_stage_exists(cols["S"], cols["R"], cols["D"]).astype(float)
    out["hallucination_visible_leading"] = np.full(n, np.nan)  # filled for full-system rows
    zs, zr = _zipf(cols, zipf)
    out["zipf_subjects"], out["zipf_relations"] = zs, zr
    t0 = time.perf_counter()
    if red.any():
        idx = np.nonzero(red)[0]
        p = phase_times_any(cols["S"][idx], cols["R"][idx], cols["D"][idx], cols["alpha"][idx], eps_conv)
        for k in ("t1", "t2", "t3"):
            for suffix in ("", "_leading", "_leading_o1"):
                out[k + suffix][idx] = p[k + suffix]
        # the SPEC §3 plateau of the reduced flow (NaN where t1 or t2 does not exist), as derive's predicted_plateau
        out["plateau_loss"][idx] = plateaus(cols["S"][idx], cols["R"][idx], cols["D"][idx], cols["alpha"][idx],
                                            p["t1"], p["t2"])["loss"]
    reduced_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    full_idx = np.nonzero(~red)[0]
    if full_idx.size:
        from common.progress import Progress

        from analysis.results.flow import analyze_flow

        bar = Progress(int(full_idx.size), "full-system runs", unit=" runs", enabled=progress)
        flow_progress = progress is not False and not sys.stderr.isatty()
        kw = dict(facts=facts, seed=seed, zipf=zipf, eps_conv=eps_conv, full_rtol=full_rtol)
        if batch_flows >= 2:
            full_idx = _run_full_batched(cols, full_idx, out, bar, batch_flows, **kw)
        for i in full_idx:
            # off a terminal a long full run reports a line every ~30 s (dynamics.flow.solve.FlowProgress)
            cfg = full_config(cols, i, **kw)
            res = analyze_flow(cfg, progress=flow_progress)
            _record_full(out, i, cfg, res.status, {k: getattr(res.phases, k) for k in ("t1", "t2", "t3")})
            if res.phases.plateau is not None:
                out["plateau_loss"][i] = res.phases.plateau.loss
            bar.update(1)
        bar.close()
    full_seconds = time.perf_counter() - t0
    out["plateau_length"] = out["t2"] - out["t1"]
    return SweepResult(columns=out, slopes=slopes(out, eps_conv), n_reduced=int(red.sum()),
                       n_full=int((~red).sum()), reduced_seconds=reduced_seconds, full_seconds=full_seconds,
                       facts=facts, eps_conv=eps_conv)


def _fit(x, y):
    """Least-squares slope of y against x over the finite pairs (None with fewer than 2 distinct x).

    The closed form sum (x - mean x)(y - mean y) / sum (x - mean x)^2: the same number as np.polyfit's degree-1
    coefficient (to rounding), without a LAPACK call per group (a sweep of 10^5 alphas fits 75,000 groups).
    """
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 2:
        return None
    xo, yo = x[ok], y[ok]
    dx = xo - xo.mean()
    den = float(dx @ dx)
    if not den > 0:
        return None
    return float(dx @ (yo - yo.mean()) / den)


def _groups(key, mask):
    """Yield (key row, ascending indices of the rows in ``mask`` with that key), in np.unique's order.

    One sort instead of a pass over every row per group: with one group per alpha a sweep of 100,000 alphas
    spent 380 s here (quadratic), now well under a second."""
    idx = np.nonzero(mask)[0]
    if idx.size == 0:
        return
    uniq, inv = np.unique(key[idx], axis=0, return_inverse=True)
    inv = np.asarray(inv).reshape(-1)
    order = np.argsort(inv, kind="stable")
    bounds = np.searchsorted(inv[order], np.arange(len(uniq) + 1))
    for g in range(len(uniq)):
        yield uniq[g], idx[order[bounds[g]:bounds[g + 1]]]


def slopes(cols, eps_conv=1e-2) -> list:
    """Fitted slopes of t1, t2, t3, t2-t1 against log(1/alpha) (per S, R, D) and against S (per R, D, alpha),
    next to their leading-order predictions.

    Against log(1/alpha): t = 2 log(1/alpha) / lambda + O(1), so the predicted slope is 2/lambda of the mode
    that crosses the threshold when the modes are separated (analysis.theory.reduced_solution.separated_estimates;
    e.g. relation for t1 and subject for t2, t3 when the hallucination stage exists), and its difference for t2 - t1.
    Against S: lambda_S = 2 sqrt(R(D-1)/D) / (S R), so t2 and t3
    are proportional to S at leading order while t1 does not depend on S (hallucination side);
    the predicted slope of t2 is the leading-order-with-O(1) t2 divided by S.
    """
    from analysis.theory.modes import Modes
    from analysis.theory.reduced_solution import separated_estimates

    res = []
    key = np.stack([cols["S"], cols["R"], cols["D"], cols["T"], cols["N"]], axis=1)
    for k, sel in _groups(key, cols["reduced"] > 0):
        if sel.size < 3:
            continue
        x = np.log(1 / cols["alpha"][sel])
        lam = {"subject": cols["rate_subject"][sel][0], "relation": cols["rate_relation"][sel][0]}
        md = Modes([k[0]], [k[1]], [k[2]], [1e-5])
        Rk, Dk = float(k[1]), float(k[2])
        ths = {"t1": 0.5 * (math.log(Rk * Dk) + math.log(Dk)), "t2": 0.5 * math.log(Dk), "t3": eps_conv}
        with np.errstate(divide="ignore", invalid="ignore"):  # an absent mode (R or D = 1) has rate 0: no slope
            pred = {name: 2 / lam[str(separated_estimates(md, th)["mode"][0])] for name, th in ths.items()}
            pred["plateau_length"] = pred["t2"] - pred["t1"]
        for name in ("t1", "t2", "t3", "plateau_length"):
            res.append(dict(against="log(1/alpha)", quantity=name, S=int(k[0]), R=int(k[1]), D=int(k[2]),
                            fitted=_fit(x, cols[name][sel]), predicted=float(pred[name])))
    key = np.stack([cols["R"], cols["D"], cols["alpha"], cols["T"], cols["N"]], axis=1)
    for k, sel in _groups(key, cols["reduced"] > 0):
        if np.unique(cols["S"][sel]).size < 3:
            continue
        S = cols["S"][sel]
        for name in ("t2", "t3"):
            pred_ratio = cols[f"{name}_leading_o1"][sel] / S
            res.append(dict(against="S", quantity=name, R=int(k[0]), D=int(k[1]), alpha=float(k[2]),
                            fitted=_fit(S, cols[name][sel]), predicted=float(np.median(pred_ratio))))
        res.append(dict(against="S", quantity="t1", R=int(k[0]), D=int(k[1]), alpha=float(k[2]),
                        fitted=_fit(S, cols["t1"][sel]), predicted=0.0))
    return res
