"""The paper's sequential-learning figure (Nichani, Lee & Bietti 2025, Section 5) and model 1's SGD-vs-flow overlay.

    python -m figures.paper --out figs/

Writes into --out (a new folder put in place as a whole; an existing non-empty one is refused unless --overwrite):
- ``sequential.png/pdf``: left, the exact gradient flow of model 1 (linear attention) with total,
  relation-only and subject-only losses and shaded stages; right, model 2 (softmax attention,
  random embeddings) trained online with SGD or Adam, the same curves against steps;
- ``sgd_vs_flow.png/pdf``: model 1 trained by the paper's SGD procedure (uniform init 1e-5, lr 0.1,
  batch 1024) against the exact flow in flow time step x lr;
- ``paper.json``: the numbers behind both: ``flow`` (its config, phases, theory levels), ``softmax`` and
  ``sgd_vs_flow`` (each a results.json of models.train: the settings used, phases, flow gap, confirmation report).
"""
from __future__ import annotations

import os
import sys

from common.cli import EXIT_OK, ArgumentParser, Program, add_overwrite, program_name, run_program
from common.errors import check_int, check_positive
from common.io import save_figure, write_json
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


def device_name(device) -> str:
    """The device a run used, for a figure title: the GPU's name, or "CPU" (no remark about absent GPUs)."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return dev.type.upper()


def run(a, job) -> int:
    """Claim --out, run the flow and both trainings, draw both figures, write them with paper.json, print."""
    job.claim(a.out)  # before any computation
    # heavy imports (torch, matplotlib) only after parsing: --help, --version and bad flags answer at once
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from analysis.results.flow import analyze_flow
    from analysis.results.training import summarize_training
    from analysis import flow_gap
    from dynamics import LR_MAX, FlowConfig, TrainConfig, train

    from figures.sequential import sequential_figure, sgd_vs_flow_figure

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
                       eval_every=max(1, a.softmax_steps // 200), eval_geometric=8, device=a.device)
    sgd = TrainConfig(task=task, model="linear", optimizer="sgd", lr=0.1, batch=1024, steps=a.sgd_steps,
                      init="uniform", init_scale=1e-5, seed=a.seed, eval_every=max(1, a.sgd_steps // 128),
                      device=a.device)
    flow_cfg.check_memory()  # every part's memory estimated before anything is allocated
    soft.check_memory()
    sgd.check_memory(compare_flow=True)
    flow = analyze_flow(flow_cfg, progress=prog)
    if flow.status in ("max_steps", "failed"):  # ran but did not finish: exit 3, no figure of a partial flow
        return job.unfinished(f"the model 1 flow did not finish ({flow.status}): {flow.message}; nothing was "
                              "written")
    soft_run = train(soft, progress=prog)
    if soft_run.status == "diverged":
        return job.unfinished(f"model 2 training diverged at step {soft_run.diverged_at} (its loss became "
                              "non-finite or grew above 100 x its start); try a smaller --softmax-lr; nothing was "
                              "written")
    soft_sum = summarize_training(soft_run)
    sgd_run = train(sgd, progress=prog)
    if sgd_run.status == "diverged":
        return job.unfinished(f"model 1 SGD diverged at step {sgd_run.diverged_at}; nothing was written")
    pairing = flow_gap(sgd_run)
    sgd_sum = summarize_training(sgd_run, pairing)

    fig = sequential_figure(
        flow.trajectory, flow.phases, flow.theory, soft_run.history, soft_sum["phases"]["steps"], soft_sum["theory"],
        alpha=a.alpha, d=a.d, optimizer=a.softmax_optimizer, lr=a.softmax_lr, eval_every=soft.eval_every,
        device=device_name(soft_run.device), task=dict(S=a.S, R=a.R, D=a.D, T=a.T, N=a.N))
    fig2 = sgd_vs_flow_figure(sgd_run.history, sgd.lr, pairing, steps=a.sgd_steps, device=device_name(sgd_run.device),
                              task=dict(S=a.S, R=a.R, D=a.D, T=a.T, N=a.N))
    ph, th = flow.phases, flow.theory
    with job.folder(a.out) as d:
        for ext in ("png", "pdf"):
            save_figure(fig, os.path.join(d, f"sequential.{ext}"), dpi=150)
            save_figure(fig2, os.path.join(d, f"sgd_vs_flow.{ext}"), dpi=150)
        write_json(os.path.join(d, "paper.json"), dict(
            flow=dict(config=flow_cfg.to_dict(), phases=ph.to_dict(), theory=th), softmax=soft_sum,
            sgd_vs_flow=sgd_sum))
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
    return EXIT_OK


PROGRAM = Program(module=__name__, build_parser=build_parser, run=run,
                  native=("torch", "matplotlib.backends.backend_agg"))  # both load C++ (pybind11) extensions


def main(argv=None) -> int:
    return run_program(PROGRAM, argv)


if __name__ == "__main__":
    sys.exit(main())
