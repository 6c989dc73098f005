"""The ODE engine: integrate y' = f(y) with saved outputs, events, a stop condition and dense output.

    sol = integrate(stepper, t_end, saveat=SaveAt(ts, fn), events=[Event("loss", g, levels=(1.0, 0.5))],
                    stop=Event("target", g, levels=(0.01,)))
    sol.events["loss"]     # first time g <= each level (None if never), found on the dense interpolant
    sol(123.4)             # the state at any time inside the integrated span

The engine knows nothing of losses or phases. It drives a stepper (:class:`dynamics.ode.base.Stepper`) one
accepted step at a time and, after each step:

- evaluates ``saveat.fn`` at every requested time inside the step, on the step's interpolant;
- evaluates every event function at the step's end; when one has crossed a level since the last
  step it locates the first crossing by root finding on the interpolant (Brent's method, then
  a bracket that keeps the reported time on the crossed side: g(t) <= level exactly);
- stops at the first crossing of ``stop`` (the final state is the interpolant there).

Dense output over the whole span: the interpolant of every step is kept while their total size stays
under ``dense_budget_bytes``; past that the engine keeps only the steps' (t0, t1, h) and the state at
every m-th step start, and rebuilds an interpolant by replaying the steps from the nearest kept state
(bit for bit: a step is a pure function of its start state and size). Memory stays bounded at any P.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from scipy.optimize import brentq

from dynamics.ode.base import SolverFailure, Stepper
from dynamics.ode.status import Status

DEFAULT_DENSE_BUDGET = 256 * 2**20  # bytes of interpolants and checkpoints kept for dense output
CACHE_STEPS = 4  # interpolants rebuilt by replay that are kept (4 x 35 MB at 1 M parameters)


@dataclass(frozen=True)
class Event:
    """First crossings of ``levels`` by the scalar ``fn(t, y)``.

    direction -1: the first time fn falls to or below a level (from above); +1: rises to or above it.
    A level already crossed at the initial time is reported at t0.
    """

    name: str
    fn: Callable[[float, torch.Tensor], float]
    levels: tuple = ()
    direction: int = -1

    def __post_init__(self):
        if self.direction not in (-1, 1):
            raise ValueError(f"Event {self.name!r}: direction must be -1 or +1, not {self.direction!r}")
        object.__setattr__(self, "levels", tuple(float(x) for x in self.levels))

    def crossed(self, value: float, level: float) -> bool:
        return value <= level if self.direction < 0 else value >= level


@dataclass(frozen=True)
class SaveAt:
    """Save ``fn(t, y)`` (default: a copy of y) at the increasing times ``ts`` that the run reaches."""

    ts: Any
    fn: Callable[[float, torch.Tensor], Any] | None = None

    def __post_init__(self):
        ts = np.asarray(self.ts, dtype=np.float64).reshape(-1)
        if ts.size and (not np.all(np.isfinite(ts)) or np.any(np.diff(ts) < 0)):
            raise ValueError("SaveAt.ts must be finite and non-decreasing")
        object.__setattr__(self, "ts", ts)


@dataclass
class Solution:
    """What :func:`integrate` returns. Call it (``sol(t)``) for the state at any t in [t0, t_final].

    status: a :class:`dynamics.ode.status.Status` (a str): ``t_end`` (reached the end time), ``stopped`` (the
    stop event fired), ``max_steps`` (the step budget ran out) or ``failed`` (the solver could not go on;
    ``message`` says why).
    """

    t0: float
    t_final: float
    y_final: torch.Tensor = field(repr=False)
    status: Status
    message: str
    ts: np.ndarray  # saved times
    saved: list = field(repr=False)  # saveat.fn values at ts
    events: dict  # event name -> tuple of first-crossing times (None where not crossed), one per level
    stop_time: float | None
    stats: dict
    _dense: "_DenseOutput" = field(repr=False, default=None)

    def __call__(self, t: float) -> torch.Tensor:
        """The state (P,) at time t in [t0, t_final] from the solver's own interpolant."""
        return self._dense(float(t))


