"""A sweep's folder (analysis.sweeps.runner): the results file ``results.jsonl`` (ResultsLog, latest_rows),
spec.json (prepare_folder, spec_difference), results.csv (write_results_csv) and the runs' own folders
(write_run_folder), and what a signal leaves there (interrupted_note)."""
from __future__ import annotations

import json
import os

from common.errors import ConfigError
from common.io import jsonable

from analysis.sweeps.spec import describe

RESULTS_JSONL, RESULTS_CSV, SPEC_JSON = "results.jsonl", "results.csv", "spec.json"
LOCK_NAME = ".frd-grid.lock"  # the client's lock: one frd-grid per sweep folder (SweepLock)


# ----------------------------------------------------------------------------- one client per sweep folder
class SweepLock:
    """An exclusive lock on the sweep folder ``folder`` (``shown``: the name to print): ``fcntl.flock`` on
    ``folder/.frd-grid.lock``, which holds the client's pid. A second client is refused at once (ConfigError:
    "another frd-grid is using OUT (pid N)"); the operating system drops the lock when the process ends, crash
    or kill -9 included, so a stale file left by a crash locks nothing. ``acquire`` creates the folder if it does
    not exist; ``release`` removes the lock file, and the folder too if this lock created it and nothing else
    was written there."""

    def __init__(self, folder: str, shown: str):
        self.folder, self.shown = folder, shown
        self.path = os.path.join(folder, LOCK_NAME)
        self.fd = None
        self.created = False

    def acquire(self) -> "SweepLock":
        import fcntl

        from common.signals import critical_section

        with critical_section():  # a signal cannot fall between taking the lock and owning its release
            if not os.path.isdir(self.folder):
                try:
                    os.makedirs(self.folder)
                    self.created = True
                except FileExistsError:
                    pass
                except OSError as exc:
                    raise ConfigError(f"out = {self.shown!r} cannot be created: {exc.strerror or exc}; choose "
                                      "another --out") from None
            while True:
                try:
                    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
                except OSError as exc:
                    self._remove_created()
                    raise ConfigError(f"out = {self.shown!r} cannot be written: {exc.strerror or exc}; choose "
                                      "another --out") from None
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:  # held by another process (EWOULDBLOCK)
                    pid = _read_pid(fd)
                    os.close(fd)
                    raise ConfigError(f"another frd-grid is using {self.shown} (pid {pid}); wait until it ends, or "
                                      "choose another --out") from None
                try:  # still the file at the path? (a client that ended meanwhile unlinked the one locked here)
                    same = os.path.samestat(os.fstat(fd), os.stat(self.path))
                except FileNotFoundError:
                    same = False
                if same:
                    break
                os.close(fd)
            try:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
            except OSError:  # a full disk: the lock holds without the pid
                pass
            self.fd = fd
        return self

    def _remove_created(self) -> None:
        if self.created:
            try:
                os.rmdir(self.folder)  # only if empty: nothing was written
            except OSError:
                pass

    def release(self) -> None:
        from common.signals import critical_section

        with critical_section():
            if self.fd is None:
                return
            try:
                os.unlink(self.path)  # before closing: a client waiting on this file sees it gone and retries
            except OSError:
                pass
            os.close(self.fd)  # releases the lock
            self.fd = None
            self._remove_created()

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _read_pid(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 32).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text if text.isdigit() else "unknown"


def folder_entries(folder: str) -> list[str]:
    """The entries of a sweep folder other than the client's lock file."""
    return [e for e in os.listdir(folder) if e != LOCK_NAME]


