"""Scaling fit (SPEC §9): slope of log capacity against log parameter count with a confidence interval."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.errors import ConfigError


@dataclass(frozen=True)
class ScalingFit:
    """log N* = intercept + slope · log P fitted by OLS over n points (natural logs).

    stderr: the slope's standard error; ci: (low, high) interval at ``level`` = slope ± t_{(1+level)/2, n-2}·stderr.
    """

    slope: float
    intercept: float
    stderr: float
    ci: tuple
    level: float
    n: int
    r: float

    def predict(self, params) -> np.ndarray:
        """Fitted capacity at parameter counts ``params``."""
        return np.exp(self.intercept) * np.asarray(params, dtype=float) ** self.slope

    def to_dict(self) -> dict:
        return dict(slope=self.slope, intercept=self.intercept, stderr=self.stderr, ci=list(self.ci),
                    level=self.level, n=self.n, r=self.r)


def scaling_fit(params, capacity, level: float = 0.95) -> ScalingFit:
    """OLS of log(capacity) on log(params) over paired points (every seed its own point); needs >= 3 points
    with at least two distinct parameter counts and capacities >= 1."""
    from scipy import stats

    P, C = np.asarray(params, dtype=float).ravel(), np.asarray(capacity, dtype=float).ravel()
    if P.shape != C.shape or P.size < 3:
        raise ConfigError(f"{P.size} points with {C.size} capacities; the fit needs >= 3 paired points")
    if np.any(P <= 0) or np.any(C < 1):
        raise ConfigError("params and capacities must be >= 1 for a log-log fit (a size below its bracket?)")
    if np.unique(P).size < 2:
        raise ConfigError("all points have the same parameter count; give at least two model sizes")
    res = stats.linregress(np.log(P), np.log(C))
    t = stats.t.ppf((1 + level) / 2, P.size - 2)
    return ScalingFit(slope=float(res.slope), intercept=float(res.intercept), stderr=float(res.stderr),
                      ci=(float(res.slope - t * res.stderr), float(res.slope + t * res.stderr)), level=level,
                      n=int(P.size), r=float(res.rvalue))
