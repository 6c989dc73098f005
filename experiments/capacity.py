"""The CPU-scale reproduction of the paper's three capacity figures (docs/capacity.md):

  memory       largest number of associations stored at >= 99 % accuracy by linear and MLP associative
               memories against their parameter count (M = N outputs, and linear with M = 64 fixed), with
               the information-theoretic bound (paper §3);
  transformer  facts S·R stored by one-layer transformers against their parameter count, one series per
               shape (paper §4);
  tradeoff     accuracy of one transformer per cell of a heads H × MLP width m grid on S = R = 32 facts,
               with lines of equal parameter count (paper §4).

    python experiments/capacity.py --out runs/capacity-repro         # all three (time: docs/capacity.md)
    python experiments/capacity.py --only tradeoff --out runs/t      # one
    python experiments/capacity.py --tiny --out runs/capacity-tiny   # about a minute: every step, toy sizes
    python experiments/capacity.py --docs --out runs/capacity-repro  # also copy the figures to docs/capacity/

The settings are the constant blocks below (the memories' are `frd-capacity` flags). Every number comes from
the library: analysis.capacity.sweep (memories), analysis.capacity.transformer (transformer search and
trade-off map), figures.capacity (figures). Writes, per figure, <name>.csv (one row per size and seed, or per
cell), <name>.json (settings, results, fits, wall time) and <name>.png into --out, and prints markdown tables.
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from common.cli import out_ok  # noqa: E402

from analysis.capacity.__main__ import build_parser, information_bound, series_of, settings_from_args  # noqa: E402
from common.io import output_dir, save_figure, write_json  # noqa: E402

# --- memory figure (paper §3): frd-capacity flags, one sweep per model ------------------------------------------
MEMORY_FLAGS = {
    # lr 1: the capacity is the same for every lr in [0.1, 10] and lr 1 converges within 4096 steps (docs/capacity.md)
    # each with its construction (SPEC §8: correlation memory; random features + least squares), drawn beside it
    "linear": "--model linear --d 8 11 16 22 32 --seeds 0 1 2 3 4 --lr 1 --max-steps 4096",
    # alpha 1, 2, 4 (the issue's widths); d <= 16 keeps the widest memories' search within the CPU budget
    "mlp": "--model mlp --alpha 1 2 4 --d 8 11 16 --seeds 0 1 2 --lr 0.03 0.1 --max-steps 4096",
    # M = 64 >= d fixed outputs: the log factor ln M is a constant, so capacity ∝ d² (SPEC §9); d >= 22 stores >= M
    "linear, M = 64 outputs": "--model linear --target fixed --M 64 --d 22 32 45 64 --seeds 0 1 2 3 4 --lr 1 "
                              "--max-steps 4096 --no-construction",
}
# --- transformer figure (paper §4): frd-capacity --model transformer flags, one sweep per shape ----------------
TRANSFORMER_COMMON = ("--model transformer --d 8 12 16 --seeds 0 1 2 --lr 0.03 0.1 --restarts 2 --batch 128 "
                      "--max-steps 2048 --rtol 0.1 --max-doublings 2")
TRANSFORMER_SHAPES = {
    "attention only, H=2, alpha=1": "--heads 2 --attn-ratio 1",
    "attention H=2, alpha=1 + MLP beta=1": "--heads 2 --attn-ratio 1 --mlp-ratio 1",
    "attention only, H=2, alpha=2": "--heads 2 --attn-ratio 2",
}
# --- trade-off map (paper §4): analysis.capacity.transformer.tradeoff_map ---------------------------------------
TRADEOFF = dict(Hs=(1, 2, 4, 8, 16), ms=(8, 16, 32, 64, 128), S=32, R=32, D=8, d=32, d_h=8, T=8, seed=0,
                lrs=(1e-2,), batch=128, max_steps=2048, eval_every=64)

# --- --tiny: the same steps at toy sizes (the test) -------------------------------------------------------------
TINY_MEMORY_FLAGS = {
    "linear": "--model linear --d 4 6 8 --seeds 0 --max-steps 128",
    "mlp": "--model mlp --alpha 1 --d 4 6 8 --seeds 0 --max-steps 128 --no-construction",
    "linear, M = 4 outputs": "--model linear --target fixed --M 4 --d 6 8 --seeds 0 --max-steps 128 --no-construction",
}
TINY_TRANSFORMER_COMMON = ("--model transformer --d 8 12 --seeds 0 1 --lr 0.1 --batch 32 --max-steps 64 "
                           "--rtol 0.5 --max-doublings 0 --T 4")
TINY_TRANSFORMER_SHAPES = {"attention only, H=2, alpha=1": "--heads 2 --attn-ratio 1",
                           "attention H=2, alpha=1 + MLP beta=1": "--heads 2 --attn-ratio 1 --mlp-ratio 1"}
TINY_TRADEOFF = dict(Hs=(1, 2), ms=(4, 8), S=4, R=4, D=2, d=8, d_h=2, T=4, seed=0, lrs=(0.1,), batch=32,
                     max_steps=32, eval_every=8)

FIGURES = ("memory", "transformer", "tradeoff")
DOCS_DIR = os.path.join(ROOT, "docs", "capacity")


def settings_of(flags: str):
    """The sweep settings that `frd-capacity FLAGS` would use."""
    return settings_from_args(build_parser().parse_args(shlex.split(flags)))


def fit_text(fit) -> str:
    if fit is None:
        return "no fit (fewer than 3 points inside their brackets)"
    return f"slope {fit.slope:.3f}, 95% CI [{fit.ci[0]:.3f}, {fit.ci[1]:.3f}] over {fit.n} points"


def capacity_rows(label: str, result) -> list:
    """One dict per size and seed of a sweep result, with the series label in front (the construction's rows:
    '<label>: construction', as its series in the figure)."""
    cols = result.rows()
    return [dict(series=f"{label}: construction" if cols["model"][i] == "construction" else label,
                 **{k: cols[k][i] for k in cols}) for i in range(len(next(iter(cols.values()))))]


def run_flags(flags: str, label: str, quiet: bool):
    """One capacity sweep, as `frd-capacity FLAGS` would run it (memories or transformer): the result."""
    import torch

    from analysis.capacity.sweep import run_sweep
    from analysis.capacity.transformer import run_transformer_sweep

    torch.set_num_threads(1)  # one core per job: the jobs run side by side (--workers)
    say = (lambda line: None) if quiet else (lambda line: print(f"{label}: {line}", file=sys.stderr, flush=True))
    s = settings_of(flags)
    run = run_transformer_sweep if s.__class__.__name__ == "TransformerSettings" else run_sweep
    return run(s, progress=say)


def run_tradeoff_row(H: int, grid: dict, quiet: bool):
    """Row H of the trade-off map (accuracy and parameter count over the MLP widths) and its seconds."""
    import torch

    from analysis.capacity.transformer import tradeoff_map

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    g = dict(grid)
    say = (lambda line: None) if quiet else (lambda line: print(f"tradeoff: {line}", file=sys.stderr, flush=True))
    acc, params = tradeoff_map([H], g.pop("ms"), train=train_of(g), progress=say, **g)
    return acc[0], params[0], time.perf_counter() - t0


def train_of(g: dict):
    """The trade-off map's TransformerTrainConfig; removes batch, max_steps and eval_every from ``g``."""
    from dynamics.capacity_training import TransformerTrainConfig

    return TransformerTrainConfig(batch=g.pop("batch"), max_steps=g.pop("max_steps"), eval_every=g.pop("eval_every"),
                                  record=False)


