"""models.transformer.construction (SPEC §8): the transformers built without training, checked against a plain
numpy forward of SPEC §11 written here, against the properties the construction pins (scores, targets), and by
accuracy: 1 on seeded instances where every solve is exact with margin, falling past capacity."""
import math

import numpy as np
import pytest
import torch

from models.transformer import TransformerConfig, embeddings, task_of, transformer_parameter_count
from models.transformer.construction import (BETA, LAMBDA, construct, construction_accuracy, head_groups,
                                             own_token_attention)
from models.transformer.instance import draw_init

# margin: V = 2(S+R)+1 <= d (keys exact), tokens per head <= d_h (values exact), R·D <= d (attention-only
# readout exact), S·R <= m (MLP readout exact)
ATTENTION_ONLY = dict(S=4, R=4, D=2, d=64, H=4, d_h=8, m=0, T=8)
WITH_MLP = dict(S=6, R=6, D=4, d=64, H=2, d_h=8, m=64, T=8)
ONE_HEAD = dict(S=3, R=3, D=2, d=64, H=1, d_h=8, m=0, T=8)


def numpy_residual(p, Phi, tokens):
    """x at the EOS position for one sequence, straight from SPEC §11 (loops over heads, no batching)."""
    H, d, dh = p["WQ"].shape
    X = Phi[tokens]                                                   # (T, d)
    outs = []
    for h in range(H):
        q = p["WQ"][h].T @ X[-1]                                      # (d_h,)
        scores = (X @ p["WK"][h]) @ q / math.sqrt(dh)                 # (T,)
        a = np.exp(scores - scores.max())
        a /= a.sum()
        outs.append(a @ (X @ p["WV"][h]))                             # (d_h,)
    x = p["WO"].T @ np.concatenate(outs)                              # (d,)
    if "W1" in p:
        x = x + p["W2"].T @ np.maximum(p["W1"].T @ x, 0.0)
    return x


def sequence(task, s, r, rng):
    """Noise everywhere, EOS last, subject and relation at two distinct positions among the first T-1."""
    t = rng.integers(task.S + task.R, task.S + task.R + task.N, task.T)
    t[-1] = task.eos
    i, j = rng.choice(task.T - 1, 2, replace=False)
    t[i], t[j] = s, task.S + r
    return t


@pytest.mark.parametrize("kw", [ATTENTION_ONLY, WITH_MLP])
def test_parameters_have_the_models_shapes_and_count(kw):
    c = TransformerConfig(**kw)
    p = construct(c)
    init = draw_init(0, c.d, c.H, c.d_h, c.m)
    assert {k: v.shape for k, v in p.items()} == {k: v.shape for k, v in init.items()}
    assert sum(v.size for v in p.values()) == transformer_parameter_count(c.d, c.H, c.d_h, c.m)


@pytest.mark.parametrize("kw", [ATTENTION_ONLY, WITH_MLP])
def test_scores_are_pinned_on_own_tokens_and_eos_and_vanish_elsewhere(kw):
    """With V <= d every score is exact: lambda on a head's own tokens, lambda/2 on EOS, 0 on the rest."""
    c = TransformerConfig(**kw)
    p = construct(c)
    Phi = embeddings(c, torch.float64)[0].numpy()
    eos = task_of(c).eos
    for h, Z in enumerate(head_groups(c.S, c.R, c.H)):
        q = p["WQ"][h].T @ Phi[eos]                                   # (d_h,)
        score = (Phi @ p["WK"][h]) @ q / math.sqrt(c.d_h)             # (V,)
        want = np.zeros(len(Phi))
        want[Z], want[eos] = LAMBDA, LAMBDA / 2
        assert np.abs(score - want).max() < 1e-6 * LAMBDA


