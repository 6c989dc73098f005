"""The symbolic reduction (analysis.theory.reduction), its predictions (analysis.theory.modes, quadrature,
reduced_solution) and --mode reduced/compare, each checked against an independent reference: the full flow, the
exact full loss and gradient, scipy quadrature, autograd Jacobians."""
import json
import math

import numpy as np
import pytest
import sympy as sp
import torch

from analysis.theory.modes import escape_rates, hallucination_stage_exists, plateau_levels
from analysis.theory.quadrature import margin_at, mode_rate, tau
from analysis.theory.reduced_solution import phase_times
from analysis.theory import reduction
from analysis.theory.reduced_flow import check_reducible, expand_state, run_mode, run_reduced
from common.errors import ConfigError
from dynamics import FlowConfig
from models import PopulationObjective, TaskConfig, make_task


# ----------------------------------------------------------------------------- symbolic
def test_every_claimed_identity_simplifies_to_zero():
    proofs = reduction.proofs()
    assert proofs and all(proofs.values()), [k for k, v in proofs.items() if not v]
    d = reduction.derivation()
    # every conserved quantity's time derivative along the reduced flow is exactly 0
    assert len(d["dconserved"]) >= 11
    assert all(e == 0 for e in d["dconserved"].values())
    assert d["plateaus"] == {"initial": sp.log(reduction.D * reduction.R), "hallucination": sp.log(reduction.D),
                             "subject_first": sp.log(reduction.R), "final": 0}


def test_zero_check_is_not_vacuous():
    """The exact zero test must reject wrong identities (a sign error, a wrong multiplicity)."""
    d = reduction.derivation()
    Q = d["conserved"]["Q_subject"] + reduction.w1 ** 2  # wrong: not conserved
    dQ = sum(sp.diff(Q, p) * d["rhs"][p] for p in reduction.PARAMS)
    assert not reduction.is_zero(dQ)
    assert not reduction.is_zero(d["rhs"][reduction.w1] * 2 - d["rhs"][reduction.w1])


def _random_class_state(rng, scale=1.5):
    y = rng.normal(size=10) * scale
    y[2] = abs(y[2]) + 0.1
    y[5] = abs(y[5]) + 0.1
    return y


@pytest.mark.parametrize("kw", [dict(S=8, R=3, D=4), dict(S=6, R=2, D=3, facts="balanced", seed=4),
                                dict(S=4, R=5, D=2, T=7, N=3)])
