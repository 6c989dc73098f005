"""The memory capacity numbers of docs/capacity.md: linear and MLP capacity sweeps (SPEC §9) and their fits.

    python bench/capacity_fits.py --out runs/capacity-fits                 # linear, then MLP alpha 1 2 4
    python bench/capacity_fits.py --only linear --linear-d 8 11 16 --seeds 0 1 --out /tmp/cf
    python bench/capacity_fits.py --only linear-fixed --out /tmp/cf-fixed  # M fixed: the log factor constant

Linear: capacity N* per seed at d in --linear-d, fitted against P = d² (log N* on log P, SPEC §9) and, for the
log factor the paper expects (N log N ∝ d²), log(N* ln N*) on log d². Linear with a fixed number of outputs M
(target fixed, SPEC §7; --linear-fixed 'M:d,d,...'): fitted against d² and against d·min(d, M), the number of
entries of UᵀW that the logits depend on (SPEC §7), with N*·ln M / (d·min(d, M)) per size. MLP (m = alpha·d, alpha in --alphas):
fitted against m·d (the authors' alpha·d²) and against the exact parameter count 2md + m. Writes
fits.json (settings, per-seed capacities, fits, seconds, machine, load) into --out and prints a summary.
--check FITS --check-steps K instead retrains, for the largest linear d of an earlier fits.json, each seed at
the smallest N its search saw fail (or, without probes in the file, lo + max(1, rtol·lo), at or above
it), with K steps (more than the search's): whether the capacity still grows
with more training (writes check.json). --scan D N... trains the memories of dimension D at those N for
every seed and learning rate of --scan-lrs with --scan-steps steps and prints whether and at which step each
succeeds (the learning-rate comparison of docs/capacity.md; --scan-model mlp --scan-m M for MLPs).
Every run is one process on this machine's CPU, one torch thread per batch (the trainer's own choice).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from analysis.capacity.fit import scaling_fit  # noqa: E402
from analysis.capacity.sweep import CapacitySettings, run_sweep  # noqa: E402
from common.io import write_json  # noqa: E402

LINEAR_D = (8, 11, 16, 22, 32, 45, 64)   # the authors' half-octaves 2^3 .. 2^6
MLP_D = (8, 11, 16, 22)
LINEAR_FIXED = "64:22,32,45,64;16:16,32,64"


def load() -> list:
    return [round(x, 2) for x in os.getloadavg()]


def fit_dict(P, C) -> dict | None:
    """The fit's slope, 95 % interval, standard error, points and r; None with too few points to fit."""
    if len(P) < 3 or len(set(P)) < 2:
        return None
    f = scaling_fit(P, C)
    return dict(slope=f.slope, ci=list(f.ci), stderr=f.stderr, n=f.n, r=f.r)


def points(result, what):
    """(x, N*) over every size and seed inside its bracket; x = what(d, m, params)."""
    s = result.settings
    xs, cs, flagged = [], [], 0
    for (d, m), r in zip(s.sizes(), result.results):
        for i, c in enumerate(r.capacity):
            if r.below_bracket[i] or r.above_bracket[i]:
                flagged += 1
                continue
            xs.append(what(d, m, r.params))
            cs.append(c)
    return np.array(xs, dtype=float), np.array(cs, dtype=float), flagged


def sweep(settings, label, say) -> dict:
    start, load_before = time.perf_counter(), load()
    result = run_sweep(settings, progress=lambda line: say(f"  {label}: {line}"))
    out = dict(label=label, settings=settings.to_dict(), seconds=time.perf_counter() - start,
               load_before=load_before, load_after=load(),
               sizes=[dict(d=d, m=m, params=r.params, capacity=list(r.capacity), below=list(r.below_bracket),
                           above=list(r.above_bracket), probes=[[list(p) for p in q] for q in r.probes])
                      for (d, m), r in zip(settings.sizes(), result.results)])
    if settings.kind == "linear":
        x, c, flagged = points(result, lambda d, m, p: d * d)
        out.update(linear_fits(np.sqrt(x), c, settings.M if settings.target == "fixed" else None))
    else:
        x, c, flagged = points(result, lambda d, m, p: m * d)
        out["fit_vs_md"] = fit_dict(x, c)
        out["fit_vs_params"] = fit_dict(*points(result, lambda d, m, p: p)[:2])
        out["fit_NlogN_vs_md"] = fit_dict(x, c * np.log(c))
    out["points_outside_bracket"] = flagged
    return out