class _DenseOutput:
    """Interpolants of every step, kept or rebuilt by replay from checkpoints (bounded memory)."""

    def __init__(self, stepper, t0: float, y0: torch.Tensor, budget: int):
        self.stepper, self.budget = stepper, budget
        self.t0, self.y0 = t0, y0
        self.t_final, self.y_final = t0, y0
        self.steps: list[tuple] = []  # (t0, t1, h) of every accepted step
        self.interps: dict[int, Any] = {}  # step index -> interpolant (all of them, while under budget)
        self.keep_all = True
        self.checkpoints: dict[int, torch.Tensor] = {}  # step index -> state at its start
        self.every = 1  # keep the start state of every m-th step once interpolants are dropped
        self.nbytes = 0
        self.cache: OrderedDict[int, Any] = OrderedDict()  # recently rebuilt interpolants
        self.stats = {"replayed_steps": 0}  # the Solution's stats dict once integration ends

    def add(self, t0, t1, h, y_start: torch.Tensor, interp_fn) -> None:
        """Record step i (t0 -> t1). interp_fn() builds its interpolant; y_start is the state at t0."""
        i = len(self.steps)
        self.steps.append((t0, t1, h))
        if self.keep_all:
            interp = interp_fn()
            self.interps[i] = interp
            self.nbytes += interp.nbytes
            if self.nbytes > self.budget and self.stepper.replayable:
                self._to_checkpoints()
        elif i % self.every == 0:
            self.checkpoints[i] = y_start.clone()
            self.nbytes += y_start.numel() * y_start.element_size()
            if self.nbytes > self.budget:  # thin out: keep every other checkpoint
                self.every *= 2
                for j in [j for j in self.checkpoints if j % self.every]:
                    self.nbytes -= self.checkpoints[j].numel() * self.checkpoints[j].element_size()
                    del self.checkpoints[j]

    def _to_checkpoints(self) -> None:
        self.keep_all = False
        self.nbytes = 0
        per = self.y0.numel() * self.y0.element_size()
        n = len(self.steps)
        self.every = 1
        while (n // self.every + 1) * per > self.budget // 2 and self.every < n:
            self.every *= 2
        for j in range(0, n, self.every):
            self.checkpoints[j] = self.interps[j].y0.clone()
            self.nbytes += per
        self.interps.clear()

    def interp(self, i: int):
        if i in self.interps:
            return self.interps[i]
        if i in self.cache:
            self.cache.move_to_end(i)
            return self.cache[i]
        c = max(j for j in self.checkpoints if j <= i)
        y = self.checkpoints[c]
        # a step rebuilt earlier between the checkpoint and i is a nearer start: its end state is bit for bit the
        # recorded one (replays are exact). Searches (events, the plateau's Brent iterations) query neighbouring
        # steps over and over; without this each query replayed up to `every` steps from the checkpoint.
        near = [j for j in self.cache if c <= j < i]
        if near:
            c = max(near)
            y = self.cache[c].y1
            c += 1
        for j in range(c, i + 1):
            t0, t1, h = self.steps[j]
            it = self.stepper.replay(t0, y, t1, h)
            self.stats["replayed_steps"] += 1
            y = it(t1)
            self.cache[j] = it  # every rebuilt step, the most recent kept (bounded memory: CACHE_STEPS of them)
            self.cache.move_to_end(j)
            if len(self.cache) > CACHE_STEPS:
                self.cache.popitem(last=False)
        return it

    def __call__(self, t: float) -> torch.Tensor:
        if not (self.t0 <= t <= self.t_final):
            raise ValueError(f"t = {t!r} is outside the integrated span [{self.t0}, {self.t_final}]")
        if t == self.t_final:
            return self.y_final
        if not self.steps or t == self.t0:
            return self.y0
        ends = [s[1] for s in self.steps]
        i = int(np.searchsorted(ends, t, side="left"))
        return self.interp(min(i, len(self.steps) - 1))(t)


def locate_crossing(g, a: float, b: float, ga: float, gb: float) -> float:
    """First t in (a, b] where g(t) <= 0, given ga > 0 >= gb: Brent's root, kept on the crossed side."""
    if ga <= 0:
        return a
    xtol = 4 * np.finfo(float).eps * max(abs(a), abs(b)) + 1e-300
    try:
        x = brentq(g, a, b, xtol=xtol, rtol=4 * np.finfo(float).eps, maxiter=200)
    except (ValueError, RuntimeError):
        return b
    gx = g(x)
    if gx <= 0:
        return x
    # the root's float lies just above the crossing: step right by xtol until the crossed side
    lo, hi = x, b
    for _ in range(60):
        if hi - lo <= xtol:
            break
        mid = 0.5 * (lo + hi)
        if g(mid) <= 0:
            hi = mid
        else:
            lo = mid
    return hi


def integrate(stepper, t_end: float, *, saveat: SaveAt | None = None, events=(), stop: Event | None = None,
              max_steps: int = 1_000_000, on_step: Callable | None = None,
              dense_budget_bytes: int = DEFAULT_DENSE_BUDGET) -> Solution:
    """Integrate from the stepper's (t, y) to ``t_end`` (or the stop event); see the module docstring.

    on_step(t, y) is called after every accepted step (progress reports); it may raise to abort.
    """
    if not isinstance(stepper, Stepper):
        raise TypeError(f"integrate needs a dynamics.ode.base.Stepper (from make_stepper or a subclass), "
                        f"not a {type(stepper).__name__}")
    t0 = float(stepper.t)
    y0 = stepper.y.clone()
    dense = _DenseOutput(stepper, t0, y0, dense_budget_bytes)
    ts = saveat.ts if saveat is not None else np.empty(0)
    save_fn = (saveat.fn if saveat is not None and saveat.fn is not None else (lambda t, y: y.clone()))
    saved_t: list[float] = []
    saved: list = []
    j = 0
    while j < len(ts) and ts[j] < t0:
        j += 1
    while j < len(ts) and ts[j] == t0:
        saved_t.append(t0)
        saved.append(save_fn(t0, y0))
        j += 1

    all_events = list(events) + ([stop] if stop is not None else [])
    found = {ev.name: [None] * len(ev.levels) for ev in all_events}
    cache: dict[int, float] = {}

    def value(ev, t, y):
        key = id(ev.fn)  # events that share a function evaluate it once per time
        if key not in cache:
            cache[key] = float(ev.fn(t, y))
        return cache[key]

    prev = {}
    for ev in all_events:
        v = value(ev, t0, y0)
        prev[ev.name] = v
        for k, lv in enumerate(ev.levels):
            if ev.crossed(v, lv):
                found[ev.name][k] = t0
    cache.clear()
    status, message, stop_time = Status.T_END, "", None
    if stop is not None and found[stop.name][0] is not None:
        status, stop_time = Status.STOPPED, t0
    steps = 0
    t, y = t0, y0
    while status is Status.T_END and t < t_end:
        if steps >= max_steps:
            status, message = Status.MAX_STEPS, f"the step budget of {max_steps} steps ran out at t = {t:.6g}"
            break
        y_start = stepper.y
        try:
            ta, tb, h = stepper.step(t_end)
        except SolverFailure as exc:
            status, message = Status.FAILED, str(exc)
            break
        steps += 1
        y_end = stepper.y
        if not bool(torch.isfinite(y_end).all()):
            status, message = Status.FAILED, f"the state became non-finite at t = {tb:.6g}"
            break
        interp = None

        def get_interp():
            nonlocal interp
            if interp is None:
                interp = stepper.interpolant()
            return interp

        dense.add(ta, tb, h, y_start, get_interp)
        # events at the step's end; a crossing is located on the interpolant
        t_cut = tb
        cache.clear()
        for ev in all_events:
            v = value(ev, tb, y_end)
            for k, lv in enumerate(ev.levels):
                if found[ev.name][k] is None and ev.crossed(v, lv):
                    sign = 1.0 if ev.direction < 0 else -1.0

                    def g(s, ev=ev, lv=lv, sign=sign):
                        return sign * (float(ev.fn(s, get_interp()(s))) - lv)

                    tc = locate_crossing(g, ta, tb, sign * (prev[ev.name] - lv), sign * (v - lv))
                    found[ev.name][k] = tc
                    if ev is stop:
                        t_cut = tc
            prev[ev.name] = v
        cache.clear()
        if stop is not None and found[stop.name][0] is not None:
            status, stop_time = Status.STOPPED, t_cut
            for name, times in found.items():  # crossings after the stop did not happen
                found[name] = [None if x is not None and x > t_cut else x for x in times]
        while j < len(ts) and ts[j] <= t_cut:
            s = float(ts[j])
            saved_t.append(s)
            saved.append(save_fn(s, y_end if s == tb else get_interp()(s)))
            j += 1
        t, y = t_cut, (y_end if t_cut == tb else get_interp()(t_cut))
        if on_step is not None:
            on_step(t, y)
    dense.t_final, dense.y_final = t, y
    stats = dict(stepper.stats)
    stats["replayed_steps"] = dense.stats["replayed_steps"]
    dense.stats = stats  # later replays (dense output after the run) are counted here
    stats["dense_bytes"] = dense.nbytes
    stats["dense_mode"] = "all steps kept" if dense.keep_all else f"checkpoint every {dense.every} steps, replay"
    return Solution(t0=t0, t_final=t, y_final=y.clone(), status=status, message=message,
                    ts=np.asarray(saved_t), saved=saved,
                    events={k: tuple(v) for k, v in found.items()}, stop_time=stop_time, stats=stats, _dense=dense)
