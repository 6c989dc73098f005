"""python -m analysis.sweep and python -m analysis.derive: files, numbers against independent references,
and rejection of bad input."""
import json
import math
import os

import numpy as np
import pytest

from analysis.theory.modes import Modes, escape_rates
from analysis.theory.plateau import plateaus
from analysis.theory.reduced_solution import ReducedSolution, phase_times
from analysis.derive import main as derive_main
from analysis.sweep import main as sweep_main
from analysis.sweeps.phase_sweep import run_sweep
from common.errors import ConfigError
from analysis import analyze_flow
from dynamics import FlowConfig
from models import TaskConfig


def _csv(path):
    header = open(path).readline().strip().split(",")
    data = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    return {h: data[:, i] for i, h in enumerate(header)}


@pytest.mark.slow
def test_sweep_reduced_and_full_rows(tmp_path, capsys):
    out = tmp_path / "sw"
    # S=12, D=8: D does not divide S, so that row must go through the full system
    assert sweep_main(["--S", "8", "12", "16", "--R", "2", "--D", "4", "8", "--alpha", "1e-5", "1e-4", "1e-3",
                       "--out", str(out), "--quiet"]) == 0
    for name in ("sweep.csv", "slopes.json", "phase_times_alpha.png", "phase_times_S.png"):
        assert (out / name).stat().st_size > 0
    c = _csv(out / "sweep.csv")
    assert c["S"].size == 3 * 2 * 3
    full = c["reduced"] == 0
    assert set(zip(c["S"][full], c["D"][full])) == {(12.0, 8.0)}
    assert np.all(np.isfinite(c["t3"]))
    np.testing.assert_allclose(c["plateau_length"], c["t2"] - c["t1"])
    # one reduced row against its own full-system run (an independent computation)
    i = int(np.nonzero((c["S"] == 16) & (c["D"] == 4) & (c["alpha"] == 1e-3))[0][0])
    res = analyze_flow(FlowConfig(task=TaskConfig(S=16, R=2, D=4), alpha=1e-3), progress=False)
    for k in ("t1", "t2", "t3"):
        assert c[k][i] == pytest.approx(getattr(res.phases, k), rel=1e-6)
    # issue 13: the reduced rows' plateau_loss is the reduced prediction, equal to the full flow's plateau
    assert abs(c["plateau_loss"][i] - res.phases.plateau.loss) < 1e-6
    assert np.all(np.isfinite(c["plateau_loss"])), c["plateau_loss"]  # every row here has t2 > t1
    sl = json.loads((out / "slopes.json").read_text())
    assert sl["n_full"] == 3 and sl["n_reduced"] == 15


