"""Temporal-consistency scores of an exported mesh sequence: mask reprojection across frames, part agreement.

Inputs are what ``adapt.run`` exports: per-frame canonical vertices (T, V, 3) with one shared face list, and
cameras as cameras.json entries ``{"rotation", "scale", "translation"}``, with
(u, v) = scale * (R @ X)[:2] + translation in pixels of the original frame (pixel centre i at u = i).
Masks are (T, H, W) bool at that resolution. Every function here is pure: arrays in, numbers out.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from birdmesh.metrics import db_eval_iou
from mesh_recon.render import render_hard

from .outputs import project_to_ndc


def camera_arrays(cameras: Sequence[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """cameras.json entries -> rotation (T, 3, 3), scale (T,), translation (T, 2), all float64."""
    if len(cameras) == 0:
        raise ValueError("cameras: expected at least one cameras.json entry, got none")
    try:
        rotation = np.array([c["rotation"] for c in cameras], dtype=np.float64).reshape(-1, 3, 3)
        scale = np.array([c["scale"] for c in cameras], dtype=np.float64).reshape(-1)
        translation = np.array([c["translation"] for c in cameras], dtype=np.float64).reshape(-1, 2)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"cameras: expected entries with rotation 3x3, scale, translation [tx, ty], got "
                         f"{cameras[0]!r} ({err})") from None
    if not len(rotation) == len(scale) == len(translation) == len(cameras):
        raise ValueError(f"cameras: expected {len(cameras)} complete entries, got rotation {rotation.shape}, "
                         f"scale {scale.shape}, translation {translation.shape}")
    return rotation, scale, translation


def _check_sequence(verts: np.ndarray, cameras: Sequence[dict], faces: np.ndarray) -> None:
    if verts.ndim != 3 or verts.shape[2] != 3:
        raise ValueError(f"verts: expected shape (T, V, 3), got {verts.shape}")
    if len(cameras) != len(verts):
        raise ValueError(f"cameras: expected one entry per frame ({len(verts)}), got {len(cameras)}")
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"faces: expected shape (F, 3), got {faces.shape}")


def vertex_map(verts: np.ndarray, camera: dict, faces: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """The mesh vertex seen at each pixel: of the nearest face, its corner nearest the pixel centre.

    Args:
        verts: (V, 3) canonical vertices; camera: a cameras.json entry; faces: (F, 3) int; hw: (H, W) pixels.
    Returns:
        (H, W) int64 vertex index, -1 where no face covers the pixel centre (z-buffer, ``render_hard``).
    """
    rotation, scale, translation = camera_arrays([camera])
    points = torch.as_tensor(np.asarray(verts, dtype=np.float64))[None]
    verts_ndc = project_to_ndc(points, torch.from_numpy(rotation), torch.from_numpy(scale),
                               torch.from_numpy(translation), (hw[1], hw[0]))
    faces_t = torch.as_tensor(np.asarray(faces), dtype=torch.int64)
    frags = render_hard(verts_ndc.float(), faces_t, hw)
    face_index = frags.face_index[0]  # (H, W)
    corner = frags.bary[0].argmax(dim=-1)  # (H, W)
    vertex = faces_t[face_index.clamp_min(0), corner]
    return torch.where(face_index >= 0, vertex, -1).numpy()


def render_masks(verts: np.ndarray, cameras: Sequence[dict], faces: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Hard silhouettes of each frame's mesh under the paired camera: (T, H, W) bool from (T, V, 3), T cameras."""
    verts = np.asarray(verts)
    _check_sequence(verts, cameras, np.asarray(faces))
    return np.stack([vertex_map(v, c, faces, hw) >= 0 for v, c in zip(verts, cameras)])


def reprojection_consistency(verts: np.ndarray, cameras: Sequence[dict], faces: np.ndarray, gt_masks: np.ndarray,
                             d: int) -> np.ndarray:
    """Mask reprojection across frames (DOVE): frame t's shape under frame t+d's camera vs the GT mask of t+d.

    A sequence whose shapes drift while per-frame cameras absorb the error fits each frame alone but scores low
    here; a shape that stays put under a moving camera scores as high as its per-frame IoU.
    Args:
        verts: (T, V, 3) canonical vertices per frame; cameras: T cameras.json entries; faces: (F, 3) int.
        gt_masks: (T, H, W) bool ground-truth masks at the cameras' pixel resolution.
        d: frame distance >= 1.
    Returns:
        (max(T - d, 0),) float64 IoU for t = 0 .. T - d - 1 (empty when the video is too short).
    """
    verts, gt_masks = np.asarray(verts), np.asarray(gt_masks).astype(bool)
    _check_sequence(verts, cameras, np.asarray(faces))
    if gt_masks.shape[:1] != verts.shape[:1] or gt_masks.ndim != 3:
        raise ValueError(f"gt_masks: expected shape ({len(verts)}, H, W), got {gt_masks.shape}")
    if not isinstance(d, (int, np.integer)) or d < 1:
        raise ValueError(f"d: expected an integer frame distance >= 1, got {d!r}")
    hw = gt_masks.shape[1:]
    scores = [db_eval_iou(vertex_map(verts[t], cameras[t + d], faces, hw) >= 0, gt_masks[t + d])
              for t in range(len(verts) - d)]
    return np.asarray(scores, dtype=np.float64)


