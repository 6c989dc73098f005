"""The trainers' tests run torch on one thread: small matrices are fastest there, and runs compared bit for
bit must not depend on the machine's thread count."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
