"""Op registration: opcheck on every op, torch.compile(fullgraph=True), fallback switch."""
import os
import subprocess
import sys

import pytest
import torch

import dmm_kernels
from dmm_kernels import reference

pytestmark = pytest.mark.skipif(not dmm_kernels.HAS_EXTENSION, reason="compiled ops not in use")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
OPCHECK_TESTS = ("test_schema", "test_autograd_registration", "test_faketensor",
                 "test_aot_dispatch_dynamic")


def _scan_inputs(device, dtype=torch.float32, grouped=False, requires_grad=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    batch, E, N, L = 2, 6, 4, 7

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device, dtype)

    bc_shape = (batch, 2, N, L) if grouped else (batch, N, L)
    args = [rand(batch, E, L), rand(batch, E, L, scale=0.5), -torch.rand(E, N, generator=g).to(device),
            rand(*bc_shape), rand(*bc_shape), rand(E).float(), rand(batch, E, L), rand(E).float()]
    for t in args:
        t.requires_grad_(requires_grad)
    return args


def _mix_inputs(device, kind, bias, requires_grad=True):
    g = torch.Generator().manual_seed(1)
    batch, L, D, W, M = 2, 7, 5, 3, 3
    u = torch.randn(batch, L, D, generator=g).to(device)
    weight = torch.randn(*((M, W, D) if kind == "conv" else (M, D, W * D)), generator=g).to(device)
    b = torch.randn(M, D, generator=g).to(device) if bias else None
    for t in (u, weight, b):
        if t is not None:
            t.requires_grad_(requires_grad)
    return u, weight, b


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("softplus", [False, True])
def test_opcheck_selective_scan(device, grouped, softplus):
    args = _scan_inputs(device, grouped=grouped)
    torch.library.opcheck(torch.ops.dmm.selective_scan_fwd.default, (*args, softplus),
                          test_utils=OPCHECK_TESTS)
    dout = torch.randn_like(args[0])
    plain = [t.detach() for t in args]
    torch.library.opcheck(torch.ops.dmm.selective_scan_bwd.default, (dout, *plain, softplus),
                          test_utils=OPCHECK_TESTS)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_selective_scan_without_optionals(device):
    u, delta, A, B, C, *_ = _scan_inputs(device)
    torch.library.opcheck(torch.ops.dmm.selective_scan_fwd.default,
                          (u, delta, A, B, C, None, None, None, False), test_utils=OPCHECK_TESTS)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["conv", "line"])
@pytest.mark.parametrize("bias", [False, True])
def test_opcheck_modal_mix(device, kind, bias):
    u, weight, b = _mix_inputs(device, kind, bias)
    torch.library.opcheck(torch.ops.dmm.modal_mix_fwd.default, (u, weight, b, kind, 3, 1),
                          test_utils=OPCHECK_TESTS)
    dy = torch.randn_like(u)
    plain = (u.detach(), weight.detach(), None if b is None else b.detach())
    torch.library.opcheck(torch.ops.dmm.modal_mix_bwd.default, (dy, *plain, kind, 3, 1),
                          test_utils=OPCHECK_TESTS)


def _block_args(device, mixer, requires_grad=True):
    params = reference.make_block_params(8, mixer, expand=2, d_state=4, window=3, device=device,
                                         generator=torch.Generator().manual_seed(2))
    h = torch.randn(2, 7, 8, generator=torch.Generator().manual_seed(3)).to(device)
    params = params.map(lambda t: t.requires_grad_(requires_grad))
    return h.requires_grad_(requires_grad), params


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mixer", ["conv", "double-line"])
def test_opcheck_metamamba_block(device, mixer):
    h, params = _block_args(device, mixer)
    config = (mixer, 3, False, 1e-5)
    torch.library.opcheck(torch.ops.dmm.metamamba_block_fwd.default, (h, *params, *config),
                          test_utils=OPCHECK_TESTS)
    h, params = h.detach(), params.map(torch.Tensor.detach)
    _, *saved = torch.ops.dmm.metamamba_block_fwd(h, *params, *config)
    dout = torch.randn_like(h)
    torch.library.opcheck(torch.ops.dmm.metamamba_block_bwd.default,
                          (dout, h, *params, *saved, *config), test_utils=OPCHECK_TESTS)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mixer", ["conv", "double-conv"])
