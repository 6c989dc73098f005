"""Online SGD (models 1, 2 and the transformer) and Adam (model 2, the transformer) on sampled batches, in
float32 on a torch device.

The training step keeps everything on the device (sampling with a device ``torch.Generator``, the running
training loss summed in a device tensor, divergence tracked in device tensors) and on CUDA is captured once in
a CUDA graph and replayed, so the only host synchronisations are the evaluations every ``eval_every`` steps.
The same code runs on the CPU (eagerly). The loop is :meth:`dynamics.training.base.Trainer.run`.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from models.modules import LinearAttentionModel, SoftmaxAttentionModel
from models.sampler import TaskSampler
from models.transformer import TransformerModule
from models.task import Task, make_task

from dynamics.training.base import Leg, Measurement, Trainer
from dynamics.training.config import TrainConfig, resolve_device
from dynamics.training.evaluation import HeldOutEvaluator

_NEVER = 2**62  # "no bad loss yet" in the device-side divergence tracking


class SampledTrainer(Trainer):
    """Online SGD (models 1, 2, the transformer) or Adam (model 2, the transformer) in float32 on fresh batches of
    the sampler.

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
        elif c.model == "transformer":
            self.model = TransformerModule(self.task, c.d, c.H, c.d_h, c.m, seed=c.seed, dtype=torch.float32,
                                           device=dev)
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
        self.manual_grad = c.manual_grad and c.model == "softmax"  # the transformer's gradient is autograd's
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
        if self.manual_grad:  # hand-written gradient (tested against autograd), writes p.grad
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

    def _evaluators(self, leg: Leg) -> dict:
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

    # ------------------------------------------------------------------ hooks of Trainer.run
    def _begin_run(self) -> None:
        self._last_sum, self._last_step = 0.0, 0  # the running loss sum and step at the last row
        self._leg_evaluators = {}

    def _begin_leg(self, leg: Leg) -> None:
        self._leg_evaluators = self._evaluators(leg)

    def _measure(self, step: int, leg: Leg) -> Measurement:
        """The held-out metrics; diverged once a loss is not finite or above the divergence limit, here or in
        a batch since the last evaluation (read from the device: the only host syncs)."""
        if leg.sets is None:
            m = {"train": self.evaluate()}
        else:
            self.model.eval()
            m = {name: ev(self.model) for name, ev in self._leg_evaluators.items()}
            self.model.train()
        tot = float(self.train_sum)
        first_bad = int(self._first_bad)  # 1-based step whose batch loss was not finite or above the limit
        if first_bad != _NEVER or not math.isfinite(tot) or not m["train"]["loss"] <= float(self._limit):
            return Measurement(m, first_bad - 1 if first_bad != _NEVER else step)
        train_loss = (tot - self._last_sum) / (step - self._last_step) if step > self._last_step else math.nan
        self._last_sum, self._last_step = tot, step
        return Measurement(m, None, train_loss)

    def _set_limit(self, limit: float) -> None:
        self._limit.fill_(limit)

    def _warm_up(self, remaining: int) -> int:
        """Capture the CUDA graph (once, on CUDA with cuda_graph, for more than 8 steps): its warm-up steps."""
        if self.graph is None and self.device.type == "cuda" and self.config.cuda_graph and remaining > 8:
            return self.capture(warmup=3) - 1  # warm-up steps trained the model; the capture did not
        return 0

    def _advance(self, n: int) -> tuple[int, bool]:
        for _ in range(n):
            self.step()
        return n, False  # a bad batch loss is read at the next evaluation

    def _trained_model(self):
        return self.model

    def _sequences_per_second(self, steps: int, seconds: float) -> float:
        return steps * self.config.batch / seconds