def linear_fits(d, c, M) -> dict:
    """Fits of linear capacities ``c`` at dimensions ``d``: identity target (``M`` None) against d² and N ln N
    against d²; fixed target with ``M`` outputs against d² and against d·min(d, M) (the entries of UᵀW), where
    the log factor ln M is a constant, and the mean of N ln M / (d·min(d, M))."""
    x = d * d
    if M is None:
        return dict(fit_vs_d2=fit_dict(x, c), fit_NlogN_vs_d2=fit_dict(x, c * np.log(c)),
                    NlogN_over_d2=float(np.mean(c * np.log(c) / x)) if len(c) else None)
    eff = d * np.minimum(d, M)
    return dict(fit_vs_d2=fit_dict(x, c), fit_vs_d_min_dM=fit_dict(eff, c),
                NlogM_over_d_min_dM=float(np.mean(c * np.log(M) / eff)) if len(c) else None)


def check(path, steps, seeds, out, say) -> None:
    """Retrain the largest linear size of fits.json ``path`` at each seed's smallest failing N with ``steps``."""
    import json

    from dynamics.capacity_training import MemoryTrainConfig, train_one
    from models.memory import MemoryConfig

    with open(path) as fh:
        run = next(r for r in json.load(fh)["runs"] if r["label"] == "linear")
    size, st = run["sizes"][-1], run["settings"]
    rows = []
    for i, seed in enumerate(st["seeds"][:seeds]):
        if "probes" in size:
            failed = [N for N, ok in size["probes"][i] if not ok]
            if not failed:
                continue
            N = min(failed)
        else:  # the search stopped with a failed hi <= lo + max(1, rtol·lo): N is at or above it
            N = size["capacity"][i] + max(1, int(st["rtol"] * size["capacity"][i]))
        for lr in st["lrs"]:
            start = time.perf_counter()
            r = train_one(MemoryConfig(model="linear", N=N, d=size["d"], seed=seed), lr,
                          MemoryTrainConfig(max_steps=steps, dtype=st["dtype"], record=False))
            rows.append(dict(d=size["d"], seed=seed, capacity=size["capacity"][i], N=N, lr=lr, steps=steps,
                             search_steps=st["max_steps"], success=bool(r.success[0]), step=int(r.steps[0]),
                             best_accuracy=float(r.best_accuracy[0]), seconds=time.perf_counter() - start))
            say(f"d={size['d']} seed {seed}: capacity {size['capacity'][i]} with {st['max_steps']} steps; N = {N} "
                f"(failed in the search) with {steps} steps, lr {lr:g}: success {rows[-1]['success']}, best accuracy "
                f"{rows[-1]['best_accuracy']:.3f} ({rows[-1]['seconds']:.0f} s)")
    os.makedirs(out, exist_ok=True)
    write_json(os.path.join(out, "check.json"), dict(rows=rows, load=load()))


def scan(model, d, m, Ns, lrs, seeds, steps, say) -> None:
    """Whether, and at which step, each (N, seed, lr) trains to the target within ``steps`` steps."""
    from dynamics.capacity_training import MemoryTrainConfig, train_batch
    from models.memory import MemoryConfig

    for N in Ns:
        configs = [MemoryConfig(model=model, N=N, d=d, m=m, seed=s) for s in seeds for _ in lrs]
        start = time.perf_counter()
        r = train_batch(configs, list(lrs) * len(seeds), MemoryTrainConfig(max_steps=steps, record=False))
        for i, c in enumerate(configs):
            say(f"{model} d={d}{f' m={m}' if m else ''} N={N} seed={c.seed} lr={lrs[i % len(lrs)]:g}: success "
                f"{bool(r.success[i])} at step {int(r.steps[i])}, best accuracy {r.best_accuracy[i]:.3f}")
        say(f"  ({time.perf_counter() - start:.0f} s, load {load()})")


