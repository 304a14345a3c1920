"""Development tools (tools/gpu: the device run). Run the Python ones as modules from the
repository root, e.g. `python -m tools.gpu.bench_block`."""
