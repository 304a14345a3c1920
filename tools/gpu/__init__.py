"""The device run's Python steps (tools/gpu_check.sh calls them as `python -m tools.gpu.NAME`)."""
