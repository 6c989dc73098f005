"""Do the three shipped experiments' answers change when the model's capacity is finite? (issue 22)

The shipped experiments (experiments/shipped.py) run the exact population flow of model 1, which has a
private parameter block per subject and unlimited capacity. Here the same experiment definitions
(dynamics.experiment.schedule Stage / Stop / EvalSpec, models.weights.Distribution) also drive model 2
(one softmax head, fixed random unit-sphere embeddings of dimension d, two d x d matrices: capacity about
d^2 facts up to logs) and the one-layer transformer of SPEC §11 (H = 2, d_h = d/2, MLP width d: 6 d^2
parameters), trained by Adam on fresh batches through dynamics.training.staged.train_schedule, at several
d / sqrt(S R) (capacity ratio) and several seeds, beside the exact flow of model 1
(analysis.results.experiment.analyze_experiment) and, for the first question, the theory's closed form
(analysis.theory.reduced_solution.phase_times). Four questions:

  scaling    plateau length t2 - t1 on `all` (SPEC §3 thresholds; flow time for model 1, steps otherwise)
             against the number of subjects S: fitted exponent with a 95 % interval, beside Zucchet et al.'s
             0.81 for transformers;
  zipf       time to eps on all facts and plateau length against the Zipf exponent beta of the subjects;
  warmup     total time to eps on all facts against the warm-up subset size k (first k subjects to eps);
  finetune   pre-train on the first half of the subjects to eps, then train on the second half with replay
             rho of the first: the old facts' loss (start, maximum, end), the new facts' time to eps.

    python experiments/findings.py --jobs 2 --out runs/findings         # all four at CPU scale (about 22 min)
    python experiments/findings.py --only zipf --seeds 2 --out runs/z   # one, fewer seeds
    python experiments/findings.py --jobs 2 --out runs/findings --regenerate-docs  # also docs/findings.md tables, figures

Writes into --out, per question, <q>.csv (one row per run: model `flow`, `theory`, `softmax` or `transformer`,
its capacity ratio, d and seed), <q>.json (settings, rows, the per-configuration summaries, the fits) and <q>.png. A
"plateau length" is t2 - t1 on the evaluation set `all` (as experiments/shipped.py's frequency experiment),
with t1, t2 the first times the loss falls to (log|A| + log D) / 2 and to log D / 2.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from common.cli import out_ok  # noqa: E402
sys.path.insert(0, HERE)

from common.io import output_dir, save_figure, write_json, write_text  # noqa: E402

QUESTIONS = ("scaling", "zipf", "warmup", "finetune")
ZUCCHET_EXPONENT = 0.81  # plateau ~ 0.43 N^0.81 in the number of individuals (Zucchet et al. 2025)
CPU_SCALE = dict(S=32, flow_S="16,32,64,128,256,512,1024", softmax_S="16,32,64,128", ratios="6,3,2,1",
                 transformer_ratios="3,1",
                 seeds=5, steps=3000, betas="0,0.5,1,1.5,2", finetune_steps=1500)
PAPER_SCALE = dict(S=256, flow_S="16,32,64,128,256,512,1024,2048", softmax_S="16,32,64,128,256,512",
                   ratios="8,4,2,1,0.5", transformer_ratios="4,2,1,0.5", seeds=10, steps=100000, betas="0,0.25,0.5,0.75,1,1.25,1.5,1.75,2",
                   finetune_steps=40000)


# ----------------------------------------------------------------------------- one run
def log_levels(R: int, D: int, eps: float) -> tuple:
    """(theta1, theta2, theta3) of SPEC §3 on a balanced table's `all` set: H(A|R) = log D."""
    from analysis.phases import thresholds

    return thresholds(math.log(R * D), math.log(D), eps)


