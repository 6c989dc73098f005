"""Evaluation of the sampled trainers: the metrics of SPEC §3 on a fixed held-out set of sequences
(:class:`HeldOutEvaluator`), and the steps at which every trainer evaluates (:class:`EvalSchedule`)."""
from __future__ import annotations

import bisect
import math

import numpy as np
import torch

from models.sampler import Batch, TaskSampler
from models.task import Task


class HeldOutEvaluator:
    """Metrics of SPEC §3 averaged over a fixed held-out set of sequences (drawn once, seeded).

    weights: optional (S, R) fact weights v(s, r) (SPEC §6): the sequences' facts are drawn from v and the
    hallucination gap uses p_v(a|r); default the task's p(s) q(r)."""

    def __init__(self, task: Task, size: int, device, seed: int, chunk: int = 1 << 16, weights=None):
        self.task = task
        sampler = TaskSampler(task, device=device, seed=seed, weights=weights)
        self.batch: Batch = sampler.sample(size)
        self.chunk = chunk
        dev = torch.device(device)
        self.answers = sampler.answers  # (S, R)
        P = task.p_answer_given_relation(weights)  # (R, |A|) p(a|r) (under v when given)
        with np.errstate(divide="ignore", invalid="ignore"):
            negH = np.where(P > 0, P * np.log(P), 0.0).sum(1)  # (R,)
        self.P = torch.as_tensor(P, dtype=torch.float32, device=dev)
        self.negH = torch.as_tensor(negH, dtype=torch.float32, device=dev)

    def metric_sums(self, logits: torch.Tensor, b: Batch) -> torch.Tensor:
        """(7,) float64 sums over the batch of: loss, relation-only loss, subject-only loss, correct, gap, p_true
        and the squared loss (for the loss's standard error)."""
        n = logits.shape[0]
        R, D = self.task.R, self.task.D
        logp = torch.log_softmax(logits.float(), dim=1)  # (n, |A|)
        ce = -logp.gather(1, b.targets[:, None])[:, 0]  # (n,)
        blk = logp.view(n, R, D)[torch.arange(n, device=logp.device), b.r]  # (n, D) r's own block
        rel = -torch.logsumexp(blk, dim=1)  # (n,)
        subj = -torch.logsumexp(logp.gather(1, self.answers[b.s]), dim=1)  # (n,) answers of s, all relations
        target_logit = logits.gather(1, b.targets[:, None])[:, 0]  # (n,)
        best_other = logits.scatter(1, b.targets[:, None], -math.inf).amax(1)  # (n,)
        correct = (target_logit > best_other).float()  # (n,) strictly largest, as the population metric
        gap = self.negH[b.r] - (self.P[b.r] * logp).sum(1)  # (n,) KL(p(.|r) || p_hat)
        sums = torch.stack([ce.sum(), rel.sum(), subj.sum(), correct.sum(), gap.sum(), torch.exp(-ce).sum()])
        return torch.cat([sums.double(), (ce.double() ** 2).sum()[None]])  # (7,) float64

    @torch.no_grad()
    def __call__(self, model) -> dict:
        b, n = self.batch, self.batch.tokens.shape[0]
        tot = torch.zeros(7, dtype=torch.float64, device=b.tokens.device)
        for lo in range(0, n, self.chunk):
            sl = slice(lo, min(n, lo + self.chunk))
            part = Batch(b.tokens[sl], b.targets[sl], b.s[sl], b.r[sl])
            tot += self.metric_sums(model(part.tokens), part)
        v = (tot / n).tolist()
        # loss_se: the standard error of the loss as an estimate of the population loss under the set's weights
        # (the sample standard deviation of the per-sequence losses over sqrt(n)). The held-out sequences are
        # drawn once, so every evaluation measures the same sample: the recorded curve is a smooth function of
        # the parameters, and this is the size of its one fixed offset from the population curve.
        var = max(v[6] - v[0] ** 2, 0.0) * n / max(n - 1, 1)
        return dict(loss=v[0], relation_loss=v[1], subject_loss=v[2], accuracy=v[3], hallucination_gap=v[4],
                    p_true=v[5], loss_se=math.sqrt(var / n))


class EvalSchedule:
    """The steps (counted from a stage's start) at which a trainer evaluates: multiples of ``every``, and
    with ``per_octave`` > 0 also round(2^(i / per_octave)) for i = 0, 1, ... (a geometric schedule)."""

    def __init__(self, every: int, per_octave: int, steps: int):
        self.every = every
        geo = set()
        if per_octave > 0 and steps > 0:
            i = 0
            while True:
                k = int(round(2.0 ** (i / per_octave)))
                if k > steps:
                    break
                geo.add(k)
                i += 1
        self.geo = sorted(geo)

    def next_after(self, offset: int) -> int:
        """The first evaluation offset strictly after ``offset``."""
        nxt = offset + self.every - offset % self.every
        j = bisect.bisect_right(self.geo, offset)
        return min(nxt, self.geo[j]) if j < len(self.geo) else nxt

    def __contains__(self, offset: int) -> bool:
        if offset % self.every == 0:
            return True
        j = bisect.bisect_left(self.geo, offset)
        return j < len(self.geo) and self.geo[j] == offset