def test_opcheck_metamamba_step(device, mixer):
    _, params = _block_args(device, mixer, requires_grad=False)
    cache = dmm_kernels.allocate_step_cache(2, params, mixer, device=device)
    cache["ssm_state"].normal_()
    h_t = torch.randn(2, 8, device=device)
    torch.library.opcheck(
        torch.ops.dmm.metamamba_step.default,
        (h_t, cache["mixer1_cache"], cache["mixer2_cache"], cache["ssm_state"], *params,
         -torch.exp(params.A_log), mixer, 3, False, 1e-5, 4),
        test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    """A function calling every op compiles without graph breaks and matches eager."""
    u, delta, A, B, C, D, z, delta_bias = _scan_inputs(device, requires_grad=False)
    mix_u, mix_w, mix_b = _mix_inputs(device, "conv", True, requires_grad=False)
    h, params = _block_args(device, "line", requires_grad=False)

    def f(u, delta, mix_u, h):
        y = dmm_kernels.selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True)
        m = dmm_kernels.modal_mix(mix_u, mix_w, mix_b, "conv", 3, 2)
        out = dmm_kernels.metamamba_block(h, params, "line")
        return y.sum() + m.sum() + out.sum()

    inputs = [t.clone().requires_grad_() for t in (u, delta, mix_u, h)]
    eager = f(*inputs)
    eager_grads = torch.autograd.grad(eager, inputs)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    got = compiled(*inputs)
    got_grads = torch.autograd.grad(got, inputs)
    torch.testing.assert_close(got, eager)
    for a, b in zip(got_grads, eager_grads):
        torch.testing.assert_close(a, b)


def test_reference_switch():
    """DMM_KERNELS_BACKEND=reference turns the compiled ops off; unset, they are used."""
    code = "import dmm_kernels; print(dmm_kernels.HAS_EXTENSION)"
    env = {**os.environ, "DMM_KERNELS_BACKEND": "reference"}
    forced = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                            check=True)
    assert forced.stdout.strip() == "False"
    env.pop("DMM_KERNELS_BACKEND")
    normal = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                            check=True)
    assert normal.stdout.strip() == "True"


def test_fallback_warns_once_when_extension_missing(tmp_path):
    """Without the compiled module the package warns once and still computes."""
    code = (
        "import warnings, torch\n"
        "warnings.simplefilter('always')\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    import dmm_kernels\n"
        "    from dmm_kernels import reference\n"
        "    u = torch.randn(1, 5, 4)\n"
        "    y = dmm_kernels.modal_mix(u, torch.randn(3, 2, 4))\n"
        "    y = dmm_kernels.modal_mix(u, torch.randn(3, 2, 4))\n"
        "print(dmm_kernels.HAS_EXTENSION, sum('reference' in str(x.message) for x in w), tuple(y.shape))\n"
    )
    env = {**os.environ, "DMM_KERNELS_LIBRARY": str(tmp_path / "missing.so")}
    env.pop("DMM_KERNELS_BACKEND", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["False", "1", "(1,", "5,", "4)"]


def test_block_under_autocast_runs_in_autocast_dtype():
    """Under CPU autocast the block computes in bf16 and fp32 parameters still get gradients."""
    h, params = _block_args("cpu", "conv")
    expected = reference.metamamba_block_ref(h.double(), params.map(torch.Tensor.double))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = dmm_kernels.metamamba_block(h, params, "conv")
    assert out.dtype == torch.bfloat16
    scale = expected.abs().max()
    assert (out.double() - expected).abs().max() < 0.03 * scale
    out.float().sum().backward()
    for name, p in params.present().items():
        assert p.grad is not None and p.grad.dtype == p.dtype and torch.isfinite(p.grad).all(), name
