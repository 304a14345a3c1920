"""The roofline model behind every *predicted* kernel time in this project.

No GPU is needed: a kernel's time is predicted from what can be counted on the CPU (global-memory
bytes from the CUDA emulator or the Triton interpreter, SASS instructions from the compiler) as

    predicted = max(bytes / bandwidth, warp instructions / issue rate) + launches * launch cost

Every figure it produces is labelled "predicted" with these inputs beside it; a GPU run measures
the same kernels, and the two are set side by side to calibrate the model.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Device:
    name: str
    bandwidth: float      # HBM bytes / s
    sms: int
    clock_hz: float       # boost clock
    schedulers: int = 4   # warp schedulers per SM, one warp instruction each per cycle

    @property
    def issue_rate(self) -> float:
        """Warp instructions per second, every scheduler issuing every cycle."""
        return self.sms * self.schedulers * self.clock_hz


H100 = Device("H100 SXM", bandwidth=3.35e12, sms=132, clock_hz=1.98e9)
H200 = Device("H200", bandwidth=4.8e12, sms=132, clock_hz=1.98e9)
DEVICES = {"h100": H100, "h200": H200}
LAUNCH_S = 5e-6  # per kernel launch (GEMMs included)


def predict_seconds(bytes_moved: float, thread_instructions: float = 0.0, launches: int = 1,
                    device: Device = H100) -> float:
    """Predicted time of `launches` kernels that together move `bytes_moved` bytes of global memory
    and execute `thread_instructions` instructions summed over threads (32 make one warp
    instruction when every lane is active)."""
    memory_s = bytes_moved / device.bandwidth
    issue_s = thread_instructions / 32.0 / device.issue_rate
    return max(memory_s, issue_s) + launches * LAUNCH_S


def bound(bytes_moved: float, thread_instructions: float, device: Device = H100) -> str:
    """'memory' or 'issue': which side of the roofline the prediction sits on."""
    return ("memory" if bytes_moved / device.bandwidth >= thread_instructions / 32.0 / device.issue_rate
            else "issue")
