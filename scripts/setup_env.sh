#!/usr/bin/env bash
# Creates .venv with torch and the package built in place (CUDA kernels too when nvcc is found).
# Usage: bash scripts/setup_env.sh [VENV_DIR]   (env: TORCH_SPEC, TORCH_CUDA_ARCH_LIST, DMM_* build flags)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv}"
torch_spec="${TORCH_SPEC:-torch==2.14.1}"

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip setuptools wheel
"$venv/bin/python" -m pip install -q "$torch_spec"
"$venv/bin/python" -m pip install -q ninja numpy pytest "gymnasium[mujoco]>=1.0" h5py pyyaml tqdm matplotlib

if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then export CUDA_HOME=/usr/local/cuda; fi
# Without a GPU the CUDA kernels cannot run: skip their (slow) build unless DMM_FORCE_CUDA=1.
if [ -z "${DMM_FORCE_CUDA:-}" ] && ! nvidia-smi -L >/dev/null 2>&1; then export DMM_SKIP_CUDA_BUILD=1; fi
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-8.0;9.0}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
# Build in place; print the build decision and every nvcc command (the full log stays in build/).
mkdir -p build
if ! "$venv/bin/python" -m pip install --no-build-isolation -v -e . > build/pip-build.log 2>&1; then
  tail -n 80 build/pip-build.log; echo "setup_env: build failed (full log: build/pip-build.log)" >&2; exit 1
fi
grep -E "dmm_kernels build:" build/pip-build.log || true
grep -oE "nvcc .* -c [^ ]+\.cu" build/pip-build.log | grep -oE "[^ ]+\.cu$" | sed 's/^/compiled with nvcc: /' || true
"$venv/bin/python" -c "import dmm_kernels, sys; print('dmm_kernels extension loaded:', dmm_kernels.EXTENSION_LOADED); sys.exit(0 if dmm_kernels.EXTENSION_LOADED else 1)"
