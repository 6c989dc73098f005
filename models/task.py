"""The synthetic factual-recall task of SPEC §1, defined once for the whole project.

Token layout of the input vocabulary ``V`` (size ``S + R + N + 1``)::

    [0, S)            subjects
    [S, S+R)          relations
    [S+R, S+R+N)      noise tokens
    S+R+N             EOS

Answers are output tokens only: relation ``r`` owns the block ``[r*D, (r+1)*D)``
of the ``|A| = R*D`` answers.

The flow (``dynamics``), the samplers and trainers (``models``) and the metrics
all read the fact table and the frequencies from a :class:`Task`.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field

import numpy as np

from common.errors import ConfigError, check_choice, check_int, check_positive

FACT_KINDS = ("structured", "balanced", "random", "file")
# Largest size (S, R, D, T, N) accepted: every index and product of sizes stays far inside int64. Memory
# limits are tighter and are checked separately, with an estimate, by whatever allocates.
MAX_SIZE = 2**31 - 1
# Seeds go to numpy and torch generators; torch takes unsigned 64-bit seeds, numpy any non-negative integer.
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class TaskConfig:
    """Everything that defines the task. Validated at construction.

    S, R, D: numbers of subjects, relations, answers per relation.
    T: sequence length (>= 3); N: number of noise tokens (>= 1).
    facts: ``structured`` | ``balanced`` | ``random`` | ``file`` (then ``facts_file`` is the path).
    zipf_subjects, zipf_relations: Zipf exponents beta_s, beta_r (0 = uniform).
    seed: seeds the ``balanced`` and ``random`` tables.
    Sizes are at most MAX_SIZE and the seed at most MAX_SEED (memory limits are checked where arrays are made).
    """

    S: int = 16
    R: int = 4
    D: int = 8
    T: int = 32
    N: int = 20
    facts: str = "structured"
    facts_file: str | None = None
    zipf_subjects: float = 0.0
    zipf_relations: float = 0.0
    seed: int = 0

    def __post_init__(self):
        for name in ("S", "R", "D", "N"):
            object.__setattr__(self, name, check_int(name, getattr(self, name), 1, MAX_SIZE))
        object.__setattr__(self, "T", check_int("T", self.T, 3, MAX_SIZE))
        object.__setattr__(self, "seed", check_int("seed", self.seed, 0, MAX_SEED))
        if self.facts_file is not None and self.facts == "structured":
            # A file given with the default kind means "use the file".
            object.__setattr__(self, "facts", "file")
        check_choice("facts", self.facts, FACT_KINDS)
        if self.facts == "file" and self.facts_file is None:
            raise ConfigError("facts = 'file' needs a facts_file (a .npy or header-less .csv of shape S x R)")
        if self.facts != "file" and self.facts_file is not None:
            raise ConfigError(f"facts_file given together with facts = {self.facts!r}; "
                              "use facts = 'file' (or leave facts at its default)")
        if self.facts == "balanced" and self.S % self.D != 0:
            raise ConfigError(f"facts = 'balanced' needs D to divide S, got S = {self.S}, D = {self.D}; "
                              "choose S a multiple of D or use facts = 'random'")
        for name in ("zipf_subjects", "zipf_relations"):
            object.__setattr__(self, name, check_positive(name, getattr(self, name), allow_zero=True))

    @property
    def num_answers(self) -> int:
        return self.R * self.D

    @property
    def vocab_size(self) -> int:
        return self.S + self.R + self.N + 1


@dataclass(frozen=True, eq=False)
class Task:
    """A built task: fact table and frequencies as read-only numpy arrays.

    answers: (S, R) int64, global answer index a*(s, r) in relation r's block.
    p: (S,) subject frequencies; q: (R,) relation frequencies (each sums to 1).
    """

    config: TaskConfig
    answers: np.ndarray = field(repr=False)
    p: np.ndarray = field(repr=False)
    q: np.ndarray = field(repr=False)

    # ---- sizes and token layout -------------------------------------------------
    @property
    def S(self) -> int:
        return self.config.S

    @property
    def R(self) -> int:
        return self.config.R

    @property
    def D(self) -> int:
        return self.config.D

    @property
    def T(self) -> int:
        return self.config.T

    @property
    def N(self) -> int:
        return self.config.N

    @property
    def num_answers(self) -> int:
        return self.config.num_answers

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def eos(self) -> int:
        return self.S + self.R + self.N

    def relation_token(self, r):
        return self.S + r

    def noise_token(self, i):
        return self.S + self.R + i

    # ---- derived distributions ---------------------------------------------------
    @property
    def fact_weights(self) -> np.ndarray:
        """(S, R) probabilities p(s) q(r) of each fact."""
        return np.outer(self.p, self.q)

    def p_answer_given_relation(self, weights: np.ndarray | None = None) -> np.ndarray:
        """(R, |A|) array of p(a | r) under fact weights w (default p(s) q(r); zero outside r's block).

        p(a | r) = sum_s w(s, r) 1[a*(s, r) = a] / q(r) with q(r) = sum_s w(s, r) (SPEC §6); a relation
        with q(r) = 0 gets a zero row (it carries no weight in any average).
        """
        if weights is None:  # the product form: p(a|r) = sum_s p(s) 1[a*(s, r) = a], no division
            w, q = np.broadcast_to(self.p[:, None], (self.S, self.R)), np.ones(self.R)
        else:
            w = np.asarray(weights, dtype=np.float64)
            q = w.sum(0)
        P = np.zeros((self.R, self.num_answers))
        for r in range(self.R):
            if q[r] > 0:
                np.add.at(P[r], self.answers[:, r], w[:, r] / q[r])
        return P

    @property
    def log_A(self) -> float:
        """log |A|: the loss of the uniform prediction."""
        return math.log(self.num_answers)

    @property
    def H_A_given_R(self) -> float:
        """H(A|R) = sum_r q(r) H(p(.|r)) in nats: the loss of the relation-only predictor."""
        return self.entropy_given_relation()

    def entropy_given_relation(self, weights: np.ndarray | None = None) -> float:
        """H(A|R) in nats under fact weights w (default p(s) q(r)): sum_r q(r) H(p(.|r))."""
        P = self.p_answer_given_relation(weights)
        q = self.q if weights is None else np.asarray(weights, dtype=np.float64).sum(0)
        with np.errstate(divide="ignore", invalid="ignore"):
            ent = -np.where(P > 0, P * np.log(P), 0.0).sum(axis=1)
        return float(q @ ent)


def zipf(n: int, beta: float) -> np.ndarray:
    """Probabilities proportional to (i+1)^(-beta), i = 0..n-1 (uniform for beta = 0)."""
    w = np.arange(1, n + 1, dtype=np.float64) ** (-beta)
    return w / w.sum()


def make_task(config: TaskConfig) -> Task:
    """Build the fact table and frequencies described by ``config``."""
    S, R, D = config.S, config.R, config.D
    offsets = np.arange(R, dtype=np.int64) * D
    if config.facts == "structured":
        j = np.arange(S, dtype=np.int64)
        answers = (j * D // S)[:, None] + offsets[None, :]
    elif config.facts == "balanced":
        rng = np.random.default_rng(config.seed)
        answers = np.empty((S, R), dtype=np.int64)
        groups = np.arange(S, dtype=np.int64) * D // S  # each of the D answers held S/D times
        for r in range(R):
            answers[rng.permutation(S), r] = groups + offsets[r]
    elif config.facts == "random":
        rng = np.random.default_rng(config.seed)
        answers = rng.integers(0, D, size=(S, R), dtype=np.int64) + offsets[None, :]
    else:
        answers = load_fact_table(config.facts_file, S, R, D)
    answers = np.ascontiguousarray(answers, dtype=np.int64)
    answers.setflags(write=False)
    p = zipf(S, config.zipf_subjects)
    q = zipf(R, config.zipf_relations)
    p.setflags(write=False)
    q.setflags(write=False)
    return Task(config=config, answers=answers, p=p, q=q)


def load_fact_table(path: str, S: int, R: int, D: int) -> np.ndarray:
    """Read and validate a user fact table: an S x R array of global answer indices.

    Accepts ``.npy`` (integer dtype) or a header-less comma-separated ``.csv`` of integers.
    Raises ConfigError naming the file and what is wrong.
    """
    if os.path.isdir(path):
        raise ConfigError(f"facts_file = {path!r} is a folder; give a .npy or .csv file of shape S x R")
    if not os.path.isfile(path):
        raise ConfigError(f"facts_file = {path!r} does not exist; give a .npy or .csv file of shape S x R")
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".npy":
            arr = np.load(path, allow_pickle=False)
            if arr.dtype.kind not in "iu":
                raise ConfigError(f"facts_file = {path!r} holds dtype {arr.dtype}; it must hold integers")
        elif ext == ".csv":
            with warnings.catch_warnings(), np.errstate(all="ignore"):  # an empty file: say so, no warning
                warnings.simplefilter("ignore")
                raw = np.genfromtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
            if raw.size == 0:
                raise ConfigError(f"facts_file = {path!r} is empty; it must be a header-less CSV of integers "
                                  f"of shape (S, R) = ({S}, {R})")
            if not np.all(np.isfinite(raw)):
                raise ConfigError(f"facts_file = {path!r} has empty or non-numeric entries; "
                                  "it must be a header-less CSV of integers")
            if not np.all(raw == np.round(raw)):
                raise ConfigError(f"facts_file = {path!r} has non-integer entries; it must hold integers")
            arr = raw  # integral floats; range-checked below before any cast
        else:
            raise ConfigError(f"facts_file = {path!r} has extension {ext!r}; allowed: .npy, .csv")
    except ConfigError:
        raise
    except Exception as exc:  # malformed file: say so on one line
        raise ConfigError(f"facts_file = {path!r} could not be read ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else 'malformed'})") from None
    if arr.ndim != 2 or arr.shape != (S, R):
        raise ConfigError(f"facts_file = {path!r} has shape {arr.shape}; it must be (S, R) = ({S}, {R})")
    # compare in the file's own type (Python ints for integers: no wrap-around of uint64 or of huge values)
    vals = arr.astype(object) if arr.dtype.kind in "iu" else arr
    lo = np.arange(R, dtype=np.int64)[None, :] * D
    bad = (vals < lo) | (vals >= lo + D)
    if bad.any():
        s, r = map(int, np.argwhere(bad)[0])
        v = arr[s, r]
        shown = int(v) if arr.dtype.kind in "iu" else (int(v) if abs(v) < 2**53 else f"{float(v):g}")
        raise ConfigError(f"facts_file = {path!r}: entry [{s}, {r}] = {shown} is outside relation {r}'s "
                          f"answer block [{r * D}, {r * D + D - 1}]")
    return arr.astype(np.int64)
