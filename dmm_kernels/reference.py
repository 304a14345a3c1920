"""Pure-PyTorch reference of every dmm op: the source of truth for all tests.

Written for clarity, not speed: explicit loops over time, fp32 (or fp64 for fp64 inputs)
math, results cast back to the input dtype. Shapes follow mamba-ssm and docs/ARCHITECTURE.md, "The MetaMamba block".
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dmm_kernels import mixers
from dmm_kernels.mixers import window_of
from dmm_kernels.params import BlockParams


def _compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """float64 if any input is float64, else float32."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def _up(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if t is None else t.to(dtype)


def check_real(A, B, C) -> None:
    """mamba-ssm's complex mode (complex A, and B / C with 2L or complex entries) is not
    implemented by any backend: reject it by name rather than compute something else."""
    for name, t in (("A", A), ("B", B), ("C", C)):
        if t.is_complex():
            raise ValueError(f"selective_scan: {name} is complex ({t.dtype}); only real A, B and C "
                             "are supported (mamba-ssm's complex mode is not implemented). "
                             "Pass a real A, e.g. -torch.exp(A_log)")


def bc_per_channel(X, name, A, batch, L):
    """B or C in any of mamba-ssm's layouts -> one row per channel, (batch, E, N, L).

    Layouts: constant (E, N) (A's shape), (batch, N, L) shared by all channels, or grouped
    (batch, G, N, L) with G dividing E. The result may be an expanded view (stride 0)."""
    E, N = A.shape
    if X.dim() == 2:
        if tuple(X.shape) != (E, N):
            raise ValueError(f"selective_scan: a constant {name} must be (E, N) = {(E, N)} like A; "
                             f"got {tuple(X.shape)}")
        return X[None, :, :, None].expand(batch, E, N, L)
    grouped = X.dim() == 4
    G = X.shape[1] if grouped else 1
    expected = (batch, G, N, L) if grouped else (batch, N, L)
    if X.dim() not in (3, 4) or tuple(X.shape) != expected:
        raise ValueError(f"selective_scan: {name} must be (E, N) constant, (batch, N, L) or "
                         f"(batch, G, N, L) = {expected}; got {tuple(X.shape)}")
    if G < 1 or E % G:
        raise ValueError(f"selective_scan: {name}'s group count G = {G} must divide E = {E}")
    X = X if grouped else X[:, None]
    return X.expand(batch, E, N, L) if G == 1 else X.repeat_interleave(E // G, dim=1)


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False):
    """mamba-ssm's selective_scan_fn, real A.

    u, delta, z: (batch, E, L); A: (E, N); B, C: each constant (E, N), (batch, N, L) or
    (batch, G, N, L); D, delta_bias: (E,). Returns out (batch, E, L) in u's dtype
    [, last_state (batch, E, N)].
    """
    check_real(A, B, C)
    out_dtype = u.dtype
    ct = _compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    u, delta, A, B, C = (t.to(ct) for t in (u, delta, A, B, C))
    D, z, delta_bias = _up(D, ct), _up(z, ct), _up(delta_bias, ct)
    batch, E, L = u.shape
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    B = bc_per_channel(B, "B", A, batch, L)                          # (batch, E, N, L)
    C = bc_per_channel(C, "C", A, batch, L)                          # (batch, E, N, L)
    decay = torch.exp(delta[:, :, None, :] * A[None, :, :, None])  # (batch, E, N, L)
    drive = delta[:, :, None, :] * B * u[:, :, None, :]             # (batch, E, N, L)
    state = u.new_zeros(batch, E, A.shape[1])                        # (batch, E, N)
    ys = []
    for t in range(L):
        state = decay[..., t] * state + drive[..., t]
        ys.append((state * C[..., t]).sum(-1))                       # (batch, E)
    y = torch.stack(ys, dim=-1) if L > 0 else u.new_zeros(batch, E, 0)
    if D is not None:
        y = y + D[:, None] * u
    if z is not None:
        y = y * F.silu(z)
    out = y.to(out_dtype)
    return (out, state.to(ct if ct == torch.float64 else torch.float32)) if return_last_state else out


def modal_mix_ref(u, weight, bias=None, kind="conv", n_modalities=3, phase=0):
    """Causal per-modality token mixer. u: (batch, L, D) -> (batch, L, D_out).

    Token i has modality m = (phase + i) % n_modalities and sees u_{i-W+1..i} (zeros before 0).
    conv: weight (M, W, D), bias (M, D): y_i = b_m + sum_k w_m[k] * u_{i-W+1+k}.
    line: weight (M, D_out, W*D), bias (M, D_out): y_i = b_m + M_m @ [u_{i-W+1}; ...; u_i].
    """
    out_dtype = u.dtype
    ct = _compute_dtype(u, weight, bias)
    u, weight, bias = u.to(ct), weight.to(ct), _up(bias, ct)
    batch, L, D = u.shape
    W = weight.shape[1] if kind == "conv" else weight.shape[2] // D
    padded = F.pad(u, (0, 0, W - 1, 0))                                   # (batch, L+W-1, D)
    windows = padded.unfold(1, W, 1).transpose(2, 3)                      # (batch, L, W, D)
    modality = (torch.arange(L, device=u.device) + phase) % n_modalities  # (L,)
    if kind == "conv":
        y = (windows * weight[modality][None]).sum(2)                     # (batch, L, D)
    elif kind == "line":
        cols = windows.reshape(batch, L, W * D)                           # (batch, L, W*D)
        y = torch.einsum("lok,blk->blo", weight[modality], cols)          # (batch, L, D_out)
    else:
        raise ValueError(f"modal_mix: kind must be 'conv' or 'line'; got {kind!r}")
    if bias is not None:
        y = y + bias[modality][None]
    return y.to(out_dtype)


