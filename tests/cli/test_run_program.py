"""Every command-line program goes through common.cli.run_program, and no library module imports a program.

The programs (common.cli.PROGRAMS) are parsed with ``ast``: main(argv) is ``return run_program(PROGRAM, argv)``,
PROGRAM is a common.cli.Program of the module's own build_parser and run, and the module does none of the
runner's work itself (no guard, no signal handling, no out-folder check or stderr line of its own). Then
run_program's contract on a toy program: exit statuses 0, 2, 3 and 128 + signal, one line on stderr.
"""
import ast
import importlib.util
import os
import signal

import pytest

from common.cli import PROGRAMS, EXIT_OK, Program, entry_module, run_program
from common.errors import ConfigError
from common.signals import Interrupted

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
LAYERS = ("common", "models", "dynamics", "analysis", "figures")
PROGRAM_MODULES = {entry_module(m) for m in PROGRAMS.values()}
# the runner's work, which a program must leave to run_program / Job
RUNNER_ONLY = {"guarded", "handling_signals", "import_native", "check_out", "output_dir"}


def source_of(module: str) -> str:
    return importlib.util.find_spec(module).origin


def tree_of(module: str) -> ast.Module:
    with open(source_of(module)) as fh:
        return ast.parse(fh.read())


def test_every_program_is_in_the_table():
    assert PROGRAM_MODULES == {"dynamics.run", "dynamics.experiment.__main__", "models.train", "analysis.derive",
                               "analysis.sweep", "analysis.grid", "figures.paper", "analysis.capacity.__main__"}


@pytest.mark.parametrize("module", sorted(PROGRAM_MODULES))
def test_main_calls_run_program(module):
    tree = tree_of(module)
    top = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert {"build_parser", "main", "run"} <= set(top), f"{module}: build_parser, run and main at module level"
    main = top["main"]
    assert [a.arg for a in main.args.args] == ["argv"] and main.args.defaults, f"{module}: main(argv=None)"
    (stmt,) = main.body if not ast.get_docstring(main) else main.body[1:]
    call = stmt.value if isinstance(stmt, ast.Return) else None
    assert isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "run_program", \
        f"{module}: main must be `return run_program(PROGRAM, argv)`"
    assert [ast.unparse(a) for a in call.args] == ["PROGRAM", "argv"]
    # PROGRAM = Program(module=__name__, build_parser=build_parser, run=run, ...)
    assigned = [node.value for node in tree.body if isinstance(node, ast.Assign)
                and [ast.unparse(t) for t in node.targets] == ["PROGRAM"]]
    assert len(assigned) == 1 and isinstance(assigned[0], ast.Call) and ast.unparse(assigned[0].func) == "Program"
    kw = {k.arg: ast.unparse(k.value) for k in assigned[0].keywords}
    assert kw["module"] == "__name__" and kw["build_parser"] == "build_parser" and kw["run"] == "run", kw


@pytest.mark.parametrize("module", sorted(PROGRAM_MODULES))
def test_programs_leave_the_runners_work_to_run_program(module):
    bad = []
    for node in ast.walk(tree_of(module)):
        if isinstance(node, ast.ImportFrom):
            bad += [f"imports {a.name}" for a in node.names if a.name in RUNNER_ONLY]
        elif isinstance(node, ast.Name) and node.id in RUNNER_ONLY:
            bad.append(f"uses {node.id}")
        elif isinstance(node, ast.Attribute) and ast.unparse(node) == "sys.stderr.write":
            bad.append(f"line {node.lineno}: writes stderr itself (use job.unfinished)")
    assert not bad, f"{module}: " + "; ".join(bad)


@pytest.mark.parametrize("module", sorted(PROGRAM_MODULES))
def test_program_module_runs_as_itself(module):
    """The module imported normally: PROGRAM.module is its name (so run_program ends the process only for
    ``python -m`` and the console command), and main/build_parser are what the console scripts call."""
    mod = importlib.import_module(module)
    assert isinstance(mod.PROGRAM, Program) and mod.PROGRAM.module == module
    assert mod.PROGRAM.build_parser is mod.build_parser and mod.PROGRAM.run is mod.run


