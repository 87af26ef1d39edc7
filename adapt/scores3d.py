"""3-D scores of ``adapt.evaluate``: the camera-frame Chamfer (the project's metric), the older ICP-aligned figures,
keypoint PCK and mesh quality, per frame of one run.

The camera-frame Chamfer (``birdmesh.shape_metrics``) puts the prediction in the camera frame with its own exported
camera and the truth with the true one, both in the original frame's pixels, removes only the mean depth
difference and fits nothing else: a mesh seen from the wrong side, or a flat front-facing tangle, pays for it even
when its silhouette is right. The ICP-aligned figures (``metrics3d``) fit a similarity first and so measure shape
up to pose; they stay beside it for comparison with earlier runs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from birdmesh.errors import UserError
from birdmesh.metrics import bbox_size_from_mask, pck
from birdmesh.shape_metrics import mesh_camera_chamfer, mesh_quality, to_camera_frame

from .export import project_to_pixels
from .metrics3d import camera_frame_points, sample_surface, shape_scores


def load_gt3d(path: Path, frame_index: np.ndarray) -> dict:
    """The synthetic ground truth at the run's frames: verts_camera (T, Vg, 3) float64 camera-frame pixels,
    keypoints (T, K, 3) (pixel x, y, visibility), faces (Fg, 3)."""
    with np.load(path) as data:
        missing = {"verts_camera", "faces", "keypoints"} - set(data.files)
        if missing:
            raise UserError(f"{path}: missing ground-truth arrays {sorted(missing)}")
        return {"verts_camera": data["verts_camera"][frame_index].astype(np.float64),
                "keypoints": data["keypoints"][frame_index].astype(np.float64), "faces": data["faces"]}


def camera_frame_verts(verts: np.ndarray, cameras: Sequence[dict]) -> np.ndarray:
    """(T, V, 3) canonical vertices -> camera frame s (R X) + [tx, ty, 0] with each frame's cameras.json entry:
    pixel x right, y down, depth in pixels away from the viewer; (T, V, 3) float64."""
    verts = np.asarray(verts, dtype=np.float64)
    if verts.ndim != 3 or verts.shape[2] != 3 or len(cameras) != len(verts):
        raise ValueError(f"verts, cameras: expected (T, V, 3) and T entries, got {verts.shape} and {len(cameras)}")
    return np.stack([to_camera_frame(v, c["scale"], c["rotation"], c["translation"]) for v, c in zip(verts, cameras)])


def quality_scores(verts: np.ndarray, faces: np.ndarray) -> dict:
    """Mesh quality per frame of (T, V, 3) meshes sharing faces (F, 3) (any frame: it ignores similarities).

    Returns:
        {"normal_deg": (T,) mean angle between adjacent face normals, "folded": (T,) share of edges folded past
        90 degrees} as float64 arrays.
    """
    scores = [mesh_quality(v, faces) for v in np.asarray(verts)]
    return {"normal_deg": np.array([s.normal_angle_deg for s in scores]),
            "folded": np.array([s.folded for s in scores])}


def quality_row(verts: np.ndarray, faces: np.ndarray, prefix: str = "") -> dict:
    """Per-frame ``quality_scores`` and their means: {"row": {prefix + key: mean}, "per_frame": {...: list}}."""
    scores = quality_scores(verts, faces)
    return {"row": {prefix + k: float(v.mean()) for k, v in scores.items()},
            "per_frame": {prefix + k: v.tolist() for k, v in scores.items()}}


def camera_frame_scores(pred_cam: np.ndarray, pred_faces: np.ndarray, gt_cam: np.ndarray,
                        gt_faces: np.ndarray) -> dict:
    """The exact metric per frame: pred_cam (T, V, 3) and gt_cam (T, Vg, 3) both in the camera frame (same pixel
    units). Returns {"chamfer_cam": (T,), "fscore_cam": (T,)} float64 (frame t samples with seed t)."""
    pairs = enumerate(zip(pred_cam, gt_cam))
    scores = [mesh_camera_chamfer(pred, pred_faces, gt, gt_faces, seed=2 * t) for t, (pred, gt) in pairs]
    return {"chamfer_cam": np.array([s.chamfer for s in scores]), "fscore_cam": np.array([s.fscore for s in scores])}


def icp_scores(verts: np.ndarray, faces: np.ndarray, cameras: Sequence[dict], gt: dict, num_points: int = 2000,
               icp_iterations: int = 30) -> dict:
    """Chamfer-L2 and F-score@5% after similarity ICP from the camera frame (``metrics3d.shape_scores``).

    Returns:
        {"chamfer_icp": (T,) in units of the GT bounding-box diagonal squared, "fscore_icp": (T,)}.
    """
    chamfer, fscore = [], []
    for t in range(len(verts)):
        gt_points = sample_surface(gt["verts_camera"][t], gt["faces"], num_points, seed=t)
        pred_points = camera_frame_points(sample_surface(verts[t], faces, num_points, seed=t), cameras[t])
        scores = shape_scores(pred_points, gt_points, iterations=icp_iterations)
        chamfer.append(scores.chamfer)
        fscore.append(scores.fscore)
    return {"chamfer_icp": np.array(chamfer), "fscore_icp": np.array(fscore)}


def keypoint_pck(verts: np.ndarray, cameras: Sequence[dict], vert2kp: np.ndarray | None, gt_keypoints: np.ndarray,
                 gt_masks: np.ndarray) -> float:
    """PCK@0.1 of vert2kp (K, V) @ verts (T, V, 3) projected with the cameras vs the visible GT keypoints
    (T, K, 3), threshold 0.1 x the GT mask's (T, H, W) bounding-box size; NaN when vert2kp is None or misfits."""
    if vert2kp is None or vert2kp.shape != (gt_keypoints.shape[1], verts.shape[1]):
        return float("nan")
    pred_kp = np.stack([project_to_pixels(vert2kp @ v, c)[:, :2] for v, c in zip(verts, cameras)])
    return pck(pred_kp, gt_keypoints[..., :2], gt_keypoints[..., 2] > 0.5, bbox_size_from_mask(gt_masks), 0.1)


