"""Atomic output. The folder is the unit: :func:`output_dir` builds a complete new folder under a hidden
temporary name beside its destination and puts it in place as a whole (a new or empty destination is
renamed into; an existing non-empty one is refused unless ``overwrite``, then swapped atomically). Every
file is also written to a temporary name and renamed. Files and folders are created with modes 0o666 and
0o777, so the kernel applies the user's umask (and default ACLs) as for any other program. Temporary
files and folders are removed on every exit path, including SIGINT/SIGTERM (see common.signals).
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil

import numpy as np

from common.errors import ConfigError
from common.signals import critical_section

OVERWRITE_HELP = ("replace an existing non-empty --out: the new output is built completely under a hidden "
                  "temporary name and swapped in as a whole, and the old one is deleted only then (an output "
                  "folder only: never the working folder, its parents or a folder with subfolders); without "
                  "--overwrite an existing non-empty --out is refused (exit status 2) and nothing is computed")

_COMPLETED: list[str] = []  # outputs put in place by this process, in order (see completed_outputs)


def completed_outputs() -> list[str]:
    """The outputs (as given by the caller) that this process has put in place completely so far."""
    return list(_COMPLETED)


def _hidden_name(path: str) -> str:
    """A fresh hidden name beside ``path`` (same folder, so a rename moves it in place atomically)."""
    d, base = os.path.split(path)
    return os.path.join(d, f".{base}.{secrets.token_hex(6)}.tmp")


def _open_tmp(path: str, mode: str = "w"):
    """(file object, name) of a new hidden temporary file beside ``path``, created with mode 0o666 & ~umask."""
    while True:
        tmp = _hidden_name(os.path.abspath(path))
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        return os.fdopen(fd, mode), tmp


@contextlib.contextmanager
def _replacing(path: str, mode: str = "w"):
    """Yield a temporary file object beside ``path``; on success it replaces ``path``, on error it is removed."""
    f = tmp = None
    try:
        with critical_section():  # a signal cannot fall between creating the file and owning its cleanup
            f, tmp = _open_tmp(path, mode)
        with f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with critical_section():
            if f is not None:
                f.close()
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        raise


def write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically (replacing it; use :func:`output_file` for a top-level output)."""
    with _replacing(path) as f:
        f.write(text)


