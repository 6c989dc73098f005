"""Command line: storage capacity of associative memories against their parameter count (SPEC §7-10).

    python -m analysis.capacity --model linear --d 4 6 8 --seeds 0 1 2 --out runs/cap
"""
from __future__ import annotations

import sys

from common.cli import EXIT_OK, ArgumentParser, Program, add_overwrite, program_name, run_program

MODELS = ("linear", "mlp", "construction", "transformer")  # sweep.SWEEP_MODELS + transformer (kept torch-free)
SCALINGS = ("linear", "square", "distinct")  # analysis.capacity.transformer.SCALINGS
BITS_PER_PARAM = 8.0  # default b of the information bound (SPEC §9)


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog=program_name("analysis.capacity"),
                       description="Storage capacity of associative memories (paper §3, SPEC §7-10): for each "
                                   "model size, the largest number of facts N stored at >= 99% accuracy at some "
                                   "step of full-batch Adam training (or by a construction), found by bisection "
                                   "over N per seed; then the log-log slope of capacity against parameters with "
                                   "its 95% interval. Writes results.json, capacity.csv, capacity.png and "
                                   "capacity.pdf into --out. The defaults finish in about a minute on 2 CPU "
                                   "cores; the paper used d up to 2^8, 2^15 steps and 5 seeds.")
    g = p.add_argument_group("model")
    g.add_argument("--model", default="linear", choices=MODELS,
                   help="linear: F(e) = W e (d^2 parameters); mlp: F(e) = V^T relu(W e + b), width m = alpha*d "
                        "(2md + m parameters); construction: no training, the memory of SPEC §8 (see "
                        "--construction-of); transformer: the one-layer transformer of SPEC §11 on the fact task, "
                        "capacity in facts S*R (4*H*d_h*d + 2*m*d parameters) (default linear)")
    g.add_argument("--construction-of", default="linear", choices=("linear", "mlp", "transformer"),
                   help="with --model construction: linear = correlation memory sum_x u_f(x) e_x^T, mlp = random "
                        "features + least-squares readout, transformer = heads that attend to their own subject "
                        "or relation tokens with the values (m = 0) or the MLP (m > 0) as the memory, shaped by "
                        "the transformer flags (default linear)")
    g.add_argument("--d", type=int, nargs="+", default=[4, 6, 8], metavar="D",
                   help="embedding dimensions, one model size each (default 4 6 8)")
    g.add_argument("--alpha", type=float, nargs="+", default=[1.0], metavar="A",
                   help="MLP width ratios, m = round(alpha*d) (mlp and --construction-of mlp only; default 1)")
    g.add_argument("--target", default="identity", choices=("identity", "fixed"),
                   help="target map: identity (M = N outputs, f(x) = x) or fixed (M outputs, f(x) = "
                        "floor(x*M/N)) (default identity)")
    g.add_argument("--M", type=int, default=None, help="number of outputs with --target fixed (the authors: 32)")
    g = p.add_argument_group("transformer (--model transformer, SPEC §11)")
    g.add_argument("--heads", type=int, default=2, metavar="H", help="attention heads H (default 2)")
    g.add_argument("--head-dim", type=int, default=None, metavar="DH",
                   help="head dimension d_h (default: from --attn-ratio, d_h = alpha*d/H)")
    g.add_argument("--attn-ratio", type=float, default=1.0, metavar="ALPHA",
                   help="the paper's alpha = H*d_h/d, used when --head-dim is not given; alpha*d/H must be an "
                        "integer (default 1)")
    g.add_argument("--mlp-width", type=int, default=None, metavar="M",
                   help="MLP width m, 0 = attention only (default: from --mlp-ratio)")
    g.add_argument("--mlp-ratio", type=float, default=0.0, metavar="BETA",
                   help="the paper's beta = m/d, m = round(beta*d), used when --mlp-width is not given (default 0)")
    g.add_argument("--scaling", default="linear", choices=SCALINGS,
                   help="task sizes searched: linear S = R (D fixed), square S = R^2 (D fixed), distinct "
                        "S = R = D (default linear, the cheapest on a CPU; the paper's main one)")
    g.add_argument("--D", type=int, default=4, help="answers per relation for linear/square scaling (default 4; "
                                                    "the paper 8)")
    g.add_argument("--T", type=int, default=8, help="sequence length (default 8 for a CPU; the paper 32); the "
                                                    "noise vocabulary is S + R as in the paper")
    g.add_argument("--batch", type=int, default=128, help="fresh sequences per Adam step (default 128; the "
                                                          "paper 1024)")
    g.add_argument("--eval-every", type=int, default=32,
                   help="steps between evaluations on every fact (default 32; the authors max_steps/128)")
    g.add_argument("--restarts", type=int, default=2,
                   help="initializations (and batch orders) tried per seed and learning rate; a size succeeds "
                        "when any does, so one bad initialization does not set the capacity (default 2; the "
                        "authors 1)")
    g.add_argument("--eval-size", type=int, default=1024,
                   help="evaluation sequences: every fact ceil(EVAL_SIZE/(S*R)) times, each in its own noise "
                        "context, accuracy over all of them (default 1024, the authors' test-set size; 1 = every "
                        "fact once)")
    g.add_argument("--tradeoff", action="store_true",
                   help="instead of the capacity search: accuracy over heads x MLP width at S = R = 32, D = 8, "
                        "d = 32, d_h = 8 (a CPU subgrid: H 1 2 4, m 8 32, T 8, 512 steps); writes tradeoff.csv "
                        "and tradeoff.png/pdf")
    g.add_argument("--full-grid", action="store_true",
                   help="with --tradeoff: the paper's grid (H 1..32, m 1..128, T 32, batch 1024, 2^14 steps, lr "
                        "1e-2); hours on a CPU")
    g = p.add_argument_group("training and search")
    g.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], metavar="SEED",
                   help="seeds of embeddings and initialization; each gets its own capacity (default 0 1 2)")
    g.add_argument("--lr", type=float, nargs="+", default=[3e-2], metavar="LR",
                   help="Adam learning rates; a size succeeds when any of them does (default 0.03; the paper's "
                        "transformers 0.001 0.003 0.01). Linear memories reach the same capacity with any lr in "
                        "0.1..10, lr 1 in about 10x fewer steps than 0.1 (docs/capacity.md): --lr 1 --max-steps 4096 "
                        "converges on a CPU; MLP memories: --lr 0.03 0.1 (0.3 and above is unstable at small sizes)")
    g.add_argument("--max-steps", type=int, default=None,
                   help="Adam steps per run, early stop at 99%% accuracy (default 2048 for memories, 1024 for the "
                        "transformer; the paper 32768 and 16384). Linear memories at lr 1 have converged by 4096; "
                        "MLP memories have not (16384 steps store about 3%% more facts at d=16, alpha=1)")
    g.add_argument("--rtol", type=float, default=0.05,
                   help="bisection stops when hi - lo <= max(1, rtol*lo), in [0, 1] (default 0.05; the authors 0.01)")
    g.add_argument("--max-doublings", type=int, default=3,
                   help="times the bracket's top may double while it still succeeds, 0 to 20 (default 3)")
    g.add_argument("--no-construction", action="store_true",
                   help="do not also search the construction of the same shapes (SPEC §8: the memories', or the transformer's heads-and-memory construction), drawn for comparison")
    g.add_argument("--dtype", default="float32", choices=("float32", "float64"),
                   help="training dtype (default float32: trained by Adam, only the argmax matters)")
    g.add_argument("--device", default="cpu",
                   help="torch device for training: cpu (default) or cuda[:i] when a GPU is present")
    g = p.add_argument_group("output")
    g.add_argument("--bits-per-param", type=float, default=BITS_PER_PARAM, metavar="B",
                   help="bits each parameter is assumed to hold, for the information-theoretic bound line "
                        "N*log2(M) = B*P drawn on the figure (SPEC §9): an upper bound on the facts any model "
                        "of P parameters at B bits each can store; finite and > 0 (default 8, the precision "
                        "to which trained networks are often quantized with little loss; the dtype's 32 bits "
                        "gives a bound far above)")
    g.add_argument("--out", default=None, metavar="DIR",
                   help="output folder, created as a whole when the run succeeds (default runs/capacity-<model> "
                        "plus every setting that differs from its default)")
    add_overwrite(g)
    g.add_argument("--quiet", action="store_true", help="no progress lines and no summary")
    return p


