"""The Triton rows of benchmarks/kernel_report.py (which imports this module by name): the best
predicted configuration per kernel, shape and arch from benchmarks/triton_report.py's CSV."""
from triton_report import triton_rows  # noqa: F401