def settings_blocks(tiny: bool, tradeoff_steps: int | None = None) -> tuple:
    """(memory flags by label, transformer flags by label, trade-off grid) of the chosen size; the map's Adam
    steps replaced by ``tradeoff_steps`` when given."""
    if tiny:
        blocks = (dict(TINY_MEMORY_FLAGS),
                  {label: f"{TINY_TRANSFORMER_COMMON} {f}" for label, f in TINY_TRANSFORMER_SHAPES.items()},
                  dict(TINY_TRADEOFF))
    else:
        blocks = (dict(MEMORY_FLAGS), {label: f"{TRANSFORMER_COMMON} {f}" for label, f in TRANSFORMER_SHAPES.items()},
                  dict(TRADEOFF))
    if tradeoff_steps is not None:
        blocks[2]["max_steps"] = tradeoff_steps
    return blocks


def jobs_of(names, tiny: bool, quiet: bool, tradeoff_steps: int | None = None) -> list:
    """The independent computations behind the figures ``names``: (figure, key, function, args), the
    transformer sweeps first (the longest), then the trade-off rows, then the memory sweeps."""
    mem, tf, grid = settings_blocks(tiny, tradeoff_steps)
    jobs = []
    if "transformer" in names:
        jobs += [("transformer", label, run_flags, (flags, label, quiet)) for label, flags in tf.items()]
    if "tradeoff" in names:
        rows = {k: v for k, v in grid.items() if k != "Hs"}
        jobs += [("tradeoff", H, run_tradeoff_row, (H, rows, quiet)) for H in sorted(grid["Hs"], reverse=True)]
    if "memory" in names:
        jobs += [("memory", label, run_flags, (flags, label, quiet)) for label, flags in mem.items()]
    return jobs