def _ssm_inputs(x, p):
    """x: (batch, L, E) after SiLU -> delta (pre-softplus, no bias), Bc, Cc (batch, L, ...)."""
    R = p.dt_proj_weight.shape[1]
    N = p.A_log.shape[1]
    x_dbl = x @ p.x_proj_weight.T                                         # (batch, L, R+2N)
    dt_low, Bc, Cc = x_dbl.split([R, N, N], dim=-1)
    delta = dt_low @ p.dt_proj_weight.T                                   # (batch, L, E)
    return delta, Bc, Cc


def _last_inputs(x, window):
    """A mixer's step cache after the sequence x (batch, L, D): its last W-1 inputs, oldest
    first, zeros before token 0 -> (batch, W-1, D)."""
    padded = F.pad(x, (0, 0, window - 1, 0))
    return padded[:, padded.shape[1] - (window - 1):]


def block_composite(h, params, mixer="conv", n_modalities=3, residual_ssm=False, eps=1e-5,
                    mix=modal_mix_ref, scan=selective_scan_ref):
    """The block (docs/ARCHITECTURE.md, "The MetaMamba block") composed from a mixer op and a scan op (by default the
    reference's own; dmm_kernels.metamamba_prefill passes the compiled ones).

    h: (batch, L, D). Returns (out (batch, L, D), cache): the cache after the sequence, in
    allocate_step_cache_ref's layout, from which metamamba_step continues at token L."""
    _, kind, double, n_modalities = mixers.parse(mixer, n_modalities)
    out_dtype = h.dtype
    params = BlockParams.of(params)
    ct = _compute_dtype(h, *params)
    p = params.map(lambda v: v.to(ct))
    h = h.to(ct)
    D_model = h.shape[-1]
    E = p.A_log.shape[0]
    u = F.layer_norm(h, (D_model,), p.norm1_weight, p.norm1_bias, eps)
    h1 = h + mix(u, p.mixer1_weight, p.mixer1_bias, kind, n_modalities)
    v = F.layer_norm(h1, (D_model,), p.norm2_weight, p.norm2_bias, eps)
    x_in, z = (v @ p.in_proj_weight.T).split([E, E], dim=-1)             # (batch, L, E) each
    x = x_in
    if double:
        x = mix(x, p.mixer2_weight, p.mixer2_bias, kind, n_modalities)
    x = F.silu(x)
    delta, Bc, Cc = _ssm_inputs(x, p)
    y, last_state = scan(
        x.transpose(1, 2), delta.transpose(1, 2), -torch.exp(p.A_log),
        Bc.transpose(1, 2), Cc.transpose(1, 2), p.D, z.transpose(1, 2),
        p.dt_proj_bias, delta_softplus=True, return_last_state=True,
    )
    out = y.transpose(1, 2) @ p.out_proj_weight.T                        # (batch, L, D)
    if residual_ssm or double:
        out = out + h1
    W = window_of(p.mixer1_weight, kind, D_model)
    cache = {
        "mixer1_cache": _last_inputs(u, W).to(out_dtype),                 # (batch, W-1, D)
        "mixer2_cache": _last_inputs(x_in, W).to(out_dtype) if double else None,  # (batch, W-1, E)
        "ssm_state": last_state.to(torch.float64 if out_dtype == torch.float64 else torch.float32),
    }
    return out.to(out_dtype), cache


def metamamba_block_ref(h, params, mixer="conv", n_modalities=3, residual_ssm=False, eps=1e-5):
    """One MetaMamba block (docs/ARCHITECTURE.md, "The MetaMamba block"). h: (batch, L, D) -> (batch, L, D)."""
    return block_composite(h, params, mixer, n_modalities, residual_ssm, eps)[0]


def allocate_step_cache_ref(batch, params, mixer="conv", dtype=torch.float32, device="cpu"):
    """Zero cache for metamamba_step: the last W-1 mixer inputs and the SSM state (fp32)."""
    _, kind, double, _ = mixers.parse(mixer)
    params = BlockParams.of(params)
    D_model = params.norm1_weight.shape[0]
    E, N = params.A_log.shape
    W = window_of(params.mixer1_weight, kind, D_model)
    state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    return {
        "mixer1_cache": torch.zeros(batch, W - 1, D_model, dtype=dtype, device=device),
        "mixer2_cache": torch.zeros(batch, W - 1, E, dtype=dtype, device=device) if double else None,
        "ssm_state": torch.zeros(batch, E, N, dtype=state_dtype, device=device),
    }