def fits_of(r: dict) -> dict:
    """The fits of one run from its sizes (a merged run's, or a sweep's as :func:`sweep` made them)."""
    ok = [(z, i) for z in r["sizes"] for i in range(len(z["capacity"])) if not (z["below"][i] or z["above"][i])]
    c = np.array([z["capacity"][i] for z, i in ok], dtype=float)
    if r["settings"]["model"] == "linear":
        fixed = r["settings"].get("target") == "fixed"
        return linear_fits(np.array([z["d"] for z, _ in ok], dtype=float), c, r["settings"]["M"] if fixed else None)
    x = np.array([z["m"] * z["d"] for z, _ in ok], dtype=float)
    p = np.array([z["params"] for z, _ in ok], dtype=float)
    return dict(fit_vs_md=fit_dict(x, c), fit_vs_params=fit_dict(p, c), fit_NlogN_vs_md=fit_dict(x, c * np.log(c)))


def merge(paths, out, say) -> None:
    """--merge: the runs of several fits.json files that differ only in their seeds (the capacity of a seed does
    not depend on the other seeds of its batch: batched training equals one model at a time), one run per label
    with every seed, refitted; the MLP widths pooled again. Writes <out>/fits.json."""
    import json

    merged = {}
    for path in paths:
        with open(path) as fh:
            for r in json.load(fh)["runs"]:
                if r["settings"]["model"] == "mlp-pooled":
                    continue
                m = merged.get(r["label"])
                if m is None:
                    merged[r["label"]] = json.loads(json.dumps(r))
                    continue
                a, b = ({k: v for k, v in x["settings"].items() if k != "seeds"} for x in (m, r))
                if a != b or [z["d"] for z in m["sizes"]] != [z["d"] for z in r["sizes"]]:
                    raise SystemExit(f"--merge: {path}'s {r['label']!r} differs from the first in more than its seeds")
                if set(m["settings"]["seeds"]) & set(r["settings"]["seeds"]):
                    raise SystemExit(f"--merge: {path}'s {r['label']!r} repeats seeds")
                m["settings"]["seeds"] = list(m["settings"]["seeds"]) + list(r["settings"]["seeds"])
                m["seconds"] += r["seconds"]
                m["load_after"] = r["load_after"]
                for zm, zr in zip(m["sizes"], r["sizes"]):
                    for k in ("capacity", "below", "above"):
                        zm[k] = list(zm[k]) + list(zr[k])
                    if "probes" in zm and "probes" in zr:
                        zm["probes"] = list(zm["probes"]) + list(zr["probes"])
                    else:  # a file from before probes were recorded: the merged run has none
                        zm.pop("probes", None)
    runs = []
    for r in merged.values():
        r.update(fits_of(r))
        runs.append(r)
    mlp = [r for r in runs if r["settings"]["model"] == "mlp"]
    if len(mlp) > 1:
        pooled = dict(settings=dict(model="mlp"), sizes=[z for r in mlp for z in r["sizes"]])
        f = fits_of(pooled)
        runs.append(dict(label="mlp, all alphas", settings=dict(model="mlp-pooled"), seconds=0.0, load_before=None,
                         load_after=None, sizes=[], fit_vs_md=f["fit_vs_md"], fit_NlogN_vs_md=f["fit_NlogN_vs_md"]))
    os.makedirs(out, exist_ok=True)
    write_json(os.path.join(out, "fits.json"), dict(machine="merged from " + ", ".join(paths), runs=runs))
    say(f"wrote {out}/fits.json")
    table([os.path.join(out, "fits.json")], say)


def table(paths, say) -> None:
    """Markdown tables of the runs in the fits.json files ``paths``: sizes, per-seed capacities and fits."""
    import json

    for path in paths:
        with open(path) as fh:
            for r in json.load(fh)["runs"]:
                st = r["settings"]
                if st["model"] == "mlp-pooled":
                    for k in ("fit_vs_md", "fit_NlogN_vs_md"):
                        v = r[k]
                        say(f"{r['label']} {k}: slope {v['slope']:.3f}, 95 % interval [{v['ci'][0]:.3f}, "
                            f"{v['ci'][1]:.3f}], {v['n']} points")
                    continue
                say(f"{r['label']}: lr {st['lrs']}, {st['max_steps']} steps, seeds {st['seeds']}, rtol {st['rtol']}, "
                    f"{r['seconds']:.0f} s, load {r['load_before']} -> {r['load_after']}\n")
                linear = st["model"] == "linear"
                M = st["M"] if linear and st.get("target") == "fixed" else None
                say("| d | " + ("P = d²" if linear else "m | m·d") + " | capacity per seed | mean | mean / "
                    + ("d²" if linear else "m·d") + (" | mean · ln M / (d·min(d, M))" if M else "") + " |")
                say("|---|---|" + ("" if linear else "---|") + "---|---|---|" + ("---|" if M else ""))
                for z in r["sizes"]:
                    x = z["d"] ** 2 if linear else z["m"] * z["d"]
                    mean = float(np.mean(z["capacity"]))
                    say(f"| {z['d']} | " + (f"{x}" if linear else f"{z['m']} | {x}") + f" | "
                        f"{', '.join(map(str, z['capacity']))} | {mean:.1f} | {mean / x:.2f} |"
                        + (f" {mean * np.log(M) / (z['d'] * min(z['d'], M)):.2f} |" if M else ""))
                for k, v in r.items():
                    if k.startswith("fit") and v is not None:
                        say(f"\n{k}: slope {v['slope']:.3f}, 95 % interval [{v['ci'][0]:.3f}, {v['ci'][1]:.3f}], "
                            f"{v['n']} points")
                say("")