def run_jobs(jobs: list, workers: int) -> dict:
    """(figure, key) -> the job's return value; ``workers`` processes side by side (1: in this process)."""
    if workers == 1:
        return {(fig, key): fn(*args) for fig, key, fn, args in jobs}
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # fork: the workers inherit this module as loaded (also when loaded by path, as the test does); the
    # parent has run no torch computation before, so no thread pool is forked
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        futures = {(fig, key): pool.submit(fn, *args) for fig, key, fn, args in jobs}
        return {k: f.result() for k, f in futures.items()}


def capacity_figure_of(name: str, runs: dict, title: str, bits_per_param: float):
    """Figure, JSON body and rows of the memory or transformer figure from its sweeps {label: (flags, result)}."""
    from figures.capacity import capacity_figure

    series, rows, body = [], [], {}
    for label, (flags, result) in runs.items():
        series += series_of(result, label=label)  # '<label>' and, when searched, '<label>: construction'
        rows += capacity_rows(label, result)
        body[label] = dict(flags=flags, result=result.to_dict(), fit=fit_text(result.fit), seconds=result.seconds)
        if result.construction:  # the sweep's construction (SPEC §8), its own series
            body[f"{label}: construction"] = dict(flags=flags, fit=fit_text(result.construction_fit))
    first = next(iter(runs.values()))[1].settings
    bound = information_bound(series, first, bits_per_param)
    if bound and name == "memory":  # the bound of the first series' target; the others may count outputs apart
        bound["label"] += f", {target_text(first)}"
    return capacity_figure(series, title, bound=bound), dict(series=body, information_bound=bound), rows


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def target_text(s) -> str:
    """A memory sweep's target in words: 'M = N' (identity) or 'M = 64 fixed'."""
    return "M = N" if s.target == "identity" else f"M = {s.M} fixed"


def memory_figure(runs: dict, bits_per_param: float) -> tuple:
    each = "; ".join(f"{label}: {target_text(r.settings)}, {plural(len(r.settings.seeds), 'seed')}, Adam lr "
                     f"{list(r.settings.lrs)}, {r.settings.max_steps} steps" for label, (_, r) in runs.items())
    title = f"Capacity of associative memories ({each})"
    return capacity_figure_of("memory", runs, title, bits_per_param)


def transformer_figure(runs: dict, bits_per_param: float) -> tuple:
    s = next(iter(runs.values()))[1].settings
    title = (f"Facts stored by one-layer transformers ({s.scaling} scaling S = R, D {s.D}, T {s.T}, "
             f"{len(s.seeds)} seeds, Adam lr {list(s.lrs)} x {s.restarts} inits, batch {s.batch}, "
             f"{s.max_steps} steps)")
    return capacity_figure_of("transformer", runs, title, bits_per_param)


def tradeoff_figure_of(rows_by_H: dict, grid: dict) -> tuple:
    import numpy as np

    from figures.capacity import tradeoff_figure

    Hs, ms, g = list(grid["Hs"]), list(grid["ms"]), grid
    acc = np.array([rows_by_H[H][0] for H in Hs])        # (len(Hs), len(ms))
    params = np.array([rows_by_H[H][1] for H in Hs])
    rows = [dict(H=H, m=m, attn_params=4 * H * g["d_h"] * g["d"], mlp_params=2 * m * g["d"],
                 params=int(params[i, j]), accuracy=float(acc[i, j]))
            for i, H in enumerate(Hs) for j, m in enumerate(ms)]
    title = (f"Accuracy over heads H x MLP width m: S = R = {g['S']}, D = {g['D']}, d = {g['d']}, d_h = {g['d_h']}, "
             f"T = {g['T']}, batch {g['batch']}, {g['max_steps']} steps, lr {list(g['lrs'])}, seed {g['seed']}")
    body = dict(settings=dict(g, Hs=Hs, ms=ms), accuracy=acc.tolist(), params=params.tolist(),
                seconds={str(H): rows_by_H[H][2] for H in Hs})
    return tradeoff_figure(acc, Hs, ms, params, title), body, rows


