"""Train model 1 (linear attention), model 2 (softmax head) or the one-layer transformer on the factual-recall task.

    python -m models.train --model linear --optimizer sgd --init uniform --init-scale 1e-5 \\
        --lr 0.1 --steps 8192 --compare-flow --out runs/linear_sgd
    python -m models.train --model softmax --optimizer sgd --lr 4 --steps 14000   # runs/train-softmax-S16-R4-D8-...
    python -m models.train --model transformer      # Adam, lr 0.01, 2048 steps, d 64, H 1, d_h 16, m 0

Writes into --out (default runs/train-{model}-S{S}-R{R}-D{D} plus every result-changing setting that differs
from its default; a new folder put in place as a whole when the run ends; nothing is left behind on error or
interrupt; an existing non-empty --out is refused unless --overwrite):
  results.json  config, device, throughput (sequences/s, steps/s), phases (time in steps; model 1 also in
                flow time k*lr), for model 1 with --compare-flow the flow_gap, for model 2 the confirmation
                report (one entry per claim with the measured numbers and confirmed true/false);
  history.csv   one row per evaluation: step, loss, relation_loss, subject_loss, accuracy,
                hallucination_gap, train_loss (mean batch loss since the last evaluation), [flow_time,
                flow_loss, flow_relation_loss, flow_subject_loss];
  loss.png/pdf  the curves with shaded stages (and the flow overlay with --compare-flow).
"""
from __future__ import annotations

import os

from common.cli import (EXIT_OK, ArgumentParser, Program, add_overwrite, default_out, describe_device, program_name,
                        run_program)
from common.errors import ConfigError, check_int
# torch-free: the parser is built and the arguments parsed (--help, --version, errors) before torch loads
from dynamics.choices import INITS, MODELS, OPTIMIZERS

from models.task import FACT_KINDS, MAX_SEED, TaskConfig

