"""models.transformer (SPEC §11): shapes, the parameter count against the parameters' sizes, attention-only
when m = 0, the batched model axis against a per-model loop, and the EOS softmax attention and the whole
forward pass against a hand computation in numpy."""
import numpy as np
import pytest
import torch

from common.errors import ConfigError
from models.transformer import (TransformerConfig, attention_weights, embeddings, eval_sequences, init_params,
                                stack_transformer_params, task_of, transformer_logits, transformer_parameter_count)

F64 = torch.float64


def _setup(configs, n_seq=None):
    params = stack_transformer_params(configs, F64)
    Phi, Psi = (torch.stack(t) for t in zip(*(embeddings(c, F64) for c in configs)))
    tokens = torch.stack([eval_sequences(task_of(c), c.seed)[0] for c in configs])  # (B, S·R, T)
    return params, Phi, Psi, tokens


@pytest.mark.parametrize("m", [0, 5])
def test_shapes_and_parameter_count(m):
    c = TransformerConfig(S=3, R=2, D=4, d=6, H=3, d_h=2, m=m, T=5)
    params, Phi, Psi, tokens = _setup([c, c])
    assert Phi.shape == (2, c.vocab_size, 6) and Psi.shape == (2, 8, 6) and tokens.shape == (2, 6, 5)
    assert torch.allclose(Phi.norm(dim=-1), torch.ones(())) and torch.allclose(Psi.norm(dim=-1), torch.ones(()))
    assert sum(p[0].numel() for p in params.values()) == c.params == 4 * 3 * 2 * 6 + 2 * m * 6
    assert transformer_parameter_count(6, 3, 2, m) == c.params
    assert transformer_logits(params, Phi, Psi, tokens).shape == (2, 6, 8)
    assert c.N == c.S + c.R and c.vocab_size == 2 * (c.S + c.R) + 1


def test_attention_only_when_m_is_zero():
    c = TransformerConfig(S=3, R=2, d=6, H=2, d_h=3, m=0)
    params = stack_transformer_params([c], F64)
    assert set(params) == {"WQ", "WK", "WV", "WO"}


def _reference(p, Phi, Psi, tokens):
    """One model, one sequence at a time, in numpy: the formulas of SPEC §11 written out."""
    H, d, dh = p["WQ"].shape
    out, attn = [], []
    for z in tokens:
        X = Phi[z]                                                 # (T, d)
        heads, A = [], []
        for h in range(H):
            s = (X[-1] @ p["WQ"][h]) @ (X @ p["WK"][h]).T / np.sqrt(dh)  # (T,)
            a = np.exp(s - s.max())
            a /= a.sum()
            A.append(a)
            heads.append(a @ (X @ p["WV"][h]))                     # (d_h,)
        hvec = np.concatenate(heads) @ p["WO"]                      # (d,)
        x = hvec + (np.maximum(hvec @ p["W1"], 0) @ p["W2"] if "W1" in p else 0)
        out.append(Psi @ x)
        attn.append(A)
    return np.array(out), np.array(attn)                           # (n, |A|), (n, H, T)


@pytest.mark.parametrize("m", [0, 4])
def test_forward_and_eos_attention_against_hand_computation(m):
    configs = [TransformerConfig(S=3, R=3, D=2, d=5, H=2, d_h=3, m=m, T=6, seed=s) for s in (0, 7)]
    params, Phi, Psi, tokens = _setup(configs)
    xi = transformer_logits(params, Phi, Psi, tokens).numpy()
    att = attention_weights(params, Phi, tokens).numpy()
    for b in range(2):
        ref_xi, ref_att = _reference({k: v[b].numpy() for k, v in params.items()}, Phi[b].numpy(), Psi[b].numpy(),
                                     tokens[b].numpy())
        assert np.allclose(xi[b], ref_xi, rtol=1e-12, atol=1e-12)
        assert np.allclose(att[b], ref_att, rtol=1e-12, atol=1e-12)


