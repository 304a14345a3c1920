"""Backend choice (dmm_kernels/backend.py): what runs the ops per device, the forcing switch and
its errors. Each case imports dmm_kernels in a fresh interpreter with its own environment."""
import os
import subprocess
import sys
import warnings

import pytest

import dmm_kernels

needs_extension = pytest.mark.skipif(not dmm_kernels.EXTENSION_LOADED, reason="compiled ops not built")


def run(code, **env_changes):
    env = {k: v for k, v in os.environ.items()
           if k not in ("DMM_KERNELS_BACKEND", "TRITON_INTERPRET")}
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


def test_reference_forced():
    out = run(SHOW, DMM_KERNELS_BACKEND="reference")
    assert out.returncode == 0, out.stderr
    assert [s.strip() for s in out.stdout.split("|")] == ["reference", "reference", "False"]


# An op call after the import: where a switch that cannot be honoured surfaces.
CALL_OP = ("\ntry:\n    dmm_kernels.modal_mix(torch.randn(1, 6, 4), torch.randn(3, 2, 4))\n"
           "except dmm_kernels.BackendError as e:\n    print('BackendError:', e)\n")


def test_unknown_backend_fails_the_ops_not_the_import():
    out = run(SHOW + "\nimport torch" + CALL_OP, DMM_KERNELS_BACKEND="cudnn")
    assert out.returncode == 0 and not out.stderr, out.stderr
    shown, error = out.stdout.splitlines()
    assert [s.strip() for s in shown.split("|")] == ["none", "none", str(dmm_kernels.EXTENSION_LOADED)]
    assert error == ("BackendError: DMM_KERNELS_BACKEND='cudnn' is not a backend: expected one of "
                     "cuda, triton, reference; unset it for the automatic choice")


def test_retired_reference_switch_is_named_not_ignored():
    """DMM_KERNELS_BACKEND=reference is the one switch: the old second one stops the ops with the fix."""
    out = run(SHOW + "\nimport torch" + CALL_OP, DMM_KERNELS_FORCE_REFERENCE="1")
    assert out.returncode == 0 and not out.stderr, out.stderr
    assert out.stdout.splitlines()[1] == ("BackendError: DMM_KERNELS_FORCE_REFERENCE is no longer "
                                          "read: set DMM_KERNELS_BACKEND=reference instead (and "
                                          "unset it)")


@needs_extension
def test_forced_cuda_without_cuda_kernels_fails_the_ops_not_the_import():
    """A build without a toolkit has no CUDA kernels: forcing them names the way out."""
    out = run(NO_CUDA_KERNELS + SHOW + CALL_OP, DMM_KERNELS_BACKEND="cuda")
    assert out.returncode == 0 and not out.stderr, out.stderr
    error = out.stdout.splitlines()[1]
    assert error.startswith("BackendError: DMM_KERNELS_BACKEND=cuda: this build of dmm_kernels "
                            "has no CUDA kernels")
    assert "unset it to use the Triton kernels" in error


IMPORT_ALL = ("import warnings\nwith warnings.catch_warnings(record=True) as caught:\n"
              "    warnings.simplefilter('always')\n    import dmm, dmm.cli, dmm_kernels\n"
              "for w in caught:\n    print(f'{w.category.__name__}: {w.message} ({w.filename})')\n")


@pytest.mark.parametrize("name,code,switches", [
    ("default", "", {}),
    ("reference", "", {"DMM_KERNELS_BACKEND": "reference"}),
    ("triton (interpreter)", "", {"DMM_KERNELS_BACKEND": "triton", "TRITON_INTERPRET": "1"}),
    ("triton for CUDA tensors", NO_CUDA_KERNELS + "torch.cuda.is_available = lambda: True\n", {}),
    ("unknown switch", "", {"DMM_KERNELS_BACKEND": "bogus"}),
])
def test_import_prints_no_warning(name, code, switches):
    """Not from dmm, nor from torch on dmm's behalf (e.g. "Overriding a previously registered
    kernel" when the Triton kernels replace the CPU kernels under the interpreter)."""
    if name != "reference" and not dmm_kernels.EXTENSION_LOADED:
        pytest.skip("compiled ops not built (the import says so, in a warning)")
    if name.startswith("triton"):
        pytest.importorskip("triton")
    out = run(code + IMPORT_ALL, **switches)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "" and out.stderr == "", out.stdout + out.stderr


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


def test_triton_registration_silences_only_torchs_override_warning(monkeypatch):
    """torch <= 2.13 warns when a kernel replaces another of the same key (the Triton kernels
    replacing the CPU kernels under the interpreter); any other warning still shows."""
    pytest.importorskip("triton")
    from dmm_kernels import backend
    from dmm_kernels.triton import ops as triton_ops

    override = ("Warning only once for all operators,  other operators may also be overridden.\n"
                "  Overriding a previously registered kernel for the same operator and the same "
                "dispatch key\n  operator: dmm::selective_scan_fwd(...)")  # torch 2.13's text
    registered = []

    def register(lib, key):
        registered.append(key)
        warnings.warn(override, UserWarning)
        warnings.warn(f"something else about {key}", UserWarning)

    monkeypatch.setattr(triton_ops, "register", register)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backend.register_triton(["CUDA", "CPU"])
    assert registered == ["CUDA", "CPU"]
    assert [str(w.message) for w in caught] == ["something else about CUDA", "something else about CPU"]
