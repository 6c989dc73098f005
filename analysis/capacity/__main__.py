"""Command line: storage capacity of associative memories against their parameter count (SPEC §7-10).

    python -m analysis.capacity --model linear --d 4 6 8 --seeds 0 1 2 --out runs/cap
"""
from __future__ import annotations

import sys

from common.cli import EXIT_OK, ArgumentParser, Program, add_overwrite, program_name, run_program

MODELS = ("linear", "mlp", "construction")  # analysis.capacity.sweep.SWEEP_MODELS (kept torch-free here)


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
                        "--construction-of) (default linear)")
    g.add_argument("--construction-of", default="linear", choices=("linear", "mlp"),
                   help="with --model construction: linear = correlation memory sum_x u_f(x) e_x^T, mlp = random "
                        "features + least-squares readout (default linear)")
    g.add_argument("--d", type=int, nargs="+", default=[4, 6, 8], metavar="D",
                   help="embedding dimensions, one model size each (default 4 6 8)")
    g.add_argument("--alpha", type=float, nargs="+", default=[1.0], metavar="A",
                   help="MLP width ratios, m = round(alpha*d) (mlp and --construction-of mlp only; default 1)")
    g.add_argument("--target", default="identity", choices=("identity", "fixed"),
                   help="target map: identity (M = N outputs, f(x) = x) or fixed (M outputs, f(x) = "
                        "floor(x*M/N)) (default identity)")
    g.add_argument("--M", type=int, default=None, help="number of outputs with --target fixed (the authors: 32)")
    g = p.add_argument_group("training and search")
    g.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], metavar="SEED",
                   help="seeds of embeddings and initialization; each gets its own capacity (default 0 1 2)")
    g.add_argument("--lr", type=float, nargs="+", default=[3e-2], metavar="LR",
                   help="Adam learning rates; a size succeeds when any of them does (default 0.03)")
    g.add_argument("--max-steps", type=int, default=2048,
                   help="Adam steps per run, early stop at 99%% accuracy (default 2048; the paper 32768)")
    g.add_argument("--rtol", type=float, default=0.05,
                   help="bisection stops when hi - lo <= max(1, rtol*lo), in [0, 1] (default 0.05; the authors 0.01)")
    g.add_argument("--max-doublings", type=int, default=3,
                   help="times the bracket's top may double while it still succeeds, 0 to 20 (default 3)")
    g.add_argument("--no-construction", action="store_true",
                   help="do not also search the construction of the same shapes (drawn for comparison)")
    g.add_argument("--dtype", default="float32", choices=("float32", "float64"),
                   help="training dtype (default float32: trained by Adam, only the argmax matters)")
    g.add_argument("--device", default="cpu",
                   help="torch device for training: cpu (default) or cuda[:i] when a GPU is present")
    g = p.add_argument_group("output")
    g.add_argument("--out", default=None, metavar="DIR",
                   help="output folder, created as a whole when the run succeeds (default runs/capacity-<model> "
                        "plus every setting that differs from its default)")
    add_overwrite(g)
    g.add_argument("--quiet", action="store_true", help="no progress lines and no summary")
    return p


def settings_from_args(a):
    """CapacitySettings of parsed arguments (ConfigError if invalid)."""
    from analysis.capacity.sweep import CapacitySettings

    return CapacitySettings(model=a.model, ds=tuple(a.d), alphas=tuple(a.alpha), construction_of=a.construction_of,
                            seeds=tuple(a.seeds), lrs=tuple(a.lr), target=a.target, M=a.M, max_steps=a.max_steps,
                            rtol=a.rtol, max_doublings=a.max_doublings, dtype=a.dtype, device=a.device,
                            with_construction=not a.no_construction)


def title(s) -> str:
    what = f"construction of {s.construction_of}" if s.model == "construction" else s.model
    extra = "" if s.model == "construction" else f", Adam lr {list(s.lrs)}, {s.max_steps} steps"
    return (f"Capacity of {what} memories: target {s.target}{f' M={s.M}' if s.M else ''}, d {list(s.ds)}"
            + (f", alpha {list(s.alphas)}" if s.kind == "mlp" else "") + f", {len(s.seeds)} seeds{extra}")


def write(out: str, result, job) -> None:
    import pandas as pd

    from common.io import save_figure, write_json, write_text
    from figures.capacity import capacity_figure

    s = result.settings
    series = []
    for label, res, fit in ((s.model if s.model != "construction" else "construction", result.results, result.fit),
                            ("construction", result.construction, result.construction_fit)):
        if res:
            series.append(dict(label=f"{label} ({s.kind})" if label == "construction" else label,
                               params=[r.params for r in res], capacity=[list(r.capacity) for r in res],
                               fit=None if fit is None else fit.to_dict()))
    fig = capacity_figure(series, title(s))
    with job.folder(out) as tmp:
        write_json(f"{tmp}/results.json", result.to_dict())
        write_text(f"{tmp}/capacity.csv", pd.DataFrame(result.rows()).to_csv(index=False))
        save_figure(fig, f"{tmp}/capacity.png", dpi=150)
        save_figure(fig, f"{tmp}/capacity.pdf")


def run(args, job) -> int:
    """Check the settings and the memory they need, claim --out, search every size, write and print."""
    from common.errors import check_device

    settings = settings_from_args(args)
    check_device("device", args.device)
    settings.check_memory()
    out = job.claim(args.out or job.default_out(f"runs/capacity-{args.model}", skip=("model",)))  # before computing
    from analysis.capacity.sweep import run_sweep
    from common.cli import describe_device

    say = (lambda line: None) if args.quiet else (lambda line: print(line, flush=True))
    say(f"device: {describe_device(args.device)}")
    result = run_sweep(settings, progress=say)
    write(out, result, job)
    for name, fit in (("fit", result.fit), ("construction fit", result.construction_fit)):
        if fit is not None:
            say(f"{name}: capacity ~ P^{fit.slope:.3f}, 95% CI [{fit.ci[0]:.3f}, {fit.ci[1]:.3f}] over {fit.n} "
                f"points (paper: slope ~ 1 up to log factors)")
    say(f"wrote {out}/results.json, capacity.csv, capacity.png, capacity.pdf ({result.seconds:.1f} s)")
    return EXIT_OK


PROGRAM = Program(module=__name__, build_parser=build_parser, run=run, native=("torch",))


def main(argv=None) -> int:
    return run_program(PROGRAM, argv)


if __name__ == "__main__":
    sys.exit(main())
