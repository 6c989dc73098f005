"""The configuration of one training run (:class:`TrainConfig`, validated at construction, with its memory
estimate) and the device it runs on (:func:`resolve_device`)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from common.errors import ConfigError, check_choice, check_device, check_int, check_positive
from models.linear import INIT_KINDS
from models.task import MAX_SEED, TaskConfig

from dynamics.choices import MODELS, OPTIMIZERS

LR_MAX = 1e30  # a step size the float32 trainers can multiply a gradient by
D_SOFTMAX = 256  # model 2's embedding dimension (the paper figure's); at 64 its loss stalls above 0.3 nats
# the transformer's: at 64 (H = 1, d_h = 16, Adam lr 0.01) it learns every fact of the default task within 1024
# steps; at 256 the same run stalls near loss 2 (measured, docs/training.md)
D_TRANSFORMER = 64
MAX_THREADS = 1024  # torch's thread pool crashes (segfault) when asked for ~1e5 threads


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU. Refuses a CUDA device that is absent."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return check_device("device", device, also="auto")


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Validated at construction.

    model: ``linear`` (model 1), ``softmax`` (model 2) or ``transformer`` (the one-layer transformer of SPEC §11,
    :class:`models.transformer.TransformerModule`). optimizer: ``gd`` (model 1 only: full-batch gradient descent on
    the exact population loss), ``sgd`` (online, a fresh batch each step) or ``adam`` (model 2 and the
    transformer). lr: step size; batch: sequences per step; steps: number of steps.
    init / init_scale: model 1 ``balanced`` | ``uniform`` with scale alpha (as the flow);
    model 2: std of W_KQ, W_OV entries is init_scale / sqrt(d); the transformer reads neither (its init is the
    authors' Gaussian scales of SPEC §11, drawn from the seed's ``init`` stream).
    d: embedding dimension of model 2 and of the transformer (None: D_SOFTMAX = 256 for model 2, the paper
    figure's, at 64 the head shows both plateaus but its loss stalls above 0.3 nats; D_TRANSFORMER = 64 for the
    transformer, at 256 its default Adam run stalls). H, d_h, m: the transformer's heads, head dimension and MLP
    width (m = 0: attention only); read by the transformer only.
    eval_every: evaluate every this many steps; eval_geometric: also this many evaluations per doubling of
    the step count (steps 1, 2, 3, 4, 5, 6, 8, ... rounded from 2^(i/g); 0: none), so that a log-step axis
    shows the early steps; eval_size: held-out sequences (>= 8192).
    eps_conv: loss level that counts as converged (t3). device: auto | cpu | cuda[:i].
    cuda_graph: capture the training step in a CUDA graph on CUDA devices.
    manual_grad: model 2's gradient by :meth:`SoftmaxAttentionModel.loss_and_grad_` (hand-written, fewer
    kernels; tested against autograd) instead of autograd. (Model 1's SGD step is always hand-written; the
    transformer's gradient is always autograd's: manual_grad does not apply to it.)
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
    d: int | None = None
    H: int = 1
    d_h: int = 16
    m: int = 0
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
            raise ConfigError(f"optimizer = 'gd' (exact population loss) exists for model = 'linear' only; "
                              f"use sgd or adam for the {self.model} model")
        if self.optimizer == "adam" and self.model == "linear":
            raise ConfigError("optimizer = 'adam' is offered for the softmax and transformer models only; use gd "
                              "or sgd for the linear model")
        object.__setattr__(self, "lr", check_positive("lr", self.lr, maximum=LR_MAX,
                                                      why="larger steps overflow float32, the sampled trainers' type"))
        if self.d is None:
            object.__setattr__(self, "d", D_TRANSFORMER if self.model == "transformer" else D_SOFTMAX)
        for name, lo in (("batch", 1), ("steps", 1), ("d", 1), ("H", 1), ("d_h", 1), ("m", 0), ("eval_every", 1),
                         ("eval_geometric", 0), ("eval_size", 8192)):
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
        model 2: |V| x |V| and |V| x |A| tables, batch x T scores and batch x |V| weights; the transformer:
        batch x T x H x d_h gathered keys and values, batch x H x T attention, batch x m MLP activations, batch x d
        residuals, with their autograd copies), the held-out set
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
            elif self.model == "transformer":
                H, dh, m = self.H, self.d_h, self.m
                P = 4 * H * dh * d + 2 * m * d  # trained parameters
                host += 8 * (V * d + A * d + P)  # embeddings and initial weights drawn in float64
                states = 2 + 2 * (self.optimizer == "adam")  # parameters, gradients, Adam's two moments
                dev += 4 * (V * d + A * d + states * P + 3 * V * H * dh)  # + key and value tables (V, H, d_h)
                # per sequence: tokens and gather indices; gathered keys and values (T, H, d_h), scores and
                # attention (H, T), head outputs, residual, MLP activations and logits, with autograd's saved
                # copies and gradients (about twice the forward)
                dev += n * (16 * T + 4 * (4 * T * H * dh + 6 * H * T + 4 * H * dh + 4 * d + 3 * m + 3 * A))
                dev += ch * (8 * T + 4 * (2 * T * H * dh + 2 * H * T + H * dh + 2 * d + m))  # evaluation forward
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
        from common.memory import available_memory_bytes

        est = self.memory_estimate_bytes(compare_flow)
        dev = torch.device("cpu") if self.optimizer == "gd" and self.device == "auto" else resolve_device(self.device)
        have = available_memory_bytes()
        t = self.task
        what = f"model = {self.model}, optimizer = {self.optimizer}, S = {t.S}, R = {t.R}, D = {t.D}"
        if self.optimizer == "gd":
            hint = "reduce S, R or D"
        else:
            what += (f", T = {t.T}, batch = {self.batch}, eval_size = {self.eval_size}"
                     + (f", d = {self.d}" if self.model != "linear" else "")
                     + (f", H = {self.H}, d_h = {self.d_h}, m = {self.m}" if self.model == "transformer" else ""))
            hint = "reduce S, R, D, --batch, --eval-size" + (
                " or --d" if self.model == "softmax" else ", --d, --H, --d-h or --m" if self.model == "transformer"
                else "")
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
