"""The reduced-flow predictions live by concept (modes, quadrature, reduced_solution, plateau), with no front
over them: every name is defined in exactly one of the four modules, the others and the analysis package
hand out that one object, and the old re-exporting module analysis.theory.predict is gone."""
import ast
import importlib
import importlib.util

import pytest

import analysis
from analysis.theory import modes, plateau, quadrature, reduced_solution

HOMES = {
    modes: ("Modes", "escape_rates", "hallucination_stage_exists", "plateau_levels"),
    quadrature: ("M_CAP", "asinh_ratio", "ein", "margin_at", "mode_loss", "mode_rate", "tau"),
    reduced_solution: ("ReducedSolution", "phase_times", "separated_estimates"),
    plateau: ("PLATEAU_CHUNK", "plateau", "plateau_score", "plateaus"),
}


def defined_names(mod) -> set[str]:
    """Names a module defines at its top level (def, class, assignment), not those it imports."""
    with open(mod.__file__) as fh:
        tree = ast.parse(fh.read())
    out = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in (node.targets if isinstance(node, ast.Assign) else [node.target]):
                out.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    return out


@pytest.mark.parametrize("name", sorted(n for names in HOMES.values() for n in names))
def test_every_name_is_defined_in_exactly_one_module(name):
    assert [m.__name__ for m in HOMES if name in defined_names(m)] == \
        [m.__name__ for m, names in HOMES.items() if name in names]


@pytest.mark.parametrize("home", list(HOMES), ids=lambda m: m.__name__)
def test_the_other_modules_use_the_homes_objects(home):
    for name in HOMES[home]:
        for other in HOMES:
            if other is not home and hasattr(other, name):
                assert getattr(other, name) is getattr(home, name), (other.__name__, name)


def test_there_is_no_front():
    assert importlib.util.find_spec("analysis.theory.predict") is None


@pytest.mark.parametrize("name", ["escape_rates", "hallucination_stage_exists", "phase_times", "plateau_levels",
                                  "Modes", "ReducedSolution"])
def test_lazy_package_names_resolve_to_the_homes(name):
    home = next(m for m, names in HOMES.items() if name in names)
    assert getattr(analysis, name) is getattr(home, name)


def test_the_split_modules_are_small():
    for mod in HOMES:
        with open(importlib.import_module(mod.__name__).__file__) as fh:
            assert sum(1 for _ in fh) < 600, mod.__name__
