"""Command line: sweeps of flows, training runs, experiments or capacity searches over a grid of configuration
fields, on Dask, resumable (analysis.sweeps.runner).

    python -m analysis.grid flow --S 16 --R 4 --D 8 --grid alpha=1e-5,1e-4 --grid seed=0:8 --facts balanced \\
        --out runs/grid
    python -m analysis.grid train --model linear --steps 8192 --compare-flow --grid seed=0:8 --out runs/sgd-seeds
    python -m analysis.grid train --experiment experiments/finetune.toml --model softmax --optimizer adam \
        --lr 1e-3 --grid seed=0:5 --out runs/staged-seeds
    python -m analysis.grid experiment experiments/finetune.toml --grid alpha=1e-5,1e-3 --out runs/exp-grid
    python -m analysis.grid capacity --model linear --grid d=4,6,8 --grid seed=0:3 --out runs/cap-grid
"""
from __future__ import annotations

import argparse
import sys

from common.cli import EXIT_OK, ArgumentParser, Program, program_name, run_program
from analysis.sweeps.dask_tasks import add_cluster_flags

GRID_HELP = """\
The grid: every --grid NAME=VALUES adds an axis and the runs are all combinations (the last axis varies
fastest); --list FILE gives the runs one by one instead (a JSON list of objects, JSON lines, or a CSV with a
header of field names); both together: every listed run with every grid combination. VALUES is one of
  a,b,c               a list: alpha=1e-5,1e-4   facts=balanced,random   compare_flow=true,false
  LO:HI[:STEP]        the integers range(LO, HI, STEP): seed=0:8 is 0, 1, ..., 7
  log:LO:HI:COUNT     COUNT log-spaced numbers from LO to HI: alpha=log:1e-6:1e-2:5
  lin:LO:HI:COUNT     COUNT evenly spaced numbers: lr=lin:0.05:0.2:4
NAME is a configuration field: flow: S, R, D, T, N, facts, seed (the fact table's), zipf_subjects,
zipf_relations, alpha, init, rtol, atol, t_max, eps_conv, max_steps, method, ... (dynamics.FlowConfig,
models.TaskConfig); train: model, optimizer, lr, batch, steps, seed, init, init_scale, d, eval_every,
eval_size, task_seed, compare_flow, ... (dynamics.TrainConfig); experiment: the file's [task] and [flow]
keys; capacity: model, construction_of, d, alpha, m, target, M, heads, head_dim, attn_ratio, mlp_width,
mlp_ratio, scaling, D, T, batch, eval_every, restarts, eval_size, seed, lr, max_steps, rtol, max_doublings,
dtype, device (the settings of frd-capacity, one size and one seed per run). --set NAME=VALUE sets any field for every run (the
flags --S, --alpha, ... are shorthands).

The sweep folder --out: spec.json; results.jsonl (one line per finished run, appended as it ends: index, key,
status done/unfinished/failed, error, the grid fields and the run's numbers; a training run's history too);
results.csv (the same rows, one per run, rewritten at the end); runs/<key>/ with --keep-runs; for train,
bands.csv / bands.json / bands.png (mean, std, min, max over seeds of every history column; model 1 around
the exact flow, model 2 with its confirmation verdict per seed and overall); for train --experiment FILE
(staged trainer runs, one seed per row; results.csv holds per stage <stage>.step_start, .step_end, .steps,
.reason, .cut, .end_loss, .end_loss_se and per set <stage>.<set>.t1/.t2/.t3/.loss_end), bands.csv (the loss
curves' bands per stage), bands.json, stage_bands.csv (per stage and set: n, mean, std, min, max over seeds
of the steps, end loss and phase times; the seeds the step budget cut) and experiment.png; for capacity (one run = the
capacity search of SPEC §9 for one model size and one seed): results.csv with capacity, parameters,
below_bracket, above_bracket and the probes per run; bands.csv / bands.json (mean, std, min, max of the
capacity over seeds per size; per series of sizes the log-log slope of capacity on parameters with its 95 %
interval) and capacity.png / capacity.pdf. Running the same command again
continues: runs already recorded are skipped (after a crash, a killed worker or Ctrl-C), so nothing is lost.
A different spec in the same --out is refused (naming the difference) unless --overwrite. One frd-grid
at a time per --out: a second is refused (it holds OUT/.frd-grid.lock; the lock ends with the process, crash
included). A full disk is one line: nothing is left if no run was recorded, else spec.json and results.jsonl
stay and the same command continues once there is space.

A run that fails is recorded with its one-line error and the sweep goes on; a run whose worker process dies
is retried once, then recorded failed. A run that returns without finishing (a flow out of --max-steps or
whose solver failed, a diverged training run, an experiment stage short of its stop rule: what makes frd-run,
frd-train or frd-experiment exit 3) is recorded unfinished with the reason. Failed and unfinished runs are
skipped on resume like done ones (the same configuration gives the same outcome); --retry-failed runs them
again. Each run's memory is estimated before submission and a run no worker
can hold is refused (exit status 2). Exit status: 0 every run done; 2 bad input (one line, nothing run);
3 some run failed or did not finish (results written; the line names them); 130 SIGINT (Ctrl-C; recorded runs are kept), 143 SIGTERM, 129 SIGHUP."""

