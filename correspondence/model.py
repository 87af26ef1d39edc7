"""UVC: one inter-frame affinity for region-level localization and fine-grained matching (Li et al., 2019).

``UVC.forward`` returns ``(loss, stats)`` for a batch of frame pairs; ``warmup_loss`` (phase 1: whole patches)
and ``track_match_loss`` (phase 2: localize the reference patch in the target frame, crop it differentiably and
match it finely) are the two training objectives, written as functions of the model's parts.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from birdmesh.color import rgb_to_lab

from .config import LossConfig, ModelConfig
from .losses import concentration_window_loss, coordinate_cycle_loss, lab_l1, reject_outliers
from .networks import ColorAutoencoder, FrameEncoder, normalize_lab
from .ops import affinity_logits, box_from_coordinates, crop_by_box, soft_argmax_coordinates, transport


@dataclass(frozen=True)
class PairBatch:
    """A batch of training pairs.

    Fields:
        reference: (B, 3, S, S) RGB in [0, 1], the earlier frame (rotated for phase 2).
        target: (B, 3, S, S) RGB in [0, 1], the later frame, same region.
        patch_xy: (B, 2) int top-left corner (x, y) of the phase-2 reference patch in ``reference``.
    """

    reference: torch.Tensor
    target: torch.Tensor
    patch_xy: torch.Tensor


class UVC(nn.Module):
    """The correspondence model: a feature encoder (on L, or on Lab) plus a frozen colour autoencoder."""

    def __init__(self, cfg: ModelConfig = ModelConfig()):
        super().__init__()
        self.encoder = FrameEncoder(cfg.use_layer4, 3 if cfg.encoder_input == "Lab" else 1)
        self.color_dropout = cfg.color_dropout
        self.autoencoder = ColorAutoencoder(cfg.ae_channels)
        self.temperature = cfg.temperature
        self.encoder_bf16 = False  # set by training: TrainConfig.bf16 on a device with native bf16

    def features(self, lab: torch.Tensor, layer2_weight: float = 0.0) -> torch.Tensor:
        """Lab (B, 3, H, W) -> L2-normalized features (B, C, H / 8, W / 8); with ``layer2_weight`` > 0, layer2's
        joined to them (``FrameEncoder.with_layer2``, 128 + C channels, unit norm)."""
        return self.encoder.with_layer2(lab, layer2_weight) if layer2_weight > 0 else self.encoder(lab)

    def forward(self, batch: PairBatch, loss_cfg: LossConfig, phase: int, patch_size: int,
                warmup_size: int, reject: bool) -> tuple[torch.Tensor, dict]:
        color_keep = None
        if self.training and self.encoder.in_channels > 1 and self.color_dropout > 0:
            color_keep = (torch.rand(len(batch.reference), device=batch.reference.device)
                          >= self.color_dropout).float()  # one draw per pair: both frames lose colour together
        if phase == 1:
            ref = F.interpolate(batch.reference, size=warmup_size, mode="bilinear", antialias=True)
            tar = F.interpolate(batch.target, size=warmup_size, mode="bilinear", antialias=True)
            return warmup_loss(self, rgb_to_lab(ref), rgb_to_lab(tar), loss_cfg, reject, color_keep)
        patch = crop_patches(batch.reference, batch.patch_xy, patch_size)
        return track_match_loss(self, rgb_to_lab(patch), rgb_to_lab(batch.target), loss_cfg, reject, color_keep)


def training_features(model: UVC, lab: torch.Tensor, color_keep: torch.Tensor | None = None) -> torch.Tensor:
    """Lab (B, 3, H, W) -> float32 L2-normalized features (B, C, H / 8, W / 8); the encoder runs in bfloat16
    autocast when ``model.encoder_bf16`` (the affinities built on these features stay float32). ``color_keep``
    (B,): see :func:`correspondence.networks.lab_to_network_input`."""
    with torch.autocast(lab.device.type, dtype=torch.bfloat16, enabled=model.encoder_bf16):
        feats = model.encoder(lab, color_keep)
    return F.normalize(feats.float(), dim=1)  # the encoder's own normalization ran in bf16 under autocast


def crop_patches(images: torch.Tensor, top_left: torch.Tensor, size: int) -> torch.Tensor:
    """Integer crops: images (B, C, H, W), top_left (B, 2) as (x, y) -> (B, C, size, size)."""
    return torch.stack([img[:, y:y + size, x:x + size] for img, (x, y) in zip(images, top_left.tolist())])


def _match_and_reconstruct(model: UVC, feat_ref, feat_tar, lab_ref, lab_tar, loss_cfg: LossConfig, reject: bool):
    """Shared fine-grained step: colour of target rebuilt from reference (and back), plus regularizers."""
    logits = affinity_logits(feat_ref, feat_tar, model.temperature)
    ref_hw, tar_hw = tuple(feat_ref.shape[-2:]), tuple(feat_tar.shape[-2:])
    to_target = torch.softmax(logits, dim=1)  # (B, N_ref, N_tar), normalized over references
    to_reference = torch.softmax(logits, dim=2).transpose(1, 2)  # (B, N_tar, N_ref), over targets
    ae = model.autoencoder
    with torch.no_grad():
        code_ref, code_tar = ae.encode(lab_ref), ae.encode(lab_tar)
    recon_tar = ae.decode(transport(code_ref, to_target, tar_hw))
    per_sample = lab_l1(recon_tar, normalize_lab(lab_tar), loss_cfg.lab_weights)
    loss_color = reject_outliers(per_sample, loss_cfg.outlier_threshold if reject else None)
    loss = loss_color
    stats = {"color": loss_color.detach()}
    if loss_cfg.color_switch > 0:
        recon_ref = ae.decode(transport(code_tar, to_reference, ref_hw))
        switch = lab_l1(recon_ref, normalize_lab(lab_ref), loss_cfg.lab_weights).mean()
        loss = loss + loss_cfg.color_switch * switch
        stats["color_switch"] = switch.detach()
    if loss_cfg.concentration > 0:
        conc = (concentration_window_loss(to_target, ref_hw, tar_hw, loss_cfg.concentration_window)
                + concentration_window_loss(to_reference, tar_hw, ref_hw, loss_cfg.concentration_window))
        loss = loss + loss_cfg.concentration * conc
        stats["concentration"] = conc.detach()
    if loss_cfg.coordinate_cycle > 0:
        cycle = coordinate_cycle_loss(logits, ref_hw)
        loss = loss + loss_cfg.coordinate_cycle * cycle
        stats["cycle"] = cycle.detach()
    return loss, stats


def warmup_loss(model: UVC, lab_ref: torch.Tensor, lab_tar: torch.Tensor, loss_cfg: LossConfig,
                reject: bool, color_keep: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """Phase 1: whole-patch affinity; reconstruct the target's colour from the reference.

    Args:
        lab_ref, lab_tar: (B, 3, S, S) Lab, S divisible by 8.
        color_keep: (B,) 1 where a Lab encoder sees the pair's colour, 0 where only L (None: all colour).
    Returns:
        (scalar loss, stats dict of detached scalars).
    """
    keep_both = None if color_keep is None else color_keep.repeat(2)
    feats = training_features(model, torch.cat([lab_ref, lab_tar]), keep_both)
    feat_ref, feat_tar = feats.chunk(2)
    return _match_and_reconstruct(model, feat_ref, feat_tar, lab_ref, lab_tar, loss_cfg, reject)


def track_match_loss(model: UVC, lab_patch: torch.Tensor, lab_frame: torch.Tensor, loss_cfg: LossConfig,
                     reject: bool, color_keep: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """Phase 2: localize the reference patch in the target frame, crop there, match finely.

    The box centre is the soft-argmax of the patch's pixels over the frame (affinity normalized over target
    positions); its size is the patch's. The crop is differentiable w.r.t. the centre, so the reconstruction loss
    trains the localization too.

    Args:
        lab_patch: (B, 3, P, P) reference patch (Lab).
        lab_frame: (B, 3, S, S) target frame (Lab), S >= P, both divisible by 8.
        color_keep: (B,) as in :func:`warmup_loss`.
    """
    feat_patch = training_features(model, lab_patch, color_keep)
    feat_frame = training_features(model, lab_frame, color_keep)
    patch_hw, frame_hw = tuple(feat_patch.shape[-2:]), tuple(feat_frame.shape[-2:])
    coords = soft_argmax_coordinates(affinity_logits(feat_patch, feat_frame, model.temperature), frame_hw)
    half = feat_patch.new_tensor([patch_hw[1] / frame_hw[1], patch_hw[0] / frame_hw[0]]).expand(len(coords), 2)
    box = box_from_coordinates(coords, half)
    # Keep the crop inside the frame; clamp is differentiable inside the allowed range.
    centre = torch.maximum(torch.minimum(box[:, :2], 1 - half), half - 1)
    box = torch.cat([centre, half], dim=1)
    feat_crop = F.normalize(crop_by_box(feat_frame, box, patch_hw), dim=1)
    lab_crop = crop_by_box(lab_frame, box, tuple(lab_patch.shape[-2:]))
    loss, stats = _match_and_reconstruct(model, feat_patch, feat_crop, lab_patch, lab_crop, loss_cfg, reject)
    stats["box_spread"] = (coords - coords.mean(1, keepdim=True)).abs().mean().detach()
    return loss, stats


def autoencoder_loss(ae: nn.Module, lab: torch.Tensor, weights=(1.0, 10.0, 10.0)) -> torch.Tensor:
    """Reconstruction loss of the colour autoencoder (or its DDP wrapper) on Lab (B, 3, H, W), H, W divisible by 8."""
    return lab_l1(ae(lab), normalize_lab(lab), weights).mean()