D_DEFAULT = 256  # model 2's embedding dimension (dynamics.TrainConfig's too); at 64 it stalls above 0.3 nats
# the transformer's defaults (dynamics.TrainConfig's d, H, d_h, m too): on the default task (S 16, R 4, D 8,
# T 32, N 20) Adam at lr 0.01 reaches accuracy 1 on every held-out sequence at step 832 and the 2048 steps take
# 16-27 s on one thread of a shared 2-core CPU; at d 256 the same run is still on the log D plateau (loss 2.09) at
# step 2048 (bench/transformer_default.py)
TRANSFORMER_DEFAULTS = dict(d=64, H=1, d_h=16, m=0, optimizer="adam", lr=0.01, steps=2048)
OTHER_DEFAULTS = dict(d=D_DEFAULT, optimizer="sgd", lr=0.1, steps=8192)  # models 1 and 2
TRANSFORMER_FLAGS = ("H", "d_h", "m")


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog=program_name("models.train"), description=__doc__.split("\n\n")[0])
    t = p.add_argument_group("task (SPEC §1)")
    t.add_argument("--S", type=int, default=16, help="number of subjects (default 16)")
    t.add_argument("--R", type=int, default=4, help="number of relations (default 4)")
    t.add_argument("--D", type=int, default=8, help="answers per relation (task size, both models); |A| = R*D "
                   "(default 8). Not the embedding dimension: that is --d")
    t.add_argument("--T", type=int, default=32, help="sequence length incl. the final EOS, >= 3 (default 32)")
    t.add_argument("--N", type=int, default=20, help="number of noise tokens (default 20)")
    t.add_argument("--facts", default="structured", choices=FACT_KINDS[:3],
                   help="fact table (default structured, the paper's table; balanced needs D | S)")
    t.add_argument("--task-seed", type=int, default=0, help="seed of balanced/random fact tables (default 0)")
    m = p.add_argument_group("model and training")
    m.add_argument("--model", default="linear", choices=MODELS,
                   help="linear: model 1, linear attention, one-hot embeddings (SPEC §2); softmax: model 2, one "
                        "softmax head, random embeddings (SPEC §4); transformer: the one-layer transformer of SPEC "
                        "§11 (H heads, optional MLP, random embeddings; gradients by autograd) (default linear)")
    xd = TRANSFORMER_DEFAULTS
    m.add_argument("--d", type=int, default=None, metavar="DIM",
                   help=f"embedding dimension of the softmax model (model 2) and of the transformer; not the "
                        f"task's --D (default {D_DEFAULT} for the softmax model, the paper figure's, at 64 its loss "
                        f"stalls above 0.3 nats; {xd['d']} for the transformer, at 256 its default run is still on "
                        f"the log D plateau at step 2048)")
    m.add_argument("--H", type=int, default=None,
                   help=f"transformer only: number of attention heads, >= 1 (default {xd['H']})")
    m.add_argument("--d-h", type=int, default=None, metavar="DH",
                   help=f"transformer only: dimension of each head's query, key and value, >= 1 (default "
                        f"{xd['d_h']}; with --H 1 and --d {xd['d']} it learns every fact of the default task in "
                        f"about 800 Adam steps)")
    m.add_argument("--m", type=int, default=None, metavar="WIDTH",
                   help=f"transformer only: width of the ReLU MLP after attention, >= 0; 0 = attention only "
                        f"(default {xd['m']})")
    m.add_argument("--optimizer", default=None, choices=OPTIMIZERS,
                   help="gd: linear only, full-batch GD on the exact population loss, float64; sgd: online, a "
                        "fresh batch each step; adam: softmax and transformer only (default sgd; adam for the "
                        "transformer)")
    m.add_argument("--lr", type=float, default=None,
                   help=f"step size (default {OTHER_DEFAULTS['lr']}; {xd['lr']} for the transformer)")
    m.add_argument("--batch", type=int, default=1024, help="sequences per SGD/Adam step (default 1024)")
    m.add_argument("--steps", type=int, default=None,
                   help=f"number of optimizer steps (default {OTHER_DEFAULTS['steps']}; {xd['steps']} for the "
                        "transformer, which learns every fact of the default task in about 800: 2048 take 15-30 s "
                        "on one thread of a shared 2-core CPU)")
    m.add_argument("--init", default=None, choices=INITS[:2],
                   help="linear model's init: uniform (every entry = scale, the paper's) or balanced (K = scale, "
                        "W = scale/sqrt|A|) (default uniform; not for the softmax model, whose init is Gaussian, "
                        "see --init-scale; not for the transformer)")
    m.add_argument("--init-scale", type=float, default=None, help="linear: the init scale (default 1e-5); "
                   "softmax: W_KQ, W_OV entries ~ N(0, scale^2/d) (default 1e-3); not for the transformer, whose "
                   "init has the fixed scales of SPEC §11 (W_Q, W_K, W_V std 1/sqrt(d_h), W_O and W_1 "
                   "1/sqrt(d), W_2 1/sqrt(m))")
    m.add_argument("--seed", type=int, default=0, help="seed of sampling, embeddings and init (default 0)")
    m.add_argument("--eval-every", type=int, default=64, help="evaluate every this many steps (default 64)")
    m.add_argument("--eval-geometric", type=int, default=0, metavar="G",
                   help="also evaluate G times per doubling of the step count (steps 1, 2, 3, ..., rounded from "
                        "2^(i/G)), so a log-step axis shows the first steps (default 0: every --eval-every only)")
    m.add_argument("--eval-size", type=int, default=8192, help="held-out sequences, >= 8192 (default 8192)")
    m.add_argument("--eps-conv", type=float, default=1e-2, help="loss that counts as converged, t3 "
                   "(default 0.01)")
    m.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU) | cpu | cuda[:i] "
                   "(default auto; GD always runs on the CPU in float64 unless a device is named)")
    m.add_argument("--threads", type=int, default=1, help="CPU threads while training, 0 = torch default "
                   "(default 1: fastest for these small matrices)")
    m.add_argument("--no-cuda-graph", action="store_true", help="do not capture the step in a CUDA graph")
    m.add_argument("--experiment", default=None, metavar="FILE",
                   help="train through the stages of an experiment file (the format of frd-experiment --help): "
                        "its [task] replaces the task flags, each stage samples (SGD/Adam) or weights (GD) its own "
                        "distribution and stops after until_time / lr steps (linear model: step k is flow time "
                        "k*lr; softmax model: until_time counts steps) or at the first evaluation with its "
                        "loss on `on` <= until_loss; --steps is the most any one stage may take (a stage it "
                        "ends is reported as cut, the run as unfinished, exit 3, after the later stages ran). "
                        "Writes history.csv (a stage column, <set>_<metric> columns), results.json (the stages, "
                        "their phase times t1, t2, t3 per evaluation set) and experiment.png; with --seeds N, "
                        "one staged run per seed and their bands (see --seeds)")
    o = p.add_argument_group("output")
    o.add_argument("--compare-flow", action="store_true", help="linear model: integrate the exact flow from "
                   "the same init, report flow_gap = max_k |L_train(k) - L_flow(k*lr)| over the evaluated steps k "
                   "(a denser --eval-every can only raise it) and overlay it")
    o.add_argument("--no-plots", action="store_true", help="skip loss.png / loss.pdf")
    o.add_argument("--quiet", action="store_true", help="no progress bar")
    o.add_argument("--seeds", type=int, default=1, metavar="N",
                   help="train N seeds (--seed, --seed + 1, ...) through the sweep runner (analysis.grid) and write "
                        "results.jsonl / results.csv (one row per seed), bands.csv and bands.png (mean, std, min, max "
                        "over seeds; model 1 around the exact flow, model 2 with its confirmation verdict per seed "
                        "and overall) into --out, which is resumable: the same command again continues (default 1: "
                        "one run, the files above). With --experiment FILE: one staged run per seed; results.csv "
                        "has per stage its steps, reason, cut, end_loss and per set t1, t2, t3; stage_bands.csv "
                        "the mean, std, min, max over seeds of each per stage and set, bands.csv the loss curves' "
                        "bands per stage, experiment.png the mean and min-max per set; prints per stage the mean "
                        "± std of the phase times and the seeds the step budget cut (then exit 3, naming them); "
                        "not with --compare-flow")
    o.add_argument("--workers", type=int, default=None, metavar="W",
                   help="with --seeds: local worker processes (default one per CPU core; 1: one seed after another "
                        "in this process)")
    o.add_argument("--out", default=None, metavar="DIR",
                   help="output folder, created as a whole when the run ends (default "
                        "runs/train-{model}-S{S}-R{R}-D{D} plus every result-changing setting that differs from "
                        "its default, e.g. runs/train-softmax-S16-R4-D8-adam-lr1e-03); an existing non-empty "
                        "folder is refused unless --overwrite")
    add_overwrite(o)
    return p


