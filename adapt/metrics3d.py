"""3-D scores against synthetic ground truth: surface sampling, similarity alignment, Chamfer-L2 and F-score.

Our 642-vertex mesh and the ground-truth avian mesh (3932 vertices) share no vertex correspondence, so shapes are
compared as surface point clouds. Alignment (``align_camera_frame``): both shapes are first put in the camera
frame in pixels, where weak perspective fixes x, y and the depth axis up to an unknown depth offset (the
prediction's x, y come from its exported camera; the offset is set by matching mean depths); a similarity ICP
(Umeyama on nearest neighbours, both directions) then refines scale, rotation and translation. Starting from the
camera frame sidesteps the 180-degree flips a blind ICP falls into; the ICP removes what a 2-D fit cannot fix
(overall size, depth offset, small tilts) so the score measures shape, as DOVE's toy-bird evaluation does.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from birdmesh.shape_metrics import surface_samples

from .export import project_to_pixels


@dataclass(frozen=True)
class Similarity:
    """x -> scale * rotation @ x + translation; scale > 0, rotation (3, 3) proper, translation (3,)."""

    scale: float
    rotation: np.ndarray
    translation: np.ndarray

    def apply(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) -> (N, 3)."""
        return self.scale * np.asarray(points, dtype=np.float64) @ self.rotation.T + self.translation


IDENTITY = Similarity(1.0, np.eye(3), np.zeros(3))


