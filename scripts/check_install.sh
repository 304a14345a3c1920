#!/usr/bin/env bash
# The install a new user types, checked in fresh venvs (CI runs this; so can you):
#   1. a venv with torch (default torch==2.13.0, the CPU build), then `pip install .` as typed
#      (build isolation on): import, the build's record of its torch, one op call;
#   2. `pip wheel .` there, the wheel installed into a second fresh venv with the same torch;
#   3. `pip install --no-build-isolation .` in the first venv (with the build requirements);
#   4. with no C++ compiler (CXX pointing nowhere) the build stops with an error naming it.
# Usage: bash scripts/check_install.sh [WORK_DIR]   (env: CHECK_TORCH_SPEC)
set -euo pipefail
cd "$(dirname "$0")/.."
src="$PWD"
work="${1:-$(mktemp -d)}"
torch_spec="${CHECK_TORCH_SPEC:-torch==2.13.0}"
mkdir -p "$work"
log="$work/log"
: > "$log"
# Nothing from the caller's build switches: the build must decide by itself.
unset DMM_FORCE_CUDA DMM_SKIP_CUDA_BUILD CUDA_HOME CUDA_PATH
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"

step() { echo "check_install: $*"; }
fail() { tail -n 60 "$log"; echo "check_install: FAILED: $* (log: $log)" >&2; exit 1; }
elapsed() { echo "$(( $(date +%s) - $1 )) s"; }

new_venv() {  # new_venv DIR: a fresh venv holding only torch
  rm -rf "$1"
  python3 -m venv "$1"
  "$1/bin/python" -m pip install -q "$torch_spec" >> "$log" 2>&1 || fail "installing $torch_spec into $1"
}

smoke() {  # smoke VENV: import from outside the checkout, check the build record, call one op
  (cd "$work" && "$1/bin/python" - <<'EOF') || fail "smoke test in $1"
import torch
import dmm_kernels
from dmm import MetaMambaBlock

assert dmm_kernels.HAS_EXTENSION, dmm_kernels.EXTENSION_ERROR
info = dmm_kernels.BUILD_INFO
assert info["torch"] == torch.__version__, (info, torch.__version__)
u, delta = torch.randn(2, 4, 8), torch.rand(2, 4, 8)
A, B, C = -torch.rand(4, 3), torch.randn(2, 3, 8), torch.randn(4, 3)   # C constant (E, N)
out = dmm_kernels.selective_scan(u, delta, A, B, C, delta_softplus=True)
ref = dmm_kernels.reference.selective_scan_ref(u, delta, A, B, C, delta_softplus=True)
torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
assert MetaMambaBlock(16)(torch.randn(1, 6, 16)).shape == (1, 6, 16)
print(f"check_install:   {info['decision']}; torch {torch.__version__}; "
      f"{dmm_kernels.__file__}")
EOF
}

start=$(date +%s)
step "1. fresh venv with $torch_spec, then \`pip install .\` (as typed)"
new_venv "$work/venv-a"
t=$(date +%s)
(cd "$src" && "$work/venv-a/bin/pip" install .) >> "$log" 2>&1 || fail "pip install ."
step "   pip install . took $(elapsed "$t")"
smoke "$work/venv-a"

step "2. \`pip wheel .\`, the wheel into a second fresh venv with $torch_spec"
t=$(date +%s)
rm -rf "$work/wheels"
(cd "$src" && "$work/venv-a/bin/pip" wheel --no-deps -w "$work/wheels" .) >> "$log" 2>&1 \
  || fail "pip wheel ."
step "   pip wheel . took $(elapsed "$t")"
new_venv "$work/venv-b"
"$work/venv-b/bin/python" -m pip install "$work"/wheels/decision_metamamba-*.whl >> "$log" 2>&1 \
  || fail "installing the wheel into venv-b"
smoke "$work/venv-b"

step "3. \`pip install --no-build-isolation .\` (setuptools, wheel, ninja installed first)"
t=$(date +%s)
"$work/venv-a/bin/python" -m pip install -q "setuptools>=77" wheel ninja >> "$log" 2>&1 \
  || fail "installing the build requirements"
(cd "$src" && "$work/venv-a/bin/pip" install --no-build-isolation --no-deps --force-reinstall .) \
  >> "$log" 2>&1 || fail "pip install --no-build-isolation ."
step "   pip install --no-build-isolation . took $(elapsed "$t")"
smoke "$work/venv-a"

step "4. no C++ compiler: the build must say so"
if out=$(cd "$src" && CXX=/nonexistent/c++ "$work/venv-a/bin/pip" wheel --no-deps -w "$work/no-cxx" . 2>&1)
then
  fail "the build succeeded without a C++ compiler"
fi
echo "$out" | grep -q "no C++ compiler: CXX=/nonexistent/c++ is not found on PATH" \
  || { echo "$out" | tail -n 20; fail "the missing-compiler error does not name the compiler"; }
step "   $(echo "$out" | grep -o 'dmm_kernels build: no C++ compiler[^.]*' | head -n 1)"
step "passed in $(elapsed "$start")"