# ----------------------------------------------------------------------------- the results file
class ResultsLog:
    """``results.jsonl`` of a sweep folder: rows appended one line each, atomically enough to survive a crash
    (flush + fsync under an exclusive lock; a partly written last line is ignored, and cut off before the
    next append)."""

    def __init__(self, folder: str):
        self.path = os.path.join(folder, RESULTS_JSONL)

    def read(self) -> list[dict]:
        """Every complete row, in file order (a last line without its newline, or not JSON, is skipped)."""
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return []
        rows = []
        lines = data.split(b"\n")
        for line in lines[:-1]:  # the part after the last newline is incomplete (or empty)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(row, dict) and "key" in row:
                rows.append(row)
        return rows

    def append(self, row: dict) -> None:
        """Append ``row`` as one line (numpy values converted, non-finite floats as null)."""
        from common.signals import critical_section

        line = json.dumps(jsonable(row), allow_nan=False, separators=(",", ":")).encode() + b"\n"

        with critical_section():  # Ctrl-C waits until the line is complete
            self._append(line)

    def _append(self, line: bytes) -> None:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.lseek(fd, 0, os.SEEK_END)
            if size:
                os.lseek(fd, size - 1, os.SEEK_SET)
                if os.read(fd, 1) != b"\n":  # a crash cut the last line: drop it (its run runs again)
                    cut = _last_newline(fd, size)
                    os.ftruncate(fd, cut)
                    size = cut
            os.lseek(fd, size, os.SEEK_SET)
            view = memoryview(line)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)  # releases the lock


def _last_newline(fd: int, size: int) -> int:
    """The offset just after the last newline before ``size`` (0 if none)."""
    pos = size
    while pos > 0:
        start = max(0, pos - 65536)
        os.lseek(fd, start, os.SEEK_SET)
        chunk = os.read(fd, pos - start)
        k = chunk.rfind(b"\n")
        if k >= 0:
            return start + k + 1
        pos = start
    return 0


def latest_rows(rows) -> dict:
    """key -> the last row recorded for it."""
    out = {}
    for r in rows:
        out[r["key"]] = r
    return out


# ----------------------------------------------------------------------------- the sweep folder
def _flat(d: dict, prefix="") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def spec_difference(old: dict, new: dict) -> str | None:
    """A phrase naming the first difference between two spec.json contents (None if they are the same)."""
    if old == new:
        return None
    for k in ("kind", "experiment_file", "batch"):
        if old.get(k) != new.get(k):
            return f"{k} is {old.get(k)!r} there and {new.get(k)!r} here"
    fo, fn = _flat(old.get("base", {})), _flat(new.get("base", {}))
    for k in list(fo) + [k for k in fn if k not in fo]:
        if fo.get(k, "unset") != fn.get(k, "unset"):
            return f"base field {k} is {fo.get(k, 'unset')!r} there and {fn.get(k, 'unset')!r} here"
    go, gn = old.get("grid", []), new.get("grid", [])
    if len(go) != len(gn):
        return f"the grid has {len(go)} runs there and {len(gn)} here"
    for i, (a, b) in enumerate(zip(go, gn)):
        if a != b:
            return f"grid run {i} is {describe(a)} there and {describe(b)} here"
    return "the specs differ"


def prepare_folder(out: str, spec_doc: dict, *, overwrite: bool = False, create: bool = True) -> tuple[str, bool]:
    """Create the sweep folder with spec.json, or check that an existing one holds the same spec (resume).
    Refused (ConfigError): a folder that holds another sweep (unless ``overwrite``: it is emptied and the
    sweep starts over) or other files (unless ``overwrite``). ``create = False`` only checks. Returns (the
    absolute path, whether it continues a sweep: its results.jsonl counts)."""
    import shutil

    from common.io import check_out, write_json

    if not out or not str(out).strip():
        raise ConfigError("out is empty; give the sweep folder with --out")
    target = os.path.realpath(os.path.abspath(out))
    spec_path = os.path.join(target, SPEC_JSON)
    if os.path.isfile(spec_path) and not overwrite:
        try:
            with open(spec_path) as f:
                old = json.load(f)
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"out = {out!r} holds an unreadable {SPEC_JSON} ({exc}); pass --overwrite to start "
                              "the sweep over, or choose another --out") from None
        diff = spec_difference(old, spec_doc)
        if diff is not None:
            raise ConfigError(f"out = {out!r} holds another sweep ({diff}); re-run the same command to continue "
                              "that one, pass --overwrite to start over, or choose another --out")
        return target, True
    if os.path.lexists(target):
        if not os.path.isdir(target):
            raise ConfigError(f"out = {out!r} exists and is not a folder; give a folder path with --out")
        if folder_entries(target):
            if not overwrite:
                raise ConfigError(f"out = {out!r} already exists, is not empty and holds no sweep ({SPEC_JSON}); "
                                  "pass --overwrite to replace it, or choose another --out")
            cwd = os.path.realpath(os.getcwd())
            if cwd == target or cwd.startswith(target.rstrip(os.sep) + os.sep):
                raise ConfigError(f"out = {out!r} is the working folder or one of its parents; --overwrite will "
                                  "not replace it; choose another --out")
            if not os.path.isfile(spec_path):
                check_out(out, overwrite=True)  # an output folder of files only, as every program's --overwrite
            if create:  # empty it, but keep the lock file of this client (SweepLock)
                for e in folder_entries(target):
                    path = os.path.join(target, e)
                    if os.path.isdir(path) and not os.path.islink(path):
                        shutil.rmtree(path)
                    else:
                        os.unlink(path)
    else:
        check_out(out)  # a place where a folder can be created
    if create:
        os.makedirs(target, exist_ok=True)
        write_json(spec_path, spec_doc)
    return target, False


