"""Train the CMR mesh predictor on synthetic birds: ``python -m mesh_recon.train --config configs/cmr_cpu.yaml``.

Images come from ``mesh_recon.synth``, generated on the fly in DataLoader workers (batch k of rank r is samples
(k * world + r) * B ... of dataset ``data.seed``, so a resumed run sees new images) or read from a folder of
``python -m mesh_recon.synth images``. Resumes from ``<out_dir>/last.pt``; logs ``log.csv``; runs as one process or
under ``torchrun --nproc_per_node=N`` (DistributedDataParallel: gloo on CPU, nccl on GPU).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from birdmesh.checkpoint import read_checkpoint, save_checkpoint
from birdmesh.config import config_to_dict
from birdmesh.errors import UserError, cli_entry
from birdmesh.training import (append_csv_row, cleanup_distributed, drop_csv_rows_after, linear_decay_lr,
                               start_training, training_main, wrap_distributed)

from .articulated import ArticulatedPredictor, init_from_free_predictor, spread_viewpoints
from .articulated_losses import articulated_losses
from .bird_model import load_bird_model
from .checkpoint import VERSION, export_weights
from .losses import mask_barrier, predictor_losses
from .predictor import MeshPredictor
from .predictor_config import CMRConfig, DataConfig, LossConfig
from .predictor_networks import stem_features
from .render import SoftRenderer, SoftRenderSettings
from .synth import SynthBirdImages, generate_batch
from .skinned_template import SkinnedTemplate
from .synth_camera import MIRROR, load_cub_rotations
from .template import bird_template_init

BATCH_KEYS = ("image", "mask", "kp", "cam", "verts", "body_pose", "bone_scale")


class SynthBatches(torch.utils.data.IterableDataset):
    """Endless batches (dicts of BATCH_KEYS plus ``mask_barrier``) for one rank, from ``first_step`` on.

    Worker w of W yields the batches of steps first_step + w, + W, ...; the DataLoader interleaves them in order.
    """

    def __init__(self, cfg: DataConfig, loss: LossConfig, size: int, batch: int, first_step: int, rank: int,
                 world: int):
        super().__init__()
        self.cfg, self.loss, self.size, self.batch = cfg, loss, size, batch
        self.first_step, self.rank, self.world = first_step, rank, world
        self.folder = SynthBirdImages(cfg.folder) if cfg.folder else None
        if self.folder is not None and self.folder.size != size:
            raise ValueError(f"data.folder: expected {size} px images (model.image_size), got {self.folder.size}")

    def make_batch(self, step: int) -> dict[str, Tensor]:
        """The batch of one step: generated (synthetic sample ids) or drawn from the folder (seeded by the step)."""
        first = (step * self.world + self.rank) * self.batch
        if self.folder is None:
            batch = generate_batch(self.batch, self.size, self.cfg.seed, first, self.cfg.synth,
                                   self.cfg.data_dir or None)
        else:
            rng = np.random.default_rng([self.cfg.seed, step, self.rank])
            items = [self.folder[int(i)] for i in rng.integers(len(self.folder), size=self.batch)]
            batch = {k: torch.stack([item[k] for item in items]) for k in BATCH_KEYS}
        batch = {k: batch[k] for k in BATCH_KEYS}
        batch["mask_barrier"] = mask_barrier(batch["mask"], self.loss.barrier_sharpness)
        return batch

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        step = self.first_step + worker
        while True:
            yield self.make_batch(step)
            step += workers


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # one thread per data process: the trainer owns the other cores


class TrainingStep(nn.Module):
    """Predictor + renderer + losses as one module, so DistributedDataParallel sees a (loss, stats) forward."""

    def __init__(self, predictor: MeshPredictor | ArticulatedPredictor, loss_cfg: LossConfig):
        super().__init__()
        self.predictor, self.loss_cfg = predictor, loss_cfg
        self.renderer = SoftRenderer(SoftRenderSettings(loss_cfg.render_size, loss_cfg.sigma, loss_cfg.gamma))
        self.articulated = isinstance(predictor, ArticulatedPredictor)
        if self.articulated:
            self.register_buffer("laplacian", predictor.template.laplacian(), persistent=False)

    def features(self, images: Tensor) -> list:
        return stem_features(self.predictor.encoder, images)

    def forward(self, batch: dict, use_gt_camera: bool = False) -> tuple[Tensor, dict]:
        pred = self.predictor(batch["image"])
        if self.articulated:
            return articulated_losses(pred, batch, self.renderer, self.loss_cfg, self.laplacian,
                                      self.predictor.template.canonical_scale, self.features, use_gt_camera)
        render_cams = batch["cam"] if use_gt_camera else None
        return predictor_losses(pred, batch, self.renderer, self.loss_cfg, self.features, render_cams)


def learning_rate(step: int, cfg: CMRConfig) -> float:
    """Constant, then linear decay to lr * final_lr_factor over the last ``decay_fraction`` of the steps."""
    t = cfg.train
    return linear_decay_lr(step, t.lr, t.steps * (1 - t.decay_fraction), t.steps, t.final_lr_factor)


def build_predictor(cfg: CMRConfig) -> MeshPredictor | ArticulatedPredictor:
    """A fresh predictor with the bird mean shape and keypoint assignment (needs the shared bird model); an
    articulated one gets the skinned avian template, viewpoint hypotheses spread over CUB's photos and, with
    ``train.init_from_free``, the encoder and texture flow of a free-form predictor's weights."""
    data_dir = cfg.data.data_dir or None
    if cfg.model.shape == "articulated":
        bird = load_bird_model(data_dir)
        model = ArticulatedPredictor(cfg.model)
        rotations = torch.from_numpy(np.concatenate([load_cub_rotations(data_dir),
                                                     MIRROR @ load_cub_rotations(data_dir) @ MIRROR]))
        model.reset_template(SkinnedTemplate.from_bird_model(bird, cfg.model.residual_basis),
                             spread_viewpoints(rotations, cfg.model.camera_hypotheses), bird.bone_mean)
        if cfg.train.init_from_free:
            init_from_free_predictor(model, read_checkpoint(cfg.train.init_from_free)["state_dict"])
        return model
    model = MeshPredictor(cfg.model)
    model.reset_template(*bird_template_init(model.template, cfg.data.data_dir or None))
    return model