def library_files():
    for pkg in LAYERS:
        for dirpath, _, files in os.walk(os.path.join(ROOT, pkg)):
            for f in sorted(files):
                if f.endswith(".py"):
                    path = os.path.join(dirpath, f)
                    parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
                    is_pkg = parts[-1] == "__init__"
                    module = ".".join(parts[:-1] if is_pkg else parts)
                    if module not in PROGRAM_MODULES:
                        yield module, path, is_pkg


LIBRARY = list(library_files())


def imported_modules(module: str, is_pkg: bool, tree) -> list[tuple[int, str]]:
    """(line, absolute dotted name) of every import at any depth, ``from X import y`` as X and X.y."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".") if is_pkg else module.split(".")[:-1]
                pkg = pkg[:len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([node.module] if node.module else []))
            out.append((node.lineno, base))
            out += [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return out


def lazy_targets(module: str, tree) -> list[tuple[int, str]]:
    """(line, module) of every entry of a package's lazy table ``_LAZY = {"name": "submodule", ...}``."""
    out = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and [ast.unparse(t) for t in node.targets] == ["_LAZY"]:
            out += [(v.lineno, f"{module}.{v.value}") for v in node.value.values if isinstance(v, ast.Constant)]
    return out


def test_library_files_found():
    assert len(LIBRARY) > 50 and {m.split(".")[0] for m, _, _ in LIBRARY} == set(LAYERS)


@pytest.mark.parametrize("module,path,is_pkg", LIBRARY, ids=[m for m, _, _ in LIBRARY])
def test_no_library_module_imports_a_program(module, path, is_pkg):
    with open(path) as fh:
        tree = ast.parse(fh.read())
    programs = PROGRAM_MODULES | set(PROGRAMS.values())
    bad = [f"{os.path.relpath(path, ROOT)}:{line}: {target}"
           for line, target in imported_modules(module, is_pkg, tree) + lazy_targets(module, tree)
           if target in programs]
    assert not bad, "library code importing a program:\n" + "\n".join(bad)


# ----------------------------------------------------------------------------- run_program's contract
def toy(run, native=()):
    from common.cli import ArgumentParser

    def build_parser():
        p = ArgumentParser(prog="toy")
        p.add_argument("--out", default=None)
        p.add_argument("--overwrite", action="store_true")
        return p

    return Program(module="tests.toy", build_parser=build_parser, run=run, native=native)