def _points(x, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 3 or len(x) == 0:
        raise ValueError(f"{name}: expected a non-empty (N, 3) point array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: expected finite values, got NaN or infinity")
    return x


def sample_surface(verts, faces, n: int, seed: int = 0) -> np.ndarray:
    """Area-weighted uniform samples on a triangle mesh: (n, 3) float64 from verts (V, 3) and faces (F, 3).

    Deterministic for a given seed, so two methods are scored on equally drawn samples
    (``birdmesh.shape_metrics.surface_samples`` after checking the inputs).
    """
    verts, faces = _points(verts, "verts"), np.asarray(faces, dtype=np.int64)
    if faces.ndim != 2 or faces.shape[1] != 3 or len(faces) == 0:
        raise ValueError(f"faces: expected a non-empty (F, 3) index array, got shape {faces.shape}")
    return surface_samples(verts, faces, n, seed)


def umeyama(source, target) -> Similarity:
    """Least-squares similarity mapping source points onto corresponding target points (Umeyama 1991).

    Args:
        source, target: (N, 3) corresponding points, N >= 3 not all collinear.
    Returns:
        Similarity minimising sum |s R source_i + t - target_i|^2 with R a proper rotation.
    """
    source, target = _points(source, "source"), _points(target, "target")
    if source.shape != target.shape:
        raise ValueError(f"source, target: expected corresponding (N, 3) arrays, got {source.shape} and "
                         f"{target.shape}")
    mu_s, mu_t = source.mean(0), target.mean(0)
    src, tgt = source - mu_s, target - mu_t
    cov = tgt.T @ src / len(source)
    u, sigma, vt = np.linalg.svd(cov)
    sign = np.diag([1.0, 1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rotation = u @ sign @ vt
    variance = (src ** 2).sum() / len(source)
    scale = float(np.trace(np.diag(sigma) @ sign) / variance) if variance > 0 else 1.0
    return Similarity(scale, rotation, mu_t - scale * rotation @ mu_s)


def compose(outer: Similarity, inner: Similarity) -> Similarity:
    """outer(inner(x)) as one Similarity."""
    return Similarity(outer.scale * inner.scale, outer.rotation @ inner.rotation,
                      outer.scale * outer.rotation @ inner.translation + outer.translation)


def similarity_align(source, target, iterations: int = 30, init: Similarity = IDENTITY) -> Similarity:
    """Similarity ICP: repeatedly Umeyama on nearest-neighbour pairs, source->target and target->source.

    Pairing both ways keeps the scale from collapsing onto a part of the target. Converges to the nearest local
    optimum of init: start from a rough alignment (e.g. the camera frame).
    Args:
        source: (N, 3) points to move; target: (M, 3) fixed points; iterations >= 1.
    Returns:
        Similarity taking source onto target (init included).
    """
    source, target = _points(source, "source"), _points(target, "target")
    if iterations < 1:
        raise ValueError(f"iterations: expected >= 1, got {iterations}")
    target_tree = cKDTree(target)
    current = init
    for _ in range(iterations):
        moved = current.apply(source)
        _, to_target = target_tree.query(moved)
        _, to_source = cKDTree(moved).query(target)
        step = umeyama(np.concatenate([moved, moved[to_source]]), np.concatenate([target[to_target], target]))
        current = compose(step, current)
        if abs(step.scale - 1) < 1e-7 and np.abs(step.rotation - np.eye(3)).max() < 1e-7 \
                and np.abs(step.translation).max() < 1e-7 * (1 + np.abs(target).max()):
            break
    return current


def chamfer_fscore(pred_points, gt_points, threshold: float) -> tuple[float, float]:
    """Symmetric Chamfer-L2 and F-score of two point clouds in the same units.

    Args:
        pred_points: (N, 3); gt_points: (M, 3); threshold > 0 distance for the F-score.
    Returns:
        chamfer = mean_p min_g |p - g|^2 + mean_g min_p |g - p|^2 (squared units);
        fscore = 2 P R / (P + R), P the share of predicted points within ``threshold`` of the truth, R the
        converse (0 when both are 0).
    """
    pred, gt = _points(pred_points, "pred_points"), _points(gt_points, "gt_points")
    if not threshold > 0:
        raise ValueError(f"threshold: expected a distance > 0, got {threshold!r}")
    d_pred, _ = cKDTree(gt).query(pred)
    d_gt, _ = cKDTree(pred).query(gt)
    chamfer = float((d_pred ** 2).mean() + (d_gt ** 2).mean())
    precision, recall = float((d_pred <= threshold).mean()), float((d_gt <= threshold).mean())
    fscore = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return chamfer, fscore


def camera_frame_points(points, camera: dict) -> np.ndarray:
    """Canonical points -> camera frame in pixels: (u, v, scale * (R X)[2]), as the synthetic ``verts_camera``.

    Args:
        points: (N, 3) canonical points; camera: a cameras.json entry {"rotation", "scale", "translation"}.
    Returns:
        (N, 3) float64 pixel u (right), v (down), depth in pixels (away from the viewer).
    """
    pixels = project_to_pixels(_points(points, "points"), camera)  # (u, v, (R X)[2])
    pixels[:, 2] *= float(camera["scale"])  # depth in pixels too: the frame is a similarity of the canonical one
    return pixels


def align_camera_frame(pred_cam_points, gt_cam_points, iterations: int = 30) -> np.ndarray:
    """Align predicted camera-frame points to the truth: depth offset by mean depth, then similarity ICP.

    Args:
        pred_cam_points: (N, 3) and gt_cam_points: (M, 3), both from ``camera_frame_points``-like maps.
    Returns:
        (N, 3) aligned predicted points.
    """
    pred, gt = _points(pred_cam_points, "pred_cam_points"), _points(gt_cam_points, "gt_cam_points")
    offset = np.array([0.0, 0.0, gt[:, 2].mean() - pred[:, 2].mean()])  # weak perspective leaves depth free
    init = Similarity(1.0, np.eye(3), offset)
    return similarity_align(pred, gt, iterations, init).apply(pred)


def shape_size(points) -> float:
    """The bird's size: diagonal of the axis-aligned box around (N, 3) points (same units)."""
    points = _points(points, "points")
    return float(np.linalg.norm(points.max(0) - points.min(0)))


@dataclass(frozen=True)
class ShapeScores:
    """Chamfer-L2 in units of (bird size)^2 and F-score at ``threshold`` x bird size, after alignment."""

    chamfer: float
    fscore: float


def shape_scores(pred_cam_points, gt_cam_points, fscore_ratio: float = 0.05, iterations: int = 30) -> ShapeScores:
    """Align (``align_camera_frame``), then Chamfer-L2 and F-score relative to the ground truth's size.

    Args:
        pred_cam_points: (N, 3) surface samples of the predicted mesh in the camera frame (pixels).
        gt_cam_points: (M, 3) surface samples of the true mesh in the camera frame (pixels).
        fscore_ratio: F-score threshold as a fraction of the bird's size (``shape_size`` of the truth).
    Returns:
        ShapeScores.
    """
    size = shape_size(gt_cam_points)
    aligned = align_camera_frame(pred_cam_points, gt_cam_points, iterations)
    chamfer, fscore = chamfer_fscore(aligned / size, np.asarray(gt_cam_points, dtype=np.float64) / size,
                                     fscore_ratio)
    return ShapeScores(chamfer, fscore)
