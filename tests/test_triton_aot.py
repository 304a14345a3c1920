"""Every Triton kernel compiled ahead of time for sm_80 and sm_90 on the CPU (no GPU needed):
the real compiler rejects what the interpreter lets through (unsupported ops, dtype mixes,
constexpr misuse). The host wrappers run on CPU tensors with kernel launches intercepted; each
launch's argument types and constexprs are compiled with triton.compile for both targets."""
import os

import pytest
import torch

triton = pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET", "") not in ("", "0"):
    pytest.skip("ahead-of-time compilation needs the compiler, not the interpreter",
                allow_module_level=True)

from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

from dmm_kernels import reference  # noqa: E402
from dmm_kernels.triton import block, mix, scan  # noqa: E402

TARGETS = [GPUTarget("cuda", 80, 32), GPUTarget("cuda", 90, 32)]
DTYPES = {torch.float32: "fp32", torch.float64: "fp64", torch.bfloat16: "bf16", torch.float16: "fp16"}


@pytest.fixture
def launches(monkeypatch):
    """Record (kernel, bound arguments) instead of launching."""
    calls = []

    def record(self, *args, grid, warmup, **kwargs):
        calls.append((self, dict(zip(self.arg_names, args)) | kwargs))

    monkeypatch.setattr(JITFunction, "run", record)
    return calls


def _signature(kernel, bound):
    signature, constexprs = {}, {}
    for param in kernel.params:
        value = bound[param.name]
        if param.is_constexpr:
            signature[param.name], constexprs[param.name] = "constexpr", value
        elif isinstance(value, torch.Tensor):
            signature[param.name] = "*" + DTYPES[value.dtype]
        elif isinstance(value, bool):
            signature[param.name] = "i1"
        elif isinstance(value, int):
            signature[param.name] = "i32" if abs(value) < 2**31 else "i64"
        else:
            signature[param.name] = "fp32"
    return signature, constexprs


def _compile_all(calls):
    assert calls, "no kernel was launched"
    for kernel, bound in calls:
        signature, constexprs = _signature(kernel, bound)
        for target in TARGETS:
            compiled = triton.compile(ASTSource(kernel, signature, constexprs), target=target)
            assert compiled.asm.get("cubin"), (kernel.__name__, target)


def _scan_inputs(dtype, grouped):
    batch, E, L, N = 2, 6, 9, 16
    bc = (batch, 2, N, L) if grouped else (batch, N, L)
    return [torch.randn(batch, E, L, dtype=dtype), torch.randn(batch, E, L, dtype=dtype),
            -torch.rand(E, N), torch.randn(*bc, dtype=dtype), torch.randn(*bc, dtype=dtype),
            torch.randn(E), torch.randn(batch, E, L, dtype=dtype), torch.randn(E)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_scan_kernels_compile(launches, dtype):
    args = _scan_inputs(dtype, grouped=dtype == torch.float32)
    scan.scan_fwd(*args, True)
    scan.scan_bwd(torch.randn_like(args[0]), *args, True)
    _compile_all(launches)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_mixer_kernels_compile(launches, dtype):
    u, w, b = torch.randn(2, 7, 40, dtype=dtype), torch.randn(3, 6, 40, dtype=dtype), torch.randn(3, 40, dtype=dtype)
    mix.conv_fwd(u, w, b, 3, 1)
    mix.conv_bwd(torch.randn_like(u), u, w, b, 3, 1)
    _compile_all(launches)


@pytest.mark.parametrize("mixer", ["conv", "double-line"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_block_kernels_compile(launches, mixer, dtype):
    p = reference.make_block_params(48, mixer, dtype=dtype)
    h = torch.randn(2, 7, 48, dtype=dtype)
    block.block_fwd(h, p, mixer, 3, False, 1e-5)
    cache = reference.allocate_step_cache_ref(2, p, mixer, dtype)
    block.step(h[:, 0], cache["mixer1_cache"], cache["mixer2_cache"], cache["ssm_state"], p,
               mixer, 3, False, 1e-5, 0)
    _compile_all(launches)
