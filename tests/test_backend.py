"""Backend choice (dmm_kernels/backend.py): what runs the ops per device, the forcing switch and
its errors. Each case imports dmm_kernels in a fresh interpreter with its own environment."""
import os
import subprocess
import sys

import pytest

import dmm_kernels

needs_extension = pytest.mark.skipif(not dmm_kernels.EXTENSION_LOADED, reason="compiled ops not built")


def run(code, **env_changes):
    env = {k: v for k, v in os.environ.items()
           if k not in ("DMM_KERNELS_BACKEND", "DMM_KERNELS_FORCE_REFERENCE", "TRITON_INTERPRET")}
    env.update(env_changes)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


# As if the build had no CUDA kernels (made without a toolkit), on a machine with a GPU.
NO_CUDA_KERNELS = (
    "import torch\n"
    "has_kernel = torch._C._dispatch_has_kernel_for_dispatch_key\n"
    "torch._C._dispatch_has_kernel_for_dispatch_key = "
    "lambda op, key: key != 'CUDA' and has_kernel(op, key)\n")
SHOW = "import dmm_kernels; print(dmm_kernels.BACKEND['cpu'], '|', dmm_kernels.BACKEND['cuda'], '|', dmm_kernels.HAS_EXTENSION)"


@needs_extension
def test_default_cpu_uses_the_cpu_kernels():
    out = run(SHOW)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("|")[0].strip() == "cpu-kernels"


@pytest.mark.parametrize("switch", [{"DMM_KERNELS_BACKEND": "reference"},
                                    {"DMM_KERNELS_FORCE_REFERENCE": "1"}])
def test_reference_forced(switch):
    out = run(SHOW, **switch)
    assert out.returncode == 0, out.stderr
    assert [s.strip() for s in out.stdout.split("|")] == ["reference", "reference", "False"]


def test_unknown_backend_is_an_error():
    out = run(SHOW, DMM_KERNELS_BACKEND="cudnn")
    assert out.returncode != 0
    assert "DMM_KERNELS_BACKEND must be one of cuda, triton, reference; got 'cudnn'" in out.stderr


@needs_extension
def test_forced_cuda_without_cuda_kernels_is_an_error():
    """A build without a toolkit has no CUDA kernels: forcing them names the way out."""
    code = NO_CUDA_KERNELS + SHOW
    out = run(code, DMM_KERNELS_BACKEND="cuda")
    assert out.returncode != 0
    assert "DMM_KERNELS_BACKEND=cuda: this build of dmm_kernels has no CUDA kernels" in out.stderr


@needs_extension
def test_cuda_tensors_get_triton_when_the_build_has_no_cuda_kernels():
    """`pip install .` on a CUDA torch without nvcc: CUDA tensors run the Triton kernels."""
    pytest.importorskip("triton")
    code = (NO_CUDA_KERNELS + "torch.cuda.is_available = lambda: True\n" + SHOW +
            "\nprint(has_kernel('dmm::selective_scan_fwd', 'CUDA'))")
    out = run(code)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [s.strip() for s in lines[0].split("|")] == ["cpu-kernels", "triton", "True"]
    assert lines[1] == "True"  # the Triton functions are the ops' CUDA kernels now


@needs_extension
def test_triton_interpreter_runs_cpu_tensors():
    pytest.importorskip("triton")
    out = run(SHOW + "\nimport torch\nu = torch.randn(1, 6, 4)\n"
              "print(dmm_kernels.modal_mix(u, torch.randn(3, 2, 4)).shape)",
              DMM_KERNELS_BACKEND="triton", TRITON_INTERPRET="1")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [s.strip() for s in lines[0].split("|")] == ["triton (interpreter)", "triton", "True"]
    assert lines[1] == "torch.Size([1, 6, 4])"
