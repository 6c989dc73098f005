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

from .choices import MODELS, OPTIMIZERS
from .config import FlowConfig
from .flow import run_flow
from .threads import torch_threads
from .trajectory import Trajectory

LR_MAX = 1e30  # a step size the float32 trainers can multiply a gradient by
MAX_THREADS = 1024  # torch's thread pool crashes (segfault) when asked for ~1e5 threads
HISTORY_COLUMNS = ("step", "loss", "relation_loss", "subject_loss", "accuracy", "hallucination_gap",
                   "train_loss")
METRICS = HISTORY_COLUMNS[1:6]
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
    eval_every: evaluate every this many steps; eval_size: held-out sequences (>= 8192).
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
        for name, lo in (("batch", 1), ("steps", 1), ("d", 1), ("eval_every", 1), ("eval_size", 8192)):
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
            from .config import FlowConfig

            flow = FlowConfig(task=t, init=self.init, alpha=self.init_scale).memory_estimate_bytes()
            if resolve_device(self.device).type == "cpu" or self.optimizer == "gd":
                dev = max(dev, flow)
            else:
                host = max(host, flow)
        return dict(host=int(host), device=int(dev))

    def check_memory(self, compare_flow: bool = False) -> None:
        """Raise ConfigError, with the estimate, if the run would not fit in this machine's (or GPU's) memory."""
        from .config import available_memory_bytes

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
    """Metrics of SPEC §3 averaged over a fixed held-out set of sequences (drawn once, seeded)."""

    def __init__(self, task: Task, size: int, device, seed: int, chunk: int = 1 << 16):
        self.task = task
        sampler = TaskSampler(task, device=device, seed=seed)
        self.batch: Batch = sampler.sample(size)
        self.chunk = chunk
        dev = torch.device(device)
        self.answers = sampler.answers  # (S, R)
        P = task.p_answer_given_relation()  # (R, |A|) p(a|r)
        with np.errstate(divide="ignore", invalid="ignore"):
            negH = np.where(P > 0, P * np.log(P), 0.0).sum(1)  # (R,)
        self.P = torch.as_tensor(P, dtype=torch.float32, device=dev)
        self.negH = torch.as_tensor(negH, dtype=torch.float32, device=dev)

    def metric_sums(self, logits: torch.Tensor, b: Batch) -> torch.Tensor:
        """(5,) sums over the batch of: loss, relation-only loss, subject-only loss, correct, gap."""
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
        return torch.stack([ce.sum(), rel.sum(), subj.sum(), correct.sum(), gap.sum()])  # (5,)

    @torch.no_grad()
    def __call__(self, model) -> dict:
        b, n = self.batch, self.batch.tokens.shape[0]
        tot = torch.zeros(5, dtype=torch.float32, device=b.tokens.device)
        for lo in range(0, n, self.chunk):
            sl = slice(lo, min(n, lo + self.chunk))
            part = Batch(b.tokens[sl], b.targets[sl], b.s[sl], b.r[sl])
            tot += self.metric_sums(model(part.tokens), part)
        v = (tot.double() / n).tolist()
        return dict(loss=v[0], relation_loss=v[1], subject_loss=v[2], accuracy=v[3], hallucination_gap=v[4])


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


