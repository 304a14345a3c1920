"""The dmm ops' Triton implementations, registered as the kernels of one dispatch key.

Each first runs the op's C++ argument checks (torch.ops.dmm._check_*), so every backend raises
the same errors; fakes and autograd stay those of dmm_kernels/ops.py, shared by all backends.
metamamba_block_bwd keeps the device-generic composite (csrc/block/composite.cpp), which calls
the scan and mixer ops below through the dispatcher with the forward's saved activations.
"""
from __future__ import annotations

import torch

from dmm_kernels.params import BlockParams
from dmm_kernels.triton import block, mix, scan

_N_PARAMS = len(BlockParams._fields)

OPS = ("selective_scan_fwd", "selective_scan_bwd", "modal_mix_fwd", "modal_mix_bwd",
       "metamamba_block_fwd", "metamamba_step")


def _in_layout_of(result, like):
    """`result` in the layout of `like`, as the fakes give the scan's outputs (empty_like)."""
    out = torch.empty_like(like, dtype=result.dtype)
    return result if out.stride() == result.stride() else out.copy_(result)


def selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    torch.ops.dmm._check_selective_scan(u, delta, A, B, C, D, z, delta_bias)
    out, last_state = scan.scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return _in_layout_of(out, u), last_state


def selective_scan_bwd(dout, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    torch.ops.dmm._check_selective_scan(u, delta, A, B, C, D, z, delta_bias)
    if dout.shape != u.shape:
        raise RuntimeError(f"selective_scan: dout must be (batch, E, L) = {tuple(u.shape)}; "
                           f"got {tuple(dout.shape)}")
    du, ddelta, dA, dB, dC, dD, dz, ddelta_bias = scan.scan_bwd(dout, u, delta, A, B, C, D, z,
                                                                 delta_bias, delta_softplus)
    dz = dz if z is None else _in_layout_of(dz, z)
    return (_in_layout_of(du, u), _in_layout_of(ddelta, delta), dA, dB, dC, dD, dz,
            ddelta_bias)


def modal_mix_fwd(u, weight, bias, kind, n_modalities, phase):
    torch.ops.dmm._check_modal_mix(u, weight, bias, kind, n_modalities, phase)
    if kind == "line":
        return mix.line_fwd(u, weight, bias, n_modalities, phase)
    return mix.conv_fwd(u, weight, bias, n_modalities, phase)


def modal_mix_bwd(dy, u, weight, bias, kind, n_modalities, phase):
    torch.ops.dmm._check_modal_mix(u, weight, bias, kind, n_modalities, phase)
    d_out = weight.shape[1] if kind == "line" else u.shape[2]
    if tuple(dy.shape) != (*u.shape[:2], d_out):
        raise RuntimeError(f"modal_mix: dy must be (batch, L, D_out) = {(*u.shape[:2], d_out)}; "
                           f"got {tuple(dy.shape)}")
    if kind == "line":
        return mix.line_bwd(dy, u, weight, bias, n_modalities, phase)
    return mix.conv_bwd(dy, u, weight, bias, n_modalities, phase)


def metamamba_block_fwd(h, *args):
    params = BlockParams(*args[:_N_PARAMS])
    mixer, n_modalities, residual_ssm, eps = args[_N_PARAMS:]
    torch.ops.dmm._check_block(h, *params, mixer, n_modalities)
    out, saved = block.block_fwd(h, params, mixer, n_modalities, residual_ssm, eps)
    return (out, *saved)


def metamamba_step(h_t, mixer1_cache, mixer2_cache, ssm_state, *args):
    params = BlockParams(*args[:_N_PARAMS])
    A, mixer, n_modalities, residual_ssm, eps, position = args[_N_PARAMS:]
    torch.ops.dmm._check_step(h_t, mixer1_cache, mixer2_cache, ssm_state, *params, A, mixer,
                              n_modalities, position)
    return block.step(h_t, mixer1_cache, mixer2_cache, ssm_state, params, A, mixer, n_modalities,
                      residual_ssm, eps, position)


def register(lib: torch.library.Library, dispatch_key: str) -> None:
    """Make these functions the dmm ops' kernels for `dispatch_key` ("CUDA", or "CPU" under
    TRITON_INTERPRET=1), in place of any compiled kernel registered there."""
    for name in OPS:
        lib.impl(name, globals()[name], dispatch_key)