def config_from_args(a):
    from dynamics import TrainConfig

    check_int("task_seed", a.task_seed, 0, MAX_SEED)  # named as the flag (TaskConfig calls it seed)
    task = TaskConfig(S=a.S, R=a.R, D=a.D, T=a.T, N=a.N, facts=a.facts, seed=a.task_seed)
    xf = a.model == "transformer"
    defaults = TRANSFORMER_DEFAULTS if xf else OTHER_DEFAULTS
    if a.init is not None and a.model != "linear":
        raise ConfigError(f"--init {a.init} applies to the linear model only; " + (
            "the transformer's init has the fixed scales of SPEC §11" if xf else
            "the softmax model's W_KQ, W_OV start Gaussian with std init_scale/sqrt(d) (set it with --init-scale)"))
    if a.init_scale is not None and xf:
        raise ConfigError(f"--init-scale {a.init_scale:g} applies to the linear and softmax models only; the "
                          "transformer's init has the fixed scales of SPEC §11")
    for name in TRANSFORMER_FLAGS:
        if getattr(a, name) is not None and not xf:
            raise ConfigError(f"--{name.replace('_', '-')} {getattr(a, name)} applies to --model transformer only")
    opt = a.optimizer or defaults["optimizer"]
    scale = a.init_scale if a.init_scale is not None else (1e-5 if a.model == "linear" else 1e-3)
    if a.compare_flow and a.model != "linear":
        raise ConfigError("--compare-flow needs --model linear (the exact flow is model 1's)")
    if a.compare_flow:  # the flow from the same init: its range of scales, checked before training
        from models.linear import FLOW_ALPHA

        FLOW_ALPHA.check(scale, "init_scale", why=f"--compare-flow: {FLOW_ALPHA.why}")
    shape = {k: (getattr(a, k) if getattr(a, k) is not None else TRANSFORMER_DEFAULTS[k]) for k in TRANSFORMER_FLAGS}
    return TrainConfig(task=task, model=a.model, optimizer=opt, lr=a.lr if a.lr is not None else defaults["lr"],
                       batch=a.batch, steps=a.steps if a.steps is not None else defaults["steps"],
                       init=a.init or "uniform", init_scale=scale, d=a.d if a.d is not None else defaults["d"],
                       **shape, seed=a.seed, eval_every=a.eval_every,
                       eval_geometric=a.eval_geometric,
                       eval_size=a.eval_size, eps_conv=a.eps_conv, device=a.device,
                       cuda_graph=not a.no_cuda_graph, threads=a.threads)