class SampledTrainer:
    """Online SGD (models 1, 2) or Adam (model 2) in float32 on fresh batches of the sampler."""

    def __init__(self, config: TrainConfig, task: Task | None = None):
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
        self.sampler = TaskSampler(self.task, device=dev, seed=c.seed + 1)
        self.evaluator = HeldOutEvaluator(self.task, c.eval_size, dev, seed=c.seed + 1_000_003)
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

    def run(self, progress: bool | None = None) -> TrainResult:
        with torch_threads(self.config.threads if self.device.type == "cpu" else 0):
            return self._run(progress)

    def _run(self, progress):
        from tqdm.auto import tqdm

        c = self.config
        hist = {k: [] for k in HISTORY_COLUMNS}
        last_sum, last_step = 0.0, 0
        diverged_at = None

        def record(step) -> bool:
            """Append the evaluation at ``step``; False (nothing appended) once a loss is not finite or above
            the divergence limit (here or in a batch since the last evaluation)."""
            nonlocal last_sum, last_step, diverged_at
            m = self.evaluate()
            tot = float(self.train_sum)  # host syncs: only at evaluations
            first_bad = int(self._first_bad)  # 1-based step whose batch loss was not finite or above the limit
            if first_bad != _NEVER or not math.isfinite(tot) or not m["loss"] <= float(self._limit):
                diverged_at = first_bad - 1 if first_bad != _NEVER else step
                return False
            if step == 0:
                self._limit.fill_(DIVERGENCE_FACTOR * max(self.task.log_A, m["loss"]))
            hist["step"].append(step)
            for k in METRICS:
                hist[k].append(m[k])
            hist["train_loss"].append((tot - last_sum) / (step - last_step) if step > last_step else math.nan)
            last_sum, last_step = tot, step
            return True

        ok = record(0)
        step = 0
        bar = tqdm(total=c.steps, desc=f"{c.model}/{c.optimizer}", unit=" steps",
                   disable=(None if progress is None else not progress))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        train_time = 0.0
        if ok and self.device.type == "cuda" and c.cuda_graph and c.steps > 8:
            done = self.capture(warmup=3)
            step += done - 1  # warm-up steps trained the model; the capture did not
            bar.update(step)
        while ok and step < c.steps:
            n = min(c.eval_every - step % c.eval_every, c.steps - step)
            for _ in range(n):
                self.step()
            step += n
            bar.update(n)
            if step % c.eval_every == 0 or step == c.steps:
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                train_time += time.perf_counter() - t0
                ok = record(step)  # stops at the first evaluation that finds a diverged loss
                t0 = time.perf_counter()
        bar.close()
        history = {k: np.asarray(v, dtype=np.float64) for k, v in hist.items()}
        if c.model == "linear":
            history["flow_time"] = history["step"] * c.lr
        train_time = max(train_time, 1e-12)
        return TrainResult(config=c, task=self.task, device=self.device, history=Trajectory(history, "step"),
                           train_seconds=train_time, sequences_per_second=step * c.batch / train_time,
                           steps_per_second=step / train_time, model=self.model,
                           status="completed" if ok else "diverged", diverged_at=diverged_at)


class GDTrainer:
    """Full-batch gradient descent of model 1 on the exact population loss, float64, same code as the flow.

    The compressed state (Wt (C, |A|), K (C,)) is updated with :meth:`PopulationObjective.value_and_grad`,
    whose rows are per real token (the noise row is the gradient of one noise token), so the step
    equals a GD step on the full parameters (W, K) (noise columns stay identical). Step k is flow time k*lr.
    """

    def __init__(self, config: TrainConfig, task: Task | None = None):
        self.config = c = config
        self.task = task if task is not None else make_task(c.task)
        self.device = torch.device("cpu") if c.device == "auto" else resolve_device(c.device)
        self.obj = PopulationObjective(self.task, dtype=torch.float64, device=self.device)
        self.Wt, self.K = init_linear(self.task, c.init, c.init_scale, dtype=torch.float64, device=self.device)

    def step(self) -> float:
        """One GD step; returns the exact loss of the state it started from (computed with the gradient)."""
        loss, gW, gK = self.obj.value_and_grad(self.Wt, self.K)
        self.Wt.sub_(gW, alpha=self.config.lr)  # (C, |A|)
        self.K.sub_(gK, alpha=self.config.lr)  # (C,)
        return float(loss)

    def run(self, progress: bool | None = None) -> TrainResult:
        with torch_threads(self.config.threads if self.device.type == "cpu" else 0):
            return self._run(progress)

    def _run(self, progress):
        from tqdm.auto import tqdm

        c = self.config
        hist = {k: [] for k in HISTORY_COLUMNS}
        limit = math.inf  # DIVERGENCE_FACTOR x max(log|A|, L(0)) once L(0) is known

        def record(step) -> bool:
            """Append the exact metrics at ``step``; False (nothing appended) if the loss is not finite or above
            the divergence limit."""
            nonlocal limit
            m = self.obj.metrics(self.Wt, self.K)
            if not m["loss"] <= limit:  # NaN <= x is False
                return False
            if step == 0:
                limit = DIVERGENCE_FACTOR * max(self.task.log_A, m["loss"])
            hist["step"].append(step)
            for k in METRICS:
                hist[k].append(m[k])
            hist["train_loss"].append(m["loss"])
            return True

        diverged_at = None if record(0) else 0
        t0 = time.perf_counter()
        ev = 0.0
        done = 0
        bar = tqdm(total=c.steps, desc="linear/gd", unit=" steps",
                   disable=(None if progress is None else not progress))
        for k in range(1, c.steps + 1) if diverged_at is None else ():
            if not self.step() <= limit:  # the loss of the state after k - 1 steps (CPU: no sync cost)
                diverged_at = k - 1
                break
            done = k
            bar.update(1)
            if k % c.eval_every == 0 or k == c.steps:
                e0 = time.perf_counter()
                ok = record(k)
                ev += time.perf_counter() - e0
                if not ok:
                    diverged_at = k
                    break
        bar.close()
        train_time = time.perf_counter() - t0 - ev
        history = {k: np.asarray(v, dtype=np.float64) for k, v in hist.items()}
        history["flow_time"] = history["step"] * c.lr
        return TrainResult(config=c, task=self.task, device=self.device, history=Trajectory(history, "step"),
                           train_seconds=train_time, sequences_per_second=None,
                           steps_per_second=done / max(train_time, 1e-12), model=(self.Wt, self.K),
                           status="completed" if diverged_at is None else "diverged", diverged_at=diverged_at)


