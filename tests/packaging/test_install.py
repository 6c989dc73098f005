"""Issue 13: a non-editable install works away from the checkout.

A copy of the project is installed (not editable) into a fresh virtual environment that reuses this
interpreter's packages (torch, setuptools), offline; every console command then answers --help and --version
from a folder outside the repository, and imports the installed copy, not the checkout. About 10 s.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from common import __version__
from common.cli import PROGRAMS

from helpers import ROOT  # noqa: E402

pytestmark = pytest.mark.slow  # pip installs into fresh virtual environments
PACKAGES = ("common", "models", "dynamics", "analysis", "figures")


def _version(dist: str) -> tuple:
    from importlib.metadata import version

    return tuple(int(p) for p in version(dist).split(".")[:2] if p.isdigit())


@pytest.mark.slow
def test_non_editable_install_console_commands(tmp_path):
    if _version("pip") < (22, 3) or _version("setuptools") < (77, 0):
        pytest.skip("needs pip >= 22.3 (--python) and setuptools >= 77 (PEP 639 license) in this interpreter")
    src = tmp_path / "src"  # a copy: an in-tree build must not leave build/ in the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(os.path.join(ROOT, name), src / name)
    for pkg in PACKAGES:
        shutil.copytree(os.path.join(ROOT, pkg), src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], check=True)
    py = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps",
                        "--no-build-isolation", "--no-index", str(src)], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    away = tmp_path / "elsewhere"
    away.mkdir()
    r = subprocess.run([str(py), "-c", "import common, dynamics; print(common.__file__); print(dynamics.__file__)"],
                       cwd=away, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and all(line.startswith(str(venv)) for line in r.stdout.split()), r.stdout + r.stderr
    for cmd in PROGRAMS:
        exe = str(venv / "bin" / cmd)
        h = subprocess.run([exe, "--help"], cwd=away, env=env, capture_output=True, text=True, timeout=60)
        assert h.returncode == 0 and h.stdout.startswith(f"usage: {cmd} "), (cmd, h.stdout[:200], h.stderr[-1000:])
        v = subprocess.run([exe, "--version"], cwd=away, env=env, capture_output=True, text=True, timeout=60)
        assert (v.returncode, v.stdout) == (0, f"{cmd} {__version__}\n"), (cmd, v.stdout, v.stderr)
    bad = subprocess.run([str(venv / "bin" / "frd-flow"), "--S", "0"], cwd=away, env=env, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr  # sys.exit(main())
    assert os.listdir(away) == []
