"""Train model 1 (linear attention) or model 2 (softmax head) on the factual-recall task.

    python -m models.train --model linear --optimizer sgd --init uniform --init-scale 1e-5 \\
        --lr 0.1 --steps 8192 --compare-flow --out runs/linear_sgd
    python -m models.train --model softmax --optimizer sgd --lr 1 --steps 3000 --out runs/softmax

Writes into --out (created atomically; nothing is left behind on error):
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
import sys

from common.cli import ArgumentParser, describe_device, guarded
from common.errors import ConfigError

from .task import TaskConfig


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m models.train", description=__doc__.split("\n\n")[0],
                       epilog="Bad input gives one line on stderr and exit status 2.")
    t = p.add_argument_group("task (SPEC §1)")
    t.add_argument("--S", type=int, default=16, help="number of subjects (default 16)")
    t.add_argument("--R", type=int, default=4, help="number of relations (default 4)")
    t.add_argument("--D", type=int, default=8, help="answers per relation; |A| = R*D (default 8)")
    t.add_argument("--T", type=int, default=32, help="sequence length incl. the final EOS, >= 3 (default 32)")
    t.add_argument("--N", type=int, default=20, help="number of noise tokens (default 20)")
    t.add_argument("--facts", default="structured", help="fact table: structured | balanced | random "
                   "(default structured, the paper's table)")
    t.add_argument("--task-seed", type=int, default=0, help="seed of balanced/random fact tables (default 0)")
    m = p.add_argument_group("model and training")
    m.add_argument("--model", default="linear", help="linear (model 1, SPEC §2) | softmax (model 2, SPEC §4)")
    m.add_argument("--d", type=int, default=64, help="embedding dimension of the softmax model (default 64)")
    m.add_argument("--optimizer", default=None, help="gd (linear only: full-batch GD on the exact population "
                   "loss, float64) | sgd (online, fresh batch each step) | adam (softmax only); default sgd")
    m.add_argument("--lr", type=float, default=0.1, help="step size (default 0.1)")
    m.add_argument("--batch", type=int, default=1024, help="sequences per SGD/Adam step (default 1024)")
    m.add_argument("--steps", type=int, default=8192, help="number of optimizer steps (default 8192)")
    m.add_argument("--init", default="uniform", help="linear model init: uniform (every entry = scale, the "
                   "paper's) | balanced (K = scale, W = scale/sqrt|A|) (default uniform)")
    m.add_argument("--init-scale", type=float, default=None, help="linear: the init scale (default 1e-5); "
                   "softmax: W_KQ, W_OV entries ~ N(0, scale^2/d) (default 1e-3)")
    m.add_argument("--seed", type=int, default=0, help="seed of sampling, embeddings and init (default 0)")
    m.add_argument("--eval-every", type=int, default=64, help="evaluate every this many steps (default 64)")
    m.add_argument("--eval-size", type=int, default=8192, help="held-out sequences, >= 8192 (default 8192)")
    m.add_argument("--eps-conv", type=float, default=1e-2, help="loss that counts as converged, t3 "
                   "(default 0.01)")
    m.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU) | cpu | cuda[:i] "
                   "(default auto; GD always runs on the CPU in float64 unless a device is named)")
    m.add_argument("--threads", type=int, default=1, help="CPU threads while training, 0 = torch default "
                   "(default 1: fastest for these small matrices)")
    m.add_argument("--no-cuda-graph", action="store_true", help="do not capture the step in a CUDA graph")
    o = p.add_argument_group("output")
    o.add_argument("--compare-flow", action="store_true", help="linear model: integrate the exact flow from "
                   "the same init, report flow_gap = max_k |L_train(k) - L_flow(k*lr)| and overlay it")
    o.add_argument("--no-plots", action="store_true", help="skip loss.png / loss.pdf")
    o.add_argument("--quiet", action="store_true", help="no progress bar")
    o.add_argument("--out", required=True, help="output folder (created; existing files are replaced)")
    return p


def config_from_args(a):
    from dynamics import TrainConfig

    task = TaskConfig(S=a.S, R=a.R, D=a.D, T=a.T, N=a.N, facts=a.facts, seed=a.task_seed)
    opt = a.optimizer or "sgd"
    scale = a.init_scale if a.init_scale is not None else (1e-5 if a.model == "linear" else 1e-3)
    if a.compare_flow and a.model != "linear":
        raise ConfigError("--compare-flow needs --model linear (the exact flow is model 1's)")
    return TrainConfig(task=task, model=a.model, optimizer=opt, lr=a.lr, batch=a.batch, steps=a.steps,
                       init=a.init, init_scale=scale, d=a.d, seed=a.seed, eval_every=a.eval_every,
                       eval_size=a.eval_size, eps_conv=a.eps_conv, device=a.device,
                       cuda_graph=not a.no_cuda_graph, threads=a.threads)


@guarded
def main(argv=None) -> int:
    from analysis.training import analyze_training
    from dynamics import resolve_device

    a = build_parser().parse_args(argv)
    if os.path.exists(a.out) and not os.path.isdir(a.out):
        raise ConfigError(f"out = {a.out!r} exists and is not a folder; give a folder path")
    config = config_from_args(a)
    dev = resolve_device(config.device) if config.optimizer != "gd" or config.device != "auto" else None
    print(f"device: {describe_device(dev) if dev is not None else 'cpu (exact population GD in float64)'}",
          file=sys.stderr)
    result = analyze_training(config, compare_flow=a.compare_flow, progress=not a.quiet)
    result.save(a.out, plots=not a.no_plots)
    summary, pairing = result.summary, result.pairing
    f = summary["final"]
    tp = summary["throughput"]
    line = (f"final loss {f['loss']:.4f} (relation {f['relation_loss']:.4f}, subject {f['subject_loss']:.4f}, "
            f"accuracy {f['accuracy']:.3f}); {tp['steps_per_second']:.0f} steps/s")
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
