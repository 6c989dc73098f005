"""Capacity of one-layer transformers (SPEC §11): for each shape (d, H, d_h, m), the largest number of facts
S·R stored at >= 99 % accuracy, by the bisection of SPEC §9 over the task size along a scaling; then the
log-log fit of facts against parameters. Also the attention/MLP trade-off map (accuracy over H × m)."""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace

from common.errors import ConfigError, check_choice, check_int, check_positive
from dynamics.capacity_training import TransformerTrainConfig, train_transformers
from models.transformer import TransformerConfig, transformer_parameter_count

from analysis.capacity.search import check_sizes_and_seeds

SCALINGS = ("linear", "square", "distinct")  # S = R (D fixed); S = R² (D fixed); S = R = D


def task_sizes(scaling: str, size: int, D: int) -> tuple[int, int, int]:
    """(S, R, D) of the task of size ``size`` (the searched integer): linear S = R = size; square S = size,
    R = floor(√size) (so S ≈ R²); distinct S = R = D = size (the paper's appendix)."""
    if scaling == "linear":
        return size, size, D
    if scaling == "square":
        return size, max(1, math.isqrt(size)), D
    return size, size, size


def facts_of(scaling: str, size: int) -> int:
    S, R, _ = task_sizes(scaling, size, 1)
    return S * R


def size_for_facts(scaling: str, facts: int) -> int:
    """Smallest size with at least ``facts`` facts."""
    size = 1
    while facts_of(scaling, size) < facts:
        size += 1
    return size


