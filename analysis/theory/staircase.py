"""Staircases of plateaus for any fact weights: levels, leading-order escape schedule, exact crossing times.

From a small balanced start the flow goes from saddle to saddle (the picture of incremental learning,
e.g. Jacot et al. 2021, Pesme & Flammarion 2023). Each input token is a *mode*: a subject, a relation, or
the bias (EOS and the noise tokens, whose logits are shared by every fact). A mode still near zero grows at
the rate ``lambda_z = |G_z|`` of the saddle the flow sits at (:mod:`analysis.theory.escape`); its amplitude is
``alpha exp(int lambda_z dt)`` and it escapes when ``int_0^t lambda_z = log(1/alpha)`` (leading order in
``log(1/alpha)``; O(1) corrections are not included). After an escape the escaped modes fit the data as
well as they can, the flow reaches the next saddle, and every remaining mode's rate changes.

**Levels.** The loss at the saddle with escaped modes ``E`` (subjects ``E_S``, relations ``E_R``, bias or
not) is the infimum of the loss over logits built from those tokens alone. Answers of different relations
lie in disjoint blocks, which makes it an entropy of the predictor that knows the escaped modes::

    level(E) = H_w(A | Y_E),   Y_E = (s if s in E_S else *, r if r in E_R else *)

(``*`` pools the unescaped subjects or relations), with one exception: without the bias, the facts of
unescaped subjects *and* relations are predicted uniformly over all |A| answers (cost log|A|), not by their
pooled answer distribution. The prediction there, per fact (s, r): the true answer if both are escaped;
``p(.|r)`` over the unescaped subjects if only r is; ``w(s, r') / sum`` over the answers of s to the unescaped
relations r' if only s is; the pooled answer marginal of the unescaped facts (or uniform) otherwise.
Examples: nothing escaped gives log|A|; the bias alone H(A); all relations H(A|R) (the hallucination
plateau); all subjects but no relation H(R|S) (log R when uniform); everything 0.

**Schedule.** :func:`escape_schedule` advances the modes' amplitudes piecewise linearly in time, escaping
the next mode (ties escape together) and recomputing the rates at the new saddle. The plateau after escape
k lasts ``n_k = log(1/alpha) - int_0^{t_k} lambda_next`` e-folds of the next mode's growth: the
resolution of that step. A step with ``n_k < 1`` merges into its neighbours on the loss curve (the
calibration: with n = 1 the relation-only loss of a uniform two-mode flow is about 10 % of log D when the
subjects start to escape, the hallucination criterion of :mod:`analysis.theory.hallucination`).

**Staircase.** :func:`staircase` keeps the resolved levels (always log|A| first and 0 last) and gives each
``t_end``, the first time the loss falls halfway to the next listed level (the way SPEC §3 defines t1 and
t2), at leading order (the escape time of the mode whose escape crosses that halfway value) and, with
``exact=True``, from the exact flow: the two-mode quadrature of :mod:`analysis.theory.quadrature` where the symmetry
reduction holds (uniform weights on structured or balanced tables), else the full flow (dynamics.run_flow,
every crossing located on its dense output).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from analysis.theory.escape import rates_at

RESOLVED_EFOLDS = 1.0  # a step is resolved (visible) when the next mode still has >= 1 e-fold to grow
_TIE = 1e-9  # modes whose escape times agree to this relative precision escape together


@dataclass(frozen=True)
class Escaped:
    """The escaped modes: subject and relation masks and whether the bias (EOS, noise) has escaped."""

    subjects: np.ndarray  # (S,) bool
    relations: np.ndarray  # (R,) bool
    bias: bool = False

    @staticmethod
    def none(S: int, R: int) -> "Escaped":
        return Escaped(np.zeros(S, bool), np.zeros(R, bool), False)


def _pooled(task, w, mask_s, mask_r) -> np.ndarray:
    """(|A|,) answer mass of the facts (s in mask_s, r in mask_r), normalised (zeros if there is none)."""
    m = np.zeros(task.num_answers)
    ws = w * mask_s[:, None] * mask_r[None, :]
    np.add.at(m, task.answers.ravel(), ws.ravel())
    tot = m.sum()
    return m / tot if tot > 0 else m


def saddle_predictor(task, weights, E: Escaped):
    """predictor(s) -> (R, |A|): the prediction P(.|s, r) at the saddle of ``E`` (module docstring)."""
    w = np.asarray(weights, dtype=np.float64)
    R, A = task.R, task.num_answers
    ns, nr = ~E.subjects, ~E.relations
    # p(.|r) over the unescaped subjects, per escaped relation (rows of (R, |A|))
    p_rel = np.zeros((R, A))
    for r in np.flatnonzero(E.relations):
        np.add.at(p_rel[r], task.answers[ns, r], w[ns, r])
        tot = p_rel[r].sum()
        if tot > 0:
            p_rel[r] /= tot
    rest = _pooled(task, w, ns, nr) if E.bias else np.full(A, 1.0 / A)
    rows = np.arange(R)

    def predictor(s):
        P = np.empty((R, A))
        if E.subjects[s]:
            own = np.zeros(A)  # the subject's answers to the unescaped relations
            wr = w[s] * nr
            if wr.sum() > 0:
                own[task.answers[s][nr]] = wr[nr] / wr.sum()
            P[:] = own
            P[E.relations] = 0.0
            P[rows[E.relations], task.answers[s][E.relations]] = 1.0
        else:
            P[:] = rest
            P[E.relations] = p_rel[E.relations]
        return P

    return predictor


def level(task, weights, E: Escaped) -> float:
    """The loss at the saddle of ``E``: the entropy of the predictor that knows the escaped modes (nats)."""
    w = np.asarray(weights, dtype=np.float64)
    pred = saddle_predictor(task, w, E)
    tot = 0.0
    rows = np.arange(task.R)
    for s in range(task.S):
        if not w[s].any():
            continue
        p = pred(s)[rows, task.answers[s]]
        pos = w[s] > 0
        tot -= float(np.sum(w[s][pos] * np.log(np.where(p[pos] > 0, p[pos], np.nan))))
    return tot


def _mode_names(task) -> list:
    return [f"s{i}" for i in range(task.S)] + [f"r{i}" for i in range(task.R)] + ["bias"]


def _mode_rates(task, w, E: Escaped) -> np.ndarray:
    """(S + R + 1,) rates of the modes at the saddle of E: subjects, relations, bias (the faster of EOS and noise)."""
    lam = rates_at(task, w, saddle_predictor(task, w, E))
    S, R = task.S, task.R
    return np.concatenate([lam[:S + R], [max(lam[S + R], lam[S + R + 1])]])


@dataclass(frozen=True)
class Step:
    """One escape of the leading-order schedule: the modes that escape at time ``t`` and the level after it.

    rates: the escaping modes' rates at the saddle they leave; efolds: the resolution of the plateau that
    follows (e-folds of the next mode's growth left when this escape happens; inf after the last).
    """

    t: float
    modes: tuple
    rates: tuple
    level: float
    efolds: float


def escape_schedule(task, weights=None, alpha: float = 1e-5, *, max_steps: int | None = None) -> list:
    """Leading-order saddle-to-saddle schedule: a list of :class:`Step` in time order (module docstring).

    Ends when the level reaches 0 or no remaining mode grows. O((S + R) S R |A|) work per step.
    """
    w = task.fact_weights if weights is None else np.asarray(weights, dtype=np.float64)
    if not (alpha > 0 and math.isfinite(alpha)) or alpha >= 1:
        raise ValueError(f"alpha = {alpha!r}: the schedule needs 0 < alpha < 1 (it is an expansion in log(1/alpha))")
    S, R = task.S, task.R
    names = _mode_names(task)
    need = -math.log(alpha)  # e-folds to grow from alpha to O(1) (not log(1/alpha): 1/alpha overflows below 1e-308)
    grown = np.zeros(S + R + 1)
    done = np.zeros(S + R + 1, bool)
    E = Escaped.none(S, R)
    t = 0.0
    steps: list = []
    limit = S + R + 1 if max_steps is None else max_steps
    while len(steps) < limit:
        lam = _mode_rates(task, w, E)
        live = (~done) & (lam > 1e-14 * max(float(lam.max()), 1e-300))
        if not live.any():
            break
        dt = np.full(lam.size, np.inf)
        dt[live] = (need - grown[live]) / lam[live]
        dt = np.maximum(dt, 0.0)
        first = float(dt.min())
        group = live & (dt <= first * (1 + _TIE) + 1e-300)
        t += first
        grown[live] += lam[live] * first
        if steps:  # the previous plateau's resolution: what the escaping mode still had to grow then
            prev = steps[-1]
            steps[-1] = Step(prev.t, prev.modes, prev.rates, prev.level, float(lam[group].max() * first))
        done |= group
        E = Escaped(done[:S].copy(), done[S:S + R].copy(), bool(done[S + R]))
        lv = level(task, w, E)
        steps.append(Step(t, tuple(names[i] for i in np.flatnonzero(group)),
                          tuple(float(x) for x in lam[group]), lv, math.inf))
        if lv <= 0.0:
            break
    return steps


@dataclass(frozen=True)
class StaircaseLevel:
    """One plateau of the staircase: its loss ``level`` and ``t_end``, the first time the loss falls halfway to
    the next level (None for the last). ``t_end_leading``: the leading-order estimate; ``escaping``: the modes
    whose escape ends the plateau; ``efolds``: its resolution (inf for the first and the last)."""

    level: float
    t_end: float | None
    t_end_leading: float | None
    escaping: tuple
    efolds: float

    def to_dict(self) -> dict:
        f = (lambda x: None if x is None or not math.isfinite(x) else float(x))
        return dict(level=float(self.level), t_end=f(self.t_end), t_end_leading=f(self.t_end_leading),
                    escaping=list(self.escaping), efolds=f(self.efolds))


@dataclass
class Staircase:
    """The staircase of a configuration: ``levels`` (list of :class:`StaircaseLevel`, log|A| first, 0 last),
    the full leading-order ``schedule``, how the exact times were obtained (``exact_method``) and, when exact
    times are present, the relative errors of the leading-order ones."""

    levels: list
    schedule: list = field(repr=False)
    alpha: float = 0.0
    exact_method: str | None = None

    def to_list(self) -> list:
        return [lv.to_dict() for lv in self.levels]

    def leading_errors(self) -> list:
        """Relative error (t_end_leading - t_end) / t_end per level with both times (None otherwise)."""
        return [None if lv.t_end is None or lv.t_end_leading is None else (lv.t_end_leading - lv.t_end) / lv.t_end
                for lv in self.levels]


def _resolved(schedule: list, resolve: float) -> list:
    """Indices of the schedule's steps whose level is a resolved plateau (the last step always counts)."""
    keep = []
    for k, st in enumerate(schedule):
        last = k == len(schedule) - 1
        if last or st.efolds >= resolve:
            keep.append(k)
    return keep


def staircase(task, weights=None, alpha: float = 1e-5, *, exact: bool = True, resolve: float = RESOLVED_EFOLDS,
              flow_config=None, method: str = "auto", schedule: list | None = None) -> Staircase:
    """The staircase of plateaus (module docstring). ``task``: a models.task.Task; ``weights`` (S, R) or None.

    exact: also compute each ``t_end`` on the exact flow (``flow_config``: the dynamics.FlowConfig to integrate
    when the two-mode reduction does not apply; by default the task's own config at this alpha).
    schedule: this configuration's :func:`escape_schedule`, when the caller has it already.
    """
    w = task.fact_weights if weights is None else np.asarray(weights, dtype=np.float64)
    sched = escape_schedule(task, w, alpha) if schedule is None else schedule
    top = math.log(task.num_answers)
    keep = _resolved(sched, resolve)
    levels_ = [top] + [sched[k].level for k in keep]
    eff = [math.inf] + [sched[k].efolds if k != len(sched) - 1 else math.inf for k in keep]
    # drop levels equal to the previous one (an escape that does not lower the loss)
    lv, ef, idx = [levels_[0]], [eff[0]], [-1]
    for L, e, k in zip(levels_[1:], eff[1:], keep):
        if L < lv[-1] - 1e-12 * max(1.0, lv[-1]):
            lv.append(L)
            ef.append(e)
            idx.append(k)
    thresholds = [0.5 * (a + b) for a, b in zip(lv[:-1], lv[1:])]
    lead, escaping = [], []
    for theta in thresholds:
        j = next((k for k, st in enumerate(sched) if st.level <= theta), None)
        lead.append(None if j is None else sched[j].t)
        escaping.append(() if j is None else sched[j].modes)
    exact_t, used = [None] * len(thresholds), None
    if exact and thresholds:
        exact_t, used = exact_crossings(task, w, alpha, thresholds, flow_config=flow_config, method=method)
    out = [StaircaseLevel(L, exact_t[i] if i < len(thresholds) else None,
                          lead[i] if i < len(thresholds) else None,
                          escaping[i] if i < len(thresholds) else (), ef[i])
           for i, L in enumerate(lv)]
    return Staircase(out, sched, alpha, used)


def reducible(task, weights) -> bool:
    """True where the two-mode reduction is exact: uniform weights on a structured or balanced table."""
    cfg = task.config
    if cfg.facts not in ("structured", "balanced") or task.S % task.D:
        return False
    w = np.asarray(weights, dtype=np.float64)
    return bool(np.allclose(w, 1.0 / (task.S * task.R), rtol=1e-12, atol=0))


EXACT_METHODS = ("auto", "quadrature", "reduced", "full")


def pick_method(task, weights, flow_config, method: str) -> str:
    """The exact method: ``auto`` is quadrature for uniform data, reduced for large flows it shrinks, else full."""
    from analysis.theory.lumped import worth_reducing

    if method not in EXACT_METHODS:
        raise ValueError(f"method = {method!r}; choose one of {', '.join(EXACT_METHODS)}")
    if flow_config is not None:
        if method not in ("auto", "full"):
            raise ValueError(f"method = {method!r} with a flow_config: a flow_config asks for the full flow")
        return "full"
    if method == "quadrature" and not reducible(task, weights):
        raise ValueError("method = 'quadrature' needs uniform weights on a structured or balanced table")
    if method != "auto":
        return method
    if reducible(task, weights):
        return "quadrature"
    return "reduced" if worth_reducing(task, weights) else "full"


def exact_crossings(task, weights, alpha: float, thresholds, *, flow_config=None, method: str = "auto") -> tuple:
    """First times the exact loss falls to each threshold, and the method used: 'two-mode quadrature'
    (uniform data), 'symmetry-reduced flow' (analysis.theory.lumped, where it evaluates >= 4x fewer logits) or
    'full flow' (the configuration's own weights: ``flow_config`` or the task's)."""
    thr = [float(x) for x in thresholds]
    how = pick_method(task, weights, flow_config, method)
    if how == "quadrature":
        from analysis.theory.modes import Modes
        from analysis.theory.reduced_solution import ReducedSolution

        md = Modes(np.full(len(thr), task.S), task.R, task.D, alpha)
        t = ReducedSolution(md).crossing_time(np.array(thr))
        return [float(x) for x in t], "two-mode quadrature"
    from analysis.theory.lumped import run_lumped

    if how == "reduced":
        sol, _ = run_lumped(task, weights, alpha, levels=thr)
        return [None if x is None else float(x) for x in sol.events["loss"]], "symmetry-reduced flow"
    from dynamics import FlowConfig, run_flow

    if flow_config is None:
        cfg = FlowConfig(task=task.config, alpha=alpha)  # the task's own weights
    else:
        from models.task import make_task

        cfg = flow_config
        if not np.allclose(weights, make_task(cfg.task).fact_weights, rtol=1e-12, atol=1e-300):
            raise ValueError("exact_crossings: the flow configuration's weights differ from the staircase's; pass "
                             "the FlowConfig of the same task")
    lo = min(thr)
    cfg = _with_target(cfg, lo)
    run = run_flow(cfg, levels=tuple(thr))
    return [None if run.crossings.get(x) is None else float(run.crossings[x]) for x in thr], "full flow"


def _with_target(cfg, lowest: float):
    """The flow config, run at least until the loss reaches the lowest threshold."""
    import dataclasses

    target = cfg.resolved_loss_target
    if target > lowest:
        cfg = dataclasses.replace(cfg, loss_target=0.5 * lowest)
    return cfg


def describe_modes(modes) -> str:
    """A short text for a group of modes: 's3', 'r0 r1 r2', or '1024 subjects (s0 ... s1023)' for long groups."""
    modes = list(modes)
    if len(modes) <= 6:
        return " ".join(modes)
    kinds = {"s": "subjects", "r": "relations"}
    parts = []
    for prefix, word in kinds.items():
        group = [m for m in modes if m.startswith(prefix)]
        if group:
            parts.append(f"{len(group)} {word} ({group[0]} ... {group[-1]})" if len(group) > 3 else " ".join(group))
    parts += [m for m in modes if m[0] not in kinds]
    return ", ".join(parts)
