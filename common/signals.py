"""SIGINT, SIGTERM and SIGHUP as one exception, and critical sections that a signal cannot cut in two.

Inside :func:`handling_signals` (entered by every command-line program through ``common.cli.guarded``)
these signals raise :class:`Interrupted`, a ``KeyboardInterrupt``, so every ``finally`` and
``except BaseException`` cleanup runs for all three exactly as for Ctrl-C. A signal that arrives inside
:func:`critical_section` (the rename that puts an output folder in place, the removal of a temporary
folder) is held until the section ends; a second signal while the first one unwinds is ignored, so
the cleanup it triggered always finishes. A signal that the parent set to be ignored (``nohup``, a
background job) stays ignored. Outside :func:`handling_signals` (library use, notebooks) nothing changes.
"""
from __future__ import annotations

import contextlib
import signal

HANDLED = tuple(s for s in (getattr(signal, n, None) for n in ("SIGINT", "SIGTERM", "SIGHUP")) if s is not None)


class Interrupted(KeyboardInterrupt):
    """Raised for SIGINT, SIGTERM or SIGHUP; ``exit_status`` is 128 + the signal number (130, 143, 129)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


class _State:
    installed = False  # our handler is in place (inside handling_signals)
    depth = 0          # nesting of critical sections
    pending = None     # signal held back by a critical section
    raised = False     # an Interrupted is already unwinding: later signals are ignored


def _handler(signum, frame):
    if _State.raised:
        return
    if _State.depth:
        _State.pending = signum
        return
    _State.raised = True
    raise Interrupted(signum)


@contextlib.contextmanager
def critical_section():
    """Hold SIGINT/SIGTERM/SIGHUP back until the block is done (only where :func:`handling_signals` is on)."""
    _State.depth += 1
    try:
        yield
    finally:
        _State.depth -= 1
        if not _State.depth and _State.pending is not None and _State.installed and not _State.raised:
            signum, _State.pending = _State.pending, None
            _State.raised = True
            raise Interrupted(signum)


@contextlib.contextmanager
def handling_signals():
    """Turn SIGINT, SIGTERM and SIGHUP into :class:`Interrupted` for the block; restore the handlers after."""
    previous = {}
    saved = (_State.installed, _State.depth, _State.pending, _State.raised)
    try:
        for s in HANDLED:
            try:
                old = signal.getsignal(s)
                if old is signal.SIG_IGN:
                    continue
                signal.signal(s, _handler)
                previous[s] = old
            except (ValueError, OSError):  # not the main thread, or not settable here
                continue
        _State.installed, _State.depth, _State.pending, _State.raised = bool(previous), 0, None, False
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old if old is not None else signal.SIG_DFL)
        _State.installed, _State.depth, _State.pending, _State.raised = saved


def interrupted_by(exc: BaseException | None) -> Interrupted | None:
    """The :class:`Interrupted` that ``exc`` is, or that was unwinding when ``exc`` was raised (its
    ``__context__``/``__cause__`` chain), else None. A signal raised inside a library's C-backed code can make
    that library's cleanup fail with its own error (matplotlib's PDF writer: ``zlib.error: inconsistent stream
    state`` when SIGTERM lands inside its compressor); the run was still interrupted by the signal."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, Interrupted):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def import_native(*modules: str) -> None:
    """Import ``modules`` (torch, say) with SIGINT/SIGTERM/SIGHUP held back until they are loaded.

    Inside :func:`handling_signals` a signal raises :class:`Interrupted` in whatever Python frame runs; during
    torch's import that frame is called from C++ (pybind11), where the exception cannot propagate and the
    process aborts with "terminate called after throwing an instance of 'pybind11::error_already_set'".
    Held back, the signal is raised as soon as the import is done, and the program exits as for any signal.
    """
    import importlib

    with critical_section():
        for name in modules:
            importlib.import_module(name)
