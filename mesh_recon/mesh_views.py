"""Small shaded renders of camera-frame meshes from the camera, the side and above, for ``adapt.evaluate``'s sheet.

A silhouette overlay cannot tell a bird from a flat cut-out facing the camera; turning the mesh 90 degrees shows
its depth. Convention: meshes come in the camera frame (x right, y down, z away from the viewer, any one unit for
all meshes of a row); "side" turns the mesh 90 degrees about the image's vertical axis, so it is seen from the
image's right with the camera on the tile's left; "top" turns it 90 degrees about the horizontal axis, so it is
seen from above with the camera at the tile's bottom. Each mesh turns about its own bounding-box centre; the
meshes of one row share one scale, so sizes compare.
"""
from __future__ import annotations

import numpy as np
import torch

from .mesh import face_normals
from .render import render_hard

TILE = 144  # pixels per square tile
BACKGROUND = (242, 242, 242)
FILL = 0.9  # the largest mesh of a row spans this share of the tile, whatever the view
# view name -> rotation applied to camera-frame points (x, y, z) (proper rotations, see the module docstring)
VIEWS = {
    "camera": np.eye(3),
    "side": np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]]),  # (x, y, z) -> (z, y, -x)
    "top": np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]),  # (x, y, z) -> (x, -z, y)
}
# the head (around the bill tip, keypoint 0) and the tail tip (keypoint 9) of the avian keypoint order are drawn in
# these colours: a silhouette, and a plain shaded mesh, cannot tell a bird facing backwards from one facing forwards
HEAD_COLOUR, TAIL_COLOUR = (35, 35, 35), (255, 200, 0)
LANDMARK_REACH = 0.12  # faces within this share of the mesh's bounding-box diagonal of the keypoint
LIGHT = np.array([-0.4, -0.6, -1.0]) / np.linalg.norm([-0.4, -0.6, -1.0])  # towards the viewer, from upper left
AMBIENT = 0.3


def mesh_radius(verts: np.ndarray) -> float:
    """Largest distance of (V, 3) vertices from their bounding-box centre: bounds the mesh in every view."""
    verts = np.asarray(verts, dtype=np.float64)
    centre = 0.5 * (verts.max(0) + verts.min(0))
    return float(np.linalg.norm(verts - centre, axis=1).max())


def view_verts(verts: np.ndarray, radius: float) -> np.ndarray:
    """(V, 3) camera-frame vertices -> (N_views, V, 3) NDC of each view in ``VIEWS`` order: centred on the
    bounding-box centre, turned, scaled so a sphere of ``radius`` fills ``FILL`` of the tile."""
    verts = np.asarray(verts, dtype=np.float64)
    if verts.ndim != 2 or verts.shape[1] != 3 or not np.isfinite(verts).all():
        raise ValueError(f"verts: expected finite (V, 3) vertices, got shape {verts.shape}")
    if not radius > 0:
        raise ValueError(f"radius: expected > 0, got {radius!r}")
    centred = (verts - 0.5 * (verts.max(0) + verts.min(0))) * (FILL / radius)
    return np.stack([centred @ rotation.T for rotation in VIEWS.values()])


def shade_views(ndc: np.ndarray, faces: np.ndarray, colour, size: int = TILE) -> np.ndarray:
    """Flat-shaded z-buffer renders (both windings lit, so folds show) of (N, V, 3) NDC vertices sharing faces
    (F, 3): (N, size, size, 3) uint8, ``colour`` (RGB 0-255, or (F, 3) one per face) under a light from the
    viewer's upper left."""
    verts = torch.from_numpy(np.ascontiguousarray(ndc, dtype=np.float64))
    faces_t = torch.as_tensor(np.asarray(faces), dtype=torch.int64)
    fragments = render_hard(verts, faces_t, size)
    cosine = (face_normals(verts, faces_t) @ torch.from_numpy(LIGHT)).abs()  # (N, F)
    intensity = AMBIENT + (1 - AMBIENT) * cosine
    index = fragments.face_index.clamp_min(0)  # (N, size, size)
    lit = torch.gather(intensity, 1, index.reshape(len(verts), -1)).reshape(index.shape)
    colours = torch.as_tensor(np.asarray(colour), dtype=torch.float64)
    image = lit[..., None] * (colours[index] if colours.ndim == 2 else colours)
    background = torch.tensor(BACKGROUND, dtype=torch.float64)
    image = torch.where((fragments.face_index >= 0)[..., None], image, background)
    return image.round().clamp(0, 255).to(torch.uint8).numpy()


def landmark_colours(verts: np.ndarray, faces: np.ndarray, keypoint_weights: np.ndarray, colour) -> np.ndarray:
    """(F, 3) face colours: ``colour`` (RGB), except faces near the head (bill-tip keypoint) in ``HEAD_COLOUR`` and
    near the tail tip in ``TAIL_COLOUR`` (centroid within ``LANDMARK_REACH`` of the bounding-box diagonal).

    Args:
        verts: (V, 3); faces: (F, 3); keypoint_weights: (K, V), K >= 10, rows in the avian keypoint order
            (``mesh_recon.synth`` keypoints: 0 bill tip, 9 tail tip), each row a weighting of the vertices.
    """
    verts = np.asarray(verts, dtype=np.float64)
    faces = np.asarray(faces)
    keypoints = keypoint_weights @ verts  # (K, 3)
    centroids = verts[faces].mean(1)  # (F, 3)
    reach = LANDMARK_REACH * float(np.linalg.norm(verts.max(0) - verts.min(0)))
    out = np.tile(np.asarray(colour, dtype=np.float64), (len(faces), 1))
    for row, marked in ((9, TAIL_COLOUR), (0, HEAD_COLOUR)):  # the head last: it wins where both reach
        out[np.linalg.norm(centroids - keypoints[row], axis=1) <= reach] = marked
    return out


def marked_colour(verts: np.ndarray, faces: np.ndarray, colour, keypoint_weights: list):
    """``landmark_colours`` with the first of ``keypoint_weights`` ((K, V) arrays, K >= 10, or None: one per
    predictor that could have made the mesh) made for these vertices; the plain ``colour`` when none is (a ground
    truth with other vertices than the predictor's, a checkpoint without keypoints)."""
    fitting = [w for w in keypoint_weights if w is not None and w.shape[0] >= 10 and w.shape[1] == len(verts)]
    return landmark_colours(verts, faces, fitting[0], colour) if fitting else colour


def mesh_view_tiles(meshes: dict, size: int = TILE) -> list[tuple[str, np.ndarray]]:
    """One row of labelled tiles: for each mesh, its camera, side and top views at one shared scale.

    Args:
        meshes: label -> (verts (V, 3) camera frame, faces (F, 3), RGB colour or (F, 3) face colours
            (``landmark_colours``)); all in the same units.
    Returns:
        [(f"{label} {view}", (size, size, 3) uint8)] in ``meshes`` order, then ``VIEWS`` order.
    """
    radius = max(mesh_radius(verts) for verts, _, _ in meshes.values())
    tiles = []
    for label, (verts, faces, colour) in meshes.items():
        images = shade_views(view_verts(verts, radius), faces, colour, size)
        tiles += [(f"{label} {view}", image) for view, image in zip(VIEWS, images)]
    return tiles
