"""metamamba_block (torch.ops.dmm.metamamba_block_fwd / _bwd) against the pure-PyTorch reference.

float64 values and gradients of h and every parameter, gradcheck, float32 / bfloat16 accuracy,
empty batches and argument errors. Shapes are tiny: the CPU here is shared.
"""
import pytest
import torch

import dmm_kernels
from conftest import not_interpreted
from block_cases import DEVICES, EPS, MIXERS, make_case
from dmm_kernels import mixers, reference

pytestmark = pytest.mark.skipif(
    not dmm_kernels.HAS_EXTENSION,
    reason="compiled dmm ops not loaded (the public functions would be the reference itself)",
)


def op_args(h, params, mixer, n_modalities, residual_ssm):
    """Positional arguments of torch.ops.dmm.metamamba_block_fwd ("dense" mapped as ops.py does)."""
    mixer, n_modalities = mixers.canonical(mixer, n_modalities)
    return (h, *params, mixer, n_modalities, residual_ssm, EPS)


def grads_of(fn, h, params, dout):
    """Gradients of <fn(h, params), dout> w.r.t. h and every present parameter (name -> grad)."""
    h = h.detach().clone().requires_grad_()
    params = params.map(lambda v: v.detach().clone().requires_grad_())
    out = fn(h, params)
    leaves = {"h": h, **params.present()}
    return out.detach(), dict(zip(leaves, torch.autograd.grad(out, list(leaves.values()), dout)))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("residual_ssm", [False, True])
@pytest.mark.parametrize("n_modalities", [1, 3])
@pytest.mark.parametrize("mixer", MIXERS)
@pytest.mark.parametrize("length,window", [(7, 3), (4, 6)])
def test_forward_and_grads_match_reference_fp64(mixer, n_modalities, residual_ssm, device,
                                                length, window):
    if mixer == "dense" and n_modalities != 1:
        pytest.skip("dense always has one modality")
    h, params = make_case(mixer, n_modalities, length=length, window=window, device=device)
    dout = torch.randn_like(h)

    def ours(h_, p_):
        return dmm_kernels.metamamba_block(h_, p_, mixer, n_modalities, residual_ssm, EPS)

    def ref(h_, p_):
        return reference.metamamba_block_ref(h_, p_, mixer, n_modalities, residual_ssm, EPS)

    out, grads = grads_of(ours, h, params, dout)
    out_ref, grads_ref = grads_of(ref, h, params, dout)
    assert out.dtype == torch.float64 and out.shape == h.shape
    torch.testing.assert_close(out, out_ref, rtol=1e-10, atol=1e-10)
    assert grads.keys() == grads_ref.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], grads_ref[name], rtol=1e-9, atol=1e-10,
                                   msg=lambda m, n=name: f"gradient of {n}: {m}")


@not_interpreted
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mixer", ["conv", "double-line"])
def test_gradcheck(mixer, device):
    h, params = make_case(mixer, n_modalities=3, batch=1, length=4, d_model=4, d_state=2,
                          window=2, device=device)
    names = list(params.present())

    def fn(h_, *values):
        p = params._replace(**dict(zip(names, values)))
        return dmm_kernels.metamamba_block(h_, p, mixer, 3, False, EPS)

    inputs = [h.requires_grad_()] + [v.clone().requires_grad_() for v in params.present().values()]
    # gradcheck also requires two backward passes to agree bit for bit: on CUDA (and the emulator
    # under a fuzzed schedule) float atomics sum in the order of arrival, so check the deterministic
    # mode, in which the kernels promise bit-identical results.
    old = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)
    finally:
        torch.use_deterministic_algorithms(old)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mixer", ["conv", "line", "double-conv", "double-line"])
def test_float32_matches_fp64_reference(mixer, device):
    h, params = make_case(mixer, length=9, d_model=16, d_state=8, window=4, dtype=torch.float32,
                          device=device)
    dout = torch.randn_like(h)
    up = params.map(torch.Tensor.double)

    out, grads = grads_of(lambda h_, p_: dmm_kernels.metamamba_block(h_, p_, mixer), h, params,
                          dout)
    out_ref, grads_ref = grads_of(lambda h_, p_: reference.metamamba_block_ref(h_, p_, mixer),
                                  h.double(), up, dout.double())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), out_ref, rtol=1e-4, atol=1e-5)
    for name in grads:
        assert grads[name].dtype == torch.float32, name
        scale = grads_ref[name].abs().max().item()
        torch.testing.assert_close(grads[name].double(), grads_ref[name], rtol=1e-4,
                                   atol=1e-5 * max(scale, 1.0),
                                   msg=lambda m, n=name: f"gradient of {n}: {m}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mixer", ["conv", "double-line"])
