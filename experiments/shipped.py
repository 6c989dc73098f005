"""The three shipped experiments of the README (exact population flow of model 1, SPEC §6):

  frequency   time for the loss on all facts to reach eps, and the hallucination plateau's length, against
              the Zipf exponent beta of the subjects (one stage per beta);
  warmup      train on the first k subjects until their loss reaches eps, then on all: total time to eps on
              all facts against k (k = S is no warm-up);
  finetune    pre-train on half of the subjects to convergence, then train on the other half with replay
              rho of the old half: old-fact loss (collapse, recovery, erosion), new-fact loss, and the
              unseen-subject measures during pre-training.

    python experiments/shipped.py --out runs/experiments            # all three (3 min 8 s on a 2-core x86 CPU, 2026-12)
    python experiments/shipped.py --only warmup --S 64 --out runs/w  # one, smaller

Writes, per experiment, <name>.csv (one row per run), <name>.json (the numbers and the settings) and
<name>.png into --out, and prints the README's tables (markdown). Each run is also an experiment file away:
experiments/*.toml hold the same stages for `python -m dynamics.experiment`.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from common.cli import out_ok  # noqa: E402

from analysis.results.experiment import analyze_experiment  # noqa: E402
from common.io import output_dir, save_figure, write_csv, write_json  # noqa: E402
from dynamics.flow.config import FlowConfig  # noqa: E402
from dynamics.experiment.schedule import EvalSpec, ExperimentConfig, Stage, Stop  # noqa: E402
from models.task import TaskConfig  # noqa: E402
from models.weights import Distribution  # noqa: E402

BETAS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)


def flow_config(a) -> FlowConfig:
    # balanced table: the first k subjects (a warm-up subset, a half) hold every answer equally often
    return FlowConfig(task=TaskConfig(S=a.S, R=a.R, D=a.D, facts="balanced", seed=a.seed), alpha=a.alpha,
                      eps_conv=a.eps, t_max=a.t_max)


def frequency(a) -> tuple:
    rows = []
    for beta in BETAS:
        cfg = ExperimentConfig(flow=flow_config(a), stages=(
            Stage("zipf", Distribution(zipf_subjects=beta), Stop(loss=a.eps, on="all")),),
            eval_sets=("all", "train", "top10", "middle", "bottom50"))
        res = analyze_experiment(cfg, progress=False)
        ph, st = res.phases["zipf"], res.run.stages[0]
        t1, t2 = ph["all"]["t1"], ph["all"]["t2"]
        rows.append(dict(beta=beta, t_eps_all=ph["all"]["t3"], t_eps_train=ph["train"]["t3"], t1_all=t1,
                         t2_all=t2, plateau_length=(t2 - t1) if t1 is not None and t2 is not None else None,
                         t_eps_top10=ph["top10"]["t3"], t_eps_bottom50=ph["bottom50"]["t3"], reason=st.reason,
                         steps=st.solver["n_steps"], wall_s=res.run.wall_seconds,
                         drift=max(res.run.conservation.values())))
        print(f"frequency beta={beta:g}: t_eps(all)={rows[-1]['t_eps_all']:.6g} plateau={rows[-1]['plateau_length']}"
              f" ({res.run.wall_seconds:.1f} s)", file=sys.stderr)
    return rows, {}


def warmup(a) -> tuple:
    rows = []
    for k in sorted({max(a.D, a.S // 16), a.S // 8, a.S // 4, a.S // 2, a.S}):
        stages = (Stage("all", Distribution(), Stop(loss=a.eps)),) if k == a.S else (
            Stage("warmup", Distribution(subjects=f"0:{k}"), Stop(loss=a.eps)),
            Stage("all", Distribution(), Stop(loss=a.eps)))
        res = analyze_experiment(ExperimentConfig(flow=flow_config(a), stages=stages, eval_sets=("all", "train")),
                                 progress=False)
        sts = res.run.stages
        rows.append(dict(k=k, warmup=k < a.S, t_warmup=sts[0].t_end if k < a.S else 0.0,
                         t_total=sts[-1].t_end, t_second_stage=sts[-1].t_end - sts[-1].t_start,
                         t2_all=res.phases[sts[-1].name]["all"]["t2"], status=res.status,
                         wall_s=res.run.wall_seconds, drift=max(res.run.conservation.values())))
        print(f"warmup k={k}: total {rows[-1]['t_total']:.6g} ({res.run.wall_seconds:.1f} s)", file=sys.stderr)
    return rows, {}


def finetune(a) -> tuple:
    half = a.S // 2
    old, new = Distribution(subjects=f"0:{half}", name="old"), Distribution(subjects=f"{half}:{a.S}", name="new")
    rows, curves = [], {}
    for rho in (0.0, 0.1, 0.3):
        train2 = new if rho == 0 else Distribution(mix=((1 - rho, new), (rho, old)), name=f"replay{rho:g}")
        cfg = ExperimentConfig(flow=flow_config(a), stages=(
            Stage("pretrain", old, Stop(loss=a.eps)), Stage("finetune", train2, Stop(time=a.finetune_time))),
            eval_sets=("all", "train", "unseen", EvalSpec("old", old), EvalSpec("new", new)))
        res = analyze_experiment(cfg, progress=False)
        tr = res.trajectory
        st = np.asarray(tr["stage"])
        t = np.asarray(tr["t"])
        pre, ft = st == 0, st == 1
        old_ft = np.asarray(tr["old_loss"])[ft]
        t_ft = t[ft]
        k = int(np.argmax(old_ft))
        s0 = res.run.stages[0]
        unseen_excess = np.asarray(tr["unseen_excess"])[pre]
        rows.append(dict(rho=rho, t_pretrain=s0.t_end, old_loss_start=float(old_ft[0]), old_loss_max=float(old_ft[k]),
                         t_old_max=float(t_ft[k] - s0.t_end), old_loss_end=float(old_ft[-1]),
                         new_t_eps=res.phases["finetune"]["new"]["t3"],
                         new_t_eps_after=(res.phases["finetune"]["new"]["t3"] - s0.t_end
                                          if res.phases["finetune"]["new"]["t3"] is not None else None),
                         unseen_excess_end_pretrain=float(unseen_excess[-1]),
                         unseen_excess_min_pretrain=float(np.nanmin(unseen_excess)),
                         unseen_p_true_end_pretrain=float(np.asarray(tr["unseen_p_true"])[pre][-1]),
                         wall_s=res.run.wall_seconds, drift=max(res.run.conservation.values())))
        curves[rho] = dict(t=t, old=np.asarray(tr["old_loss"]), new=np.asarray(tr["new_loss"]),
                           unseen_excess=np.asarray(tr["unseen_excess"]), t_pre=s0.t_end,
                           log_A=res.theory["log_A"], H=res.run.stages[0].entropies["unseen"])
        print(f"finetune rho={rho:g}: old max {rows[-1]['old_loss_max']:.4g}, end {rows[-1]['old_loss_end']:.4g} "
              f"({res.run.wall_seconds:.1f} s)", file=sys.stderr)
    return rows, curves


EXPERIMENTS = dict(frequency=frequency, warmup=warmup, finetune=finetune)


def figure(name, rows, curves, a):
    import matplotlib

    matplotlib.use("Agg")
    from figures.experiment import sweep_figure
    from figures.style import set_color

    setting = f"S={a.S}, R={a.R}, D={a.D}, alpha={a.alpha:g}, eps={a.eps:g}"
    if name == "frequency":
        x = [r["beta"] for r in rows]
        nan = float("nan")
        return sweep_figure(x, {"time to eps on all facts": [r["t_eps_all"] or nan for r in rows],
                                "time to eps on the training distribution": [r["t_eps_train"] or nan for r in rows],
                                "hallucination plateau length t2 - t1 (all)": [r["plateau_length"] or nan
                                                                               for r in rows]},
                            xlabel="Zipf exponent beta of the subjects", ylabel="flow time", logy=True,
                            styles={"time to eps on all facts": dict(color=set_color("all")),
                                    "time to eps on the training distribution": dict(color=set_color("train")),
                                    "hallucination plateau length t2 - t1 (all)": dict(color=set_color("all"),
                                                                                       ls="--", mfc="white")},
                            title=f"Frequency imbalance ({setting})")
    if name == "warmup":
        # k doubles from one run to the next: a log axis labelled at the k values; the run without warm-up
        # (k = S) is a horizontal reference, not a point joined to the warm-up runs
        warm = [r for r in rows if r["warmup"]]
        x = [r["k"] for r in warm]
        no = [r for r in rows if not r["warmup"]][0]["t_total"]
        return sweep_figure(x, {"total time to eps on all facts (warm-up + all)": [r["t_total"] for r in warm],
                                "of which warm-up on the first k subjects": [r["t_warmup"] for r in warm]},
                            references={f"no warm-up (all {a.S} subjects from the start): {no:,.0f}": no},
                            xlabel=f"warm-up subjects k (log scale; all subjects S = {a.S})", ylabel="flow time",
                            logx=True, xticks=x,
                            styles={"total time to eps on all facts (warm-up + all)": dict(color=set_color("all")),
                                    "of which warm-up on the first k subjects": dict(color=set_color("train"))},
                            title=f"Warm-up curriculum ({setting})")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4), constrained_layout=True)
    replay_ls = ("-", "--", ":", "-.")
    ax = axes[0]
    for k, (rho, c) in enumerate(curves.items()):
        m = c["t"] >= c["t_pre"]
        ls = replay_ls[k % len(replay_ls)]
        ax.plot(c["t"][m] - c["t_pre"], c["old"][m], ls=ls, color=set_color("old"), lw=1.6,
                label=f"old facts, replay {rho:g}")
        ax.plot(c["t"][m] - c["t_pre"], c["new"][m], ls=ls, color=set_color("new"), lw=1.6,
                label=f"new facts, replay {rho:g}")
    ax.axhline(c["log_A"], color="0.4", ls=(0, (1, 1.5)), lw=1.2,
               label=f"log|A| = {c['log_A']:.3g} (uniform prediction)")
    ax.axhline(a.eps, color="0.4", ls="-.", lw=1, label=f"eps = {a.eps:g} (pre-training stop)")
    ax.set_xscale("symlog", linthresh=1.0)  # t = 0 (the switch) on a log-like axis
    ax.set_xlim(left=0)
    ax.set(yscale="log", xlabel="flow time since fine-tuning began (linear up to 1, log beyond)",
           ylabel="loss (nats)", title=f"Fine-tuning on the new half of the subjects\n"
                                       f"old = subjects 0..{a.S // 2 - 1}, new = {a.S // 2}..{a.S - 1}")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False,
              title="colour: set; line: replay", title_fontsize=7)
    c = next(iter(curves.values()))
    m = c["t"] <= c["t_pre"]
    ax = axes[1]
    ax.plot(c["t"][m], c["unseen_excess"][m], color=set_color("unseen"), lw=1.6,
            label="unseen (= new) subjects: excess =\nloss - H(A|R), the loss above\nthe relation-only predictor's")
    ax.axhline(c["log_A"] - c["H"], color="0.4", ls="--", lw=1,
               label=f"log|A| - H(A|R) = {c['log_A'] - c['H']:.3g}:\nuniform prediction (the start)")
    ax.axhline(0, color="0.4", ls=(0, (1, 1.5)), lw=1.2, label="0: relation-only predictor p(a|r)")
    ax.plot([], [], ls="none", label="above 0 once p(a|r) is learned:\nconfident wrong answers")
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlim(left=0)
    ax.set(xlabel="flow time of pre-training (linear up to 1, log beyond)", ylabel="excess loss (nats)",
           title="Unseen subjects during pre-training (same for every replay)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.suptitle(f"Fine-tuning with replay ({setting}): pre-train on the old half until its loss is eps, "
                 f"then train on the new half with replay of the old", fontsize=10)
    return fig


def markdown(name, rows) -> str:
    def f(x):
        return "—" if x is None else (f"{x:.4g}" if isinstance(x, float) else str(x))

    keys = dict(frequency=("beta", "t_eps_all", "t_eps_train", "t1_all", "t2_all", "plateau_length", "wall_s"),
                warmup=("k", "t_warmup", "t_second_stage", "t_total", "wall_s"),
                finetune=("rho", "t_pretrain", "old_loss_start", "old_loss_max", "t_old_max", "old_loss_end",
                          "new_t_eps_after", "unseen_excess_min_pretrain", "unseen_excess_end_pretrain", "wall_s"))[name]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(f(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=tuple(EXPERIMENTS), action="append", help="run only this one (repeatable)")
    p.add_argument("--S", type=int, default=256, help="subjects (default 256)")
    p.add_argument("--R", type=int, default=4, help="relations (default 4)")
    p.add_argument("--D", type=int, default=8, help="answers per relation (default 8)")
    p.add_argument("--alpha", type=float, default=1e-5, help="initialization scale (default 1e-5)")
    p.add_argument("--eps", type=float, default=1e-2, help="the loss level eps (default 1e-2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the balanced fact table (default 0)")
    p.add_argument("--t-max", type=float, default=1e8, help="longest flow time of one stage (default 1e8)")
    p.add_argument("--finetune-time", type=float, default=40000.0,
                   help="flow time of the fine-tuning stage (default 40000)")
    p.add_argument("--out", default="runs/experiments", help="output folder (default runs/experiments)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    a = p.parse_args(argv)
    if not out_ok(a.out, a.overwrite):
        return 2
    names = a.only or list(EXPERIMENTS)
    results = {}
    for name in names:
        t0 = time.perf_counter()
        rows, curves = EXPERIMENTS[name](a)
        results[name] = (rows, curves, time.perf_counter() - t0)
    with output_dir(a.out, overwrite=a.overwrite) as d:
        for name, (rows, curves, wall) in results.items():
            write_csv(os.path.join(d, f"{name}.csv"), {k: [math.nan if r[k] is None else r[k] for r in rows]
                                                        for k in rows[0] if not isinstance(rows[0][k], str)})
            write_json(os.path.join(d, f"{name}.json"), dict(settings=vars(a), rows=rows, wall_seconds=wall))
            fig = figure(name, rows, curves, a)
            save_figure(fig, os.path.join(d, f"{name}.png"), dpi=150)
    for name, (rows, _, wall) in results.items():
        print(f"\n### {name} (S={a.S}, R={a.R}, D={a.D}, alpha={a.alpha:g}, eps={a.eps:g}; {wall:.0f} s)\n")
        print(markdown(name, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
