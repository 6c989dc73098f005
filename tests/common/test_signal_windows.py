"""Signals in the windows issue 24 found: during plotting (a library's cleanup failing with its own error while
the Interrupted unwinds) and during startup imports of C++ extensions (torch, matplotlib)."""
import glob
import os
import random
import signal
import subprocess
import sys
import time
import zlib

import pytest

from common.cli import _guard
from common.signals import Interrupted, interrupted_by

from helpers import ROOT, SIGINT_IGNORED, SIGINT_IGNORED_REASON  # noqa: E402


def test_error_raised_while_a_signal_unwinds_is_the_signal(capsys):
    """SIGTERM inside matplotlib's PDF compressor: its cleanup raised zlib.error over the Interrupted, and the
    program ended with a traceback and status 1 instead of 143."""
    def body():
        try:
            raise Interrupted(signal.SIGTERM)
        finally:
            raise zlib.error("Error -2 while flushing: inconsistent stream state")

    assert _guard(body) == 143
    assert capsys.readouterr().err == "interrupted; nothing was written\n"
    assert interrupted_by(ValueError()) is None
    with pytest.raises(ValueError):
        _guard(lambda: (_ for _ in ()).throw(ValueError("a bug stays a bug")))


@pytest.mark.slow
def test_sigterm_during_plotting_exits_143(tmp_path):
    """SIGTERM at random moments while dynamics.run S64/R8/D8 draws its figures (after trajectory.csv is in the
    temporary folder): exit 143 and no folder, or (signal after the swap) the complete folder. 12 tries."""
    delivered = 0
    for i in range(12):
        out = tmp_path / f"o{i}"
        p = subprocess.Popen([sys.executable, "-m", "dynamics.run", "--S", "64", "--R", "8", "--D", "8", "--quiet",
                              "--out", str(out)], cwd=ROOT, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 60
        while p.poll() is None and time.time() < deadline:
            if any(os.path.exists(os.path.join(d, "trajectory.csv")) for d in glob.glob(str(tmp_path / f".o{i}.*"))):
                break
            time.sleep(0.002)
        time.sleep(random.uniform(0.0, 0.8))
        if p.poll() is not None:  # finished before the signal: nothing to test this time
            continue
        os.kill(p.pid, signal.SIGTERM)
        err = p.communicate(timeout=60)[1]
        delivered += 1
        assert p.returncode == 143, err
        assert not out.exists() or sorted(os.listdir(out)) == sorted(
            ["results.json", "trajectory.csv", "loss.png", "loss.pdf", "invariant.png"]), err
    assert delivered >= 6


@pytest.mark.slow
@pytest.mark.skipif(SIGINT_IGNORED, reason=SIGINT_IGNORED_REASON)
def test_sigint_during_paper_startup_never_aborts(tmp_path):
    """SIGINT at random moments in figures.paper's first 1.5 s (parsing, torch and matplotlib imports): never
    'Fatal Python error' / abort (-6); a signal before the handlers are in is Python's own KeyboardInterrupt."""
    for i in range(10):
        p = subprocess.Popen([sys.executable, "-m", "figures.paper", "--out", str(tmp_path / f"p{i}")], cwd=ROOT,
                             stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        time.sleep(random.uniform(0.05, 1.5))
        if p.poll() is None:
            os.kill(p.pid, signal.SIGINT)
        err = p.communicate(timeout=120)[1]
        assert p.returncode not in (-6, 134) and "Fatal Python error" not in err and "terminate called" not in err, err
        assert p.returncode in (130, -2, 1), (p.returncode, err)