def test_bfloat16_activations_close_to_reference(mixer, device):
    # bf16 h and matrices, fp32 scan parameters (what autocast hands the op): ~1e-2 relative.
    h, params = make_case(mixer, length=9, d_model=16, d_state=8, window=4, dtype=torch.float32,
                          device=device)
    low = params.map(torch.Tensor.bfloat16,
                     [k for k in params._fields if k not in ("A_log", "D", "dt_proj_bias")])
    out = dmm_kernels.metamamba_block(h.bfloat16(), low, mixer)
    ref = reference.metamamba_block_ref(h.bfloat16().double(), low.map(torch.Tensor.double), mixer)
    assert out.dtype == torch.bfloat16
    err = (out.double() - ref).abs().max().item()
    assert err <= 3e-2 * ref.abs().max().item(), err


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mixer", ["line", "double-conv"])
@pytest.mark.parametrize("batch,length", [(0, 7), (2, 0)])
def test_empty_batch(mixer, device, batch, length):
    h, params = make_case(mixer, batch=batch, length=length, device=device)
    dout = torch.randn_like(h)
    out, grads = grads_of(lambda h_, p_: dmm_kernels.metamamba_block(h_, p_, mixer), h, params,
                          dout)
    assert out.shape == (batch, length, 8)
    for name, g in grads.items():
        assert g.shape == (h if name == "h" else getattr(params, name)).shape, name
        assert torch.all(g == 0), name


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs(device):
    # h as a transposed view, a parameter as a strided view, and the stride-0 dout of .sum().
    mixer = "double-line"
    h, params = make_case(mixer, device=device)
    h_t = h.transpose(0, 1).contiguous().transpose(0, 1).requires_grad_()
    assert not h_t.is_contiguous()
    w = params.in_proj_weight
    params = params._replace(in_proj_weight=w.t().contiguous().t().requires_grad_())
    out = dmm_kernels.metamamba_block(h_t, params, mixer)
    out.sum().backward()
    h_ref = h.clone().requires_grad_()
    w_ref = w.clone().requires_grad_()
    out_ref = reference.metamamba_block_ref(h_ref, params._replace(in_proj_weight=w_ref), mixer)
    out_ref.sum().backward()
    torch.testing.assert_close(out, out_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h_t.grad, h_ref.grad, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(params.in_proj_weight.grad, w_ref.grad, rtol=1e-9, atol=1e-10)


def bwd_args(h, params, mixer, n_modalities=3, residual_ssm=False):
    """Arguments of torch.ops.dmm.metamamba_block_bwd after dout: h, params, the forward's saved
    activations, the settings."""
    _, *saved = torch.ops.dmm.metamamba_block_fwd(*op_args(h, params, mixer, n_modalities,
                                                           residual_ssm))
    return (h, *params, *saved, mixer, n_modalities, residual_ssm, EPS)


@pytest.mark.parametrize("mixer", ["conv", "double-line"])
def test_bwd_op_returns_one_gradient_per_input(mixer):
    h, params = make_case(mixer)
    grads = torch.ops.dmm.metamamba_block_bwd(torch.ones_like(h), *bwd_args(h, params, mixer))
    assert len(grads) == 16
    for g, name in zip(grads, ("h",) + params._fields):
        like = h if name == "h" else getattr(params, name)
        if like is None:
            assert g.numel() == 0, name
        else:
            assert g.shape == like.shape and g.dtype == like.dtype, name


@pytest.mark.parametrize("mixer", ["conv", "double-line"])
def test_saved_activations(mixer):
    """The forward returns what the backward reads, each equal to the reference's intermediate."""
    h, p = make_case(mixer)
    out, h1, v, xz, xm, xs, x_dbl, y = torch.ops.dmm.metamamba_block_fwd(
        *op_args(h, p, mixer, 3, False))
    F = torch.nn.functional
    (E, N), R, kind = p.A_log.shape, p.dt_proj_weight.shape[1], mixer.removeprefix("double-")
    u = F.layer_norm(h, (8,), p.norm1_weight, p.norm1_bias, EPS)
    h1_ref = h + reference.modal_mix_ref(u, p.mixer1_weight, p.mixer1_bias, kind, 3)
    v_ref = F.layer_norm(h1_ref, (8,), p.norm2_weight, p.norm2_bias, EPS)
    xz_ref = v_ref @ p.in_proj_weight.T
    x0, z = xz_ref.split([E, E], -1)
    if mixer.startswith("double-"):
        xm_ref = reference.modal_mix_ref(x0, p.mixer2_weight, p.mixer2_bias, kind, 3)
        torch.testing.assert_close(xm, xm_ref, rtol=1e-12, atol=1e-12)
    else:  # single mixers save no xm: it is xz's x half
        xm_ref = x0
        assert xm.numel() == 0
    xs_ref = F.silu(xm_ref)
    x_dbl_ref = xs_ref @ p.x_proj_weight.T
    dt_low, Bc, Cc = x_dbl_ref.split([R, N, N], -1)
    y_ref = reference.selective_scan_ref(
        xs_ref.mT, (dt_low @ p.dt_proj_weight.T).mT, -torch.exp(p.A_log), Bc.mT, Cc.mT, p.D, z.mT,
        p.dt_proj_bias, delta_softplus=True).mT
    for name, got, expected in (("h1", h1, h1_ref), ("v", v, v_ref), ("xz", xz, xz_ref),
                                ("xs", xs, xs_ref), ("x_dbl", x_dbl, x_dbl_ref), ("y", y, y_ref)):
        assert got.is_contiguous(), name
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12, msg=name)
    residual = h1_ref if mixer.startswith("double-") else 0
    torch.testing.assert_close(out, y_ref @ p.out_proj_weight.T + residual, rtol=1e-12, atol=1e-12)


