"""Frames the adaptation should not trust blindly: the bird cut by the frame's border, too close to fit in a crop,
or propagated with little confidence; and the map of which crop pixels lie inside the frame at all.

A propagated mask is unknown beyond the frame, so crops are padded there (zeros) and ``inside_frame`` masks the
image losses (``optimize.image_terms``): a silhouette cut by the border must not pull the mesh away from it.
The flags go to report.json ("frame_flags") and to the overlay's corner (``outputs.draw_flags``).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mesh_recon.crop import crop_ndc_to_pixels


def inside_frame(boxes: Tensor, frame_hw: tuple[int, int], size: int) -> Tensor:
    """Which pixel centres of each square crop fall inside the frame: the image losses' mask.

    Args:
        boxes: (B, 4) crop boxes (x0, y0, x1, y1) in the frame's pixel edges (``mesh_recon.crop``);
        frame_hw: (H, W) of the frame; size: the crop side S the losses compare at.
    Returns:
        (B, 1, S, S) float 0/1, 1 where the crop pixel's centre lies in [-0.5, W - 0.5] x [-0.5, H - 0.5].
    """
    B = boxes.shape[0]
    ticks = (2 * torch.arange(size, dtype=boxes.dtype, device=boxes.device) + 1) / size - 1
    grid = torch.stack(torch.meshgrid(ticks, ticks, indexing="xy"), -1).reshape(1, -1, 2).expand(B, -1, -1)
    uv = crop_ndc_to_pixels(grid, boxes)  # (B, S*S, 2)
    H, W = frame_hw
    inside = (uv[..., 0] >= -0.5) & (uv[..., 0] <= W - 0.5) & (uv[..., 1] >= -0.5) & (uv[..., 1] <= H - 0.5)
    return inside.to(boxes.dtype).reshape(B, 1, size, size)


SIDES = ("top", "bottom", "left", "right")


def border_sides(object_masks: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """Which sides of the frame each object reaches.

    Args:
        object_masks: (T, H, W) bool or label masks (> 0 is the object).
        margin: a side counts as reached by an object pixel within ``margin`` of the frame's size from it
            (0: on the outer ring of pixels only).
    Returns:
        (T, 4) bool, columns in ``SIDES`` order (top, bottom, left, right).
    """
    fg = object_masks > 0
    _, H, W = fg.shape
    my, mx = 1 + int(margin * H), 1 + int(margin * W)
    return np.stack([fg[:, :my].any((1, 2)), fg[:, H - my:].any((1, 2)),
                     fg[:, :, :mx].any((1, 2)), fg[:, :, W - mx:].any((1, 2))], 1)


def touches_border(object_masks: np.ndarray) -> np.ndarray:
    """(T, H, W) bool or label masks (> 0 is the object) -> (T,) bool: some object pixel is on the outer ring."""
    return border_sides(object_masks).any(1)


def mesh_overreach(mesh_masks: np.ndarray, object_masks: np.ndarray, margin: float = 0.01) -> list[list[str]]:
    """Per frame, the sides of the frame the rendered mesh touches although the bird does not come within
    ``margin`` of them: a mesh stretched to the border (the failure of close-ups the border masking prevents).

    Args:
        mesh_masks: T rendered silhouettes (H, W) (a list, or stacked); object_masks: (T, H', W') propagated labels
            (> 0 the object), at any size (each side is tested at its own size).
    Returns:
        T lists of side names (``SIDES``), empty where the mesh stays inside the bird's reach.
    """
    mesh = np.concatenate([border_sides(mask[None]) for mask in mesh_masks])  # frame by frame: 720p masks are big
    over = mesh & ~border_sides(object_masks, margin)
    return [[SIDES[i] for i in np.flatnonzero(row)] for row in over]


def mask_confidence(masks: Tensor) -> Tensor:
    """(T, 1, S, S) soft propagated masks -> (T,) mean certainty |2 p - 1| over the pixels p > 0.05 (1 = crisp;
    the background far away is left out: it is always certain). 1 where no pixel qualifies."""
    p = masks[:, 0].float()
    support = p > 0.05
    certainty = ((2 * p - 1).abs() * support).sum((1, 2))
    count = support.sum((1, 2))
    return torch.where(count > 0, certainty / count.clamp_min(1), torch.ones_like(certainty))


def frame_flags(part_indices: np.ndarray, masks: Tensor, boxes: Tensor, valid: Tensor, min_confidence: float,
                max_area_jump: float, max_area_drift: float) -> list[dict]:
    """One dict per frame: {"frame", "truncated", "close_up", "low_confidence", "area_drift"} (plain bools) and
    "confidence".

    Args:
        part_indices: (T, H, W) propagated labels at the processed size (0 background);
        masks: (T, 1, S, S) soft propagated masks in the crops; boxes: (T, 4) crop boxes; valid: (T,) bool.
        min_confidence: ``mask_confidence`` below this is low confidence; max_area_jump: so is the object's area
            changing by more than this factor from the previous frame where it was visible; max_area_drift: area drift
            is its area differing from the first visible frame's by more than this factor (the propagation shrank
            onto part of the bird or spilled onto the background, or the bird came much nearer or went away).
    truncated: the object touches the frame's border. close_up: its crop box is larger than the frame's shorter
    side, so no placement of the crop fits in the frame. A vanished frame (not valid) is never flagged.
    """
    T, H, W = part_indices.shape
    truncated = touches_border(part_indices)
    side = (boxes[:, 2] - boxes[:, 0]).cpu().numpy()
    close_up = side > min(H, W)
    confidence = mask_confidence(masks).cpu().numpy()
    areas = (part_indices > 0).reshape(T, -1).mean(1)
    valid = valid.cpu().numpy()
    flags, previous, first = [], None, None
    for t in range(T):
        jump = drift = False
        if previous is not None and valid[t] and areas[t] > 0:
            ratio, since_first = areas[t] / previous, areas[t] / first
            jump = ratio > max_area_jump or ratio < 1 / max_area_jump
            drift = since_first > max_area_drift or since_first < 1 / max_area_drift
        low = bool(valid[t] and (confidence[t] < min_confidence or jump))
        flags.append({"frame": t, "truncated": bool(valid[t] and truncated[t]),
                      "close_up": bool(valid[t] and close_up[t]), "low_confidence": low, "area_drift": drift,
                      "confidence": round(float(confidence[t]), 3)})
        if valid[t] and areas[t] > 0:
            previous = areas[t]
            first = areas[t] if first is None else first
    return flags