def parse_by_key(text: str, flag: str, parser) -> dict:
    """'k:d,d,...;k:d,...' -> {float(k): (int(d), ...)}; a malformed text is a usage error naming the flag."""
    try:
        return {float(k): tuple(int(d) for d in v.split(",")) for k, v in
                (item.split(":") for item in text.split(";") if item.strip())}
    except ValueError:
        parser.error(f"{flag} {text!r}: expected 'key:d,d,...' items separated by ';', e.g. '64:22,32'")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=("linear", "linear-fixed", "mlp"), default=None,
                   help="run one kind only (default all three)")
    p.add_argument("--linear-d", type=int, nargs="+", default=list(LINEAR_D), help=f"default {LINEAR_D}")
    p.add_argument("--linear-fixed", default=LINEAR_FIXED,
                   help="linear memories with the fixed target: 'M:d,d,...' per number of outputs M, several "
                        f"separated by ';' (default '{LINEAR_FIXED}': M >= d, the log factor ln M constant; "
                        "M < d, only M·d entries of UᵀW matter). Each d must store >= M facts (the target needs N >= "
                        "M: smaller capacities are reported below the bracket and left out of the fits)")
    p.add_argument("--mlp-d", type=int, nargs="+", default=list(MLP_D), help=f"default {MLP_D}")
    p.add_argument("--alphas", type=float, nargs="+", default=[1.0, 2.0, 4.0], help="MLP m/d (default 1 2 4)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="default 0..4")
    p.add_argument("--mlp-seeds", type=int, nargs="+", default=None, help="MLP seeds (default: --seeds)")
    p.add_argument("--linear-lr", type=float, nargs="+", default=[1.0], help="default 1")
    p.add_argument("--mlp-lr", type=float, nargs="+", default=[3e-2], help="default 0.03 (the authors')")
    p.add_argument("--linear-steps", type=int, default=4096, help="default 4096")
    p.add_argument("--mlp-steps", type=int, default=4096, help="default 4096")
    p.add_argument("--mlp-d-by-alpha", default=None,
                   help="per-alpha d lists overriding --mlp-d, e.g. '4:6,8,11,16' (alpha:ds; several separated by ';')")
    p.add_argument("--rtol", type=float, default=0.02, help="bisection resolution (default 0.02)")
    p.add_argument("--out", default=None, help="folder for fits.json or check.json (created if missing)")
    p.add_argument("--check", default=None, metavar="FITS", help="an earlier fits.json: run the check instead")
    p.add_argument("--check-steps", type=int, default=16384, help="steps of the check's runs (default 16384)")
    p.add_argument("--check-seeds", type=int, default=3, help="first seeds checked (default 3)")
    p.add_argument("--scan", type=int, nargs="+", default=None, metavar="D_THEN_N",
                   help="D N [N ...]: the learning-rate scan instead of the sweeps")
    p.add_argument("--scan-model", choices=("linear", "mlp"), default="linear", help="default linear")
    p.add_argument("--scan-m", type=int, default=0, help="MLP width for --scan-model mlp")
    p.add_argument("--scan-lrs", type=float, nargs="+", default=[0.1, 0.3, 1, 3, 10, 100, 1000],
                   help="default 0.1 0.3 1 3 10 100 1000")
    p.add_argument("--scan-seeds", type=int, nargs="+", default=[0, 1, 2], help="default 0 1 2")
    p.add_argument("--scan-steps", type=int, default=16384, help="default 16384")
    p.add_argument("--table", nargs="+", default=None, metavar="FITS",
                   help="print markdown tables of earlier fits.json files instead")
    p.add_argument("--merge", nargs="+", default=None, metavar="FITS",
                   help="merge earlier fits.json files whose runs differ only in their seeds (e.g. seeds 0-2 and "
                        "3-4 run apart), refit, write <--out>/fits.json and print its tables")
    a = p.parse_args(argv)
    fixed_ds = parse_by_key(a.linear_fixed, "--linear-fixed", p)
    by_alpha = parse_by_key(a.mlp_d_by_alpha or "", "--mlp-d-by-alpha", p)
    say = lambda line: print(line, flush=True)  # noqa: E731
    if a.table:
        return table(a.table, say)
    if a.merge:
        if not a.out:
            p.error("--merge needs --out")
        return merge(a.merge, a.out, say)
    if a.scan:
        return scan(a.scan_model, a.scan[0], a.scan_m, a.scan[1:], a.scan_lrs, a.scan_seeds, a.scan_steps, say)
    if not a.out:
        p.error("--out is required (except with --table and --scan)")
    if a.check:
        return check(a.check, a.check_steps, a.check_seeds, a.out, say)
    machine = f"os.cpu_count()={os.cpu_count()} {platform.processor() or platform.machine()}"
    say(f"machine: {machine}; load average {load()}")
    runs = []
    os.makedirs(a.out, exist_ok=True)

    def save():  # after every sweep, so that a long run's finished parts are kept
        write_json(os.path.join(a.out, "fits.json"), dict(machine=machine, runs=runs))

    if a.only in (None, "linear"):
        runs.append(sweep(CapacitySettings(model="linear", ds=tuple(a.linear_d), seeds=tuple(a.seeds),
                                           lrs=tuple(a.linear_lr), max_steps=a.linear_steps, rtol=a.rtol,
                                           with_construction=False), "linear", say))
        save()
    if a.only in (None, "linear-fixed"):
        for M, ds in fixed_ds.items():
            runs.append(sweep(CapacitySettings(model="linear", ds=ds, target="fixed", M=int(M), seeds=tuple(a.seeds),
                                               lrs=tuple(a.linear_lr), max_steps=a.linear_steps, rtol=a.rtol,
                                               with_construction=False), f"linear fixed M={int(M)}", say))
            save()
    if a.only in (None, "mlp"):
        for alpha in a.alphas:
            runs.append(sweep(CapacitySettings(model="mlp", ds=by_alpha.get(alpha, tuple(a.mlp_d)), alphas=(alpha,),
                                               seeds=tuple(a.mlp_seeds or a.seeds), lrs=tuple(a.mlp_lr),
                                               max_steps=a.mlp_steps, rtol=a.rtol, with_construction=False),
                              f"mlp alpha={alpha:g}", say))
            save()
    mlp = [r for r in runs if r["settings"]["model"] == "mlp"]
    if len(mlp) > 1:  # every width together: does capacity follow m·d whatever the shape?
        x = [z["m"] * z["d"] for r in mlp for z in r["sizes"] for i, c in enumerate(z["capacity"])
             if not (z["below"][i] or z["above"][i])]
        c = np.array([c for r in mlp for z in r["sizes"] for i, c in enumerate(z["capacity"])
                      if not (z["below"][i] or z["above"][i])], dtype=float)
        runs.append(dict(label="mlp, all alphas", settings=dict(model="mlp-pooled"), seconds=0.0,
                         load_before=load(), load_after=load(), sizes=[],
                         fit_vs_md=fit_dict(np.array(x, dtype=float), c),
                         fit_NlogN_vs_md=fit_dict(np.array(x, dtype=float), c * np.log(c))))
        save()
    for r in runs:
        fits = {k: v for k, v in r.items() if k.startswith("fit") and v is not None}
        say(f"{r['label']}: {r['seconds']:.0f} s, load {r['load_before']} -> {r['load_after']}; "
            + "; ".join(f"{k} {v['slope']:.3f} [{v['ci'][0]:.3f}, {v['ci'][1]:.3f}] (n={v['n']})"
                        for k, v in fits.items()))
    say(f"wrote {a.out}/fits.json")


if __name__ == "__main__":
    main()
