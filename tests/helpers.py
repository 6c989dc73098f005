"""Shared by the tests: the repository root and tiny configurations, small enough for the fast suite and large
enough to have every phase (escape, plateau, convergence) of the flow."""
import os
import signal
import socket
import time

from models.task import TaskConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository (tests/ is its child)

TINY = TaskConfig(S=4, R=2, D=2)                   # 4 facts: the smallest task with two relations
SMALL = TaskConfig(S=8, R=2, D=4, T=7, N=3)        # a short sequence: population sums stay cheap
RANDOM = TaskConfig(S=12, R=3, D=4, facts="random", seed=1)  # a random table: no class symmetry
PAPER = TaskConfig(S=16, R=4, D=8)                 # the main job's task


def wait_until_listening(port: int, seconds: float = 60.0) -> bool:
    """Wait until something listens on 127.0.0.1:``port`` (a scheduler takes a moment to start); False if
    nothing does within ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)

# A shell runs an asynchronous command without job control (`( cmd & )`) with SIGINT ignored; the programs keep
# an ignored signal ignored by design (nohup), and children inherit it, so SIGINT cases cannot be observed then.
SIGINT_IGNORED = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
SIGINT_IGNORED_REASON = "SIGINT is ignored in this test process (started in the background without job control)"