# labels of the settings in the default output folder's name ("" = the value alone, as in -adam)
OUT_LABELS = dict(facts="", task_seed="taskseed", optimizer="", init="", init_scale="scale", d_h="dh",
                  eval_every="every", eval_geometric="geo", eval_size="evalsize", eps_conv="eps", device="",
                  compare_flow="flow")


TASK_FLAGS = ("S", "R", "D", "T", "N", "facts", "task_seed")  # replaced by an experiment file's [task]


def default_out_dir(args, parser=None) -> str:
    """runs/train-{model}-S{S}-R{R}-D{D} plus ``-<setting>`` for every result-changing option not at its
    default (threads and CUDA graphs change the speed, not the result, and are left out). With --experiment FILE:
    runs/train-{model}-{FILE's stem} plus the settings, without the task flags (the file's [task] replaces
    them) or the file's path; a name over 60 characters ends in a hash of its settings (common.cli.default_out).
    A setting given at its model's default (--d, --lr, --steps, --H, --d-h, --m, whose defaults depend on the
    model) is left out, as if not given."""
    import argparse

    defaults = {**OTHER_DEFAULTS, **TRANSFORMER_DEFAULTS} if args.model == "transformer" else OTHER_DEFAULTS
    args = argparse.Namespace(**{k: (None if k in defaults and k != "optimizer" and v == defaults[k] else v)
                                 for k, v in vars(args).items()})
    skip = ("model", "threads", "no_cuda_graph", "workers")
    if getattr(args, "experiment", None):
        stem = os.path.splitext(os.path.basename(args.experiment))[0]
        return default_out(f"runs/train-{args.model}-{stem}", parser or build_parser(), args,
                           skip=skip + TASK_FLAGS + ("experiment",), labels=OUT_LABELS, first=("optimizer",))
    return default_out(f"runs/train-{args.model}-S{args.S}-R{args.R}-D{args.D}", parser or build_parser(), args,
                       skip=skip + ("S", "R", "D"), labels=OUT_LABELS, first=("optimizer",))


def run(a, job) -> int:
    """One training run (analysis.results.training), --seeds N through the sweep runner, or --experiment."""
    # heavy imports (torch) only after parsing: --help, --version and bad flags answer at once
    from analysis.results.training import analyze_training
    from dynamics import resolve_device

    if a.experiment is not None:
        if a.seeds != 1:
            return run_experiment_seeds(a, job)
        return run_experiment_file(a, job)
    config = config_from_args(a)
    if a.seeds != 1:
        return run_seeds(a, job, config)
    config.check_memory(compare_flow=a.compare_flow)  # estimated from the configuration, before allocating
    a.out = job.claim(a.out or default_out_dir(a, job.parser))  # before any computation
    dev = resolve_device(config.device) if config.optimizer != "gd" or config.device != "auto" else None
    # on stdout: stderr is kept for the one line that says why a run stopped or was refused
    print(f"device: {describe_device(dev) if dev is not None else 'cpu (exact population GD in float64)'}")
    result = analyze_training(config, compare_flow=a.compare_flow, progress=not a.quiet)
    result.save(a.out, plots=not a.no_plots, overwrite=a.overwrite)
    summary, pairing = result.summary, result.pairing
    f = summary["final"]
    tp = summary["throughput"]
    line = (f"final loss {f['loss']:.4f} (relation {f['relation_loss']:.4f}, subject {f['subject_loss']:.4f}, "
            f"accuracy {f['accuracy']:.3f}); " if f else "no finite evaluation; ") + \
        f"{tp['steps_per_second']:.0f} steps/s"
    if tp["sequences_per_second"]:
        line += f", {tp['sequences_per_second']:.3g} sequences/s"
    if pairing is not None:
        line += f"; flow_gap {pairing['flow_gap']:.4f} at step {pairing['at_step']}"
    if "confirmation" in summary:
        cf = summary["confirmation"]
        line += "; confirmed: " + ", ".join(f"{k}={cf[k]['confirmed']}" for k in
                                            ("first_plateau", "second_plateau", "hallucination_gap",
                                             "convergence"))
    print(line)
    print(f"wrote {a.out}")
    if summary.get("status") == "diverged":  # ran but did not finish: results written, exit 3
        k = summary["diverged_at"]
        if k == 0:
            why = (f"the loss is not finite at the start (step 0): the initial scale {config.init_scale:g} "
                   f"overflows; use a smaller --init-scale; results.json (status diverged) is in {a.out}")
        else:
            why = (f"the loss became non-finite or grew above 100 x its start at step {k} of {config.steps} "
                   f"(lr {config.lr:g}); try a smaller --lr; the history up to there is in {a.out}")
        return job.unfinished(f"training diverged: {why}")
    return EXIT_OK


