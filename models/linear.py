"""Model 1 of SPEC §2: linear attention with orthonormal (one-hot) embeddings.

The model is two arrays: ``K[z]`` (one per input token) and ``W[a, z]`` (answer x
input token). The logit of answer ``a`` for a sequence ``z_1..z_T`` is
``xi(a) = sum_t W[a, z_t] K[z_t]``: the sum over positions of the products
``u[a, z] = W[a, z] K[z]``.

Exact population form ("compressed" state). When all noise tokens carry identical
parameters the loss does not depend on which noise tokens were drawn, so the state
keeps one representative noise column. The compressed token axis has
``C = S + R + 2`` entries::

    [0, S) subjects | [S, S+R) relations | S+R the noise representative | S+R+1 EOS

Arrays here are stored token-major: ``Wt`` has shape (C, |A|) (row z is the column
``W[:, z]`` of the spec), ``K`` has shape (C,).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from common.errors import ConfigError, check_choice, check_positive

from models.task import Task

INIT_KINDS = ("balanced", "uniform")


# ----------------------------------------------------------------------------- the initialization scale alpha
@dataclass(frozen=True)
class AlphaRange:
    """The initialization scales alpha a computation supports: ``minimum <= alpha <= maximum`` (``minimum`` None:
    any alpha > 0), with the reason for the bounds (``why``, quoted in the error message)."""

    minimum: float | None
    maximum: float
    why: str

    def contains(self, alpha):
        """True where alpha is in the range (NaN-safe; scalars give a bool, arrays an array)."""
        a = np.asarray(alpha, dtype=np.float64)
        low = a > 0 if self.minimum is None else a >= self.minimum
        inside = low & (a <= self.maximum)
        return bool(inside) if inside.ndim == 0 else inside

    def check(self, alpha, name: str = "alpha", *, why: str | None = None):
        """``alpha`` as a float (an array: unchanged) if every entry is in the range, else ConfigError (a ValueError)
        naming the first entry outside it. ``why``: the reason to quote instead of ``self.why``."""
        why = self.why if why is None else why
        a = np.asarray(alpha, dtype=np.float64) if np.ndim(alpha) else alpha
        if np.ndim(a) == 0:
            return check_positive(name, a, minimum=self.minimum, maximum=self.maximum, why=why)
        bad = ~self.contains(a)
        if bad.any():
            check_positive(name, float(a[bad].flat[0]), minimum=self.minimum, maximum=self.maximum, why=why)
        return alpha


# Initialization scales the float64 flow represents: below the minimum the automatic atol (1e-12 alpha) is
# subnormal and the step control loses relative accuracy. Above the maximum the logits (~alpha^2) need
# relative changes of the entries below ~1e-8 to move by O(1), which float64 cannot resolve (at alpha 1e4
# t3 came out 13x too small; at 1e10 the run "converged" in one step).
FLOW_ALPHA = AlphaRange(1e-300, 1e4, "float64 cannot integrate the flow from smaller or larger initial entries")
# Scales the reduced-flow quadratures (analysis.theory.quadrature) support: every one down to the smallest
# subnormal (they work with log alpha); above the maximum the phase times (~1/alpha^2) fall below 1e-200 and the
# model's logits overflow anyway.
QUADRATURE_ALPHA = AlphaRange(None, 1e100, "above it the phase times fall below 1e-200 and the model's logits "
                                           "overflow")


def init_entries(kind: str, scale: float, num_answers: int) -> tuple:
    """(w, k): every W entry and every K entry of the initialization ``kind`` at ``scale`` (SPEC §2).

    balanced: K[z] = scale, W[a, z] = scale / sqrt(|A|) (so K[z]^2 = sum_a W[a, z]^2); uniform: both scale.
    """
    w = scale / math.sqrt(num_answers) if kind == "balanced" else scale
    return w, scale


# ----------------------------------------------------------------------------- logits
def sequence_logits(W: torch.Tensor, K: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Model 1's answer logits for token sequences: the definition of the model.

    W: (|A|, |V|), K: (|V|,), tokens: (n, T) int64 -> logits (n, |A|).
    xi(a) = sum_t W[a, z_t] K[z_t].
    """
    U = W * K  # (|A|, |V|) products u[a, z]
    return U.T[tokens].sum(dim=1)  # (n, T, |A|) -> (n, |A|)


