"""Triton kernels of the dmm ops: GPU kernels that need no CUDA toolkit (Triton compiles them on
the user's GPU) and that run on CPU tensors under TRITON_INTERPRET=1, which is how CI checks them.
dmm_kernels/backend.py decides when they run; ops.py registers them as the ops' kernels."""