FLOW_FLAGS = (("--S", "S", int, "subjects"), ("--R", "R", int, "relations"), ("--D", "D", int,
              "answers per relation"), ("--T", "T", int, "sequence length"), ("--N", "N", int, "noise tokens"),
              ("--facts", "facts", str, "fact table: structured, balanced or random"),
              ("--seed", "seed", int, "seed of the balanced/random fact table"),
              ("--alpha", "alpha", float, "initialization scale"), ("--init", "init", str, "balanced or uniform"),
              ("--rtol", "rtol", float, "solver rtol"), ("--eps-conv", "eps_conv", float, "loss level of t3"),
              ("--t-max", "t_max", float, "longest flow time"), ("--max-steps", "max_steps", int,
              "solver step budget"))
TRAIN_FLAGS = (("--S", "S", int, "subjects"), ("--R", "R", int, "relations"), ("--D", "D", int,
               "answers per relation"), ("--T", "T", int, "sequence length"), ("--N", "N", int, "noise tokens"),
               ("--facts", "facts", str, "fact table: structured, balanced or random"),
               ("--task-seed", "task_seed", int, "seed of the balanced/random fact table"),
               ("--model", "model", str, "linear (model 1), softmax (model 2) or transformer (SPEC §11)"),
               ("--optimizer", "optimizer", str, "gd, sgd or adam"), ("--lr", "lr", float, "step size"),
               ("--batch", "batch", int, "sequences per step"), ("--steps", "steps", int, "optimizer steps"),
               ("--init", "init", str, "model 1's init: uniform or balanced"),
               ("--init-scale", "init_scale", float, "init scale"),
               ("--d", "d", int, "embedding dimension of model 2 (default 256) and the transformer (default 64)"),
               ("--H", "H", int, "transformer: attention heads (default 1)"),
               ("--d-h", "d_h", int, "transformer: head dimension (default 16)"),
               ("--m", "m", int, "transformer: MLP width, 0 = attention only (default 0)"),
               ("--seed", "seed", int, "seed of sampling, embeddings and init (sweep it with --grid seed=0:8)"),
               ("--eval-every", "eval_every", int, "evaluate every this many steps"),
               ("--eval-geometric", "eval_geometric", int, "evaluations per doubling of the step count"),
               ("--eval-size", "eval_size", int, "held-out sequences"),
               ("--eps-conv", "eps_conv", float, "loss that counts as converged"),
               ("--device", "device", str, "auto, cpu or cuda[:i]"))
