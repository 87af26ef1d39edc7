"""Losses of the correspondence model, one function each; inputs are plain tensors."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .ops import coordinate_grid


def lab_l1(pred: torch.Tensor, target: torch.Tensor, weights=(1.0, 10.0, 10.0)) -> torch.Tensor:
    """Per-sample weighted L1 on normalized Lab: w_L |dL| + w_a |da| + w_b |db| (UVC uses 1 / 10 / 10).

    Args:
        pred, target: (B, 3, H, W) normalized Lab.
    Returns:
        (B,) per-sample loss (mean over pixels), so outliers can be rejected per sample.
    """
    w = pred.new_tensor(weights).view(1, 3, 1, 1)
    return ((pred - target).abs() * w).mean(dim=(2, 3)).sum(dim=1) / w.sum()


def reject_outliers(per_sample: torch.Tensor, threshold: float | None) -> torch.Tensor:
    """Mean of per-sample losses, with samples above ``threshold`` zeroed (UVC: 2.5; None = keep all)."""
    if threshold is None:
        return per_sample.mean()
    return torch.where(per_sample > threshold, torch.zeros_like(per_sample), per_sample).mean()


def concentration_window_loss(transport: torch.Tensor, ref_hw: tuple[int, int], tar_hw: tuple[int, int],
                              window: int = 8) -> torch.Tensor:
    """Window form of the concentration regularizer (UVC's ``ConcentrationSwitchLoss``, one direction).

    Each target position's matched reference coordinate is the transport-weighted mean of the reference grid;
    within every ``window`` x ``window`` block of the target map (stride ``window``) the matched coordinates should
    stay together: mean squared distance to the block mean.

    Args:
        transport: (B, N_ref, N_tar) affinity normalized over references (dim 1).
    Returns:
        scalar.
    """
    grid = coordinate_grid(*ref_hw, device=transport.device, dtype=transport.dtype)  # (N_ref, 2)
    matched = torch.einsum("nc,bnm->bcm", grid, transport).view(-1, 2, *tar_hw)
    window = min(window, *tar_hw)
    blocks = F.unfold(matched, kernel_size=window, stride=window)  # (B, 2 * window^2, n_blocks)
    blocks = blocks.view(matched.shape[0], 2, window * window, -1)
    return ((blocks - blocks.mean(dim=2, keepdim=True)) ** 2).sum(dim=1).mean()


def concentration_hinge_loss(coords: torch.Tensor, half_size: torch.Tensor) -> torch.Tensor:
    """Slide form: tracked coordinates farther from their centre than the box half-size cost their distance.

    Args:
        coords: (B, N, 2) tracked coordinates of one reference patch in the target.
        half_size: (B, 2) allowed half-extent per axis.
    Returns:
        scalar: mean over samples of (1/N) sum ||coord - centre||_2 where outside the box, else 0.
    """
    centre = coords.mean(dim=1, keepdim=True)
    offset = coords - centre
    outside = (offset.abs() > half_size[:, None]).any(dim=2).float()
    return (offset.norm(dim=2) * outside).mean()


def coordinate_cycle_loss(logits: torch.Tensor, ref_hw: tuple[int, int]) -> torch.Tensor:
    """Orthogonal regularizer in coordinate space: reference -> target -> reference returns home (L1).

    Args:
        logits: (B, N_ref, N_tar) affinity logits.
    Returns:
        scalar mean L1 distance between each reference position and its round-trip position.
    """
    forward = torch.softmax(logits, dim=2)  # where each reference goes
    backward = torch.softmax(logits, dim=1)  # where each target comes from
    cycle = forward @ backward.transpose(1, 2)  # (B, N_ref, N_ref), rows sum to 1
    grid = coordinate_grid(*ref_hw, device=logits.device, dtype=logits.dtype)
    return (cycle @ grid - grid).abs().sum(dim=2).mean()
