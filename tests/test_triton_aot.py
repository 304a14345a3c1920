"""Every Triton kernel compiled ahead of time for sm_80 and sm_90 on the CPU (no GPU needed):
the real compiler rejects what the interpreter lets through (unsupported ops, dtype mixes,
constexpr misuse). The host wrappers run on CPU tensors with kernel launches intercepted
(dmm_kernels.triton.aot); each launch is compiled as the JIT would specialise it, for both
targets, and the scan's autotuning configurations are checked for register spills."""
import os

import pytest
import torch

triton = pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET", "") not in ("", "0"):
    pytest.skip("ahead-of-time compilation needs the compiler, not the interpreter",
                allow_module_level=True)

from dmm_kernels import reference  # noqa: E402
from dmm_kernels.triton import aot, block, mix, scan  # noqa: E402


def _compile_all(launches, check_spills=False):
    assert launches, "no kernel was launched"
    for launch in launches:
        for arch, target in aot.TARGETS.items():
            compiled = aot.compile_launch(launch, target)
            assert compiled.asm.get("cubin"), (launch.name, arch)
            if check_spills:
                res = aot.resources(compiled)
                assert res["n_spills"] == 0 and res["local"] == 0, (launch.name, launch.config, arch, res)


def _scan_inputs(dtype, grouped):
    batch, E, L, N = 2, 6, 9, 16
    bc = (batch, 2, N, L) if grouped else (batch, N, L)
    return [torch.randn(batch, E, L, dtype=dtype), torch.randn(batch, E, L, dtype=dtype),
            -torch.rand(E, N), torch.randn(*bc, dtype=dtype), torch.randn(*bc, dtype=dtype),
            torch.randn(E), torch.randn(batch, E, L, dtype=dtype), torch.randn(E)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_scan_kernels_compile(dtype):
    """float32 at N = 16: every autotuning configuration, none spilling; the other dtypes: the
    configuration these shapes select."""
    args = _scan_inputs(dtype, grouped=dtype == torch.float32)
    with aot.recorded_launches(all_configs=dtype == torch.float32) as launches:
        scan.scan_fwd(*args, True)
        scan.scan_bwd(torch.randn_like(args[0]), *args, True)
    if dtype == torch.float32:
        assert len(launches) == len(scan.FWD_CONFIGS) + len(scan.BWD_CONFIGS)
    _compile_all(launches, check_spills=dtype == torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_mixer_kernels_compile(dtype):
    u, w, b = torch.randn(2, 7, 40, dtype=dtype), torch.randn(3, 6, 40, dtype=dtype), torch.randn(3, 40, dtype=dtype)
    with aot.recorded_launches(all_configs=False) as launches:
        mix.conv_fwd(u, w, b, 3, 1)
        mix.conv_bwd(torch.randn_like(u), u, w, b, 3, 1)
    _compile_all(launches)


@pytest.mark.parametrize("mixer", ["conv", "double-line"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_block_kernels_compile(mixer, dtype):
    p = reference.make_block_params(48, mixer, dtype=dtype)
    h = torch.randn(2, 7, 48, dtype=dtype)
    cache = reference.allocate_step_cache_ref(2, p, mixer, dtype)
    with aot.recorded_launches(all_configs=False) as launches:
        block.block_fwd(h, p, mixer, 3, False, 1e-5)
        block.step(h[:, 0], cache["mixer1_cache"], cache["mixer2_cache"], cache["ssm_state"],
                   p, -p.A_log.float().exp(), mixer, 3, False, 1e-5, 0)
    _compile_all(launches)


@pytest.mark.parametrize("mixer", ["conv", "double-line"])
def test_step_stages_stay_small(mixer):
    """The step's stages at the paper's width (d_model 128, E 256) for sm_90: no spills and at most
    64 registers per thread (the CUDA step's level), with batch 1 spread over several programs."""
    p = reference.make_block_params(128, mixer)
    cache = reference.allocate_step_cache_ref(1, p, mixer, torch.float32)
    with aot.recorded_launches(all_configs=False) as launches:
        block.step(torch.randn(1, 128), cache["mixer1_cache"], cache["mixer2_cache"],
                   cache["ssm_state"], p, -p.A_log.exp(), mixer, 3, False, 1e-5, 0)
    assert len(launches) == (4 if mixer == "conv" else 6)
    for launch in launches:
        res = aot.resources(aot.compile_launch(launch, aot.TARGETS["sm_90"]))
        assert res["n_spills"] == 0 and res["n_regs"] <= 64, (launch.name, res)
    assert max(launch.grid[0] for launch in launches) >= 8  # batch 1 still fills several SMs