def markdown(name: str, body: dict, rows: list) -> str:
    if name == "tradeoff":
        Hs, ms = body["settings"]["Hs"], body["settings"]["ms"]
        acc = body["accuracy"]
        lines = ["| H \\ m | " + " | ".join(str(m) for m in ms) + " |", "|" + "---|" * (len(ms) + 1)]
        lines += [f"| {H} | " + " | ".join(f"{acc[i][j]:.2f}" for j in range(len(ms))) + " |"
                  for i, H in enumerate(Hs)]
        return "\n".join(lines)
    lines = ["| series | params | capacity per seed | fit |", "|---|---|---|---|"]
    for label, x in body["series"].items():
        per = {}
        for r in rows:
            if r["series"] == label:
                per.setdefault(r["params"], []).append(r["facts"] if "facts" in r else r["capacity"])
        for P, caps in per.items():
            lines.append(f"| {label} | {P} | {caps} | |")
        lines.append(f"| {label} | | | {x['fit']} |")
    return "\n".join(lines)


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=FIGURES, action="append", help="run only this figure (repeatable)")
    p.add_argument("--tiny", action="store_true", help="toy sizes for every figure (seconds; a smoke test)")
    p.add_argument("--workers", type=int, default=2,
                   help="processes side by side, one core each (default 2: a 2-core machine; 1 = no subprocess)")
    p.add_argument("--bits-per-param", type=float, default=8.0,
                   help="bits per parameter of the information bound line (default 8, as frd-capacity)")
    p.add_argument("--out", default="runs/capacity-repro", help="output folder (default runs/capacity-repro)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--tradeoff-steps", type=int, default=None, metavar="K",
                   help=f"Adam steps of each trade-off cell, 1 to {2**20} (default {TRADEOFF['max_steps']}; the paper "
                        f"2^14): does the map change with more training?")
    p.add_argument("--docs", action="store_true",
                   help="also copy the figures to docs/capacity/<name>.png (not with --tiny)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def main(argv=None) -> int:
    a = build_arg_parser().parse_args(argv)
    if not out_ok(a.out, a.overwrite):
        return 2
    if a.docs and a.tiny:
        print("--docs with --tiny: the docs show the full-size figures; drop one of them", file=sys.stderr)
        return 2
    if a.tradeoff_steps is not None and not 1 <= a.tradeoff_steps <= 2**20:
        print(f"--tradeoff-steps {a.tradeoff_steps}: give 1 to {2**20} steps", file=sys.stderr)
        return 2
    if a.docs and a.tradeoff_steps is not None:
        print("--docs with --tradeoff-steps: the docs show the default settings' figures; drop one of them",
              file=sys.stderr)
        return 2
    if not 1 <= a.workers <= 64:
        print(f"--workers {a.workers}: give 1 to 64 processes", file=sys.stderr)
        return 2
    names = [n for n in FIGURES if n in (a.only or FIGURES)]
    mem, tf, grid = settings_blocks(a.tiny, a.tradeoff_steps)
    err = check_settings(names, mem, tf)
    if err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    done = run_jobs(jobs_of(names, a.tiny, a.quiet, a.tradeoff_steps), a.workers)
    wall = time.perf_counter() - t0
    made = {}
    if "memory" in names:
        made["memory"] = memory_figure({k: (mem[k], done["memory", k]) for k in mem}, a.bits_per_param)
    if "transformer" in names:
        made["transformer"] = transformer_figure({k: (tf[k], done["transformer", k]) for k in tf}, a.bits_per_param)
    if "tradeoff" in names:
        made["tradeoff"] = tradeoff_figure_of({H: done["tradeoff", H] for H in grid["Hs"]}, grid)
    with output_dir(a.out, overwrite=a.overwrite) as d:
        for name, (fig, body, rows) in made.items():
            write_csv_rows(os.path.join(d, f"{name}.csv"), rows)
            write_json(os.path.join(d, f"{name}.json"), dict(body, tiny=a.tiny, workers=a.workers,
                                                              wall_seconds_all_figures=wall))
            save_figure(fig, os.path.join(d, f"{name}.png"), dpi=150)
    if a.docs:
        os.makedirs(DOCS_DIR, exist_ok=True)
        for name in made:
            shutil.copyfile(os.path.join(a.out, f"{name}.png"), os.path.join(DOCS_DIR, f"{name}.png"))
    print(f"all figures: {wall:.0f} s wall with {a.workers} worker(s)")
    for name, (_, body, rows) in made.items():
        print(f"\n### {name}\n")
        print(markdown(name, body, rows))
    return 0


def check_settings(names, mem: dict, tf: dict) -> str | None:
    """The first sweep's refusal (bad flag or too much memory, as frd-capacity would say), or None; before
    anything runs."""
    from common.errors import ConfigError

    blocks = ([mem] if "memory" in names else []) + ([tf] if "transformer" in names else [])
    for label, flags in ((k, v) for b in blocks for k, v in b.items()):
        try:
            settings_of(flags).check_memory()
        except ConfigError as e:
            return f"{label}: {e}"
    return None


def write_csv_rows(path: str, rows: list) -> None:
    """Rows (dicts with the same keys) as a CSV; text columns (labels, model names) kept as text."""
    import pandas as pd

    from common.io import write_text

    write_text(path, pd.DataFrame(rows).to_csv(index=False))


if __name__ == "__main__":
    sys.exit(main())
