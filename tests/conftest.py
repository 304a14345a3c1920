import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny models: OpenMP threading only adds overhead (and thrashes on a shared machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
