"""Pieces every training script shares: torchrun/DDP setup, wrapping, CSV logging."""
from __future__ import annotations

import argparse
import csv
import os
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from .checkpoint import read_checkpoint, save_checkpoint
from .config import add_config_arguments, format_config, load_config, save_config
from .errors import UserError
from .runtime import resolve_device, seed_everything


def linear_decay_lr(step: int, lr: float, decay_start: float, end: int, final_factor: float) -> float:
    """``lr`` until ``decay_start``, then linearly down to ``lr * final_factor`` at step ``end`` (and after)."""
    if step < decay_start or end <= decay_start:
        return lr
    progress = min(1.0, (step - decay_start) / (end - decay_start))
    return lr * (1 - progress * (1 - final_factor))


def setup_distributed(device_name: str, timeout: timedelta | None = None) -> tuple[int, int, torch.device]:
    """(rank, world size, device) from torchrun's environment; starts the process group when world > 1.

    gloo on CPU, nccl on CUDA (one GPU per local rank). A plain ``python -m`` run is rank 0 of 1. ``timeout``: how
    long a collective may wait for the other ranks (None: torch's default, 30 min for gloo); jobs whose ranks meet
    only at the end (``adapt.batch``) need far longer.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = resolve_device(device_name)
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout)
    return rank, world, device


def wrap_distributed(module: torch.nn.Module, world: int, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around ``module`` when world > 1, else the module itself."""
    if world == 1:
        return module
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                   gradient_as_bucket_view=True)


def cleanup_distributed(world: int) -> None:
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


def append_csv_row(path: str | Path, row: dict) -> None:
    """Append one row to a CSV log, writing the header when the file is new.

    A row with columns the file lacks (a resumed run that logs a new loss term) first widens the file: the header
    gains the new columns and the earlier rows get empty cells, so every value stays under its own name.
    """
    path = Path(path)
    fields = list(row)
    if path.exists():
        with path.open(newline="") as f:
            fields = next(csv.reader(f), [])  # the header only: the rows are read when the file must widen
        missing = [name for name in row if name not in fields]
        if missing:
            fields = fields + missing
            _write_csv(path, fields, _read_csv(path)[1])
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        if f.tell() == 0:
            writer.writeheader()
        writer.writerow(row)


def _read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def _write_csv(path: Path, fields: list[str], rows: list[dict]) -> None:
    """Rewrite a CSV file atomically (temporary file, then rename)."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def drop_csv_rows_after(path: str | Path, step: int) -> None:
    """Keep the rows of a CSV log up to ``step`` (its ``step`` column): a run resumed from an earlier checkpoint
    then logs the lost steps once, not twice. Rewritten atomically; a missing file is left alone."""
    path = Path(path)
    if not path.exists():
        return
    fields, rows = _read_csv(path)
    kept = [row for row in rows if int(row["step"]) <= step]
    if fields and len(kept) < len(rows):
        _write_csv(path, fields, kept)


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


def training_main(argv: list[str] | None, description: str, default_config: str, config_cls, train_fn,
                  export_fn) -> None:
    """The command line every training script shares: --config/--set, --max-steps, --export.

    ``train_fn(cfg, max_steps) -> checkpoint path``; ``export_fn(checkpoint, out)`` writes shipped weights
    (rank 0 only under torchrun).
    """
    parser = argparse.ArgumentParser(description=description)
    add_config_arguments(parser, default_config)
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (resumable)")
    parser.add_argument("--export", default=None, help="after training, write fp16 weights to this path")
    parser.add_argument("--init-from", default=None, metavar="WEIGHTS",
                        help="start a new run (no last.pt yet) from exported weights: their step, fresh optimizers")
    args = parser.parse_args(argv)
    cfg = load_config(config_cls, args.config, args.overrides)
    if args.init_from:
        last = Path(cfg.train.out_dir) / "last.pt"
        if int(os.environ.get("RANK", "0")) == 0:
            seed_run_from_weights(args.init_from, last)
        else:  # no process group yet: wait for rank 0's file so every rank resumes from the same step
            _wait_for_file(last, timeout_s=600.0)
    checkpoint = train_fn(cfg, args.max_steps)
    if args.export and int(os.environ.get("RANK", "0")) == 0:
        print(f"exported {export_fn(checkpoint, args.export)}")


def seed_run_from_weights(weights: str | Path, last: Path) -> None:
    """Write ``last.pt`` from shipped (fp16) weights so a lost run can go on from them.

    The optimizer states are not in shipped weights: the run resumes at the weights' step with fresh ones.
    An existing ``last.pt`` wins (the flag is then a no-op), so the same command can be repeated to resume.
    """
    if last.exists():
        print(f"{last} exists: resuming from it, --init-from ignored", flush=True)
        return
    ckpt = read_checkpoint(weights)
    step = int(ckpt.get("step", 0))
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in ckpt["state_dict"].items()}
    save_checkpoint(last, ckpt["config"], state, step, int(ckpt.get("version", 1)))
    print(f"initialized {last} from {weights} at step {step}", flush=True)


def _wait_for_file(path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise UserError(f"{path}: not written by rank 0 within {timeout_s:.0f} s (--init-from)")
        time.sleep(0.5)


def start_training(cfg, train_cfg) -> tuple[int, int, torch.device, Path]:
    """Common start of a training run: process group, threads, seed (+ rank), output folder with the config
    printed and saved by rank 0. ``train_cfg`` needs ``device``, ``threads``, ``seed`` and ``out_dir``.

    Returns:
        (rank, world size, device, output folder).
    """
    rank, world, device = setup_distributed(train_cfg.device)
    if train_cfg.threads > 0:
        torch.set_num_threads(train_cfg.threads)
    seed_everything(train_cfg.seed + rank)
    out = Path(train_cfg.out_dir)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        print(format_config(cfg), flush=True)
        save_config(cfg, out)
    return rank, world, device, out
