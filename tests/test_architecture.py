"""Architecture: one-way layers common < models < dynamics < analysis < figures, no classes defined inside
functions, and no private names reached across modules. Every .py file of the five packages is parsed with
``ast``; imports are collected at every depth (module level and inside functions), relative ones resolved."""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = ("common", "models", "dynamics", "analysis", "figures")
RANK = {name: k for k, name in enumerate(LAYERS)}
# command-line modules may import any layer
CLI_MODULES = {"dynamics.run", "dynamics.experiment.__main__", "models.train", "analysis.derive", "analysis.sweep",
               "figures.paper"}
# the one upward import allowed: a result object's plot()/save() draws with figures (the top layer, which
# is matplotlib), loaded when called; no other library code below figures draws
PRESENTATION_METHODS = {"plot", "save"}


def project_files() -> list[tuple[str, str]]:
    """(dotted module name, path) of every .py file in the layered packages."""
    out = []
    for pkg in LAYERS:
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


def layer(dotted: str):
    top = dotted.split(".")[0]
    return top if top in RANK else None


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_files_found():
    assert {layer(m) for m, _ in FILES} == set(LAYERS)


@pytest.mark.parametrize("module,path", FILES, ids=[m for m, _ in FILES])
def test_imports_go_down_the_layers(module, path):
    if module in CLI_MODULES:
        return
    own = layer(module)
    tree = parse(path)
    presentation = {id(node) for cls in ast.walk(tree) if isinstance(cls, ast.ClassDef) and cls.name.endswith("Result")
                    for fn in cls.body if isinstance(fn, ast.FunctionDef) and fn.name in PRESENTATION_METHODS
                    for node in ast.walk(fn)}
    bad = [f"{where(path, node)}: {module} ({own}) imports {target} ({layer(target)})"
           for node, target, _ in imports(module, tree)
           if layer(target) is not None and RANK[layer(target)] > RANK[own]
           and not (layer(target) == "figures" and id(node) in presentation)]
    assert not bad, "imports from a higher layer:\n" + "\n".join(bad)


@pytest.mark.parametrize("module,path", FILES, ids=[m for m, _ in FILES])
def test_no_class_inside_a_function(module, path):
    bad = []
    for fn in ast.walk(parse(path)):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            bad.extend(f"{where(path, node)}: class {node.name} defined inside {fn.name}()"
                       for node in ast.walk(fn) if isinstance(node, ast.ClassDef))
    assert not bad, "classes defined in function bodies:\n" + "\n".join(sorted(set(bad)))


@pytest.mark.parametrize("module,path", FILES, ids=[m for m, _ in FILES])
def test_no_private_names_across_modules(module, path):
    tree = parse(path)
    bad, bound = [], {}  # bound: local name -> project module it refers to
    for node, target, names in imports(module, tree):
        if layer(target) is None:
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
            elif f"{target}.{a.name}" in {m for m, _ in FILES}:  # a module imported by name
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
