"""Trainers of both models (issue 4): full-batch GD on the exact population loss (model 1),
online SGD on sampled batches (models 1 and 2) and Adam (model 2).

Sampled training runs in float32 on a torch device; the training step keeps everything on
the device (sampling with a device ``torch.Generator``, the running training loss summed in
a device tensor) and on CUDA is captured once in a CUDA graph and replayed, so the only
host synchronisations are the evaluations every ``eval_every`` steps. The same code runs on
the CPU (eagerly).

Evaluation (every ``eval_every`` steps and at the last step):
- sampled trainers: a fixed held-out set of ``eval_size`` sequences (drawn once with its own
  seed) -> loss, relation-only loss, subject-only loss, accuracy, hallucination gap (SPEC §3),
  each a mean over the held-out sequences;
- GD (model 1): the exact population metrics of :class:`models.population.PopulationObjective`.

Divergence: both trainers stop at the first loss that is not finite or above DIVERGENCE_FACTOR x
max(log|A|, the loss at step 0) (the sampled trainers: any batch loss, tracked on the device and read at
evaluations; GD: the exact loss of every step), keep the history before it and return status "diverged"
with ``diverged_at`` (the step); "completed" otherwise.
"""
from __future__ import annotations

import bisect
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from common.errors import ConfigError, check_choice, check_device, check_int, check_positive
from models.linear import INIT_KINDS, init_linear
from models.modules import LinearAttentionModel, SoftmaxAttentionModel
from models.population import PopulationObjective
from models.sampler import Batch, TaskSampler
from models.task import MAX_SEED, Task, TaskConfig, make_task

from dynamics.choices import MODELS, OPTIMIZERS
from dynamics.threads import torch_threads
from dynamics.flow.trajectory import Trajectory

LR_MAX = 1e30  # a step size the float32 trainers can multiply a gradient by
MAX_THREADS = 1024  # torch's thread pool crashes (segfault) when asked for ~1e5 threads
HISTORY_COLUMNS = ("step", "loss", "relation_loss", "subject_loss", "accuracy", "hallucination_gap", "p_true",
                   "train_loss")
