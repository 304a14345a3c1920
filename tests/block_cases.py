"""Shared by the block and step tests: devices, mixers and random float64 block cases."""
import pytest
import torch

from dmm_kernels import mixers, reference

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))]
MIXERS = list(mixers.MIXERS)  # every name the block ops accept
EPS = 1e-5


def make_case(mixer, n_modalities=3, batch=2, length=7, d_model=8, d_state=4, window=3,
              dtype=torch.float64, device="cpu", seed=0):
    """Random block parameters and an input h (batch, length, d_model)."""
    gen = torch.Generator().manual_seed(seed)
    params = reference.make_block_params(d_model, mixer, d_state=d_state, window=window,
                                         n_modalities=n_modalities, dtype=dtype, device=device,
                                         generator=gen)
    h = torch.randn(batch, length, d_model, generator=gen, dtype=torch.float64).to(device, dtype)
    return h, params