def _stages(spec: dict, eps: float):
    """The experiment's Stage tuple and extra evaluation sets for a run spec (the same for both models)."""
    from dynamics.experiment.schedule import EvalSpec, Stage, Stop
    from models.weights import Distribution

    q, S = spec["q"], spec["S"]
    until = spec.get("until_time")
    if q in ("scaling", "zipf"):
        beta = spec.get("beta", 0.0)
        return (Stage("train", Distribution(zipf_subjects=beta), Stop(loss=spec["stop_loss"], on="all")),), ()
    if q == "warmup":
        k = spec["k"]
        if k == S:
            return (Stage("all", Distribution(), Stop(loss=eps, on="all")),), ()
        return (Stage("warmup", Distribution(subjects=f"0:{k}"), Stop(loss=eps)),
                Stage("all", Distribution(), Stop(loss=eps, on="all"))), ()
    half, rho = S // 2, spec["rho"]
    old = Distribution(subjects=f"0:{half}", name="old")
    new = Distribution(subjects=f"{half}:{S}", name="new")
    train2 = new if rho == 0 else Distribution(mix=((1 - rho, new), (rho, old)), name=f"replay{rho:g}")
    return ((Stage("pretrain", old, Stop(loss=eps)), Stage("finetune", train2, Stop(time=until))),
            (EvalSpec("old", old), EvalSpec("new", new)))


def _crossing(t, L, theta):
    from analysis.phases import first_crossing

    return first_crossing(np.asarray(t, dtype=np.float64), np.asarray(L, dtype=np.float64), theta)


def _summary_of_curves(spec: dict, t, stage, cols: dict, ends: list, reasons: list, a: dict) -> dict:
    """The per-run numbers of a question from a sampled or saved trajectory (both models): t is flow time
    or steps, stage the stage index per row, cols set_metric -> values, ends the stages' end times."""
    th1, th2, th3 = log_levels(a["R"], a["D"], a["eps"])
    t, stage = np.asarray(t, dtype=np.float64), np.asarray(stage)
    last = stage == stage.max()
    L = np.asarray(cols["all_loss"], dtype=np.float64)
    row = dict(t_end=float(ends[-1]), reason=reasons[-1], loss_all_end=float(L[-1]),
               loss_all_min=float(np.nanmin(L)))
    q = spec["q"]
    if q in ("scaling", "zipf"):
        t1, t2, t3 = (_crossing(t, L, th) for th in (th1, th2, th3))
        row.update(t1=t1, t2=t2, plateau_length=(t2 - t1) if t1 is not None and t2 is not None else None,
                   t_eps_all=t3)
    elif q == "warmup":
        t3 = _crossing(t[last], L[last], th3)
        row.update(t_warmup=float(ends[0]) if len(ends) > 1 else 0.0,
                   warmup_reached=reasons[0] == "loss" if len(ends) > 1 else True,
                   t_total=t3, t2_all=_crossing(t[last], L[last], th2))
    else:
        ft = stage == 1
        old, new = np.asarray(cols["old_loss"], dtype=np.float64), np.asarray(cols["new_loss"], dtype=np.float64)
        t0 = float(ends[0])
        k = int(np.nanargmax(old[ft]))
        t3 = _crossing(t[ft], new[ft], th3)
        # the old facts' loss when the new facts are learned: a measure that does not depend on the horizon
        at_new = float(np.interp(t3, t[ft], old[ft])) if t3 is not None else None
        row.update(old_loss_at_new_eps=at_new, t_pretrain=t0, pretrain_reached=reasons[0] == "loss", old_loss_start=float(old[ft][0]),
                   old_loss_max=float(old[ft][k]), t_old_max=float(t[ft][k] - t0), old_loss_end=float(old[ft][-1]),
                   new_loss_end=float(new[ft][-1]), new_t_eps_after=(t3 - t0) if t3 is not None else None,
                   collapse=bool(old[ft][k] >= th2))
    return row


def run_flow(spec: dict, a: dict) -> tuple:
    """One exact-flow run of model 1 (float64, analyze_experiment). Returns (row, curve)."""
    from analysis.results.experiment import analyze_experiment
    from dynamics.experiment.schedule import ExperimentConfig
    from dynamics.flow.config import FlowConfig
    from models.task import TaskConfig

    stages, extra = _stages(spec, a["eps"])
    flow = FlowConfig(task=TaskConfig(S=spec["S"], R=a["R"], D=a["D"], facts="balanced", seed=0),
                      alpha=a["alpha"], eps_conv=a["eps"], t_max=a["t_max"])
    res = analyze_experiment(ExperimentConfig(flow=flow, stages=stages, eval_sets=("all", "train") + extra),
                             progress=False)
    tr = res.trajectory
    cols = {k: np.asarray(tr[k]) for k in ("all_loss",) + tuple(f"{e.name}_loss" for e in extra)}
    row = _summary_of_curves(spec, tr["t"], tr["stage"], cols, [s.t_end for s in res.run.stages],
                             [s.reason for s in res.run.stages], a)
    # the flow's crossings located on its dense output (analyze_experiment), not interpolated between rows
    ph = res.phases[stages[-1].name]
    if spec["q"] in ("scaling", "zipf"):
        t1, t2 = ph["all"]["t1"], ph["all"]["t2"]
        row.update(t1=t1, t2=t2, t_eps_all=ph["all"]["t3"],
                   plateau_length=(t2 - t1) if t1 is not None and t2 is not None else None)
    elif spec["q"] == "warmup":
        row.update(t_total=ph["all"]["t3"], t2_all=ph["all"]["t2"])
    else:
        t3 = ph["new"]["t3"]
        row.update(new_t_eps_after=(t3 - row["t_pretrain"]) if t3 is not None else None)
    row.update(status=res.status, drift=float(max(res.run.conservation.values())))
    return row, dict(t=np.asarray(tr["t"]), stage=np.asarray(tr["stage"]), **cols)