def test_attention_only_logits_are_one_plus_beta_on_the_answer_and_match_a_numpy_forward():
    c = TransformerConfig(**ATTENTION_ONLY)
    task, rng = task_of(c), np.random.default_rng(5)
    p = construct(c)
    Phi, Psi = (x.numpy() for x in embeddings(c, torch.float64))
    from models.transformer import transformer_logits

    tp = {k: torch.as_tensor(v)[None] for k, v in p.items()}
    for s in range(c.S):
        for r in range(c.R):
            t = sequence(task, s, r, rng)
            xi = Psi @ numpy_residual(p, Phi, t)                       # (|A|,)
            ref = transformer_logits(tp, torch.as_tensor(Phi)[None], torch.as_tensor(Psi)[None],
                                     torch.as_tensor(t)[None, None])[0, 0].numpy()
            assert np.allclose(xi, ref, atol=1e-9)
            a = task.answers[s][r]
            block = np.arange(r * c.D, (r + 1) * c.D)
            # the answer: 1 (subject memory) + beta (relation block); its block rivals: beta; other answers:
            # 1 (the subject's answers to other relations) or 0; up to the EOS leak e^{-lambda/2}
            assert xi[a] == pytest.approx(1 + BETA, abs=1e-4)
            assert np.allclose(np.delete(xi[block], a - r * c.D), BETA, atol=1e-4)
            assert xi[np.setdiff1d(np.arange(len(xi)), block)].max() < 1 + 1e-4
            assert int(np.argmax(xi)) == a


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("kw", [ATTENTION_ONLY, WITH_MLP, ONE_HEAD])
def test_accuracy_is_one_where_every_solve_is_exact(kw, seed):
    c = TransformerConfig(**kw, seed=seed)
    assert construction_accuracy(c) == 1.0


@pytest.mark.parametrize("kw", [ATTENTION_ONLY, WITH_MLP])
def test_heads_denoise_attending_to_their_token(kw):
    """The head holding the subject (and the one holding the relation) puts all but e^{-lambda/2} of its
    attention on it, whatever the noise."""
    assert own_token_attention(TransformerConfig(**kw)) > 1 - 2 * math.exp(-LAMBDA / 2)


def test_attention_only_accuracy_falls_past_capacity():
    """d = 32, H = 8, d_h = 4: exact up to S = R = 8 (V = 33, R·D = 32), then the keys and the readout are
    projections and accuracy falls."""
    accs = [construction_accuracy(TransformerConfig(S=S, R=S, D=4, d=32, H=8, d_h=4, m=0, T=8)) for S in (4, 16, 24)]
    assert accs[0] == 1.0 and accs[1] < 0.9 and accs[2] < 0.5 and accs[1] > accs[2]


def test_mlp_accuracy_falls_when_facts_exceed_the_width():
    """S = R = 8 (64 facts), d = 32, H = 4, d_h = 8: the least-squares readout interpolates from m = 64 on."""
    accs = [construction_accuracy(TransformerConfig(S=8, R=8, D=4, d=32, H=4, d_h=8, m=m, T=8)) for m in (8, 16, 64)]
    assert accs[2] == 1.0 and accs[0] < accs[1] < 0.99


@pytest.mark.slow  # a subprocess that trains 8 small transformers, about 10 s
def test_bench_rows_are_the_constructions_and_the_trainers_accuracies(tmp_path):
    import json
    import os
    import subprocess
    import sys

    from dynamics.capacity_training import TransformerTrainConfig, train_transformers
    from tests.helpers import ROOT

    subprocess.run([sys.executable, os.path.join(ROOT, "bench", "transformer_constructions.py"), "--sizes", "2", "3",
                    "--seeds", "0", "--max-steps", "16", "--out", str(tmp_path)], check=True, capture_output=True,
                   timeout=300)
    rows = json.loads((tmp_path / "constructions.json").read_text())["rows"]
    assert len(rows) == 4
    for r in rows:
        c = TransformerConfig(S=r["S"], R=r["R"], D=r["D"], d=r["d"], H=r["H"], d_h=r["d_h"], m=r["m"], T=8, seed=0)
        assert r["construction"] == [construction_accuracy(c)]
        run = train_transformers([c, c], [3e-2, 1e-1], TransformerTrainConfig(batch=128, max_steps=16, eval_every=32,
                                                                              record=False))
        assert r["trained"] == [pytest.approx(float(run.best_accuracy.max()), abs=1e-12)]
