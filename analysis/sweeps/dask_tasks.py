"""Generic task execution on Dask (analysis.sweeps.runner): ``fn(item)`` for every item on a Dask client's workers
(a LocalCluster or a running scheduler) or in this process, each task's memory checked against the workers
before anything is submitted, a task whose worker dies retried once, and each outcome handed back in this
process as it ends (run_tasks, open_client)."""
from __future__ import annotations

import contextlib
import os
import re
import sys

from common.errors import ConfigError, check_int

MEMORY_FRACTION = 0.8  # a task may use at most this fraction of a worker's memory limit (Dask pauses at 80 %)
WORKER_PRELOAD = "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"  # local workers ignore Ctrl-C
WORKER_WAIT_SECONDS = 60  # how long a sweep on a running scheduler waits for its first worker
ALLOWED_FAILURES = 1  # a task whose worker dies is run once more; the second death marks it failed


# ----------------------------------------------------------------------------- generic task execution
def one_line(exc: BaseException) -> str:
    """``Type: message`` on one line, at most 500 characters."""
    text = " ".join(str(exc).split())
    line = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return line if len(line) <= 500 else line[:497] + "..."


def call_task(fn, item):
    """``("done", fn(item))`` or ``("failed", one-line error)``: what a worker sends back."""
    try:
        return "done", fn(item)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001
        return "failed", one_line(exc)


def _configure_scheduler(n, dask_scheduler=None):
    """On the scheduler: a task is retried after ``n`` deaths of its worker, and each worker thread holds one
    task at a time (worker-saturation 1.0), so that a dying worker takes down only the run it was running
    (every task assigned to a dead worker counts that death)."""
    dask_scheduler.allowed_failures = n
    dask_scheduler.WORKER_SATURATION = 1.0
    return n


def worker_memory_limits(client) -> list[int]:
    """Each worker's memory limit in bytes (0 where it has none)."""
    info = client.scheduler_info(n_workers=-1) if _takes_n_workers(client) else client.scheduler_info()
    return [int(w.get("memory_limit") or 0) for w in info.get("workers", {}).values()]


def _takes_n_workers(client) -> bool:
    import inspect

    try:
        return "n_workers" in inspect.signature(client.scheduler_info).parameters
    except (TypeError, ValueError):
        return False


def check_task_memory(needs, labels, client=None) -> None:
    """ConfigError if a task needs more memory than any worker (or, in this process, this machine) can hold."""
    if client is None:
        from common.memory import available_memory_bytes

        have, what = available_memory_bytes(), "this machine has available"
    else:
        limits = worker_memory_limits(client)
        if not limits or any(x == 0 for x in limits):
            return  # no worker, or a worker without a limit: nothing to compare with
        have, what = max(limits), "the largest worker's memory limit is"
    for need, label in zip(needs, labels):
        if need is not None and need > MEMORY_FRACTION * have:
            raise ConfigError(f"{label} needs about {need / 2**30:,.2f} GiB but {what} {have / 2**30:,.2f} GiB "
                              f"(at most {MEMORY_FRACTION:.0%} of it per task); give the workers more memory "
                              "(dask worker --memory-limit) or shrink the run")


def run_tasks(fn, items, *, client=None, on_result=None, memory_bytes=None, labels=None, window=None) -> list:
    """Run ``fn(item)`` for every item: on the Dask ``client``'s workers, or in this process (client None), and
    call ``on_result(i, status, value)`` in this process as each ends (status ``done`` with fn's value, or
    ``failed`` with a one-line error; a task whose worker died twice is failed). ``memory_bytes``: each task's
    estimate, checked against the workers before anything is submitted. At most ``window`` tasks are in flight
    (default 4 per worker thread). Returns the (status, value) pairs in the items' order (None where the loop
    was interrupted). A KeyboardInterrupt (Ctrl-C) cancels the tasks in flight and propagates."""
    items = list(items)
    labels = list(labels) if labels is not None else [f"task {i}" for i in range(len(items))]
    if memory_bytes is not None:
        check_task_memory(list(memory_bytes), labels, client)
    outcomes = [None] * len(items)

    def record(i, status, value):
        outcomes[i] = (status, value)
        if on_result is not None:
            on_result(i, status, value)

    if client is None:
        for i, item in enumerate(items):
            status, value = call_task(fn, item)
            record(i, status, value)
        return outcomes
    import uuid

    from distributed import as_completed
    from distributed.client import FutureCancelledError

    try:
        from distributed.scheduler import KilledWorker
    except ImportError:  # pragma: no cover - older layouts
        from distributed import KilledWorker
    with contextlib.suppress(Exception):
        client.run_on_scheduler(_configure_scheduler, ALLOWED_FAILURES)
    if window is None:
        threads = sum(client.nthreads().values()) or 1
        window = 4 * threads
    token = uuid.uuid4().hex[:8]
    index_of = {}
    pending = iter(range(len(items)))

    def submit():
        i = next(pending, None)
        if i is None:
            return None
        fut = client.submit(call_task, fn, items[i], key=f"frd-{token}-{i}", pure=False)
        index_of[fut.key] = i
        return fut

    first = [f for f in (submit() for _ in range(min(window, len(items)))) if f is not None]
    ac = as_completed(first)
    live = set(first)
    try:
        for fut in ac:
            live.discard(fut)
            i = index_of[fut.key]
            try:
                status, value = fut.result()
            except KilledWorker:
                status, value = "failed", (f"the worker process died twice while running it (killed, crashed or "
                                           f"out of memory; retried {ALLOWED_FAILURES}x)")
            except FutureCancelledError:
                status, value = "failed", "cancelled (the scheduler or its workers went away)"
            except Exception as exc:  # noqa: BLE001 - e.g. the task could not be deserialised on the worker
                status, value = "failed", one_line(exc)
            fut.release()
            nxt = submit()
            if nxt is not None:
                ac.add(nxt)
                live.add(nxt)
            record(i, status, value)
    finally:
        if live:
            with contextlib.suppress(Exception):
                client.cancel(list(live), force=True)
    return outcomes


