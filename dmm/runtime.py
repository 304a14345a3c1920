"""Where training and evaluation run: device choice, CPU threads, torchrun's process group."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist


def select_device(name: str, local_rank: int = 0) -> torch.device:
    """"auto" -> cuda when available, else cpu; "cuda" -> cuda:<local_rank>."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(name)):
        raise ValueError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name} was requested but torch sees no CUDA GPU "
                             "(torch.cuda.is_available() is False); use --device cpu")
        if name == "cuda":
            name = f"cuda:{local_rank}"
    return torch.device(name)


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(int(threads))


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> DistInfo:
    """Read torchrun's environment; start the process group when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    info = DistInfo(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    if world > 1 and not dist.is_initialized():
        cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
        if cuda:
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return info


def barrier(dist_info: DistInfo) -> None:
    if dist_info.world_size > 1:
        dist.barrier()