@dataclass(frozen=True)
class TransformerSettings:
    """A transformer capacity sweep. Validated at construction.

    ds: embedding dimensions (one shape each). heads: H. head_dim: d_h, or None to set it from attn_ratio
    α = H·d_h/d (d_h = α·d/H must be a positive integer). mlp_width: m, or None to set it from mlp_ratio
    β = m/d (m = round(β·d), 0 = attention only). D: answers per relation (linear and square scalings).
    T: sequence length (the paper 32). scaling: linear | square | distinct (task_sizes). seeds, lrs, restarts:
    a size succeeds for a seed when some learning rate from some of ``restarts`` initializations does (restart
    k of TransformerConfig: the same task and embeddings, another init and batch order). batch, max_steps,
    eval_every, eval_size: training (TransformerTrainConfig). rtol, max_doublings: the search (SPEC §9).
    dtype, device: training. with_construction: also search the construction of each shape (SPEC §8, no
    training; one least-squares build and one evaluation per probe), with the same seeds and bracket;
    with_training False: the construction only (then the training fields are unused).
    """

    ds: tuple = (8, 12, 16)
    heads: int = 2
    head_dim: int | None = None
    attn_ratio: float = 1.0
    mlp_width: int | None = None
    mlp_ratio: float = 0.0
    D: int = 4
    T: int = 8
    scaling: str = "linear"
    seeds: tuple = (0, 1)
    lrs: tuple = (3e-2,)
    restarts: int = 2
    batch: int = 128
    max_steps: int = 1024
    eval_every: int = 32
    eval_size: int = 1024
    rtol: float = 0.05
    max_doublings: int = 3
    dtype: str = "float32"
    device: str = "cpu"
    with_construction: bool = False
    with_training: bool = True

    def __post_init__(self):
        check_choice("scaling", self.scaling, SCALINGS)
        if not (self.with_training or self.with_construction):
            raise ConfigError("with_training and with_construction are both off: nothing to search")
        check_sizes_and_seeds(self)
        object.__setattr__(self, "lrs", tuple(check_positive("lr", a) for a in self.lrs))
        if not self.lrs:
            raise ConfigError("lrs is empty; give at least one learning rate")
        object.__setattr__(self, "restarts", check_int("restarts", self.restarts, 1, 2**10))
        object.__setattr__(self, "heads", check_int("heads", self.heads, 1, 2**20))
        if self.head_dim is not None:
            object.__setattr__(self, "head_dim", check_int("head_dim", self.head_dim, 1, 2**20))
        check_positive("attn_ratio", self.attn_ratio)
        if self.mlp_width is not None:
            object.__setattr__(self, "mlp_width", check_int("mlp_width", self.mlp_width, 0, 2**24))
        check_positive("mlp_ratio", self.mlp_ratio, allow_zero=True)
        for name, lo in (("D", 1), ("T", 3)):
            object.__setattr__(self, name, check_int(name, getattr(self, name), lo, 2**20))
        self.train_config()  # validates batch, max_steps, eval_every, dtype
        check_positive("rtol", self.rtol, allow_zero=True, maximum=1.0)
        object.__setattr__(self, "max_doublings", check_int("max_doublings", self.max_doublings, 0, 20))
        for d in self.ds:
            self.shape(d)

    def shape(self, d: int) -> tuple[int, int, int, int]:
        """(d, H, d_h, m) at dimension d (ConfigError when α·d/H is not a positive integer)."""
        H = self.heads
        if self.head_dim is not None:
            dh = self.head_dim
        else:
            x = self.attn_ratio * d / H
            if x < 1 or abs(x - round(x)) > 1e-9:
                raise ConfigError(f"attn_ratio·d/heads = {self.attn_ratio:g}·{d}/{H} = {x:g} is not a positive "
                                  f"integer head dimension; choose d, heads and attn_ratio with H·d_h = α·d, "
                                  f"or give --head-dim")
            dh = int(round(x))
        m = self.mlp_width if self.mlp_width is not None else int(round(self.mlp_ratio * d))
        return d, H, dh, m

    def shapes(self) -> list[tuple[int, int, int, int]]:
        return [self.shape(d) for d in self.ds]

    def train_config(self) -> TransformerTrainConfig:
        return TransformerTrainConfig(batch=self.batch, max_steps=self.max_steps, eval_every=self.eval_every,
                                      eval_size=self.eval_size, dtype=self.dtype, device=self.device, record=False)

    def bracket(self, d: int, H: int, dh: int, m: int) -> tuple[int, int]:
        """First bracket over the size: facts from 4 to P/4 (P the parameter count), as sizes."""
        P = transformer_parameter_count(d, H, dh, m)
        lo = size_for_facts(self.scaling, 4)
        return lo, max(lo + 1, size_for_facts(self.scaling, max(1, P // 4)))

    def check_memory(self) -> None:
        """ConfigError before anything is allocated if the largest probe would not fit in memory."""
        from common.memory import available_memory_bytes

        avail = available_memory_bytes()
        for d, H, dh, m in self.shapes():
            size = self.bracket(d, H, dh, m)[1] * 2**self.max_doublings
            need = training_bytes(self, size, d, H, dh, m) if self.with_training else 0
            if self.with_construction:
                need = max(need, construction_bytes(self, size, d, H, dh, m))
            if need > avail // 2:
                raise ConfigError(f"d = {d}, H = {H}, d_h = {dh}, m = {m} would need about {need / 2**30:.1f} GiB "
                                  f"at size {size} (bracket x 2^max_doublings), more than half the "
                                  f"{avail / 2**30:.1f} GiB available; use smaller d, batch or fewer doublings")

    def to_dict(self) -> dict:
        return asdict(self)


def training_bytes(s: TransformerSettings, size: int, d: int, H: int, dh: int, m: int) -> int:
    """Estimated peak bytes of one batched step at task size ``size``: gathered keys/values and their gradients
    (4 × n·T·H·d_h), logits and softmax gradient (3 × n·|A|), MLP activations, the evaluation set forward
    (S·R sequences, no gradient), embeddings, and parameters with Adam moments (4 copies)."""
    S, R, D = task_sizes(s.scaling, size, s.D)
    B, item = len(s.seeds) * len(s.lrs) * s.restarts, 4 if s.dtype == "float32" else 8
    V, A, F = 2 * (S + R) + 1, R * D, S * R
    E = max(F, s.eval_size)  # evaluation sequences: every fact ceil(eval_size/F) times, fewer than F + eval_size
    per_model = (4 * s.batch * s.T * H * dh + 3 * s.batch * A + 3 * s.batch * max(m, d) + 2 * 2 * E * s.T * H * dh
                 + 2 * E * A + (V + A) * d + 4 * transformer_parameter_count(d, H, dh, m))
    return int(item * B * per_model + 8 * B * 2 * E * s.T)


def construction_bytes(s: TransformerSettings, size: int, d: int, H: int, dh: int, m: int) -> int:
    """Estimated peak bytes of one construction probe (float64, one model): the MLP's feature matrix and its
    least-squares copies (3 × S·R·m), the noise-free inputs and targets (3 × S·R·d), the per-head solves over
    the vocabulary (V·d plus a d×d map), the attention-only readout solves (|A|·d per subject), and the
    evaluation forward (keys, values, attention and logits of every evaluation sequence)."""
    S, R, D = task_sizes(s.scaling, size, s.D)
    V, A, F = 2 * (S + R) + 1, R * D, S * R
    E = max(F, s.eval_size)
    return 8 * (3 * F * m + 3 * F * d + 3 * V * d + 2 * d * d + 2 * A * d
                + E * (2 * s.T * H * dh + H * s.T + A + d) + transformer_parameter_count(d, H, dh, m))


def transformer_oracle(s: TransformerSettings, d: int, H: int, dh: int, m: int):
    """ok(size, seeds): for each seed, some learning rate from some restart trains the transformer to the target
    accuracy on the task of this size. All seeds × restarts × learning rates of one probe are one batch."""
    train, lrs, K = s.train_config(), list(s.lrs), s.restarts

    def ok(size, seeds):
        S, R, D = task_sizes(s.scaling, size, s.D)
        configs = [TransformerConfig(S=S, R=R, D=D, d=d, H=H, d_h=dh, m=m, T=s.T, seed=seed, restart=k)
                   for seed in seeds for k in range(K) for _ in lrs]
        run = train_transformers(configs, lrs * (len(seeds) * K), train)
        return list(run.success.reshape(len(seeds), K * len(lrs)).any(axis=1))

    return ok


def construction_oracle(s: TransformerSettings, d: int, H: int, dh: int, m: int, threshold: float = 0.99):
    """ok(size, seeds): for each seed, the construction of SPEC §8 for this shape reaches ``threshold`` accuracy
    on the seed's instance of this size (its evaluation set, SPEC §11)."""
    from models.transformer.construction import construction_accuracy

    def ok(size, seeds):
        S, R, D = task_sizes(s.scaling, size, s.D)
        return [construction_accuracy(TransformerConfig(S=S, R=R, D=D, d=d, H=H, d_h=dh, m=m, T=s.T, seed=seed),
                                      s.eval_size) >= threshold for seed in seeds]

    return ok


@dataclass(frozen=True)
class TransformerSweepResult:
    """results: a CapacityResult per shape (capacity = the searched size; facts(size) gives facts);
    facts: per shape, per seed, the facts S·R stored; fit: ScalingFit of facts on parameters over the points
    inside their brackets (None with fewer than 3 or one shape); construction, construction_facts,
    construction_fit: the same for the construction of each shape (empty and None without
    ``with_construction``); seconds: wall."""

    settings: TransformerSettings
    results: tuple
    facts: tuple
    fit: object
    device: str
    seconds: float
    construction: tuple = ()
    construction_facts: tuple = ()
    construction_fit: object = None

    def rows(self) -> dict:
        """One row per shape and seed, trained (model ``transformer``) then constructed (``construction``)."""
        cols = {k: [] for k in ("model", "d", "H", "d_h", "m", "params", "seed", "size", "S", "R", "D", "facts",
                                "below_bracket", "above_bracket")}
        s = self.settings
        for model, results, facts in (("transformer", self.results, self.facts),
                                      ("construction", self.construction, self.construction_facts)):
            for (d, H, dh, m), r, f in zip(s.shapes(), results, facts):
                for i, seed in enumerate(r.seeds):
                    S, R, D = task_sizes(s.scaling, max(r.capacity[i], 1), s.D)
                    for k, v in zip(cols, (model, d, H, dh, m, r.params, seed, r.capacity[i], S, R, D, f[i],
                                           r.below_bracket[i], r.above_bracket[i])):
                        cols[k].append(v)
        return cols

    def to_dict(self) -> dict:
        return dict(settings=self.settings.to_dict(), device=self.device, seconds=self.seconds,
                    results=[dict(r.to_dict(), facts=list(f)) for r, f in zip(self.results, self.facts)],
                    fit=None if self.fit is None else self.fit.to_dict(),
                    construction=[dict(r.to_dict(), facts=list(f))
                                  for r, f in zip(self.construction, self.construction_facts)],
                    construction_fit=None if self.construction_fit is None else self.construction_fit.to_dict())


def run_transformer_sweep(s: TransformerSettings, progress=None) -> TransformerSweepResult:
    """Search every shape's capacity in facts, then fit facts against parameters."""
    from analysis.capacity.fit import scaling_fit
    from analysis.capacity.search import Bracket, search_capacity
    from common.cli import describe_device

    start = time.perf_counter()
    found = {"transformer": ([], []), "construction": ([], [])}
    kinds = (([("transformer", transformer_oracle)] if s.with_training else [])
             + ([("construction", construction_oracle)] if s.with_construction else []))
    for d, H, dh, m in s.shapes():
        lo, hi = s.bracket(d, H, dh, m)
        P = transformer_parameter_count(d, H, dh, m)
        for kind, oracle in kinds:
            r = search_capacity(oracle(s, d, H, dh, m), s.seeds,
                                Bracket(lo, hi, rtol=s.rtol, max_doublings=s.max_doublings),
                                label=f"{kind} d={d} H={H} d_h={dh} m={m}", params=P)
            f = tuple(facts_of(s.scaling, c) if c >= 1 else 0 for c in r.capacity)
            found[kind][0].append(r)
            found[kind][1].append(f)
            if progress is not None:
                progress(f"{r.label}: P={P} facts stored {list(f)} (sizes {list(r.capacity)}, {s.scaling} scaling)")

    def fit_of(results, facts):
        keep = [(r.params, f[i]) for r, f in zip(results, facts) for i in range(len(r.seeds))
                if not (r.below_bracket[i] or r.above_bracket[i])]
        return scaling_fit(*zip(*keep)) if len(keep) >= 3 and len({p for p, _ in keep}) >= 2 else None

    (results, facts), (cons, cons_facts) = found["transformer"], found["construction"]
    return TransformerSweepResult(settings=s, results=tuple(results), facts=tuple(facts), fit=fit_of(results, facts),
                                  device=describe_device(s.device), seconds=time.perf_counter() - start,
                                  construction=tuple(cons), construction_facts=tuple(cons_facts),
                                  construction_fit=fit_of(cons, cons_facts))


def tradeoff_map(Hs, ms, *, S=32, R=32, D=8, d=32, d_h=8, T=32, seed=0, lrs=(1e-2,),
                 train: TransformerTrainConfig = TransformerTrainConfig(record=False), progress=None):
    """Accuracy (best over lrs and evaluations) of the transformer (d, H, d_h, m) on one task (S, R, D) for
    every H in ``Hs`` and m in ``ms``: an array (len(Hs), len(ms)), and the parameter counts of the grid.
    The paper's grid: S = R = 32, D = 8, d = 32, d_h = 8, H in 1..32, m in 1..128, lr 1e-2, 2^14 steps."""
    import numpy as np

    train = replace(train, record=False)
    acc = np.zeros((len(Hs), len(ms)))
    for i, H in enumerate(Hs):
        for j, m in enumerate(ms):
            cfg = TransformerConfig(S=S, R=R, D=D, d=d, H=H, d_h=d_h, m=m, T=T, seed=seed)
            run = train_transformers([cfg] * len(lrs), list(lrs), train)
            acc[i, j] = float(run.best_accuracy.max())
            if progress is not None:
                progress(f"H={H} m={m}: P={cfg.params} accuracy {acc[i, j]:.3f}")
    params = np.array([[transformer_parameter_count(d, H, d_h, m) for m in ms] for H in Hs])
    return acc, params
