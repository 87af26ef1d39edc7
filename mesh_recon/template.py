"""The predictor's template: a mirror-symmetric icosphere, its spherical UV, and its initial bird mean shape.

CMR starts from an icosphere projected onto the convex hull of CUB's SfM keypoints. We have a whole bird
surface instead (the avian mesh's rest pose mapped into the CUB frame by ``bird_model``), so the sphere is
shrink-wrapped onto it: alternately pulled towards the nearest surface points and smoothed, which keeps the
triangles regular where a plain nearest-point projection would pile vertices onto the thin tail and bill.

Convention: canonical CUB frame (``bird_model``): -y forward (bill), +z up, +x the bird's left; symmetric under
x -> -x. Vertices are in ``SymmetricMesh`` order [centre | right | left].
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .geometry import check_shape
from .mesh import SymmetricMesh, face_spherical_uv, icosphere, make_symmetric, uniform_laplacian


@dataclass(frozen=True)
class Template:
    """Topology shared by every predicted mesh.

    Fields:
        sym: the unit icosphere in [centre | right | left] order (V vertices, F faces).
        face_uvs: (F, 3, 2) per-corner spherical UV of the sphere (u unwrapped past 1 on seam faces).
        laplacian: (V, V) sparse uniform Laplacian.
    """

    sym: SymmetricMesh
    face_uvs: Tensor
    laplacian: Tensor


def sphere_template(level: int = 3) -> Template:
    """The icosphere template (level 3: 642 vertices, 1280 faces, 32 of them on the symmetry plane)."""
    sym = make_symmetric(*icosphere(level))
    return Template(sym, face_spherical_uv(sym.verts, sym.faces), uniform_laplacian(sym.faces, len(sym.verts)))


def mirror_average(verts: np.ndarray, mirror_index: np.ndarray) -> np.ndarray:
    """(V, 3) exactly symmetric vertices: the mean of ``verts`` and its mirror image (centre x becomes 0)."""
    return 0.5 * (verts + verts[mirror_index] * np.array([-1.0, 1.0, 1.0]))


def shrink_wrap(sym: SymmetricMesh, surface_points: np.ndarray, iterations: int = 80, pull: float = 0.5,
                smooth: float = 0.2, inflate: float = 1.15) -> np.ndarray:
    """Wrap the symmetric sphere onto a point-sampled surface, keeping it symmetric and smooth.

    Args:
        sym: the sphere (unit radius, any vertex count).
        surface_points: (N, 3) points densely sampled on a surface symmetric in x.
        iterations: pull-and-smooth rounds; the last fifth pull fully and smooth half as much, to settle.
        pull: fraction of the way to the nearest surface point moved per round.
        smooth: uniform Laplacian smoothing step per round.
        inflate: the start ellipsoid's radii as a multiple of the surface's half extents.
    Returns:
        (V, 3) float64 vertices in the order of ``sym``.
    """
    from scipy.spatial import cKDTree

    check_shape(torch.as_tensor(surface_points), "N 3", "surface_points")
    lo, hi = surface_points.min(0), surface_points.max(0)
    centre = np.array([0.0, (lo[1] + hi[1]) / 2, (lo[2] + hi[2]) / 2])
    verts = centre + sym.verts.double().numpy() * (hi - lo) / 2 * inflate
    lap = uniform_laplacian(sym.faces, len(verts)).to_dense().double().numpy()
    tree, mirror = cKDTree(surface_points), sym.mirror_index.numpy()
    for it in range(iterations):
        settle = it >= iterations * 4 // 5
        _, nearest = tree.query(verts)
        verts = verts + (1.0 if settle else pull) * (surface_points[nearest] - verts)
        verts = verts - (smooth / 2 if settle else smooth) * (lap @ verts)
        verts = mirror_average(verts, mirror)
    return verts


def bird_rest_surface(count: int = 40000, seed: int = 0, data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The avian mesh's rest pose in the CUB frame: (count, 3) surface samples and its (12, 3) keypoints."""
    import trimesh

    from .bird_model import load_bird_model, pose_bird

    model = load_bird_model(data_dir)
    rest = pose_bird(model, torch.zeros(1, 24, 3, dtype=torch.float64), frame="cub")
    verts = rest.verts[0].numpy()
    mesh = trimesh.Trimesh(verts, model.faces.numpy(), process=False)
    points, _ = trimesh.sample.sample_surface(mesh, count, seed=seed)
    points = np.concatenate([points, points * np.array([-1.0, 1.0, 1.0])])  # exactly symmetric target
    return points, rest.keypoints[0].numpy()


def keypoint_logits(verts: Tensor, keypoints: Tensor, radius: float = 0.08) -> Tensor:
    """Initial ``vert2kp`` logits: each keypoint a softmax over vertices by squared distance.

    Args:
        verts: (V, 3) template vertices; keypoints: (K, 3) keypoints on (or near) that surface.
        radius: distance (canonical units; a bird is ~2 long) at which a vertex's weight falls by e^-1.
    Returns:
        (K, V) logits -|k - v|^2 / radius^2.
    """
    check_shape(verts, "V 3", "verts")
    check_shape(keypoints, "K 3", "keypoints")
    return -torch.cdist(keypoints.double(), verts.double()).square().float() / radius ** 2


def bird_template_init(template: Template, data_dir: str | None = None) -> tuple[Tensor, Tensor]:
    """Bird mean shape and keypoint assignment to initialise a predictor (needs the shared bird model).

    Returns:
        mean_verts (V, 3) float32 symmetric vertices in the order of ``template.sym``; vert2kp logits (12, V).
    """
    points, keypoints = bird_rest_surface(data_dir=data_dir)
    mean = torch.from_numpy(shrink_wrap(template.sym, points)).float()
    return mean, keypoint_logits(mean, torch.from_numpy(keypoints).float())
