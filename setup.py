"""Builds dmm_kernels._C: the C++ CPU kernels always, the CUDA kernels when torch has CUDA and
nvcc is found (no GPU needed). Overrides: DMM_SKIP_CUDA_BUILD=1, DMM_FORCE_CUDA=1,
TORCH_CUDA_ARCH_LIST (default "8.0;9.0"), MAX_JOBS."""
import glob
import os
import sys

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def _cuda_decision() -> tuple[bool, str]:
    if _flag("DMM_SKIP_CUDA_BUILD"):
        return False, "DMM_SKIP_CUDA_BUILD is set"
    if _flag("DMM_FORCE_CUDA"):
        return True, "DMM_FORCE_CUDA is set"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is a CPU build"
    if CUDA_HOME is None:
        return False, "no CUDA toolkit found (set CUDA_HOME to build the CUDA kernels)"
    return True, f"torch {torch.__version__} has CUDA {torch.version.cuda}, toolkit at {CUDA_HOME}"


def _nvidia_include_dirs() -> list[str]:
    """CUDA headers shipped as pip wheels (nvidia/cu13/include) that ATen/cuda includes."""
    dirs = []
    for entry in sys.path:
        dirs += glob.glob(os.path.join(entry, "nvidia", "cu*", "include"))
        dirs += glob.glob(os.path.join(entry, "nvidia", "*", "include"))
    return sorted(set(d for d in dirs if os.path.isdir(d)))


def _extension():
    with_cuda, why = _cuda_decision()
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp") + glob.glob("csrc/block/*.cpp"))
    cxx_flags = ["-O3", "-fopenmp"]  # torch adds the C++ standard it needs
    include_dirs = [os.path.join(ROOT, "csrc")]
    if not with_cuda:
        print(f"dmm_kernels build: CPU kernels only ({why})", flush=True)
        return CppExtension("dmm_kernels._C", sources, include_dirs=include_dirs,
                            extra_compile_args={"cxx": cxx_flags}, extra_link_args=["-fopenmp"])
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu"))
    print(f"dmm_kernels build: CPU + CUDA kernels ({why}); TORCH_CUDA_ARCH_LIST="
          f"{os.environ['TORCH_CUDA_ARCH_LIST']}; {len(cuda_sources)} .cu files", flush=True)
    nvcc_flags = ["-O3", "--expt-relaxed-constexpr", "-lineinfo",
                  "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
                  "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__"]
    return CUDAExtension("dmm_kernels._C", sources + cuda_sources,
                         include_dirs=include_dirs + _nvidia_include_dirs(),
                         define_macros=[("WITH_CUDA", None)],
                         extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
                         extra_link_args=["-fopenmp"])


setup(
    packages=find_packages(include=["dmm", "dmm.*", "dmm_kernels"]),
    package_data={"dmm": ["configs/*.yaml"]},
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