def _mix_step(cache, u_t, weight, bias, kind, modality):
    """One token through a mixer from its cache. cache (batch, W-1, D), u_t (batch, D)."""
    window = torch.cat([cache, u_t[:, None]], dim=1)                      # (batch, W, D)
    if kind == "conv":
        y = (window * weight[modality][None]).sum(1)                      # (batch, D)
    else:
        y = window.flatten(1) @ weight[modality].T                        # (batch, D_out)
    if bias is not None:
        y = y + bias[modality]
    return y, window[:, 1:]


def metamamba_step_ref(h_t, cache, params, mixer="conv", n_modalities=3, residual_ssm=False,
                       eps=1e-5, position=0):
    """One token through the block. h_t: (batch, D). Returns (out_t, new_cache); pure."""
    _, kind, double, n_modalities = mixers.parse(mixer, n_modalities)
    out_dtype = h_t.dtype
    params = BlockParams.of(params)
    ct = _compute_dtype(h_t, *params)
    p = params.map(lambda v: v.to(ct))
    h_t = h_t.to(ct)
    D_model = h_t.shape[-1]
    E, N = p.A_log.shape
    m = position % n_modalities
    u = F.layer_norm(h_t, (D_model,), p.norm1_weight, p.norm1_bias, eps)
    mixed, mixer1_cache = _mix_step(cache["mixer1_cache"].to(ct), u, p.mixer1_weight,
                                    p.mixer1_bias, kind, m)
    h1 = h_t + mixed
    v = F.layer_norm(h1, (D_model,), p.norm2_weight, p.norm2_bias, eps)
    x, z = (v @ p.in_proj_weight.T).split([E, E], dim=-1)                 # (batch, E) each
    mixer2_cache = None
    if double:
        x, mixer2_cache = _mix_step(cache["mixer2_cache"].to(ct), x, p.mixer2_weight,
                                    p.mixer2_bias, kind, m)
    x = F.silu(x)
    delta, Bc, Cc = _ssm_inputs(x, p)                                     # (batch, E), (batch, N)
    delta = F.softplus(delta + p.dt_proj_bias)
    A = -torch.exp(p.A_log)                                               # (E, N)
    state = cache["ssm_state"].to(ct)
    state = torch.exp(delta[..., None] * A) * state + (delta * x)[..., None] * Bc[:, None]
    y = (state * Cc[:, None]).sum(-1) + p.D * x                           # (batch, E)
    out = (y * F.silu(z)) @ p.out_proj_weight.T
    if residual_ssm or double:
        out = out + h1
    new_cache = {
        "mixer1_cache": mixer1_cache.to(cache["mixer1_cache"].dtype),
        "mixer2_cache": None if mixer2_cache is None else mixer2_cache.to(cache["mixer2_cache"].dtype),
        "ssm_state": state.to(cache["ssm_state"].dtype),
    }
    return out.to(out_dtype), new_cache


def make_block_params(d_model, mixer="conv", expand=2, d_state=16, window=6, n_modalities=3,
                      dtype=torch.float32, device="cpu", generator=None):
    """Random, well-scaled block parameters for tests and benchmarks (not a training init).

    The line mixers get no bias (as in the paper); "dense" is line with one modality.
    """
    _, kind, double, n_modalities = mixers.parse(mixer, n_modalities)
    E = expand * d_model
    R = math.ceil(d_model / 16)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=generator, dtype=torch.float64) * scale).to(
            device=device, dtype=dtype)

    def mixer_weight(width):
        if kind == "conv":
            return rand(n_modalities, window, width, scale=window ** -0.5)
        return rand(n_modalities, width, window * width, scale=(window * width) ** -0.5)

    return BlockParams(
        norm1_weight=1 + rand(d_model, scale=0.1), norm1_bias=rand(d_model, scale=0.1),
        mixer1_weight=mixer_weight(d_model),
        mixer1_bias=rand(n_modalities, d_model, scale=0.1) if kind == "conv" else None,
        norm2_weight=1 + rand(d_model, scale=0.1), norm2_bias=rand(d_model, scale=0.1),
        in_proj_weight=rand(2 * E, d_model, scale=d_model ** -0.5),
        mixer2_weight=mixer_weight(E) if double else None,
        mixer2_bias=rand(n_modalities, E, scale=0.1) if double and kind == "conv" else None,
        x_proj_weight=rand(R + 2 * d_state, E, scale=E ** -0.5),
        dt_proj_weight=rand(E, R, scale=R ** -0.5),
        dt_proj_bias=rand(E, scale=0.5) - 3.0,
        A_log=torch.log(torch.arange(1, d_state + 1, dtype=torch.float64)).repeat(E, 1).to(device, dtype),
        D=1 + rand(E, scale=0.1),
        out_proj_weight=rand(d_model, E, scale=E ** -0.5),
    )
