"""analysis.capacity (SPEC §9): the bisection against synthetic monotone oracles with known thresholds, the
lockstep batching, the scaling fit's interval against a Monte Carlo coverage estimate, and one real search
against the one-at-a-time outcomes on each side of the answer."""
import math

import numpy as np
import pytest

from analysis.capacity.bound import bound_line, max_facts
from analysis.capacity.fit import scaling_fit
from analysis.capacity.oracles import training_oracle
from analysis.capacity.search import Bracket, search_capacity
from common.errors import ConfigError
from dynamics.capacity_training import MemoryTrainConfig, train_one
from models.memory import MemoryConfig


def threshold_oracle(thresholds, calls=None):
    def ok(N, seeds):
        if calls is not None:
            calls.append((N, tuple(seeds)))
        return [N <= thresholds[s] for s in seeds]
    return ok


@pytest.mark.parametrize("thresholds", [{0: 37, 1: 5, 2: 64, 3: 63, 4: 500, 5: 9, 6: 200}])
def test_bisection_finds_known_thresholds_exactly(thresholds):
    r = search_capacity(threshold_oracle(thresholds), list(thresholds), Bracket(5, 40, rtol=0, max_doublings=3))
    assert list(r.capacity[:4]) == [37, 5, 64, 63]
    assert r.above_bracket == (False,) * 4 + (True, False, False) and r.capacity[4] == 320  # 40 · 2^3 still succeeds
    assert r.capacity[5] == 9 and r.capacity[6] == 200 and not any(r.below_bracket)
    # every probe answered consistently with its threshold, and never more than log2 steps past bracketing
    for s, probes in zip(r.seeds, r.probes):
        assert all(ok == (N <= thresholds[s]) for N, ok in probes)
        assert len(probes) <= 2 + 3 + math.ceil(math.log2(320))


def test_below_bracket_is_flagged():
    r = search_capacity(threshold_oracle({0: 3}), [0], Bracket(5, 40, rtol=0))
    assert r.capacity == (4,) and r.below_bracket == (True,) and r.probes == (((5, False),),)


@pytest.mark.parametrize("rtol", [0.05, 0.2])
def test_relative_resolution_brackets_the_threshold(rtol):
    th = {s: t for s, t in enumerate([100, 257, 999])}
    r = search_capacity(threshold_oracle(th), list(th), Bracket(10, 1000, rtol=rtol))
    for s, c in zip(r.seeds, r.capacity):
        assert c <= th[s] < c + max(1, rtol * c) + 1


def test_seeds_at_the_same_probe_are_asked_together():
    calls = []
    search_capacity(threshold_oracle({0: 20, 1: 20, 2: 30}, calls), [0, 1, 2], Bracket(4, 64, rtol=0))
    assert calls[0] == (4, (0, 1, 2))                          # the first probes are shared
    assert all(len(set(N for N, _ in calls[i:i + 1])) == 1 for i in range(len(calls)))
    assert any(seeds == (0, 1) for _, seeds in calls)          # equal thresholds stay batched together
    assert len({(N, s) for N, seeds in calls for s in seeds}) == sum(len(seeds) for _, seeds in calls)


def test_first_bracket_top_is_the_fraction_of_d2_or_md():
    """SPEC §9: hi = ceil(φ·d²) linear, ceil(φ·m·d) MLP, φ = 1/4 and 3/4 by default; lo = d; hi >= lo + 1."""
    from analysis.capacity.sweep import CapacitySettings

    assert CapacitySettings(model="linear", ds=(10,)).bracket(10, 0) == (10, 25)
    assert CapacitySettings(model="mlp", ds=(8,), alphas=(2.0,)).bracket(8, 16) == (8, 96)
    assert CapacitySettings(model="linear", ds=(10,), top_fraction=0.01).bracket(10, 0) == (10, 11)
    with pytest.raises(ConfigError, match="top_fraction"):
        CapacitySettings(model="linear", top_fraction=0.0)


def test_bad_bracket_is_refused():
    with pytest.raises(ConfigError, match="hi = 4"):
        Bracket(5, 4)


def test_fit_recovers_a_known_slope_and_its_interval_covers_at_the_stated_rate():
    """C = 0.5 P^0.8 × lognormal(0.1): the 95% interval covers 0.8 in 95% ± 3 standard errors of 400 fits."""
    rng = np.random.default_rng(0)
    P = np.repeat([16, 36, 64, 144, 256], 3)
    cover = []
    for _ in range(400):
        C = 0.5 * P**0.8 * np.exp(0.1 * rng.standard_normal(P.size))
        fit = scaling_fit(P, C)
        cover.append(fit.ci[0] <= 0.8 <= fit.ci[1])
    rate, se = np.mean(cover), math.sqrt(0.95 * 0.05 / 400)
    assert abs(rate - 0.95) < 3 * se
    exact = scaling_fit(P, 2.0 * P**1.0)
    assert exact.slope == pytest.approx(1.0) and exact.intercept == pytest.approx(math.log(2.0))


def test_fit_refuses_a_single_size():
    with pytest.raises(ConfigError, match="same parameter count"):
        scaling_fit([16, 16, 16], [3, 4, 5])


def test_trained_capacity_is_consistent_with_single_runs():
    """The search's answer for the linear memory at d = 4 succeeds one at a time and N* + 1 fails (rtol = 0)."""
    train = MemoryTrainConfig(max_steps=600, record=False)
    r = search_capacity(training_oracle("linear", 4, 0, "identity", None, [0.05], train), [0, 1],
                        Bracket(4, 16, rtol=0, max_doublings=1))
    for s, c in zip(r.seeds, r.capacity):
        assert 4 <= c < 32
        assert train_one(MemoryConfig(N=c, d=4, seed=s), 0.05, train).success[0]
        assert not train_one(MemoryConfig(N=c + 1, d=4, seed=s), 0.05, train).success[0]


def test_information_bound_against_hand_computed_values():
    """N log2 N = 1024 bits (identity target, M = N): 143·log2 143 = 1023.86 < 1024 < 144·log2 144 = 1032.5, so
    N_max = 143.016; a fixed M = 32 gives N_max = 1024 / 5 = 204.8; M = 1 carries no information: no bound."""
    n = max_facts(1024, lambda N: N)
    assert 143 < n < 144 and n * math.log2(n) == pytest.approx(1024, rel=1e-10)
    assert n == pytest.approx(143.016, abs=1e-3)
    assert max_facts(1024, 32) == pytest.approx(204.8)
    assert max_facts(1024, 1) == math.inf
    P, N = bound_line([16, 128], 8, lambda N: N)  # P·b = 128 and 1024 bits
    assert list(P) == [16, 128] and N[1] == pytest.approx(n) and N[0] * math.log2(N[0]) == pytest.approx(128)


@pytest.mark.parametrize("b", [0, -1, float("nan"), float("inf")])
def test_information_bound_refuses_bad_bits_per_param(b):
    with pytest.raises(ConfigError, match="bits_per_param"):
        bound_line([16], b, lambda N: N)
