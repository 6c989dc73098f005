"""Command line: run a multi-stage experiment file on the exact flow (SPEC §6).

    python -m dynamics.experiment experiments/finetune.toml --out runs/finetune
"""
from __future__ import annotations

import argparse
import os
import sys

from common.cli import EXIT_CODES_EPILOG, EXIT_OK, ArgumentParser, Program, add_overwrite, program_name, run_program
from common.errors import ConfigError

FORMAT = """experiment file (TOML); every table but [[stages]] is optional:

  [task]                       S, R, D, T, N, facts, facts_file, zipf_subjects, zipf_relations, seed
  S = 64
  [flow]                       init, alpha, init_file, t_max (longest any stage may run), eps_conv,
  alpha = 1e-5                 backend, method, rtol, atol, dtype, device, samples_per_octave, max_steps
  [distributions.old]          named training distributions: zipf_subjects, zipf_relations,
  subjects = "0:32"            subjects / relations ("lo:hi" half-open, or a list), weights_file
  [distributions.new]          (.npy/.csv S x R weights), mix = [[coefficient, "name"], ...]
  subjects = "32:64"
  [distributions.replay]
  mix = [[0.9, "new"], [0.1, "old"]]
  [eval_sets.old]              named evaluation sets (same keys), uniform over their facts
  subjects = "0:32"
  [experiment]
  eval = ["all", "train", "unseen", "old"]   default: all built-in sets and every [eval_sets]
  [[stages]]
  name = "pretrain"
  train = "old"                a [distributions] name or an inline table, e.g. {zipf_subjects = 1.0}
  until_loss = 0.01            stop when the loss on `on` (default "train") falls to this level,
  [[stages]]                   and/or after until_time units of flow time (at least one of the two)
  name = "finetune"
  train = "replay"
  until_time = 2000.0

built-in evaluation sets: all (uniform), train (the stage's distribution), seen / unseen (subjects with /
without training weight so far), top10 / middle / bottom50 (subjects by first-stage frequency). Metrics of
each set at every saved time: loss, relation_loss, subject_loss, hallucination_gap, p_true (mean probability
of the true answer), accuracy, excess (loss - H(A|R) of the set: > 0 on unseen subjects means confident
wrong answers).

outputs in --out: trajectory.csv (stage, t, <set>_<metric>, conservation drifts), results.json (per stage:
start and end time, why it ended, phase times t1/t2/t3 per set, every set's metrics at the end, solver
statistics), experiment.png (stage boundaries marked)."""


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog=program_name("dynamics.experiment"),
                       description="Run a multi-stage experiment on the exact population gradient flow of the "
                                   "linear-attention model: each stage trains on its own distribution over facts "
                                   "until its stop rule, the state carried over, with evaluation sets measured "
                                   "exactly at every saved time.",
                       epilog=FORMAT + "\n\n" + EXIT_CODES_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", help="the experiment file (TOML, format below)")
    g = p.add_argument_group("overrides (replace the file's values)")
    for flag, key, typ, what in (("--S", "task.S", int, "number of subjects"),
                                 ("--R", "task.R", int, "number of relations"),
                                 ("--D", "task.D", int, "answers per relation"),
                                 ("--seed", "task.seed", int, "seed of a balanced/random fact table"),
                                 ("--alpha", "flow.alpha", float, "initialization scale"),
                                 ("--rtol", "flow.rtol", float, "relative tolerance of the solver (1e-14..1e-3)"),
                                 ("--t-max", "flow.t_max", float, "longest flow time any one stage may run"),
                                 ("--eps-conv", "flow.eps_conv", float, "loss level that defines t3")):
        g.add_argument(flag, type=typ, default=None, dest=key.replace(".", "__"), help=f"{what} ([{key.split('.')[0]}] "
                       f"{key.split('.')[1]})")
    g.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="any other [task] or [flow] value, e.g. --set flow.max_steps=5000 (VALUE is read as TOML: "
                        "numbers, true/false, \"strings\"); repeatable")
    g = p.add_argument_group("output")
    g.add_argument("--out", default=None, metavar="DIR",
                   help="output folder, created as a whole when the run succeeds (default runs/<file name>); an "
                        "existing non-empty folder is refused unless --overwrite")
    add_overwrite(g)
    g.add_argument("--no-plots", action="store_true", help="skip experiment.png")
    g.add_argument("--quiet", action="store_true", help="no progress and no summary")
    return p


def overrides_of(args) -> dict:
    """{"task.S": 256, ...} from the named flags and --set (ConfigError on a malformed --set)."""
    import tomllib

    out = {}
    for k, v in vars(args).items():
        if "__" in k and v is not None:
            out[k.replace("__", ".")] = v
    for item in args.set:
        key, eq, text = item.partition("=")
        if not eq or "." not in key:
            raise ConfigError(f"--set {item!r} must look like SECTION.KEY=VALUE, e.g. flow.max_steps=5000")
        try:
            out[key.strip()] = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = text.strip()  # a bare word: a string (e.g. facts=random)
    return out


def summary(result) -> str:
    c = result.config
    t = c.flow.task
    lines = [f"task   S={t.S} R={t.R} D={t.D} facts={t.facts} alpha={c.flow.alpha:g}; status {result.status}"]
    for st in result.stage_table():
        ph = st["phases"]

        def f(x):
            return "-" if x is None else f"{x:.6g}"

        all_ph = ph.get("all", ph["train"])
        lines.append(f"stage {st['name']}: t = {st['t_start']:.6g} -> {st['t_end']:.6g} (ended by {st['reason']}); "
                     f"{st['solver']['n_steps']} steps, {st['solver']['nfe']} RHS evaluations; on "
                     f"{'all' if 'all' in ph else 'train'}: t1={f(all_ph['t1'])} t2={f(all_ph['t2'])} "
                     f"t3={f(all_ph['t3'])}")
        end = st["at_end"]
        lines.append("  at end: " + ", ".join(f"{k} loss {v['loss']:.4g}" for k, v in end.items()
                                             if v["loss"] is not None))
    lines.append("conservation max drift: " + ", ".join(f"{k}={v:.2e}" for k, v in
                                                        result.run.conservation.items()))
    return "\n".join(lines)


def run(args, job) -> int:
    """Load the experiment file, claim --out, run its stages (analysis.results.experiment), write and print."""
    from dynamics.experiment.file import load_experiment

    config = load_experiment(args.file, overrides=overrides_of(args))
    config.flow.check_memory()
    out = job.claim(args.out or os.path.join("runs", os.path.splitext(os.path.basename(args.file))[0]))
    from analysis.results.experiment import analyze_experiment

    result = analyze_experiment(config, progress=not args.quiet)
    names = result.save(out, plots=not args.no_plots, overwrite=args.overwrite)
    if not args.quiet:
        print(summary(result))
        print(f"wrote {out}/" + ", ".join(names))
    if result.status != "completed":
        st = result.run.stages[-1]
        return job.unfinished(f"stage {st.name!r} did not reach its stop rule ({result.status}"
                              f"{': ' + st.message if st.message else ''}); the results up to t = {st.t_end:.6g} "
                              f"are in {out} (raise --t-max or flow.max_steps)")
    return EXIT_OK


PROGRAM = Program(module=__name__, build_parser=build_parser, run=run, native=("torch",))


def main(argv=None) -> int:
    return run_program(PROGRAM, argv)


if __name__ == "__main__":
    sys.exit(main())
