"""The paper's sequential-learning figure (Nichani, Lee & Bietti 2025, Section 5) and model 1's SGD-vs-flow overlay.

    python -m figures.paper --out figs/

Writes into --out (a new folder put in place as a whole; an existing non-empty one is refused unless --overwrite):
- ``sequential.png/pdf``: left, the exact gradient flow of model 1 (linear attention) with total,
  relation-only and subject-only losses and shaded stages; right, model 2 (softmax attention,
  random embeddings) trained online with SGD or Adam, the same curves against steps;
- ``sgd_vs_flow.png/pdf``: model 1 trained by the paper's SGD procedure (uniform init 1e-5, lr 0.1,
  batch 1024) against the exact flow in flow time step x lr;
- ``paper.json``: the numbers behind both (phases, flow gap, confirmation report).
"""
from __future__ import annotations

import os
import sys

from common.cli import EXIT_UNFINISHED, ArgumentParser, add_overwrite, describe_device, guarded, program_name
from common.errors import check_int, check_positive
from common.io import check_out, output_dir, save_figure, write_json
from models.task import TaskConfig


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog=program_name("figures.paper"),
                       description="Two-panel sequential-learning figure (exact flow of model 1 | model 2 trained "
                                   "with SGD or Adam) and model 1's SGD-vs-flow overlay, as PNG and PDF.")
    p.add_argument("--out", default="runs/paper", metavar="DIR", help="output folder (default runs/paper), created as a whole at the end; "
                   "an existing non-empty folder is refused unless --overwrite")
    add_overwrite(p)
    p.add_argument("--S", type=int, default=16, help="subjects (default 16)")
    p.add_argument("--R", type=int, default=4, help="relations (default 4)")
    p.add_argument("--D", type=int, default=8, help="answers per relation (default 8)")
    p.add_argument("--T", type=int, default=32, help="sequence length (default 32)")
    p.add_argument("--N", type=int, default=20, help="noise tokens (default 20)")
    p.add_argument("--alpha", type=float, default=1e-5, help="model 1 flow: balanced init scale (default 1e-5)")
    p.add_argument("--softmax-optimizer", default="sgd", choices=("sgd", "adam"),
                   help="model 2 optimizer (default sgd)")
    p.add_argument("--softmax-lr", type=float, default=4.0, help="model 2 step size (default 4.0)")
    p.add_argument("--softmax-steps", type=int, default=14000, help="model 2 steps (default 14000; with the "
                   "defaults d=256, SGD lr 4 it converges near step 11,700)")
    p.add_argument("--softmax-init-scale", type=float, default=1e-3, help="model 2 init scale (default 1e-3)")
    p.add_argument("--d", type=int, default=256, help="model 2 embedding dimension (default 256; at d=64 the "
                   "head shows both plateaus but stalls above 0.3 nats: too few dimensions for 64 facts)")
    p.add_argument("--sgd-steps", type=int, default=8192,
                   help="model 1 SGD steps at lr 0.1, batch 1024 (default 8192, the paper's)")
    p.add_argument("--device", default="auto", help="device of the sampled training: auto, cpu or cuda")
    p.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