def train(config: TrainConfig, progress: bool | None = None, task: Task | None = None) -> TrainResult:
    """Run the trainer the config names and return its history."""
    trainer = GDTrainer(config, task) if config.optimizer == "gd" else SampledTrainer(config, task)
    return trainer.run(progress=progress)


# ----------------------------------------------------------------------------- pairing with the flow
FLOW_COLUMNS = ("loss", "relation_loss", "subject_loss", "accuracy", "hallucination_gap")


PAIRING_RTOL = 1e-11  # flow_gap to ~1e-10 absolute (rtol 1e-9 leaves ~2e-8 at S16; measured against rtol 1e-12)


def flow_at(task: TaskConfig | Task, init: str, scale: float, times, rtol: float = PAIRING_RTOL) -> dict:
    """The exact flow of model 1 (SPEC §2) from ``init_linear(task, init, scale)``, evaluated at flow times.

    Integrates with the flow engine (:func:`dynamics.flow.run_flow`, float64, rtol 1e-11) up to
    max(times) and reads each requested time off its dense output. Returns column -> (len(times),) numpy
    arrays: ``t`` and the exact population metrics (FLOW_COLUMNS). times: non-negative.
    """
    if isinstance(task, Task):
        task = task.config
    times = np.asarray(times, dtype=np.float64)
    if times.size and times.min() < 0:
        raise ConfigError("flow times must be >= 0")
    # no early stop: a loss target no float64 loss reaches
    config = FlowConfig(task=task, init=init, alpha=scale, t_max=max(float(times.max(initial=0.0)), 1e-300),
                        loss_target=1e-300, rtol=rtol)
    run = run_flow(config, progress=False)
    if run.status == "converged" and run.t_final == 0.0:
        # the loss is already ~0 at t = 0 (|A| = 1: the one answer is certain): a stationary point, the flow stays
        rows = [run.metrics_at(0.0)] * times.size
    elif run.status != "t_max":
        raise RuntimeError(f"the flow stopped before t = {config.t_max:g}: {run.status} {run.message}")
    else:
        rows = [run.metrics_at(float(t)) for t in times]
    out = {"t": times}
    for col in FLOW_COLUMNS:
        out[col] = np.array([r[col] for r in rows])
    return out


def flow_gap(result: TrainResult, flow: dict | None = None) -> dict:
    """Pair a model-1 run with the exact flow from the same initialization.

    Evaluation k of the run (step k, flow time k*lr) is compared with the flow at k*lr:
    flow_gap = max_k |L_train(k) - L_flow(k*lr)|, where it is reached, and the curves.
    """
    c, h = result.config, result.history
    if c.model != "linear":
        raise ConfigError("the exact flow exists for model = 'linear' only")
    if flow is None:
        flow = flow_at(c.task, c.init, c.init_scale, h["flow_time"])
    gap = np.abs(h["loss"] - flow["loss"])
    k = int(np.argmax(gap))
    return dict(flow_gap=float(gap[k]), at_step=int(h["step"][k]), at_flow_time=float(h["flow_time"][k]),
                flow_loss=flow["loss"], gap=gap, flow=flow)