def test_reduced_loss_and_flow_equal_the_full_model_on_class_states(kw):
    """L_red and the lambdified class flow vs the exact full loss and flow_rhs (per-token gradients) of models."""
    task = make_task(TaskConfig(**kw))
    cfg = FlowConfig(task=TaskConfig(**kw))
    obj = PopulationObjective(task)
    L_red = sp.lambdify([reduction.PARAMS, reduction.S, reduction.R, reduction.D, reduction.T, reduction.N],
                        reduction.reduced_loss())
    f = reduction.class_rhs_numpy()
    rng = np.random.default_rng(0)
    for _ in range(3):
        y = _random_class_state(rng)
        Wt, K = (torch.as_tensor(x) for x in expand_state(cfg, y))
        full_L = float(obj.loss(Wt, K))
        assert L_red(tuple(y), task.S, task.R, task.D, task.T, task.N) == pytest.approx(full_L, rel=1e-12, abs=1e-12)
        dy = f(y, task.S, task.R, task.D, task.T, task.N)
        dWt, dK = obj.layout.unpack(obj.flow_rhs(obj.layout.pack(Wt, K)))
        expect_W, expect_K = expand_state(cfg, dy)
        np.testing.assert_allclose(dWt.numpy(), expect_W, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(dK.numpy(), expect_K, rtol=1e-10, atol=1e-13)


def test_escape_rates_are_the_top_eigenvalues_of_the_full_jacobian_at_the_origin():
    """Closed-form eigenvalues vs a central-difference Jacobian of the full compressed flow at y = 0."""
    S, R, D = 8, 3, 4
    task = make_task(TaskConfig(S=S, R=R, D=D))
    obj = PopulationObjective(task)
    P = obj.layout.size
    h = 1e-6  # the flow is odd around 0 to second order, so central differences are exact to O(h^2)
    J = np.empty((P, P))
    for j in range(P):
        e = torch.zeros(P, dtype=torch.float64)
        e[j] = h
        J[:, j] = ((obj.flow_rhs(e) - obj.flow_rhs(-e)) / (2 * h)).numpy()
    ev = np.sort(np.linalg.eigvals(J).real)[::-1]
    r = escape_rates(S, R, D)
    mu_s, mu_r = float(r["subject_eigen"]), float(r["relation_eigen"])
    assert mu_s == pytest.approx(math.sqrt((D - 1) / (R * D)) / S, rel=1e-14)
    top = ev[: S + R]
    expect = np.sort(np.r_[np.full(S, mu_s), np.full(R, mu_r)])[::-1]
    np.testing.assert_allclose(top, expect, rtol=1e-9)
    assert ev[S + R] < 1e-9  # the rest are 0 or negative
    assert r["subject"] == pytest.approx(2 * mu_s) and r["relation"] == pytest.approx(2 * mu_r)


# ----------------------------------------------------------------------------- quadrature
def test_tau_matches_scipy_quad_of_the_mode_equation():
    from scipy.integrate import quad

    lam, n = 0.3, 5.0
    for m, A0 in [(0.3, 1e-9), (3.0, 1e-3), (9.0, 2e-2), (0.5, 0.3), (12.0, 1e-6)]:
        ref = quad(lambda x: 1.0 / float(mode_rate(x, lam, n, A0)), 0, m, points=[A0], limit=500,
                   epsabs=0, epsrel=1e-13)[0]
        got = float(tau(m, lam, n, A0))
        assert got == pytest.approx(ref, rel=1e-10), (m, A0)
        m_back, _ = margin_at(np.array([got]), lam, n, A0)
        assert m_back[0] == pytest.approx(m, rel=1e-10)


# ----------------------------------------------------------------------------- against the full flow
CONFIGS = {
    "S16/R4/D8": dict(S=16, R=4, D=8),
    "S64/R4/D16": dict(S=64, R=4, D=16),
    "S16/R2/D4": dict(S=16, R=2, D=4),
    "balanced S16/R4/D8 uniform-init": dict(S=16, R=4, D=8, facts="balanced", seed=3),
    "S4/R32/D4 T10 N7 (subject first)": dict(S=4, R=32, D=4, T=10, N=7),
}
EXTRA = {"balanced S16/R4/D8 uniform-init": dict(init="uniform")}


@pytest.fixture(scope="module")
def compared():
    out = {}
    for name, kw in CONFIGS.items():
        cfg = FlowConfig(task=TaskConfig(**kw), rtol=1e-10, **EXTRA.get(name, {}))
        out[name] = (cfg, run_mode("compare", cfg, progress=False))
    return out


@pytest.mark.parametrize("name", list(CONFIGS))
def test_reduced_flow_agrees_with_full_flow(compared, name):
    cfg, res = compared[name]
    assert res.status == "converged"
    assert res.compare["points"] >= 100
    assert res.compare["max_loss_diff"] <= 1e-7


@pytest.mark.parametrize("name", list(CONFIGS))
def test_predicted_phase_times_match_full_flow(compared, name):
    cfg, res = compared[name]
    t = cfg.task
    p = phase_times([t.S], [t.R], [t.D], [cfg.alpha], cfg.eps_conv)
    for i in (1, 2, 3):
        full = getattr(res.phases, f"t{i}")
        assert full is not None and p[f"t{i}"][0] == pytest.approx(full, rel=5e-3)
        assert p[f"t{i}"][0] == pytest.approx(full, rel=1e-6)  # in fact: exact up to the solvers' tolerance
        assert res.compare[f"t{i}_rel_diff"] < 1e-6


def _hallucination_plateau_seen(traj, D, tol=0.05):
    """On a full-flow trajectory: a time where the relation is learned but the subject is not."""
    rel, sub = traj["relation_loss"], traj["subject_loss"]
    return bool(np.any((rel <= tol) & (sub >= math.log(D) - tol)))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_hallucination_condition_predicts_the_plateau(compared, name):
    cfg, res = compared[name]
    t = cfg.task
    predicted = bool(hallucination_stage_exists(t.S, t.R, t.D))
    assert _hallucination_plateau_seen(res.trajectory, t.D) == predicted
    lv = plateau_levels(t.S, t.R, t.D)
    tr = res.trajectory
    # the flattest point (smallest |dL/dlog t|) after leaving log|A| sits at the predicted intermediate level
    level = float(lv["intermediate"])
    after = (tr["t"] > 0) & (tr["loss"] < math.log(t.R * t.D) - 0.1) & (tr["loss"] > 0.3 * level)
    k = np.nonzero(after)[0][np.argmin(np.abs(tr["t"] * tr["dloss_dt"])[after])]
    assert tr["loss"][k] == pytest.approx(level, abs=0.1)
    assert abs(tr["t"][k] * tr["dloss_dt"][k]) < 0.1


def test_both_sides_of_the_condition_are_tested():
    sides = {bool(hallucination_stage_exists(kw["S"], kw["R"], kw["D"])) for kw in CONFIGS.values()}
    assert sides == {True, False}


def test_reduced_mode_result_has_the_full_modes_keys(compared, tmp_path):
    cfg, full = compared["S16/R4/D8"]
    red = run_reduced(cfg)
    a, b = tmp_path / "full", tmp_path / "red"
    full.save(str(a), plots=False)
    red.save(str(b), plots=False)
    ja, jb = json.loads((a / "results.json").read_text()), json.loads((b / "results.json").read_text())
    assert set(ja) - {"compare"} == set(jb)
    common = {"backend", "method", "rtol", "atol", "n_steps", "n_rejected", "nfe", "saved_points", "status"}
    assert set(ja["phases"]) == set(jb["phases"]) and common <= set(ja["solver"]) & set(jb["solver"])
    assert "max_loss_diff" in ja["compare"]
    ha = (a / "trajectory.csv").read_text().splitlines()[0].split(",")
    hb = (b / "trajectory.csv").read_text().splitlines()[0].split(",")
    assert ha == hb
    assert jb["invariant_max_drift"] < 1e-12
    # both are the exact minimiser of |t dL/dt| (full: on the dense interpolant), so they agree closely
    assert red.phases.plateau.loss == pytest.approx(full.phases.plateau.loss, rel=1e-8)
    assert red.phases.plateau.t == pytest.approx(full.phases.plateau.t, rel=1e-6)


@pytest.mark.parametrize("kw,ex,match", [
    (dict(facts="random"), {}, "subjects"),
    (dict(zipf_subjects=1.0), {}, "zipf"),
    (dict(S=12, D=8, facts="random"), {}, "divide"),
    (dict(), dict(init="file", init_file="x.npz"), "init"),
    (dict(), dict(dtype="float32"), "float64"),
])
def test_reduced_mode_refuses_configurations_outside_the_reduction(kw, ex, match):
    cfg = FlowConfig(task=TaskConfig(**kw), **ex)
    with pytest.raises(ConfigError, match=match):
        check_reducible(cfg)


def test_cli_mode_reduced_refusal_is_one_line_and_writes_nothing(tmp_path, capsys):
    from dynamics.run import main

    out = tmp_path / "o"
    assert main(["--mode", "reduced", "--zipf-subjects", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "zipf" in err and not out.exists()


def test_numeric_mode_equation_is_the_derived_one():
    """quadrature.mode_rate (numpy, used by the sweeps) vs the lambdified sympy mode equation, and the sympy
    subject/relation equations mapped onto it."""
    F = reduction.mode_rhs_numpy()
    rng = np.random.default_rng(1)
    for _ in range(5):
        m, n, c, Q = rng.uniform(0, 8), rng.integers(2, 50), rng.uniform(0.5, 20), rng.uniform(1e-8, 1e-1)
        P = rng.uniform(1, 500)
        lam, A0 = 2 * math.sqrt(c) / P, Q / (2 * math.sqrt(c))
        assert float(mode_rate(m, lam, n, A0)) == pytest.approx(float(F(m, n, P, c, Q)), rel=1e-13)