@dataclass(frozen=True)
class PartScores:
    """Agreement of one video-level surface labelling, rendered per frame, with the propagated parts.

    Fields: accuracy (mean over frames of the per-frame share of agreeing pixels); mean_iou (per-part IoU summed
    over the video, averaged over parts 1..K that occur); frame_accuracy (T,) NaN where a frame has no scored
    pixel; vertex_parts (V,) int64 the labelling (0 = no vote).
    """

    accuracy: float
    mean_iou: float
    frame_accuracy: np.ndarray
    vertex_parts: np.ndarray


def vertex_part_votes(verts: np.ndarray, cameras: Sequence[dict], faces: np.ndarray, parts: np.ndarray) -> np.ndarray:
    """Votes of the propagated parts for each vertex: (V, L) int64 counts, L = parts.max() + 1.

    Every pixel where the rendered mesh and the propagated object (parts > 0) overlap votes with its part for
    the vertex it sees (``vertex_map``), over all frames: the video-level part assignment in vertex terms.
    """
    verts, parts = np.asarray(verts), np.asarray(parts)
    num_labels = int(parts.max()) + 1
    votes = np.zeros((verts.shape[1], num_labels), dtype=np.int64)
    for t in range(len(verts)):
        seen = vertex_map(verts[t], cameras[t], faces, parts.shape[1:])
        scored = (seen >= 0) & (parts[t] > 0)
        np.add.at(votes, (seen[scored], parts[t][scored].astype(np.int64)), 1)
    return votes


def part_consistency(verts: np.ndarray, cameras: Sequence[dict], faces: np.ndarray, parts: np.ndarray) -> PartScores:
    """How well one fixed labelling of the mesh surface explains the propagated parts of every frame.

    The labelling is each vertex's majority part over the whole video (``vertex_part_votes``); it is rendered
    on each frame's mesh with that frame's camera (a pixel takes the label of the vertex it sees) and compared
    with the propagated parts where both the render and the propagated object cover the pixel (silhouette
    errors are IoU's business). A mesh whose surface slides under the parts from frame to frame splits its
    votes and scores low; a consistent one scores 1.
    Args:
        verts: (T, V, 3); cameras: T cameras.json entries; faces: (F, 3) int.
        parts: (T, H, W) int propagated part indices (0 background, 1..K parts), e.g. parts/%05d.png.
    Returns:
        PartScores.
    """
    verts, parts = np.asarray(verts), np.asarray(parts)
    _check_sequence(verts, cameras, np.asarray(faces))
    if parts.ndim != 3 or len(parts) != len(verts) or not np.issubdtype(parts.dtype, np.integer):
        raise ValueError(f"parts: expected ({len(verts)}, H, W) integer part indices, got {parts.shape} {parts.dtype}")
    votes = vertex_part_votes(verts, cameras, faces, parts)
    labels = np.where(votes.sum(axis=1) > 0, votes.argmax(axis=1), 0)
    frame_accuracy = np.full(len(verts), np.nan)
    inter = np.zeros(votes.shape[1], dtype=np.int64)
    union = np.zeros(votes.shape[1], dtype=np.int64)
    for t in range(len(verts)):
        seen = vertex_map(verts[t], cameras[t], faces, parts.shape[1:])
        scored = (seen >= 0) & (parts[t] > 0)
        if not scored.any():
            continue
        rendered, truth = labels[seen[scored]], parts[t][scored].astype(np.int64)
        frame_accuracy[t] = float((rendered == truth).mean())
        inter += np.bincount(truth[rendered == truth], minlength=len(inter))
        union += np.bincount(truth, minlength=len(union)) + np.bincount(rendered, minlength=len(union))
    union -= inter
    present = union[1:] > 0
    mean_iou = float((inter[1:][present] / union[1:][present]).mean()) if present.any() else float("nan")
    accuracy = float(np.nanmean(frame_accuracy)) if np.isfinite(frame_accuracy).any() else float("nan")
    return PartScores(accuracy, mean_iou, frame_accuracy, labels)
