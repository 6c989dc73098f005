"""Shared command-line plumbing: one-line errors with exit status 2, no tracebacks."""
from __future__ import annotations

import argparse
import sys

from .errors import ConfigError


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error message (``prog: error: ...``) and exit status 2."""

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def guarded(main):
    """Decorate ``main(argv) -> int``: ConfigError becomes a one-line message and exit status 2."""

    def wrapper(argv=None):
        try:
            return main(argv)
        except ConfigError as exc:
            sys.stderr.write(f"error: {exc}\n")
            return 2
        except KeyboardInterrupt:
            sys.stderr.write("interrupted; nothing was written\n")
            return 130

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