def test_ok_writes_through_the_job(tmp_path, capsys):
    def run(args, job):
        out = job.claim(args.out)
        with job.folder(out) as d:
            with open(os.path.join(d, "a.txt"), "w") as fh:
                fh.write("a")
        print(f"wrote {out}")
        return EXIT_OK

    out = tmp_path / "o"
    assert run_program(toy(run), ["--out", str(out)]) == 0
    assert (out / "a.txt").read_text() == "a" and capsys.readouterr().out == f"wrote {out}\n"
    # a second run into the same non-empty folder is refused before run computes anything, unless --overwrite
    assert run_program(toy(run), ["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: out = ") and "--overwrite" in err and err.count("\n") == 1
    assert run_program(toy(run), ["--out", str(out), "--overwrite"]) == 0


def test_bad_flag_and_config_error_exit_2_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        run_program(toy(lambda a, j: 0), ["--nope"])
    assert exc.value.code == 2 and capsys.readouterr().err == "toy: error: unrecognized arguments: --nope\n"

    def run(args, job):
        raise ConfigError("S = 0 is too small")

    assert run_program(toy(run), []) == 2 and capsys.readouterr().err == "error: S = 0 is too small\n"


def test_unfinished_exit_3_one_line(capsys):
    assert run_program(toy(lambda a, job: job.unfinished("the flow did not finish")), []) == 3
    assert capsys.readouterr().err == "error: the flow did not finish\n"


def test_signal_exit_128_plus_signal_and_the_programs_note(capsys):
    def run(args, job):
        raise Interrupted(signal.SIGTERM)

    assert run_program(toy(run), []) == 143 and capsys.readouterr().err == "interrupted; nothing was written\n"

    def noted(args, job):
        job.interrupted = lambda: "interrupted; run again to continue"
        raise Interrupted(signal.SIGINT)

    assert run_program(toy(noted), []) == 130
    assert capsys.readouterr().err == "interrupted; run again to continue\n"

    def no_note(args, job):
        job.interrupted = lambda: None  # None: the standard line
        raise Interrupted(signal.SIGHUP)

    assert run_program(toy(no_note), []) == 129 and capsys.readouterr().err == "interrupted; nothing was written\n"


@pytest.mark.parametrize("recorded", [True, False])
def test_grid_says_how_to_continue_when_interrupted(tmp_path, monkeypatch, capsys, recorded):
    """frd-grid's note on a signal while its sweep runs (job.interrupted): the recorded runs and how to continue,
    where results.jsonl exists; otherwise the standard line."""
    from analysis.grid import main
    from analysis.sweeps import runner

    out = tmp_path / "g"

    def interrupted_sweep(spec, **kw):
        if recorded:
            out.mkdir()
            (out / "results.jsonl").write_text("{}\n")
        raise Interrupted(signal.SIGINT)

    monkeypatch.setattr(runner, "run_grid", interrupted_sweep)
    assert main(["flow", "--S", "4", "--R", "2", "--D", "2", "--workers", "1", "--out", str(out)]) == 130
    err = capsys.readouterr().err
    if recorded:
        assert err == (f"interrupted; the runs finished so far are recorded in {out}/results.jsonl (and "
                       f"{out}/results.csv); run the same command again to continue\n")
    else:
        assert err == "interrupted; nothing was written\n"


@pytest.mark.parametrize("module", ["dynamics.run", "models.train", "analysis.derive", "analysis.sweep",
                                    "figures.paper"])
@pytest.mark.parametrize("out", ["", "   "])
def test_an_empty_out_is_bad_input_for_every_program(module, out, tmp_path, monkeypatch, capsys):
    """--out '' is not "not given" (issue 24 §3): run_program refuses it for every program, nothing written."""
    import importlib

    monkeypatch.chdir(tmp_path)
    assert importlib.import_module(module).main(["--out", out]) == 2
    err = capsys.readouterr().err
    assert err == f"error: out = {out!r} is empty; give a folder path with --out\n"
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("staged", [False, True])
@pytest.mark.parametrize("state", ["spec", "recorded"])
def test_train_seeds_say_what_stays_when_interrupted(tmp_path, monkeypatch, capsys, staged, state):
    """frd-train --seeds (plain or --experiment) runs a sweep into --out: a signal there leaves spec.json (and the
    runs recorded so far), so the note says so and how to continue, never "nothing was written"."""
    from analysis.sweeps import runner
    from models.train import main

    out = tmp_path / "s"

    def interrupted_sweep(spec, **kw):
        out.mkdir()
        (out / "spec.json").write_text("{}\n")
        if state == "recorded":
            (out / "results.jsonl").write_text("{}\n")
        raise Interrupted(signal.SIGINT)

    monkeypatch.setattr(runner, "run_grid", interrupted_sweep)
    args = ["--model", "softmax", "--optimizer", "adam", "--d", "8", "--S", "4", "--R", "2", "--D", "2", "--T", "4",
            "--N", "2", "--steps", "5", "--seeds", "2", "--workers", "1", "--out", str(out)]
    if staged:
        f = tmp_path / "e.toml"
        f.write_text('[task]\nS = 4\nR = 2\nD = 2\nT = 4\nN = 2\n\n[[stages]]\nname = "all"\ntrain = {}\n'
                     'until_time = 5\n')
        args += ["--experiment", str(f)]
    assert main(args) == 130
    err = capsys.readouterr().err
    if state == "recorded":
        assert err == (f"interrupted; the runs finished so far are recorded in {out}/results.jsonl (and "
                       f"{out}/results.csv); run the same command again to continue\n")
    else:
        assert err == (f"interrupted before any run finished; {out} holds the sweep's spec.json; run the same "
                       "command again to start it\n")