EXPERIMENT_FLAGS = (("--S", "S", int, "subjects"), ("--R", "R", int, "relations"),
                    ("--D", "D", int, "answers per relation"), ("--alpha", "alpha", float, "initialization scale"))
CAPACITY_FLAGS = (("--model", "model", str, "linear, mlp, construction (no training, SPEC §8) or transformer "
                   "(SPEC §11); default linear"),
                  ("--construction-of", "construction_of", str,
                   "with model construction: linear, mlp or transformer (the transformer fields shape it)"),
                  ("--d", "d", int, "embedding dimension, >= 1 (default 8; sweep it: --grid d=4,6,8)"),
                  ("--alpha", "alpha", float, "MLP memory width ratio, m = round(alpha*d) (default 1)"),
                  ("--m", "m", int, "MLP memory width, >= 1, instead of --alpha"),
                  ("--target", "target", str, "memories' target map: identity (M = N) or fixed"),
                  ("--M", "M", int, "outputs with target fixed"),
                  ("--heads", "heads", int, "transformer: attention heads H (default 2)"),
                  ("--head-dim", "head_dim", int, "transformer: head dimension d_h (default alpha*d/H)"),
                  ("--attn-ratio", "attn_ratio", float, "transformer: alpha = H*d_h/d; alpha*d/H must be an "
                   "integer (default 1)"),
                  ("--mlp-width", "mlp_width", int, "transformer: MLP width m, 0 = attention only"),
                  ("--mlp-ratio", "mlp_ratio", float, "transformer: beta = m/d (default 0)"),
                  ("--scaling", "scaling", str, "transformer: task sizes searched, linear, square or distinct"),
                  ("--D", "D", int, "transformer: answers per relation (default 4)"),
                  ("--T", "T", int, "transformer: sequence length (default 8)"),
                  ("--batch", "batch", int, "transformer: sequences per Adam step (default 128)"),
                  ("--eval-every", "eval_every", int, "transformer: steps between evaluations (default 32)"),
                  ("--restarts", "restarts", int, "transformer: initializations tried per seed and learning rate; "
                   "a size succeeds when any does (default 2)"),
                  ("--eval-size", "eval_size", int, "transformer: evaluation sequences, every fact "
                   "ceil(EVAL_SIZE/(S*R)) times (default 1024)"),
                  ("--seed", "seed", int, "seed of embeddings and init (default 0; sweep it: --grid seed=0:5)"),
                  ("--max-steps", "max_steps", int, "Adam steps per training run (default 2048 memories, 1024 "
                   "transformer)"),
                  ("--rtol", "rtol", float, "bisection resolution in [0, 1] (default 0.05)"),
                  ("--max-doublings", "max_doublings", int, "times the bracket's top may double (default 3)"),
                  ("--dtype", "dtype", str, "training dtype: float32 (default) or float64"),
                  ("--device", "device", str, "cpu (default) or cuda[:i]"))
FLAGS = {"flow": FLOW_FLAGS, "train": TRAIN_FLAGS, "experiment": EXPERIMENT_FLAGS, "capacity": CAPACITY_FLAGS}
CONFIG_DEFAULTS = {"capacity": "frd-capacity's: d 8, seed 0, lr 0.03, max_steps 2048 for memories and 1024 for "
                               "the transformer, rtol 0.05, max_doublings 3, float32 on the CPU"}


