"""Bounded work (issue 8, sections 1-3): trainer divergence, the flow's step budget and exit status 3,
tolerance ranges, the inputs that used to run forever, and memory estimated before allocating.

The command-line programs are driven through ``main(argv)`` (they return the exit status).
"""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from common.errors import ConfigError
from dynamics import FlowConfig, TrainConfig, run_flow, train
from models import TaskConfig


def _one_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# ----------------------------------------------------------------------------- tolerance ranges
@pytest.mark.parametrize("rtol", [1e-30, 1e-15, 2e-3, 0.1, 0.3, 0.5, 1.0, math.nan, math.inf, -1e-9])
def test_rtol_outside_range_is_refused_with_value_range_and_reason(rtol):
    with pytest.raises(ConfigError) as e:
        FlowConfig(rtol=rtol)
    msg = str(e.value)
    assert f"rtol = {rtol:g}" in msg or f"rtol = {rtol!r}" in msg
    assert "[1e-14, 0.001]" in msg and "float64" in msg and "meaningless" in msg


def test_rtol_range_ends_are_accepted_and_float32_has_its_own():
    assert FlowConfig(rtol=1e-14).rtol == 1e-14
    assert FlowConfig(rtol=1e-3).rtol == 1e-3
    assert FlowConfig(dtype="float32", rtol=1e-7).rtol == 1e-7
    with pytest.raises(ConfigError, match=r"rtol = 1e-08 is too small.*\[1e-07, 0.001\].*float32"):
        FlowConfig(dtype="float32", rtol=1e-8)
    for atol in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ConfigError, match="atol"):
            FlowConfig(atol=atol)


