"""Train the correspondence model from raw video: ``python -m correspondence.train --config configs/uvc_cpu.yaml``.

Three stages in one resumable run: (0) the colour autoencoder, then frozen; (1) warm-up on whole patches;
(2) region-level localization + fine-grained matching. Runs as one process or under
``torchrun --nproc_per_node=N`` (DistributedDataParallel: gloo on CPU, nccl on GPU).
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from birdmesh.color import rgb_to_lab
from birdmesh.checkpoint import read_checkpoint, save_checkpoint
from birdmesh.config import config_to_dict
from birdmesh.errors import cli_entry
from birdmesh.runtime import native_bf16
from birdmesh.training import (append_csv_row, cleanup_distributed, drop_csv_rows_after, linear_decay_lr,
                               replicas_identical, start_training, training_main, wrap_distributed)

from .checkpoint import export_weights
from .config import UVCConfig
from .data import FramePairs, build_frame_cache, infinite_loader
from .model import UVC, PairBatch, autoencoder_loss

STAGE_AE, STAGE_WARMUP, STAGE_TRACK = 0, 1, 2


def stage_of(step: int, cfg: UVCConfig) -> int:
    """Which stage a global step belongs to: AE steps first, then warm-up, then localization + matching."""
    if step < cfg.train.ae_steps:
        return STAGE_AE
    return STAGE_WARMUP if step < cfg.train.ae_steps + cfg.train.warmup_steps else STAGE_TRACK


def total_steps(cfg: UVCConfig) -> int:
    return cfg.train.ae_steps + cfg.train.steps


def _optimizers(model: UVC, cfg: UVCConfig):
    ae_opt = torch.optim.Adam(model.autoencoder.parameters(), lr=cfg.train.ae_lr)
    enc_opt = torch.optim.Adam(model.encoder.parameters(), lr=cfg.train.lr)
    return ae_opt, enc_opt


def encoder_lr(step: int, cfg: UVCConfig) -> float:
    """The encoder's learning rate: constant, then linear decay to lr * final_lr_factor over the last
    ``decay_steps`` steps of the run."""
    end = total_steps(cfg)
    return linear_decay_lr(step, cfg.train.lr, end - cfg.train.decay_steps, end, cfg.train.final_lr_factor)


def train(cfg: UVCConfig, max_steps: int | None = None) -> Path:
    """Run (or resume) training; return the checkpoint path. ``max_steps`` stops early (tests, time budgets)."""
    rank, world, device, out = start_training(cfg, cfg.train)
    ckpt_path = out / "last.pt"
    if rank == 0:
        cache_files = build_frame_cache(cfg.data)
    if world > 1:
        dist.barrier()
    if rank != 0:
        cache_files = build_frame_cache(cfg.data)  # all cached by rank 0 already: only lists the files
    model = UVC(cfg.model).to(device)
    model.encoder_bf16 = cfg.train.bf16 and native_bf16(device)
    if rank == 0:
        print(f"encoder precision: {'bfloat16 autocast' if model.encoder_bf16 else 'float32'}", flush=True)
    ae_opt, enc_opt = _optimizers(model, cfg)
    step = 0
    if ckpt_path.exists():
        ckpt = read_checkpoint(ckpt_path)
        model.load_state_dict(ckpt["state_dict"])
        if "encoder_optimizer" in ckpt:  # absent when the run was seeded from shipped weights (--init-from)
            ae_opt.load_state_dict(ckpt["ae_optimizer"])
            enc_opt.load_state_dict(ckpt["encoder_optimizer"])
        step = int(ckpt["step"])
        if rank == 0:
            print(f"resumed from {ckpt_path} at step {step}", flush=True)
            drop_csv_rows_after(out / "log.csv", step)
    dataset = FramePairs(cache_files, cfg.data, seed=cfg.train.seed)
    batches = infinite_loader(dataset, cfg.train.batch_size, cfg.data.workers, step, rank, world)
    ae_net, uvc_net = wrap_distributed(model.autoencoder, world, device), None
    end = total_steps(cfg) if max_steps is None else min(total_steps(cfg), step + max_steps)
    bar = tqdm(total=end, initial=step, desc="train uvc", disable=rank != 0, dynamic_ncols=True)
    tic = time.time()
    while step < end:
        stage = stage_of(step, cfg)
        batch = next(batches)
        pair = PairBatch(batch["reference"].to(device), batch["target"].to(device), batch["patch_xy"])
        if stage == STAGE_AE:
            both = torch.cat([pair.reference, pair.target])
            lab = rgb_to_lab(F.interpolate(both, size=cfg.data.patch_size, mode="bilinear", antialias=True))
            loss = autoencoder_loss(ae_net, lab, cfg.loss.lab_weights)
            stats, optimizer = {}, ae_opt
        else:
            if uvc_net is None:
                model.autoencoder.requires_grad_(False)
                uvc_net = wrap_distributed(model, world, device)
            phase_start = cfg.train.ae_steps + (0 if stage == STAGE_WARMUP else cfg.train.warmup_steps)
            reject = step - phase_start >= cfg.loss.outlier_warmup_steps
            loss, stats = uvc_net(pair, cfg.loss, stage, cfg.data.ref_patch_size, cfg.data.patch_size, reject)
            optimizer = enc_opt
            for group in enc_opt.param_groups:
                group["lr"] = encoder_lr(step, cfg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        bar.update(1)
        if rank == 0 and (step % cfg.train.log_every == 0 or step == end):
            rate = cfg.train.log_every * cfg.train.batch_size * world / max(time.time() - tic, 1e-9)
            tic = time.time()
            row = {"step": step, "stage": stage, "loss": f"{loss.item():.5f}", "pairs_per_s": f"{rate:.2f}",
                   "lr": f"{optimizer.param_groups[0]['lr']:.3g}"}
            row.update({k: f"{v.item():.5f}" for k, v in stats.items()})
            bar.set_postfix(loss=row["loss"], stage=stage)
            append_csv_row(out / f"log_stage{stage}.csv", row)
        if rank == 0 and (step % cfg.train.checkpoint_every == 0 or step == end):
            save_checkpoint(ckpt_path, config_to_dict(cfg), model.state_dict(), step, ae_optimizer=ae_opt.state_dict(),
                            encoder_optimizer=enc_opt.state_dict())
    bar.close()
    if world > 1:
        same = replicas_identical(model, world)
        if rank == 0:
            print(f"replicas identical across {world} ranks: {same}", flush=True)
    cleanup_distributed(world)
    return ckpt_path


@cli_entry
def main(argv: list[str] | None = None) -> None:
    training_main(argv, __doc__.splitlines()[0], "configs/uvc_cpu.yaml", UVCConfig, train, export_weights)


if __name__ == "__main__":
    main()
