"""Progress reports for long work: a tqdm bar on a terminal; elsewhere (a log file, a batch job) one plain
line on stderr at most every ``every`` seconds with the count, the total and an ETA, never carriage returns."""
from __future__ import annotations

import sys
import time

LINE_SECONDS = 30.0


class Progress:
    """``update(n)``, ``set_postfix_str(text)`` and ``close()``, as tqdm's; enabled None: only on a terminal."""

    def __init__(self, total: int | None, desc: str, *, unit: str = " steps", enabled: bool | None = None,
                 every: float = LINE_SECONDS, stream=None):
        self.stream = stream if stream is not None else sys.stderr
        tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.enabled = tty if enabled is None else bool(enabled)
        self.total, self.desc, self.unit, self.every = total, desc, unit, every
        self.n, self.postfix = 0, ""
        self.t0 = self.last = time.monotonic()
        self.bar = None
        if self.enabled and tty:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True, file=self.stream)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and time.monotonic() - self.last >= self.every:
            self.last = time.monotonic()
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def line(self) -> str:
        """``desc: n/total units (p%), elapsed, ETA`` (no total: the count and the elapsed time)."""
        el = time.monotonic() - self.t0
        text = f"{self.desc}: {self.n:,}"
        if self.total:
            frac = self.n / self.total
            eta = el * (1 - frac) / frac if frac > 0 else float("nan")
            text += f"/{self.total:,}{self.unit} ({100 * frac:.0f} %), {el:.0f} s elapsed, ETA {eta:.0f} s"
        else:
            text += f"{self.unit}, {el:.0f} s elapsed"
        return text + (f"; {self.postfix}" if self.postfix else "")

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text
        if self.bar is not None:
            self.bar.set_postfix_str(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
