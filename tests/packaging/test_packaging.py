"""Issue 13: the project as a researcher installs and cites it.

The specification ships in docs/, every program is a console command with --version, --help answers without
importing torch or matplotlib, the version has one source, the licence and citation files are there, and
models.train's flags have choices, a default --out and the paper's --d.
"""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys

import pytest

from common import __version__
from common.cli import PROGRAMS, entry_module, program_name

from helpers import ROOT  # noqa: E402
HEAVY = ("torch", "matplotlib")


def _env():
    return dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _pyproject() -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


# ----------------------------------------------------------------------------- --help and --version
@pytest.mark.parametrize("module", sorted(PROGRAMS.values()))
def test_help_imports_neither_torch_nor_matplotlib(module):
    """``python -m <module> --help`` as a user runs it, with -X importtime listing every module imported."""
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", module, "--help"], cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith(f"usage: python -m {module}"), r.stdout[:200]
    imported = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in r.stderr.splitlines()
                if line.startswith("import time:") and "|" in line}
    assert "common" in imported  # the listing works
    assert not imported & set(HEAVY), f"{module} --help imported {sorted(imported & set(HEAVY))}"


@pytest.mark.parametrize("module", sorted(PROGRAMS.values()))
def test_parsing_help_in_process_loads_nothing_heavy(module):
    """build_parser().parse_args(["--help"]) in a fresh interpreter: neither torch nor matplotlib in sys.modules."""
    code = (f"import sys, importlib; m = importlib.import_module({entry_module(module)!r})\n"
            "try:\n    m.build_parser().parse_args(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
            f"print(sorted(h for h in {HEAVY!r} if h in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "[]", r.stdout[-500:]


@pytest.mark.parametrize("module", sorted(PROGRAMS.values()))
def test_version_prints_program_and_version(module):
    r = subprocess.run([sys.executable, "-m", module, "--version"], cwd=ROOT, env=_env(), capture_output=True,
                       text=True, timeout=60)
    assert (r.returncode, r.stdout, r.stderr) == (0, f"python -m {module} {__version__}\n", "")


def test_console_command_names_itself(monkeypatch, capsys):
    """Started as the console command (argv[0] .../frd-flow), usage, errors and --version say frd-flow."""
    from dynamics.run import build_parser

    monkeypatch.setattr(sys, "argv", ["/venv/bin/frd-flow"])
    assert program_name("dynamics.run") == "frd-flow"
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out == f"frd-flow {__version__}\n"
    monkeypatch.setattr(sys, "argv", ["/somewhere/else"])
    assert build_parser().prog == "python -m dynamics.run"


@pytest.mark.slow  # a fresh interpreter importing torch: ~10 s
def test_console_wrapper_exits_with_main_status():
    """setuptools' console wrapper is ``sys.exit(main())``: a bad flag exits 2 with one line, as documented."""
    code = "import sys; from models.train import main; sys.exit(main())"
    r = subprocess.run([sys.executable, "-c", code, "--lr", "0"], cwd=ROOT, env=_env(), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "lr" in r.stderr, r.stderr


# ----------------------------------------------------------------------------- pyproject, version, licence
def test_console_scripts_are_the_programs():
    proj = _pyproject()["project"]
    assert proj["scripts"] == {cmd: f"{entry_module(mod)}:main" for cmd, mod in PROGRAMS.items()}
    import importlib

    for mod in PROGRAMS.values():
        m = importlib.import_module(entry_module(mod))
        assert callable(m.main) and callable(m.build_parser)


def test_version_has_one_source():
    py = _pyproject()
    assert "version" in py["project"]["dynamic"] and "version" not in py["project"]
    assert py["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "common.version.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", __version__)
    with open(os.path.join(ROOT, "CITATION.cff")) as f:
        cff = f.read()
    assert re.search(r"^version: (\S+)$", cff, re.M).group(1) == __version__


def test_licence_authors_and_citation():
    py = _pyproject()["project"]
    assert py["license"] == "MIT" and py["authors"] == [{"name": "factual-recall-dynamics authors"}]
    with open(os.path.join(ROOT, "LICENSE")) as f:
        text = f.read()
    assert text.startswith("MIT License") and "Copyright (c) 2026 the factual-recall-dynamics authors" in text
    with open(os.path.join(ROOT, "CITATION.cff")) as f:
        cff = f.read()
    assert cff.startswith("cff-version: 1.2.0")
    for needle in ("preferred-citation:", "references:", "Nichani", "Bietti", "Jason D.", "2412.06538", "ICLR"):
        assert needle in cff, needle


# ----------------------------------------------------------------------------- the specification
def _repo_text_files():
    for dirpath, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and not d.endswith(".egg-info") and d not in
                   ("runs", "build", "dist", "__pycache__")]
        for f in files:
            if f.endswith((".py", ".md", ".toml", ".cff")):
                yield os.path.join(dirpath, f)


def test_spec_is_inside_the_repository():
    spec = os.path.join(ROOT, "docs", "SPEC.md")
    with open(spec) as f:
        first = f.readline()
    assert "mathematical contract" in first and "2412.06538" in first
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    assert "](docs/SPEC.md)" in readme
    this = os.path.abspath(__file__)
    bad = []
    for path in _repo_text_files():
        if path == this:
            continue
        with open(path, encoding="utf-8") as f:
            if "../shared" in f.read():
                bad.append(os.path.relpath(path, ROOT))
    assert not bad, f"references outside the repository in {bad}"


def test_readme_defines_every_reported_quantity():
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    section = readme.split("## Quantities", 1)[1].split("\n## ", 1)[0]
    for name in ("loss", "relation-only loss", "subject-only loss", "hallucination gap", "accuracy", "H(A|R)",
                 "log|A|", "t1", "t2", "t3", "plateau"):
        assert f"**{name}**" in section, name
    for cmd in PROGRAMS:
        assert f"`{cmd}`" in readme, cmd


# ----------------------------------------------------------------------------- models.train and bench flags
def test_train_flags_have_choices_and_distinct_d_help():
    from dynamics import TrainConfig
    from dynamics.choices import INITS, MODELS, OPTIMIZERS
    from models.linear import INIT_KINDS
    from models.train import D_DEFAULT, TRANSFORMER_DEFAULTS, build_parser

    p = build_parser()
    act = {a.dest: a for a in p._actions}
    assert tuple(act["model"].choices) == MODELS
    assert tuple(act["optimizer"].choices) == OPTIMIZERS
    assert tuple(act["facts"].choices) == ("structured", "balanced", "random")
    assert tuple(act["init"].choices) == INITS[:2] == INIT_KINDS
    assert "embedding dimension of the softmax model (model 2)" in act["d"].help
    assert "answers per relation" in act["D"].help and "embedding" not in act["D"].help.split(".")[0]
    # --d has no fixed default: model 2's (256) and the transformer's differ, both TrainConfig's own
    assert act["d"].default is None and D_DEFAULT == TrainConfig(model="softmax").d == TrainConfig().d == 256
    assert TRANSFORMER_DEFAULTS["d"] == TrainConfig(model="transformer").d
    xf = TrainConfig(model="transformer")
    assert (xf.H, xf.d_h, xf.m) == tuple(TRANSFORMER_DEFAULTS[k] for k in ("H", "d_h", "m"))
    assert act["out"].default is None and not act["out"].required


def test_train_default_out_folder():
    from models.train import build_parser, default_out_dir

    p = build_parser()
    assert default_out_dir(p.parse_args([]), p) == "runs/train-linear-S16-R4-D8"
    a = p.parse_args(["--model", "softmax", "--optimizer", "adam", "--lr", "1e-3", "--threads", "4"])
    assert default_out_dir(a, p) == "runs/train-softmax-S16-R4-D8-adam-lr1e-03"  # threads: speed, not result
    a = p.parse_args(["--model", "transformer", "--H", "2", "--d-h", "8", "--m", "32"])
    assert default_out_dir(a, p) == "runs/train-transformer-S16-R4-D8-H2-dh8-m32"


def _add_argument_calls(path):
    with open(path) as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument":
            flag = node.args[0].value if node.args and isinstance(node.args[0], ast.Constant) else "?"
            yield flag, {k.arg for k in node.keywords}


PROGRAM_FILES = [os.path.join(ROOT, *entry_module(m).split(".")) + ".py" for m in PROGRAMS.values()]
BENCH_FILES = sorted(os.path.join(ROOT, "bench", f) for f in os.listdir(os.path.join(ROOT, "bench"))
                     if f.endswith(".py"))


@pytest.mark.parametrize("path", PROGRAM_FILES + BENCH_FILES, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_flag_has_help(path):
    flags = list(_add_argument_calls(path))
    assert flags, "no add_argument call found"
    missing = [flag for flag, kw in flags if "help" not in kw]
    assert not missing, f"flags without help: {missing}"
