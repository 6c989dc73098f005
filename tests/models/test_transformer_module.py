"""models.transformer.TransformerModule (the transformer as a trainer model of frd-train): its logits are those of
the capacity stack (stack_transformer_params and embeddings of a TransformerConfig with the same seed and sizes,
transformer_logits with a model axis of 2, the module's model at index 1), its gradient is the central finite
difference of its loss, and its sizes come from the Task it is given."""
import numpy as np
import pytest
import torch

from models.task import TaskConfig, make_task
from models.transformer import (TransformerConfig, TransformerModule, embeddings, stack_transformer_params,
                                task_of, transformer_logits)

F64 = torch.float64


@pytest.mark.parametrize("m", [0, 5])
def test_logits_equal_the_capacity_stack_of_the_same_seed(m):
    c = TransformerConfig(S=5, R=3, D=2, d=7, H=2, d_h=3, m=m, T=6, N=4, seed=11)
    other = TransformerConfig(S=5, R=3, D=2, d=7, H=2, d_h=3, m=m, T=6, N=4, seed=2)
    tc = task_of(c).config  # a TaskConfig of the sizes and fact table task_of(c) uses
    task = make_task(TaskConfig(S=tc.S, R=tc.R, D=tc.D, T=tc.T, N=tc.N, facts="random", seed=tc.seed))
    mod = TransformerModule(task, d=7, H=2, d_h=3, m=m, seed=11, dtype=F64)
    params = stack_transformer_params([other, c], F64)  # the module's model sits at index 1 of a stack of 2
    Phi, Psi = (torch.stack(t) for t in zip(*(embeddings(x, F64) for x in (other, c))))
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, c.vocab_size, (2, 9, c.T), generator=g)  # (B, n, T), any tokens
    ref = transformer_logits(params, Phi, Psi, tokens)[1]  # (n, |A|)
    got = mod(tokens[1])
    assert got.shape == (9, c.num_answers) and got.dtype == F64
    assert torch.allclose(got, ref, rtol=1e-12, atol=1e-12)
    assert set(dict(mod.named_parameters())) == ({"WQ", "WK", "WV", "WO"} | ({"W1", "W2"} if m else set()))
    assert mod.Phi.shape == (task.vocab_size, 7) and mod.Psi.shape == (task.num_answers, 7)


def test_sizes_come_from_the_task_not_a_transformer_config():
    """A structured task (not a TransformerConfig's random one): Phi has |V| rows, Psi |A|, and they are the first
    rows of the same sphere streams (numpy fills row by row), so the instance is nested in the vocabulary."""
    task = make_task(TaskConfig(S=4, R=2, D=2, T=5, N=3))
    big = make_task(TaskConfig(S=4, R=2, D=2, T=5, N=9))
    a = TransformerModule(task, d=6, H=1, d_h=2, seed=3, dtype=F64)
    b = TransformerModule(big, d=6, H=1, d_h=2, seed=3, dtype=F64)
    assert a.Phi.shape == (4 + 2 + 3 + 1, 6) and a.Psi.shape == (4, 6)
    assert torch.equal(a.Phi, b.Phi[: a.Phi.shape[0]]) and torch.equal(a.Psi, b.Psi)
    assert torch.allclose(a.Phi.norm(dim=1), torch.ones((), dtype=F64))
    for n, p in a.named_parameters():
        assert torch.equal(p, dict(b.named_parameters())[n])  # the init does not depend on the task's sizes


@pytest.mark.parametrize("m", [0, 3])
def test_autograd_gradient_equals_central_finite_differences(m):
    task = make_task(TaskConfig(S=3, R=2, D=2, T=4, N=2))
    mod = TransformerModule(task, d=4, H=2, d_h=2, m=m, seed=5, dtype=F64)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, task.vocab_size, (6, task.T), generator=g)
    targets = torch.randint(0, task.num_answers, (6,), generator=g)

    def loss():
        return torch.nn.functional.cross_entropy(mod(tokens), targets)

    L = loss()
    L.backward()
    h = 1e-6
    for name, p in mod.named_parameters():
        fd = np.zeros(p.shape)
        with torch.no_grad():
            for idx in np.ndindex(*p.shape):
                old = float(p[idx])
                p[idx] = old + h
                up = float(loss())
                p[idx] = old - h
                down = float(loss())
                p[idx] = old
                fd[idx] = (up - down) / (2 * h)
        assert np.abs(fd).max() > 1e-4, name  # the check is not vacuous
        assert np.allclose(p.grad.numpy(), fd, rtol=1e-6, atol=1e-8), name
