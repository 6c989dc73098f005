"""Architecture, checked over the whole tree at once (each test lists every violation it finds):

- layers: common < models < dynamics < analysis; figures imports only common (and figures), so a result
  object's plot()/save() may draw with it; the programs (common.cli.PROGRAMS) sit on top and may import
  anything, and no library module imports a program;
- size: no module over MAX_LINES lines, except data tables;
- no class defined inside a function, no private name reached across modules;
- the way down: the call stack from ``python -m dynamics.run`` to the stepper's first step passes through
  each module once (a module left is not returned to more than MAX_RETURNS times).

Every .py file of the five packages is parsed with ``ast``; imports are collected at every depth (module
level and inside functions), relative ones resolved.
"""
import ast
import os
import sys

from common.cli import PROGRAMS, entry_module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES_TOP = ("common", "models", "dynamics", "analysis", "figures")
# the library layers, lowest first; figures is beside them: it imports only common
RANK = {"common": 0, "models": 1, "dynamics": 2, "analysis": 3}
PROGRAM_MODULES = {entry_module(m) for m in PROGRAMS.values()}
# the one upward import allowed: a result object's plot()/save() draws with figures, loaded when called
PRESENTATION_METHODS = {"plot", "save"}
MAX_LINES = 600
DATA_TABLES = {"dynamics.ode.rock4_tables"}  # coefficients, not code
MAX_RETURNS = 3


def project_files() -> list[tuple[str, str]]:
    """(dotted module name, path) of every .py file in the packages."""
    out = []
    for pkg in PACKAGES_TOP:
        for dirpath, _, files in os.walk(os.path.join(ROOT, pkg)):
            for f in sorted(files):
                if f.endswith(".py"):
                    path = os.path.join(dirpath, f)
                    parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
                    if parts[-1] == "__init__":
                        parts = parts[:-1]
                    out.append((".".join(parts), path))
    return out


FILES = project_files()
MODULES = {m for m, _ in FILES}
PACKAGES = {m for m, p in FILES if p.endswith("__init__.py")}


def parse(path):
    with open(path) as fh:
        return ast.parse(fh.read(), filename=path)


def where(path, node) -> str:
    return f"{os.path.relpath(path, ROOT)}:{node.lineno}"


