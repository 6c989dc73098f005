"""Shared command-line plumbing: one-line errors with exit status 2, no tracebacks; signals and --out.

Exit statuses of every program: 0 success; 2 bad input (one line on stderr, nothing written); 3 ran but did
not finish (diverged, step budget, solver failure); 130 SIGINT (Ctrl-C), 143 SIGTERM, 129 SIGHUP.
"""
from __future__ import annotations

import argparse
import os
import sys

from common.errors import ConfigError
from common.io import OVERWRITE_HELP, completed_outputs
from common.signals import handling_signals
from common.version import __version__

# console command -> module of every program, as ``python -m`` runs it ([project.scripts] in pyproject.toml is the
# same table, with ``.__main__`` where the program is a package's __main__; tested)
PROGRAMS = {"frd-flow": "dynamics.run", "frd-train": "models.train", "frd-derive": "analysis.derive",
            "frd-sweep": "analysis.sweep", "frd-paper": "figures.paper", "frd-experiment": "dynamics.experiment",
            "frd-grid": "analysis.grid", "frd-capacity": "analysis.capacity"}


EXIT_OK, EXIT_BAD_INPUT, EXIT_UNFINISHED = 0, 2, 3
EXIT_CODES_EPILOG = ("Exit status: 0 success; 2 bad input (one line on stderr, nothing computed or written); "
                     "3 ran but did not finish: diverged, step budget (--max-steps) exhausted or solver failure "
                     "(one line on stderr saying what was written); "
                     "130 SIGINT (Ctrl-C), 143 SIGTERM, 129 SIGHUP.")


def entry_module(module: str) -> str:
    """The module that defines ``main`` of the program ``python -m module``: ``module`` itself, or its
    ``__main__`` where ``module`` is a package (``dynamics.experiment``)."""
    import importlib.util

    spec = importlib.util.find_spec(module)
    return f"{module}.__main__" if spec is not None and spec.submodule_search_locations is not None else module


def program_name(module: str) -> str:
    """How the user started the program ``module``: its console command (``frd-flow``) when that is what
    runs, else ``python -m dynamics.run``; used in usage lines, error messages and ``--version``."""
    command = next(c for c, m in PROGRAMS.items() if m == module)
    invoked = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    for suffix in (".exe", "-script.py"):  # the wrappers pip writes on Windows
        invoked = invoked.removesuffix(suffix)
    return command if invoked == command else f"python -m {module}"


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error message (``prog: error: ...``) and exit status 2, and ``--version``
    (``PROG VERSION``, exit status 0); the epilog lists the exit statuses of every program
    (EXIT_CODES_EPILOG) unless another one is given."""

    def __init__(self, *args, epilog=None, **kwargs):
        super().__init__(*args, epilog=EXIT_CODES_EPILOG if epilog is None else epilog, **kwargs)
        self.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                          help="print the program's name and version and exit")

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def add_overwrite(parser_or_group) -> None:
    """Add the standard ``--overwrite`` flag (see common.io.output_dir for the rule)."""
    parser_or_group.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)


def format_setting(value) -> str:
    """A setting's value as a short, file-name-safe string: 1e-05, 0.5, 10, cuda0, table (a file's stem)."""
    import math
    import os
    import re

    if isinstance(value, bool):
        return ""
    if isinstance(value, float) and math.isfinite(value) and value != 0:
        if value == int(value) and abs(value) < 1e5:
            text = str(int(value))
        elif 0.1 <= abs(value) < 1e5:
            text = f"{value:.15g}"
        else:
            mantissa, exp = f"{value:.14e}".split("e")
            text = f"{mantissa.rstrip('0').rstrip('.')}e{exp}"
    elif isinstance(value, str) and (os.sep in value or os.path.splitext(value)[1]):
        text = os.path.splitext(os.path.basename(value))[0]
    elif isinstance(value, (list, tuple)):
        text = "_".join(format_setting(v) for v in value)
    else:
        text = str(value)
    return re.sub(r"[^A-Za-z0-9.+_-]", "", text.replace(":", ""))[:40]


def default_out(prefix: str, parser: argparse.ArgumentParser, args, *, skip=(), labels=None, first=()) -> str:
    """``prefix`` plus ``-<label><value>`` for every option whose value differs from its default.

    Options in ``skip`` (output and display flags) are left out. ``labels`` maps an option's dest to the
    label put before its value ("" for the value alone, as in ``-reduced``); the default label is the
    option's name without dashes (``--t-max 1e6`` -> ``-tmax1e+06``); a flag that is set adds ``-<name>``.
    Options in ``first`` come first, the others in the parser's order. So runs that differ in any
    result-changing setting get different default folders.
    """
    labels = labels or {}
    skip = set(skip) | {"help", "out", "overwrite", "quiet", "no_plots"}
    parts = []
    for action in parser._actions:
        dest = action.dest
        if dest in skip or dest == argparse.SUPPRESS or not action.option_strings:
            continue
        value = getattr(args, dest, None)
        if value == action.default or value is None:
            continue
        label = labels.get(dest, dest.replace("_", ""))
        parts.append((dest not in first, f"{label}{format_setting(value)}" if not isinstance(value, bool) else
                      (label or dest.replace("_", ""))))
    return "-".join([prefix] + [text for _, text in sorted(parts, key=lambda p: p[0])])


def _is_process_entry(module: str) -> bool:
    """True when ``module`` is what this process runs: ``python -m module`` or its console command."""
    if module == "__main__":  # python -m dynamics.run: main was defined in the __main__ module
        return True
    invoked = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    program = PROGRAMS.get(invoked.removesuffix(".exe").removesuffix("-script.py"))
    return program is not None and module in (program, f"{program}.__main__")


def guarded(main):
    """Decorate ``main(argv) -> int``: ConfigError becomes a one-line message and exit status 2; SIGINT,
    SIGTERM (and SIGHUP) unwind like Ctrl-C (temporary outputs removed) and end with one line and exit
    status 128 + signal (130, 143, 129)."""

    def wrapper(argv=None):
        code = _run(argv)
        if argv is None and _is_process_entry(main.__module__):
            # The program is the whole process (python -m / console command): every output was written
            # atomically and closed before main returned, so skip the interpreter's teardown (torch's alone
            # takes 0.5-1 s of the main job's ~3 s).
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code if isinstance(code, int) else (0 if code is None else 1))
        return code

    def _run(argv):
        before = len(completed_outputs())
        with handling_signals():
            try:
                return main(argv)
            except ConfigError as exc:
                sys.stderr.write(f"error: {exc}\n")
                return 2
            except KeyboardInterrupt as exc:
                done = completed_outputs()[before:]
                if done:
                    sys.stderr.write(f"interrupted; {', '.join(done)} had already been written completely\n")
                else:
                    sys.stderr.write("interrupted; nothing was written\n")
                return getattr(exc, "exit_status", 130)

    wrapper.__name__ = main.__name__
    wrapper.__doc__ = main.__doc__
    return wrapper


def describe_device(device) -> str:
    """Human-readable device line; says plainly when the CPU is used because no GPU is present."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(dev)})"
    return "cpu" + ("" if torch.cuda.is_available() else " (no CUDA GPU found)")
