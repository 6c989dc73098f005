import math

import numpy as np
import pytest

from common import ConfigError
from models import TaskConfig, make_task


def test_structured_table_formula():
    t = make_task(TaskConfig(S=12, R=3, D=4))
    for s in range(12):
        for r in range(3):
            assert t.answers[s, r] == s * 4 // 12 + r * 4


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_balanced_table_each_answer_held_S_over_D_times(seed):
    S, R, D = 24, 3, 6
    t = make_task(TaskConfig(S=S, R=R, D=D, facts="balanced", seed=seed))
    for r in range(R):
        counts = np.bincount(t.answers[:, r] - r * D, minlength=D)
        assert np.all(counts == S // D)
    assert math.isclose(t.H_A_given_R, math.log(D), rel_tol=1e-14)


def test_random_table_seeded_and_in_blocks():
    a = make_task(TaskConfig(S=50, R=5, D=7, facts="random", seed=3)).answers
    b = make_task(TaskConfig(S=50, R=5, D=7, facts="random", seed=3)).answers
    c = make_task(TaskConfig(S=50, R=5, D=7, facts="random", seed=4)).answers
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    r = np.arange(5)[None, :]
    assert np.all((a >= r * 7) & (a < r * 7 + 7))


def test_zipf_frequencies_and_entropy_against_direct_sum():
    t = make_task(TaskConfig(S=10, R=3, D=5, facts="random", seed=1, zipf_subjects=1.2, zipf_relations=0.5))
    w = (np.arange(1, 11) ** -1.2)
    assert np.allclose(t.p, w / w.sum(), rtol=1e-14)
    # H(A|R) by brute force over (s, r) pairs
    H = 0.0
    for r in range(3):
        pa = {}
        for s in range(10):
            pa[t.answers[s, r]] = pa.get(t.answers[s, r], 0.0) + t.p[s]
        H += t.q[r] * -sum(v * math.log(v) for v in pa.values())
    assert math.isclose(t.H_A_given_R, H, rel_tol=1e-13)


def test_fact_file_roundtrip_npy_and_csv(tmp_path):
    ref = make_task(TaskConfig(S=8, R=2, D=4, facts="random", seed=5)).answers
    np.save(tmp_path / "f.npy", ref)
    np.savetxt(tmp_path / "f.csv", ref, fmt="%d", delimiter=",")
    for name in ("f.npy", "f.csv"):
        t = make_task(TaskConfig(S=8, R=2, D=4, facts="file", facts_file=str(tmp_path / name)))
        assert np.array_equal(t.answers, ref)


@pytest.mark.parametrize("content,match", [
    (np.zeros((8, 3), dtype=np.int64), "shape"),
    (np.zeros((8, 2), dtype=np.float64), "integers"),
    (np.full((8, 2), 5, dtype=np.int64), "outside relation 0"),
])
def test_fact_file_rejected(tmp_path, content, match):
    np.save(tmp_path / "bad.npy", content)
    with pytest.raises(ConfigError, match=match):
        make_task(TaskConfig(S=8, R=2, D=4, facts="file", facts_file=str(tmp_path / "bad.npy")))


def test_malformed_csv_rejected(tmp_path):
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ConfigError, match="bad.csv"):
        make_task(TaskConfig(S=1, R=2, D=4, facts="file", facts_file=str(tmp_path / "bad.csv")))


@pytest.mark.parametrize("kw,match", [
    (dict(S=0), "S = 0"), (dict(R=-1), "R = -1"), (dict(D=2.5), "D = 2.5"), (dict(T=2), "T = 2"),
    (dict(N=0), "N = 0"), (dict(S=10, D=4, facts="balanced"), "divide"), (dict(facts="nope"), "facts"),
    (dict(zipf_subjects=-1.0), "zipf_subjects"),
])
def test_bad_task_config(kw, match):
    with pytest.raises(ConfigError, match=match):
        TaskConfig(**kw)