def score_3d(verts: np.ndarray, faces: np.ndarray, cameras: Sequence[dict], gt: dict, gt_masks: np.ndarray,
             vert2kp: np.ndarray | None, num_points: int = 2000, icp_iterations: int = 30) -> dict:
    """Every 3-D score of one run against synthetic ground truth.

    Args:
        verts: (T, V, 3) canonical vertices; faces: (F, 3); cameras: T cameras.json entries.
        gt: ``load_gt3d`` at the run's frames; gt_masks: (T, H, W) bool; vert2kp: (K, V) or None (no PCK).
        num_points: surface samples per mesh for the ICP-aligned figures (the camera-frame metric uses 5000).
    Returns:
        {"row": {"chamfer_cam", "fscore_cam", "chamfer_icp", "fscore_icp", "pck_0.1", "gt_normal_deg",
        "gt_folded"}: means over frames, "per_frame": lists of the per-frame values}.
    """
    per_frame = camera_frame_scores(camera_frame_verts(verts, cameras), faces, gt["verts_camera"], gt["faces"])
    per_frame.update(icp_scores(verts, faces, cameras, gt, num_points, icp_iterations))
    row = {k: float(v.mean()) for k, v in per_frame.items()}
    row["pck_0.1"] = keypoint_pck(verts, cameras, vert2kp, gt["keypoints"], gt_masks)
    gt_quality = quality_row(gt["verts_camera"], gt["faces"], prefix="gt_")
    row.update(gt_quality["row"])
    return {"row": row, "per_frame": {**{k: v.tolist() for k, v in per_frame.items()}, **gt_quality["per_frame"]}}
