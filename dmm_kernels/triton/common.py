"""Element-wise math shared by the Triton kernels, in core `tl` operations only: libdevice
functions do not run under TRITON_INTERPRET=1, and bf16 / fp16 values are upcast before any
arithmetic (the interpreter computes bf16 arithmetic wrongly)."""
import os

import triton
import triton.language as tl

# Triton's interpreter runs the kernels (on CPU tensors): one autotuning configuration, no timing.
INTERPRETING = os.environ.get("TRITON_INTERPRET", "") not in ("", "0")


@triton.jit
def log1p(x):
    """log(1 + x) to a few ulp for x > -1 (Goldberg): exact where 1 + x rounds to 1."""
    w = 1.0 + x
    return tl.where(w == 1.0, x, tl.log(w) * (x / (w - 1.0)))


@triton.jit
def sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def softplus(x):
    """torch.nn.functional.softplus with beta 1 and threshold 20 (what mamba-ssm applies)."""
    return tl.where(x <= 20.0, log1p(tl.exp(tl.minimum(x, 20.0))), x)


@triton.jit
def silu(x):
    return x * sigmoid(x)
