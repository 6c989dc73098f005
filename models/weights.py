"""Distributions over facts (SPEC §6): nonnegative weights ``w(s, r)`` summing to 1.

A :class:`Distribution` is a recipe, validated at construction and resolved against a
:class:`models.task.Task` into an (S, R) float64 array::

    Distribution()                                  # the task's own p(s) q(r)
    Distribution(zipf_subjects=1.0)                 # product Zipf p(s) q(r), p(s) ~ (s+1)^-1
    Distribution(subjects=range(0, 128))            # uniform over the facts of subjects 0..127
    Distribution(mix=((0.9, new), (0.1, old)))      # replay: 0.9 new + 0.1 old
    Distribution(weights=w)                         # any (S, R) array of nonnegative weights

The product ``p(s) q(r)`` of the task (SPEC §1) is the special case ``Distribution()``; the
exact population loss and flow under any ``w`` are those of :class:`models.population.PopulationObjective`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from common.errors import ConfigError

from models.task import Task, zipf


def as_indices(name: str, value, n: int) -> tuple:
    """Subject or relation indices from a list of ints, a ``range`` or a ``"lo:hi"`` string (half-open).

    Returns a sorted tuple of distinct ints in [0, n); ConfigError naming ``name`` otherwise.
    """
    if isinstance(value, str):
        parts = value.split(":")
        try:
            if len(parts) != 2:
                raise ValueError
            lo = int(parts[0]) if parts[0].strip() else 0
            hi = int(parts[1]) if parts[1].strip() else n
        except ValueError:
            raise ConfigError(f"{name} = {value!r} is not a range; write \"lo:hi\" (half-open, e.g. \"0:{n // 2}\") "
                              "or a list of indices") from None
        if not 0 <= lo < hi <= n:
            raise ConfigError(f"{name} = {value!r} must satisfy 0 <= lo < hi <= {n}")
        return tuple(range(lo, hi))
    try:
        idx = [int(v) for v in value]
        if any(i != v for i, v in zip(idx, value)):
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"{name} = {value!r} must be a list of integer indices or a \"lo:hi\" range") from None
    if not idx:
        raise ConfigError(f"{name} is empty; give at least one index in [0, {n})")
    bad = [i for i in idx if not 0 <= i < n]
    if bad:
        raise ConfigError(f"{name} holds {bad[0]}, outside [0, {n})")
    if len(set(idx)) != len(idx):
        raise ConfigError(f"{name} repeats an index; list each once")
    return tuple(sorted(idx))


# The largest weight entry and mixture coefficient: sums of up to 1e8 such numbers stay finite in float64 (1.8e308),
# so normalising never overflows (a weights file of 1e308 entries used to be "all weights are zero").
WEIGHT_MAX = 1e300


def normalized(name: str, w, S: int, R: int) -> np.ndarray:
    """Validate nonnegative, finite (S, R) weights and return them divided by their sum (read-only float64)."""
    try:
        w = np.array(w, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be an (S, R) = ({S}, {R}) array of numbers") from None
    if w.shape != (S, R):
        raise ConfigError(f"{name} has shape {w.shape}; it must be (S, R) = ({S}, {R})")
    if not np.all(np.isfinite(w)) or np.any(w > WEIGHT_MAX):
        raise ConfigError(f"{name} holds a weight that is not finite or above {WEIGHT_MAX:g}; entries must be finite, "
                          f">= 0 and at most {WEIGHT_MAX:g}")
    if np.any(w < 0):
        s, r = map(int, np.argwhere(w < 0)[0])
        raise ConfigError(f"{name}: weight [{s}, {r}] = {w[s, r]:g} is negative; weights must be >= 0")
    total = w.sum()
    if not total > 0:
        raise ConfigError(f"{name}: all weights are zero; at least one fact needs a positive weight")
    w = w / total
    w.setflags(write=False)
    return w


def load_weights(path: str, S: int, R: int) -> np.ndarray:
    """An (S, R) weight array from a .npy or header-less .csv file (validated, normalised)."""
    name = f"weights_file = {path!r}"
    if not os.path.isfile(path):
        raise ConfigError(f"{name} does not exist; give a .npy or .csv file of shape (S, R) = ({S}, {R})")
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".npy":
            w = np.load(path, allow_pickle=False)
        elif ext == ".csv":
            w = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
        else:
            raise ConfigError(f"{name} has extension {ext!r}; allowed: .npy, .csv")
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"{name} could not be read ({type(exc).__name__})") from None
    return normalized(name, w, S, R)


@dataclass(frozen=True)
class Distribution:
    """A distribution over the S x R facts; see the module docstring. Validated at construction.

    zipf_subjects, zipf_relations: Zipf exponents of the product base (None: the task's own).
    subjects, relations: restrict the base to these indices (list, range or "lo:hi"; None: all),
        then renormalise.
    weights: an explicit (S, R) array (replaces the base); weights_file: the same from a file.
    mix: ((coefficient, Distribution), ...) — a mixture, coefficients >= 0 (normalised); excludes the rest.
    name: a label for messages and outputs.
    """

    zipf_subjects: float | None = None
    zipf_relations: float | None = None
    subjects: object = None
    relations: object = None
    weights: object = field(default=None, repr=False)
    weights_file: str | None = None
    mix: tuple = ()
    name: str = "train"

    def __post_init__(self):
        n = f"distribution {self.name!r}"
        for k in ("zipf_subjects", "zipf_relations"):
            v = getattr(self, k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v)
                                  or v < 0):
                raise ConfigError(f"{n}: {k} = {v!r} must be a finite number >= 0")
        if self.weights is not None and self.weights_file is not None:
            raise ConfigError(f"{n}: give weights or weights_file, not both")
        if self.mix:
            others = [k for k in ("zipf_subjects", "zipf_relations", "subjects", "relations", "weights",
                                  "weights_file") if getattr(self, k) is not None]
            if others:
                raise ConfigError(f"{n}: mix excludes {', '.join(others)}; put them in the mixed distributions")
            try:
                parts = tuple((float(c), d) for c, d in self.mix)
            except (TypeError, ValueError):
                raise ConfigError(f"{n}: mix must be pairs (coefficient, distribution)") from None
            for c, d in parts:
                if not isinstance(d, Distribution):
                    raise ConfigError(f"{n}: mix entries must name distributions, got {d!r}")
                if not (np.isfinite(c) and 0 <= c <= WEIGHT_MAX):
                    raise ConfigError(f"{n}: mix coefficient {c:g} must be finite, >= 0 and at most {WEIGHT_MAX:g}")
            if not sum(c for c, _ in parts) > 0:
                raise ConfigError(f"{n}: all mix coefficients are zero; at least one must be positive")
            object.__setattr__(self, "mix", parts)
        if isinstance(self.subjects, range):
            object.__setattr__(self, "subjects", tuple(self.subjects))
        if isinstance(self.relations, range):
            object.__setattr__(self, "relations", tuple(self.relations))

    def resolve(self, task: Task) -> np.ndarray:
        """(S, R) float64 weights summing to 1 (read-only). ConfigError if the recipe does not fit the task."""
        S, R = task.S, task.R
        n = f"distribution {self.name!r}"
        if self.mix:
            w = sum(c * d.resolve(task) for c, d in self.mix)
            return normalized(n, w, S, R)
        if self.weights is not None:
            w = np.array(normalized(f"{n}: weights", self.weights, S, R))
        elif self.weights_file is not None:
            w = np.array(load_weights(self.weights_file, S, R))
        else:
            p = task.p if self.zipf_subjects is None else zipf(S, self.zipf_subjects)
            q = task.q if self.zipf_relations is None else zipf(R, self.zipf_relations)
            w = np.outer(p, q)
        if self.subjects is not None:
            keep = np.zeros(S, dtype=bool)
            keep[list(as_indices(f"{n}: subjects", self.subjects, S))] = True
            w[~keep] = 0.0
        if self.relations is not None:
            keep = np.zeros(R, dtype=bool)
            keep[list(as_indices(f"{n}: relations", self.relations, R))] = True
            w[:, ~keep] = 0.0
        if self.subjects is None and self.relations is None and self.weights is None and self.weights_file is None:
            w.setflags(write=False)  # the product itself, bit for bit (no renormalisation)
            return w
        return normalized(n, w, S, R)


def uniform_over(task: Task, subjects=None, relations=None, name: str = "set") -> np.ndarray:
    """(S, R) weights uniform over the facts of the given subjects and relations (None: all)."""
    w = np.ones((task.S, task.R))
    if subjects is not None:
        keep = np.zeros(task.S, dtype=bool)
        keep[list(subjects)] = True
        w[~keep] = 0.0
    if relations is not None:
        keep = np.zeros(task.R, dtype=bool)
        keep[list(relations)] = True
        w[:, ~keep] = 0.0
    return normalized(name, w, task.S, task.R)