def _loader(cfg: CMRConfig, step: int, rank: int, world: int):
    dataset = SynthBatches(cfg.data, cfg.loss, cfg.model.image_size, cfg.train.batch_size, step, rank, world)
    workers = cfg.data.workers
    return iter(torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers,
                                            worker_init_fn=_worker_init if workers else None,
                                            persistent_workers=workers > 0, prefetch_factor=2 if workers else None))


def _log(out: Path, step: int, sums: dict, count: int, rate: float, lr: float) -> dict:
    row = {"step": step, "loss": f"{sums.pop('loss') / count:.5f}", "images_per_s": f"{rate:.2f}", "lr": f"{lr:.3g}"}
    row.update({k: f"{v / count:.5f}" for k, v in sorted(sums.items())})
    append_csv_row(out / "log.csv", row)
    return row


def _resume(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, rank: int) -> int:
    """Load ``last.pt`` into the model and optimizer when it exists; the step to continue from."""
    if not path.exists():
        return 0
    ckpt = read_checkpoint(path)
    seeded = "optimizer" not in ckpt  # a run seeded from shipped weights (--init-from)
    # A seeded run may add a head the weights lack (model.align_stages): it starts from its own initialisation.
    result = model.load_state_dict(ckpt["state_dict"], strict=not seeded)
    if result.unexpected_keys:
        raise UserError(f"{path}: weights the predictor of this config lacks: {', '.join(result.unexpected_keys)}")
    if rank == 0 and result.missing_keys:
        print(f"{path}: new weights keep their initialisation: {', '.join(result.missing_keys)}", flush=True)
    if not seeded:
        optimizer.load_state_dict(ckpt["optimizer"])
    if rank == 0:
        print(f"resumed from {path} at step {ckpt['step']}", flush=True)
        drop_csv_rows_after(path.parent / "log.csv", int(ckpt["step"]))
    return int(ckpt["step"])


def train_step(net: nn.Module, model: nn.Module, optimizer: torch.optim.Optimizer, batch: dict, step: int,
               cfg: CMRConfig) -> dict:
    """One update; returns the step's stats (floats) including ``loss`` and ``skipped`` (1 = non-finite gradient)."""
    lr = learning_rate(step, cfg)
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss, stats = net(batch, step < cfg.train.gt_camera_steps)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip or float("inf"))
    finite = bool(torch.isfinite(norm))  # the same on every rank: DDP has averaged the gradients
    if finite:
        optimizer.step()
    else:
        print(f"step {step}: non-finite gradient, update skipped", flush=True)
    stats = {k: float(v) for k, v in stats.items()}
    return {**stats, "loss": float(loss) if finite else 0.0, "skipped": float(not finite)}


def train(cfg: CMRConfig, max_steps: int | None = None) -> Path:
    """Run (or resume) training; return the checkpoint path. ``max_steps`` stops early (tests, time budgets)."""
    rank, world, device, out = start_training(cfg, cfg.train)
    model = build_predictor(cfg).to(device)  # identical on every rank: the template init is deterministic
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    step = _resume(out / "last.pt", model, optimizer, rank)
    net = wrap_distributed(TrainingStep(model, cfg.loss).to(device), world, device)
    net.train()
    batches = _loader(cfg, step, rank, world)
    end = cfg.train.steps if max_steps is None else min(cfg.train.steps, step + max_steps)
    bar = tqdm(total=end, initial=step, desc="train cmr", disable=rank != 0, dynamic_ncols=True)
    tic, sums, count = time.time(), {}, 0
    while step < end:
        stats = train_step(net, model, optimizer, {k: v.to(device) for k, v in next(batches).items()}, step, cfg)
        step, count = step + 1, count + 1
        bar.update(1)
        sums = {k: sums.get(k, 0.0) + v for k, v in stats.items()}
        if rank == 0 and (step % cfg.train.log_every == 0 or step == end):
            rate = count * cfg.train.batch_size * world / max(time.time() - tic, 1e-9)
            row = _log(out, step, sums, count, rate, learning_rate(step - 1, cfg))
            bar.set_postfix(loss=row["loss"], iou=row.get("iou"))
            tic, sums, count = time.time(), {}, 0
        if rank == 0 and (step % cfg.train.checkpoint_every == 0 or step == end):
            save_checkpoint(out / "last.pt", config_to_dict(cfg), model.state_dict(), step, VERSION,
                            optimizer=optimizer.state_dict())
    bar.close()
    cleanup_distributed(world)
    return out / "last.pt"


@cli_entry
def main(argv: list[str] | None = None) -> None:
    training_main(argv, __doc__.splitlines()[0], "configs/cmr_cpu.yaml", CMRConfig, train, export_weights)


if __name__ == "__main__":
    main()
