"""Builds dmm_kernels._C: the C++ CPU kernels always, the CUDA kernels when torch has CUDA and a
usable CUDA toolkit is found (nvcc, headers and the libcudart the link needs; no GPU needed).
Overrides: DMM_SKIP_CUDA_BUILD=1, DMM_FORCE_CUDA=1 (fails, naming what is missing, when it
cannot), CUDA_HOME, TORCH_CUDA_ARCH_LIST (default "8.0;9.0"), MAX_JOBS, CXX.

The decisions live in buildsys/toolchain.py; buildsys/dmm_build_backend.py makes `pip install .`
build against the torch already installed in the target environment. The build records what it
did in dmm_kernels/_build_info.json, which dmm_kernels reads at import (BUILD_INFO).
"""
import glob
import json
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(ROOT, "buildsys"))

import toolchain  # noqa: E402  (buildsys/toolchain.py)

METADATA_ONLY = bool({"egg_info", "sdist", "dist_info"} & set(sys.argv[1:]))


def _import_torch():
    try:
        import torch
    except ImportError as e:
        raise SystemExit(f"{toolchain.PREFIX} torch is not importable ({e}): install torch first "
                         "(pip install torch), then pip install .") from e
    return torch


def _decide(torch):
    """The CUDA decision, its one line printed; CUDA_HOME set to the toolkit it chose (before
    torch.utils.cpp_extension reads it)."""
    try:
        decision = toolchain.cuda_decision(torch.__version__, torch.version.cuda, os.environ)
    except toolchain.BuildError as e:
        raise SystemExit(str(e)) from e
    print(decision.line(), flush=True)
    if decision.cuda_home:
        os.environ["CUDA_HOME"] = decision.cuda_home
    return decision


def _nvidia_include_dirs() -> list[str]:
    """CUDA headers shipped as pip wheels (nvidia/cu13/include) that ATen/cuda includes."""
    dirs = []
    for entry in sys.path:
        dirs += glob.glob(os.path.join(entry, "nvidia", "cu*", "include"))
        dirs += glob.glob(os.path.join(entry, "nvidia", "*", "include"))
    return sorted(set(d for d in dirs if os.path.isdir(d)))


def _build_options():
    """(ext_modules, cmdclass) for setup(); none when only metadata or an sdist is asked for."""
    if METADATA_ONLY:
        return [], {}
    torch = _import_torch()
    decision = _decide(torch)
    from torch.utils import cpp_extension

    if decision.cuda_home:
        cpp_extension.CUDA_HOME = decision.cuda_home  # in case it was imported before the choice

    class BuildExt(cpp_extension.BuildExtension):
        """Checks the C++ compiler first (an error naming what is missing, not a compiler
        traceback), and records what was built next to the extension (_build_info.json)."""

        def build_extensions(self):
            try:
                toolchain.check_cxx(os.environ)
            except toolchain.BuildError as e:
                raise SystemExit(str(e)) from e
            super().build_extensions()
            self._record(os.path.dirname(self.get_ext_fullpath("dmm_kernels._C")))

        def copy_extensions_to_source(self):  # editable / --inplace builds
            super().copy_extensions_to_source()
            self._record(self.get_finalized_command("build_py").get_package_dir("dmm_kernels"))

        @staticmethod
        def _record(folder):
            info = {"torch": torch.__version__, "cuda": decision.with_cuda,
                    "decision": decision.line()}
            with open(os.path.join(folder, "_build_info.json"), "w") as f:
                json.dump(info, f, indent=1)

    # csrc/python: the module stub (PyInit__C) that only the Python extension has.
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp") + glob.glob("csrc/block/*.cpp")
                     + glob.glob("csrc/python/*.cpp"))
    cxx_flags = ["-O3", "-fopenmp"]  # torch adds the C++ standard it needs
    include_dirs = [os.path.join(ROOT, "csrc")]
    cmdclass = {"build_ext": BuildExt.with_options(use_ninja=True)}
    if not decision.with_cuda:
        ext = cpp_extension.CppExtension(
            "dmm_kernels._C", sources, include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx_flags}, extra_link_args=["-fopenmp"])
        return [ext], cmdclass
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu"))
    print(f"{toolchain.PREFIX} TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}; "
          f"{len(cuda_sources)} .cu files", flush=True)
    nvcc_flags = ["-O3", "--expt-relaxed-constexpr", "-lineinfo",
                  "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
                  "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__"]
    if os.environ.get("DMM_NVCC_NO_SPILLS") == "1":  # CI: a register spill in any kernel fails the build
        nvcc_flags.append("-Xptxas=--warn-on-spills,--warning-as-error")
    ext = cpp_extension.CUDAExtension(
        "dmm_kernels._C", sources + cuda_sources,
        include_dirs=include_dirs + _nvidia_include_dirs(), define_macros=[("WITH_CUDA", None)],
        extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags}, extra_link_args=["-fopenmp"])
    return [ext], cmdclass


ext_modules, cmdclass = _build_options()
setup(
    packages=find_packages(include=["dmm", "dmm.*", "dmm_kernels"]),
    package_data={"dmm": ["configs/*.yaml"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