# ----------------------------------------------------------------------------- state
@dataclass(frozen=True)
class Layout:
    """Sizes of the compressed state of model 1 for a task."""

    S: int
    R: int
    A: int  # number of answers |A| = R*D
    T: int
    N: int

    @property
    def C(self) -> int:
        return self.S + self.R + 2

    @property
    def noise(self) -> int:
        return self.S + self.R

    @property
    def eos(self) -> int:
        return self.S + self.R + 1

    @property
    def size(self) -> int:
        """Number of entries of the flat state vector (Wt then K)."""
        return self.C * self.A + self.C

    def multiplicity(self) -> np.ndarray:
        """(C,) how often each compressed token's product enters a logit (noise: T-3)."""
        m = np.ones(self.C)
        m[self.noise] = self.T - 3
        return m

    def speed(self) -> np.ndarray:
        """(C,) per-token factor of the exact flow: a single noise token appears (T-3)/N times per sequence."""
        v = np.ones(self.C)
        v[self.noise] = (self.T - 3) / self.N
        return v

    def count(self) -> np.ndarray:
        """(C,) how many real tokens each compressed entry stands for (N for the noise representative)."""
        c = np.ones(self.C)
        c[self.noise] = self.N
        return c

    def pack(self, Wt: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
        return torch.cat([Wt.reshape(-1), K.reshape(-1)])

    def unpack(self, y: torch.Tensor):
        """Flat state (P,) -> (Wt (C, |A|), K (C,)) as views."""
        n = self.C * self.A
        return y[:n].view(self.C, self.A), y[n:]


def layout_of(task: Task) -> Layout:
    return Layout(S=task.S, R=task.R, A=task.num_answers, T=task.T, N=task.N)


def init_linear(task: Task, kind: str = "balanced", scale: float = 1e-5, *, dtype=torch.float64,
                device="cpu"):
    """Initial compressed state (Wt (C, |A|), K (C,)) of SPEC §2.

    balanced: K[z] = scale, W[a, z] = scale / sqrt(|A|) (so K[z]^2 = sum_a W[a, z]^2).
    uniform:  every entry equal to scale.
    """
    check_choice("init", kind, INIT_KINDS)
    scale = check_positive("alpha" if kind == "balanced" else "eps", scale)
    L = layout_of(task)
    w, k = init_entries(kind, scale, L.A)
    Wt = torch.full((L.C, L.A), w, dtype=dtype, device=device)
    K = torch.full((L.C,), k, dtype=dtype, device=device)
    return Wt, K


def compress(task: Task, W: np.ndarray, K: np.ndarray):
    """Full parameters (W (|A|, |V|), K (|V|,)) -> compressed (Wt (C, |A|), K (C,)) as float64 numpy.

    Refuses (ConfigError) arrays of the wrong shape, non-finite entries, or noise tokens
    with different parameters: those have no finite exact population loss in this model.
    """
    A, V = task.num_answers, task.vocab_size
    W = np.asarray(W)
    K = np.asarray(K)
    if W.shape != (A, V):
        raise ConfigError(f"init W has shape {W.shape}; it must be (|A|, |V|) = ({A}, {V})")
    if K.shape != (V,):
        raise ConfigError(f"init K has shape {K.shape}; it must be (|V|,) = ({V},)")
    if W.dtype.kind not in "fiu" or K.dtype.kind not in "fiu":
        raise ConfigError("init W and K must hold real numbers")
    if not (np.all(np.isfinite(W)) and np.all(np.isfinite(K))):
        raise ConfigError("init W and K must be finite (found NaN or inf)")
    S, R, N = task.S, task.R, task.N
    noise = slice(S + R, S + R + N)
    Wn, Kn = W[:, noise], K[noise]
    if not (np.all(Wn == Wn[:, :1]) and np.all(Kn == Kn[0])):
        raise ConfigError("init gives different parameters to different noise tokens; the exact population "
                          "flow needs them identical (otherwise the loss depends on which noise tokens are "
                          "drawn and has no finite exact form). Use identical noise columns or a sampled trainer")
    cols = list(range(S + R)) + [S + R, task.eos]
    Wt = np.ascontiguousarray(W[:, cols].T, dtype=np.float64)
    Kc = np.ascontiguousarray(K[cols], dtype=np.float64)
    return Wt, Kc


def expand(task: Task, Wt: np.ndarray, Kc: np.ndarray):
    """Compressed (Wt (C, |A|), K (C,)) -> full (W (|A|, |V|), K (|V|,)), noise columns copied."""
    S, R, N = task.S, task.R, task.N
    idx = np.concatenate([np.arange(S + R), np.full(N, S + R), [S + R + 1]])
    return np.asarray(Wt)[idx].T.copy(), np.asarray(Kc)[idx].copy()
