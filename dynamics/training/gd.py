"""Full-batch gradient descent of model 1 on the exact population loss (float64, the flow's own objective):
step k is flow time k * lr. The loop is :meth:`dynamics.training.base.Trainer.run`."""
from __future__ import annotations

import math

import torch

from models.linear import init_linear
from models.population import PopulationObjective
from models.task import Task, make_task

from dynamics.training.base import Leg, Measurement, Trainer
from dynamics.training.config import TrainConfig, resolve_device


class GDTrainer(Trainer):
    """Full-batch gradient descent of model 1 on the exact population loss, float64, same code as the flow.

    The compressed state (Wt (C, |A|), K (C,)) is updated with :meth:`PopulationObjective.value_and_grad`,
    whose rows are per real token (the noise row is the gradient of one noise token), so the step
    equals a GD step on the full parameters (W, K) (noise columns stay identical). Step k is flow time k*lr.
    weights: optional (S, R) fact weights of the objective (SPEC §6; default p(s) q(r)); :meth:`set_weights`
    switches them, keeping the state.
    """

    def __init__(self, config: TrainConfig, task: Task | None = None, weights=None):
        self.config = c = config
        self.task = task if task is not None else make_task(c.task)
        self.device = torch.device("cpu") if c.device == "auto" else resolve_device(c.device)
        self.obj = PopulationObjective(self.task, weights=weights, dtype=torch.float64, device=self.device)
        self.Wt, self.K = init_linear(self.task, c.init, c.init_scale, dtype=torch.float64, device=self.device)

    def set_weights(self, weights) -> None:
        """Descend the exact loss under (S, R) ``weights`` from now on (None: the task's p(s) q(r))."""
        self.obj = PopulationObjective(self.task, weights=weights, dtype=torch.float64, device=self.device)

    def step(self) -> float:
        """One GD step; returns the exact loss of the state it started from (computed with the gradient)."""
        loss, gW, gK = self.obj.value_and_grad(self.Wt, self.K)
        self.Wt.sub_(gW, alpha=self.config.lr)  # (C, |A|)
        self.K.sub_(gK, alpha=self.config.lr)  # (C,)
        return float(loss)

    # ------------------------------------------------------------------ hooks of Trainer.run
    def _begin_run(self) -> None:
        self._limit = math.inf  # DIVERGENCE_FACTOR x max(log|A|, L(0)) once L(0) is known
        self._sets = None  # staged runs: set name -> EvalSet of the current stage

    def _begin_leg(self, leg: Leg) -> None:
        if leg.sets is not None:
            self._sets = {n: (self.obj.train_set if n == "train" else self.obj.eval_set(v))
                          for n, v in leg.sets.items() if v is not None}

    def _measure(self, step: int, leg: Leg) -> Measurement:
        """The exact metrics at ``step``; diverged if the loss is not finite or above the divergence limit."""
        m = {"train": self.obj.metrics(self.Wt, self.K)} if self._sets is None else \
            self.obj.metrics(self.Wt, self.K, sets=self._sets)
        if not m["train"]["loss"] <= self._limit:  # NaN <= x is False
            return Measurement(m, step)
        return Measurement(m, None, m["train"]["loss"])

    def _set_limit(self, limit: float) -> None:
        self._limit = limit

    def _advance(self, n: int) -> tuple[int, bool]:
        """Up to n steps, each checking the exact loss of the state it starts from (on the CPU: no sync cost)."""
        for k in range(n):
            if not self.step() <= self._limit:  # the loss of the state after k of the n steps
                return k, True
        return n, False

    def _trained_model(self):
        return self.Wt, self.K