@guarded
def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    check_out(a.out, overwrite=a.overwrite)  # before any computation
    # heavy imports (torch, matplotlib) only after parsing: --help, --version and bad flags answer at once
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from analysis.results import analyze_flow
    from analysis.training import summarize_training
    from dynamics import FlowConfig, TrainConfig, flow_gap, train
    from dynamics.trainer import LR_MAX

    from .flow import loss_axes
    from .train import overlay_axes

    task = TaskConfig(S=a.S, R=a.R, D=a.D, T=a.T, N=a.N)
    prog = False if a.quiet else None
    # the flags by their own names (the configs below call them lr, steps, init_scale)
    check_positive("softmax_lr", a.softmax_lr, maximum=LR_MAX,
                   why="larger steps overflow float32, the sampled trainers' type")
    check_int("softmax_steps", a.softmax_steps, 1)
    check_int("sgd_steps", a.sgd_steps, 1)
    check_positive("softmax_init_scale", a.softmax_init_scale, allow_zero=True)
    # every config is validated before any work
    flow_cfg = FlowConfig(task=task, init="balanced", alpha=a.alpha)
    soft = TrainConfig(task=task, model="softmax", optimizer=a.softmax_optimizer, lr=a.softmax_lr,
                       steps=a.softmax_steps, init_scale=a.softmax_init_scale, d=a.d, seed=a.seed,
                       eval_every=max(1, a.softmax_steps // 200), device=a.device)
    sgd = TrainConfig(task=task, model="linear", optimizer="sgd", lr=0.1, batch=1024, steps=a.sgd_steps,
                      init="uniform", init_scale=1e-5, seed=a.seed, eval_every=max(1, a.sgd_steps // 128),
                      device=a.device)
    flow_cfg.check_memory()  # every part's memory estimated before anything is allocated
    soft.check_memory()
    sgd.check_memory(compare_flow=True)
    flow = analyze_flow(flow_cfg, progress=prog)
    if flow.status in ("max_steps", "failed"):  # ran but did not finish: exit 3, no figure of a partial flow
        sys.stderr.write(f"error: the model 1 flow did not finish ({flow.status}): {flow.message}; nothing was "
                         "written\n")
        return EXIT_UNFINISHED
    soft_run = train(soft, progress=prog)
    if soft_run.status == "diverged":
        sys.stderr.write(f"error: model 2 training diverged at step {soft_run.diverged_at} (its loss became non-finite "
                         f"or grew above 100 x its start); try a smaller --softmax-lr; nothing was written\n")
        return EXIT_UNFINISHED
    soft_sum = summarize_training(soft_run)
    sgd_run = train(sgd, progress=prog)
    if sgd_run.status == "diverged":
        sys.stderr.write(f"error: model 1 SGD diverged at step {sgd_run.diverged_at}; nothing was written\n")
        return EXIT_UNFINISHED
    pairing = flow_gap(sgd_run)
    sgd_sum = summarize_training(sgd_run, pairing)

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.6), constrained_layout=True)
    tr, ph, th = flow.trajectory, flow.phases, flow.theory
    loss_axes(axes[0], tr["t"], tr["loss"], tr["relation_loss"], tr["subject_loss"], log_A=th["log_A"],
              H_A_given_R=th["H_A_given_R"], t1=ph.t1, t2=ph.t2, t3=ph.t3,
              title=f"Model 1: exact gradient flow (linear attention, one-hot)\nbalanced init {a.alpha:g}")
    h, sp = soft_run.history, soft_sum["phases"]["steps"]
    opt = "SGD" if a.softmax_optimizer == "sgd" else "Adam"
    left = float(h["step"][1]) if len(h["step"]) > 1 else 1.0  # the log axis starts at the first evaluation

    def on_log_axis(x):  # a phase reached before it (e.g. at step 0: loss already below its level) is not drawn:
        return x if x is not None and x >= left else None  # its label would sit far off the axis

    loss_axes(axes[1], h["step"], h["loss"], h["relation_loss"], h["subject_loss"],
              log_A=soft_sum["theory"]["log_A"], H_A_given_R=soft_sum["theory"]["H_A_given_R"],
              t1=on_log_axis(sp["t1"]), t2=on_log_axis(sp["t2"]), t3=on_log_axis(sp["t3"]), xlabel="training step",
              title=f"Model 2: softmax attention, random embeddings (d={a.d})\n{opt} lr {a.softmax_lr:g}, "
                    f"batch 1024, held-out loss ({soft_sum['device']})")
    # log steps: the short first plateau and the hallucination plateau stay visible next to the long stage 3
    axes[1].set_xscale("log")
    if h["step"][-1] > left:
        axes[1].set_xlim(left, float(h["step"][-1]))
    axes[1].set_xlabel("training step (log scale)")
    fig.suptitle(f"Sequential learning of factual recall: S={a.S}, R={a.R}, D={a.D}, T={a.T}, N={a.N} "
                 f"(stage 1: uniform, stage 2: relation only = hallucination, stage 3: facts)", fontsize=11)
    fig2, ax2 = plt.subplots(figsize=(7.5, 4.4), constrained_layout=True)
    hs = sgd_run.history
    overlay_axes(ax2, hs["step"], sgd.lr, hs, pairing["flow"], label="SGD", gap=pairing["flow_gap"])
    ax2.set_title(f"Model 1: SGD (uniform init 1e-5, lr 0.1, batch 1024, {a.sgd_steps} steps) vs exact flow\n"
                  f"S={a.S}, R={a.R}, D={a.D}, T={a.T}, N={a.N}; {describe_device(sgd_run.device)}",
                  fontsize=10)
    with output_dir(a.out, overwrite=a.overwrite) as d:
        for ext in ("png", "pdf"):
            save_figure(fig, os.path.join(d, f"sequential.{ext}"), dpi=150)
            save_figure(fig2, os.path.join(d, f"sgd_vs_flow.{ext}"), dpi=150)
        write_json(os.path.join(d, "paper.json"), dict(
            flow=dict(phases=ph.to_dict(), theory=th), softmax=soft_sum, sgd_vs_flow=sgd_sum))
    plt.close(fig)
    plt.close(fig2)
    conf = soft_sum["confirmation"]
    def g(x):
        return "not reached" if x is None else f"{x:.4g}"

    print(f"flow t1={g(ph.t1)} t2={g(ph.t2)} t3={g(ph.t3)}; "
          f"SGD-vs-flow gap {pairing['flow_gap']:.4f}; model 2 confirmed: "
          + ", ".join(f"{k}={conf[k]['confirmed']}" for k in ("first_plateau", "second_plateau",
                                                               "hallucination_gap", "convergence")))
    print(f"wrote {a.out}/sequential.png/pdf, sgd_vs_flow.png/pdf, paper.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