TRANSFORMER_ONLY = ("heads", "head_dim", "attn_ratio", "mlp_width", "mlp_ratio", "scaling", "D", "T", "batch",
                    "eval_every", "restarts", "eval_size", "tradeoff", "full_grid")


def settings_from_args(a):
    """CapacitySettings (memories) or TransformerSettings (--model transformer) of parsed arguments
    (ConfigError if invalid, or if a flag of the other kind of model is given)."""
    from common.errors import ConfigError

    from analysis.capacity.bound import check_bits_per_param

    check_bits_per_param(a.bits_per_param)
    defaults = build_parser().parse_args([])
    if a.construction_of == "transformer" and a.model != "construction":
        raise ConfigError(f"--construction-of transformer is read with --model construction, not --model {a.model}; "
                          f"--model transformer searches the construction beside the trained model already")
    built = a.model == "construction" and a.construction_of == "transformer"
    if a.model == "transformer" or built:
        from analysis.capacity.transformer import TransformerSettings

        if a.alpha != defaults.alpha:
            raise ConfigError("--alpha is the MLP memory's width ratio; for the transformer give --mlp-ratio (beta "
                              "= m/d) and --attn-ratio (alpha = H*d_h/d)")
        if built and a.tradeoff:
            raise ConfigError("--tradeoff trains a transformer per cell; use it with --model transformer")
        if a.full_grid and not a.tradeoff:
            raise ConfigError("--full-grid is a setting of --tradeoff; add --tradeoff")
        return TransformerSettings(ds=tuple(a.d) if a.d != defaults.d else (8, 12, 16), heads=a.heads,
                                   head_dim=a.head_dim, attn_ratio=a.attn_ratio, mlp_width=a.mlp_width,
                                   mlp_ratio=a.mlp_ratio, D=a.D, T=a.T, scaling=a.scaling, seeds=tuple(a.seeds),
                                   lrs=tuple(a.lr), restarts=a.restarts, batch=a.batch, eval_size=a.eval_size,
                                   max_steps=1024 if a.max_steps is None else a.max_steps,
                                   eval_every=a.eval_every, rtol=a.rtol, max_doublings=a.max_doublings,
                                   dtype=a.dtype, device=a.device, with_construction=built or not a.no_construction,
                                   with_training=not built)
    given = [n for n in TRANSFORMER_ONLY if getattr(a, n) != getattr(defaults, n)]
    if given:
        raise ConfigError(f"--{given[0].replace('_', '-')} is a transformer setting; add --model transformer (or "
                          f"--model construction --construction-of transformer)")
    from analysis.capacity.sweep import CapacitySettings

    return CapacitySettings(model=a.model, ds=tuple(a.d), alphas=tuple(a.alpha), construction_of=a.construction_of,
                            seeds=tuple(a.seeds), lrs=tuple(a.lr), target=a.target, M=a.M,
                            max_steps=2048 if a.max_steps is None else a.max_steps,
                            rtol=a.rtol, max_doublings=a.max_doublings, dtype=a.dtype, device=a.device,
                            with_construction=not a.no_construction)