def add_cluster_flags(group, workers_flag: str = "--workers") -> None:
    """The flags of a Dask scheduler (``--scheduler``, ``--tls-ca-file``, ``--tls-cert``, ``--tls-key``,
    ``--insecure-tcp``) on an argparse group: one definition for every program that runs tasks on Dask
    (:func:`open_client`, :func:`check_scheduler`, :func:`make_security` read them). ``workers_flag``: the
    program's flag for the local worker count, named in the help."""
    group.add_argument("--scheduler", default="local", metavar="local|tls://HOST:PORT",
                       help=f"local (default): a Dask LocalCluster on this machine, {workers_flag} processes of one "
                            "thread; tls://HOST:8786: a running Dask scheduler (dask scheduler / dask worker, "
                            "dask-jobqueue) with TLS (the --tls-* flags, or Dask's configuration "
                            "distributed.comm.tls.*); tcp://127.0.0.1:8786: one on this machine without TLS")
    group.add_argument("--tls-ca-file", default=None, metavar="PEM",
                       help="tls://: the CA certificate that signed the scheduler's (and this client's) certificate")
    group.add_argument("--tls-cert", default=None, metavar="PEM", help="tls://: this client's certificate")
    group.add_argument("--tls-key", default=None, metavar="PEM",
                       help="tls://: this client's private key (omit if it is in the --tls-cert file)")
    group.add_argument("--insecure-tcp", action="store_true",
                       help="accept a plain tcp:// scheduler on another machine. tcp:// has no authentication and "
                            "no encryption: whoever reaches the scheduler's port can run any code on the workers "
                            "(tasks are pickled) and read the runs. Acceptable on loopback (always allowed) or on "
                            "a private network where every machine and user is trusted (e.g. a cluster's internal "
                            "network); elsewhere use tls://")


PLAIN_PROTOCOLS = ("tcp", "ws")  # unauthenticated, unencrypted: pickled tasks anyone on the path can send or read
CONNECT_TIMEOUT_SECONDS = 20  # connecting to a running scheduler (a refused TLS handshake ends sooner)