@pytest.mark.parametrize("argv", [["--rtol", "0.3"], ["--rtol", "1"], ["--rtol", "1e-30"]])
def test_run_refuses_rtol_outside_range(argv, tmp_path, capsys):
    from dynamics.run import main

    out = tmp_path / "o"
    assert main(argv + ["--out", str(out)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"rtol = {float(argv[1]):g}" in line and "[1e-14, 0.001]" in line
    assert not out.exists()


def test_sweep_refuses_full_rtol_outside_range(tmp_path, capsys):
    from analysis.sweep import main

    out = tmp_path / "s"
    assert main(["--full-rtol", "1e-30", "--S", "16", "--D", "5", "--alpha", "1e-3", "--out", str(out)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "full_rtol = 1e-30" in line and "[1e-14, 0.001]" in line
    assert not out.exists()


# ----------------------------------------------------------------------------- the step budget
def test_max_steps_writes_results_with_status_and_exits_3(tmp_path, capsys):
    from dynamics.run import main

    out = tmp_path / "ms"
    assert main(["--max-steps", "25", "--out", str(out), "--no-plots", "--quiet"]) == 3
    line = _one_line(capsys.readouterr().err)
    assert "max_steps" in line and "25 steps" in line and "--max-steps" in line
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "max_steps" and "25 steps" in res["message"]
    assert res["solver"]["n_steps"] == 25 and res["phases"]["t3"] is None
    assert (out / "trajectory.csv").exists()


def test_solver_failure_exits_3_with_results(tmp_path, capsys, monkeypatch):
    import analysis.theory.reduced_flow as rf
    from dynamics.run import main

    real = rf.run_mode

    def failing(mode, config, **kw):
        res = real(mode, config, **kw)
        return dataclasses.replace(res, status="failed", message="dopri5: the step size collapsed to 1e-300 at t = 1")

    monkeypatch.setattr(rf, "run_mode", failing)
    out = tmp_path / "f"
    assert main(["--mode", "reduced", "--out", str(out), "--no-plots", "--quiet"]) == 3
    assert "step size collapsed" in _one_line(capsys.readouterr().err)
    assert json.loads((out / "results.json").read_text())["status"] == "failed"


def test_default_budget_is_finite_and_progress_lines_appear_off_a_terminal(tmp_path, capsys, monkeypatch):
    import dynamics.flow.solve
    from dynamics.run import build_parser, main

    assert FlowConfig().max_steps == build_parser().parse_args([]).max_steps == 1_000_000
    monkeypatch.setattr(dynamics.flow.solve, "_PROGRESS_SECONDS", 0.0)  # a line at every step instead of every 30 s
    assert main(["--max-steps", "12", "--out", str(tmp_path / "p"), "--no-plots"]) == 3
    err = capsys.readouterr().err  # pytest's capture is not a terminal
    progress = [x for x in err.splitlines() if x.startswith("flow: t = ")]
    assert len(progress) >= 10 and "loss" in progress[-1] and "12 steps" in progress[-1]


# ----------------------------------------------------------------------------- inputs that used to run forever
def test_large_alpha_needs_a_tighter_rtol_and_is_then_accurate():
    """The logits (~alpha^2) move by O(1) through relative changes ~1/alpha^2 of the entries, so the flow's
    logit error is ~alpha^2 rtol: refused above 1e-4, and where accepted the phase times agree with the
    reduced quadrature (analysis.theory.reduced_solution, an independent exact computation) to about that error."""
    from analysis import analyze_flow
    from analysis.theory.reduced_solution import phase_times

    with pytest.raises(ConfigError, match="pass rtol <= 1.0e-10"):
        FlowConfig(alpha=1e3)
    pred = phase_times([16], [4], [8], [100.0])
    for rtol, tol in ((1e-9, 1e-4), (1e-12, 1e-7)):  # alpha^2 rtol = 1e-5 and 1e-8
        res = analyze_flow(FlowConfig(task=TaskConfig(S=16, R=4, D=8), alpha=100.0, rtol=rtol), progress=False)
        for k in ("t1", "t2", "t3"):
            assert getattr(res.phases, k) == pytest.approx(float(pred[k][0]), rel=tol), (rtol, k)


@pytest.mark.slow
def test_random_table_at_alpha_1e20_finishes():
    """It crawled at steps of 5e-6 (the automatic atol of 1.8e-33 met rounding noise of ~1e-22); the
    row-relative atol floor (dynamics.ode.tolerances.RowAtol) lets it converge in a few thousand steps."""
    run = run_flow(FlowConfig(task=TaskConfig(facts="random"), alpha=1e-20, max_steps=20_000), progress=False)
    assert run.status == "converged", (run.status, run.message)
    assert run.solver["n_steps"] < 6000 and run.solver["n_rejected"] < 100
    assert run.solver["atol_row_floor"] is True


def test_loose_rtol_used_to_blow_up_now_refused_and_1e3_finishes():
    # rtol 0.3: the explicit solver accepted unstable steps, the state reached 1e153 and never the target
    with pytest.raises(ConfigError, match="too large"):
        FlowConfig(rtol=0.3)
    run = run_flow(FlowConfig(rtol=1e-3), progress=False)
    assert run.status == "converged" and run.solver["n_steps"] < 200


# ----------------------------------------------------------------------------- trainer divergence
def test_sampled_trainer_stops_at_divergence_and_keeps_finite_history():
    r = train(TrainConfig(lr=1e6, steps=256, eval_every=32, device="cpu"), progress=False)
    assert r.status == "diverged" and r.diverged_at is not None and 0 < r.diverged_at < 32
    h = r.history
    assert list(h["step"]) == [0] and np.all(np.isfinite(h["loss"]))
    ok = train(TrainConfig(lr=0.1, steps=64, eval_every=32, device="cpu"), progress=False)
    assert ok.status == "completed" and ok.diverged_at is None and list(ok.history["step"]) == [0, 32, 64]


def test_softmax_divergence_with_finite_but_exploding_loss():
    r = train(TrainConfig(model="softmax", lr=1e6, steps=64, eval_every=32, device="cpu"), progress=False)
    assert r.status == "diverged" and r.diverged_at < 32 and np.all(np.isfinite(r.history["loss"]))


def test_gd_trainer_divergence():
    r = train(TrainConfig(optimizer="gd", lr=1e29, init_scale=1e100, steps=100, eval_every=50, device="cpu"),
              progress=False)
    assert r.status == "diverged" and r.diverged_at == 1 and list(r.history["step"]) == [0]


@pytest.mark.parametrize("argv, at", [
    (["--lr", "1e6"], None),
    (["--model", "softmax", "--lr", "1e6"], None),
    (["--init-scale", "1e308"], 0),
    (["--optimizer", "gd", "--lr", "1e29", "--init-scale", "1e100"], 1),
])
def test_train_cli_diverged_exits_3_with_status(argv, at, tmp_path, capsys):
    from models.train import main

    out = tmp_path / "t"
    assert main(argv + ["--steps", "64", "--eval-every", "32", "--device", "cpu", "--out", str(out),
                        "--no-plots", "--quiet"]) == 3
    line = _one_line(capsys.readouterr().err)
    assert "diverged" in line and ("smaller --lr" in line or "smaller --init-scale" in line)
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "diverged" and isinstance(res["diverged_at"], int)
    if at is not None:
        assert res["diverged_at"] == at
    rows = (out / "history.csv").read_text().splitlines()[1:]
    assert all("nan" not in r.split(",")[1] for r in rows)  # no NaN loss rows


def test_train_cli_completed_run_records_status(tmp_path):
    from models.train import main

    out = tmp_path / "c"
    assert main(["--steps", "32", "--eval-every", "16", "--device", "cpu", "--out", str(out), "--no-plots",
                 "--quiet"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "completed" and res["diverged_at"] is None


# ----------------------------------------------------------------------------- memory estimated before allocating
@pytest.mark.parametrize("argv", [
    ["--S", "100000", "--R", "1000", "--D", "1000"],
    ["--batch", "100000000000"],
    ["--eval-size", "100000000000"],
    ["--model", "softmax", "--d", "100000000"],
    ["--optimizer", "gd", "--S", "100000", "--R", "1000", "--D", "1000"],
])
def test_train_memory_refusal(argv, tmp_path, capsys):
    from models.train import main

    out = tmp_path / "m"
    assert main(argv + ["--out", str(out)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "needs about" in line and "GiB" in line and "available" in line
    assert not out.exists()


def test_train_memory_estimate_grows_with_each_size():
    base = TrainConfig(device="cpu")
    total = sum(base.memory_estimate_bytes().values())
    for kw in (dict(batch=1 << 20), dict(eval_size=1 << 22), dict(task=TaskConfig(S=4096, R=4, D=8))):
        assert sum(dataclasses.replace(base, **kw).memory_estimate_bytes().values()) > 4 * total
    soft = TrainConfig(model="softmax", device="cpu")
    assert sum(dataclasses.replace(soft, d=4096).memory_estimate_bytes().values()) > 10 * sum(
        soft.memory_estimate_bytes().values())


def test_paper_memory_refusal(tmp_path, capsys):
    from figures.paper import main

    out = tmp_path / "p"
    assert main(["--out", str(out), "--d", "100000000"]) == 2
    assert "GiB" in _one_line(capsys.readouterr().err)
    assert not out.exists()


@pytest.mark.parametrize("argv, match", [
    (["--alpha-range", "1e-6", "1e-2", "1000000000"], "COUNT = 1000000000"),
    (["--alpha-range", "1e-6", "1e-2", "300000", "--S", "16", "32", "64", "128"], "1,200,000 configurations"),
])
def test_sweep_grid_size_refusal(argv, match, tmp_path, capsys):
    from analysis.sweep import main

    out = tmp_path / "s"
    assert main(argv + ["--out", str(out)]) == 2
    assert match in _one_line(capsys.readouterr().err)
    assert not out.exists()


def test_sweep_grid_memory_estimate_refuses_what_does_not_fit():
    from analysis.sweeps.phase_sweep import check_grid_size, grid_memory_estimate_bytes

    check_grid_size(1000, available=8 * 2**30)
    with pytest.raises(ConfigError, match="GiB"):
        check_grid_size(100_000, available=grid_memory_estimate_bytes(100_000))


def test_reduced_mode_is_not_refused_with_the_full_systems_estimate(tmp_path):
    from analysis.theory.reduced_flow import check_reduced_memory
    from dynamics.run import main

    cfg = FlowConfig(task=TaskConfig(S=100_000, R=100, D=100))
    with pytest.raises(ConfigError, match="GiB"):
        cfg.check_memory()  # the full system: 1e9 parameters
    check_reduced_memory(cfg)  # the reduced one: 10
    out = tmp_path / "r"
    assert main(["--mode", "reduced", "--S", "100000", "--R", "100", "--D", "100", "--out", str(out),
                 "--no-plots", "--quiet"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "t_max" and res["phases"]["t1"] > 0  # t3 lies beyond the default t_max at S = 1e5
    with pytest.raises(ConfigError, match="reduced run .* needs about"):
        check_reduced_memory(FlowConfig(task=TaskConfig(S=100_000, R=100, D=100, facts="random")), available=2**20)


@pytest.mark.parametrize("module", ["dynamics.run", "models.train", "analysis.derive", "analysis.sweep",
                                    "figures.paper"])
def test_every_cli_documents_exit_codes(module):
    import importlib

    text = " ".join(importlib.import_module(module).build_parser().format_help().split())
    for part in ("0 success", "2 bad input", "3 ran but did not finish", "130 SIGINT", "143 SIGTERM"):
        assert part in text, (module, part)
