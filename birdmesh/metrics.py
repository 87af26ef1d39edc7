"""Evaluation metrics: DAVIS region (J) and boundary (F) measures, the semi-supervised protocol,
keypoint PCK and a soft mask IoU.

J and F follow the definitions of the davis2017-evaluation toolkit (``davis2017/metrics.py``,
``davis2017/evaluation.py``): J is the IoU with an empty union scoring 1; F compares 1-pixel
boundaries matched within ceil(0.008 x image diagonal) pixels; the semi-supervised protocol drops the
first and last frames and averages per object.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping

import cv2
import numpy as np
import torch


def _as_bool_pair(pred, gt) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred).astype(bool), np.asarray(gt).astype(bool)
    if pred.shape != gt.shape or pred.ndim not in (2, 3):
        raise ValueError(f"pred, gt: expected two masks of one shape (H, W) or (T, H, W), got "
                         f"{pred.shape} and {gt.shape}")
    return pred, gt


def db_eval_iou(pred, gt) -> float | np.ndarray:
    """Region similarity J = |pred ∩ gt| / |pred ∪ gt|; an empty union scores 1.

    Args:
        pred, gt: bool masks (H, W) or (T, H, W).
    Returns:
        float for (H, W); (T,) float64 for (T, H, W).
    """
    pred, gt = _as_bool_pair(pred, gt)
    inter = (pred & gt).sum(axis=(-2, -1))
    union = (pred | gt).sum(axis=(-2, -1))
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return float(iou) if pred.ndim == 2 else iou


def mask_boundary(mask) -> np.ndarray:
    """1-pixel boundary map of a binary mask, as ``_seg2bmap`` of the DAVIS toolkit.

    A pixel is on the boundary when it differs from its right, lower or lower-right neighbour,
    neighbours outside the image being ignored (so the map sits half a pixel towards the origin).
    Args:
        mask: bool (..., H, W).
    Returns:
        bool (..., H, W).
    """
    mask = np.asarray(mask).astype(bool)
    # Edge replication makes the missing neighbours equal to the pixel itself: they never count.
    padded = np.concatenate([mask, mask[..., -1:, :]], axis=-2)
    padded = np.concatenate([padded, padded[..., :, -1:]], axis=-1)
    right = padded[..., :-1, 1:]
    down = padded[..., 1:, :-1]
    down_right = padded[..., 1:, 1:]
    return (mask != right) | (mask != down) | (mask != down_right)


def boundary_tolerance(height: int, width: int, bound_th: float = 0.008) -> int:
    """Match distance in pixels: ``bound_th`` itself when >= 1, else ceil(bound_th * image diagonal)."""
    if bound_th >= 1:
        return int(bound_th)
    return int(math.ceil(bound_th * math.hypot(height, width)))


def disk(radius: int) -> np.ndarray:
    """Disk structuring element: (2r+1, 2r+1) uint8, 1 where dx^2 + dy^2 <= r^2."""
    offsets = np.arange(-radius, radius + 1)
    return ((offsets[:, None] ** 2 + offsets[None, :] ** 2) <= radius ** 2).astype(np.uint8)


def _dilate(masks: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    return np.stack([cv2.dilate(m.astype(np.uint8), kernel).astype(bool) for m in masks])


def db_eval_boundary(pred, gt, bound_th: float = 0.008) -> float | np.ndarray:
    """Contour accuracy F: boundary precision/recall F-measure within a distance tolerance.

    precision = share of pred boundary pixels within tolerance of a gt boundary pixel, recall the
    converse; F = 2PR / (P + R). Both boundaries empty scores 1, exactly one empty scores 0.
    Args:
        pred, gt: bool masks (H, W) or (T, H, W).
        bound_th: tolerance as a fraction of the image diagonal (< 1) or in pixels (>= 1).
    Returns:
        float for (H, W); (T,) float64 for (T, H, W).
    """
    pred, gt = _as_bool_pair(pred, gt)
    pred3, gt3 = pred.reshape(-1, *pred.shape[-2:]), gt.reshape(-1, *gt.shape[-2:])
    kernel = disk(boundary_tolerance(*pred.shape[-2:], bound_th))
    pred_b, gt_b = mask_boundary(pred3), mask_boundary(gt3)
    n_pred = pred_b.sum(axis=(1, 2)).astype(np.float64)
    n_gt = gt_b.sum(axis=(1, 2)).astype(np.float64)
    pred_hits = (pred_b & _dilate(gt_b, kernel)).sum(axis=(1, 2))
    gt_hits = (gt_b & _dilate(pred_b, kernel)).sum(axis=(1, 2))
    # An empty boundary has precision (or recall) 1 by convention, as in the toolkit.
    precision = np.where(n_pred > 0, pred_hits / np.maximum(n_pred, 1), 1.0)
    recall = np.where(n_gt > 0, gt_hits / np.maximum(n_gt, 1), 1.0)
    total = precision + recall
    f = np.where(total > 0, 2 * precision * recall / np.where(total > 0, total, 1), 0.0)
    return float(f[0]) if pred.ndim == 2 else f


def evaluate_semi_supervised(pred_labels, gt_labels, sequence: str = "") -> dict:
    """Score one sequence by the DAVIS semi-supervised protocol.

    The first and last frames are not scored. Objects are 1..max(gt) (GT value 255, "void", counts as
    background, as the toolkit does); a predicted index above that is an error, as in the toolkit.
    Args:
        pred_labels: (T, H, W) integer object indices.
        gt_labels: (T, H, W) integer object indices, T >= 3.
        sequence: name stored in the rows.
    Returns:
        dict with ``objects`` (list of ids), ``J``/``F`` (per-object means over frames),
        ``J_recall``/``F_recall`` (share of frames scoring > 0.5), ``J_frames``/``F_frames``
        ((num_objects, T - 2) per-frame scores) and ``rows`` (one dict per object with keys
        ``sequence``, ``object``, ``J``, ``F``, ready for ``summarize``).
    """
    pred, gt = np.asarray(pred_labels), np.asarray(gt_labels)
    if pred.shape != gt.shape or gt.ndim != 3:
        raise ValueError(f"pred_labels, gt_labels: expected two (T, H, W) arrays of one shape, got "
                         f"{pred.shape} and {gt.shape}")
    if gt.shape[0] < 3:
        raise ValueError(f"gt_labels: expected at least 3 frames (first and last are not scored), "
                         f"got {gt.shape[0]}")
    gt = np.where(gt == 255, 0, gt)
    num_objects = int(gt.max())
    if pred.max() > num_objects:
        raise ValueError(f"pred_labels: expected object indices 0..{num_objects} (as in gt_labels), "
                         f"got {int(pred.max())}")
    pred, gt = pred[1:-1], gt[1:-1]
    objects = list(range(1, num_objects + 1))
    j_frames = np.array([db_eval_iou(pred == k, gt == k) for k in objects]).reshape(len(objects), -1)
    f_frames = np.array([db_eval_boundary(pred == k, gt == k) for k in objects]).reshape(len(objects), -1)
    j_mean, f_mean = j_frames.mean(axis=1), f_frames.mean(axis=1)
    rows = [{"sequence": sequence, "object": k, "J": float(j), "F": float(f)}
            for k, j, f in zip(objects, j_mean, f_mean)]
    return {"objects": objects, "J": j_mean.tolist(), "F": f_mean.tolist(),
            "J_recall": (j_frames > 0.5).mean(axis=1).tolist(),
            "F_recall": (f_frames > 0.5).mean(axis=1).tolist(),
            "J_frames": j_frames, "F_frames": f_frames, "rows": rows}


def summarize(per_object_rows: Iterable[Mapping]) -> tuple[float, float, float]:
    """Global (J&F, J, F): means over every object of every sequence, J&F = (J + F) / 2."""
    rows = list(per_object_rows)
    if not rows:
        raise ValueError("per_object_rows: expected at least one object row, got none")
    j_mean = float(np.mean([row["J"] for row in rows]))
    f_mean = float(np.mean([row["F"] for row in rows]))
    return (j_mean + f_mean) / 2, j_mean, f_mean


def _pck_hits(pred_kp, gt_kp, visible, norm, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    pred_kp, gt_kp = np.asarray(pred_kp, dtype=np.float64), np.asarray(gt_kp, dtype=np.float64)
    visible, norm = np.asarray(visible).astype(bool), np.asarray(norm, dtype=np.float64)
    if pred_kp.shape != gt_kp.shape or pred_kp.ndim != 3 or pred_kp.shape[2] != 2:
        raise ValueError(f"pred_kp, gt_kp: expected two (N, K, 2) arrays, got {pred_kp.shape} and "
                         f"{gt_kp.shape}")
    if visible.shape != pred_kp.shape[:2] or norm.shape != pred_kp.shape[:1]:
        raise ValueError(f"visible, norm: expected shapes {pred_kp.shape[:2]} and {pred_kp.shape[:1]}, "
                         f"got {visible.shape} and {norm.shape}")
    distance = np.linalg.norm(pred_kp - gt_kp, axis=-1)  # (N, K)
    return distance <= alpha * norm[:, None], visible


def pck(pred_kp, gt_kp, visible, norm, alpha: float = 0.1) -> float:
    """Percentage of correct keypoints: share of visible keypoints within ``alpha * norm`` of the truth.

    Args:
        pred_kp, gt_kp: (N, K, 2) keypoint positions (any units, the same as ``norm``).
        visible: (N, K) bool; only visible ground-truth keypoints are scored.
        norm: (N,) per-instance scale, e.g. ``bbox_size_from_mask`` or ``keypoint_box_diagonal``.
    Returns:
        fraction in [0, 1]; NaN when no keypoint is visible.
    """
    hits, visible = _pck_hits(pred_kp, gt_kp, visible, norm, alpha)
    return float(hits[visible].mean()) if visible.any() else float("nan")


def pck_per_keypoint(pred_kp, gt_kp, visible, norm, alpha: float = 0.1) -> np.ndarray:
    """PCK per keypoint type: (K,) float64 (NaN for a type never visible); JHMDB reports their mean."""
    hits, visible = _pck_hits(pred_kp, gt_kp, visible, norm, alpha)
    counts = visible.sum(axis=0)
    return np.where(counts > 0, (hits & visible).sum(axis=0) / np.maximum(counts, 1), np.nan)


def bbox_size_from_mask(masks) -> np.ndarray | float:
    """Longer side, in pixels, of each mask's tight bounding box (0 for an empty mask).

    Args:
        masks: bool (H, W) or (N, H, W).
    Returns:
        float for (H, W); (N,) float64 for (N, H, W).
    """
    masks = np.asarray(masks).astype(bool)
    if masks.ndim not in (2, 3):
        raise ValueError(f"masks: expected (H, W) or (N, H, W), got shape {masks.shape}")
    flat = masks.reshape(-1, *masks.shape[-2:])
    sizes = np.zeros(len(flat))
    for i, mask in enumerate(flat):
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if rows.size:
            sizes[i] = max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1)
    return float(sizes[0]) if masks.ndim == 2 else sizes


def keypoint_box_diagonal(keypoints, visible) -> np.ndarray:
    """Diagonal of the box around each instance's visible keypoints: (N,) float64 (0 if none visible).

    JHMDB PCK normalises by 0.6 times this diagonal.
    Args:
        keypoints: (N, K, 2); visible: (N, K) bool.
    """
    keypoints, visible = np.asarray(keypoints, dtype=np.float64), np.asarray(visible).astype(bool)
    low = np.where(visible[..., None], keypoints, np.inf).min(axis=1)
    high = np.where(visible[..., None], keypoints, -np.inf).max(axis=1)
    diagonal = np.linalg.norm(high - low, axis=-1)
    return np.where(visible.any(axis=1), diagonal, 0.0)


def mask_iou(pred, gt, dims: tuple[int, ...] = (-2, -1)):
    """Soft IoU, sum(p * g) / sum(p + g - p * g) over ``dims``; an empty union scores 1.

    Equals the plain IoU for binary masks and is differentiable for soft torch masks.
    Args:
        pred, gt: numpy arrays or torch tensors of one shape, e.g. (B, 1, H, W), values in [0, 1].
        dims: dimensions to reduce.
    Returns:
        the input type with ``dims`` removed, e.g. (B, 1).
    """
    if tuple(pred.shape) != tuple(gt.shape):
        raise ValueError(f"pred, gt: expected one shape, got {tuple(pred.shape)} and {tuple(gt.shape)}")
    if isinstance(pred, torch.Tensor):
        dtype = pred.dtype if pred.is_floating_point() else torch.float32
        pred, gt = pred.to(dtype), torch.as_tensor(gt).to(device=pred.device, dtype=dtype)
        inter = (pred * gt).sum(dim=dims)
        union = (pred + gt - pred * gt).sum(dim=dims)
        # Dividing by a safe denominator keeps the gradient finite where the union is empty.
        safe_union = torch.where(union > 0, union, torch.ones_like(union))
        return torch.where(union > 0, inter / safe_union, torch.ones_like(union))
    pred, gt = np.asarray(pred, dtype=np.float64), np.asarray(gt, dtype=np.float64)
    inter = (pred * gt).sum(axis=dims)
    union = (pred + gt - pred * gt).sum(axis=dims)
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 1.0)