def test_reduced_plateau_against_brute_force_and_at_extreme_scales():
    """analysis.theory.plateau.plateaus (bracket + Illinois on the closed-form slope) against a brute-force minimum
    of |t dL/dt| from ReducedSolution.state on 20,001 points, and unchanged by a 16x finer first grid at
    tiny alpha, where the stages turn sharply in log t; NaN where a phase does not exist."""
    S, R, D = np.array([16, 32, 64, 16]), np.array([4, 25, 8, 4]), np.array([8, 32, 2, 8])
    alpha = np.array([1e-5, 4e-6, 1e-2, 1e-250])
    pt = phase_times(S, R, D, alpha)
    got = plateaus(S, R, D, alpha, pt["t1"], pt["t2"])
    n = 20001
    for j in range(S.size):
        sol = ReducedSolution(Modes(*(np.full(n, v[j]) for v in (S, R, D, alpha))))
        x = np.linspace(math.log(pt["t1"][j]), math.log(pt["t2"][j]), n)
        st = sol.state(np.exp(x), warm=False)
        score = np.abs(np.exp(x) * st["dloss_dt"])
        k = int(np.argmin(score))
        assert got["loss"][j] == pytest.approx(st["loss"][k], abs=1e-9 + score[k] * (x[1] - x[0]))
        assert abs(math.log(got["t"][j]) - x[k]) <= x[1] - x[0]
    fine = plateaus(S, R, D, alpha, pt["t1"], pt["t2"], grid=257)
    np.testing.assert_allclose(got["loss"], fine["loss"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(got["t"], fine["t"], rtol=1e-10)
    none = plateaus([4, 4], [2, 2], [1, 2], [1e-3, 1e-3], [5.0, np.nan], [np.nan, 7.0])
    assert np.all(np.isnan(none["loss"])) and np.all(np.isnan(none["t"]))


def test_fitted_slopes_match_predicted(tmp_path):
    out = tmp_path / "sw"
    assert sweep_main(["--S", "16", "32", "64", "--R", "4", "--D", "8", "--alpha-range", "1e-7", "1e-3", "9",
                       "--out", str(out), "--quiet", "--no-plots"]) == 0
    sl = json.loads((out / "slopes.json").read_text())["slopes"]
    by = {(s["against"], s["quantity"], s.get("S")): s for s in sl}
    for S in (16, 32, 64):
        for q in ("t1", "t2", "plateau_length"):
            s = by[("log(1/alpha)", q, S)]
            # t = log(1/alpha^2)/rate + O(1) + O(alpha^2): the slope is 2/rate up to the O(alpha^2) terms
            assert s["fitted"] == pytest.approx(s["predicted"], rel=2e-3), (S, q)
    # 2/rate from the closed forms, independently
    lam = escape_rates(16, 4, 8)
    assert by[("log(1/alpha)", "t1", 16)]["predicted"] == pytest.approx(2 / float(lam["relation"]))
    assert by[("log(1/alpha)", "t2", 16)]["predicted"] == pytest.approx(2 / float(lam["subject"]))


@pytest.mark.parametrize("argv,match", [
    (["--S", "0"], "S = 0"),
    (["--alpha", "0"], "alpha"),
    (["--alpha", "2"], "alpha = 2"),
    (["--alpha", "1e-5", "--alpha-range", "1e-6", "1e-3", "3"], "either"),
    (["--alpha-range", "1e-3", "1e-6", "3"], "below"),
    (["--S", "12", "--D", "8", "--max-full", "0"], "max-full"),
    (["--facts", "zipf"], "facts"),
    (["--batch-flows", "-1"], "batch-flows = -1 is too small; batch-flows must be an integer in [0, 100000]"),
    (["--batch-flows", "100001"], "batch-flows = 100001 is too large"),
])
def test_sweep_bad_input_one_line_nothing_written(tmp_path, capsys, argv, match):
    out = tmp_path / "o"
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(sweep_main(argv + ["--out", str(out), "--quiet"]))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err and "Traceback" not in err
    assert not out.exists()


# Full-system rows for the batched solver: random tables (unequal subject counts, so never reducible), two
# shapes (S = 8 and 12), three alphas; about 1 s per one-by-one run on 2 cores.
BATCH_ALPHAS = (1e-5, 1e-4, 1e-3)


def _random_grid(S_values):
    rows = [(S, a) for S in S_values for a in BATCH_ALPHAS]
    n = len(rows)
    return dict(S=np.array([r[0] for r in rows], dtype=float), R=np.full(n, 2.0), D=np.full(n, 4.0),
                T=np.full(n, 32.0), N=np.full(n, 20.0), alpha=np.array([r[1] for r in rows]))


@pytest.fixture(scope="module")
def one_by_one():
    """run_sweep's one-by-one full-system runs (analyze_flow, with plateaus) over both shapes."""
    return run_sweep(_random_grid((8, 12)), facts="random", progress=False).columns


def _same_times(got, ref, rows):
    for k in ("t1", "t2", "t3"):
        assert np.all(np.isfinite(got[k])), (k, got[k])
        np.testing.assert_allclose(got[k], ref[k][rows], rtol=1e-9, atol=0, err_msg=k)
    for k in ("finished", "t1_leading", "t2_leading", "t3_leading", "hallucination_visible_leading",
              "plateau_length", "plateau_loss"):
        np.testing.assert_allclose(got[k], ref[k][rows], rtol=1e-9, atol=0, err_msg=k)


@pytest.mark.slow
def test_batched_full_rows_equal_one_by_one(one_by_one):
    """batch_flows=4 on one shape (three runs, one batch) against the one-by-one rows: the same t1, t2, t3 and
    plateau_loss (from each run's PlateauWindow) to 1e-9; column batched 1 there and 0 one by one."""
    got = run_sweep(_random_grid((8,)), facts="random", progress=False, batch_flows=4).columns
    rows = np.nonzero(one_by_one["S"] == 8)[0]
    assert rows.size == 3 and np.all(got["reduced"] == 0)
    _same_times(got, one_by_one, rows)
    assert np.all(got["batched"] == 1) and np.all(one_by_one["batched"] == 0)
    assert np.all(np.isfinite(got["plateau_loss"])) and np.all(np.isfinite(one_by_one["plateau_loss"]))
    assert list(got) == list(one_by_one)  # one CSV schema, whatever the flag


@pytest.mark.slow
def test_batched_two_shapes_each_batched_separately(one_by_one, monkeypatch):
    """Two shapes with batch_flows=2: one batched call per shape (never mixing shapes, which run_flows_batched
    would refuse) with at most 2 runs at once, every row filled and equal to one by one; the bar advances per run."""
    import dynamics.flow.batched as batched
    from common.progress import Progress

    steps, calls = [], []
    update = Progress.update
    monkeypatch.setattr(Progress, "update", lambda self, n=1: (steps.append(n), update(self, n))[1])
    real = batched.run_flows_batched
    monkeypatch.setattr(batched, "run_flows_batched",
                        lambda configs, **kw: (calls.append(({c.task.S for c in configs}, len(configs), kw["slots"])),
                                               real(configs, **kw))[1])
    got = run_sweep(_random_grid((8, 12)), facts="random", progress=False, batch_flows=2).columns
    _same_times(got, one_by_one, np.arange(6))
    assert np.all(got["batched"] == 1)
    assert sorted(calls, key=lambda c: min(c[0])) == [({8}, 3, 2), ({12}, 3, 2)]
    assert steps == [1] * 6


@pytest.mark.slow  # sympy derivation and a subprocess
def test_derive_writes_json_and_markdown(tmp_path, capsys):
    out = tmp_path / "d"
    assert derive_main(["--S", "16", "--R", "4", "--D", "8", "--alpha", "1e-5", "--out", str(out)]) == 0
    d = json.loads((out / "derivation.json").read_text())
    assert d["rates"]["relation"] == pytest.approx(2 * math.sqrt(3 / 32) / 4)
    assert d["rates"]["subject"] == pytest.approx(2 * math.sqrt(7 / 32) / 16)
    assert d["plateaus"]["initial"] == pytest.approx(math.log(32))
    assert d["plateaus"]["hallucination"] == pytest.approx(math.log(8))
    assert d["hallucination_stage_exists"] is True
    # the full flow's measured times (project README: t1=168.3626, t2=437.6163, t3=771.3345)
    assert d["predicted"]["t1"] == pytest.approx(168.3626, rel=1e-6)
    assert d["predicted"]["t2"] == pytest.approx(437.6163, rel=1e-6)
    assert d["predicted"]["t3"] == pytest.approx(771.3345, rel=1e-6)
    assert all(d["algebra"]["proofs"].values())
    md = (out / "derivation.md").read_text()
    assert "$$" in md and "Hallucination condition" in md
    printed = capsys.readouterr().out
    assert "t1 = " in printed and "hallucination condition" in printed


@pytest.mark.slow
def test_derive_subject_first_side(tmp_path, capsys):
    out = tmp_path / "d"
    assert derive_main(["--S", "4", "--R", "32", "--D", "4", "--out", str(out), "--quiet"]) == 0
    d = json.loads((out / "derivation.json").read_text())
    assert d["hallucination_stage_exists"] is False
    assert d["plateaus"]["intermediate"] == pytest.approx(math.log(32))


def test_derive_refuses_unequal_counts(tmp_path, capsys):
    out = tmp_path / "d"
    assert derive_main(["--S", "12", "--D", "8", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "divide" in err and len(err.strip().splitlines()) == 1 and not out.exists()
    assert not os.listdir(tmp_path)


def test_batched_sweep_refuses_a_batch_that_does_not_fit_before_any_work(monkeypatch):
    """Each batch's memory (dynamics.flow.batched.batch_memory_estimate_bytes) is checked before anything runs."""
    import common.memory
    import dynamics.flow.batched as batched

    calls = []
    monkeypatch.setattr(batched, "run_flows_batched", lambda configs: calls.append(configs))
    monkeypatch.setattr(common.memory, "available_memory_bytes", lambda: 64 * 2**20)
    with pytest.raises(ConfigError, match=r"a batch of 3 flows of S = 8, R = 2, D = 4 needs about [\d.]+ GiB but this "
                                          r"machine has 0.1 GiB available; lower --batch-flows"):
        run_sweep(_random_grid((8,)), facts="random", progress=False, batch_flows=3)
    assert calls == []
