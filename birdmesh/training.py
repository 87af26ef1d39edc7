"""Pieces every training script shares: torchrun/DDP setup, wrapping, CSV logging."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from .runtime import resolve_device


def setup_distributed(device_name: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device) from torchrun's environment; starts the process group when world > 1.

    gloo on CPU, nccl on CUDA (one GPU per local rank). A plain ``python -m`` run is rank 0 of 1.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = resolve_device(device_name)
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def wrap_distributed(module: torch.nn.Module, world: int, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around ``module`` when world > 1, else the module itself."""
    if world == 1:
        return module
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def cleanup_distributed(world: int) -> None:
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


def append_csv_row(path: str | Path, row: dict) -> None:
    """Append one row to a CSV log, writing the header when the file is new."""
    path = Path(path)
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def replicas_identical(module: torch.nn.Module, world: int) -> bool:
    """True when every rank holds the same parameters (a checksum compared with all_reduce MIN/MAX)."""
    if world == 1:
        return True
    with torch.no_grad():
        flat = torch.cat([p.detach().double().flatten() for p in module.parameters()])
        weights = torch.arange(1, flat.numel() + 1, dtype=torch.float64, device=flat.device).remainder(97) + 1
        checksum = (flat * weights).sum().reshape(1)
        low, high = checksum.clone(), checksum.clone()
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
    return bool(low.item() == high.item())
