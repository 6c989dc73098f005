"""TrainConfig's memory estimate for the transformer counts its activations: per sequence of the batch it lies
between the bytes autograd saves for the backward pass of one step (measured with saved_tensors_hooks on the
module itself) and four times that (the saved tensors and their gradients are about twice), for attention-only
and MLP shapes; an absurd shape is refused before anything is allocated, naming the flags to reduce."""
import pytest
import torch

from common.errors import ConfigError
from dynamics.training import TrainConfig
from models.sampler import TaskSampler
from models.task import TaskConfig, make_task
from models.transformer import TransformerModule


def saved_bytes(task, d, H, d_h, m, n):
    """Distinct tensors autograd keeps for the backward of one batch's loss."""
    mod = TransformerModule(make_task(task), d, H, d_h, m)
    b = TaskSampler(make_task(task), "cpu", seed=0).sample(n)
    seen, total = set(), [0]

    def pack(x):
        if x.data_ptr() not in seen:
            seen.add(x.data_ptr())
            total[0] += x.numel() * x.element_size()
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        torch.nn.functional.cross_entropy(mod(b.tokens), b.targets)
    return total[0]


@pytest.mark.parametrize("H,d_h,m,T", [(1, 16, 0, 32), (4, 32, 64, 32), (2, 8, 256, 8)])
def test_the_estimate_grows_with_the_activations_autograd_keeps(H, d_h, m, T):
    task, n, d = TaskConfig(T=T), 256, 64

    def device_bytes(batch):
        return TrainConfig(task=task, model="transformer", optimizer="adam", batch=batch, d=d, H=H, d_h=d_h, m=m,
                           device="cpu").memory_estimate_bytes()["device"]

    per_batch = device_bytes(2 * n) - device_bytes(n)  # the estimate's part that scales with the batch
    saved = saved_bytes(task, d, H, d_h, m, n)
    assert saved <= per_batch <= 4 * saved


def test_an_absurd_shape_is_refused_before_allocating():
    c = TrainConfig(model="transformer", optimizer="adam", H=100_000, d_h=100_000, device="cpu")
    with pytest.raises(ConfigError, match="H = 100000, d_h = 100000.*--H, --d-h or --m"):
        c.check_memory()