def run_seeds(a, job, config) -> int:
    """--seeds N: the configuration with seeds --seed .. --seed + N - 1 through analysis.sweeps.runner (resumable)."""
    from analysis.sweeps.results_log import interrupted_note
    from analysis.sweeps.runner import run_grid
    from analysis.sweeps.spec import SweepSpec, config_fields
    from common.errors import check_int

    n = check_int("seeds", a.seeds, 1, 100_000)
    if a.workers is not None:
        check_int("workers", a.workers, 1, 4096)
    config.check_memory(compare_flow=a.compare_flow)
    out = a.out or default_out_dir(a, job.parser)  # resumable: run_grid checks and fills it
    base = config_fields("train", config, compare_flow=a.compare_flow)
    base.pop("seed")
    spec = SweepSpec(kind="train", base=base, grid=tuple({"seed": config.seed + k} for k in range(n)), out=out)
    job.interrupted = interrupted_note(out)  # a signal: say what stays in out, not "nothing was written"
    res = run_grid(spec, workers=a.workers, progress=None if not a.quiet else False, overwrite=a.overwrite,
                   plots=not a.no_plots)
    job.interrupted = None
    print(f"{n} seeds: {res.summary_line()}")
    for g in (res.bands.groups if res.bands is not None else []):
        if g.get("mean_flow_gap") is not None:
            print(f"max |mean L - L_flow| = {g['mean_flow_gap']:.4f}; the flow lies inside the seeds' min-max at "
                  f"{100 * g['inside_minmax']:.0f} % of evaluations")
        if g.get("verdicts") is not None:
            print("confirmed: " + ", ".join(f"seed {v['seed']} {v['confirmed']}" for v in g["verdicts"])
                  + f"; overall {g['overall']} ({g['n_confirmed']}/{len(g['verdicts'])})")
    print(f"wrote {out}")
    if res.failed_rows or any(r.get("run_status") == "diverged" for r in res.rows):
        return job.unfinished(f"{len(res.failed_rows)} seed(s) failed and "
                              f"{sum(r.get('run_status') == 'diverged' for r in res.rows)} diverged "
                              f"(see {out}/results.csv)")
    return EXIT_OK