def resolve(module: str, node: ast.ImportFrom) -> str:
    """Absolute dotted name that ``from ... import`` in ``module`` refers to."""
    if node.level == 0:
        return node.module
    pkg = module if module in PACKAGES else module.rpartition(".")[0]
    base = pkg.split(".")[:len(pkg.split(".")) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(module: str, tree) -> list[tuple[ast.AST, str, list[str]]]:
    """(node, imported module, names taken from it) for every import statement of the file."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node, a.name, []) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            out.append((node, resolve(module, node), [a.name for a in node.names]))
    return out


def targets(module: str, tree):
    """(node, project module) for every project module an import statement loads, ``from pkg import mod``
    counted as importing ``pkg.mod``."""
    for node, target, names in imports(module, tree):
        if target.split(".")[0] not in PACKAGES_TOP:
            continue
        yield node, target
        for name in names:
            if f"{target}.{name}" in MODULES:
                yield node, f"{target}.{name}"


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def presentation_nodes(tree) -> set[int]:
    """ids of the nodes inside plot()/save() methods of *Result classes."""
    return {id(node) for cls in ast.walk(tree) if isinstance(cls, ast.ClassDef) and cls.name.endswith("Result")
            for fn in cls.body if isinstance(fn, ast.FunctionDef) and fn.name in PRESENTATION_METHODS
            for node in ast.walk(fn)}


def test_files_found():
    assert {m.split(".")[0] for m in MODULES} == set(PACKAGES_TOP)
    assert PROGRAM_MODULES <= MODULES, PROGRAM_MODULES - MODULES


def test_imports_go_down_the_layers():
    bad = []
    for module, path in FILES:
        if module in PROGRAM_MODULES:
            continue
        own = module.split(".")[0]
        tree = parse(path)
        shown = presentation_nodes(tree)
        for node, target in targets(module, tree):
            top = target.split(".")[0]
            if target in PROGRAM_MODULES:
                bad.append(f"{where(path, node)}: library module {module} imports the program {target}")
            elif own == "figures":
                if top not in ("common", "figures"):
                    bad.append(f"{where(path, node)}: {module} (figures) imports {target}: figures imports only common")
            elif top == "figures":
                if id(node) not in shown:
                    bad.append(f"{where(path, node)}: {module} imports {target} outside a result's plot()/save()")
            elif RANK[top] > RANK[own]:
                bad.append(f"{where(path, node)}: {module} ({own}) imports {target} ({top})")
    assert not bad, "imports against the layers:\n" + "\n".join(bad)


def test_no_module_is_too_long():
    bad = []
    for module, path in FILES:
        with open(path) as fh:
            n = sum(1 for _ in fh)
        if n > MAX_LINES and module not in DATA_TABLES:
            bad.append(f"{os.path.relpath(path, ROOT)}: {n} lines")
    assert not bad, f"modules over {MAX_LINES} lines (split them by concept):\n" + "\n".join(bad)


def test_no_class_inside_a_function():
    bad = []
    for _, path in FILES:
        for fn in ast.walk(parse(path)):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                bad.extend(f"{where(path, node)}: class {node.name} defined inside {fn.name}()"
                           for node in ast.walk(fn) if isinstance(node, ast.ClassDef))
    assert not bad, "classes defined in function bodies:\n" + "\n".join(sorted(set(bad)))


def test_no_private_names_across_modules():
    bad = []
    for module, path in FILES:
        tree = parse(path)
        bound = {}  # local name -> project module it refers to
        for node, target, names in imports(module, tree):
            if target.split(".")[0] not in PACKAGES_TOP:
                continue
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.asname:
                        bound[a.asname] = a.name
                    else:
                        bound[a.name.split(".")[0]] = a.name.split(".")[0]
                continue
            for a in node.names:
                if is_private(a.name):
                    bad.append(f"{where(path, node)}: from {target} import {a.name}")
                elif f"{target}.{a.name}" in MODULES:  # a module imported by name
                    bound[a.asname or a.name] = f"{target}.{a.name}"
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and is_private(node.attr):
                chain, base = [node.attr], node.value
                while isinstance(base, ast.Attribute):
                    chain.append(base.attr)
                    base = base.value
                if isinstance(base, ast.Name) and base.id in bound:
                    dotted = ".".join([base.id] + chain[::-1])
                    bad.append(f"{where(path, node)}: {dotted} (private name of {bound[base.id]})")
    assert not bad, "private names used across modules:\n" + "\n".join(bad)


def returns_to_left_modules(stack: list[str]) -> list[str]:
    """The modules of ``stack`` (outermost first) that appear again after the stack had left them."""
    seen, again = set(), []
    for k, module in enumerate(stack):
        if k and module != stack[k - 1] and module in seen:
            again.append(module)
        seen.add(module)
    return again


def test_returns_are_counted():
    assert returns_to_left_modules(["a", "a", "b", "c", "c"]) == []
    assert returns_to_left_modules(["a", "b", "a", "c", "b"]) == ["a", "b"]


def test_the_way_down_from_the_command_line_to_the_stepper(tmp_path):
    """The project frames on the stack when ``python -m dynamics.run`` first calls a stepper's step."""
    from dynamics import run

    captured = []

    def profile(frame, event, arg):
        if captured or event != "call" or frame.f_code.co_name != "step":
            return
        if not frame.f_globals.get("__name__", "").startswith("dynamics.ode"):
            return
        stack, f = [], frame
        while f is not None:
            name = f.f_globals.get("__name__", "")
            if name.split(".")[0] in PACKAGES_TOP:
                stack.append(name)
            f = f.f_back
        captured.append(stack[::-1])

    sys.setprofile(profile)
    try:
        code = run.main(["--S", "4", "--R", "2", "--D", "2", "--quiet", "--no-plots", "--out", str(tmp_path / "o")])
    finally:
        sys.setprofile(None)
    assert code == 0 and captured, "the run never called a stepper's step"
    stack = captured[0]
    assert "dynamics.run" in stack and stack[-1].startswith("dynamics.ode"), stack
    stack = stack[stack.index("dynamics.run"):]  # below the program: common.cli's wrapper runs main
    again = returns_to_left_modules(stack)
    assert len(again) <= MAX_RETURNS, f"the way down returns to {again}: {' -> '.join(stack)}"
