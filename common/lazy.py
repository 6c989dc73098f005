"""Lazy package contents: a package's public names load their submodule on first use, so that the command
lines' ``--help`` (which imports a package to read its choices) does not import torch.

    __getattr__, __dir__, __all__ = lazy_exports(__name__, globals(), {"FlowConfig": "config", ...})
"""
from __future__ import annotations

import importlib
import os
import sys


def lazy_exports(package: str, namespace: dict, names: dict):
    """(__getattr__, __dir__, __all__) for ``package``: each key of ``names`` is taken from the submodule
    it maps to when first asked for (then cached in ``namespace``); any other attribute that names a
    submodule file imports that submodule; anything else is an AttributeError."""
    folder = os.path.dirname(sys.modules[package].__file__)
    public = sorted(names)

    def __getattr__(name):
        if name in names:
            value = getattr(importlib.import_module(f".{names[name]}", package), name)
        elif os.path.exists(os.path.join(folder, f"{name}.py")):  # e.g. dynamics.training.staged
            value = importlib.import_module(f".{name}", package)
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        namespace[name] = value
        return value

    def __dir__():
        return sorted(set(namespace) | set(public))

    return __getattr__, __dir__, public
