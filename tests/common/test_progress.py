"""Progress reports off a terminal: plain lines with the count, total and ETA, no carriage returns."""
import io
import time

from common.progress import Progress
from helpers import TINY


class _Pipe(io.StringIO):
    def isatty(self):
        return False


def test_off_a_terminal_lines_have_count_total_eta_and_no_carriage_return():
    s = _Pipe()
    bar = Progress(100, "linear/sgd", enabled=True, every=0.0, stream=s)
    bar.update(25)
    time.sleep(0.01)
    bar.update(25)
    bar.close()
    text = s.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 2
    assert lines[-1].startswith("linear/sgd: 50/100 steps (50 %)") and "ETA" in lines[-1]
    # the ETA equals the elapsed time for half the work done (within the line's rounding to a second)
    el = float(lines[-1].split(" s elapsed")[0].rsplit(" ", 1)[1])
    eta = float(lines[-1].split("ETA ")[1].split(" s")[0])
    assert abs(eta - el) <= 1


def test_default_is_silent_off_a_terminal_and_throttled():
    s = _Pipe()
    bar = Progress(10, "x", stream=s)  # enabled=None: only on a terminal
    bar.update(10)
    assert s.getvalue() == ""
    s2 = _Pipe()
    bar = Progress(10, "x", enabled=True, every=3600.0, stream=s2)
    bar.update(5)
    assert s2.getvalue() == ""  # not yet time for a line


def test_trainer_progress_in_a_log_has_no_carriage_returns(capfd):
    from dynamics import TrainConfig, train

    train(TrainConfig(task=TINY, optimizer="gd", init="balanced", lr=0.1, steps=50),
          progress=True)
    assert "\r" not in capfd.readouterr().err
