"""Targets, lengths and sequence lengths a flow cannot reach are refused up front, with the reason (issue 24):
dynamics.flow.reach through FlowConfig.check_reachable (python -m dynamics.run) and the experiment's Stop."""
import time

import pytest

from common.errors import ConfigError
from dynamics import FlowConfig, run_flow
from dynamics.experiment.schedule import Stop
from dynamics.flow.reach import EXPLICIT_STABILITY, LOSS_TARGET_MIN, T_MAX_LIMIT, noise_stiffness
from dynamics.run import main
from models.task import TaskConfig


@pytest.mark.parametrize("flags, words", [
    (["--loss-target", "1e-300"], ["loss_target = 1e-300", "1e-15"]),
    (["--eps-conv", "1e-20"], ["eps_conv = 1e-20", "resolve"]),
    (["--t-max", "1e300"], ["t_max = 1e+300", "solver steps", "1e+18"]),
    (["--T", "2147483647"], ["T = 2147483647", "stiff", "steps", "use T <="]),
])
def test_unreachable_run_refused_at_once(tmp_path, capsys, flags, words):
    out = tmp_path / "run"
    t0 = time.perf_counter()
    assert main(flags + ["--out", str(out)]) == 2
    assert time.perf_counter() - t0 < 3
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and all(w in err for w in words), err
    assert not out.exists()


def test_limits_themselves_accepted():
    FlowConfig(loss_target=LOSS_TARGET_MIN, t_max=T_MAX_LIMIT).check_reachable()
    FlowConfig(task=TaskConfig(T=10**8)).check_reachable()  # ~70,000 steps: slow but within the budget
    with pytest.raises(ConfigError, match="max_steps = 1,000"):
        FlowConfig(task=TaskConfig(T=10**8), max_steps=1000).check_reachable()
    FlowConfig(task=TaskConfig(T=10**9), method="rock4").check_reachable()  # stabilized: not limited this way


def test_stage_stop_refuses_unreachable():
    with pytest.raises(ConfigError, match="until_loss = 1e-300"):
        Stop(loss=1e-300)
    with pytest.raises(ConfigError, match="until_time = 1e"):
        Stop(time=1e300)
    assert Stop(loss=1e-12, time=1e6).loss == 1e-12


def test_noise_stiffness_sets_the_step():
    """At T = 1e8 (S16/R4/D8, alpha 1e-5) the predicted eigenvalue 1.56e3 limits DOPRI5 to h <= 3.4/lambda:
    the measured mean step on the plateau is within 25 % of that bound (and larger T would crawl)."""
    cfg = FlowConfig(task=TaskConfig(T=10**8), t_max=1.0)
    lam = noise_stiffness(10**8, 20, 32, 1e-5)
    assert lam == pytest.approx(1.5625e3, rel=1e-6)
    run = run_flow(cfg, progress=False)
    assert run.status == "t_max"
    h = 1.0 / run.solver["n_steps"]
    bound = EXPLICIT_STABILITY["dopri5"] / lam
    assert 0.6 * bound < h <= bound * 1.05, (h, bound)
