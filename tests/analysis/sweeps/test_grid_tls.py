"""Issue 24 item 7: a sweep on a running Dask scheduler over TLS (tls://, --tls-ca-file/--tls-cert/--tls-key):
the same rows as in this process; a client without a certificate the scheduler's CA signed is refused with one
line, exit status 2, within the connect timeout; plain tcp:// to another machine is refused without
--insecure-tcp."""
from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import subprocess
import sys
import time

import pandas as pd
import pytest

from analysis.grid import main

from helpers import ROOT, wait_until_listening  # noqa: E402

TINY_ARGS = ["--S", "8", "--R", "2", "--D", "4", "--T", "4", "--N", "2", "--eps-conv", "0.1", "--facts", "balanced",
             "--grid", "alpha=1e-3,1e-2", "--grid", "seed=0:2"]


def _key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _cert(subject_key, name, issuer_key=None, issuer_name=None, ca=False):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name or subject)
         .public_key(subject_key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                         x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                            critical=False)
    return b.sign(issuer_key or subject_key, hashes.SHA256()), subject


def _write(path, cert=None, key=None):
    from cryptography.hazmat.primitives import serialization

    data = b""
    if cert is not None:
        data += cert.public_bytes(serialization.Encoding.PEM)
    if key is not None:
        data += key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                  serialization.NoEncryption())
    path.write_bytes(data)
    return str(path)


def make_pki(d):
    """A CA with certificates for the scheduler, the worker and the client, and a client of another CA."""
    ca_key = _key()
    ca, ca_name = _cert(ca_key, "frd test CA", ca=True)
    files = {"ca": _write(d / "ca.pem", ca)}
    for who in ("scheduler", "worker", "client"):
        k = _key()
        c, _ = _cert(k, who, ca_key, ca_name)
        files[who] = _write(d / f"{who}.pem", c)
        files[f"{who}-key"] = _write(d / f"{who}-key.pem", key=k)
    rogue_ca_key = _key()
    rogue_ca, rogue_name = _cert(rogue_ca_key, "another CA", ca=True)
    k = _key()
    c, _ = _cert(k, "rogue", rogue_ca_key, rogue_name)
    files["rogue-ca"] = _write(d / "rogue-ca.pem", rogue_ca)
    files["rogue"] = _write(d / "rogue.pem", c, k)  # certificate and key in one file
    return files


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rows(folder):
    df = pd.read_csv(os.path.join(folder, "results.csv"))
    return df.drop(columns=[c for c in df.columns if c in ("worker", "wall_seconds", "integration_seconds")])


@pytest.mark.slow
def test_a_sweep_over_tls_gives_the_in_process_rows_and_strangers_are_refused(tmp_path, capsys):
    pki = make_pki(tmp_path)
    port = free_port()
    addr = f"tls://127.0.0.1:{port}"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), TQDM_DISABLE="1")
    procs = []
    try:
        procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--protocol", "tls",
                                       "--host", "127.0.0.1", "--port", str(port), "--no-dashboard",
                                       "--tls-ca-file", pki["ca"], "--tls-cert", pki["scheduler"],
                                       "--tls-key", pki["scheduler-key"]], cwd=ROOT, env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        if not wait_until_listening(port):
            pytest.fail("the scheduler did not start")
        procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", addr, "--nworkers", "1",
                                       "--nthreads", "1", "--no-dashboard", "--tls-ca-file", pki["ca"],
                                       "--tls-cert", pki["worker"], "--tls-key", pki["worker-key"]], cwd=ROOT,
                                      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        local = str(tmp_path / "local")
        assert main(["flow", *TINY_ARGS, "--workers", "1", "--out", local, "--quiet"]) == 0
        out = str(tmp_path / "tls")
        assert main(["flow", *TINY_ARGS, "--scheduler", addr, "--tls-ca-file", pki["ca"], "--tls-cert",
                     pki["client"], "--tls-key", pki["client-key"], "--out", out, "--quiet"]) == 0
        got, ref = rows(out), rows(local)
        assert list(got["status"]) == ["done"] * 4
        pd.testing.assert_frame_equal(got, ref, check_exact=False, rtol=1e-12)
        assert pd.read_csv(os.path.join(out, "results.csv"))["worker"].nunique() == 1
        capsys.readouterr()
        # strangers: no certificate, or one signed by another CA: one line, exit 2, quickly, nothing written
        for tls in ([], ["--tls-ca-file", pki["rogue-ca"], "--tls-cert", pki["rogue"]],
                    ["--tls-ca-file", pki["ca"], "--tls-cert", pki["rogue"]]):
            never = tmp_path / "never"
            t0 = time.monotonic()
            assert main(["flow", *TINY_ARGS, "--scheduler", addr, *tls, "--out", str(never), "--quiet"]) == 2
            assert time.monotonic() - t0 < 60
            err = capsys.readouterr().err
            assert len(err.strip().splitlines()) == 1 and err.startswith("error: could not connect"), err
            assert not never.exists()
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.mark.parametrize("scheduler,extra,match", [
    ("tcp://10.1.2.3:8786", [], "plain tcp:// to another machine"),
    ("tcp://scheduler.example.org:8786", [], "--insecure-tcp"),
    ("ws://192.168.0.9:8786", [], "plain ws://"),
    ("tcp://127.0.0.1:8786", ["--tls-ca-file", "x.pem"], "not a tls:// address"),
    ("tls://127.0.0.1:8786", ["--tls-ca-file", "/no/such.pem", "--tls-cert", "/no/such.pem"], "does not exist"),
])
def test_plain_tcp_to_another_machine_and_misplaced_tls_flags_are_refused(tmp_path, capsys, scheduler, extra, match):
    never = tmp_path / "never"
    assert main(["flow", *TINY_ARGS, "--scheduler", scheduler, *extra, "--out", str(never), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and match in err, err
    assert not never.exists()


def test_loopback_and_insecure_tcp_are_accepted_by_the_check():
    from analysis.sweeps.dask_tasks import check_scheduler

    for ok in ("tcp://127.0.0.1:8786", "tcp://localhost:8786", "tcp://[::1]:8786", "tls://10.1.2.3:8786", "local"):
        assert check_scheduler(ok)
    assert check_scheduler("tcp://10.1.2.3:8786", insecure_tcp=True) == "tcp://10.1.2.3:8786"
