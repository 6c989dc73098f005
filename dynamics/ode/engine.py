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


def _check_stepper(stepper) -> None:
    """Refuse anything that is not a :class:`dynamics.ode.base.Stepper` (TypeError saying what it got)."""
    if not isinstance(stepper, Stepper):
        raise TypeError(f"integrate needs a dynamics.ode.base.Stepper (from make_stepper or a subclass), "
                        f"not a {type(stepper).__name__}")


def _copy_state(t: float, y: torch.Tensor) -> torch.Tensor:
    """The default saved value: a copy of the state."""
    return y.clone()


def _lazy_interpolant(stepper) -> Callable:
    """A function that returns the interpolant of the stepper's last step, built on the first call only."""
    interp = None

    def get_interp():
        nonlocal interp
        if interp is None:
            interp = stepper.interpolant()
        return interp

    return get_interp


class _Saves:
    """The saveat outputs: ``fn(t, y)`` at every requested time the run reaches, in order."""

    def __init__(self, saveat: SaveAt | None, t0: float, y0: torch.Tensor):
        """Skip the requested times before t0 and save those at t0 (the initial state)."""
        self.ts = saveat.ts if saveat is not None else np.empty(0)
        self.fn = saveat.fn if saveat is not None and saveat.fn is not None else _copy_state
        self.times: list[float] = []
        self.values: list = []
        self.j = 0  # the next requested time not yet saved
        while self.j < len(self.ts) and self.ts[self.j] < t0:
            self.j += 1
        while self.j < len(self.ts) and self.ts[self.j] == t0:
            self.times.append(t0)
            self.values.append(self.fn(t0, y0))
            self.j += 1

    def through(self, t_cut: float, tb: float, y_end: torch.Tensor, get_interp) -> None:
        """Save every requested time up to t_cut inside the step ending at tb (state y_end, interpolant
        get_interp())."""
        while self.j < len(self.ts) and self.ts[self.j] <= t_cut:
            s = float(self.ts[self.j])
            self.times.append(s)
            self.values.append(self.fn(s, y_end if s == tb else get_interp()(s)))
            self.j += 1


def _locate_level(ev: Event, lv: float, ta: float, tb: float, v_start: float, v_end: float, get_interp) -> float:
    """The first time in the step (ta, tb] at which ``ev`` crosses level lv, found on the step's interpolant
    (v_start, v_end: the event's values at ta and tb)."""
    sign = 1.0 if ev.direction < 0 else -1.0

    def g(s):
        return sign * (float(ev.fn(s, get_interp()(s))) - lv)

    return locate_crossing(g, ta, tb, sign * (v_start - lv), sign * (v_end - lv))


class _Crossings:
    """The first crossing time of every level of every event (the stop event included), step by step."""

    def __init__(self, events, stop: Event | None, t0: float, y0: torch.Tensor):
        """Evaluate every event at the initial state; a level already crossed there is found at t0."""
        self.stop = stop
        self.all = list(events) + ([stop] if stop is not None else [])
        self.found = {ev.name: [None] * len(ev.levels) for ev in self.all}
        self.values: dict[int, float] = {}  # id(event function) -> its value at the current time
        self.prev = {}  # event name -> its value at the last step's end
        for ev in self.all:
            v = self.value(ev, t0, y0)
            self.prev[ev.name] = v
            for k, lv in enumerate(ev.levels):
                if ev.crossed(v, lv):
                    self.found[ev.name][k] = t0
        self.values.clear()

    def value(self, ev: Event, t: float, y: torch.Tensor) -> float:
        """ev.fn(t, y) as a float; events that share a function evaluate it once per time."""
        key = id(ev.fn)
        if key not in self.values:
            self.values[key] = float(ev.fn(t, y))
        return self.values[key]

    def after_step(self, ta: float, tb: float, y_end: torch.Tensor, get_interp) -> float:
        """Evaluate the events at the step's end tb and locate every new crossing on its interpolant; returns
        where the step is cut: the stop event's crossing if it crossed in this step, else tb."""
        t_cut = tb
        self.values.clear()
        for ev in self.all:
            v = self.value(ev, tb, y_end)
            for k, lv in enumerate(ev.levels):
                if self.found[ev.name][k] is None and ev.crossed(v, lv):
                    tc = _locate_level(ev, lv, ta, tb, self.prev[ev.name], v, get_interp)
                    self.found[ev.name][k] = tc
                    if ev is self.stop:
                        t_cut = tc
            self.prev[ev.name] = v
        self.values.clear()
        return t_cut

    def stopped(self) -> bool:
        """Whether the stop event has crossed (its first level)."""
        return self.stop is not None and self.found[self.stop.name][0] is not None

    def forget_after(self, t_cut: float) -> None:
        """Drop the crossings after the stop time t_cut: they did not happen."""
        for name, times in self.found.items():
            self.found[name] = [None if x is not None and x > t_cut else x for x in times]

    def times(self) -> dict:
        """Event name -> tuple of first-crossing times (None where not crossed), one per level."""
        return {k: tuple(v) for k, v in self.found.items()}


