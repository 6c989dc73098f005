"""analysis.theory.predict is split by concept (modes, quadrature, reduced_solution, plateau): every name the
programs import from predict, or from the analysis package, is the one object that lives in its concept's module."""
import importlib

import pytest

import analysis
from analysis.theory import modes, plateau, predict, quadrature, reduced_solution

HOMES = {
    modes: ("Modes", "escape_rates", "hallucination_stage_exists", "plateau_levels"),
    quadrature: ("M_CAP", "asinh_ratio", "ein", "margin_at", "mode_loss", "mode_rate", "tau"),
    reduced_solution: ("ReducedSolution", "phase_times", "separated_estimates"),
    plateau: ("PLATEAU_CHUNK", "plateau", "plateau_score", "plateaus"),
}


@pytest.mark.parametrize("home", list(HOMES), ids=lambda m: m.__name__)
def test_predict_names_are_their_homes_objects(home):
    for name in HOMES[home]:
        assert getattr(predict, name) is getattr(home, name), name
        assert name in predict.__all__


def test_every_predict_name_has_one_home():
    homed = {n for names in HOMES.values() for n in names}
    assert set(predict.__all__) == homed | {"ALPHA_MAX"}
    assert predict.ALPHA_MAX == 1e100  # the quadratures' bound, under the name analysis.derive imports


@pytest.mark.parametrize("name", ["escape_rates", "hallucination_stage_exists", "phase_times", "plateau_levels",
                                  "Modes", "ReducedSolution"])
def test_lazy_package_names_resolve_to_the_homes(name):
    home = next(m for m, names in HOMES.items() if name in names)
    assert getattr(analysis, name) is getattr(home, name)


def test_the_split_modules_are_small():
    for mod in (predict, *HOMES):
        with open(importlib.import_module(mod.__name__).__file__) as fh:
            assert sum(1 for _ in fh) < 600, mod.__name__