def write_results_csv(folder: str, rows: list[dict], varied=()) -> str:
    """results.csv: one row per run (the last recorded), in grid order, without histories and run files."""
    import pandas as pd

    from common.io import write_text

    skip = {"history", "files", "confirmation"}
    rows = sorted(latest_rows(rows).values(), key=lambda r: r.get("index", 0))
    first = ["index", "key", "status", "error"] + [v for v in varied]
    cols = list(first)
    for r in rows:
        for k in r.get("params", {}):
            if k not in cols:
                cols.append(k)
        for k in r:
            if k not in cols and k not in skip and k != "params":
                cols.append(k)
    table = []
    for r in rows:
        flat = {**{k: v for k, v in r.items() if k not in skip and k != "params"}, **r.get("params", {})}
        table.append({c: flat.get(c) for c in cols})
    df = pd.DataFrame(table, columns=cols)
    path = os.path.join(folder, RESULTS_CSV)
    write_text(path, df.to_csv(index=False))
    return path


def write_run_folder(folder: str, row: dict, params: dict) -> None:
    """runs/<key>/ (results.json and the trajectory or history), built under a hidden name and renamed into
    place; an OSError (a full disk) leaves no partial folder and propagates as it is."""
    import shutil
    import secrets

    from common.io import write_csv, write_json
    from common.signals import critical_section

    files = row.get("files")
    if not files:
        return
    runs = os.path.join(folder, "runs")
    dest = os.path.join(runs, row["key"])
    tmp = None
    try:
        with critical_section():
            os.makedirs(runs, exist_ok=True)
            tmp = os.path.join(runs, f".{row['key']}.{secrets.token_hex(6)}.tmp")
            os.mkdir(tmp, 0o777)
        write_json(os.path.join(tmp, "results.json"), dict(key=row["key"], index=row["index"], params=params,
                                                           results=files["results"]))
        name, cols = files["table"]
        write_csv(os.path.join(tmp, name), cols)
        with critical_section():
            if os.path.isdir(dest):  # a run recorded before (--retry-failed): replaced
                shutil.rmtree(dest)
            os.rename(tmp, dest)
            tmp = None
    finally:
        if tmp is not None:
            with critical_section():
                shutil.rmtree(tmp, ignore_errors=True)


def interrupted_note(out: str):
    """For common.cli's Job.interrupted while a sweep writes into ``out``: a function giving the line a signal
    prints (the runs recorded so far stay in ``out`` and the same command continues; None if nothing is there).
    It first ends the LocalCluster's resource tracker, whose warnings would otherwise follow that line."""
    jsonl = os.path.join(out, "results.jsonl")

    def note():
        from analysis.sweeps.dask_tasks import stop_resource_tracker

        stop_resource_tracker()
        if os.path.isfile(jsonl):
            return (f"interrupted; the runs finished so far are recorded in {jsonl} (and {out}/results.csv); run "
                    "the same command again to continue")
        if os.path.isfile(os.path.join(out, "spec.json")):
            return (f"interrupted before any run finished; {out} holds the sweep's spec.json; run the same command "
                    "again to start it")
        return None

    return note
