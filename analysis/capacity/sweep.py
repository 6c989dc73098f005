"""Capacity over model sizes (SPEC §9-10): the settings of a sweep, its run and its result."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from common.errors import ConfigError, check_choice, check_int, check_positive
from dynamics.capacity_training import MemoryTrainConfig
from models.memory import TARGET_KINDS, parameter_count

from analysis.capacity.search import check_sizes_and_seeds

SWEEP_MODELS = ("linear", "mlp", "construction")


@dataclass(frozen=True)
class CapacitySettings:
    """A capacity sweep. Validated at construction.

    model: linear | mlp (trained) | construction (SPEC §8, of ``construction_of``: linear or mlp).
    ds: embedding dimensions; alphas: MLP widths m = alpha·d (MLP and its construction only).
    seeds, lrs: every seed is searched, succeeding when some learning rate succeeds.
    target, M: target map (SPEC §7). max_steps: Adam steps per run. rtol, max_doublings: the search (§9);
    top_fraction: the first bracket's top as a fraction of d² (linear) or m·d (MLP) (§9); None: 1/4 linear,
    3/4 MLP (measured capacities: d²/3 at d = 8 down to d²/6 at d = 45; 0.55 to 0.72 m·d).
    dtype, device: training. with_construction: also search the construction of the same shapes.
    """

    model: str = "linear"
    ds: tuple = (4, 6, 8)
    alphas: tuple = (1.0,)
    construction_of: str = "linear"
    seeds: tuple = (0, 1, 2)
    lrs: tuple = (3e-2,)
    target: str = "identity"
    M: int | None = None
    max_steps: int = 2048
    rtol: float = 0.05
    max_doublings: int = 3
    top_fraction: float | None = None
    dtype: str = "float32"
    device: str = "cpu"
    with_construction: bool = True

    def __post_init__(self):
        check_choice("model", self.model, SWEEP_MODELS)
        check_choice("construction_of", self.construction_of, ("linear", "mlp"))
        check_choice("target", self.target, TARGET_KINDS)
        check_sizes_and_seeds(self)
        object.__setattr__(self, "alphas", tuple(check_positive("alpha", a) for a in self.alphas))
        object.__setattr__(self, "lrs", tuple(check_positive("lr", a) for a in self.lrs))
        if not self.lrs or not self.alphas:
            raise ConfigError("lrs and alphas need at least one value each")
        if self.target == "fixed":
            if self.M is None:
                raise ConfigError("M is unset with target fixed; give M (--M), the number of outputs, >= 1")
            object.__setattr__(self, "M", check_int("M", self.M, 1, 2**31 - 1))
        elif self.M is not None:
            raise ConfigError(f"M = {self.M!r} is given with target identity (M = N); leave M unset or use "
                              f"target fixed")
        MemoryTrainConfig(max_steps=self.max_steps, dtype=self.dtype, device=self.device)  # validates those three
        check_positive("rtol", self.rtol, allow_zero=True, maximum=1.0)
        object.__setattr__(self, "max_doublings", check_int("max_doublings", self.max_doublings, 0, 20))
        if self.top_fraction is None:
            object.__setattr__(self, "top_fraction", 0.25 if self.kind == "linear" else 0.75)
        check_positive("top_fraction", self.top_fraction, maximum=1.0)
        for d, m in self.sizes():
            if self.kind == "mlp" and m < 1:
                raise ConfigError(f"alpha·d = {m} at d = {d}; alpha must make the width m = round(alpha·d) >= 1")

    @property
    def kind(self) -> str:
        """The memory searched: linear or mlp (a construction's shape is that of ``construction_of``)."""
        return self.construction_of if self.model == "construction" else self.model

    def sizes(self) -> list[tuple[int, int]]:
        """(d, m) of every model size, in order (m = 0 for linear)."""
        if self.kind == "linear":
            return [(d, 0) for d in self.ds]
        return [(d, int(round(a * d))) for d in self.ds for a in self.alphas]

    def bracket(self, d: int, m: int) -> tuple[int, int]:
        """First bracket [lo, hi] (SPEC §9): lo = d, hi = top_fraction · d² (linear) or · m·d (MLP), at least
        lo + 1; lo >= M for fixed targets."""
        lo, hi = d, math.ceil(self.top_fraction * d * (d if self.kind == "linear" else m))
        if self.target == "fixed":
            lo = max(lo, self.M)
        return lo, max(hi, lo + 1)

    def largest_N(self, d: int, m: int) -> int:
        return self.bracket(d, m)[1] * 2**self.max_doublings

    def check_memory(self) -> None:
        """ConfigError before anything is allocated if the largest probe would not fit in memory."""
        from common.memory import available_memory_bytes
        from analysis.capacity.oracles import construction_bytes, training_bytes

        avail = available_memory_bytes()
        itemsize = 4 if self.dtype == "float32" else 8
        for d, m in self.sizes():
            N = self.largest_N(d, m)
            M = self.M if self.target == "fixed" else N
            need = construction_bytes(self.kind, N, d, m, M)
            if self.model != "construction":
                need = max(need, training_bytes(self.kind, N, d, m, M, len(self.seeds) * len(self.lrs), itemsize))
            if need > avail // 2:
                raise ConfigError(f"d = {d}{f', m = {m}' if m else ''} would need about {need / 2**30:.1f} GiB at "
                                  f"N = {N} (bracket x 2^max_doublings), more than half the {avail / 2**30:.1f} GiB "
                                  f"available; use smaller d, fewer seeds/lrs or fewer doublings")

    def params(self, d: int, m: int) -> int:
        return parameter_count(self.kind, d, m)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SweepResult:
    """results: CapacityResult per size of the searched model; construction: the construction's, per size
    (empty when not asked, or when the model searched is the construction); fit, construction_fit: ScalingFit
    over the points inside their brackets (None with fewer than 3 such points or one size); seconds: wall."""

    settings: CapacitySettings
    results: tuple
    construction: tuple
    fit: object
    construction_fit: object
    device: str
    seconds: float

    def rows(self) -> dict:
        """capacity.csv columns (SPEC §10): one row per size and seed, construction rows after."""
        cols = {k: [] for k in ("model", "d", "m", "params", "seed", "capacity", "below_bracket", "above_bracket")}
        main = self.settings.model if self.settings.model != "construction" else "construction"
        for name, results in ((main, self.results), ("construction", self.construction)):
            for (d, m), r in zip(self.settings.sizes(), results):
                for i, s in enumerate(r.seeds):
                    for k, v in zip(cols, (name, d, m, r.params, s, r.capacity[i], r.below_bracket[i],
                                           r.above_bracket[i])):
                        cols[k].append(v)
        return cols

    def to_dict(self) -> dict:
        return dict(settings=self.settings.to_dict(), device=self.device, seconds=self.seconds,
                    results=[r.to_dict() for r in self.results],
                    construction=[r.to_dict() for r in self.construction],
                    fit=None if self.fit is None else self.fit.to_dict(),
                    construction_fit=None if self.construction_fit is None else self.construction_fit.to_dict())


def _fit(results):
    from analysis.capacity.fit import scaling_fit

    P = [r.params for r in results for i in range(len(r.seeds)) if not (r.below_bracket[i] or r.above_bracket[i])]
    C = [c for r in results for i, c in enumerate(r.capacity) if not (r.below_bracket[i] or r.above_bracket[i])]
    if len(P) < 3 or len(set(P)) < 2:
        return None
    return scaling_fit(P, C)


def run_sweep(settings: CapacitySettings, progress=None) -> SweepResult:
    """Search every size's capacity (and its construction's), then fit the scaling. ``progress(line)`` is
    called after each size."""
    import time

    from analysis.capacity.oracles import construction_oracle, training_oracle
    from analysis.capacity.search import Bracket, search_capacity
    from common.cli import describe_device

    start = time.perf_counter()
    s = settings
    train = MemoryTrainConfig(max_steps=s.max_steps, dtype=s.dtype, device=s.device, record=False)
    main, cons = [], []
    for d, m in s.sizes():
        lo, hi = s.bracket(d, m)
        bracket = Bracket(lo, hi, rtol=s.rtol, max_doublings=s.max_doublings)
        # a construction costs one linear-algebra call per probe: its search starts at the smallest lo
        cons_lo = s.M if s.target == "fixed" else 1
        construction_bracket = Bracket(cons_lo, max(hi, cons_lo + 1), rtol=s.rtol, max_doublings=s.max_doublings)
        shape = f"{s.kind} d={d}" + (f" m={m}" if m else "")
        P = s.params(d, m)
        if s.model == "construction":
            main.append(search_capacity(construction_oracle(s.kind, d, m, s.target, s.M), s.seeds,
                                        construction_bracket, label=f"construction {shape}", params=P))
        else:
            main.append(search_capacity(training_oracle(s.kind, d, m, s.target, s.M, s.lrs, train), s.seeds,
                                        bracket, label=shape, params=P))
            if s.with_construction:
                cons.append(search_capacity(construction_oracle(s.kind, d, m, s.target, s.M), s.seeds,
                                            construction_bracket, label=f"construction {shape}", params=P))
        if progress is not None:
            r = main[-1]
            progress(f"{r.label}: P={P} capacity {list(r.capacity)} (mean {r.mean:.1f})"
                     + (f"; construction {list(cons[-1].capacity)}" if cons and len(cons) == len(main) else ""))
    return SweepResult(settings=s, results=tuple(main), construction=tuple(cons), fit=_fit(main),
                       construction_fit=_fit(cons) if cons else None, device=describe_device(s.device),
                       seconds=time.perf_counter() - start)