def softmax_d(S: int, R: int, ratio: float) -> int:
    """The embedding dimension d at capacity ratio d / sqrt(S R) (at least 2), for model 2 and the transformer."""
    return max(2, int(round(ratio * math.sqrt(S * R))))


def transformer_shape(d: int) -> dict:
    """The transformer's shape at embedding dimension d: H = 2 heads of dimension d_h = d/2 (the capacity work's
    alpha = H d_h / d = 1) and an MLP of width m = d (beta = 1), P = 4 H d_h d + 2 m d = 6 d^2 parameters (model 2
    at the same d has 2 d^2)."""
    return dict(H=2, d_h=max(1, d // 2), m=d)


def run_trained(spec: dict, a: dict) -> tuple:
    """One Adam run of model 2 or the transformer through train_schedule (the same stages as the flow).
    Returns (row, curve)."""
    import torch

    from dynamics.training.config import TrainConfig
    from dynamics.training.staged import train_schedule
    from models.task import TaskConfig

    torch.set_num_threads(1)
    stages, extra = _stages(spec, a["eps"])
    d = softmax_d(spec["S"], a["R"], spec["ratio"])
    if spec["model"] == "softmax":  # small init (the flow's regime), Adam step 2/d
        model = dict(model="softmax", lr=a["lr_scale"] / d, init_scale=a["init_scale"])
    else:  # the standard init of SPEC §11 and the capacity work's Adam step
        model = dict(model="transformer", lr=a["transformer_lr"], **transformer_shape(d))
    # the seed draws the fact table, the embeddings, the initial weights and the batches
    cfg = TrainConfig(task=TaskConfig(S=spec["S"], R=a["R"], D=a["D"], T=a["T"], N=a["N"], facts="balanced",
                                      seed=spec["seed"]),
                      optimizer="adam", batch=a["batch"], steps=a["steps"], d=d, seed=spec["seed"],
                      eval_every=a["eval_every"], eval_geometric=4, eval_size=a["eval_size"], eps_conv=a["eps"],
                      device=a["device"], threads=1, **model)
    res = train_schedule(cfg, stages, eval_sets=("all", "train") + extra, progress=False)
    h = res.history
    cols = {k: np.asarray(h[k]) for k in ("all_loss",) + tuple(f"{e.name}_loss" for e in extra)}
    row = _summary_of_curves(spec, h["step"], h["stage"], cols, [float(s.step_end) for s in res.stages],
                             [s.reason for s in res.stages], a)
    row.update(d=d, params=cfg_params(cfg))
    return row, dict(t=np.asarray(h["step"]), stage=np.asarray(h["stage"]), **cols)


def cfg_params(cfg) -> int:
    """Trained parameters: model 2 W_KQ and W_OV (2 d^2); the transformer 4 H d_h d + 2 m d (SPEC §11)."""
    if cfg.model == "softmax":
        return 2 * cfg.d * cfg.d
    from models.transformer.config import transformer_parameter_count

    return transformer_parameter_count(cfg.d, cfg.H, cfg.d_h, cfg.m)


def pickle_this_module_by_value() -> None:
    """Dask's workers cannot import this script (it is not in a package): its functions travel by value. Run as
    a script they do already (they live in __main__); loaded under another name (the tests), say so."""
    mod = sys.modules.get(__name__)
    if __name__ != "__main__" and mod is not None:
        import cloudpickle

        cloudpickle.register_pickle_by_value(mod)


def run_one(job: tuple) -> tuple:
    """Worker: (spec, settings) -> (spec, row, curve, wall seconds). Top level, so a process pool can call it."""
    spec, a = job
    t0 = time.perf_counter()
    row, curve = (run_flow if spec["model"] == "flow" else run_trained)(spec, a)
    return spec, row, curve, time.perf_counter() - t0


# ----------------------------------------------------------------------------- the questions' runs
def jobs_for(q: str, a) -> list:
    """Every run spec of question q: the flow's, then model 2's (ratio, seed) for each setting, then the
    transformer's (its ratios, seed)."""
    seeds = range(a.seed0, a.seed0 + a.seeds)
    trained = [("softmax", r) for r in a.ratio_list] + [("transformer", r) for r in a.transformer_ratio_list]
    th2 = log_levels(a.R, a.D, a.eps)[1]
    if q == "scaling":
        # stop once the loss on `all` is well below theta2: the plateau has ended, t3 is not needed
        flows = [dict(q=q, model="flow", S=S, stop_loss=a.eps) for S in a.flow_S_list]
        soft = [dict(q=q, model=m, S=S, ratio=r, seed=s, stop_loss=0.5 * th2)
                for m, r in trained for S in a.softmax_S_list for s in seeds]
        return flows + soft
    settings = {"zipf": [dict(beta=b, stop_loss=a.eps) for b in a.beta_list],
                "warmup": [dict(k=k) for k in a.k_list],
                "finetune": [dict(rho=r) for r in (0.0, 0.1, 0.3)]}[q]
    flows = [dict(q=q, model="flow", S=a.S, until_time=a.finetune_time, **x) for x in settings]
    soft = [dict(q=q, model=m, S=a.S, ratio=r, seed=s, until_time=a.finetune_steps, **x)
            for m, r in trained for x in settings for s in seeds]
    return flows + soft


def run_question(q: str, a, client=None) -> dict:
    """Run every job of question q (on the Dask ``client``'s workers when given, else in this process),
    printing one progress line per run as it ends. Returns dict(rows, curves, wall), rows in the jobs' order.
    RuntimeError naming the runs if any failed."""
    from analysis.sweeps.dask_tasks import run_tasks

    specs = jobs_for(q, a)
    jobs = [(spec, a.run_settings) for spec in specs]
    t0 = time.perf_counter()
    done = [0]

    def say(i, status, value):
        done[0] += 1
        keep = {k: v for k, v in specs[i].items() if k not in ("q", "stop_loss", "until_time")}
        what = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in keep.items())
        told = f"{short(value[1])} ({value[3]:.1f} s" if status == "done" else f"FAILED: {value} ("
        print(f"[{q} {done[0]}/{len(jobs)}] {what}: {told}; {time.perf_counter() - t0:.0f} s in all)",
              file=sys.stderr, flush=True)

    outcomes = run_tasks(run_one, jobs, client=client, on_result=say)
    failed = [f"{specs[i]}: {o[1]}" for i, o in enumerate(outcomes) if o is None or o[0] != "done"]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(jobs)} {q} runs failed; the first: {failed[0]}")
    rows, curves = [], []
    for (_, (spec, row, curve, wall)) in outcomes:
        keep = {k: v for k, v in spec.items() if k not in ("q",)}
        rows.append(dict(keep, **row, wall_s=wall))
        curves.append((spec, curve))
    if q == "scaling":
        from analysis.theory.reduced_solution import phase_times

        S = np.asarray(a.flow_S_list, dtype=np.float64)
        th = phase_times(S, a.R, a.D, a.alpha, a.eps)
        for i, s in enumerate(a.flow_S_list):
            rows.append(dict(model="theory", S=s, t1=float(th["t1"][i]), t2=float(th["t2"][i]),
                             plateau_length=float(th["t2"][i] - th["t1"][i]), t_eps_all=float(th["t3"][i])))
    return dict(rows=rows, curves=curves, wall=time.perf_counter() - t0)


