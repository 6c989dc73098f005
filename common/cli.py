"""Shared command-line plumbing: one-line errors with exit status 2, no tracebacks; signals and --out.

Every program (PROGRAMS) is a :class:`Program` run by :func:`run_program`: its module builds the parser and
has a ``run(args, job)`` that checks its inputs, claims --out (``job.claim``), calls the library, writes and
prints; run_program does the rest, the same way for all.

Exit statuses of every program: 0 success; 2 bad input (one line on stderr, nothing written); 3 ran but did
not finish (diverged, step budget, solver failure); 130 SIGINT (Ctrl-C), 143 SIGTERM, 129 SIGHUP.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass

from common.errors import ConfigError
from common.io import OVERWRITE_HELP, check_out, completed_outputs
from common.signals import handling_signals, import_native, interrupted_by
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


def default_out(prefix: str, parser: argparse.ArgumentParser, args, *, skip=(), labels=None, first=(),
                max_len: int = 60) -> str:
    """``prefix`` plus ``-<label><value>`` for every option whose value differs from its default.

    Options in ``skip`` (output and display flags) are left out. ``labels`` maps an option's dest to the
    label put before its value ("" for the value alone, as in ``-reduced``); the default label is the
    option's name without dashes (``--t-max 1e6`` -> ``-tmax1e+06``); a flag that is set adds ``-<name>``.
    Options in ``first`` come first, the others in the parser's order. So runs that differ in any
    result-changing setting get different default folders.

    A name whose last component would exceed ``max_len`` (default 60) characters keeps ``prefix`` and the leading
    settings that fit, then ``-h`` and 8 hex digits of a hash of every setting: still unique, and short.
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
    texts = [text for _, text in sorted(parts, key=lambda p: p[0])]
    name = "-".join([prefix] + texts)
    if len(os.path.basename(name)) <= max_len:
        return name
    import hashlib

    tag = "-h" + hashlib.sha256("\0".join(texts).encode()).hexdigest()[:8]
    kept = prefix
    for text in texts:  # the leading settings that fit beside the hash, for a reader
        if len(os.path.basename(f"{kept}-{text}")) + len(tag) > max_len:
            break
        kept = f"{kept}-{text}"
    return kept + tag


WORD_MAX = 160  # characters of one word (no spaces) of a message: a path fits, an echoed huge value is cut
MESSAGE_MAX = 600  # characters of a message's text: what is left over is cut in its middle


def _shorten(text: str, limit: int) -> str:
    keep = limit // 2 - 3
    return f"{text[:keep]} ... {text[-keep:]}" if len(text) > limit else text


def one_line(message: str) -> str:
    """``message`` on one line (each line break as a space): each word (a run without spaces) over WORD_MAX
    characters keeps its start and end around ``...`` (an echoed 100 MB value stays short, a path stays whole),
    then a text still over MESSAGE_MAX characters is cut the same way in its middle."""
    text = " ".join(message.splitlines())
    if len(text) > WORD_MAX:
        text = re.sub(r"\S{%d,}" % (WORD_MAX + 1), lambda m: _shorten(m.group(0), WORD_MAX), text)
    return _shorten(text, MESSAGE_MAX)


def _is_process_entry(module: str) -> bool:
    """True when ``module`` is what this process runs: ``python -m module`` or its console command."""
    if module == "__main__":  # python -m dynamics.run: main was defined in the __main__ module
        return True
    invoked = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    program = PROGRAMS.get(invoked.removesuffix(".exe").removesuffix("-script.py"))
    return program is not None and module in (program, f"{program}.__main__")


def _guard(body, interrupted=None):
    """Run ``body()`` -> exit status inside common.signals.handling_signals: a ConfigError becomes one line
    ``error: ...`` and status 2; SIGINT, SIGTERM (and SIGHUP) unwind like Ctrl-C (temporary outputs removed) and
    end with one line and status 128 + signal (130, 143, 129). ``interrupted()``, when given, may return the
    line to print on a signal instead of the standard one (None: the standard one)."""
    before = len(completed_outputs())
    with handling_signals():
        try:
            return body()
        except BaseException as exc:  # a signal, or an error of the cleanup a signal set off (interrupted_by)
            signalled = exc if isinstance(exc, KeyboardInterrupt) else interrupted_by(exc)
            if signalled is None and isinstance(exc, ConfigError):
                sys.stderr.write(f"error: {one_line(str(exc))}\n")
                return EXIT_BAD_INPUT
            if signalled is None:
                raise
            exc = signalled
            note = interrupted() if interrupted is not None else None
            done = completed_outputs()[before:]
            if note is not None:
                sys.stderr.write(f"{note}\n")
            elif done:
                sys.stderr.write(f"interrupted; {', '.join(done)} had already been written completely\n")
            else:
                sys.stderr.write("interrupted; nothing was written\n")
            return getattr(exc, "exit_status", 130)


def _exit_if_process(code, argv, module: str):
    """The program is the whole process (python -m / console command, ``argv`` None): every output was written
    atomically and closed before it returned, so skip the interpreter's teardown (torch's alone takes 0.5-1 s of
    the main job's ~3 s). Otherwise return ``code``."""
    if argv is None and _is_process_entry(module):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code if isinstance(code, int) else (0 if code is None else 1))
    return code


