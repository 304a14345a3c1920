"""Public, autograd-aware functions over torch.ops.dmm.*, with fake kernels for torch.compile.

Every function falls back to dmm_kernels.reference when the compiled ops are not in use.
"""
from __future__ import annotations

import torch

from dmm_kernels import _extension, reference

# Parameters kept in fp32 under autocast: the scan accumulates its state from them.
_FP32_PARAMS = ("A_log", "D", "dt_proj_bias")


def _none_if_absent(grad: torch.Tensor, input_: torch.Tensor | None) -> torch.Tensor | None:
    return None if input_ is None else grad


def _zeros_if_none(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if grad is None else grad


# ---------------------------------------------------------------------------------------------
# selective_scan
# ---------------------------------------------------------------------------------------------
def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False):
    """Selective scan with mamba-ssm's `selective_scan_fn` signature and semantics.

    u, delta, z: (batch, E, L); A: (E, N) real, fp32; B, C: each constant (E, N),
    (batch, N, L) or (batch, G, N, L); D, delta_bias: (E,) fp32. Returns out (batch, E, L) in
    u's dtype, and with return_last_state also the final state (batch, E, N) in fp32 (not
    differentiable). Complex A / B / C (mamba-ssm's complex mode) raise a ValueError.

    The compiled kernels take B and C in the (batch, N, L) / (batch, G, N, L) layouts; a
    constant B or C reaches them as B and C both expanded to one row per channel
    (batch, E, N, L), and autograd sums the expanded gradient back to (E, N).
    """
    reference.check_real(A, B, C)
    if not _extension.uses_ops(u.device):
        return reference.selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                            return_last_state)
    if B.dim() == 2 or C.dim() == 2:
        batch, _, L = u.shape
        B = reference.bc_per_channel(B, "B", A, batch, L)            # (batch, E, N, L)
        C = reference.bc_per_channel(C, "C", A, batch, L)            # (batch, E, N, L)
    out, last_state = torch.ops.dmm.selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias,
                                                      delta_softplus)
    return (out, last_state) if return_last_state else out


def _selective_scan_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:8])
    ctx.delta_softplus = inputs[8]


def _selective_scan_backward(ctx, dout, _dlast_state):
    u, delta, A, B, C, D, z, delta_bias = ctx.saved_tensors
    dout = _zeros_if_none(dout, u)
    du, ddelta, dA, dB, dC, dD, dz, ddelta_bias = torch.ops.dmm.selective_scan_bwd(
        dout, u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus)
    return (du, ddelta, dA, dB, dC, _none_if_absent(dD, D), _none_if_absent(dz, z),
            _none_if_absent(ddelta_bias, delta_bias), None)


# ---------------------------------------------------------------------------------------------
# modal_mix
# ---------------------------------------------------------------------------------------------
def modal_mix(u, weight, bias=None, kind="conv", n_modalities=3, phase=0):
    """Causal multi-modal token mixer (docs/ARCHITECTURE.md, "The modal mixer"). u: (batch, L, D).

    Token i has modality (phase + i) % n_modalities and mixes the window u[i-W+1 .. i]
    (zeros before the start). kind "conv": weight (M, W, D), bias (M, D), depthwise;
    kind "line": weight (M, D_out, W*D) (column k*D + d, k = 0 oldest), bias (M, D_out).
    Returns (batch, L, D_out) in u's dtype.
    """
    if not _extension.uses_ops(u.device):
        return reference.modal_mix_ref(u, weight, bias, kind, n_modalities, phase)
    return torch.ops.dmm.modal_mix_fwd(u, weight, bias, kind, n_modalities, phase)


def _modal_mix_setup(ctx, inputs, output):
    u, weight, bias, ctx.kind, ctx.n_modalities, ctx.phase = inputs
    ctx.save_for_backward(u, weight, bias)


def _modal_mix_backward(ctx, dy):
    u, weight, bias = ctx.saved_tensors
    du, dweight, dbias = torch.ops.dmm.modal_mix_bwd(dy, u, weight, bias, ctx.kind,
                                                     ctx.n_modalities, ctx.phase)
    return du, dweight, _none_if_absent(dbias, bias), None, None, None


# ---------------------------------------------------------------------------------------------
# metamamba_block / metamamba_step
# ---------------------------------------------------------------------------------------------
def _param_list(params: dict, compute_dtype: torch.dtype | None) -> list:
    """Op-ordered parameter list; under autocast the matrices go to the autocast dtype."""
    missing = [k for k in reference.PARAM_NAMES
               if params.get(k) is None and k not in ("mixer1_bias", "mixer2_weight", "mixer2_bias")]
    if missing:
        raise ValueError(f"params is missing {missing}; expected keys {reference.PARAM_NAMES}")
    values = [params.get(k) for k in reference.PARAM_NAMES]
    if compute_dtype is None:
        return values
    return [v if v is None or k in _FP32_PARAMS else v.to(compute_dtype)
            for k, v in zip(reference.PARAM_NAMES, values)]


