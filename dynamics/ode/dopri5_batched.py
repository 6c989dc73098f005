"""DOPRI5 on a batch of independent problems, one per row of a (B, P) state: the arithmetic of
:class:`dynamics.ode.dopri5.Dopri5Stepper` and its :class:`dynamics.ode.controller.PIController` with a per-row
step size, error norm and accept/reject (used by :mod:`dynamics.flow.batched`). Every row takes the steps its
single run takes: the same formulas, vectorized over rows (the error norm of a row is over its own P entries).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from dynamics.ode.base import initial_step
from dynamics.ode.dopri5 import A, BETA, D, E, MAX_FACTOR, MIN_FACTOR, ORDER, SAFETY
from dynamics.ode.tolerances import ATOL_FACTOR

EXPONENT = BETA * 0.75 - 1 / ORDER  # the PI controller's exponent (PIController.exponent)


class BatchedTableau:
    """The Butcher tableau's rows as tensors: a_rows[i] (i,), e_row (7,) error weights, d_row (7,) dense output."""

    def __init__(self, dtype, device):
        self.a_rows = [torch.tensor(a, dtype=dtype, device=device) for a in A]
        self.e_row = torch.tensor(E, dtype=dtype, device=device)
        self.d_row = torch.tensor(D, dtype=dtype, device=device)

    def stages(self, rhs, Y, K, hs_t, ytmp):
        """Fill K[:, 1:7] for steps of sizes hs_t (B,) from Y (K[:, 0] = f(Y) given); ytmp ends as the 5th-order
        solutions. rhs(Y, out, need_loss=False); returns what the last call (need_loss=True) returns."""
        for i in range(1, 7):
            coef = (self.a_rows[i][None, :] * hs_t[:, None])[:, None, :]  # (B, 1, i)
            torch.baddbmm(Y[:, None, :], coef, K[:, :i], out=ytmp[:, None, :])
            if i < 6:
                rhs(ytmp, K[:, i])
            else:
                last = rhs(ytmp, K[:, i], need_loss=True)
        return last

    def error_ratios(self, Y, ytmp, K, hs_t, rtol: float, ATOL, err, scale, scratch) -> np.ndarray:
        """Per row, the RMS of err / (atol + rtol max(|y0|, |y1|)) (B,); err, scale, scratch: (B, P) work arrays."""
        sq = math.sqrt(Y.shape[1])
        torch.bmm((self.e_row[None, :] * hs_t[:, None])[:, None, :], K, out=err[:, None, :])  # (B, P)
        torch.abs(Y, out=scale)
        torch.maximum(scale, torch.abs(ytmp, out=scratch), out=scale)
        scale.mul_(rtol).add_(ATOL)
        return (torch.linalg.vector_norm(err.div_(scale), dim=1) / sq).numpy()


def reject_steps(hs: np.ndarray, ratio: np.ndarray) -> np.ndarray:
    """The retry step sizes after rejections (PIController.reject_factor per row)."""
    return hs * np.fmax(MIN_FACTOR, SAFETY * ratio ** EXPONENT)


def accept_factors(ratio: np.ndarray, err_old: np.ndarray) -> tuple:
    """(factor, r) per row after accepted steps (PIController.accept_factor); r is the new err_old."""
    r = np.maximum(ratio, 1e-10)
    return np.fmin(MAX_FACTOR, np.fmax(MIN_FACTOR, SAFETY * r ** EXPONENT * err_old ** BETA)), r


def starting_steps(rhs, Y, f0, rtol: float, ATOL, span: np.ndarray) -> tuple:
    """Hairer, Norsett & Wanner's starting step (:func:`dynamics.ode.base.initial_step`) per row, with the atol
    ATOL (B, P) of the start; rhs(Y, out) is called once. Returns (h (B,), the evaluations made: 1)."""
    sq = math.sqrt(Y.shape[1])
    scale = Y.abs() * rtol + ATOL
    f0n = (torch.linalg.vector_norm(f0 / scale, dim=1) / sq).numpy()
    y0n = (torch.linalg.vector_norm(Y / scale, dim=1) / sq).numpy()
    h0 = np.where((y0n < 1e-5) | (f0n < 1e-5), 1e-6, 0.01 * y0n / np.where(f0n > 0, f0n, 1.0))
    h0 = np.minimum(h0, span)
    f1 = torch.empty_like(Y)
    rhs(Y + torch.as_tensor(h0, dtype=Y.dtype)[:, None] * f0, f1)
    d1n = (torch.linalg.vector_norm((f1 - f0) / scale, dim=1) / sq).numpy()
    return np.array([initial_step(float(f0n[i]), float(y0n[i]), lambda _h, v=float(d1n[i]): v, ORDER,
                                  float(span[i])) for i in range(len(span))]), 1


def row_floors(Wt: torch.Tensor, atol0: torch.Tensor, rtol: float) -> torch.Tensor:
    """:class:`dynamics.ode.controller.RowAtol` for a batch: Wt (m, C, |A|), atol0 (m,) -> (m, C, |A|) floors
    max(atol, ATOL_FACTOR rtol max_a |W[a, z]|)."""
    rowmax = torch.linalg.vector_norm(Wt, ord=float("inf"), dim=2, keepdim=True)
    return torch.maximum(rowmax * (ATOL_FACTOR * rtol), atol0[:, None, None])
