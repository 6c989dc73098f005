"""dynamics.capacity_training.transformer (SPEC §11): BatchedAdam on the transformer's parameter dict against
torch.optim.Adam, and the batched run (seeds × learning rates, own batches, own stops) against one-at-a-time
runs."""
import numpy as np
import pytest
import torch

from common.errors import ConfigError
from dynamics.capacity_training import BatchedAdam, TransformerTrainConfig, train_transformer, train_transformers
from models.memory import loss
from models.transformer import TransformerConfig, embeddings, eval_sequences, stack_transformer_params, task_of
from models.transformer import transformer_logits

F64 = torch.float64


def test_batched_adam_on_transformer_params_matches_torch_optim_adam():
    configs = [TransformerConfig(S=3, R=3, D=2, d=6, H=2, d_h=3, m=4, T=5, seed=s) for s in (0, 1)]
    lrs = [0.03, 0.005]
    Phi, Psi = (torch.stack(t) for t in zip(*(embeddings(c, F64) for c in configs)))
    ev = [eval_sequences(task_of(c), c.seed) for c in configs]
    tok, tgt = torch.stack([e[0] for e in ev]), torch.stack([e[1] for e in ev])
    params = {n: p.requires_grad_(True) for n, p in stack_transformer_params(configs, F64).items()}
    opt = BatchedAdam(params, torch.tensor(lrs, dtype=F64))
    for _ in range(15):
        L = loss(transformer_logits(params, Phi, Psi, tok), tgt).sum()
        opt.step(params, dict(zip(params, torch.autograd.grad(L, list(params.values())))), torch.ones(2, dtype=bool))
    for b in range(2):
        ref = {n: p.detach().clone().requires_grad_(True)
               for n, p in stack_transformer_params(configs[b:b + 1], F64).items()}
        topt = torch.optim.Adam(list(ref.values()), lr=lrs[b])
        for _ in range(15):
            topt.zero_grad()
            loss(transformer_logits(ref, Phi[b:b + 1], Psi[b:b + 1], tok[b:b + 1]), tgt[b:b + 1]).sum().backward()
            topt.step()
        for n in params:
            assert torch.allclose(params[n][b], ref[n][0], rtol=1e-10, atol=1e-12), n


def test_batched_run_equals_one_at_a_time_runs():
    """2 seeds × 2 learning rates: same evaluation curves, stops and final parameters as 4 single runs, with
    models that stop early (then frozen) beside ones that run to the end."""
    configs = [TransformerConfig(S=3, R=2, D=2, d=8, H=2, d_h=4, m=8, T=5, seed=s) for s in (0, 1) for _ in (0, 1)]
    lrs = [0.05, 0.001] * 2
    train = TransformerTrainConfig(batch=32, max_steps=120, eval_every=8, dtype="float64")
    batch = train_transformers(configs, lrs, train)
    assert batch.success.any() and not batch.success.all()
    E = len(batch.eval_steps)
    for b, (c, lr) in enumerate(zip(configs, lrs)):
        one = train_transformer(c, lr, train)
        e = len(one.eval_steps)
        assert one.success[0] == batch.success[b] and one.steps[0] == batch.steps[b]
        assert np.array_equal(one.eval_steps, batch.eval_steps[:e])
        assert np.allclose(one.accuracy[:, 0], batch.accuracy[:e, b]) and np.allclose(one.loss[:, 0], batch.loss[:e, b])
        assert np.all(batch.accuracy[e:, b] == batch.accuracy[e - 1, b]) or e == E  # frozen after its stop
        for n in one.params:
            assert np.allclose(one.params[n][0], batch.params[n][b], rtol=1e-9, atol=1e-11), n


@pytest.mark.parametrize("kw, match", [(dict(batch=0), "batch = 0"), (dict(eval_every=0), "eval_every"),
                                       (dict(max_steps=-1), "max_steps"), (dict(beta1=1.0), "beta1")])
def test_bad_train_config_refused(kw, match):
    with pytest.raises(ConfigError, match=match):
        TransformerTrainConfig(**kw)


def test_mixed_shapes_refused():
    with pytest.raises(ConfigError, match="different shapes"):
        train_transformers([TransformerConfig(d=8), TransformerConfig(d=6)], [0.01, 0.01])


def test_accuracy_is_over_every_copy_of_the_evaluation_set():
    """eval_size 40 on 6 facts: 7 copies (42 sequences); the run's step-0 accuracy equals the fraction right
    of a separate forward pass over eval_sequences(copies=7) with the initial parameters."""
    from dynamics.capacity_training.transformer import eval_copies
    from models.memory import correct_count

    c = TransformerConfig(S=3, R=2, D=2, d=8, H=2, d_h=4, m=4, T=5, seed=2)
    assert eval_copies(c.facts, 40) == 7 and eval_copies(c.facts, 1) == 1 and eval_copies(c.facts, 6) == 1
    run = train_transformer(c, 0.01, TransformerTrainConfig(batch=8, max_steps=0, eval_size=40, dtype="float64"))
    Phi, Psi = (t[None] for t in embeddings(c, F64))
    tok, tgt = eval_sequences(task_of(c), c.seed, copies=7)
    params = stack_transformer_params([c], F64)
    right = int(correct_count(transformer_logits(params, Phi, Psi, tok[None]), tgt[None])[0])
    assert run.accuracy[0, 0] == right / 42 and run.best_accuracy[0] == right / 42