METRICS = HISTORY_COLUMNS[1:7]  # p_true: mean probability of the true answer (informative where accuracy is not)
_NEVER = 2**62  # "no bad loss yet" in the sampled trainer's device-side divergence tracking
# Divergence: a loss that is not finite, or above DIVERGENCE_FACTOR x max(log|A|, the loss at step 0). Training
# starts near the uniform prediction (loss log|A|); a stable step size never multiplies the loss by 100, while a
# far too large one can keep it finite but huge (model 2 at lr 1e6: 2e5 nats, its logits bounded by the unit
# embeddings). The trainers stop there and report status "diverged".
DIVERGENCE_FACTOR = 100.0


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU. Refuses a CUDA device that is absent."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return check_device("device", device, also="auto")


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Validated at construction.

    model: ``linear`` (model 1) or ``softmax`` (model 2). optimizer: ``gd`` (model 1 only: full-batch
    gradient descent on the exact population loss), ``sgd`` (online, a fresh batch each step) or
    ``adam`` (model 2 only). lr: step size; batch: sequences per step; steps: number of steps.
    init / init_scale: model 1 ``balanced`` | ``uniform`` with scale alpha (as the flow);
    model 2: std of W_KQ, W_OV entries is init_scale / sqrt(d). d: model 2 embedding dimension (default
    256, the paper figure's; at 64 the head shows both plateaus but its loss stalls above 0.3 nats).
    eval_every: evaluate every this many steps; eval_geometric: also this many evaluations per doubling of
    the step count (steps 1, 2, 3, 4, 5, 6, 8, ... rounded from 2^(i/g); 0: none), so that a log-step axis
    shows the early steps; eval_size: held-out sequences (>= 8192).
    eps_conv: loss level that counts as converged (t3). device: auto | cpu | cuda[:i].
    cuda_graph: capture the training step in a CUDA graph on CUDA devices.
    manual_grad: model 2's gradient by :meth:`SoftmaxAttentionModel.loss_and_grad_` (hand-written, fewer
    kernels; tested against autograd) instead of autograd. (Model 1's SGD step is always hand-written.)
    threads: CPU intra-op threads while training (0: torch's default). 1 is fastest for these small
    matrices and avoids spin-waiting when the machine is shared.
    """

    task: TaskConfig = field(default_factory=TaskConfig)
    model: str = "linear"
    optimizer: str = "sgd"
    lr: float = 0.1
    batch: int = 1024
    steps: int = 1000
    init: str = "uniform"
    init_scale: float = 1e-5
    d: int = 256
    seed: int = 0
    eval_every: int = 50
    eval_geometric: int = 0
    eval_size: int = 8192
    eps_conv: float = 1e-2
    device: str = "auto"
    cuda_graph: bool = True
    threads: int = 1
    manual_grad: bool = True

    def __post_init__(self):
        if not isinstance(self.task, TaskConfig):
            raise ConfigError("task must be a TaskConfig")
        check_choice("model", self.model, MODELS)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        if self.optimizer == "gd" and self.model != "linear":
            raise ConfigError("optimizer = 'gd' (exact population loss) exists for model = 'linear' only; "
                              "use sgd or adam for the softmax model")
        if self.optimizer == "adam" and self.model != "softmax":
            raise ConfigError("optimizer = 'adam' is offered for model = 'softmax' only; use gd or sgd for "
                              "the linear model")
        object.__setattr__(self, "lr", check_positive("lr", self.lr, maximum=LR_MAX,
                                                      why="larger steps overflow float32, the sampled trainers' type"))
        for name, lo in (("batch", 1), ("steps", 1), ("d", 1), ("eval_every", 1), ("eval_geometric", 0),
                         ("eval_size", 8192)):
            object.__setattr__(self, name, check_int(name, getattr(self, name), lo))
        object.__setattr__(self, "seed", check_int("seed", self.seed, 0, MAX_SEED))
        object.__setattr__(self, "threads", check_int("threads", self.threads, 0, MAX_THREADS))
        check_choice("init", self.init, INIT_KINDS)  # model 2 does not use it, but a typo is still refused
        if self.model == "linear":
            object.__setattr__(self, "init_scale", check_positive("init_scale", self.init_scale))
        else:
            object.__setattr__(self, "init_scale", check_positive("init_scale", self.init_scale, allow_zero=True))
        object.__setattr__(self, "eps_conv", check_positive("eps_conv", self.eps_conv))
        resolve_device(self.device)

    def to_dict(self) -> dict:
        return asdict(self)

    def memory_estimate_bytes(self, compare_flow: bool = False) -> dict:
        """Rough peak memory of the run, before anything is allocated: ``{"host": bytes, "device": bytes}``
        (on the CPU both are this machine's memory). Counted: the task tables (S x R answers and weights,
        R x |A| p(a|r)); sampled trainers: parameters, their gradients and optimizer state, the work arrays of
        one step (model 1: |A| x |V| products and gradients, batch x |V| token counts, batch x |A| logits;
        model 2: |V| x |V| and |V| x |A| tables, batch x T scores and batch x |V| weights), the held-out set
        (eval_size x T tokens) and one evaluation chunk; GD: the exact objective (S x |A| targets, the flow's
        work arrays); with ``compare_flow`` the exact flow's own estimate (FlowConfig.memory_estimate_bytes)."""
        t = self.task
        S, R, D, T, N = t.S, t.R, t.D, t.T, t.N
        A, V, C = R * D, S + R + N + 1, S + R + 2
        n, E, d = self.batch, self.eval_size, self.d
        ch = min(E, 1 << 16)  # HeldOutEvaluator's chunk
        host = 8 * (3 * S * R + R * A)  # task: answers, fact weights, p(a|r)
        if self.optimizer == "gd":
            dev = 8 * (S * A + 2 * R * A + 16 * C * A + 4 * S * R * R + 3 * (1 << 22))
        else:
            dev = E * (2 * 8 * T + 32) + ch * (20 * A + 8 * V + 8 * T) + 4 * R * A  # held-out set, chunk, p(a|r)
            if self.model == "linear":
                host += 8 * (C * A + A * V)  # init_linear then expand, float64
                dev += 4 * 6 * A * V + n * (4 * V + 12 * A + 20 * (T - 3) + 4 * N + 32)
            else:
                host += 8 * (V * d + A * d + 2 * d * d)  # embeddings and initial weights drawn in float64
                states = 2 + 2 * (self.optimizer == "adam")  # parameters, gradients, Adam's two moments
                dev += 4 * (V * d + A * d + 2 * states * d * d + 2 * V * V + 2 * V * A + 2 * V * d)
                dev += n * (2 * 8 * T + 4 * 4 * T + 5 * 4 * V + 3 * 4 * A)
        if compare_flow and self.model == "linear":
            from dynamics.flow.config import FlowConfig

            flow = FlowConfig(task=t, init=self.init, alpha=self.init_scale).memory_estimate_bytes()
            if resolve_device(self.device).type == "cpu" or self.optimizer == "gd":
                dev = max(dev, flow)
            else:
                host = max(host, flow)
        return dict(host=int(host), device=int(dev))

    def check_memory(self, compare_flow: bool = False) -> None:
        """Raise ConfigError, with the estimate, if the run would not fit in this machine's (or GPU's) memory."""
        from dynamics.flow.config import available_memory_bytes

        est = self.memory_estimate_bytes(compare_flow)
        dev = torch.device("cpu") if self.optimizer == "gd" and self.device == "auto" else resolve_device(self.device)
        have = available_memory_bytes()
        t = self.task
        what = f"model = {self.model}, optimizer = {self.optimizer}, S = {t.S}, R = {t.R}, D = {t.D}"
        if self.optimizer == "gd":
            hint = "reduce S, R or D"
        else:
            what += (f", T = {t.T}, batch = {self.batch}, eval_size = {self.eval_size}"
                     + (f", d = {self.d}" if self.model == "softmax" else ""))
            hint = "reduce S, R, D, --batch, --eval-size" + (" or --d" if self.model == "softmax" else "")
        if dev.type == "cuda":
            free, _ = torch.cuda.mem_get_info(dev)
            if est["device"] > 0.9 * free:
                raise ConfigError(f"{what} needs about {est['device'] / 2**30:,.1f} GiB on {dev} but it has "
                                  f"{free / 2**30:.1f} GiB free; {hint}")
            need = est["host"]
        else:
            need = est["host"] + est["device"]
        if need > 0.8 * have:
            raise ConfigError(f"{what} needs about {need / 2**30:,.1f} GiB but this machine has "
                              f"{have / 2**30:.1f} GiB available; {hint}")


# ----------------------------------------------------------------------------- evaluation
class HeldOutEvaluator:
    """Metrics of SPEC §3 averaged over a fixed held-out set of sequences (drawn once, seeded).

    weights: optional (S, R) fact weights v(s, r) (SPEC §6): the sequences' facts are drawn from v and the
    hallucination gap uses p_v(a|r); default the task's p(s) q(r)."""

    def __init__(self, task: Task, size: int, device, seed: int, chunk: int = 1 << 16, weights=None):
        self.task = task
        sampler = TaskSampler(task, device=device, seed=seed, weights=weights)
        self.batch: Batch = sampler.sample(size)
        self.chunk = chunk
        dev = torch.device(device)
        self.answers = sampler.answers  # (S, R)
        P = task.p_answer_given_relation(weights)  # (R, |A|) p(a|r) (under v when given)
        with np.errstate(divide="ignore", invalid="ignore"):
            negH = np.where(P > 0, P * np.log(P), 0.0).sum(1)  # (R,)
        self.P = torch.as_tensor(P, dtype=torch.float32, device=dev)
        self.negH = torch.as_tensor(negH, dtype=torch.float32, device=dev)

    def metric_sums(self, logits: torch.Tensor, b: Batch) -> torch.Tensor:
        """(6,) sums over the batch of: loss, relation-only loss, subject-only loss, correct, gap, p_true."""
        n = logits.shape[0]
        R, D = self.task.R, self.task.D
        logp = torch.log_softmax(logits.float(), dim=1)  # (n, |A|)
        ce = -logp.gather(1, b.targets[:, None])[:, 0]  # (n,)
        blk = logp.view(n, R, D)[torch.arange(n, device=logp.device), b.r]  # (n, D) r's own block
        rel = -torch.logsumexp(blk, dim=1)  # (n,)
        subj = -torch.logsumexp(logp.gather(1, self.answers[b.s]), dim=1)  # (n,) answers of s, all relations
        target_logit = logits.gather(1, b.targets[:, None])[:, 0]  # (n,)
        best_other = logits.scatter(1, b.targets[:, None], -math.inf).amax(1)  # (n,)
        correct = (target_logit > best_other).float()  # (n,) strictly largest, as the population metric
        gap = self.negH[b.r] - (self.P[b.r] * logp).sum(1)  # (n,) KL(p(.|r) || p_hat)
        return torch.stack([ce.sum(), rel.sum(), subj.sum(), correct.sum(), gap.sum(), torch.exp(-ce).sum()])  # (6,)

    @torch.no_grad()
    def __call__(self, model) -> dict:
        b, n = self.batch, self.batch.tokens.shape[0]
        tot = torch.zeros(6, dtype=torch.float32, device=b.tokens.device)
        for lo in range(0, n, self.chunk):
            sl = slice(lo, min(n, lo + self.chunk))
            part = Batch(b.tokens[sl], b.targets[sl], b.s[sl], b.r[sl])
            tot += self.metric_sums(model(part.tokens), part)
        v = (tot.double() / n).tolist()
        return dict(loss=v[0], relation_loss=v[1], subject_loss=v[2], accuracy=v[3], hallucination_gap=v[4],
                    p_true=v[5])


class EvalSchedule:
    """The steps (counted from a stage's start) at which a trainer evaluates: multiples of ``every``, and
    with ``per_octave`` > 0 also round(2^(i / per_octave)) for i = 0, 1, ... (a geometric schedule)."""

    def __init__(self, every: int, per_octave: int, steps: int):
        self.every = every
        geo = set()
        if per_octave > 0 and steps > 0:
            i = 0
            while True:
                k = int(round(2.0 ** (i / per_octave)))
                if k > steps:
                    break
                geo.add(k)
                i += 1
        self.geo = sorted(geo)

    def next_after(self, offset: int) -> int:
        """The first evaluation offset strictly after ``offset``."""
        nxt = offset + self.every - offset % self.every
        j = bisect.bisect_right(self.geo, offset)
        return min(nxt, self.geo[j]) if j < len(self.geo) else nxt

    def __contains__(self, offset: int) -> bool:
        if offset % self.every == 0:
            return True
        j = bisect.bisect_left(self.geo, offset)
        return j < len(self.geo) and self.geo[j] == offset


# ----------------------------------------------------------------------------- trainers
@dataclass
class TrainResult:
    """One training run. history: a Trajectory (time column ``step``) of HISTORY_COLUMNS, plus ``flow_time``
    (= step * lr) for model 1; ``to_dataframe()`` gives pandas."""

    config: TrainConfig
    task: Task
    device: torch.device
    history: Trajectory
    train_seconds: float
    sequences_per_second: float | None
    steps_per_second: float
    model: object = field(repr=False, default=None)
    status: str = "completed"  # completed | diverged (a loss not finite or > DIVERGENCE_FACTOR x its start)
    diverged_at: int | None = None  # diverged: the first step whose loss was bad (updates made before it)

    def __repr__(self) -> str:
        c, t, h = self.config, self.config.task, self.history
        final = f"{h['loss'][-1]:.6g}" if len(h["loss"]) else "None"
        div = f", status='diverged', diverged_at={self.diverged_at}" if self.status == "diverged" else ""
        return (f"TrainResult(model={c.model!r}, optimizer={c.optimizer!r}, lr={c.lr:g}, S={t.S}, R={t.R}, "
                f"D={t.D}, steps={c.steps}, device={self.device.type!r}, final_loss={final}{div}, "
                f"steps_per_second={self.steps_per_second:.4g})")

    def to_dataframe(self):
        """The history as a pandas DataFrame, one row per evaluation."""
        return self.history.to_dataframe()


@dataclass(frozen=True)
class StageOutcome:
    """One stage of :func:`train_schedule`: steps [step_start, step_end] and why it ended: ``time`` (its
    until_time, round(time / lr) steps), ``loss`` (until_loss reached at an evaluation), ``steps`` (the
    config's ``steps``, the most any one stage may take) or ``diverged``; ``weights`` its (S, R) training
    weights."""

    name: str
    index: int
    step_start: int
    step_end: int
    reason: str
    weights: np.ndarray = field(repr=False, compare=False)

    @property
    def steps(self) -> int:
        return self.step_end - self.step_start


@dataclass(repr=False)
class ScheduleResult(TrainResult):
    """A :func:`train_schedule` run. Its history has, besides the TrainResult columns (whose metrics are on
    the ``train`` set, the current stage's weights), ``stage`` (stage index of the row) and
    ``<set>_<metric>`` for every other evaluation set (NaN while a set is empty). Every stage has a row at
    its start and at its end, so a boundary step appears twice (end of one stage, start of the next), as in
    the flow's trajectory. ``stages``: a StageOutcome per stage run; ``schedule``: the Stage objects."""

    stages: tuple = ()
    schedule: tuple = field(default=(), repr=False)
    eval_sets: tuple = ()


@dataclass(frozen=True)
class _Leg:
    """One stage as the trainers' run loop sees it: at most ``steps`` steps, ending early when the loss on
    evaluation set ``on`` is <= ``loss`` at an evaluation, else with ``end_reason``. ``weights``: training
    weights; ``sets``: name -> (S, R) evaluation weights (None: empty). The plain run is one leg with
    ``sets`` None (training metrics only, the history of HISTORY_COLUMNS)."""

    steps: int
    index: int = 0
    name: str = ""
    weights: np.ndarray | None = None
    loss: float | None = None
    on: str = "train"
    end_reason: str = "steps"
    sets: dict | None = None

    def reached(self, m: dict) -> bool:
        """Whether evaluation ``m`` (set name -> metrics) ends this leg by its loss rule."""
        return self.loss is not None and m.get(self.on) is not None and m[self.on]["loss"] <= self.loss


def _new_history(legs) -> dict:
    hist = {k: [] for k in HISTORY_COLUMNS}
    if legs[0].sets is not None:
        hist["stage"] = []
        for name in legs[0].sets:
            if name != "train":
                hist.update({f"{name}_{k}": [] for k in METRICS})
    return hist


def _append_row(hist: dict, step: int, leg: _Leg, m: dict, train_loss: float) -> None:
    """One history row: m is set name -> metrics (an empty set absent); the train set's are the plain columns."""
    hist["step"].append(step)
    for k in METRICS:
        hist[k].append(m["train"][k])
    hist["train_loss"].append(train_loss)
    if leg.sets is not None:
        hist["stage"].append(leg.index)
        for name in leg.sets:
            if name != "train":
                d = m.get(name)
                for k in METRICS:
                    hist[f"{name}_{k}"].append(math.nan if d is None else d[k])


def _finish(legs, outcomes, **kw) -> TrainResult:
    if legs[0].sets is None:
        return TrainResult(**kw)
    return ScheduleResult(**kw, stages=tuple(outcomes))


class SampledTrainer:
    """Online SGD (models 1, 2) or Adam (model 2) in float32 on fresh batches of the sampler.

    weights: optional (S, R) fact weights to sample from (SPEC §6; default the task's p(s) q(r));
    :meth:`set_weights` switches them, keeping the model, the optimizer state and the generator."""

    def __init__(self, config: TrainConfig, task: Task | None = None, weights=None):
        self.config = c = config
        self.task = task if task is not None else make_task(c.task)
        self.device = resolve_device(c.device)
        dev = self.device
        torch.manual_seed(c.seed)
        if c.model == "linear":
            self.model = LinearAttentionModel(self.task, c.init, c.init_scale, dtype=torch.float32, device=dev)
        else:
            self.model = SoftmaxAttentionModel(self.task, c.d, c.init_scale, seed=c.seed, dtype=torch.float32,
                                               device=dev)
        self.params = [p for p in self.model.parameters()]
        self.sampler = TaskSampler(self.task, device=dev, seed=c.seed + 1, weights=weights)
        self.evaluator = HeldOutEvaluator(self.task, c.eval_size, dev, seed=c.seed + 1_000_003)
        self._set_evaluators = {}  # set name -> (weights, HeldOutEvaluator) of staged runs
        self.adam = None
        if c.optimizer == "adam":
            self.adam = torch.optim.Adam(self.params, lr=c.lr, capturable=(dev.type == "cuda"))
        self.train_sum = torch.zeros((), dtype=torch.float32, device=dev)  # running sum of batch losses
        # divergence, tracked on the device (no host sync in the step; read at evaluations): steps taken and
        # the first step whose batch loss was not finite (_NEVER while none)
        self._steps_taken = torch.zeros((), dtype=torch.int64, device=dev)
        self._first_bad = torch.full((), _NEVER, dtype=torch.int64, device=dev)
        self._never = self._first_bad.clone()
        self._limit = torch.full((), math.inf, dtype=torch.float32, device=dev)  # set after the step-0 evaluation
        self.graph = None
        self.linear_fast = c.model == "linear"
        if self.linear_fast:
            self._rows = torch.arange(c.batch, device=dev)  # (n,)
            self._C = torch.zeros(c.batch, self.task.vocab_size, dtype=torch.float32, device=dev)  # (n, |V|)
            self._C[:, self.task.eos] = 1.0
            self._minus_one = torch.full((c.batch, 1), -1.0, dtype=torch.float32, device=dev)  # (n, 1)

    def _linear_step_body(self):
        """Model 1 SGD step with the gradient written out (bag of tokens, no autograd).

        Same sampled distribution and same gradient as autograd on :class:`LinearAttentionModel`
        (tests compare both): logits = C @ U^T with C (n, |V|) token counts and U = W*K;
        dL/dlogits = (softmax - onehot)/n; dL/dU = G^T C; dL/dW = dL/dU * K; dL/dK = sum_a dL/dU * W.
        """
        c, t, m = self.config, self.task, self.model
        n, S, R, N = c.batch, t.S, t.R, t.N
        s, r, y, cn = self.sampler.sample_counts(n)  # (n,) (n,) (n,) (n, N)
        C = self._C  # (n, |V|) token counts; EOS column stays 1
        # scatter_ / scatter_add_ with device tensors only: no host tensor, so the body is CUDA-graph capturable
        C[:, :S + R].zero_()
        C.scatter_(1, s[:, None], 1.0)
        C.scatter_(1, (r + S)[:, None], 1.0)
        C[:, S + R:S + R + N].copy_(cn)
        W, K = m.W.data, m.K.data  # (|A|, |V|), (|V|,)
        U = W * K  # (|A|, |V|)
        logits = C @ U.T  # (n, |A|)
        logp = torch.log_softmax(logits, dim=1)  # (n, |A|)
        loss = -logp.gather(1, y[:, None]).mean()  # batch cross-entropy (for the running train loss)
        G = logp.exp_()  # (n, |A|) softmax
        G.scatter_add_(1, y[:, None], self._minus_one)  # softmax - onehot
        dU = (G.T @ C).div_(n)  # (|A|, |V|) dL/du[a, z]
        gK = (dU * W).sum(0)  # (|V|,)
        W.sub_(dU * K, alpha=c.lr)
        K.sub_(gK, alpha=c.lr)
        self.train_sum.add_(loss)
        self._track(loss)

    def _track(self, loss):
        """Count the step and remember it if its batch loss is not finite or above the divergence limit
        (device ops only: no host sync, graph-capturable)."""
        self._steps_taken.add_(1)
        bad = torch.where(loss <= self._limit, self._never, self._steps_taken)  # NaN <= x is False
        torch.minimum(self._first_bad, bad, out=self._first_bad)

    def _step_body(self):
        if self.linear_fast:
            return self._linear_step_body()
        b = self.sampler.sample(self.config.batch)
        if self.config.manual_grad:  # hand-written gradient (tested against autograd), writes p.grad
            loss = self.model.loss_and_grad_(b.tokens, b.targets)
        else:
            logits = self.model(b.tokens)  # (batch, |A|)
            loss = torch.nn.functional.cross_entropy(logits, b.targets)
            loss.backward()
        with torch.no_grad():
            if self.adam is not None:
                self.adam.step()
            else:
                for p in self.params:
                    p.add_(p.grad, alpha=-self.config.lr)
            self.train_sum.add_(loss.detach())
            self._track(loss.detach())

    def step(self):
        """One training step (a CUDA graph replay once captured)."""
        if self.graph is not None:
            self.graph.replay()
            return
        if not self.linear_fast:
            for p in self.params:
                p.grad = None
        self._step_body()

    def capture(self, warmup: int = 3):
        """Capture the step in a CUDA graph (CUDA devices only). Warm-up steps count as training steps."""
        if self.device.type != "cuda" or not self.config.cuda_graph:
            return 0
        s = torch.cuda.Stream(self.device)
        s.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(s):
            for _ in range(warmup):
                for p in self.params:
                    p.grad = None
                self._step_body()
        torch.cuda.current_stream(self.device).wait_stream(s)
        g = torch.cuda.CUDAGraph()
        if hasattr(g, "register_generator_state"):
            g.register_generator_state(self.sampler.generator)
        for p in self.params:
            p.grad = None
        with torch.cuda.graph(g):
            self._step_body()
        self.graph = g
        return warmup + 1  # the capture itself does not run the step; warm-up steps did

    def evaluate(self) -> dict:
        self.model.eval()
        m = self.evaluator(self.model)
        self.model.train()
        return m

    def set_weights(self, weights) -> None:
        """Sample the facts from (S, R) ``weights`` from now on (None: the task's p(s) q(r)). A captured CUDA
        graph keeps working between two weightings (the sampler rewrites its CDF in place); it is dropped
        (captured again) when the sampler changes path between the product and weights."""
        if (weights is None) != (self.sampler.cdf_w is None):
            self.graph = None
        self.sampler.set_weights(weights)

    def _evaluators(self, leg: _Leg) -> dict:
        """set name -> HeldOutEvaluator for the leg: the plain run's evaluator, or for a staged run one per
        non-empty evaluation set, on eval_size held-out sequences drawn from that set's weights (seeded;
        kept while a set's weights do not change)."""
        if leg.sets is None:
            return {"train": self.evaluator}
        c, out = self.config, {}
        for j, (name, v) in enumerate(leg.sets.items()):
            if v is None:
                continue
            old = self._set_evaluators.get(name)
            if old is None or not np.array_equal(old[0], v):
                seed = c.seed + 1_000_003 + 1 + j + 4096 * leg.index
                old = (v, HeldOutEvaluator(self.task, c.eval_size, self.device, seed=seed, weights=v))
                self._set_evaluators[name] = old
            out[name] = old[1]
        return out

    def run(self, progress: bool | None = None, plan=None) -> TrainResult:
        """Train for ``config.steps`` steps (plan: the stages of :func:`train_schedule`, built there)."""
        with torch_threads(self.config.threads if self.device.type == "cpu" else 0):
            return self._run(progress, plan)

    def _run(self, progress, plan=None):
        from common.progress import Progress

        c = self.config
        legs = tuple(plan) if plan is not None else (_Leg(steps=c.steps),)
        hist = _new_history(legs)
        last_sum, last_step = 0.0, 0
        diverged_at = None
        evaluators = {}

        def record(step, leg) -> dict | None:
            """Append the evaluation at ``step`` and return it (set name -> metrics); None (nothing appended) once
            a loss is not finite or above the divergence limit (here or in a batch since the last evaluation)."""
            nonlocal last_sum, last_step, diverged_at
            if leg.sets is None:
                m = {"train": self.evaluate()}
            else:
                self.model.eval()
                m = {name: ev(self.model) for name, ev in evaluators.items()}
                self.model.train()
            tot = float(self.train_sum)  # host syncs: only at evaluations
            first_bad = int(self._first_bad)  # 1-based step whose batch loss was not finite or above the limit
            if first_bad != _NEVER or not math.isfinite(tot) or not m["train"]["loss"] <= float(self._limit):
                diverged_at = first_bad - 1 if first_bad != _NEVER else step
                return None
            if step == 0:
                self._limit.fill_(DIVERGENCE_FACTOR * max(self.task.log_A, m["train"]["loss"]))
            _append_row(hist, step, leg, m, (tot - last_sum) / (step - last_step) if step > last_step else math.nan)
            last_sum, last_step = tot, step
            return m

        t0 = time.perf_counter()
        train_time = 0.0

        def evaluate_at(step, leg) -> str | None:
            """Record the evaluation at ``step`` (outside the training time); the reason it ends the leg, if any."""
            nonlocal t0, train_time
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            train_time += time.perf_counter() - t0
            m = record(step, leg)  # stops at the first evaluation that finds a diverged loss
            t0 = time.perf_counter()
            return "diverged" if m is None else ("loss" if leg.reached(m) else None)

        step = 0
        outcomes = []
        # a bar on a terminal, a line every 30 s with ETA elsewhere (no carriage returns in log files)
        bar = Progress(sum(leg.steps for leg in legs), f"{c.model}/{c.optimizer}", enabled=progress)
        for leg in legs:
            if leg.sets is not None:
                self.set_weights(leg.weights)
            evaluators = self._evaluators(leg)
            start, end = step, step + leg.steps
            reason = evaluate_at(step, leg)
            if reason is None and self.graph is None and self.device.type == "cuda" and c.cuda_graph \
                    and end - step > 8:
                done = self.capture(warmup=3)
                step += done - 1  # warm-up steps trained the model; the capture did not
                bar.update(done - 1)
            sched = EvalSchedule(c.eval_every, c.eval_geometric, end - start)
            while reason is None and step < end:
                n = min(sched.next_after(step - start) - (step - start), end - step)
                for _ in range(n):
                    self.step()
                step += n
                bar.update(n)
                if (step - start) in sched or step == end:
                    reason = evaluate_at(step, leg)
            outcomes.append(StageOutcome(leg.name, leg.index, start, step, reason or leg.end_reason, leg.weights))
            if reason == "diverged":
                break
        bar.close()
        history = {k: np.asarray(v, dtype=np.float64) for k, v in hist.items()}
        if c.model == "linear":
            history["flow_time"] = history["step"] * c.lr
        train_time = max(train_time, 1e-12)
        return _finish(legs, outcomes, config=c, task=self.task, device=self.device,
                       history=Trajectory(history, "step"), train_seconds=train_time,
                       sequences_per_second=step * c.batch / train_time, steps_per_second=step / train_time,
                       model=self.model, status="completed" if diverged_at is None else "diverged",
                       diverged_at=diverged_at)


class GDTrainer:
    """Full-batch gradient descent of model 1 on the exact population loss, float64, same code as the flow.

    The compressed state (Wt (C, |A|), K (C,)) is updated with :meth:`PopulationObjective.value_and_grad`,
    whose rows are per real token (the noise row is the gradient of one noise token), so the step
    equals a GD step on the full parameters (W, K) (noise columns stay identical). Step k is flow time k*lr.
    weights: optional (S, R) fact weights of the objective (SPEC §6; default p(s) q(r)); :meth:`set_weights`
    switches them, keeping the state.
    """

    def __init__(self, config: TrainConfig, task: Task | None = None, weights=None):
        self.config = c = config
        self.task = task if task is not None else make_task(c.task)
        self.device = torch.device("cpu") if c.device == "auto" else resolve_device(c.device)
        self.obj = PopulationObjective(self.task, weights=weights, dtype=torch.float64, device=self.device)
        self.Wt, self.K = init_linear(self.task, c.init, c.init_scale, dtype=torch.float64, device=self.device)

    def set_weights(self, weights) -> None:
        """Descend the exact loss under (S, R) ``weights`` from now on (None: the task's p(s) q(r))."""
        self.obj = PopulationObjective(self.task, weights=weights, dtype=torch.float64, device=self.device)

    def step(self) -> float:
        """One GD step; returns the exact loss of the state it started from (computed with the gradient)."""
        loss, gW, gK = self.obj.value_and_grad(self.Wt, self.K)
        self.Wt.sub_(gW, alpha=self.config.lr)  # (C, |A|)
        self.K.sub_(gK, alpha=self.config.lr)  # (C,)
        return float(loss)

    def run(self, progress: bool | None = None, plan=None) -> TrainResult:
        """Train for ``config.steps`` steps (plan: the stages of :func:`train_schedule`, built there)."""
        with torch_threads(self.config.threads if self.device.type == "cpu" else 0):
            return self._run(progress, plan)

    def _run(self, progress, plan=None):
        from common.progress import Progress

        c = self.config
        legs = tuple(plan) if plan is not None else (_Leg(steps=c.steps),)
        hist = _new_history(legs)
        limit = math.inf  # DIVERGENCE_FACTOR x max(log|A|, L(0)) once L(0) is known
        sets = None  # staged runs: set name -> EvalSet of the current stage
        ev = 0.0

        def record(step, leg) -> dict | None:
            """Append the exact metrics at ``step`` and return them (set name -> metrics); None (nothing appended)
            if the loss is not finite or above the divergence limit."""
            nonlocal limit, ev
            e0 = time.perf_counter()
            m = {"train": self.obj.metrics(self.Wt, self.K)} if sets is None else \
                self.obj.metrics(self.Wt, self.K, sets=sets)
            ev += time.perf_counter() - e0
            if not m["train"]["loss"] <= limit:  # NaN <= x is False
                return None
            if step == 0:
                limit = DIVERGENCE_FACTOR * max(self.task.log_A, m["train"]["loss"])
            _append_row(hist, step, leg, m, m["train"]["loss"])
            return m

        t0 = time.perf_counter()
        diverged_at = None
        step = 0
        outcomes = []
        bar = Progress(sum(leg.steps for leg in legs), "linear/gd", enabled=progress)
        for leg in legs:
            if leg.sets is not None:
                self.set_weights(leg.weights)
                sets = {n: (self.obj.train_set if n == "train" else self.obj.eval_set(v))
                        for n, v in leg.sets.items() if v is not None}
            start, end = step, step + leg.steps
            m = record(step, leg)
            if m is None:
                diverged_at = step
            reason = "diverged" if m is None else ("loss" if leg.reached(m) else None)
            sched = EvalSchedule(c.eval_every, c.eval_geometric, end - start)
            while reason is None and step < end:
                k = step + 1
                if not self.step() <= limit:  # the loss of the state after k - 1 steps (CPU: no sync cost)
                    diverged_at, reason = k - 1, "diverged"
                    break
                step = k
                bar.update(1)
                if (k - start) in sched or k == end:
                    m = record(k, leg)
                    if m is None:
                        diverged_at, reason = k, "diverged"
                    elif leg.reached(m):
                        reason = "loss"
            outcomes.append(StageOutcome(leg.name, leg.index, start, step, reason or leg.end_reason, leg.weights))
            if reason == "diverged":
                break
        bar.close()
        train_time = time.perf_counter() - t0 - ev
        history = {k: np.asarray(v, dtype=np.float64) for k, v in hist.items()}
        history["flow_time"] = history["step"] * c.lr
        return _finish(legs, outcomes, config=c, task=self.task, device=self.device,
                       history=Trajectory(history, "step"), train_seconds=train_time, sequences_per_second=None,
                       steps_per_second=step / max(train_time, 1e-12), model=(self.Wt, self.K),
                       status="completed" if diverged_at is None else "diverged", diverged_at=diverged_at)


def train(config: TrainConfig, progress: bool | None = None, task: Task | None = None) -> TrainResult:
    """Run the trainer the config names and return its history."""
    trainer = GDTrainer(config, task) if config.optimizer == "gd" else SampledTrainer(config, task)
    return trainer.run(progress=progress)


def train_schedule(config: TrainConfig, stages, *, eval_sets=("train",), progress: bool | None = None,
                   task: Task | None = None) -> ScheduleResult:
    """Train through the stages of a multi-stage experiment (SPEC §6; :class:`dynamics.experiment.schedule.Stage`) in
    order, with one model and one optimizer state (and one sampling generator) carried from stage to stage.

    Each stage trains on its resolved Distribution w: sampled batches from w (SGD, Adam) or the exact
    population loss under w (GD). Stop rules:
    - ``time``: model 1 (whose step k is flow time k * lr): round(time / lr) steps; model 2 (no flow to
      pair with): ``time`` counts optimizer steps, round(time);
    - ``loss`` on set ``on``: checked at every evaluation (the stage's start, every ``eval_every`` steps
      counted from the stage's start, its end); the stage ends at the first evaluation whose loss on that set
      is <= the level. GD measures it with the exact population metrics of the set; the sampled trainers
      (SGD of either model, Adam) with the held-out evaluator, eval_size sequences drawn (seeded) from the
      set's weights, the numbers the history records;
    - every stage ends after at most ``config.steps`` steps (reason ``steps``).
    eval_sets: names of dynamics.experiment.schedule's built-in sets (``train``: the current stage's weights, ``all``,
    ``seen``, ``unseen``, ``top10``, ``middle``, ``bottom50``) or EvalSpec objects; ``train`` is always
    measured. Returns a :class:`ScheduleResult` (the history gets ``stage`` and, for model 1, ``flow_time``).
    """

    from dynamics.experiment.schedule import EvalSpec, checked_sets, checked_stages, stage_plans

    c = config
    stages = checked_stages(stages)
    checked = checked_sets(eval_sets, stages)
    specs = ["train"] + [e for e in checked if e != "train"]  # the train set's metrics are the plain columns
    task = task if task is not None else make_task(c.task)
    weights, plans = stage_plans(tuple(specs), stages, task)  # every recipe checked before any work
    legs = []
    for i, (st, w, sets) in enumerate(zip(stages, weights, plans)):
        steps, end = c.steps, "steps"
        if st.until.time is not None:
            per_step = c.lr if c.model == "linear" else 1.0  # model 2: until_time is a number of steps
            n = int(round(st.until.time / per_step))
            if n < 1:
                raise ConfigError(f"stage {st.name!r}: until_time = {st.until.time:g} is less than half a step "
                                  + (f"(lr = {c.lr:g}); lengthen the stage or lower lr" if c.model == "linear"
                                     else "(for the softmax model until_time counts steps)"))
            if n <= c.steps:
                steps, end = n, "time"
        legs.append(_Leg(steps=steps, index=i, name=st.name, weights=w, loss=st.until.loss, on=st.until.on,
                         end_reason=end, sets=sets))
    cls = GDTrainer if c.optimizer == "gd" else SampledTrainer
    result = cls(c, task, weights=weights[0]).run(progress=progress, plan=legs)
    result.schedule = stages
    result.eval_sets = tuple(e.name if isinstance(e, EvalSpec) else e for e in specs)
    return result
