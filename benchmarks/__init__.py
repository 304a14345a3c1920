"""Benchmarks and static kernel reports. Run each as a module from the repository root, e.g.
`python -m benchmarks.scan_speed`, so that they import each other as `benchmarks.*`."""
