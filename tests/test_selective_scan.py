"""dmm::selective_scan against dmm_kernels.reference (float64), gradients, dtypes, errors."""
import pytest
import torch

import dmm_kernels
from conftest import not_interpreted
from dmm_kernels.reference import selective_scan_ref

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))]
LENGTHS = [1, 2, 7, 24, 61, 257]
ARG_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


@pytest.fixture(autouse=True)
def _needs_ops():
    assert dmm_kernels.EXTENSION_LOADED, f"dmm ops not loaded: {dmm_kernels.EXTENSION_ERROR}"
    assert dmm_kernels.HAS_EXTENSION, "DMM_KERNELS_BACKEND=reference is set: nothing to test"


def make_inputs(batch=2, E=5, L=7, N=4, G=None, D=True, z=True, delta_bias=True,
                dtype=torch.float64, device="cpu", noncontig=False, seed=0):
    """Random scan inputs as a dict of ARG_NAMES. G=None: B, C are (batch, N, L).

    noncontig: u, delta, z, B, C are permuted views (the last dim is not stride 1)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0, shift=0.0, dt=dtype):
        if noncontig and len(shape) >= 3:  # memory in reversed dim order, viewed back
            t = torch.randn(*shape[::-1], generator=g, dtype=torch.float64)
            t = t.permute(*range(len(shape) - 1, -1, -1))
        else:
            t = torch.randn(*shape, generator=g, dtype=torch.float64)
        return (t * scale + shift).to(device=device, dtype=dt)

    bc_shape = (batch, N, L) if G is None else (batch, G, N, L)
    param_dtype = torch.float64 if dtype == torch.float64 else torch.float32  # A, D, delta_bias
    A = -(torch.rand(E, N, generator=g, dtype=torch.float64) + 0.1)
    x = {
        "u": rand(batch, E, L),
        "delta": rand(batch, E, L, scale=0.5, shift=-1.0),
        "A": A.to(device, param_dtype),
        "B": rand(*bc_shape),
        "C": rand(*bc_shape),
        "D": rand(E, dt=param_dtype) if D else None,
        "z": rand(batch, E, L) if z else None,
        "delta_bias": rand(E, scale=0.3, dt=param_dtype) if delta_bias else None,
    }
    if noncontig:
        assert not x["u"].is_contiguous() and not x["B"].is_contiguous()
    return x


def run_op(x, softplus):
    return torch.ops.dmm.selective_scan_fwd(*(x[k] for k in ARG_NAMES), softplus)


# (G, D, z, delta_bias, softplus, noncontig)
CONFIGS = [
    (None, True, True, True, True, False),
    (None, False, False, False, False, False),
    (2, True, True, False, True, True),
    (1, False, True, True, False, True),
    (2, True, False, True, True, False),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("L", LENGTHS)
@pytest.mark.parametrize("G,D,z,bias,softplus,noncontig", CONFIGS)
def test_forward_matches_reference(device, L, G, D, z, bias, softplus, noncontig):
    E = 6 if G == 2 else 5
    x = make_inputs(E=E, L=L, N=5, G=G, D=D, z=z, delta_bias=bias, device=device,
                    noncontig=noncontig, seed=L)
    out, last = run_op(x, softplus)
    ref_out, ref_last = selective_scan_ref(**x, delta_softplus=softplus, return_last_state=True)
    assert out.dtype == torch.float64 and last.dtype == torch.float64
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(last, ref_last, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
def test_forward_float32_matches_float64_reference(device):
    # float32 path (vectorised exp, fp32 accumulation) against float64 math; includes steps
    # whose decay exp(delta * A) underflows.
    x = make_inputs(batch=3, E=11, L=61, N=16, G=None, device=device, seed=3)
    x["delta"] = x["delta"] * 4 + 2  # softplus(delta) up to ~10, A down to -1.1
    x32 = {k: None if v is None else v.float() for k, v in x.items()}
    out, last = run_op(x32, True)
    ref_out, ref_last = selective_scan_ref(**x, delta_softplus=True, return_last_state=True)
    assert out.dtype == torch.float32 and last.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref_out, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(last.double(), ref_last, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_float32_softplus_and_gate_extremes(device):
    """softplus(delta + bias) and the SiLU(z) gate run on the kernel's own vectorised exp / log1p
    in float32: sweep delta and z over [-30, 30] (both sides of softplus' threshold 20, and
    the tail where softplus(x) ~ e^x) and compare output and gradients with float64 math."""
    x = make_inputs(batch=2, E=8, L=40, N=16, device=device, seed=5)
    sweep = torch.linspace(-30.0, 30.0, x["delta"].numel(), dtype=torch.float64)
    perm = torch.randperm(sweep.numel(), generator=torch.Generator().manual_seed(0))
    x["delta"] = sweep.reshape(x["delta"].shape).to(device)
    x["z"] = sweep[perm].reshape(x["z"].shape).to(device)
    x["A"] = x["A"] * 0.05  # keep exp(delta A) away from 0 so the states stay informative
    dout = torch.randn(x["u"].shape, generator=torch.Generator().manual_seed(1),
                       dtype=torch.float64).to(device)
    results = []
    for fn, dtype in ((dmm_kernels.selective_scan, torch.float32), (selective_scan_ref, torch.float64)):
        leaves = {k: v.to(dtype).requires_grad_() for k, v in x.items()}
        out = fn(**leaves, delta_softplus=True)
        (out * dout.to(dtype)).sum().backward()
        results.append((out.detach().double(), {k: v.grad.double() for k, v in leaves.items()}))
    (out, grads), (ref_out, ref_grads) = results
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-4 * ref_out.abs().max().item())
    for k in grads:
        scale = ref_grads[k].abs().max().item()
        torch.testing.assert_close(grads[k], ref_grads[k], rtol=1e-4, atol=1e-4 * scale, msg=k)


def _grads(fn, x, softplus):
    leaves = {k: v.detach().clone().requires_grad_() for k, v in x.items() if v is not None}
    args = {k: leaves.get(k) for k in ARG_NAMES}
    out, last = fn(**args, delta_softplus=softplus, return_last_state=True)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(7),
                       dtype=out.dtype).to(out.device)
    (out * dout).sum().backward()
    return out, {k: v.grad for k, v in leaves.items()}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("L", [1, 7, 61])
@pytest.mark.parametrize("G,D,z,bias,softplus,noncontig", CONFIGS)
def test_gradients_match_reference(device, L, G, D, z, bias, softplus, noncontig):
    E = 6 if G == 2 else 5
    x = make_inputs(E=E, L=L, N=3, G=G, D=D, z=z, delta_bias=bias, device=device,
                    noncontig=noncontig, seed=100 + L)
    out, grads = _grads(dmm_kernels.selective_scan, x, softplus)
    ref_out, ref_grads = _grads(selective_scan_ref, x, softplus)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
    assert grads.keys() == ref_grads.keys()
    for k in grads:
        assert grads[k].shape == x[k].shape, k
        torch.testing.assert_close(grads[k], ref_grads[k], rtol=1e-9, atol=1e-9, msg=k)


@not_interpreted
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("G", [None, 2])
def test_gradcheck(device, G):
    x = make_inputs(batch=1, E=4, L=5, N=2, G=G, device=device, seed=11)
    leaves = [x[k].detach().clone().requires_grad_() for k in ARG_NAMES]

    def fn(*args):
        return dmm_kernels.selective_scan(*args, delta_softplus=True)

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bc_fp32", [False, True])
def test_low_precision_forward(device, dtype, bc_fp32):
    x = make_inputs(batch=2, E=9, L=24, N=16, G=None, dtype=dtype, device=device, seed=5)
    if bc_fp32:  # B / C may be float32 while u is half precision (mamba-ssm allows it)
        x["B"], x["C"] = x["B"].float(), x["C"].float()
    out, last = run_op(x, True)
    ref_out, ref_last = selective_scan_ref(**x, delta_softplus=True, return_last_state=True)
    assert out.dtype == dtype and last.dtype == torch.float32
    # Both accumulate in fp32 from the same rounded inputs: only the final rounding differs.
    tol = 1.6e-2 if dtype == torch.bfloat16 else 2e-3
    torch.testing.assert_close(out.float(), ref_out.float(), rtol=tol, atol=tol)
    torch.testing.assert_close(last, ref_last.float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_backward(device, dtype):
    x = make_inputs(batch=2, E=4, L=7, N=4, G=2, dtype=dtype, device=device, seed=6)
    _, grads = _grads(dmm_kernels.selective_scan, x, True)
    _, ref_grads = _grads(selective_scan_ref, x, True)
    for k in grads:
        assert grads[k].dtype == x[k].dtype, k
        scale = ref_grads[k].float().abs().max().clamp_min(1.0)
        err = (grads[k].float() - ref_grads[k].float()).abs().max()
        assert err <= 2e-2 * scale, (k, err.item(), scale.item())


# ---- half precision against the same-precision reference ------------------------------------------
# selective_scan_ref on the same half-precision inputs computes in float32 and rounds the output to
# the input dtype: what a kernel that loads halves, accumulates in float32 and stores halves returns.
# The two round the same float32 values, up to float32 differences that can flip one rounding: at
# most one ulp of an element. Tolerance: one ulp of the largest output, max |out - ref| / max |ref|
# <= finfo(dtype).eps (7.8e-3 bf16, 9.8e-4 fp16). Measured, CPU kernels / emulated CUDA kernels:
#   random inputs     bf16 0 / 0            fp16 1.0e-5 / 2.6e-6
#   cancelling sums   bf16 2.4e-5 / 7.7e-4  fp16 4.7e-5 / 4.7e-5
# y = sum_n s_n C_n accumulated in the half type instead (scan_accumulating_in): random bf16 0.011,
# fp16 6.6e-4 (under fp16's 9.8e-4: random inputs cannot see it); cancelling bf16 0.082, fp16 0.012.
def half_error(out, ref_out):
    return ((out.float() - ref_out.float()).abs().max() / ref_out.float().abs().max()).item()


def cancelling_inputs(dtype, device, seed, K=64.0):
    """Scan inputs whose terms s_n C_n of y cancel in pairs: A and B equal over each pair (2k, 2k+1),
    so s_2k = s_2k+1, and C_2k = K, C_2k+1 = -K + c_k with small c_k (all exact in bf16 / fp16):
    the partial sums reach K |s| while y = sum_k c_k s_k is of size |s|."""
    x = make_inputs(batch=2, E=9, L=70, N=16, G=None, dtype=dtype, device=device, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    A = -(torch.rand(9, 8, generator=g, dtype=torch.float64) + 0.1)
    x["A"] = A.repeat_interleave(2, dim=1).to(device, x["A"].dtype)  # (E, N), pairs equal
    x["B"] = x["B"][:, 0::2].repeat_interleave(2, dim=1).contiguous()  # (batch, N, L)
    c = torch.randint(-2, 3, (2, 8, 70), generator=g).double() * 0.25  # c_k in {0, +-1/4, +-1/2}
    C = torch.full((2, 16, 70), K, dtype=torch.float64)
    C[:, 1::2] = -K + c
    x["C"] = C.to(device, dtype)
    return x


def scan_accumulating_in(x, dtype):
    """The scan of selective_scan_ref (softplus, D, z, bias) with y = sum_n s_n C_n rounded to
    `dtype` after every term: a kernel with a half-precision accumulator."""
    u, delta, A, B, C, D, z, bias = (x[k].cpu().float() for k in ARG_NAMES)
    dt = torch.nn.functional.softplus(delta + bias[:, None])  # (batch, E, L)
    s = torch.zeros(u.shape[0], u.shape[1], A.shape[1])       # (batch, E, N)
    out = torch.empty_like(u)
    for t in range(u.shape[2]):
        s = torch.exp(dt[..., t, None] * A) * s + dt[..., t, None] * B[:, None, :, t] * u[..., t, None]
        y = torch.zeros(u.shape[:2]).to(dtype)
        for n in range(A.shape[1]):
            y = (y.float() + s[..., n] * C[:, None, n, t]).to(dtype)
        out[..., t] = (y.float() + D * u[..., t]) * z[..., t] * torch.sigmoid(z[..., t])
    return out.to(dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("cancelling", [False, True])
def test_half_precision_matches_same_precision_reference(device, dtype, cancelling):
    if cancelling:
        x = cancelling_inputs(dtype, device, seed=11)
    else:
        x = make_inputs(batch=2, E=9, L=70, N=16, G=None, dtype=dtype, device=device, seed=11)
    out = run_op(x, True)[0]
    ref_out = selective_scan_ref(**x, delta_softplus=True)
    assert out.dtype == ref_out.dtype == dtype
    assert half_error(out, ref_out) <= torch.finfo(dtype).eps


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_accumulator_fails_on_cancelling_sums(dtype):
    """The check above can fail: a half-precision accumulator of y is off by several times the
    tolerance on the cancelling inputs."""
    x = cancelling_inputs(dtype, "cpu", seed=11)
    ref_out = selective_scan_ref(**x, delta_softplus=True)
    assert half_error(scan_accumulating_in(x, dtype), ref_out) > 5 * torch.finfo(dtype).eps


def _corrupt(x, name, value):
    x = dict(x)
    x[name] = value
    return x


ERROR_CASES = [
    ("u rank", lambda x: _corrupt(x, "u", x["u"][0]), r"u must be \(batch, E, L\)"),
    ("u dtype", lambda x: _corrupt(x, "u", x["u"].long()), r"u must be float"),
    ("delta shape", lambda x: _corrupt(x, "delta", x["delta"][..., :-1]), r"delta must be"),
    ("A shape", lambda x: _corrupt(x, "A", x["A"][:-1]), r"A must be \(E, N\)"),
    ("B length", lambda x: _corrupt(x, "B", x["B"][..., :-1]),
     r"B must be \(batch, N, L\) or \(batch, G, N, L\) = \(2, 4, 7\); got \(2, 4, 6\)"),
    ("B rank", lambda x: _corrupt(x, "B", x["B"][0]), r"selective_scan: B must be"),
    ("B groups", lambda x: _corrupt(_corrupt(x, "B", torch.stack([x["B"]] * 4, 1)), "C",
                                    torch.stack([x["C"]] * 4, 1)),
     r"B's group count G = 4 must divide E = 6"),
    ("C shape", lambda x: _corrupt(x, "C", x["C"][:, :-1]), r"C must be \(batch, N, L\)"),
    ("C dtype", lambda x: _corrupt(x, "C", x["C"].int()), r"C must be float"),
    ("D shape", lambda x: _corrupt(x, "D", x["D"][:-1]), r"D must be \(E,\)"),
    ("z shape", lambda x: _corrupt(x, "z", x["z"][:1]), r"z must be \(batch, E, L\)"),
    ("delta_bias shape", lambda x: _corrupt(x, "delta_bias", x["delta_bias"][:2]),
     r"delta_bias must be \(E,\)"),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case,corrupt,match", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_invalid_inputs_raise(device, case, corrupt, match):
    x = corrupt(make_inputs(batch=2, E=6, L=7, N=4, device=device))
    with pytest.raises((ValueError, RuntimeError), match=match):
        run_op(x, True)
    dout = torch.zeros(2, 6, 7, dtype=torch.float64, device=device)
    with pytest.raises((ValueError, RuntimeError), match=match):
        torch.ops.dmm.selective_scan_bwd(dout, *(x[k] for k in ARG_NAMES), True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_mixed_devices_raise():
    x = make_inputs(device="cuda")
    x["B"] = x["B"].cpu()
    with pytest.raises((ValueError, RuntimeError), match="B"):
        run_op(x, True)


@pytest.mark.parametrize("device", DEVICES)
def test_nan_propagates(device):
    x = make_inputs(batch=2, E=3, L=9, N=4, device=device)
    x["u"][1, 2, 4] = float("nan")
    out, last = run_op(x, True)
    assert out[1, 2, 4:].isnan().all() and last[1, 2].isnan().all()
    mask = torch.ones_like(out, dtype=torch.bool)
    mask[1, 2, 4:] = False
    assert out[mask].isfinite().all() and last[0].isfinite().all()
    _, grads = _grads(dmm_kernels.selective_scan, x, True)
    _, ref_grads = _grads(selective_scan_ref, x, True)
    assert grads["delta"][1, 2].isnan().any() and grads["delta"][0].isfinite().all()
    for k in grads:  # NaN exactly where autograd of the reference puts it
        assert torch.equal(grads[k].isnan(), ref_grads[k].isnan()), k


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch(device):
    x = make_inputs(batch=0, E=6, L=7, N=4, G=2, device=device)
    out, last = run_op(x, True)
    assert out.shape == (0, 6, 7) and last.shape == (0, 6, 4)
    _, grads = _grads(dmm_kernels.selective_scan, x, True)
    for k, g in grads.items():
        assert g.shape == x[k].shape, k
    assert (grads["A"] == 0).all() and (grads["D"] == 0).all()


@pytest.mark.parametrize("device", DEVICES)
def test_absent_optionals_give_empty_grads(device):
    x = make_inputs(D=False, z=False, delta_bias=False, device=device)
    dout = torch.ones_like(x["u"])
    grads = torch.ops.dmm.selective_scan_bwd(dout, *(x[k] for k in ARG_NAMES), False)
    assert [g.numel() for g in grads[5:]] == [0, 0, 0]


@pytest.mark.parametrize("device", DEVICES)
def test_backward_is_deterministic(device):
    """Under torch.use_deterministic_algorithms(True) two runs are bit-identical (CUDA: per-block
    partial sums in a fixed order instead of float atomics; the CPU kernels always are)."""
    x = make_inputs(batch=3, E=70, L=24, N=16, G=2, dtype=torch.float32, device=device, seed=9)
    dout = torch.randn_like(x["u"])
    old = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        first = torch.ops.dmm.selective_scan_bwd(dout, *(x[k] for k in ARG_NAMES), True)
        second = torch.ops.dmm.selective_scan_bwd(dout, *(x[k] for k in ARG_NAMES), True)
    finally:
        torch.use_deterministic_algorithms(old)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("N", [17, 33, 64, 100, 256])
def test_many_states_across_chunks(device, N):
    """N = 17 / 33 / 100 / 256 select 1, 2, 4 and 8 states per lane on CUDA; L = 130 crosses the
    forward's and the backward's chunk boundaries in float64 and float32 alike."""
    x = make_inputs(batch=2, E=5, L=130, N=N, G=None, device=device, seed=N)
    out, grads = _grads(dmm_kernels.selective_scan, x, True)
    ref_out, ref_grads = _grads(selective_scan_ref, x, True)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
    for k in grads:
        torch.testing.assert_close(grads[k], ref_grads[k], rtol=1e-9, atol=1e-9, msg=k)
