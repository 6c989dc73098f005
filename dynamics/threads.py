"""Scoped torch thread count: small matrices run fastest on one thread, without spin-waiting ones."""
from __future__ import annotations

import torch

SINGLE_THREAD_BELOW = 200_000  # state entries: below, one thread (spin-waiting threads cost more than they give)


def threads_for(entries: int, device) -> int:
    """Torch threads for a state of ``entries`` entries on ``device``: 1 on the CPU below SINGLE_THREAD_BELOW,
    else 0 (torch's default)."""
    return 1 if entries < SINGLE_THREAD_BELOW and torch.device(device).type == "cpu" else 0


class torch_threads:
    """Context manager: torch intra-op threads set to ``n`` (0: unchanged), restored on exit."""

    def __init__(self, n: int):
        self.n, self.old = n, torch.get_num_threads()

    def __enter__(self):
        if self.n:
            torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        torch.set_num_threads(self.old)
