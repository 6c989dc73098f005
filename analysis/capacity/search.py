"""Capacity search (SPEC §9): per seed, the largest N at which an oracle succeeds, by bracket doubling and
bisection over N, all seeds in lockstep so that probes at the same N can be answered as one batch.

Assumption: ok_s(N) is monotone (true up to the capacity, false above). The answer is the largest success
seen; it is exact (rtol = 0) or within rtol (hi - lo <= max(1, rtol·lo)) where the assumption holds.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.errors import ConfigError, check_int, check_positive


def check_sizes_and_seeds(settings) -> None:
    """Validate a sweep's ``ds`` (embedding dimensions >= 1) and ``seeds`` (distinct, >= 0) in place, as tuples
    of ints (ConfigError otherwise); shared by the memories' and the transformer's settings."""
    for name, lo in (("ds", 1), ("seeds", 0)):
        vals = tuple(getattr(settings, name))
        if not vals:
            raise ConfigError(f"{name} is empty; give at least one value")
        object.__setattr__(settings, name, tuple(check_int(name[:-1], v, lo, 2**31 - 1) for v in vals))
    if len(set(settings.seeds)) != len(settings.seeds):
        raise ConfigError(f"seeds = {list(settings.seeds)} repeats a seed; give distinct seeds")


@dataclass(frozen=True)
class Bracket:
    """Search settings: first bracket [lo, hi] (lo >= 1, hi > lo), relative resolution, doublings allowed."""

    lo: int
    hi: int
    rtol: float = 0.01
    max_doublings: int = 8

    def __post_init__(self):
        object.__setattr__(self, "lo", check_int("lo", self.lo, 1))
        object.__setattr__(self, "hi", check_int("hi", self.hi, 1))
        if self.hi <= self.lo:
            raise ConfigError(f"hi = {self.hi} is not above lo = {self.lo}; the bracket needs lo < hi")
        check_positive("rtol", self.rtol, allow_zero=True, maximum=1.0)
        object.__setattr__(self, "max_doublings", check_int("max_doublings", self.max_doublings, 0, 60))


class _SeedSearch:
    """The state of one seed's search: test lo, double while hi succeeds, then bisect."""

    def __init__(self, bracket: Bracket):
        self.b = bracket
        self.lo, self.hi = bracket.lo, bracket.hi
        self.phase = "lo"            # lo -> hi (doubling) -> bisect -> done
        self.doublings = 0
        self.below = self.above = False
        self.probes: list[tuple[int, bool]] = []

    def next_probe(self) -> int | None:
        if self.phase == "lo":
            return self.lo
        if self.phase == "hi":
            return self.hi
        if self.phase == "bisect" and self.hi - self.lo > max(1, self.b.rtol * self.lo):
            return (self.lo + self.hi) // 2
        self.phase = "done"
        return None

    def record(self, N: int, ok: bool) -> None:
        self.probes.append((N, bool(ok)))
        if self.phase == "lo":
            if ok:
                self.phase = "hi"
            else:
                self.below, self.lo, self.phase = True, self.lo - 1, "done"
        elif self.phase == "hi":
            if not ok:
                self.phase = "bisect"
            elif self.doublings >= self.b.max_doublings:
                self.above, self.lo, self.phase = True, self.hi, "done"
            else:
                self.lo, self.hi, self.doublings = self.hi, 2 * self.hi, self.doublings + 1
        else:
            if ok:
                self.lo = N
            else:
                self.hi = N


@dataclass(frozen=True)
class CapacityResult:
    """Capacities of one model size over seeds.

    label: what was searched (e.g. ``linear d=8``); params: parameter count P; seeds: (S,) seeds;
    capacity: (S,) largest N that succeeded (lo - 1 when lo failed); below_bracket, above_bracket: (S,) flags;
    probes: per seed, the (N, ok) pairs in the order tested. mean and std (sample, ddof=1; 0 for one seed).
    """

    label: str
    params: int
    seeds: tuple
    capacity: tuple
    below_bracket: tuple
    above_bracket: tuple
    probes: tuple

    @property
    def mean(self) -> float:
        return float(np.mean(self.capacity))

    @property
    def std(self) -> float:
        return float(np.std(self.capacity, ddof=1)) if len(self.capacity) > 1 else 0.0

    def to_dict(self) -> dict:
        return dict(label=self.label, params=self.params, seeds=list(self.seeds), capacity=list(self.capacity),
                    mean=self.mean, std=self.std, below_bracket=list(self.below_bracket),
                    above_bracket=list(self.above_bracket), probes=[[list(p) for p in s] for s in self.probes])


def search_capacity(oracle, seeds, bracket: Bracket, *, label: str = "", params: int = 0) -> CapacityResult:
    """Per-seed capacity under ``oracle(N, seeds) -> sequence of bools`` (one per seed, in order).

    The seeds' searches advance in lockstep; each round, the seeds whose next probe is the same N are passed
    to the oracle together (one batched training where the oracle trains)."""
    seeds = list(seeds)
    if not seeds:
        raise ConfigError("seeds is empty; give at least one seed")
    states = {s: _SeedSearch(bracket) for s in seeds}
    while True:
        wanted: dict[int, list] = {}
        for s, st in states.items():
            N = st.next_probe()
            if N is not None:
                wanted.setdefault(N, []).append(s)
        if not wanted:
            break
        for N, group in sorted(wanted.items()):
            answers = list(oracle(N, group))
            if len(answers) != len(group):
                raise ValueError(f"oracle answered {len(answers)} values for {len(group)} seeds")
            for s, ok in zip(group, answers):
                states[s].record(N, ok)
    st = [states[s] for s in seeds]
    return CapacityResult(label=label, params=int(params), seeds=tuple(seeds),
                          capacity=tuple(int(x.lo) for x in st), below_bracket=tuple(x.below for x in st),
                          above_bracket=tuple(x.above for x in st), probes=tuple(tuple(x.probes) for x in st))
