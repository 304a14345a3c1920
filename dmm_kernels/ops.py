"""Public, autograd-aware functions over torch.ops.dmm.*, with fake kernels for torch.compile.

Every function falls back to dmm_kernels.reference when the compiled ops are not in use.
"""
from __future__ import annotations

import weakref

import torch

from dmm_kernels import _extension, mixers, reference
from dmm_kernels.params import SCAN_PARAMS, BlockParams


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
_N_PARAMS = len(BlockParams._fields)
# Per parameter set: its casts to an autocast dtype and the step's A = -exp(A_log), made once per
# parameter version (an optimizer step or any in-place change bumps the version and makes them
# again), not on every call: one cast per parameter per training step, none per evaluation call.
_derived_cache: dict = {}


def _derived(tag, tensors: tuple, make):
    """make() for `tensors` (a tuple of tensors / None), reused while they are the same tensors at
    the same versions and grad mode is the same; not cached while torch.compile traces."""
    if torch.compiler.is_compiling():
        return make()
    present = [t for t in tensors if t is not None]
    key = (tag, tuple(id(t) for t in present))
    stamp = (tuple(t._version for t in present), torch.is_grad_enabled())
    hit = _derived_cache.get(key)
    if hit is not None and hit[1] == stamp and all(r() is t for r, t in zip(hit[0], present)):
        return hit[2]
    value = make()
    _derived_cache[key] = ([weakref.ref(t) for t in present], stamp, value)
    if len(_derived_cache) > 256:  # parameter sets that are gone: drop the oldest entries
        for stale in list(_derived_cache)[:128]:
            del _derived_cache[stale]
    return value


def _autocast_params(params: BlockParams, dtype: torch.dtype) -> BlockParams:
    """The matrices in the autocast dtype (the scan parameters stay fp32); differentiable."""
    matrices = [k for k in BlockParams._fields if k not in SCAN_PARAMS]
    return _derived(("autocast", dtype), tuple(params),
                    lambda: params.map(lambda v: v.to(dtype), matrices))