def test_bwd_rejects_wrong_saved_activations():
    h, params = make_case("conv")
    args = list(bwd_args(h, params, "conv"))
    args[1 + len(params) + 2] = torch.zeros(2, 7, 16, dtype=torch.float64)  # xz must be (2, 7, 32)
    with pytest.raises(RuntimeError, match=r"xz must be \(B, L, 2\*E\) = \(2, 7, 32\)"):
        torch.ops.dmm.metamamba_block_bwd(torch.ones_like(h), *args)


@pytest.mark.parametrize("mixer", ["conv", "double-line"])
def test_opcheck(mixer):
    h, params = make_case(mixer, batch=1, length=5, d_model=4, d_state=2, window=2)
    args = op_args(h.requires_grad_(), params.map(torch.Tensor.requires_grad_), mixer, 3, False)
    torch.library.opcheck(torch.ops.dmm.metamamba_block_fwd.default, args)
    plain = bwd_args(h.detach(), params.map(torch.Tensor.detach), mixer)
    torch.library.opcheck(torch.ops.dmm.metamamba_block_bwd.default,
                          (torch.randn_like(h), *plain))


# ---- argument errors: the message names the argument and the expected shape --------------------
def _fwd_with(mixer="conv", n_modalities=3, h=None, **overrides):
    """Call the fwd op with valid "conv"-family arguments, some of them replaced."""
    h0, params = make_case("double-conv" if mixer.startswith("double") else "conv")
    return torch.ops.dmm.metamamba_block_fwd(
        h0 if h is None else h, *params._replace(**overrides), mixer, n_modalities, False, EPS)


def test_error_in_proj_shape():
    with pytest.raises(RuntimeError, match=r"in_proj_weight must be \(2\*E, D\) = \(32, 8\); "
                                           r"got \(16, 8\)"):
        _fwd_with(in_proj_weight=torch.zeros(16, 8, dtype=torch.float64))


def test_error_unknown_mixer():
    with pytest.raises(RuntimeError, match=r"mixer must be one of .*got \"convolution\""):
        _fwd_with(mixer="convolution")


def test_error_n_modalities():
    with pytest.raises(RuntimeError, match=r"n_modalities must be >= 1; got 0"):
        _fwd_with(n_modalities=0)


def test_error_mixer_weight_modalities():
    # mixer1_weight has 3 modalities but the call says 2.
    with pytest.raises(RuntimeError, match=r"mixer1_weight must be \(n_modalities, W, width\) = "
                                           r"\(2, 3, 8\)"):
        _fwd_with(n_modalities=2)


def test_error_double_mixer_needs_mixer2():
    with pytest.raises(RuntimeError, match=r"mixer2_weight is required for a double mixer"):
        _fwd_with(mixer="double-conv", mixer2_weight=None, mixer2_bias=None)


def test_error_single_mixer_rejects_mixer2():
    with pytest.raises(RuntimeError, match=r"mixer2_weight / mixer2_bias must be None"):
        _fwd_with(mixer="conv", mixer2_weight=torch.zeros(3, 3, 32, dtype=torch.float64))


def test_error_h_rank():
    with pytest.raises(RuntimeError, match=r"h must be \(B, L, D\); got \(7, 8\)"):
        _fwd_with(h=torch.zeros(7, 8, dtype=torch.float64))


def test_error_x_proj_shape():
    with pytest.raises(RuntimeError, match=r"x_proj_weight must be \(R \+ 2\*N, E\) = \(9, 16\)"):
        _fwd_with(x_proj_weight=torch.zeros(9, 15, dtype=torch.float64))
