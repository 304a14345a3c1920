"""dmm::modal_mix against dmm_kernels.reference (float64), gradients, dtypes, errors."""
import pytest
import torch

import dmm_kernels
from conftest import not_interpreted
from dmm_kernels.reference import modal_mix_ref

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))]
LENGTHS = [1, 2, 7, 24, 61, 257]


@pytest.fixture(autouse=True)
def _needs_ops():
    assert dmm_kernels.EXTENSION_LOADED, f"dmm ops not loaded: {dmm_kernels.EXTENSION_ERROR}"
    assert dmm_kernels.HAS_EXTENSION, "DMM_KERNELS_BACKEND=reference is set: nothing to test"


def make_inputs(kind="conv", batch=2, L=7, D=5, W=4, M=3, bias=True, D_out=None,
                dtype=torch.float64, device="cpu", noncontig=False, seed=0):
    """u (batch, L, D), weight, bias for `kind`; noncontig makes u a permuted view."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(device, dtype)

    if noncontig:
        u = rand(D, L, batch).permute(2, 1, 0)                           # (batch, L, D) view
    else:
        u = rand(batch, L, D)
    if kind == "conv":
        weight = rand(M, W, D, scale=W ** -0.5)
        d_out = D
    else:
        d_out = D if D_out is None else D_out
        weight = rand(M, d_out, W * D, scale=(W * D) ** -0.5)
    b = rand(M, d_out, scale=0.5) if bias else None
    return u, weight, b


# (kind, M, phase, W, bias, noncontig, D_out)
CONFIGS = [
    ("conv", 3, 0, 6, True, False, None),
    ("conv", 3, 2, 4, False, True, None),
    ("conv", 1, 0, 1, True, False, None),
    ("line", 3, 1, 6, False, False, None),
    ("line", 3, 2, 3, True, True, 7),
    ("line", 1, 0, 5, True, False, None),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("L", LENGTHS)
@pytest.mark.parametrize("kind,M,phase,W,bias,noncontig,D_out", CONFIGS)
def test_forward_matches_reference(device, L, kind, M, phase, W, bias, noncontig, D_out):
    u, weight, b = make_inputs(kind, L=L, D=5, W=W, M=M, bias=bias, D_out=D_out, device=device,
                               noncontig=noncontig, seed=L)
    if noncontig:
        assert not u.is_contiguous()
    y = torch.ops.dmm.modal_mix_fwd(u, weight, b, kind, M, phase)
    ref = modal_mix_ref(u, weight, b, kind, M, phase)
    assert y.dtype == torch.float64 and y.shape == ref.shape
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)


def _grads(fn, u, weight, b, kind, M, phase):
    leaves = [t.detach().clone().requires_grad_() for t in (u, weight, b) if t is not None]
    args = leaves + ([None] if b is None else [])
    y = fn(*args, kind=kind, n_modalities=M, phase=phase)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(3), dtype=y.dtype).to(y.device)
    (y * dy).sum().backward()
    return y, [t.grad for t in leaves]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("L", [1, 7, 61])
@pytest.mark.parametrize("kind,M,phase,W,bias,noncontig,D_out", CONFIGS)
def test_gradients_match_reference(device, L, kind, M, phase, W, bias, noncontig, D_out):
    u, weight, b = make_inputs(kind, L=L, D=5, W=W, M=M, bias=bias, D_out=D_out, device=device,
                               noncontig=noncontig, seed=50 + L)
    y, grads = _grads(dmm_kernels.modal_mix, u, weight, b, kind, M, phase)
    ref_y, ref_grads = _grads(modal_mix_ref, u, weight, b, kind, M, phase)
    torch.testing.assert_close(y, ref_y, rtol=1e-12, atol=1e-12)
    for name, g, r in zip(("u", "weight", "bias"), grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10, msg=name)


@not_interpreted
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["conv", "line"])
def test_gradcheck(device, kind):
    u, weight, b = make_inputs(kind, batch=2, L=5, D=3, W=3, M=3, device=device, seed=1)
    leaves = [t.detach().clone().requires_grad_() for t in (u, weight, b)]

    def fn(*args):
        return dmm_kernels.modal_mix(*args, kind=kind, n_modalities=3, phase=1)

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["conv", "line"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(device, kind, dtype):
    u, weight, b = make_inputs(kind, batch=2, L=24, D=16, W=6, M=3, dtype=dtype, device=device)
    y = torch.ops.dmm.modal_mix_fwd(u, weight, b, kind, 3, 0)
    ref = modal_mix_ref(u, weight, b, kind, 3, 0)
    assert y.dtype == dtype
    # Same rounded inputs, fp32 accumulation on both sides: only the final rounding differs.
    tol = 1.6e-2 if dtype == torch.bfloat16 else 2e-3
    torch.testing.assert_close(y.float(), ref.float(), rtol=tol, atol=tol)
    _, grads = _grads(dmm_kernels.modal_mix, u, weight, b, kind, 3, 0)
    _, ref_grads = _grads(modal_mix_ref, u, weight, b, kind, 3, 0)
    for g, r, x in zip(grads, ref_grads, (u, weight, b)):
        assert g.dtype == x.dtype
        torch.testing.assert_close(g.float(), r.float(), rtol=4 * tol, atol=4 * tol)


ERROR_CASES = [
    # (id, kind, kwargs changes, match)
    ("kind", "conv", dict(kind="mamba"), r"kind must be \"conv\" or \"line\""),
    ("n_modalities", "conv", dict(M=0), r"n_modalities must be >= 1"),
    ("phase high", "conv", dict(phase=3), r"phase must be in \[0, n_modalities\)"),
    ("phase negative", "line", dict(phase=-1), r"phase must be in"),
    ("weight modalities", "conv", dict(weight=lambda w: w[:2]), r"weight must be \(n_modalities"),
    ("weight width", "conv", dict(weight=lambda w: w[..., :-1]), r"weight must be \(n_modalities, W, D\)"),
    ("line weight cols", "line", dict(weight=lambda w: w[..., :-1]),
     r"weight must be \(n_modalities, D_out, W\*D\)"),
    ("window limit", "conv", dict(weight=lambda w: torch.cat([w] * 5, 1)), r"window W = 20"),
    ("weight dtype", "conv", dict(weight=lambda w: w.long()), r"weight must be float"),
    ("bias shape", "conv", dict(bias=lambda b: b[:, :-1]), r"bias must be \(n_modalities, D\)"),
    ("u rank", "conv", dict(u=lambda u: u[0]), r"u must be \(batch, L, D\)"),
    ("u dtype", "line", dict(u=lambda u: u.int()), r"u must be float"),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case,kind,change,match", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_invalid_inputs_raise(device, case, kind, change, match):
    u, weight, b = make_inputs(kind, device=device)
    M, phase = change.get("M", 3), change.get("phase", 0)
    u = change.get("u", lambda t: t)(u)
    weight = change.get("weight", lambda t: t)(weight)
    b = change.get("bias", lambda t: t)(b)
    kind = change.get("kind", kind)
    with pytest.raises((ValueError, RuntimeError), match=match):
        torch.ops.dmm.modal_mix_fwd(u, weight, b, kind, M, phase)
    dy = torch.zeros(2, 7, 5, dtype=torch.float64, device=device)
    with pytest.raises((ValueError, RuntimeError), match=match):
        torch.ops.dmm.modal_mix_bwd(dy, u, weight, b, kind, M, phase)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_mixed_devices_raise():
    u, weight, b = make_inputs("conv", device="cuda")
    with pytest.raises((ValueError, RuntimeError), match="weight"):
        torch.ops.dmm.modal_mix_fwd(u, weight.cpu(), b, "conv", 3, 0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["conv", "line"])
def test_nan_propagates(device, kind):
    u, weight, b = make_inputs(kind, batch=2, L=12, W=3, device=device)
    u[1, 4, 2] = float("nan")
    y = torch.ops.dmm.modal_mix_fwd(u, weight, b, kind, 3, 0)
    ref = modal_mix_ref(u, weight, b, kind, 3, 0)
    assert torch.equal(y.isnan(), ref.isnan()) and y[1, 4:7].isnan().any()
    assert y[0].isfinite().all() and y[1, :4].isfinite().all() and y[1, 7:].isfinite().all()
    _, grads = _grads(dmm_kernels.modal_mix, u, weight, b, kind, 3, 0)
    _, ref_grads = _grads(modal_mix_ref, u, weight, b, kind, 3, 0)
    for g, r in zip(grads, ref_grads):
        assert torch.equal(g.isnan(), r.isnan())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["conv", "line"])
@pytest.mark.parametrize("shape", [(0, 7), (2, 0)])
def test_empty(device, kind, shape):
    u, weight, b = make_inputs(kind, batch=shape[0], L=shape[1], device=device)
    y = torch.ops.dmm.modal_mix_fwd(u, weight, b, kind, 3, 0)
    assert y.shape == u.shape
    _, grads = _grads(dmm_kernels.modal_mix, u, weight, b, kind, 3, 0)
    assert grads[0].shape == u.shape
    assert (grads[1] == 0).all() and (grads[2] == 0).all()


@pytest.mark.parametrize("device", DEVICES)
def test_absent_bias_gives_empty_grad(device):
    u, weight, _ = make_inputs("line", bias=False, device=device)
    dy = torch.ones_like(u)
    assert torch.ops.dmm.modal_mix_bwd(dy, u, weight, None, "line", 3, 0)[2].numel() == 0


@pytest.mark.parametrize("device", DEVICES)
def test_conv_backward_is_deterministic(device):
    """Under torch.use_deterministic_algorithms(True) the conv weight / bias gradients (a reduction
    over all tokens: float atomics across row splits on CUDA) are bit-identical from run to run."""
    g = torch.Generator().manual_seed(3)
    u = torch.randn(4, 300, 40, generator=g).to(device)
    dy = torch.randn(4, 300, 40, generator=g).to(device)
    w = torch.randn(3, 6, 40, generator=g).to(device)
    b = torch.randn(3, 40, generator=g).to(device)
    old = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = [torch.ops.dmm.modal_mix_bwd(dy, u, w, b, "conv", 3, 0) for _ in range(2)]
    finally:
        torch.use_deterministic_algorithms(old)
    for a, c in zip(*runs):
        assert torch.equal(a, c)