def _is_loopback(host: str) -> bool:
    import ipaddress

    host = host.strip("[]")
    if host.lower() in ("localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: not resolved here (it may point anywhere)


def check_scheduler(scheduler, insecure_tcp: bool = False) -> str:
    """``local`` or a scheduler address (tcp://HOST:PORT, tls://, ws://, wss://, inproc://); else ConfigError.
    Plain tcp:// or ws:// (no authentication, no encryption: whoever reaches the port can run code on the
    workers, and read the tasks) is accepted to a loopback host only, unless ``insecure_tcp``; tls:// or wss://
    with certificates is the way to reach a scheduler on another machine."""
    if scheduler in (None, "", "local"):
        return "local"
    m = re.fullmatch(r"(tcp|tls|ws|wss|inproc)://(\S+)", str(scheduler))
    if not m:
        raise ConfigError(f"scheduler = {scheduler!r} is neither 'local' nor an address such as "
                          "tls://HOST:8786 or tcp://127.0.0.1:8786")
    if m.group(1) in PLAIN_PROTOCOLS and not insecure_tcp:
        hostport = m.group(2).split("/", 1)[0]
        host = hostport.rsplit(":", 1)[0] if hostport.count(":") == 1 or hostport.startswith("[") else hostport
        if not _is_loopback(host):
            raise ConfigError(f"scheduler = {scheduler!r}: plain {m.group(1)}:// to another machine is "
                              "unauthenticated and unencrypted (anyone who reaches the port can run code on the "
                              "workers); use tls://HOST:PORT with --tls-ca-file, --tls-cert and --tls-key, or pass "
                              "--insecure-tcp on a private network you trust")
    return str(scheduler)


def make_security(scheduler: str, ca_file: str | None = None, cert: str | None = None, key: str | None = None):
    """A distributed.security.Security for a tls:// scheduler from certificate files (``ca_file``: the CA that
    signed the scheduler's certificate; ``cert``/``key``: this client's certificate and private key, PEM; the key
    may be inside ``cert``), or None: Dask's own configuration (distributed.comm.tls.*) applies. ConfigError for
    a missing file, or certificates given for an address that is not tls:// or wss://."""
    given = {"--tls-ca-file": ca_file, "--tls-cert": cert, "--tls-key": key}
    if not any(given.values()):
        return None
    if not re.match(r"(tls|wss)://", str(scheduler or "")):
        raise ConfigError(f"{', '.join(k for k, v in given.items() if v)} given, but scheduler = {scheduler!r} is "
                          "not a tls:// address; use --scheduler tls://HOST:PORT")
    for flag, path in given.items():
        if path and not os.path.isfile(path):
            raise ConfigError(f"{flag} {path!r} does not exist; give a PEM file")
    if not ca_file or not cert:
        raise ConfigError("a TLS client needs --tls-ca-file (the CA that signed the scheduler's certificate) and "
                          "--tls-cert (this client's certificate; --tls-key its key unless it is in the same file)")
    from distributed.security import Security

    return Security(tls_ca_file=ca_file, tls_client_cert=cert, tls_client_key=key or None,
                    require_encryption=True)


RESOURCE_TRACKER_FILTER = "ignore:resource_tracker:UserWarning"  # -W for multiprocessing's resource tracker


def quiet_resource_tracker() -> None:
    """multiprocessing's resource tracker (a process started for the LocalCluster's worker processes) warns about
    "leaked" semaphores when it sees this process end, after the program's last line (after "interrupted ..."
    on Ctrl-C). The tracker takes its warning filters from this process's -W options when it starts: ignore
    its own warnings (they name semaphores it then cleans up anyway)."""
    if RESOURCE_TRACKER_FILTER not in sys.warnoptions:
        sys.warnoptions.append(RESOURCE_TRACKER_FILTER)


def stop_resource_tracker() -> None:
    """End the resource tracker now (it cleans up and exits), so that nothing it might print comes after the
    program's last line. Idempotent; harmless where none runs."""
    with contextlib.suppress(Exception):
        from multiprocessing import resource_tracker

        tracker = resource_tracker._resource_tracker
        if getattr(tracker, "_fd", None) is not None and getattr(tracker, "_pid", None) is not None:
            tracker._stop()


@contextlib.contextmanager
def open_client(scheduler: str = "local", workers: int | None = None, *, security=None,
                insecure_tcp: bool = False):
    """A Dask client for ``scheduler``: ``local`` starts a LocalCluster of ``workers`` processes with one thread
    each (default: one per CPU core) and closes it at the end; ``tls://HOST:PORT`` (``security``: a
    distributed.security.Security, see :func:`make_security`, else Dask's configuration) or a loopback
    ``tcp://HOST:PORT`` (another host with ``insecure_tcp``, see :func:`check_scheduler`) connects to a
    running scheduler. ``workers = 1`` with ``local`` yields None: run in this process, without Dask."""
    if scheduler in (None, "", "local"):
        n = workers if workers else (os.cpu_count() or 1)
        n = check_int("workers", n, 1, 4096)
        if n == 1:
            yield None
            return
        import logging

        import dask
        from distributed import Client, LocalCluster

        quiet_resource_tracker()  # before the cluster starts the tracker
        # Ctrl-C reaches every process of the terminal's group: the workers ignore it and this process, which
        # records the rows, stops them (otherwise each worker prints a KeyboardInterrupt traceback)
        with dask.config.set({"distributed.scheduler.allowed-failures": ALLOWED_FAILURES,
                              "distributed.scheduler.worker-saturation": 1.0,
                              "distributed.worker.preload": [WORKER_PRELOAD],
                              # the statistical profiler samples the running task's stack every 10 ms and holds
                              # the GIL meanwhile: it slowed the flows' many small torch calls
                              "distributed.worker.profile.enabled": False}):
            cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                                   silence_logs=logging.CRITICAL)
        try:
            client = Client(cluster)
            try:
                yield client
            finally:
                with contextlib.suppress(Exception):
                    client.close()
        finally:
            with contextlib.suppress(Exception):
                cluster.close()
        return
    check_scheduler(scheduler, insecure_tcp)
    from distributed import Client

    kw = {} if security is None else {"security": security}
    try:
        client = Client(scheduler, timeout=CONNECT_TIMEOUT_SECONDS, **kw)
    except Exception as exc:  # noqa: BLE001 - refused, timed out, TLS handshake or certificate errors
        hint = ("; check --tls-ca-file, --tls-cert and --tls-key (the scheduler's CA, a certificate it accepts)"
                if str(scheduler).startswith(("tls://", "wss://")) else
                "; start one with `dask scheduler` and workers with `dask worker ADDRESS`")
        raise ConfigError(f"could not connect to the Dask scheduler at {scheduler}: {one_line(exc)}{hint}") from None
    try:
        try:
            client.wait_for_workers(1, timeout=WORKER_WAIT_SECONDS)
        except (TimeoutError, OSError):
            raise ConfigError(f"no worker joined the Dask scheduler at {scheduler} within {WORKER_WAIT_SECONDS} s; "
                              "start workers with `dask worker ADDRESS`") from None
        yield client
    finally:
        with contextlib.suppress(Exception):
            client.close()
