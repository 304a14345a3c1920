"""Wall-clock timing shared by the benchmark scripts."""
import statistics
import time

import torch


def median_ms(fn, device, reps: int, warmup: int = 2) -> float:
    """Median milliseconds of fn() over reps calls after warmup calls. On CUDA, events recorded
    around each call on the current stream (launch gaps included, host syncs excluded)."""
    cuda = torch.device(device).type == "cuda"
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)