def _common(p, kind: str) -> None:
    g = p.add_argument_group("configuration (unset fields keep the configuration's defaults: " + CONFIG_DEFAULTS.get(
        kind, "FlowConfig's, TrainConfig's (steps 1000, eval_every 50, init_scale 1e-5 for both models, unlike "
              "frd-train) or the experiment file's") + ")")
    for flag, dest, typ, text in FLAGS[kind]:
        g.add_argument(flag, dest=f"field_{dest}", type=typ, default=None, metavar=dest.upper() if
                       typ is not str else "X", help=f"{text} (field {dest}" + (")" if "default" in text else
                                                                               "; default: the configuration's)"))
    if kind == "capacity":
        g.add_argument("--lr", dest="field_lr", type=float, nargs="+", default=None, metavar="LR",
                       help="Adam learning rates; a run succeeds at N when any of them does (field lr; default "
                            "0.03; --grid lr=... instead makes one run per learning rate)")
    if kind == "train":
        g.add_argument("--compare-flow", dest="field_compare_flow", action="store_const", const=True, default=None,
                       help="model 1: pair every run with the exact flow from its init (flow_gap; the bands get "
                            "the flow's loss at every evaluation)")
    g.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="set any field for every run (repeatable): --set rtol=1e-10 --set zipf_subjects=1.0")
    s = p.add_argument_group("grid")
    s.add_argument("--grid", action="append", default=[], metavar="NAME=VALUES",
                   help="an axis of the grid (repeatable; see the grid syntax below)")
    s.add_argument("--list", default=None, metavar="FILE",
                   help="the runs as a list: JSON (list of objects), JSON lines or CSV (header = field names)")
    if kind == "flow":
        s.add_argument("--batch-flows", type=int, default=1, metavar="B",
                       help="integrate up to B flows of one shape per task with the batched solver "
                            "(dynamics.run_flows_batched: native dopri5, float64; phase times, plateau and step "
                            "counts, no conservation drifts; equal to the single runs to ~1e-12 relative) "
                            "(default 1: one run per task)")
    x = p.add_argument_group("execution")
    add_cluster_flags(x)
    x.add_argument("--workers", type=int, default=None, metavar="N",
                   help="local worker processes (default: one per CPU core); 1 runs in this process, one run "
                        "after another, without Dask (for debugging)")
    x.add_argument("--max-runs", type=int, default=None, metavar="N",
                   help="run at most N of the runs not yet recorded, then stop (re-run to continue)")
    x.add_argument("--retry-failed", action="store_true",
                   help="run again the runs recorded as failed or unfinished (default: they are skipped like "
                        "done ones, since the same configuration gives the same outcome)")
    o = p.add_argument_group("output")
    o.add_argument("--out", default=None, metavar="DIR",
                   help=f"the sweep folder (default runs/grid-{kind}); the same command again continues the sweep")
    add_overwrite_sweep(o)
    o.add_argument("--keep-runs", action="store_true",
                   help="also write each run's own folder out/runs/<key>/ (results.json and its trajectory or "
                        "history)")
    o.add_argument("--no-plots", action="store_true",
                   help="skip the figures (train: bands.png; capacity: capacity.png and capacity.pdf)")
    o.add_argument("--quiet", action="store_true", help="no progress and no summary")


