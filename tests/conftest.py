"""Shared test set-up: the repository on sys.path, float64 as the default dtype (the flow's promise is
float64; a test that wants float32 asks for it), no progress bars, and the `slow` marker's meaning.

The fast suite is the default (``python -m pytest``); ``-m slow`` runs the slow one (cluster, notebook,
install, long subprocess, grammar and sympy-heavy tests), ``-m "slow or not slow"`` both.
"""
import os
import sys

import pytest
import torch

TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(TESTS))
sys.path.insert(0, TESTS)  # helpers.py: the repository root and shared tiny configurations
torch.set_default_dtype(torch.float64)


@pytest.fixture(autouse=True)
def float64():
    """Every test starts with torch's default dtype float64 and leaves it so, whatever it changed."""
    torch.set_default_dtype(torch.float64)
    yield torch.float64
    torch.set_default_dtype(torch.float64)


@pytest.fixture(autouse=True)
def _no_progress_bars(monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