def _scan_A(A_log: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A = -exp(A_log) (E, N) in the state dtype of activations `dtype` (the step's input)."""
    state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    with torch.no_grad():
        return _derived(("A", state_dtype), (A_log,),
                        lambda: A_log.to(state_dtype).exp().neg_())


def _autocast_dtype(h: torch.Tensor) -> torch.dtype | None:
    device_type = h.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def metamamba_block(h, params, mixer="conv", n_modalities=3, residual_ssm=False, eps=1e-5):
    """One MetaMamba block. h: (batch, L, D) -> (batch, L, D).

    params: a BlockParams (or a mapping with its field names; mixer1_bias, mixer2_* may be None).
    mixer: "conv" | "line" | "double-conv" | "double-line" | "dense" (= "line", one modality).
    The block adds the residual h1 around the SSM when residual_ssm or for the double mixers.
    """
    params = BlockParams.of(params)
    mixer, n_modalities = mixers.canonical(mixer, n_modalities)
    if not _extension.uses_ops(h.device):
        return reference.metamamba_block_ref(h, params, mixer, n_modalities, residual_ssm, eps)
    compute_dtype = _autocast_dtype(h)
    if compute_dtype is not None:
        h = h.to(compute_dtype)
        params = _autocast_params(params, compute_dtype)
    with torch.autocast(h.device.type, enabled=False):
        return torch.ops.dmm.metamamba_block_fwd(h, *params, mixer, n_modalities, residual_ssm,
                                                 eps)[0]


def _block_setup(ctx, inputs, output):
    h, params, ctx.config = inputs[0], inputs[1:1 + _N_PARAMS], inputs[1 + _N_PARAMS:]
    saved = output[1:]  # the activations the backward op reads (csrc/block/params.h)
    ctx.mark_non_differentiable(*saved)
    ctx.set_materialize_grads(False)  # no zero-filled gradients (launches) for the 7 saved outputs
    ctx.save_for_backward(h, *params, *saved)


def _block_backward(ctx, dout, *_):
    h, *rest = ctx.saved_tensors
    params = rest[:_N_PARAMS]
    grads = torch.ops.dmm.metamamba_block_bwd(_zeros_if_none(dout, h), h, *rest, *ctx.config)
    return (grads[0], *(_none_if_absent(g, p) for g, p in zip(grads[1:], params)),
            *(None,) * len(ctx.config))


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
    Stepping a whole sequence from a zero cache equals metamamba_block on it. With the compiled
    ops the call makes no host sync and allocates only its output, so the steps of all layers
    can be captured in one CUDA graph (A = -exp(A_log) is made once per parameter version).
    """
    params = BlockParams.of(params)
    mixer, n_modalities = mixers.canonical(mixer, n_modalities)
    if not _extension.uses_ops(h_t.device):
        out, new_cache = reference.metamamba_step_ref(h_t, cache, params, mixer, n_modalities,
                                                      residual_ssm, eps, position)
        for key, value in new_cache.items():
            if value is not None:
                cache[key].copy_(value)
        return out
    return torch.ops.dmm.metamamba_step(
        h_t, cache["mixer1_cache"], cache.get("mixer2_cache"), cache["ssm_state"], *params,
        _scan_A(params.A_log, h_t.dtype), mixer, n_modalities, residual_ssm, eps, position)


def _steps_lists(caches, params, dtype):
    """metamamba_steps' list arguments: the caches', every parameter's (one entry per layer) and
    each layer's A = -exp(A_log) (made once per parameter version)."""
    mixer1 = [c["mixer1_cache"] for c in caches]
    mixer2 = [c["mixer2_cache"] for c in caches if c.get("mixer2_cache") is not None]
    states = [c["ssm_state"] for c in caches]
    per_param = [list(column) for column in zip(*params)]                # 15 lists of n_layers
    return (mixer1, mixer2, states, *per_param, [_scan_A(p.A_log, dtype) for p in params])


def metamamba_steps_fn(caches, params, mixer="conv", n_modalities=3, residual_ssm=False,
                       eps=1e-5, dtype=torch.float32):
    """metamamba_steps for fixed caches and parameters, its arguments assembled once: returns
    step(h_t, position) -> (batch, D) for h_t of `dtype`. The parameters are read at each call
    (in-place changes are seen), but A = -exp(A_log) is made here: build a new one after A_log
    changes. For a loop over tokens, where assembling the arguments costs more than the op."""
    params = [BlockParams.of(p) for p in params]
    if len(caches) != len(params) or not params:
        raise ValueError(f"metamamba_steps: need one cache per layer and at least one layer; got "
                         f"{len(caches)} caches for {len(params)} parameter sets")
    mixer, n_modalities = mixers.canonical(mixer, n_modalities)
    device = caches[0]["ssm_state"].device
    if not _extension.uses_ops(device):
        def step(h_t, position):
            for cache, p in zip(caches, params):
                h_t = metamamba_step(h_t, cache, p, mixer, n_modalities, residual_ssm, eps,
                                     position)
            return h_t
        return step
    lists = _steps_lists(caches, params, dtype)
    op = torch.ops.dmm.metamamba_steps.default
    return lambda h_t, position: op(h_t, *lists, mixer, n_modalities, residual_ssm, eps, position)


def metamamba_steps(h_t, caches, params, mixer="conv", n_modalities=3, residual_ssm=False,
                    eps=1e-5, position=0):
    """One token through a stack of blocks (a model's layers, in order), in one call.

    caches[l] (from allocate_step_cache) and params[l] (a BlockParams or a mapping) are layer l's;
    all layers share mixer, n_modalities, residual_ssm and eps; h_t: (batch, D) is token number
    `position`. Every cache is updated in place; returns (batch, D). Equals metamamba_step layer
    after layer; with the compiled ops it is one torch.ops.dmm.metamamba_steps call (no Python
    between the layers; on CPU one fused kernel over all of them).
    """
    return metamamba_steps_fn(caches, params, mixer, n_modalities, residual_ssm, eps,
                              h_t.dtype)(h_t, position)


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
        return torch.empty_like(u), last_state

    @torch.library.register_fake(lib + "selective_scan_bwd")
    def _(dout, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        # du / ddelta / dz in the layout of u / delta / z, as out (mamba-ssm's empty_like)
        return (torch.empty_like(u), torch.empty_like(delta), _new(A),
                _new(B), _new(C), _new_or_absent(D, u.device),
                torch.empty(0, device=u.device) if z is None else torch.empty_like(z),
                _new_or_absent(delta_bias, u.device))

    @torch.library.register_fake(lib + "modal_mix_fwd")
    def _(u, weight, bias, kind, n_modalities, phase):
        d_out = weight.shape[-1] if kind == "conv" else weight.shape[1]
        return u.new_empty(*u.shape[:-1], d_out)

    @torch.library.register_fake(lib + "modal_mix_bwd")
    def _(dy, u, weight, bias, kind, n_modalities, phase):
        return _new(u), _new(weight), _new_or_absent(bias, u.device)

    @torch.library.register_fake(lib + "metamamba_block_fwd")
    def _(h, *args):
        p = BlockParams(*args[:_N_PARAMS])
        mixer = args[_N_PARAMS]
        batch, L, _ = h.shape
        (E, N), R = p.A_log.shape, p.dt_proj_weight.shape[1]
        width = h.new_empty(batch, L, E)
        xm = _new(width) if mixers.parse(mixer).double else h.new_empty(0)
        return (_new(h), _new(h), _new(h), h.new_empty(batch, L, 2 * E), xm, _new(width),
                h.new_empty(batch, L, R + 2 * N), _new(width))

    @torch.library.register_fake(lib + "metamamba_block_bwd")
    def _(dout, h, *args):
        return [_new_or_absent(t, h.device) for t in (h, *args[:_N_PARAMS])]

    @torch.library.register_fake(lib + "metamamba_step")
    def _(h_t, *args):
        return _new(h_t)

    @torch.library.register_fake(lib + "metamamba_steps")
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
