"""Atomic output: every file is written to a temporary name and renamed into place."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile

import numpy as np


def _tmp_path(path: str) -> str:
    d, base = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=d)
    os.close(fd)
    return tmp


def write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    tmp = _tmp_path(path)
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return x if np.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def write_json(path: str, obj) -> None:
    """Write ``obj`` as indented JSON (numpy values converted, non-finite floats as null) atomically."""
    write_text(path, json.dumps(_jsonable(obj), indent=2, allow_nan=False) + "\n")


def write_csv(path: str, columns: dict) -> None:
    """Columns (name -> 1-D array, all the same length) as a CSV with a header row."""
    names = list(columns)
    data = np.column_stack([np.asarray(columns[n], dtype=np.float64) for n in names])
    tmp = _tmp_path(path)
    try:
        np.savetxt(tmp, data, delimiter=",", header=",".join(names), comments="", fmt="%.17g")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_figure(fig, path: str, **kw) -> None:
    """Save a matplotlib figure atomically; the format is the extension of ``path``, ``kw`` go to savefig."""
    ext = os.path.splitext(path)[1].lstrip(".")
    tmp = _tmp_path(path)
    try:
        fig.savefig(tmp, format=ext, **kw)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def output_dir(path: str):
    """Yield a folder to write into; on success it becomes ``path``, on error nothing is left.

    A new folder is built under a temporary name beside ``path`` and renamed at the end.
    An existing folder is written into file by file (each file atomically) and kept.
    """
    path = os.path.abspath(path)
    if os.path.isdir(path):
        yield path
        return
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=parent)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