def title(s) -> str:
    if s.__class__.__name__ == "TransformerSettings":
        what = "Capacity of one-layer transformers" if s.with_training else "Capacity of transformer constructions"
        extra = (f", Adam lr {list(s.lrs)} x {s.restarts} inits, batch {s.batch}, {s.max_steps} steps"
                 if s.with_training else " (no training, SPEC §8)")
        return (f"{what}: H {s.heads}, shapes (d, H, d_h, m) {s.shapes()}, {s.scaling} scaling, D {s.D}, T {s.T}, "
                f"{len(s.seeds)} seeds{extra}")
    what = f"construction of {s.construction_of}" if s.model == "construction" else s.model
    extra = "" if s.model == "construction" else f", Adam lr {list(s.lrs)}, {s.max_steps} steps"
    return (f"Capacity of {what} memories: target {s.target}{f' M={s.M}' if s.M else ''}, d {list(s.ds)}"
            + (f", alpha {list(s.alphas)}" if s.kind == "mlp" else "") + f", {len(s.seeds)} seeds{extra}")


def outputs_of(s):
    """M, the number of possible answers per fact, as a number or a function of the facts N (SPEC §9):
    identity target M = N, fixed target M; transformer D per relation, or sqrt(N) with distinct scaling."""
    if s.__class__.__name__ == "TransformerSettings":
        return (lambda N: N ** 0.5) if s.scaling == "distinct" else s.D
    return s.M if s.target == "fixed" else (lambda N: N)


