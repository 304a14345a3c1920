"""Kernel launches and GEMMs of one metamamba_block forward + backward (benchmarks/launch_count.py).

With any compiled library: what the block's backward dispatches (through a TorchDispatchMode that
also sees the aten ops the C++ block ops call) -- it runs the scan's backward once and never its
forward, no projection of the forward again, and makes no copy of an activation.
With the emulated CUDA kernels (DMM_KERNELS_LIBRARY=.../libdmm_emulated.so): the launches a GPU
would make at the paper shape (B 64, L 24, D 128, E 256, N 16, W 6), our kernels counted by the
emulator and ATen ops (cuBLAS GEMMs, elementwise, reductions) by the dispatch mode, beside the
paper's unfused path (mamba-ssm's scan, PyTorch mixer, separate GEMMs) counted the same way.
"""

import pytest
import torch

import dmm_kernels
from benchmarks import launch_count
from conftest import EMULATED, TRITON_INTERPRETED
from block_cases import make_case


pytestmark = pytest.mark.skipif(not dmm_kernels.HAS_EXTENSION or TRITON_INTERPRETED,
                                reason="counts the compiled C++ / CUDA block ops")

COPIES = {"clone", "copy_", "_to_copy", "contiguous"}


def backward_ops(mixer):
    """LaunchCounter of the backward alone of a float64 block with every input requiring grad."""
    h, params = make_case(mixer, batch=2, length=7)
    h.requires_grad_()
    params = params.map(torch.Tensor.requires_grad_)
    out = dmm_kernels.metamamba_block(h, params, mixer)
    counter = launch_count.LaunchCounter()
    with counter:
        torch.autograd.grad(out, [h, *params.present().values()], torch.ones_like(out))
    return counter


@pytest.mark.parametrize("mixer", ["conv", "line", "double-conv"])
def test_backward_reruns_no_forward(mixer):
    c = backward_ops(mixer)
    assert c.dmm["metamamba_block_bwd"] == 1
    # the scan's backward: the op (composite), or a fused launch inside the CUDA block op
    assert c.dmm["selective_scan_bwd"] == (not EMULATED), dict(c.dmm)
    assert c.dmm["selective_scan_fwd"] == 0 and c.dmm["modal_mix_fwd"] == 0, dict(c.dmm)
    # mixer_1's adjoint: the modal_mix op, or, for conv on the CUDA kernels, a fused kernel
    fused_mixer1 = EMULATED and mixer.endswith("conv")
    assert c.dmm["modal_mix_bwd"] == (not fused_mixer1) + mixer.startswith("double-"), dict(c.dmm)
    top = c.under["metamamba_block_bwd"]
    assert not COPIES & set(top), dict(top)  # no activation copied (e.g. transposed for the scan)
    if not EMULATED:  # the composite's backward: 9 GEMMs, nothing else of the forward
        gemms = top["mm"] + top["addmm"] + top["bmm"]
        assert gemms == 9, dict(top)  # dW_out, dy, delta, dW_dt, ddt_low, dW_x, dxs, dW_in, dv
        assert top["native_layer_norm"] == 2 and top["native_layer_norm_backward"] == 2 * 2
    else:  # the CUDA block op: dt_proj is inside the scan kernel, so 6 GEMMs
        gemms = top["mm"] + top["addmm"] + top["bmm"]
        assert gemms == 6, dict(top)  # dW_out, dy, dW_x, dxs, dW_in, dv


@pytest.mark.skipif(not EMULATED, reason="needs the emulated kernels' library")
@pytest.mark.parametrize("mixer,expected", [("conv", 22), ("line", 57)])
def test_paper_shape_launches(mixer, expected):
    """One forward + backward at the paper shape: at most `expected` GPU launches (the figure
    today; the goal is 16), and fewer than the paper's unfused path."""
    counts = launch_count.block_counts(mixer)
    ours, paper = counts["ours"], counts["paper"]
    print(f"{mixer}: ours {ours['total']} ({ours['kernels']} kernels, {ours['aten']} ATen ops, "
          f"{ours['gemms']} GEMMs); paper {paper['total']} ({paper['gemms']} GEMMs)")
    assert ours["kernels"] > 0 and ours["gemms"] >= 9
    assert ours["total"] <= expected, ours["ops"]
    assert ours["total"] < paper["total"], (ours["ops"], paper["ops"])