def add_overwrite_sweep(group) -> None:
    group.add_argument("--overwrite", action="store_true",
                       help="start over: an --out holding another sweep (or other files) is emptied first; "
                            "without it a different spec, or a non-empty folder that holds no sweep, is refused")


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog=program_name("analysis.grid"), formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Sweep flows, training runs, experiments or capacity searches over a grid of "
                                   "configuration fields "
                                   "on Dask (a local cluster or a running one), resumable: each finished run is "
                                   "recorded at once, and the same command again continues where it stopped.",
                       epilog=GRID_HELP)
    sub = p.add_subparsers(dest="kind", metavar="{flow,train,experiment,capacity}",
                           parser_class=lambda **kw: ArgumentParser(
                               formatter_class=argparse.RawDescriptionHelpFormatter, epilog=GRID_HELP, **kw))
    f = sub.add_parser("flow", help="exact gradient flows of model 1 (dynamics.FlowConfig; phases, plateau, "
                                    "conservation, solver counts per run)",
                       description="Sweep exact gradient flows (analysis.analyze_flow per run).")
    _common(f, "flow")
    t = sub.add_parser("train", help="training runs of model 1 or 2 (dynamics.TrainConfig); bands over seeds",
                       description="Sweep training runs (analysis.analyze_training per run); bands over seeds.")
    t.add_argument("--experiment", default=None, metavar="FILE",
                   help="train through the stages of an experiment file (the format of frd-experiment --help; SPEC "
                        "§6.1, as frd-train --experiment): each run is one staged trainer run (dynamics."
                        "train_schedule) of the fields' configuration, the file's [task] as the task (the task "
                        "fields override it); a run whose stage used all --steps without meeting its stop rule is "
                        "recorded unfinished; no compare_flow")
    _common(t, "train")
    e = sub.add_parser("experiment", help="multi-stage experiments from a TOML file (phase times per stage and "
                                          "set)", description="Sweep an experiment file's [task] and [flow] keys.")
    e.add_argument("file", metavar="FILE", help="the experiment file (the format of frd-experiment --help)")
    _common(e, "experiment")
    c = sub.add_parser("capacity", help="capacity searches (SPEC §9, as frd-capacity): one run per model size and "
                                        "seed; capacity over seeds per size and the scaling fit",
                       description="Sweep capacity searches: each run searches, by bracket doubling and bisection "
                                   "over N, the largest number of facts one model size stores at >= 99% accuracy "
                                   "for one seed (analysis.capacity's search, as frd-capacity). At the end: the "
                                   "capacity over seeds per size (bands.csv, bands.json), the log-log slope of "
                                   "capacity on parameters with its 95% interval per series, and capacity.png/pdf.")
    _common(c, "capacity")
    return p


def _fields(a, kind: str) -> dict:
    from common.errors import ConfigError

    from analysis.sweeps.spec import parse_value

    base = {}
    for flag, dest, _, _ in FLAGS[kind] + ((None, "compare_flow", None, None), (None, "lr", None, None)):
        v = getattr(a, f"field_{dest}", None)
        if isinstance(v, list) and len(v) == 1:
            v = v[0]  # --lr 0.03 is the field lr = 0.03, as --set lr=0.03
        if v is not None:
            base[dest] = v
    for item in a.set:
        name, eq, value = item.partition("=")
        if not eq or not name.strip():
            raise ConfigError(f"--set {item!r} is not NAME=VALUE")
        base[name.strip()] = parse_value(value)
    return base


