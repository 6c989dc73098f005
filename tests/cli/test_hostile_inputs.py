"""Every row of tests/cli/hostile_inputs.py, each in a fresh interpreter with a timeout: the expected exit
status, one line on stderr starting with the expected words (no echo of a huge value, no warnings), and nothing
written (the --out path and the working folder unchanged)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.cli.hostile_inputs import ROWS
from tests.helpers import ROOT

TIMEOUT = 120
MAX_LINE = 400  # characters: the message stays one short line


def _listing(folder):
    return sorted((os.path.relpath(os.path.join(d, f), folder), os.path.getsize(os.path.join(d, f)))
                  for d, _, files in os.walk(folder) for f in files)


@pytest.mark.slow  # a fresh interpreter per row: 1-4 s each
@pytest.mark.parametrize("program,args,files,status,start", ROWS,
                         ids=[f"{r[0]} {' '.join(r[1])[:60]} {','.join(r[2])}" for r in ROWS])
def test_hostile_input(program, args, files, status, start, tmp_path):
    inp, work = tmp_path / "in", tmp_path / "work"
    inp.mkdir()
    work.mkdir()
    out = work / "out"
    for name, content in files.items():
        data = content() if callable(content) else content
        (out if name == "@out" else inp / name).write_bytes(data)
    argv = [a.format(**{"in": inp, "out": out}) for a in args]
    if "--out" not in argv:
        argv += ["--out", str(out)]
    before, out_before = _listing(work), (out.read_bytes() if out.is_file() else None)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), TQDM_DISABLE="1",
               MPLBACKEND="Agg", PYTHONWARNINGS="default")
    try:
        r = subprocess.run([sys.executable, "-m", program, *argv], cwd=work, env=env, capture_output=True,
                           timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{program} did not end within {TIMEOUT} s")
    err = r.stderr.decode("utf-8", "replace")
    lines = err.splitlines()
    assert r.returncode == status, err[-2000:]
    assert len(lines) == 1, err[-2000:]
    assert lines[0].startswith(start), lines[0][:MAX_LINE]
    assert len(lines[0]) <= MAX_LINE, lines[0][:MAX_LINE]
    assert _listing(work) == before, "the working folder changed"
    assert (out.read_bytes() if out.is_file() else None) == out_before and (out_before is not None or not out.exists())