def test_batched_model_axis_equals_per_model_loop():
    configs = [TransformerConfig(S=4, R=2, D=3, d=8, H=2, d_h=4, m=6, T=7, seed=s) for s in range(3)]
    params, Phi, Psi, tokens = _setup(configs)
    xi = transformer_logits(params, Phi, Psi, tokens)
    for b in range(3):
        one = transformer_logits({k: v[b:b + 1] for k, v in params.items()}, Phi[b:b + 1], Psi[b:b + 1],
                                 tokens[b:b + 1])
        assert torch.allclose(xi[b:b + 1], one, rtol=1e-12, atol=1e-13)


def test_eval_set_is_every_fact_once_with_the_task_layout():
    c = TransformerConfig(S=5, R=3, D=2, T=6, seed=3)
    task = task_of(c)
    tokens, targets = eval_sequences(task, c.seed)
    assert (tokens[:, -1] == task.eos).all()
    subj = (tokens < c.S).nonzero()[:, 1]
    assert ((tokens < c.S).sum(1) == 1).all() and ((tokens >= c.S) & (tokens < c.S + c.R)).sum(1).eq(1).all()
    s = tokens[tokens < c.S]
    r = tokens[(tokens >= c.S) & (tokens < c.S + c.R)] - c.S
    assert torch.equal(s * c.R + r, torch.arange(c.facts)) and len(subj) == c.facts
    assert torch.equal(targets, torch.tensor(task.answers)[s, r])
    assert torch.equal(tokens, eval_sequences(task, c.seed)[0])  # fixed draw


@pytest.mark.parametrize("kw, match", [(dict(d=0), "d = 0"), (dict(m=-1), "m = -1"), (dict(H=0), "H = 0"),
                                       (dict(d_h=1.5), "d_h"), (dict(T=2), "T = 2"), (dict(N=0), "N = 0")])
def test_bad_config_refused(kw, match):
    with pytest.raises(ConfigError, match=match):
        TransformerConfig(**kw)


def test_eval_set_copies_hold_every_fact_equally_often_in_their_own_contexts():
    c = TransformerConfig(S=4, R=3, D=2, T=7, seed=5)
    task = task_of(c)
    tokens, targets = eval_sequences(task, c.seed, copies=3)
    assert tokens.shape == (3 * c.facts, c.T) and (tokens[:, -1] == task.eos).all()
    s = tokens[tokens < c.S]
    r = tokens[(tokens >= c.S) & (tokens < c.S + c.R)] - c.S
    assert torch.equal(s * c.R + r, torch.arange(c.facts).repeat(3))  # copy k of fact f at row k·S·R + f
    assert torch.equal(targets, torch.tensor(task.answers)[s, r])
    copies = tokens.view(3, c.facts, c.T)
    assert not torch.equal(copies[0], copies[1]) and not torch.equal(copies[1], copies[2])  # own noise contexts


def test_restart_keeps_the_instance_and_changes_only_the_initialization():
    base = TransformerConfig(S=3, R=2, D=2, d=8, H=2, d_h=4, m=4, T=5, seed=7)
    again = TransformerConfig(S=3, R=2, D=2, d=8, H=2, d_h=4, m=4, T=5, seed=7, restart=0)
    other = TransformerConfig(S=3, R=2, D=2, d=8, H=2, d_h=4, m=4, T=5, seed=7, restart=1)
    for a, b in zip(embeddings(base), embeddings(other)):
        assert torch.equal(a, b)
    assert np.array_equal(task_of(base).answers, task_of(other).answers)
    assert torch.equal(eval_sequences(task_of(base), base.seed)[0], eval_sequences(task_of(other), other.seed)[0])
    p0, p0again, p1 = init_params(base), init_params(again), init_params(other)
    assert all(np.array_equal(p0[n], p0again[n]) for n in p0)
    assert all(not np.allclose(p0[n], p1[n]) for n in p0)
    assert all(abs(p1[n].std() / p0[n].std() - 1) < 0.5 for n in p0)  # same scales, another draw