@dataclass
class _Outcome:
    """Where and why the step loop ended."""

    t: float
    y: torch.Tensor
    status: Status
    message: str = ""
    stop_time: float | None = None


def _run_steps(stepper, t_end: float, t: float, y: torch.Tensor, dense: _DenseOutput, saves: _Saves,
               crossings: _Crossings, max_steps: int, on_step: Callable | None) -> _Outcome:
    """Take accepted steps from (t, y) until t_end, the stop event, the step budget or a solver failure; after
    each one record it for dense output, locate event crossings, save the requested outputs, call on_step."""
    steps = 0
    while t < t_end:
        if steps >= max_steps:
            return _Outcome(t, y, Status.MAX_STEPS, f"the step budget of {max_steps} steps ran out at t = {t:.6g}")
        y_start = stepper.y
        try:
            ta, tb, h = stepper.step(t_end)
        except SolverFailure as exc:
            return _Outcome(t, y, Status.FAILED, str(exc))
        steps += 1
        y_end = stepper.y
        if not bool(torch.isfinite(y_end).all()):
            return _Outcome(t, y, Status.FAILED, f"the state became non-finite at t = {tb:.6g}")
        get_interp = _lazy_interpolant(stepper)
        dense.add(ta, tb, h, y_start, get_interp)
        t_cut = crossings.after_step(ta, tb, y_end, get_interp)
        stopped = crossings.stopped()
        if stopped:
            crossings.forget_after(t_cut)
        saves.through(t_cut, tb, y_end, get_interp)
        t, y = t_cut, (y_end if t_cut == tb else get_interp()(t_cut))
        if on_step is not None:
            on_step(t, y)
        if stopped:
            return _Outcome(t, y, Status.STOPPED, "", t_cut)
    return _Outcome(t, y, Status.T_END)


def _solution(stepper, t0: float, dense: _DenseOutput, saves: _Saves, crossings: _Crossings,
              end: _Outcome) -> Solution:
    """The Solution of a finished run: its end, saved outputs, event times, solver and dense-output statistics."""
    dense.t_final, dense.y_final = end.t, end.y
    stats = dict(stepper.stats)
    stats["replayed_steps"] = dense.stats["replayed_steps"]
    dense.stats = stats  # later replays (dense output after the run) are counted here
    stats["dense_bytes"] = dense.nbytes
    stats["dense_mode"] = "all steps kept" if dense.keep_all else f"checkpoint every {dense.every} steps, replay"
    return Solution(t0=t0, t_final=end.t, y_final=end.y.clone(), status=end.status, message=end.message,
                    ts=np.asarray(saves.times), saved=saves.values, events=crossings.times(),
                    stop_time=end.stop_time, stats=stats, _dense=dense)


def integrate(stepper, t_end: float, *, saveat: SaveAt | None = None, events=(), stop: Event | None = None,
              max_steps: int = 1_000_000, on_step: Callable | None = None,
              dense_budget_bytes: int = DEFAULT_DENSE_BUDGET) -> Solution:
    """Integrate from the stepper's (t, y) to ``t_end`` (or the stop event); see the module docstring.

    on_step(t, y) is called after every accepted step (progress reports); it may raise to abort.
    """
    _check_stepper(stepper)
    t0 = float(stepper.t)
    y0 = stepper.y.clone()
    dense = _DenseOutput(stepper, t0, y0, dense_budget_bytes)
    saves = _Saves(saveat, t0, y0)
    crossings = _Crossings(events, stop, t0, y0)
    if crossings.stopped():  # the stop level is already crossed at the initial state
        end = _Outcome(t0, y0, Status.STOPPED, "", t0)
    else:
        end = _run_steps(stepper, t_end, t0, y0, dense, saves, crossings, max_steps, on_step)
    return _solution(stepper, t0, dense, saves, crossings, end)