def short(row: dict) -> str:
    keys = ("plateau_length", "t_eps_all", "t_total", "old_loss_max", "old_loss_end", "loss_all_end")
    return " ".join(f"{k}={row[k]:.4g}" if isinstance(row.get(k), float) else f"{k}={row.get(k)}"
                    for k in keys if k in row)


# ----------------------------------------------------------------------------- the command line
def _floats(text: str, name: str, lo: float = 0.0, strict: bool = False) -> tuple:
    try:
        vals = tuple(float(x) for x in text.split(","))
    except ValueError:
        vals = ()
    if not vals or any(not math.isfinite(v) or v < lo or (strict and v <= lo) for v in vals):
        raise ValueError(f"{name} = {text!r}: give comma-separated numbers "
                         f"{'>' if strict else '>='} {lo:g}")
    return vals


def _ints(text: str, name: str, lo: int) -> tuple:
    vals = _floats(text, name, lo)
    if any(v != int(v) for v in vals):
        raise ValueError(f"{name} = {text!r}: give comma-separated integers >= {lo}")
    return tuple(sorted({int(v) for v in vals}))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=QUESTIONS, action="append", help="run only this question (repeatable)")
    p.add_argument("--paper-scale", action="store_true",
                   help="larger defaults meant for a GPU or a cluster (S = 256, S up to 2048 / 512, 5 capacity "
                        "ratios, 10 seeds, up to 100,000 steps); flags given explicitly still win")
    p.add_argument("--S", type=int, help=f"subjects of the zipf, warmup and finetune questions (default {CPU_SCALE['S']})")
    p.add_argument("--R", type=int, default=4, help="relations (default 4)")
    p.add_argument("--D", type=int, default=8, help="answers per relation (default 8)")
    p.add_argument("--flow-S", help=f"the scaling question's S values for the flow and the theory "
                                    f"(default {CPU_SCALE['flow_S']})")
    p.add_argument("--softmax-S", help=f"the scaling question's S values for model 2 and the transformer (default {CPU_SCALE['softmax_S']})")
    p.add_argument("--ratios", help=f"model 2's capacity ratios d / sqrt(S R) (default {CPU_SCALE['ratios']})")
    p.add_argument("--transformer-ratios",
                   help="the one-layer transformer's (SPEC §11; H = 2, d_h = d/2, m = d: 6 d^2 parameters) capacity "
                        f"ratios d / sqrt(S R), 'none' for none (default {CPU_SCALE['transformer_ratios']})")
    p.add_argument("--transformer-lr", type=float, default=1e-2,
                   help="the transformer's Adam step size (default 0.01, the paper's trade-off runs'; its init is "
                        "the standard one of SPEC §11, not model 2's small one)")
    p.add_argument("--seeds", type=int, help=f"seeds per model-2 configuration (default {CPU_SCALE['seeds']})")
    p.add_argument("--seed0", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--betas", help=f"Zipf exponents of the zipf question (default {CPU_SCALE['betas']})")
    p.add_argument("--ks", help="warm-up subset sizes k (default S/8, S/4, S/2 and S = no warm-up)")
    p.add_argument("--eps", type=float, default=1e-2, help="the loss level eps (default 1e-2)")
    p.add_argument("--alpha", type=float, default=1e-5, help="model 1's initialization scale (default 1e-5)")
    p.add_argument("--t-max", type=float, default=1e8, help="model 1: longest flow time of a stage (default 1e8)")
    p.add_argument("--finetune-time", type=float,
                   help="model 1: flow time of the fine-tuning stage (default 8 x the flow's t3 at S / 2, its "
                        "pre-training time; the shipped experiment's 40,000 is 6.7 x its pre-training)")
    p.add_argument("--steps", type=int, help=f"model 2: most steps of one stage (default {CPU_SCALE['steps']})")
    p.add_argument("--finetune-steps", type=int,
                   help=f"model 2: steps of the fine-tuning stage (default {CPU_SCALE['finetune_steps']})")
    p.add_argument("--lr-scale", type=float, default=2.0,
                   help="model 2: Adam's step size is lr-scale / d (default 2.0; Adam moves every entry by about "
                        "the step size, so the matrices' norms move by about lr x d)")
    p.add_argument("--batch", type=int, default=256, help="model 2: sequences per step (default 256)")
    p.add_argument("--T", type=int, default=4, help="model 2: sequence length (default 4)")
    p.add_argument("--N", type=int, default=2, help="model 2: noise tokens (default 2)")
    p.add_argument("--init-scale", type=float, default=1e-3, help="model 2: initial weights' std x sqrt(d) "
                                                                   "(default 1e-3)")
    p.add_argument("--eval-every", type=int, default=40,
                   help="model 2: evaluate every this many steps (default 40; also 4 times per doubling early on)")
    p.add_argument("--eval-size", type=int, default=8192, help="model 2: held-out sequences per evaluation "
                                                               "(default 8192, the least allowed)")
    p.add_argument("--device", default="cpu", metavar="auto|cpu|cuda[:i]",
                   help="model 2's device (default cpu: these small models run fastest on a CPU core; auto: a "
                        "CUDA GPU when present, else the CPU, and it says so; the exact flow is always float64 "
                        "on the CPU)")
    x = p.add_argument_group("execution (Dask)")
    x.add_argument("--jobs", type=int, default=1,
                   help="local worker processes of one thread, a Dask LocalCluster (default 1: every run in this "
                        "process, one after another); with --scheduler tls://...: unused")
    from analysis.sweeps.dask_tasks import add_cluster_flags

    add_cluster_flags(x, workers_flag="--jobs")
    p.add_argument("--out", default="runs/findings", help="output folder (default runs/findings)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--regenerate-docs", action="store_true",
                   help="also rewrite the generated tables of docs/findings.md and docs/findings/*.png")
    p.add_argument("--docs-from", metavar="DIR",
                   help="run nothing: rewrite docs/findings.md's tables and figures from a finished run's --out "
                        "folder (its <question>.json and .png)")
    return p


def settle(a) -> None:
    """Fill the scale's defaults and check every value (ValueError with one line naming it)."""
    scale = PAPER_SCALE if a.paper_scale else CPU_SCALE
    for k, v in scale.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    for name in ("S", "R", "D", "seeds", "steps", "finetune_steps", "batch", "eval_every", "jobs"):
        if getattr(a, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} = {getattr(a, name)}: must be an integer >= 1")
    if a.S < 4 or a.S % 2:
        raise ValueError(f"--S = {a.S}: must be an even integer >= 4 (the finetune question halves it)")
    if a.T < 3 or a.N < 1 or a.eval_size < 8192:
        raise ValueError(f"--T {a.T} --N {a.N} --eval-size {a.eval_size}: need T >= 3, N >= 1, eval size >= 8192")
    for name in ("eps", "alpha", "lr_scale", "t_max", "transformer_lr"):
        v = getattr(a, name)
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"--{name.replace('_', '-')} = {v}: must be a positive number")
    if a.eps >= math.log(a.D) / 2:
        raise ValueError(f"--eps = {a.eps}: must be below log(D) / 2 = {math.log(a.D) / 2:.4g}")
    a.flow_S_list = _ints(a.flow_S, "--flow-S", 2)
    a.softmax_S_list = _ints(a.softmax_S, "--softmax-S", 2)
    a.ratio_list = _floats(a.ratios, "--ratios", 0.0, strict=True)
    a.transformer_ratio_list = (() if a.transformer_ratios.strip().lower() == "none" else
                                _floats(a.transformer_ratios, "--transformer-ratios", 0.0, strict=True))
    a.beta_list = _floats(a.betas, "--betas")
    a.k_list = _ints(a.ks, "--ks", 1) if a.ks else tuple(sorted({max(1, a.S // 8), a.S // 4, a.S // 2, a.S}))
    if max(a.k_list) > a.S:
        raise ValueError(f"--ks = {a.ks}: every k must be at most S = {a.S}")
    a.k_list = tuple(sorted(set(a.k_list) | {a.S}))  # k = S: no warm-up, the reference
    if a.finetune_time is None:
        from analysis.theory.reduced_solution import phase_times

        a.finetune_time = float(8 * np.ravel(phase_times(a.S // 2, a.R, a.D, a.alpha, a.eps)["t3"])[0])
    elif not (math.isfinite(a.finetune_time) and a.finetune_time > 0):
        raise ValueError(f"--finetune-time = {a.finetune_time}: must be a positive number")
    from analysis.sweeps.dask_tasks import check_scheduler
    from common.errors import ConfigError

    try:
        check_scheduler(a.scheduler, a.insecure_tcp)
        a.device = resolved_device(a.device)
    except ConfigError as e:
        raise ValueError(str(e)) from None
    a.run_settings = dict(device=a.device, R=a.R, D=a.D, eps=a.eps, alpha=a.alpha, t_max=a.t_max,
                          lr_scale=a.lr_scale, transformer_lr=a.transformer_lr, batch=a.batch, T=a.T, N=a.N, steps=a.steps,
                          init_scale=a.init_scale, eval_every=a.eval_every, eval_size=a.eval_size)


def resolved_device(text: str) -> str:
    """--device as the device model 2 runs on (dynamics.training.config.resolve_device: ``auto`` -> ``cuda`` when
    a GPU is present, else ``cpu``, said on stderr); ConfigError for a device that is not usable here."""
    from dynamics.training.config import resolve_device

    device = str(resolve_device(text))
    if text == "auto" and device == "cpu":
        print("findings: --device auto: no CUDA GPU here, model 2 runs on the CPU", file=sys.stderr)
    return device


def machine() -> str:
    import platform

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), name)
    except OSError:
        pass
    return f"{os.cpu_count()}-core {name}, load average {load:.1f} at the end"


def main(argv=None) -> int:
    a = parser().parse_args(argv)
    if a.docs_from:
        return docs_from(a.docs_from)
    if not out_ok(a.out, a.overwrite):
        return 2
    try:
        settle(a)
    except ValueError as e:
        print(f"findings: {e}", file=sys.stderr)
        return 2
    import findings_report as report

    names = a.only or list(QUESTIONS)
    from analysis.sweeps.dask_tasks import make_security, open_client
    from common.errors import ConfigError

    t0 = time.perf_counter()
    try:
        security = make_security(a.scheduler, a.tls_ca_file, a.tls_cert, a.tls_key)
        with open_client(a.scheduler, a.jobs, security=security, insecure_tcp=a.insecure_tcp) as client:
            if client is not None:
                pickle_this_module_by_value()
            results = {q: run_question(q, a, client) for q in names}
    except ConfigError as e:
        print(f"findings: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"findings: {e}; nothing written", file=sys.stderr)
        return 1
    wall = time.perf_counter() - t0
    settings = {k: v for k, v in vars(a).items() if k != "run_settings"}
    settings.update(machine=machine(), wall_seconds=wall)
    summaries = {q: report.summarize(q, r["rows"], a) for q, r in results.items()}
    walls = {q: r["wall"] for q, r in results.items()}
    with output_dir(a.out, overwrite=a.overwrite) as d:
        for q, r in results.items():
            write_text(os.path.join(d, f"{q}.csv"), report.csv_text(r["rows"]))
            write_json(os.path.join(d, f"{q}.json"), dict(settings=settings, rows=r["rows"], summary=summaries[q],
                                                          wall_seconds=r["wall"]))
            save_figure(report.figure(q, r["rows"], r["curves"], summaries[q], a), os.path.join(d, f"{q}.png"),
                        dpi=130)
    for q in results:
        print(f"\n### {q} ({results[q]['wall']:.0f} s)\n\n{report.markdown(q, summaries[q], a)}")
    print(f"\nwall time {wall:.0f} s; {settings['machine']}")
    if a.regenerate_docs:
        print(f"wrote {report.regenerate_docs(a.out, summaries, a, settings, walls)}", file=sys.stderr)
    return 0


def docs_from(folder: str) -> int:
    """--docs-from: the docs' generated parts from a finished run's JSON files and figures."""
    import json

    import findings_report as report

    found = [q for q in QUESTIONS if os.path.isfile(os.path.join(folder, f"{q}.json"))
             and os.path.isfile(os.path.join(folder, f"{q}.png"))]
    if not found:
        print(f"findings: --docs-from {folder!r}: no <question>.json with its .png there (questions: "
              f"{', '.join(QUESTIONS)})", file=sys.stderr)
        return 2
    data = {}
    for q in found:
        with open(os.path.join(folder, f"{q}.json"), encoding="utf-8") as f:
            data[q] = json.load(f)
    settings = data[found[0]]["settings"]
    a = argparse.Namespace(**settings)
    walls = {q: d["wall_seconds"] for q, d in data.items()}
    # the summaries and the figures that need no curves are remade from the rows (the fine-tuning figure,
    # drawn from the loss curves, is copied)
    summaries = {q: report.summarize(q, d["rows"], a) for q, d in data.items()}
    figures = {q: report.figure(q, d["rows"], [], summaries[q], a) for q, d in data.items() if q != "finetune"}
    print(f"wrote {report.regenerate_docs(folder, summaries, a, settings, walls, figures)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
