"""The experiment scripts (experiments/shipped.py, findings.py, capacity.py) refuse an --out that cannot take
their results before any run starts (they run for minutes and write only at the end): exit 2, one line,
nothing written, and no run begun (the refusal comes back in well under the time of a single run)."""
from __future__ import annotations

import importlib.util
import os
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPTS = ("shipped", "findings", "capacity")


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"script_{name}", os.path.join(ROOT, "experiments", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_bad_out_is_refused_before_any_run(name, tmp_path, capsys):
    main = load(name).main
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    for out, says in ((str(full), "not empty"), ("", "empty"), (str(tmp_path / "f" / "x"), None)):
        if says is None:  # a file among the parents: nothing can be created there
            (tmp_path / "f").write_text("a file")
            says = "f"
        t0 = time.perf_counter()
        assert main(["--out", out]) == 2
        assert time.perf_counter() - t0 < 5.0  # refused before the runs (each script's full run takes minutes)
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and says in err and "Traceback" not in err
    assert sorted(os.listdir(full)) == ["keep.txt"] and (full / "keep.txt").read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == ["f", "full"]
