"""Wall-clock timing shared by the benchmark scripts."""
import statistics
import time

import torch


def median_ms(fn, device, reps: int, warmup: int = 2) -> float:
    """Median milliseconds of fn() over reps calls after warmup calls; CUDA work is
    synchronised around each call so its time is counted."""
    cuda = torch.device(device).type == "cuda"
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)