def run_experiment_seeds(a, job) -> int:
    """--experiment FILE --seeds N: N staged runs (seeds --seed .. --seed + N - 1) through analysis.sweeps.runner
    (kind train with the experiment file; resumable), their stage-aware bands (analysis.sweeps.staged_runs)."""
    import dataclasses

    from analysis.sweeps.results_log import interrupted_note
    from analysis.sweeps.runner import run_grid
    from analysis.sweeps.spec import SweepSpec, build_config, config_fields, load_experiment_doc, plan
    from dynamics import load_experiment

    n = check_int("seeds", a.seeds, 1, 100_000)
    if a.workers is not None:
        check_int("workers", a.workers, 1, 4096)
    if a.compare_flow:
        raise ConfigError("--compare-flow with --experiment and --seeds: the exact flow is paired with one staged "
                          "run only; drop --seeds or --compare-flow")
    config = config_from_args(a)
    task_fields = {f.name for f in dataclasses.fields(TaskConfig)} - {"seed"} | {"task_seed"}
    base = {k: v for k, v in config_fields("train", config).items()  # the file's [task] is the task: no task field
            if k not in task_fields and k not in ("seed", "compare_flow")}
    out = a.out or default_out_dir(a, job.parser)  # resumable: run_grid checks and fills it
    spec = SweepSpec(kind="train", base=base, grid=tuple({"seed": config.seed + k} for k in range(n)),
                     out=out, experiment_file=a.experiment)
    load_experiment(a.experiment)  # the file checked as for one seed (size, encoding, keys) before anything else
    experiment = load_experiment_doc(a.experiment)
    runs = plan(spec, experiment)  # every seed's configuration checked before anything is written
    build_config("train", runs[0].fields, experiment).config.check_memory()
    job.interrupted = interrupted_note(out)  # a signal: say what stays in out, not "nothing was written"
    res = run_grid(spec, workers=a.workers, progress=None if not a.quiet else False, overwrite=a.overwrite,
                   plots=not a.no_plots)
    job.interrupted = None
    print(f"{n} seeds: {res.summary_line()}")
    if res.bands is not None:
        for line in res.bands.lines():
            print(line)
    print(f"wrote {spec.out}")
    cut = [(r.get("params", {}).get("seed"), r.get("cut_stages")) for r in res.rows if r.get("run_status") == "cut"]
    diverged = [r.get("params", {}).get("seed") for r in res.rows if r.get("run_status") == "diverged"]
    failed = [r.get("params", {}).get("seed") for r in res.rows if r.get("status") == "failed"]
    if cut or diverged or failed:  # as one staged run: a stage cut by the budget is an unfinished run
        parts = []
        if cut:
            parts.append("stage(s) cut by the step budget --steps " + str(config.steps) + " without meeting their "
                         "stop rule: " + "; ".join(f"seed {s}: {st.replace(';', ', ')}" for s, st in cut))
        if diverged:
            parts.append(f"diverged: seed(s) {', '.join(map(str, diverged))}")
        if failed:
            parts.append(f"failed: seed(s) {', '.join(map(str, failed))}")
        return job.unfinished("; ".join(parts) + f" (see {spec.out}/results.csv)")
    return EXIT_OK


def run_experiment_file(a, job) -> int:
    """--experiment: the file's task, stages and evaluation sets, trained by the configured trainer."""
    import dataclasses
    import os

    from analysis import schedule_flow_gap
    from analysis.results.training import (staged_figure_curves, staged_history_columns, staged_time_column,
                                           summarize_staged_training)
    from common.io import write_csv, write_json
    from dynamics import load_experiment, train_schedule

    exp = load_experiment(a.experiment)
    config = dataclasses.replace(config_from_args(a), task=exp.flow.task)
    config.check_memory(compare_flow=a.compare_flow)
    out = job.claim(a.out or default_out_dir(a, job.parser))
    result = train_schedule(config, exp.stages, eval_sets=exp.eval_sets, progress=not a.quiet)
    pairing = schedule_flow_gap(result, exp.stages, exp.flow) if a.compare_flow else None
    summary = summarize_staged_training(result, a.experiment, pairing)
    cols = staged_history_columns(result, pairing)
    with job.folder(out) as d:
        write_json(os.path.join(d, "results.json"), summary)
        write_csv(os.path.join(d, "history.csv"), cols)
        if not a.no_plots:
            from figures.experiment import save_experiment_figures

            curves = staged_figure_curves(cols, staged_time_column(result.history))
            # --compare-flow: the exact flow (its train-set metrics) drawn dashed in the train set's colour
            flow = None if pairing is None else dict(
                t=curves["t"], **{f"train_{k}": v for k, v in pairing["flow"].items() if k != "t"})
            save_experiment_figures(d, curves, summary["stages"], log_A=result.task.log_A, flow=flow)
    if not a.quiet:
        for st in summary["stages"]:
            print(f"stage {st['name']}: steps {st['step_start']} -> {st['step_end']} (ended by {st['reason']}"
                  + ("" if st["by_own_rule"] or st["reason"] == "diverged" else ", the step budget: its own rule "
                     "was not met") + ")")
        if pairing is not None:
            print(f"flow_gap {pairing['flow_gap']:.4f} at step {pairing['at_step']}")
        print(f"wrote {out}")
    if result.status == "diverged":
        return job.unfinished(f"training diverged; the history up to there is in {out}")
    if result.cut_stages:  # as frd-experiment: a stage that did not meet its own rule is an unfinished run
        return job.unfinished(f"stage(s) {', '.join(result.cut_stages)} used all --steps {config.steps} without "
                              f"meeting their stop rule (results.json: finished false); the results are in {out} "
                              "(raise --steps)")
    return EXIT_OK


PROGRAM = Program(module=__name__, build_parser=build_parser, run=run, native=("torch",))


def main(argv=None) -> int:
    return run_program(PROGRAM, argv)


if __name__ == "__main__":
    raise SystemExit(main())