def _autocast_dtype(h: torch.Tensor) -> torch.dtype | None:
    device_type = h.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def metamamba_block(h, params, mixer="conv", n_modalities=3, residual_ssm=False, eps=1e-5):
    """One MetaMamba block. h: (batch, L, D) -> (batch, L, D).

    params: dict with the keys of reference.PARAM_NAMES (mixer1_bias, mixer2_* may be None).
    mixer: "conv" | "line" | "double-conv" | "double-line" | "dense" (= "line", one modality).
    The block adds the residual h1 around the SSM when residual_ssm or for the double mixers.
    """
    mixer, n_modalities = reference.canonical_mixer(mixer, n_modalities)
    if not _extension.uses_ops(h.device):
        return reference.metamamba_block_ref(h, params, mixer, n_modalities, residual_ssm, eps)
    compute_dtype = _autocast_dtype(h)
    if compute_dtype is not None:
        h = h.to(compute_dtype)
    with torch.autocast(h.device.type, enabled=False):
        return torch.ops.dmm.metamamba_block_fwd(h, *_param_list(params, compute_dtype), mixer,
                                                 n_modalities, residual_ssm, eps)


def _block_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:16])
    ctx.config = inputs[16:]


def _block_backward(ctx, dout):
    inputs = ctx.saved_tensors
    grads = torch.ops.dmm.metamamba_block_bwd(dout, *inputs, *ctx.config)
    return tuple(_none_if_absent(g, x) for g, x in zip(grads, inputs)) + (None,) * len(ctx.config)


def metamamba_prefill(h, params, mixer="conv", n_modalities=3, residual_ssm=False, eps=1e-5):
    """The block over a whole prompt h (batch, L, D), returning (out (batch, L, D), cache): the
    step cache after token L-1 (allocate_step_cache's layout), from which metamamba_step
    continues at position L. Parallel over the prompt: the ops modal_mix and selective_scan
    (return_last_state) composed, not L steps. Inference only (use metamamba_block to train)."""
    with torch.no_grad():
        return reference.block_composite(h, params, mixer, n_modalities, residual_ssm, eps,
                                         mix=modal_mix, scan=selective_scan)


def allocate_step_cache(batch, params, mixer="conv", dtype=torch.float32, device="cpu"):
    """Zero inference cache for metamamba_step: mixer windows and the fp32 SSM state."""
    return reference.allocate_step_cache_ref(batch, params, mixer, dtype, device)


def metamamba_step(h_t, cache, params, mixer="conv", n_modalities=3, residual_ssm=False,
                   eps=1e-5, position=0):
    """One token through the block, updating `cache` (from allocate_step_cache) in place.

    h_t: (batch, D) is token number `position` of the sequence; returns (batch, D).
    Stepping a whole sequence from a zero cache equals metamamba_block on it.
    """
    mixer, n_modalities = reference.canonical_mixer(mixer, n_modalities)
    if not _extension.uses_ops(h_t.device):
        out, new_cache = reference.metamamba_step_ref(h_t, cache, params, mixer, n_modalities,
                                                      residual_ssm, eps, position)
        for key, value in new_cache.items():
            if value is not None:
                cache[key].copy_(value)
        return out
    return torch.ops.dmm.metamamba_step(
        h_t, cache["mixer1_cache"], cache.get("mixer2_cache"), cache["ssm_state"],
        *_param_list(params, None), mixer, n_modalities, residual_ssm, eps, position)


# ---------------------------------------------------------------------------------------------
# Registration: fakes (shape propagation for torch.compile / meta) and autograd.
# ---------------------------------------------------------------------------------------------
def _new(t):
    """The kernels return contiguous tensors whatever the input strides."""
    return t.new_empty(t.shape)


def _new_or_absent(t, device):
    """Backward ops return a numel-0 gradient for an absent optional input."""
    return torch.empty(0, device=device) if t is None else _new(t)


def _register():
    lib = "dmm::"

    @torch.library.register_fake(lib + "selective_scan_fwd")
    def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        batch, E, _ = u.shape
        # Float64 if any input is float64 (the kernels compute in it), else float32.
        tensors = (u, delta, A, B, C, D, z, delta_bias)
        state_dtype = torch.float64 if any(t is not None and t.dtype == torch.float64
                                           for t in tensors) else torch.float32
        last_state = u.new_empty(batch, E, A.shape[1], dtype=state_dtype)
        return _new(u), last_state

    @torch.library.register_fake(lib + "selective_scan_bwd")
    def _(dout, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        return (_new(u), _new(delta), _new(A),
                _new(B), _new(C), _new_or_absent(D, u.device),
                _new_or_absent(z, u.device), _new_or_absent(delta_bias, u.device))

    @torch.library.register_fake(lib + "modal_mix_fwd")
    def _(u, weight, bias, kind, n_modalities, phase):
        d_out = weight.shape[-1] if kind == "conv" else weight.shape[1]
        return u.new_empty(*u.shape[:-1], d_out)

    @torch.library.register_fake(lib + "modal_mix_bwd")
    def _(dy, u, weight, bias, kind, n_modalities, phase):
        return _new(u), _new(weight), _new_or_absent(bias, u.device)

    @torch.library.register_fake(lib + "metamamba_block_fwd")
    def _(h, *args):
        return _new(h)

    @torch.library.register_fake(lib + "metamamba_block_bwd")
    def _(dout, h, *args):
        return tuple(_new_or_absent(t, h.device) for t in (h, *args[:15]))

    @torch.library.register_fake(lib + "metamamba_step")
    def _(h_t, *args):
        return _new(h_t)

    torch.library.register_autograd(lib + "selective_scan_fwd", _selective_scan_backward,
                                    setup_context=_selective_scan_setup)
    torch.library.register_autograd(lib + "modal_mix_fwd", _modal_mix_backward,
                                    setup_context=_modal_mix_setup)
    torch.library.register_autograd(lib + "metamamba_block_fwd", _block_backward,
                                    setup_context=_block_setup)


if _extension.EXTENSION_LOADED:
    _register()