def information_bound(series, s, bits_per_param: float):
    """The bound line over the series' parameter range (SPEC §9): dict of plain lists and its label, or None
    when no fact carries information (M = 1) or no parameter counts."""
    import numpy as np

    from analysis.capacity.bound import bound_line

    P = [p for x in series for p in x["params"]]
    if not P:
        return None
    params, facts = bound_line(np.geomspace(min(P), max(P), 50), bits_per_param, outputs_of(s))
    if not np.isfinite(facts).all():
        return None
    return dict(params=params.tolist(), capacity=facts.tolist(), bits_per_param=bits_per_param,
                label=f"information bound: N log2 M = b·P (b = {bits_per_param:g} bits)")


def write(out: str, result, job, bits_per_param: float = BITS_PER_PARAM) -> None:
    import pandas as pd

    from common.io import save_figure, write_json, write_text
    from figures.capacity import capacity_figure

    s = result.settings
    series = series_of(result)
    bound = information_bound(series, s, bits_per_param)
    fig = capacity_figure(series, title(s), bound=bound)
    with job.folder(out) as tmp:
        write_json(f"{tmp}/results.json", dict(result.to_dict(), information_bound=bound or dict(
            bits_per_param=bits_per_param, params=[], capacity=[], label=None)))  # M = 1: no bound
        write_text(f"{tmp}/capacity.csv", pd.DataFrame(result.rows()).to_csv(index=False))
        save_figure(fig, f"{tmp}/capacity.png", dpi=150)
        save_figure(fig, f"{tmp}/capacity.pdf")


def series_of(result, label: str | None = None) -> list:
    """The figure's series (figures.capacity.capacity_figure) of a sweep result: its trained (or, with model
    construction, constructed) models named ``label`` (default: the model, ``construction (<kind>)`` for a
    memory construction), then its construction when searched, named ``<label>: construction`` (a memory's
    default: ``construction (<kind>)``)."""
    s = result.settings
    if s.__class__.__name__ == "TransformerSettings":
        name = label or "transformer"
        parts = ((name, result.results, result.facts, result.fit),
                 (f"{name}: construction", result.construction, result.construction_facts, result.construction_fit))
    else:
        built = f"construction ({s.kind})"
        parts = ((label or (built if s.model == "construction" else s.model), result.results,
                  [r.capacity for r in result.results], result.fit),
                 (f"{label}: construction" if label else built, result.construction,
                  [r.capacity for r in result.construction], result.construction_fit))
    return [dict(label=name, params=[r.params for r in res], capacity=[list(f) for f in facts],
                 fit=None if fit is None else fit.to_dict()) for name, res, facts, fit in parts if res]