def run(a, job) -> int:
    """Build the sweep's spec from the flags and run it (analysis.sweeps.runner.run_grid: resumable), then print."""
    if a.kind is None:
        job.parser.error("choose what to sweep: flow, train, experiment or capacity (see --help)")
    # heavy imports (torch, dask, matplotlib) only after parsing: --help, --version and bad flags answer at once
    from common.errors import ConfigError, check_int

    from analysis.sweeps.runner import run_grid
    from analysis.sweeps.spec import SweepSpec, canonical_name, parse_axis, product_grid, read_run_list
    from analysis.sweeps.dask_tasks import check_scheduler, make_security
    from analysis.sweeps.spec import axis_size, check_grid_size

    base = _fields(a, a.kind)
    # the size of every axis and of the product first, from the syntax alone: nothing is built before
    sizes = [(x.partition("=")[0].strip(), axis_size(x)) for x in a.grid]
    check_grid_size(sizes)
    listed = read_run_list(a.list) if a.list is not None else None
    check_grid_size(sizes, None if listed is None else len(listed))
    axes = [parse_axis(x) for x in a.grid]
    grid = product_grid(axes)
    if listed is not None:
        gridded = {canonical_name(a.kind, n): n for n, _ in axes}
        for row in listed:  # a listed value replaced by the grid's silently: refused as for --set
            for k in row:
                if canonical_name(a.kind, k) in gridded:
                    raise ConfigError(f"field {k!r} is given by the run list --list {a.list} and swept by --grid "
                                      f"{gridded[canonical_name(a.kind, k)]}=...; give it in one place")
        grid = [{**row, **g} for row in listed for g in grid]
    swept = {canonical_name(a.kind, k) for g in grid for k in g}
    for name in base:  # a field set for every run and swept too: say so instead of letting the grid win silently
        if canonical_name(a.kind, name) in swept:
            raise ConfigError(f"field {name!r} is set for every run (flag or --set) and swept by the grid; "
                              "give it in one place")
    if a.workers is not None:
        check_int("workers", a.workers, 1, 4096)
    if a.max_runs is not None:
        check_int("max_runs", a.max_runs, 0)
    check_scheduler(a.scheduler, a.insecure_tcp)
    security = make_security(a.scheduler, a.tls_ca_file, a.tls_cert, a.tls_key)
    out = a.out or f"runs/grid-{a.kind}"
    spec = SweepSpec(kind=a.kind, base=base, grid=tuple(grid), out=out,
                     experiment_file=getattr(a, "file", None) or getattr(a, "experiment", None),
                     batch=getattr(a, "batch_flows", 1),
                     keep_runs=a.keep_runs)
    from analysis.sweeps.results_log import interrupted_note

    # a signal while the sweep runs: the runs recorded so far stay, and the same command continues
    interrupted = interrupted_note(out)
    job.interrupted = interrupted
    result = run_grid(spec, scheduler=a.scheduler, workers=a.workers, progress=None if not a.quiet else False,
                      max_runs=a.max_runs, retry_failed=a.retry_failed, overwrite=a.overwrite, plots=not a.no_plots,
                      security=security, insecure_tcp=a.insecure_tcp)
    job.interrupted = None
    if not a.quiet:
        print(f"{a.kind} sweep: {result.summary_line()}")
        if result.bands is not None and hasattr(result.bands, "lines"):  # capacity, staged trainer runs
            for line in result.bands.lines():
                print(line)
        elif result.bands is not None:
            for g in result.bands.groups:
                line = f"bands [{g['label']}]: {len(g['seeds'])} seeds"
                if g.get("mean_flow_gap") is not None:
                    line += (f", max |mean L - L_flow| = {g['mean_flow_gap']:.4f}, flow inside the seeds' min-max at "
                             f"{100 * g['inside_minmax']:.0f} % of evaluations")
                if g.get("verdicts") is not None:
                    per = ", ".join(f"seed {v['seed']} {'confirmed' if v['confirmed'] else 'not confirmed'}"
                                    for v in g["verdicts"])
                    line += (f"; {per}; overall {'confirmed' if g['overall'] else 'not confirmed'} "
                             f"({g['n_confirmed']}/{len(g['verdicts'])})")
                print(line)
        print(f"wrote {out}/results.jsonl, results.csv" + (", bands.csv, bands.json" if result.bands is not None
                                                          else "")
              + (", stage_bands.csv" if getattr(a, "experiment", None) and result.bands is not None else "")
              + ((", capacity.png, capacity.pdf" if a.kind == "capacity" else
                  ", experiment*.png" if getattr(a, "experiment", None) else ", bands*.png")
                 if result.bands is not None and not a.no_plots else ""))
    failed, unfinished = result.failed_rows, result.unfinished_rows
    if failed or unfinished:  # ran, but some run did not finish: results written, exit 3
        parts = []
        for rows, what in ((unfinished, "did not finish"), (failed, "failed")):
            if rows:
                first = rows[0]
                parts.append(f"{len(rows)} run(s) {what} (runs {_indices(rows)}; first: run {first['index']}: "
                             f"{first.get('error', '')})")
        return job.unfinished("; ".join(parts) + f"; status unfinished/failed in {out}/results.csv; "
                              "--retry-failed runs them again")
    return EXIT_OK


def _indices(rows, most: int = 10) -> str:
    shown = ", ".join(str(r["index"]) for r in rows[:most])
    return shown + (f", ... ({len(rows) - most} more)" if len(rows) > most else "")


PROGRAM = Program(module=__name__, build_parser=build_parser, run=run, native=("torch",))


def main(argv=None) -> int:
    return run_program(PROGRAM, argv)


if __name__ == "__main__":
    sys.exit(main())