def jsonable(x):
    """numpy values as plain Python, non-finite floats as None, tuples as lists (for JSON)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return x if np.isfinite(x) else None
    return x


def write_json(path: str, obj) -> None:
    """Write ``obj`` as indented JSON (numpy values converted, non-finite floats as null) atomically."""
    write_text(path, json.dumps(jsonable(obj), indent=2, allow_nan=False) + "\n")


def write_csv(path: str, columns: dict) -> None:
    """Columns (name -> 1-D array, all the same length) as a CSV with a header row."""
    names = list(columns)
    data = np.column_stack([np.asarray(columns[n], dtype=np.float64) for n in names])
    with _replacing(path) as f:
        np.savetxt(f, data, delimiter=",", header=",".join(names), comments="", fmt="%.17g")


def save_figure(fig, path: str, **kw) -> None:
    """Save a matplotlib figure atomically; the format is the extension of ``path``, ``kw`` go to savefig."""
    ext = os.path.splitext(path)[1].lstrip(".")
    with _replacing(path, "wb") as f:
        fig.savefig(f, format=ext, **kw)


def _probe_writable(path: str, shown: str) -> None:
    """ConfigError unless a folder can be created beside ``path`` (whose parent may not exist yet)."""
    parent = os.path.dirname(path)
    anc = parent
    while not os.path.lexists(anc):
        up = os.path.dirname(anc)
        if up == anc:
            break
        anc = up
    if not os.path.isdir(anc):
        raise ConfigError(f"out = {shown!r} cannot be created: {anc!r} is not a folder; choose another --out")
    probe = None
    try:
        with critical_section():
            probe = _hidden_name(os.path.join(anc, os.path.basename(path)))
            os.mkdir(probe, 0o700)
    except OSError as exc:
        probe = None
        raise ConfigError(f"out = {shown!r} cannot be written: creating a folder in {anc!r} fails "
                          f"({exc.strerror or exc}); choose another --out") from None
    finally:
        if probe is not None:
            with critical_section(), contextlib.suppress(OSError):
                os.rmdir(probe)


def _check_replaceable(target: str, shown: str) -> None:
    """--overwrite replaces output folders only: never the working folder or one of its parents, never a
    folder with subfolders (every output folder of this project holds files only)."""
    cwd = os.path.realpath(os.getcwd())
    if cwd == target or cwd.startswith(target.rstrip(os.sep) + os.sep):
        raise ConfigError(f"out = {shown!r} is the working folder or one of its parents; --overwrite will not "
                          f"replace it; choose another --out")
    with os.scandir(target) as it:
        sub = next((e.name for e in it if e.is_dir(follow_symlinks=False)), None)
    if sub is not None:
        raise ConfigError(f"out = {shown!r} holds a subfolder ({sub!r}), so it is not an output folder of this "
                          f"program; --overwrite replaces output folders only; choose another --out")


def check_out_text(path, *, kind: str = "folder") -> str:
    """``path`` as a string, unless it cannot name an output at all: empty, whitespace only or with a NUL character
    (one-line ConfigError). Every program's --out goes through it (common.cli.run_program, right after parsing,
    so an empty --out is never taken for "not given"), and check_out again."""
    shown = os.fspath(path) if path is not None else ""
    if not isinstance(shown, str) or not shown.strip():
        raise ConfigError(f"out = {shown!r} is empty; give a {kind} path with --out")
    if "\0" in shown:
        raise ConfigError(f"out = {shown!r} contains a NUL character; give a {kind} path with --out")
    return shown


def check_out(path, *, overwrite: bool = False, kind: str = "folder") -> str:
    """Check, before any work, that ``path`` can receive a new output ``kind`` ("folder" or "file").

    Refused with a one-line ConfigError: an empty path; something of the other kind in the way; an
    existing non-empty folder (or existing file) unless ``overwrite``; a place where nothing can be created
    (``/proc/x``, a read-only file system, a file among the parents). Creates nothing. Returns the absolute
    path with symbolic links resolved (where the output will be put in place).
    """
    if kind not in ("folder", "file"):
        raise ValueError(f"kind = {kind!r}; use 'folder' or 'file'")
    shown = check_out_text(path, kind=kind)
    target = os.path.realpath(os.path.abspath(shown))
    if os.path.lexists(target):
        if kind == "folder":
            if not os.path.isdir(target):
                raise ConfigError(f"out = {shown!r} exists and is not a folder; give a folder path with --out")
            try:
                non_empty = bool(os.listdir(target))
            except OSError as exc:
                raise ConfigError(f"out = {shown!r} cannot be read: {exc.strerror or exc}; "
                                  f"choose another --out") from None
            if non_empty and not overwrite:
                raise ConfigError(f"out = {shown!r} already exists and is not empty; pass --overwrite to replace "
                                  f"it as a whole, or choose another --out")
            if non_empty:
                _check_replaceable(target, shown)
        else:
            if os.path.isdir(target):
                raise ConfigError(f"out = {shown!r} is a folder; give a file path with --out")
            if not overwrite:
                raise ConfigError(f"out = {shown!r} already exists; pass --overwrite to replace it, or choose "
                                  f"another --out")
    _probe_writable(target, shown)
    return target


def _exchange(a: str, b: str) -> bool:
    """Swap the two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _put_in_place(tmp: str, target: str, shown: str, overwrite: bool) -> None:
    """Rename the complete folder ``tmp`` to ``target``; swap with an existing one only if ``overwrite``.

    At every instant ``target`` is the complete old folder or the complete new one (an atomic exchange;
    where the file system cannot exchange, two renames leave ``target`` absent for an instant, never mixed).
    """
    race = (f"out = {shown!r} was created by another process while this one ran; nothing was written here "
            f"(choose another --out, or pass --overwrite to replace it)")
    try:
        os.rename(tmp, target)  # atomic; replaces only a missing or empty folder
        return
    except OSError as exc:
        if exc.errno == errno.ENOTDIR:
            raise ConfigError(f"out = {shown!r} became a file while this run was writing; nothing was "
                              f"written (choose another --out)") from None
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise ConfigError(f"out = {shown!r} could not be put in place: {exc.strerror or exc}; "
                              f"nothing was written") from None
        if not overwrite:
            raise ConfigError(race) from None
    if _exchange(tmp, target):
        shutil.rmtree(tmp, ignore_errors=True)  # the old folder, now under the temporary name
        return
    aside = _hidden_name(target)
    try:
        os.rename(target, aside)
    except FileNotFoundError:  # removed meanwhile: nothing to move aside
        aside = None
    except OSError as exc:
        raise ConfigError(f"out = {shown!r} could not be replaced: {exc.strerror or exc}; "
                          f"nothing was written") from None
    try:
        os.rename(tmp, target)
    except OSError as exc:
        if aside is not None:
            with contextlib.suppress(OSError):
                os.rename(aside, target)
        raise ConfigError(f"out = {shown!r} could not be replaced: {exc.strerror or exc}; "
                          f"nothing was written") from None
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def output_dir(path, *, overwrite: bool = False):
    """Yield an empty temporary folder to write into; when the block succeeds it becomes ``path`` as a whole.

    The folder is built under a hidden temporary name beside ``path`` (``.<name>.<random>.tmp``), then
    renamed into place if ``path`` does not exist or is an empty folder. An existing non-empty ``path`` is
    refused with a ConfigError before anything is built unless ``overwrite``; then the new folder is swapped
    in atomically and the old one deleted after. On any error or signal the temporary folder is removed and
    ``path`` keeps its previous content; a race lost to another process is a one-line ConfigError.
    """
    shown = os.fspath(path)
    target = check_out(shown, overwrite=overwrite)
    tmp, placed = None, False
    try:
        with critical_section():
            os.makedirs(os.path.dirname(target), exist_ok=True)
            tmp = _hidden_name(target)
            os.mkdir(tmp, 0o777)
        try:
            yield tmp
        except OSError as exc:
            raise ConfigError(f"could not write {shown!r}: {exc.strerror or exc}; nothing was written") from None
        with critical_section():  # the swap, the deletion of the old folder and the record are one step
            _put_in_place(tmp, target, shown, overwrite)
            placed = True
            _COMPLETED.append(shown)
    except OSError as exc:  # creating the parent or the temporary folder
        raise ConfigError(f"out = {shown!r} cannot be written: {exc.strerror or exc}; choose another --out") \
            from None
    finally:
        if tmp is not None and not placed:
            with critical_section():
                shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def output_file(path, *, overwrite: bool = False, binary: bool = False):
    """Yield a file object for one top-level output file; it appears at ``path`` complete, or not at all.

    An existing ``path`` is refused (ConfigError) unless ``overwrite``; a file created by another process
    meanwhile makes this one lose the race with a one-line ConfigError.
    """
    shown = os.fspath(path)
    target = check_out(shown, overwrite=overwrite, kind="file")
    f = tmp = None
    try:
        with critical_section():
            os.makedirs(os.path.dirname(target), exist_ok=True)
            f, tmp = _open_tmp(target, "wb" if binary else "w")
        with f:
            yield f
        with critical_section():
            if overwrite:
                os.replace(tmp, target)
            else:
                race = (f"out = {shown!r} was created by another process while this one ran; nothing was "
                        f"written (choose another --out, or pass --overwrite)")
                try:
                    os.link(tmp, target)  # fails if the name exists: never replaces another run's file
                except FileExistsError:
                    raise ConfigError(race) from None
                except OSError:  # no hard links on this file system: check, then rename
                    if os.path.lexists(target):
                        raise ConfigError(race) from None
                    os.rename(tmp, target)
                else:
                    os.unlink(tmp)
            tmp = None
            _COMPLETED.append(shown)
    except OSError as exc:
        raise ConfigError(f"could not write {shown!r}: {exc.strerror or exc}; nothing was written") from None
    finally:
        if tmp is not None:
            with critical_section():
                if f is not None:
                    f.close()
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