def guarded(main):
    """Decorate ``main(argv) -> int`` with what run_program gives every program (for scripts outside PROGRAMS,
    e.g. bench/throughput.py): ConfigError becomes a one-line message and exit status 2; SIGINT, SIGTERM (and
    SIGHUP) unwind like Ctrl-C (temporary outputs removed) and end with one line and exit status 128 + signal
    (130, 143, 129)."""

    def wrapper(argv=None):
        return _exit_if_process(_guard(lambda: main(argv)), argv, main.__module__)

    wrapper.__name__ = main.__name__
    wrapper.__doc__ = main.__doc__
    return wrapper


class Job:
    """What a program's ``run`` gets besides its parsed arguments: its parser, and the output-folder protocol.

    ``claim(out)`` checks, before any computation, that ``out`` can receive a new folder (common.io.check_out
    with the program's ``--overwrite``); ``folder(out)`` is the atomic common.io.output_dir to write it;
    ``unfinished(message)`` says on stderr that the run ended without finishing and gives exit status 3.
    ``interrupted``: None, or a function the run sets for a stretch of its work, returning the line to print
    if a signal arrives then (None: the standard line), e.g. where a resumable sweep has recorded its runs."""

    def __init__(self, parser: argparse.ArgumentParser, args: argparse.Namespace):
        self.parser, self.args = parser, args
        self.interrupted: Callable[[], str | None] | None = None

    @property
    def overwrite(self) -> bool:
        return bool(getattr(self.args, "overwrite", False))

    def default_out(self, prefix: str, **kw) -> str:
        """common.cli.default_out of the program's parser and arguments."""
        return default_out(prefix, self.parser, self.args, **kw)

    def claim(self, out: str) -> str:
        """``out``, once it is known to accept a new output folder (ConfigError, exit status 2, otherwise)."""
        from common.io import check_out

        check_out(out, overwrite=self.overwrite)
        return out

    def folder(self, out: str):
        """Context manager yielding a temporary folder that becomes ``out`` as a whole (common.io.output_dir)."""
        from common.io import output_dir

        return output_dir(out, overwrite=self.overwrite)

    @staticmethod
    def unfinished(message: str) -> int:
        """Write ``error: <message>`` on stderr and return EXIT_UNFINISHED (3: ran but did not finish)."""
        sys.stderr.write(f"error: {message}\n")
        return EXIT_UNFINISHED


@dataclass(frozen=True)
class Program:
    """One command-line program, as run_program runs it.

    ``module``: the defining module's ``__name__`` ("__main__" under ``python -m``), which tells run_program
    whether the program is the whole process; ``build_parser()``: its ArgumentParser; ``run(args, job)``: calls
    the library and writes, returning EXIT_OK or ``job.unfinished(...)``; ``native``: modules (torch) imported
    after parsing with signals held back (common.signals.import_native), so --help and bad flags answer at once."""

    module: str
    build_parser: Callable[[], argparse.ArgumentParser]
    run: Callable[[argparse.Namespace, Job], int]
    native: tuple = ()


def run_program(program: Program, argv=None) -> int:
    """Run ``program`` on ``argv`` (None: the process's arguments) and return its exit status.

    Parse (argparse: a bad flag is one line and exit status 2; an --out that is given must name a path:
    common.io.check_out_text, so an empty one is refused for every program alike), import ``program.native``, then
    ``program.run(args, job)``, all inside the signal guard: ConfigError -> one line, status 2, nothing written
    (every program checks its inputs and claims --out before computing); an unfinished run -> its line and
    status 3; SIGINT/SIGTERM/SIGHUP -> the temporary outputs removed, one line, status 128 + signal. As the
    whole process (console command or ``python -m``), it ends the process with that status at once."""
    jobs = []

    def body():
        parser = program.build_parser()
        args = parser.parse_args(argv)
        if getattr(args, "out", None) is not None:  # --out '' or '   ' is bad input, not "not given": one check
            from common.io import check_out_text

            check_out_text(args.out)
        if program.native:
            import_native(*program.native)  # a signal during torch's import would abort in C++: held back
        jobs.append(Job(parser, args))
        return program.run(args, jobs[0])

    def interrupted():
        return jobs[0].interrupted() if jobs and jobs[0].interrupted is not None else None

    return _exit_if_process(_guard(body, interrupted), argv, program.module)


def describe_device(device) -> str:
    """Human-readable device line; says plainly when the CPU is used because no GPU is present."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(dev)})"
    return "cpu" + ("" if torch.cuda.is_available() else " (no CUDA GPU found)")


def out_ok(out: str, overwrite: bool) -> bool:
    """For scripts outside the programs (experiments/*.py): whether ``--out`` can receive the results, checked
    right after parsing so a long run is not lost at the end; if not, the reason is one line on stderr (the
    caller exits with EXIT_BAD_INPUT). Refused: an empty path, an existing non-empty folder without
    ``overwrite``, a place where nothing can be created (common.io.check_out)."""
    try:
        check_out(out, overwrite=overwrite)
    except ConfigError as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return False
    return True
