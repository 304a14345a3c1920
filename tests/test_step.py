"""metamamba_step (torch.ops.dmm.metamamba_step): token-by-token inference with in-place caches.

Stepping a sequence from a zero cache must equal metamamba_block on the whole sequence; each step
must equal reference.metamamba_step_ref, caches included; bad caches raise clear errors.
"""
import pytest
import torch
import torch.nn.functional as F

import dmm_kernels
from block_cases import DEVICES, EPS, MIXERS, make_case
from dmm_kernels import reference

requires_extension = pytest.mark.skipif(not dmm_kernels.HAS_EXTENSION,
                                        reason="compiled dmm ops not loaded")


def run_steps(h, params, mixer, n_modalities, residual_ssm, cache=None):
    """Steps every token of h (batch, L, D) through the block; returns (batch, L, D) and the cache."""
    if cache is None:
        cache = dmm_kernels.allocate_step_cache(h.shape[0], params, mixer, h.dtype, h.device)
    outs = [dmm_kernels.metamamba_step(h[:, t], cache, params, mixer, n_modalities, residual_ssm,
                                       EPS, position=t) for t in range(h.shape[1])]
    return torch.stack(outs, dim=1), cache


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("residual_ssm", [False, True])
@pytest.mark.parametrize("n_modalities", [1, 3])
@pytest.mark.parametrize("mixer", MIXERS)
@pytest.mark.parametrize("batch,length,window", [(1, 7, 3), (2, 5, 6), (2, 2, 4)])
def test_steps_equal_block_fp64(mixer, n_modalities, residual_ssm, device, batch, length, window):
    if mixer == "dense" and n_modalities != 1:
        pytest.skip("dense always has one modality")
    h, params = make_case(mixer, n_modalities, batch=batch, length=length, window=window,
                          device=device)
    stepped, cache = run_steps(h, params, mixer, n_modalities, residual_ssm)
    full = dmm_kernels.metamamba_block(h, params, mixer, n_modalities, residual_ssm, EPS)
    full_ref = reference.metamamba_block_ref(h, params, mixer, n_modalities, residual_ssm, EPS)
    torch.testing.assert_close(full, full_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(stepped, full, rtol=1e-10, atol=1e-10)
    # mixer1_cache holds the last W-1 LayerNorm_1 outputs, oldest first, zeros before token 0.
    u = F.layer_norm(h, (h.shape[-1],), params.norm1_weight, params.norm1_bias, EPS)
    expected = F.pad(u, (0, 0, window - 1, 0))[:, -(window - 1):]
    torch.testing.assert_close(cache["mixer1_cache"], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mixer", ["conv", "line", "double-conv", "double-line"])
def test_step_matches_step_reference_fp32(mixer, device):
    # fp32 activations, fp32 state: each step and every cache entry vs the functional reference.
    h, params = make_case(mixer, length=8, d_model=16, d_state=8, window=4, dtype=torch.float32,
                          device=device)
    cache = dmm_kernels.allocate_step_cache(2, params, mixer, torch.float32, device)
    assert cache["ssm_state"].dtype == torch.float32
    ref_cache = {k: None if v is None else v.clone() for k, v in cache.items()}
    ptrs = {k: v.data_ptr() for k, v in cache.items() if v is not None}
    for t in range(h.shape[1]):
        out = dmm_kernels.metamamba_step(h[:, t], cache, params, mixer, position=t)
        out_ref, ref_cache = reference.metamamba_step_ref(h[:, t], ref_cache, params, mixer,
                                                          position=t)
        torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-5)
        for key, value in cache.items():
            if value is None:
                assert ref_cache[key] is None
                continue
            assert value.data_ptr() == ptrs[key], f"{key} was not updated in place"
            torch.testing.assert_close(value, ref_cache[key], rtol=1e-5, atol=1e-5,
                                       msg=lambda m, k=key, t=t: f"{k} after step {t}: {m}")
    full = reference.metamamba_block_ref(h.double(), params.map(torch.Tensor.double), mixer)
    torch.testing.assert_close(out.double(), full[:, -1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_step_continues_from_block_prefix(device):
    # Positions carry the modality: stepping tokens 4.. after a stepped prefix 0..3 equals the
    # block's last tokens; starting at position 0 again would use the wrong filters.
    mixer = "double-conv"
    h, params = make_case(mixer, length=7, device=device)
    cache = dmm_kernels.allocate_step_cache(2, params, mixer, h.dtype, device)
    for t in range(4):
        dmm_kernels.metamamba_step(h[:, t], cache, params, mixer, position=t)
    tail = [dmm_kernels.metamamba_step(h[:, t], cache, params, mixer, position=t)
            for t in range(4, 7)]
    full = reference.metamamba_block_ref(h, params, mixer)
    torch.testing.assert_close(torch.stack(tail, 1), full[:, 4:], rtol=1e-10, atol=1e-10)


# ---- argument errors (the compiled op's messages) ------------------------------------------------
def _step_args(mixer="conv", **cache_overrides):
    h, params = make_case(mixer)
    cache = dmm_kernels.allocate_step_cache(2, params, mixer, h.dtype, "cpu")
    cache.update(cache_overrides)
    return (h[:, 0], cache["mixer1_cache"], cache["mixer2_cache"], cache["ssm_state"], *params,
            -torch.exp(params.A_log), mixer, 3, False, EPS, 0)


@requires_extension
def test_error_ssm_state_dtype():
    args = _step_args(ssm_state=torch.zeros(2, 16, 4, dtype=torch.bfloat16))
    with pytest.raises(RuntimeError, match=r"ssm_state must be float32; got BFloat16"):
        torch.ops.dmm.metamamba_step(*args)


@requires_extension
def test_error_ssm_state_shape():
    args = _step_args(ssm_state=torch.zeros(2, 4, 16, dtype=torch.float32))
    with pytest.raises(RuntimeError, match=r"ssm_state must be \(B, E, N\) = \(2, 16, 4\); "
                                           r"got \(2, 4, 16\)"):
        torch.ops.dmm.metamamba_step(*args)


@requires_extension
def test_error_mixer1_cache_shape():
    args = _step_args(mixer1_cache=torch.zeros(2, 3, 8, dtype=torch.float64))
    with pytest.raises(RuntimeError, match=r"mixer1_cache must be \(B, W-1, D\) = \(2, 2, 8\)"):
        torch.ops.dmm.metamamba_step(*args)


@requires_extension
def test_error_mixer1_cache_dtype():
    args = _step_args(mixer1_cache=torch.zeros(2, 2, 8, dtype=torch.float32))
    with pytest.raises(RuntimeError, match=r"mixer1_cache must have h_t's dtype"):
        torch.ops.dmm.metamamba_step(*args)


@requires_extension
def test_error_double_mixer_needs_mixer2_cache():
    args = _step_args("double-line", mixer2_cache=None)
    with pytest.raises(RuntimeError, match=r"mixer2_cache \(B, W-1, E\) = \(2, 2, 16\) is required"):
        torch.ops.dmm.metamamba_step(*args)


@requires_extension
def test_error_single_mixer_rejects_mixer2_cache():
    args = _step_args("line", mixer2_cache=torch.zeros(2, 2, 16, dtype=torch.float64))
    with pytest.raises(RuntimeError, match=r"mixer2_cache must be None for a single mixer"):
        torch.ops.dmm.metamamba_step(*args)


@requires_extension
def test_error_A_shape():
    args = list(_step_args())
    args[4 + 15] = torch.zeros(4, 16, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"A must be \(E, N\) = \(16, 4\); got \(4, 16\)"):
        torch.ops.dmm.metamamba_step(*args)


@requires_extension
def test_error_h_t_rank():
    args = list(_step_args())
    args[0] = torch.zeros(2, 1, 8, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"h_t must be one token \(B, D\); got \(2, 1, 8\)"):
        torch.ops.dmm.metamamba_step(*args)
