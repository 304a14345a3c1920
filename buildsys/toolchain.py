"""What the build of dmm_kernels._C can use: a working C++ compiler (required) and, for the CUDA
kernels, a CUDA torch plus a toolkit the link can use. Imported by setup.py and the tests; no
torch import here (the caller passes torch's versions), so every decision is testable alone.

Decisions are one line each ("dmm_kernels build: ..."); what is missing raises BuildError with
a message that names it and says how to fix it.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sysconfig
import tempfile
from dataclasses import dataclass

PREFIX = "dmm_kernels build:"
DEFAULT_TOOLKITS = ("/usr/local/cuda",)  # where a toolkit is looked for after the nvcc on PATH
PROBE_SOURCE = """#include <Python.h>
#include <cmath>
#include <vector>
int dmm_probe(int n) {
  std::vector<double> v(n, 1.0);
  double s = 0;
#pragma omp parallel for reduction(+ : s)
  for (int i = 0; i < n; ++i) s += std::sqrt(v[i]);
  return static_cast<int>(s);
}
"""


class BuildError(RuntimeError):
    """The extension cannot be built here; the message names what is missing."""


def _flag(env, name: str) -> bool:
    return env.get(name, "") not in ("", "0")


# ---- C++ -------------------------------------------------------------------------------------
def check_cxx(env=os.environ, python_include: str | None = None) -> str:
    """Raise BuildError unless the compiler torch will use ($CXX, else c++) exists and builds a
    shared library with OpenMP against Python's headers. Returns the compiler's path."""
    command = shlex.split(env.get("CXX") or "c++")
    exe = shutil.which(command[0], path=env.get("PATH")) if command else None
    if exe is None:
        origin = f"CXX={env['CXX']}" if env.get("CXX") else "`c++` (the default; set CXX for another)"
        raise BuildError(
            f"{PREFIX} no C++ compiler: {origin} is not found on PATH. dmm_kernels needs one to "
            "build its kernels: install g++ (Debian/Ubuntu: apt-get install g++; Fedora: dnf "
            "install gcc-c++; macOS: xcode-select --install) or point CXX at a compiler")
    include = python_include or sysconfig.get_paths()["include"]
    if not os.path.isfile(os.path.join(include, "Python.h")):
        raise BuildError(
            f"{PREFIX} Python.h is not in {include}: install the Python development headers "
            "(Debian/Ubuntu: apt-get install python3-dev, or python3.X-dev for your Python)")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.cpp")
        with open(src, "w") as f:
            f.write(PROBE_SOURCE)
        cmd = [exe, *command[1:], "-std=c++17", "-shared", "-fPIC", "-fopenmp", f"-I{include}",
               src, "-o", os.path.join(tmp, "probe.so")]
        try:
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=dict(env))
        except (OSError, subprocess.TimeoutExpired) as e:
            raise BuildError(f"{PREFIX} the C++ compiler {exe} could not run: {e}") from e
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-8:])
        raise BuildError(
            f"{PREFIX} the C++ compiler {exe} cannot build a C++17 shared library with OpenMP "
            f"(-fopenmp) against Python.h; its output:\n{tail}\nInstall a working g++ (with its "
            "libstdc++ and libgomp), or point CXX at one")
    return exe


# ---- CUDA ------------------------------------------------------------------------------------
def _cuda_lib_dir(home: str) -> str:
    """The library folder torch's CUDAExtension links from: lib64, else lib."""
    lib64 = os.path.join(home, "lib64")
    return lib64 if os.path.exists(lib64) else os.path.join(home, "lib")


def nvcc_release(home: str) -> str | None:
    """'13.0' from `nvcc --version`, or None when it does not run."""
    try:
        out = subprocess.run([os.path.join(home, "bin", "nvcc"), "--version"], capture_output=True,
                             text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"release (\d+)\.(\d+)", out)
    return f"{match.group(1)}.{match.group(2)}" if match else None


def toolkit_problem(home: str, torch_cuda: str) -> str | None:
    """Why the toolkit at `home` cannot build the CUDA kernels for torch's CUDA, or None."""
    nvcc = os.path.join(home, "bin", "nvcc")
    if not os.access(nvcc, os.X_OK):
        return f"no nvcc at {nvcc}"
    if not os.path.isfile(os.path.join(home, "include", "cuda_runtime.h")):
        return f"no CUDA headers in {os.path.join(home, 'include')} (cuda_runtime.h)"
    lib = _cuda_lib_dir(home)
    if not os.path.exists(os.path.join(lib, "libcudart.so")):
        return f"no libcudart.so in {lib}, which the link (-lcudart) needs"
    release = nvcc_release(home)
    if release is None:
        return f"{nvcc} --version does not run"
    if release.split(".")[0] != torch_cuda.split(".")[0]:
        return (f"nvcc {release} at {home} does not match torch's CUDA {torch_cuda} "
                "(torch refuses to mix CUDA major versions)")
    return None


def toolkit_candidates(env=os.environ, defaults=DEFAULT_TOOLKITS) -> list[str]:
    """CUDA_HOME / CUDA_PATH when set (the user's choice, alone); else the toolkit around the
    nvcc on PATH (symlinks resolved; a wrapper script there may point elsewhere, hence) then
    the default locations."""
    chosen = env.get("CUDA_HOME") or env.get("CUDA_PATH")
    if chosen:
        return [chosen]
    found = []
    nvcc = shutil.which("nvcc", path=env.get("PATH"))
    if nvcc:
        found.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    found += defaults
    return list(dict.fromkeys(found))


@dataclass
class CudaDecision:
    with_cuda: bool
    why: str
    cuda_home: str | None = None

    def line(self) -> str:
        what = "CPU + CUDA kernels" if self.with_cuda else "CPU kernels only"
        return f"{PREFIX} {what} ({self.why})"


def cuda_decision(torch_version: str, torch_cuda: str | None, env=os.environ,
                  defaults=DEFAULT_TOOLKITS) -> CudaDecision:
    """CUDA kernels only with a CUDA torch and a usable toolkit; DMM_SKIP_CUDA_BUILD=1 never,
    DMM_FORCE_CUDA=1 always (no GPU needed), raising BuildError when it cannot."""
    if _flag(env, "DMM_SKIP_CUDA_BUILD"):
        return CudaDecision(False, "DMM_SKIP_CUDA_BUILD is set")
    force = _flag(env, "DMM_FORCE_CUDA")
    if torch_cuda is None:
        problem, home = f"torch {torch_version} is a CPU build", None
    else:
        problems = {}
        for home in toolkit_candidates(env, defaults):
            problems[home] = toolkit_problem(home, torch_cuda)
            if problems[home] is None:
                break
        else:
            home = None
        problem = None if home else "no usable CUDA toolkit: " + "; ".join(problems.values())
    if problem:
        if force:
            raise BuildError(f"{PREFIX} DMM_FORCE_CUDA is set but {problem}")
        hint = "" if torch_cuda is None else "; set CUDA_HOME to a CUDA toolkit to build them"
        return CudaDecision(False, problem + hint)
    why = f"torch {torch_version} with CUDA {torch_cuda}, toolkit {home}"
    return CudaDecision(True, why + ("; DMM_FORCE_CUDA is set" if force else ""), home)
