"""docs/tutorial.ipynb: stored without outputs, runs from top to bottom in a fresh kernel, and prints what the
API computes (the printed phase times are the ones analyze_flow returns, the result reprs stay short)."""
import math
import os
import re

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

from helpers import ROOT  # noqa: E402

pytestmark = pytest.mark.slow  # executes the notebook in a kernel
NOTEBOOK = os.path.join(ROOT, "docs", "tutorial.ipynb")
PLOT_CELLS = ("flow-plot", "reduced-plot", "zipf-plot", "train-plot", "experiment-plot")


def _read():
    return nbformat.read(NOTEBOOK, as_version=4)


@pytest.fixture(scope="module")
def executed():
    nb = _read()
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": ROOT}})
    client.execute()  # raises CellExecutionError (with the traceback) if any cell fails
    return {c.id: c for c in nb.cells if c.cell_type == "code"}


def _text(cell, kind=None) -> str:
    """The cell's stdout (kind='stream') or its value's text/plain (kind='result'); both if kind is None."""
    parts = []
    for o in cell.outputs:
        if o.output_type == "stream" and o.name == "stdout" and kind in (None, "stream"):
            parts.append(o.text)
        elif o.output_type == "execute_result" and kind in (None, "result"):
            parts.append(o.data.get("text/plain", ""))
    return "".join(parts)


def test_stored_without_outputs():
    nb = _read()
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "the tutorial has no code cells"
    for c in code:
        assert c.outputs == [], f"cell {c.id} is stored with outputs"
        assert c.execution_count is None, f"cell {c.id} is stored with an execution count"
    ids = {c.id for c in code}
    for needed in ("flow-repr", "flow-phase-times", "reduced-table", "zipf", "train-repr", "experiment-repr",
                   *PLOT_CELLS):
        assert needed in ids, f"cell {needed!r} is missing"


def test_runs_without_errors(executed):
    for cid, c in executed.items():
        errors = [o for o in c.outputs if o.output_type == "error"]
        assert not errors, f"cell {cid}: {errors}"


def test_printed_flow_phases_match_analyze_flow(executed):
    from analysis import analyze_flow
    from dynamics import FlowConfig
    from models import TaskConfig

    res = analyze_flow(FlowConfig(task=TaskConfig(S=16, R=4, D=8)), progress=False)
    out = _text(executed["flow-phase-times"], "stream")
    for name in ("t1", "t2", "t3"):
        m = re.search(rf"^{name} = ([0-9.eE+-]+)$", out, re.M)
        assert m, f"{name} not printed in:\n{out}"
        printed, expected = float(m.group(1)), getattr(res.phases, name)
        assert math.isclose(printed, expected, rel_tol=1e-9), (name, printed, expected)
    m = re.search(r"plateau at t = ([0-9.]+): loss ([0-9.]+)", out)
    assert m and math.isclose(float(m.group(2)), res.phases.plateau.loss, rel_tol=1e-5)


def test_result_reprs_are_short_and_informative(executed):
    flow = _text(executed["flow-repr"], "result")
    assert flow.startswith("FlowResult(S=16, R=4, D=8") and "status='converged'" in flow
    assert len(flow) < 1000
    red = _text(executed["reduced-repr"], "result")
    assert red.startswith("FlowResult(") and "reduced/" in red and len(red) < 1000
    tr = _text(executed["train-repr"], "result")
    assert tr.startswith("TrainingResult(") and "flow_gap=" in tr and len(tr) < 1000
    exp = _text(executed["experiment-repr"], "result")
    assert exp.startswith("ExperimentResult(") and "pretrain" in exp and "finetune" in exp and len(exp) < 1000
    sizes = re.findall(r"repr of (\d+) characters", _text(executed["result-reprs"], "stream"))
    assert len(sizes) == 5 and all(int(n) < 1000 for n in sizes)


def test_reduced_prediction_agrees_with_the_full_flow(executed):
    table = _text(executed["reduced-table"], "result")
    rel = [float(line.split()[-1]) for line in table.splitlines() if re.match(r"t[123]\s", line)]
    assert len(rel) == 3 and all(x < 1e-6 for x in rel), table
    m = re.search(r"max \|L_full - L_reduced\| = ([0-9.eE+-]+)", _text(executed["reduced-plot"], "stream"))
    assert m and float(m.group(1)) < 1e-6


def test_zipf_and_training_outputs(executed):
    z = _text(executed["zipf"], "stream")
    assert z.startswith("FlowResult(") and "status='converged'" in z
    assert "reduced flow: zipf_subjects = 1" in z  # the reduction refuses non-uniform frequencies
    m = re.search(r"flow gap = ([0-9.]+)", _text(executed["train-gap"], "stream"))
    assert m and 0 < float(m.group(1)) < 0.5  # GD at lr 0.5 stays near the flow (0.13 measured)


def test_figures_are_displayed(executed):
    for cid in PLOT_CELLS:
        images = [o for o in executed[cid].outputs if "data" in o and "image/png" in o.data]
        assert images, f"cell {cid} shows no figure"
