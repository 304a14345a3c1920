"""The build's decisions (buildsys/toolchain.py), its PEP 517 backend and the extension's check of
the torch it was built against. Fake toolkits and compilers in tmp_path; nothing is compiled but
one probe. The real installs (pip install . in fresh venvs) are scripts/check_install.sh, in CI."""
import importlib
import os
import re
import stat
import sys
from pathlib import Path

import pytest

import dmm_kernels
from dmm_kernels import _extension

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "buildsys"))
toolchain = importlib.import_module("toolchain")
backend = importlib.import_module("dmm_build_backend")


def executable(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def fake_toolkit(root: Path, release="13.0", headers=True, cudart=True) -> Path:
    """bin/nvcc printing `release`, include/cuda_runtime.h, lib64 -> lib/libcudart.so."""
    executable(root / "bin" / "nvcc", f"echo 'Cuda compilation tools, release {release}, V{release}.1'")
    (root / "include").mkdir(parents=True, exist_ok=True)
    (root / "lib").mkdir(parents=True, exist_ok=True)
    (root / "lib64").symlink_to("lib")
    if headers:
        (root / "include" / "cuda_runtime.h").write_text("")
    if cudart:
        (root / "lib" / "libcudart.so").write_text("")
    return root


def decide(env, torch_cuda="13.0", defaults=()):
    return toolchain.cuda_decision("2.14.1", torch_cuda, {"PATH": "", **env}, defaults)


# ---- the CUDA decision ------------------------------------------------------------------------
def test_cpu_torch_builds_cpu_kernels(tmp_path):
    d = decide({"CUDA_HOME": str(fake_toolkit(tmp_path / "cuda"))}, torch_cuda=None)
    assert not d.with_cuda
    assert d.line() == "dmm_kernels build: CPU kernels only (torch 2.14.1 is a CPU build)"


def test_cuda_torch_and_usable_toolkit_build_cuda(tmp_path):
    home = fake_toolkit(tmp_path / "cuda")
    d = decide({"CUDA_HOME": str(home)})
    assert d.with_cuda and d.cuda_home == str(home)
    assert d.line().startswith("dmm_kernels build: CPU + CUDA kernels (torch 2.14.1 with CUDA 13.0")


def test_nvcc_wrapper_on_path_is_not_taken_for_a_toolkit(tmp_path):
    """The reported failure: an nvcc wrapper script in /usr/local/bin made CUDA_HOME /usr/local,
    which has no libcudart. The decision looks past it to a usable toolkit."""
    real = fake_toolkit(tmp_path / "cuda-13.0")
    wrapper = executable(tmp_path / "usr-local" / "bin" / "nvcc", f'exec {real}/bin/nvcc "$@"')
    env = {"PATH": str(wrapper.parent)}
    d = decide(env, defaults=(str(real),))
    assert d.with_cuda and d.cuda_home == str(real)
    d = decide(env, defaults=())  # no toolkit beyond the wrapper: CPU, saying why
    assert not d.with_cuda
    assert d.why.startswith(f"no usable CUDA toolkit: no CUDA headers in {tmp_path / 'usr-local' / 'include'}")


@pytest.mark.parametrize("broken,message", [
    ({"cudart": False}, "no libcudart.so in .*lib64, which the link \\(-lcudart\\) needs"),
    ({"headers": False}, "no CUDA headers in .*include \\(cuda_runtime.h\\)"),
    ({"release": "12.8"}, "nvcc 12.8 at .* does not match torch's CUDA 13.0"),
])
def test_unusable_toolkit(tmp_path, broken, message):
    home = fake_toolkit(tmp_path / "cuda", **broken)
    d = decide({"CUDA_HOME": str(home)})
    assert not d.with_cuda
    assert re.search(message, d.why), d.why
    assert "set CUDA_HOME" in d.why
    with pytest.raises(toolchain.BuildError, match="DMM_FORCE_CUDA is set but no usable CUDA toolkit: "
                       + message):
        decide({"CUDA_HOME": str(home), "DMM_FORCE_CUDA": "1"})


def test_switches(tmp_path):
    home = str(fake_toolkit(tmp_path / "cuda"))
    assert decide({"CUDA_HOME": home, "DMM_SKIP_CUDA_BUILD": "1"}).why == "DMM_SKIP_CUDA_BUILD is set"
    assert decide({"CUDA_HOME": home, "DMM_FORCE_CUDA": "1"}).why.endswith("DMM_FORCE_CUDA is set")
    with pytest.raises(toolchain.BuildError, match="DMM_FORCE_CUDA is set but torch 2.14.1 is a CPU build"):
        decide({"CUDA_HOME": home, "DMM_FORCE_CUDA": "1"}, torch_cuda=None)


# ---- the C++ compiler -------------------------------------------------------------------------
def test_missing_compiler_is_named():
    with pytest.raises(toolchain.BuildError,
                       match=r"no C\+\+ compiler: CXX=/nonexistent/c\+\+ is not found on PATH.*g\+\+"):
        toolchain.check_cxx({"CXX": "/nonexistent/c++", "PATH": os.environ["PATH"]})
    with pytest.raises(toolchain.BuildError, match=r"no C\+\+ compiler: `c\+\+` \(the default"):
        toolchain.check_cxx({"PATH": ""})


def test_missing_python_headers_are_named(tmp_path):
    with pytest.raises(toolchain.BuildError, match=f"Python.h is not in {tmp_path}: .*python3-dev"):
        toolchain.check_cxx(dict(os.environ), python_include=str(tmp_path))


def test_broken_compiler_shows_its_output(tmp_path):
    cxx = executable(tmp_path / "c++", "echo 'fatal error: vector: No such file' >&2; exit 1")
    with pytest.raises(toolchain.BuildError, match=r"cannot build a C\+\+17 shared library with "
                       r"OpenMP .*\nfatal error: vector: No such file"):
        toolchain.check_cxx({**os.environ, "CXX": str(cxx)})


def test_working_compiler_passes():
    assert os.path.isabs(toolchain.check_cxx(dict(os.environ)))


# ---- the PEP 517 backend ----------------------------------------------------------------------
def test_backend_finds_the_environments_torch():
    import torch
    folder = backend._target_torch_dir()
    assert folder is not None and Path(folder, "torch", "__init__.py").samefile(torch.__file__)
    assert backend.HAVE_TORCH


def test_backend_asks_for_torch_only_without_one(monkeypatch, capsys):
    monkeypatch.setattr(backend, "HAVE_TORCH", False)
    assert backend.get_requires_for_build_wheel() == ["torch"]
    assert "no torch in the target environment" in capsys.readouterr().err
    monkeypatch.setattr(backend, "HAVE_TORCH", True)
    assert backend._requires(lambda settings: ["x"], None) == ["x"]


# ---- the extension checks the torch it was built against -------------------------------------
def test_extension_built_for_another_torch_is_not_loaded(monkeypatch):
    monkeypatch.setattr(_extension, "BUILD_INFO", {"torch": "1.0.0+cpu"})
    monkeypatch.delenv("DMM_KERNELS_LIBRARY", raising=False)
    loaded, error = _extension._load()
    assert not loaded and "built against torch 1.0.0+cpu but torch" in str(error)
    assert "pip install ." in str(error)


def test_build_info_names_the_decision():
    info = dmm_kernels.BUILD_INFO
    if info is None:
        pytest.skip("this extension was built before builds recorded _build_info.json")
    import torch
    assert info["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert info["decision"].startswith("dmm_kernels build: CPU")


def test_op_sources_are_python_free():
    """libdmm_ops (CMakeLists.txt) compiles csrc/ without csrc/python: only the module stub there
    may use Python (a Python symbol in the op library fails to load in a C++ program)."""
    uses = [p.relative_to(ROOT) for p in (ROOT / "csrc").rglob("*") if p.suffix in (".cpp", ".h", ".cu", ".cuh")
            and re.search(r"#include <Python\.h>|PyObject|PyModule_|pybind11", p.read_text())]
    assert uses == [Path("csrc/python/module.cpp")]


def test_op_library_version_is_the_package_version():
    header = (ROOT / "csrc" / "dmm_ops.h").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    version = re.search(r'^#define DMM_OPS_VERSION "([0-9.]+)"', header, re.M).group(1)
    assert version == re.search(r'^version = "([0-9.]+)"', pyproject, re.M).group(1)
