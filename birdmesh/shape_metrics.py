"""3-D scores that judge a mesh as seen by its camera, and how crumpled a mesh is (numpy, no alignment fitting).

The camera-frame Chamfer is the project's one 3-D metric (issues 33 and 35 define it): per frame, both meshes go to
the camera frame with their own weak-perspective camera, ``P = s (R X) + [tx, ty, 0]``; 5000 area-weighted surface
samples are drawn on each; the mean depth difference is subtracted (weak perspective leaves depth free); no rotation
or scale is fitted, so a wrong viewpoint or a flat, front-facing tangle costs what it looks like from the side.
Chamfer = (mean over predicted samples of the distance to the nearest true sample + the same the other way) / 2,
divided by the true mesh's bounding-box diagonal; F-score at 5 % of that diagonal.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

SAMPLES = 5000
FSCORE_RATIO = 0.05


def quaternion_matrix(quat) -> np.ndarray:
    """(3, 3) rotation of a quaternion (w, x, y, z) (normalised here)."""
    w, x, y, z = np.asarray(quat, dtype=np.float64) / np.linalg.norm(quat)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def to_camera_frame(verts, scale: float, rotation, translation) -> np.ndarray:
    """(V, 3) canonical vertices -> camera frame s (R X) + [tx, ty, 0] (x right, y down, z away), float64."""
    rotated = np.asarray(verts, dtype=np.float64) @ np.asarray(rotation, dtype=np.float64).T
    return float(scale) * rotated + np.array([translation[0], translation[1], 0.0])


def surface_samples(verts, faces, count: int = SAMPLES, seed: int = 0) -> np.ndarray:
    """(count, 3) area-weighted uniform samples on a mesh verts (V, 3), faces (F, 3); deterministic per seed."""
    verts, faces = np.asarray(verts, dtype=np.float64), np.asarray(faces, dtype=np.int64)
    corners = verts[faces]
    area = 0.5 * np.linalg.norm(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=1)
    if not area.sum() > 0:
        raise ValueError("verts, faces: expected a mesh with positive area, got a degenerate one")
    rng = np.random.default_rng(seed)
    face = rng.choice(len(faces), size=count, p=area / area.sum())
    a, b = rng.random((2, count, 1))
    fold = a + b > 1
    a, b = np.where(fold, 1 - a, a), np.where(fold, 1 - b, b)
    c = corners[face]
    return c[:, 0] + a * (c[:, 1] - c[:, 0]) + b * (c[:, 2] - c[:, 0])


@dataclass(frozen=True)
class CameraFrameScores:
    """chamfer: mean nearest-sample distance both ways / 2, in units of the true bbox diagonal; fscore at 5 %."""

    chamfer: float
    fscore: float


def camera_frame_chamfer(pred_points, gt_points, gt_diagonal: float,
                         fscore_ratio: float = FSCORE_RATIO) -> CameraFrameScores:
    """The exact metric on samples already in the camera frame: pred (N, 3), gt (M, 3); gt_diagonal > 0 the true
    mesh's bounding-box diagonal (of its vertices). Only the mean depth difference is removed."""
    pred, gt = np.asarray(pred_points, dtype=np.float64), np.asarray(gt_points, dtype=np.float64)
    if not gt_diagonal > 0:
        raise ValueError(f"gt_diagonal: expected > 0, got {gt_diagonal!r}")
    pred = pred + np.array([0.0, 0.0, gt[:, 2].mean() - pred[:, 2].mean()])
    d_pred, _ = cKDTree(gt).query(pred)
    d_gt, _ = cKDTree(pred).query(gt)
    threshold = fscore_ratio * gt_diagonal
    precision, recall = float((d_pred <= threshold).mean()), float((d_gt <= threshold).mean())
    fscore = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return CameraFrameScores(float((d_pred.mean() + d_gt.mean()) / 2 / gt_diagonal), fscore)


def mesh_camera_chamfer(pred_verts, pred_faces, gt_verts, gt_faces, seed: int = 0) -> CameraFrameScores:
    """The exact metric for two meshes already in the camera frame (V, 3) / (F, 3) each (5000 samples each)."""
    gt_verts = np.asarray(gt_verts, dtype=np.float64)
    diagonal = float(np.linalg.norm(gt_verts.max(0) - gt_verts.min(0)))
    return camera_frame_chamfer(surface_samples(pred_verts, pred_faces, SAMPLES, seed),
                                surface_samples(gt_verts, gt_faces, SAMPLES, seed + 1), diagonal)


@dataclass(frozen=True)
class MeshQuality:
    """normal_angle_deg: mean angle between the normals of faces sharing an edge; folded: share of such edges
    whose faces' normals differ by more than 90 degrees (a fold or a spike)."""

    normal_angle_deg: float
    folded: float


def mesh_quality(verts, faces) -> MeshQuality:
    """Crumpling of a mesh verts (V, 3), faces (F, 3): over edges shared by exactly two faces (others skipped)."""
    verts, faces = np.asarray(verts, dtype=np.float64), np.asarray(faces, dtype=np.int64)
    corners = verts[faces]
    normal = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-300)
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    owner = np.tile(np.arange(len(faces)), 3)
    order = np.lexsort((edges[:, 1], edges[:, 0]))
    edges, owner = edges[order], owner[order]
    key = edges[:, 0] * (int(edges.max()) + 1) + edges[:, 1]
    _, start, count = np.unique(key, return_index=True, return_counts=True)
    pairs = start[count == 2]
    cos = (normal[owner[pairs]] * normal[owner[pairs + 1]]).sum(1).clip(-1.0, 1.0)
    return MeshQuality(float(np.degrees(np.arccos(cos)).mean()), float((cos < 0).mean()))
