"""Input factories shared by the mesh_recon tests and bench/render.py."""
from __future__ import annotations

import torch
from torch import Tensor

from mesh_recon.geometry import random_quaternions, weak_perspective_project
from mesh_recon.mesh import icosphere


def random_cameras(batch: int, seed: int = 0, scale: float = 0.8, shift: float = 0.0,
                   dtype=torch.float32) -> Tensor:
    """(B, 7) weak-perspective cameras [s, tx, ty, q] with uniform random rotations and translations in +-shift."""
    gen = torch.Generator().manual_seed(seed)
    trans = (torch.rand(batch, 2, generator=gen, dtype=dtype) * 2 - 1) * shift
    quat = random_quaternions(batch, gen, dtype=dtype)
    return torch.cat([torch.full((batch, 1), scale, dtype=dtype), trans, quat], dim=1)


def projected_sphere(batch: int = 8, level: int = 3, seed: int = 0, scale: float = 0.8, shift: float = 0.0,
                     stretch: tuple = (1.0, 1.0, 1.0), dtype=torch.float32) -> tuple[Tensor, Tensor]:
    """Icosphere (optionally stretched to an ellipsoid) seen by random cameras: verts_ndc (B, V, 3), faces (F, 3)."""
    verts, faces = icosphere(level)
    verts = verts.to(dtype) * torch.tensor(stretch, dtype=dtype)
    cams = random_cameras(batch, seed, scale, shift, dtype)
    return weak_perspective_project(verts[None].expand(batch, -1, -1), cams), faces


def bird_like_mesh(batch: int = 8, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Stand-in for a bird mesh: a level-4 icosphere (2562 v / 5120 f) stretched to an elongated ellipsoid."""
    return projected_sphere(batch, level=4, seed=seed, scale=0.6, stretch=(0.6, 0.7, 1.4))


def random_triangles(batch: int, num_faces: int, seed: int = 0, spread: float = 0.8, size: float = 0.5,
                     dtype=torch.float64) -> tuple[Tensor, Tensor]:
    """Separate random triangles (a triangle soup): verts_ndc (B, 3F, 3) with depth in [-1, 1], faces (F, 3)."""
    gen = torch.Generator().manual_seed(seed)
    centres = (torch.rand(batch, num_faces, 1, 3, generator=gen, dtype=dtype) * 2 - 1) * spread
    corners = centres + (torch.rand(batch, num_faces, 3, 3, generator=gen, dtype=dtype) - 0.5) * size
    faces = torch.arange(3 * num_faces).reshape(num_faces, 3)
    return corners.reshape(batch, 3 * num_faces, 3), faces
