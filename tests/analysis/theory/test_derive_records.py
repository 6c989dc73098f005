"""Issue 23: derivation.json records T and N, and `analysis.derive --help` says when they do not matter: the class
reduction (uniform frequencies on a structured or balanced table) drops them from its loss, the general theory
(Zipf frequencies, random or file tables) depends on them."""
import json
import subprocess
import sys

import pytest

from analysis.theory.derivation import derive_reduction
from models.task import TaskConfig
from tests.helpers import ROOT
from helpers import SMALL

# the configuration: a random table with Zipf subjects, where the exact staircase depends on T and N
GENERAL = dict(S=15, R=3, D=5, zipf_subjects=0.9, facts="random", seed=4)


def test_config_records_T_and_N_in_both_cases(monkeypatch):
    import analysis.theory.derivation as derivation

    monkeypatch.setattr(derivation, "algebra", lambda: {})  # sympy's algebra (seconds) is not what is tested here
    general = derive_reduction(15, 3, 5, 1e-6, task=TaskConfig(T=9, N=6, **GENERAL), exact=False)
    c = general.predictions["config"]
    assert (c["T"], c["N"]) == (9, 6) and general.predictions["reduced"] is False
    assert "T=9, N=6" in general.markdown()  # the general case's markdown needs no algebra
    reduced = derive_reduction(8, 2, 4, 1e-5, task=SMALL, exact=False)
    assert reduced.predictions["reduced"] is True
    assert (reduced.predictions["config"]["T"], reduced.predictions["config"]["N"]) == (7, 3)
    assert json.loads(json.dumps(general.to_dict()))["config"]["T"] == 9


def test_help_says_when_T_and_N_do_not_matter():
    r = subprocess.run([sys.executable, "-m", "analysis.derive", "--help"], cwd=ROOT, capture_output=True, text=True,
                       env={"COLUMNS": "400", "PATH": ""}, timeout=60)
    text = " ".join(r.stdout.split())
    assert r.returncode == 0
    assert "proven not to matter" not in text
    assert "class reduction (uniform frequencies on a structured or balanced table) does not depend on it" in text
    assert "depend on T and N" in text


def test_reduced_predictions_do_not_depend_on_T_and_N(monkeypatch):
    import analysis.theory.derivation as derivation

    monkeypatch.setattr(derivation, "algebra", lambda: {})
    a = derive_reduction(8, 2, 4, 1e-5, task=SMALL, exact=False).predictions
    b = derive_reduction(8, 2, 4, 1e-5, task=TaskConfig(S=8, R=2, D=4, T=32, N=20), exact=False).predictions
    assert a["predicted"] == b["predicted"]


@pytest.mark.slow
def test_general_staircase_depends_on_T_and_N():
    """The issue's numbers: the first staircase t_end is 62.906 at T 9, N 6 and 67.348 at T 8, N 7 (exact flow)."""
    ends = {}
    for T, N in ((9, 6), (8, 7)):
        p = derive_reduction(15, 3, 5, 1e-6, task=TaskConfig(T=T, N=N, **GENERAL)).predictions
        assert (p["config"]["T"], p["config"]["N"]) == (T, N)
        ends[T, N] = p["staircase"][0]["t_end"]
    assert ends[9, 6] == pytest.approx(62.906, abs=1e-3)
    assert ends[8, 7] == pytest.approx(67.348, abs=1e-3)
