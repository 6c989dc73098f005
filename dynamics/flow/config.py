"""Frozen, validated configuration of one exact gradient-flow run."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from common.errors import ConfigError, check_choice, check_device, check_int, check_positive
from common.memory import available_memory_bytes
from models.linear import FLOW_ALPHA, init_entries
from models.task import TaskConfig

from dynamics.choices import BACKENDS, DEFAULT_METHOD, IMPLICIT, INITS, METHODS
from dynamics.ode.tolerances import DEFAULT_RTOL, RTOL_RANGE, check_atol, check_resolves, check_rtol

# The error control is relative to the entries (~alpha), the logits move by O(1) through differences of
# entries, so the logit error is ~alpha^2 rtol: it must stay below LOGIT_ERROR_MAX (measured at S16/R4/D8:
# t1 is off by 1e-5 at alpha 100 and by 4e-4 at alpha 1e3 with rtol 1e-9).
LOGIT_ERROR_MAX = 1e-4
DTYPES = {"float64": torch.float64, "float32": torch.float32}
# From this many state entries the native backend integrates with ROCK4 (dynamics.ode.rock4) unless a method is
# named. Large flows are stiff on their long plateaus (the relation tokens' within-block eigenvalue
# ~ -q K_r^2 / D is 150-400x the slow rate): DOPRI5 runs at its stability limit there, ROCK4 buys stability
# with stages. Measured at the default rtol 1e-9 (RHS evaluations, rock4 vs dopri5): S1024/R32/D32 (1.08 M
# entries) 8,218 vs 11,405; S256/R8/D8 (17 k) 7,845 vs 9,212; but S128/R16/D16 (37 k) 7,349 vs 3,140 and
# S64/R8/D8 (4.4 k) 7,105 vs 2,936 (short plateaus: the extra stages do not pay). The threshold keeps DOPRI5
# wherever it was not measured to lose.
ROCK4_MIN_SIZE = 500_000


@dataclass(frozen=True)
class FlowConfig:
    """One run of the exact population gradient flow of model 1.

    init: ``balanced`` (K = alpha, W = alpha/sqrt|A|), ``uniform`` (every entry alpha),
        or ``file`` (``init_file``: a .npz with arrays W (|A|, |V|) and K (|V|,)).
    t_max: flow time at which to stop if the loss target is not reached first.
    eps_conv: the loss that defines t3; loss_target: stop when L <= loss_target
        (None: eps_conv).
    backend: ``native`` (default; the stage-major Dormand-Prince 5(4) of :mod:`dynamics.ode.dopri5`, or from
        ROCK4_MIN_SIZE state entries on the stabilized explicit ROCK4 of :mod:`dynamics.ode.rock4`),
        ``torchdiffeq`` or ``scipy`` (independent implementations, for cross-checks and other methods).
    rtol, atol: None picks the defaults of :mod:`dynamics.ode.tolerances`. Every accepted (rtol, atol, dtype,
        alpha) resolves the flow (docs/numerics.md, "Which tolerances resolve the flow";
        :func:`dynamics.ode.tolerances.check_resolves`), with m the smallest initial |entry| (alpha/sqrt|A| for
        ``balanced``, alpha for ``uniform``, the file's smallest nonzero one for ``file``, checked when it is read):
        atol <= rtol * m (so the error control stays relative on the entries that carry the escape: the phase times
        then agree with an rtol-1e-12 run to the accuracy of the automatic atol, measured up to 100 rtol m);
        atol at least the dtype's smallest subnormal; m at least the dtype's smallest normal number and
        rtol * m >= 1e3 of the dtype's smallest subnormal (float32: alpha >~ 1e-37 sqrt|A| / (rtol / 1e-5));
        alpha^2 rtol <= LOGIT_ERROR_MAX. Anything else is a ConfigError that names the value it needs.
    samples_per_octave: saved points per doubling of t (plus 16 linear points before).
    max_steps: budget of accepted solver steps; a run that exhausts it ends with status ``max_steps``.
    """

    task: TaskConfig = field(default_factory=TaskConfig)
    init: str = "balanced"
    alpha: float = 1e-5
    init_file: str | None = None
    t_max: float = 1e7
    eps_conv: float = 1e-2
    loss_target: float | None = None
    backend: str = "native"
    method: str | None = None
    rtol: float | None = None
    atol: float | None = None
    dtype: str = "float64"
    device: str = "cpu"
    samples_per_octave: int = 32
    max_steps: int = 1_000_000

    def __post_init__(self):
        if not isinstance(self.task, TaskConfig):
            raise ConfigError("task must be a TaskConfig")
        check_choice("init", self.init, INITS)
        if self.init == "file":
            if not self.init_file:
                raise ConfigError("init = 'file' needs init_file (a .npz with arrays W and K)")
        elif self.init_file is not None:
            raise ConfigError(f"init_file given together with init = {self.init!r}; use init = 'file'")
        object.__setattr__(self, "alpha", FLOW_ALPHA.check(self.alpha))
        object.__setattr__(self, "t_max", check_positive("t_max", self.t_max))
        object.__setattr__(self, "eps_conv", check_positive("eps_conv", self.eps_conv))
        if self.loss_target is not None:
            object.__setattr__(self, "loss_target", check_positive("loss_target", self.loss_target))
        check_choice("backend", self.backend, BACKENDS)
        if self.method is None:
            method = DEFAULT_METHOD[self.backend]
            if self.backend == "native" and self.state_size() >= ROCK4_MIN_SIZE:
                method = "rock4"  # large states are stiff on the plateaus: the stabilized method is cheaper
            object.__setattr__(self, "method", method)
        allowed = METHODS[self.backend]
        if self.method not in allowed:
            raise ConfigError(f"method = {self.method!r} is not available with backend {self.backend!r}; "
                              f"choose one of: {', '.join(allowed)}")
        check_choice("dtype", self.dtype, tuple(DTYPES))
        if self.rtol is not None:  # a documented range (dynamics.ode.tolerances.RTOL_RANGE), with the reason
            object.__setattr__(self, "rtol", check_rtol("rtol", self.rtol, DTYPES[self.dtype]))
        if self.atol is not None:
            object.__setattr__(self, "atol", check_atol("atol", self.atol))
        if self.init != "file" and self.alpha ** 2 * self.resolved_rtol > LOGIT_ERROR_MAX:
            need = LOGIT_ERROR_MAX / self.alpha ** 2
            raise ConfigError(
                f"alpha = {self.alpha:g} with rtol = {self.resolved_rtol:g}: the logits (~alpha^2) would carry errors "
                f"of ~alpha^2 rtol = {self.alpha ** 2 * self.resolved_rtol:.1e} (allowed {LOGIT_ERROR_MAX:g}); "
                + (f"pass rtol <= {need:.1e} or a smaller alpha" if need >= RTOL_RANGE[self.torch_dtype][0]
                   else f"use alpha <= {math.sqrt(LOGIT_ERROR_MAX / RTOL_RANGE[self.torch_dtype][0]):.3g}"))
        if self.init != "file":  # a file's entries are checked when it is read (dynamics.flow.solve.flow_numerics)
            w, k = init_entries(self.init, self.alpha, self.task.R * self.task.D)
            check_resolves(self.resolved_rtol, self.atol, min(w, k), self.torch_dtype,
                           where=f"alpha = {self.alpha:g}")
        object.__setattr__(self, "samples_per_octave", check_int("samples_per_octave",
                                                                 self.samples_per_octave, 4))
        object.__setattr__(self, "max_steps", check_int("max_steps", self.max_steps, 1))
        if self.device != "cpu":
            dev = check_device("device", self.device)
            if self.backend == "scipy" and dev.type != "cpu":
                raise ConfigError("backend = 'scipy' runs on the CPU only; use device = 'cpu'")

    # ---- resolved values --------------------------------------------------------
    @property
    def torch_dtype(self):
        return DTYPES[self.dtype]

    @property
    def resolved_rtol(self) -> float:
        return self.rtol if self.rtol is not None else DEFAULT_RTOL[self.torch_dtype]

    @property
    def resolved_loss_target(self) -> float:
        return self.loss_target if self.loss_target is not None else self.eps_conv

    def state_size(self) -> int:
        t = self.task
        C, A = t.S + t.R + 2, t.R * t.D
        return C * A + C

    def memory_estimate_bytes(self) -> int:
        """Rough peak memory of a run: solver stage vectors, one chunk of saved states,
        the objective's (S+R) x |A| work arrays and the chunked direct paths."""
        t = self.task
        P = self.state_size()
        item = 8 if self.dtype == "float64" else 4
        stages = 30 if self.method in ("dopri8", "DOP853") else (20 if self.method == "rock4" else 16)
        total = item * P * (stages + self.samples_per_octave + 40)
        total += item * 12 * (t.S + t.R + 2) * t.R * t.D
        total += 3 * item * (1 << 22) + item * 4 * t.S * t.R * t.R
        if self.backend == "scipy" and self.method in IMPLICIT:
            total += 2 * 8 * P * P  # dense finite-difference Jacobian and its LU factors
        return int(total)

    def check_memory(self, available: int | None = None) -> None:
        """Raise ConfigError if the run would not fit in this machine's memory."""
        need = self.memory_estimate_bytes()
        have = available if available is not None else available_memory_bytes()
        if need > 0.8 * have:
            t = self.task
            raise ConfigError(
                f"S = {t.S}, R = {t.R}, D = {t.D} ({self.state_size():,} parameters, method {self.method}) needs "
                f"about {need / 2**30:.1f} GiB but this machine has {have / 2**30:.1f} GiB available; "
                f"reduce S, R or D" + (" or use an explicit method (DOP853)" if self.method in IMPLICIT else ""))

    def check_reachable(self, *, noise: bool = True) -> None:
        """Raise ConfigError (with the reason) for a loss target float64 cannot resolve, a t_max beyond any use,
        or a T so large that the noise stiffness keeps the solver from leaving the plateau in max_steps
        (dynamics.flow.reach; the programs call it, library callers may pass 1e-300 to mean "no loss stop")."""
        from dynamics.flow.reach import check_flow_time, check_loss_target, check_noise_stiffness

        check_loss_target(self.resolved_loss_target, "loss_target" if self.loss_target is not None else "eps_conv")
        check_flow_time(self.t_max)
        if noise:  # the class-reduced flow (dynamics.run --mode reduced) has no noise tokens to be stiff
            check_noise_stiffness(self)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["rtol"] = self.resolved_rtol
        d["loss_target"] = self.resolved_loss_target
        return d