def run(args, job) -> int:
    """Check the settings and the memory they need, claim --out, search every size, write and print."""
    from common.errors import check_device

    settings = settings_from_args(args)
    check_device("device", args.device)
    if args.tradeoff:
        return run_tradeoff(args, settings, job)
    settings.check_memory()
    out = job.claim(args.out or job.default_out(f"runs/capacity-{args.model}", skip=("model",)))  # before computing
    from common.cli import describe_device

    say = (lambda line: None) if args.quiet else (lambda line: print(line, flush=True))
    say(f"device: {describe_device(args.device)}")
    if settings.__class__.__name__ == "TransformerSettings":
        from analysis.capacity.transformer import run_transformer_sweep

        result = run_transformer_sweep(settings, progress=say)
    else:
        from analysis.capacity.sweep import run_sweep

        result = run_sweep(settings, progress=say)
    write(out, result, job, args.bits_per_param)
    for name, fit in (("fit", result.fit), ("construction fit", getattr(result, "construction_fit", None))):
        if fit is not None:
            say(f"{name}: capacity ~ P^{fit.slope:.3f}, 95% CI [{fit.ci[0]:.3f}, {fit.ci[1]:.3f}] over {fit.n} "
                f"points (paper: slope ~ 1 up to log factors)")
    say(f"wrote {out}/results.json, capacity.csv, capacity.png, capacity.pdf ({result.seconds:.1f} s)")
    return EXIT_OK


TRADEOFF_CPU = dict(Hs=(1, 2, 4), ms=(8, 32), T=8, batch=128, max_steps=512, lrs=(3e-2,))
TRADEOFF_PAPER = dict(Hs=(1, 2, 4, 6, 8, 10, 12, 14, 16, 20, 24, 28, 32),
                      ms=(1, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128), T=32, batch=1024, max_steps=2**14,
                      lrs=(1e-2,))  # eshnich/factual-recall-iclr param_scaling_sweep.py


def run_tradeoff(args, settings, job) -> int:
    """Accuracy over H x m at S = R = 32, D = 8, d = 32, d_h = 8 (SPEC §11): tradeoff.csv, tradeoff.png/pdf."""
    from common.errors import ConfigError

    grid = dict(TRADEOFF_PAPER if args.full_grid else TRADEOFF_CPU)
    if args.lr != build_parser().parse_args([]).lr:
        grid["lrs"] = tuple(settings.lrs)
    if args.max_steps is not None:
        grid["max_steps"] = args.max_steps
    # one seed: the first of --seeds
    if grid["max_steps"] < 1:
        raise ConfigError("max_steps = 0 with --tradeoff; give at least 1 step")
    out = job.claim(args.out or job.default_out("runs/capacity-tradeoff", skip=("model", "tradeoff")))
    import pandas as pd

    from analysis.capacity.transformer import tradeoff_map
    from common.io import save_figure, write_text
    from dynamics.capacity_training import TransformerTrainConfig
    from figures.capacity import tradeoff_figure

    say = (lambda line: None) if args.quiet else (lambda line: print(line, flush=True))
    train = TransformerTrainConfig(batch=grid["batch"], max_steps=grid["max_steps"], eval_every=settings.eval_every,
                                   eval_size=settings.eval_size, dtype=settings.dtype, device=settings.device,
                                   record=False)
    acc, params = tradeoff_map(grid["Hs"], grid["ms"], T=grid["T"], seed=settings.seeds[0], lrs=grid["lrs"],
                               train=train, progress=say)
    rows = [dict(H=H, m=m, params=int(params[i, j]), accuracy=float(acc[i, j]))
            for i, H in enumerate(grid["Hs"]) for j, m in enumerate(grid["ms"])]
    fig = tradeoff_figure(acc, list(grid["Hs"]), list(grid["ms"]), params,
                          f"Accuracy over heads H x MLP width m: S = R = 32, D = 8, d = 32, d_h = 8, T = {grid['T']}, "
                          f"{grid['max_steps']} steps, lr {list(grid['lrs'])}, seed {settings.seeds[0]}")
    with job.folder(out) as tmp:
        write_text(f"{tmp}/tradeoff.csv", pd.DataFrame(rows).to_csv(index=False))
        save_figure(fig, f"{tmp}/tradeoff.png", dpi=150)
        save_figure(fig, f"{tmp}/tradeoff.pdf")
    say(f"wrote {out}/tradeoff.csv, tradeoff.png, tradeoff.pdf")
    return EXIT_OK


PROGRAM = Program(module=__name__, build_parser=build_parser, run=run, native=("torch",))


def main(argv=None) -> int:
    return run_program(PROGRAM, argv)


if __name__ == "__main__":
    sys.exit(main())
