"""Template mesh and mesh utilities: icosphere, mirror symmetry, spherical UV, Laplacians, ARAP, normals, OBJ.

Convention: faces are (F, 3) int64 vertex indices, counter-clockwise seen from outside (right-hand normal points
out); the template is mirror-symmetric in x (the plane x = 0).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .geometry import check_shape


def _icosahedron() -> tuple[np.ndarray, np.ndarray]:
    phi = (1 + math.sqrt(5)) / 2
    verts = np.array([[-1, phi, 0], [1, phi, 0], [-1, -phi, 0], [1, -phi, 0],
                      [0, -1, phi], [0, 1, phi], [0, -1, -phi], [0, 1, -phi],
                      [phi, 0, -1], [phi, 0, 1], [-phi, 0, -1], [-phi, 0, 1]], dtype=np.float64)
    faces = np.array([[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11],
                      [1, 5, 9], [5, 11, 4], [11, 10, 2], [10, 7, 6], [7, 1, 8],
                      [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9],
                      [4, 9, 5], [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1]], dtype=np.int64)
    return verts / np.linalg.norm(verts, axis=1, keepdims=True), faces


def _subdivide(verts: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split every triangle in four at its edge midpoints (shared midpoints made once), projected to the sphere."""
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])  # (3F, 2)
    unique, inverse = np.unique(np.sort(edges, axis=1), axis=0, return_inverse=True)
    mids = verts[unique].mean(axis=1)
    mids /= np.linalg.norm(mids, axis=1, keepdims=True)
    m = inverse.reshape(3, -1) + len(verts)  # midpoint index of edges (01, 12, 20) per face
    a, b, c = faces.T
    new_faces = np.stack([np.stack([a, m[0], m[2]], 1), np.stack([b, m[1], m[0]], 1),
                          np.stack([c, m[2], m[1]], 1), np.stack([m[0], m[1], m[2]], 1)], 1).reshape(-1, 3)
    return np.concatenate([verts, mids]), new_faces


def icosphere(level: int = 3) -> tuple[Tensor, Tensor]:
    """Unit icosphere, mirror-symmetric in x (and y, z).

    Args:
        level: number of 4-way subdivisions of the icosahedron; level 3 gives 642 vertices and 1280 faces.
    Returns:
        verts (V, 3) float32 on the unit sphere, faces (F, 3) int64, counter-clockwise seen from outside.
    """
    if not isinstance(level, int) or level < 0:
        raise ValueError(f"level: expected an int >= 0, got {level!r}")
    verts, faces = _icosahedron()
    for _ in range(level):
        verts, faces = _subdivide(verts, faces)
    return torch.from_numpy(verts).float(), torch.from_numpy(faces)


@dataclass(frozen=True)
class SymmetricMesh:
    """A mesh mirror-symmetric in x with vertices ordered [centre (x = 0) | right (x > 0) | left (x < 0)].

    Fields:
        verts: (V, 3) reordered vertices; left vertex num_centre + num_right + i mirrors right vertex num_centre + i.
        faces: (F, 3) int64 faces on the reordered vertices (same order and winding as the input faces).
        num_centre, num_right: Vc, Vr (V = Vc + 2 Vr).
        left_partner: (Vr,) int64 index of the right partner of each left vertex (= Vc + i).
        mirror_index: (V,) int64 mirror of every vertex (centre vertices map to themselves).
        face_mirror: (F,) int64 index of the mirror image of every face.
    """

    verts: Tensor
    faces: Tensor
    num_centre: int
    num_right: int
    left_partner: Tensor
    mirror_index: Tensor
    face_mirror: Tensor


def make_symmetric(verts: Tensor, faces: Tensor, tol: float = 1e-5) -> SymmetricMesh:
    """Reorder a mirror-symmetric mesh as [centre | right | left] with left i the mirror of right i.

    Args:
        verts: (V, 3) vertices, symmetric under x -> -x up to ``tol`` (relative to the mesh size).
        faces: (F, 3) int64.
    Raises:
        ValueError if a vertex or face has no mirror image.
    """
    scale = float(verts.abs().max()) or 1.0
    x = verts[:, 0]
    centre = torch.nonzero(x.abs() <= tol * scale)[:, 0]
    right = torch.nonzero(x > tol * scale)[:, 0]
    left_all = torch.nonzero(x < -tol * scale)[:, 0]
    mirrored = verts[right] * torch.tensor([-1.0, 1.0, 1.0], dtype=verts.dtype)
    dist, match = torch.cdist(mirrored.double(), verts[left_all].double()).min(dim=1)
    worst = float(dist.max()) if len(right) else 0.0
    if len(left_all) != len(right) or worst > tol * scale * 10:
        raise ValueError(f"verts: expected a mesh mirror-symmetric in x, got {len(right)} right and "
                         f"{len(left_all)} left vertices (worst mirror distance {worst:.3g})")
    order = torch.cat([centre, right, left_all[match]])
    new_index = torch.empty_like(order)
    new_index[order] = torch.arange(len(order))
    Vc, Vr = len(centre), len(right)
    mirror_index = torch.cat([torch.arange(Vc), torch.arange(Vc + Vr, Vc + 2 * Vr), torch.arange(Vc, Vc + Vr)])
    new_faces = new_index[faces]
    return SymmetricMesh(verts[order], new_faces, Vc, Vr, torch.arange(Vc, Vc + Vr), mirror_index,
                         _face_mirror(new_faces, mirror_index))


def _face_mirror(faces: Tensor, mirror_index: Tensor) -> Tensor:
    key = lambda f: tuple(sorted(f))
    lookup = {key(f): i for i, f in enumerate(faces.tolist())}
    try:
        return torch.tensor([lookup[key(f)] for f in mirror_index[faces].tolist()], dtype=torch.long)
    except KeyError as err:
        raise ValueError(f"faces: expected every face to have a mirror face, missing {err}") from None


def symmetrize_vertices(verts_indep: Tensor, sym: SymmetricMesh) -> Tensor:
    """Full vertices from centre + right ones: left = right * (-1, 1, 1); centre x is set to 0.

    Args:
        verts_indep: (B, Vc + Vr, 3) centre then right vertices (or offsets), in the order of ``sym``.
    Returns:
        (B, V, 3) in the order of ``sym.verts``.
    """
    check_shape(verts_indep, "B N 3", "verts_indep", {"N": sym.num_centre + sym.num_right})
    centre = verts_indep[:, :sym.num_centre] * verts_indep.new_tensor([0.0, 1.0, 1.0])
    right = verts_indep[:, sym.num_centre:]
    return torch.cat([centre, right, right * right.new_tensor([-1.0, 1.0, 1.0])], dim=1)


def spherical_uv(points: Tensor) -> Tensor:
    """UV in [-1, 1] of directions from the origin (grid_sample convention).

    Convention: the pole axis is z: v = 2 theta / pi - 1 with theta = angle from +z (v = -1 at +z, top row);
    u = phi / pi with phi = atan2(x, -y), so u = 0 faces -y (up in the camera frame, y down), the seam u = +-1
    lies in the symmetry plane at +y, and the mirror x -> -x maps u to -u (a horizontal flip of the texture).
    Args:
        points: (..., 3).
    Returns:
        (..., 2) (u, v).
    """
    check_shape(points, "... 3", "points")
    radius = points.norm(dim=-1).clamp_min(1e-12)
    theta = torch.acos((points[..., 2] / radius).clamp(-1.0, 1.0))
    phi = torch.atan2(points[..., 0] + 0.0, 0.0 - points[..., 1])  # + 0.0: no -0.0, so u = 0 on the poles
    return torch.stack([phi / math.pi, 2 * theta / math.pi - 1], dim=-1)


def face_spherical_uv(verts: Tensor, faces: Tensor) -> Tensor:
    """(F, 3, 2) per-corner spherical UV, continuous inside each face: across the seam u is unwrapped past 1
    (the renderers wrap u), and a corner on the pole takes the mean u of the two other corners."""
    uv = spherical_uv(verts)[faces]  # (F, 3, 2)
    u = uv[..., 0]
    seam = (u.amax(dim=1) - u.amin(dim=1)) > 1
    u = torch.where(seam[:, None] & (u < 0), u + 2, u)
    on_pole = verts[faces][..., :2].norm(dim=-1) < 1e-6 * float(verts.abs().max())
    others = (u.sum(dim=1, keepdim=True) - u) / 2
    u = torch.where(on_pole, others, u)
    return torch.stack([u, uv[..., 1]], dim=-1)


def face_uv_sampler(verts: Tensor, faces: Tensor, tex_size: int = 6) -> Tensor:
    """CMR-style UV sampler: a T x T grid of points on each face, as spherical UV.

    Point (i, j) is v0 + a (v1 - v0) + b (v2 - v0) with a = i / (T - 1), b = j / (T - 1); points beyond the
    diagonal (a + b > 1) are folded back into the triangle ((a, b) -> (1 - a, 1 - b)).
    Returns:
        (F, T, T, 2) UV in [-1, 1] (each sample mapped on its own, so seam faces need no unwrapping).
    """
    steps = torch.linspace(0, 1, tex_size, dtype=verts.dtype) if tex_size > 1 else verts.new_full((1,), 1 / 3)
    a, b = torch.meshgrid(steps, steps, indexing="ij")
    fold = (a + b) > 1
    a, b = torch.where(fold, 1 - a, a), torch.where(fold, 1 - b, b)
    corners = verts[faces]  # (F, 3, 3)
    e1, e2 = corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]
    points = corners[:, None, None, 0] + a[..., None] * e1[:, None, None] + b[..., None] * e2[:, None, None]
    return spherical_uv(points)


def mesh_edges(faces: Tensor) -> Tensor:
    """(E, 2) int64 unique undirected edges (i < j) of (F, 3) faces, sorted."""
    edges = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).sort(dim=1).values
    if edges.numel() == 0:
        return edges.long()
    # one int64 key per edge: a 1-d unique is ~8x faster than unique over rows (called at every ARAP evaluation)
    n = int(edges.max()) + 1
    keys = torch.unique(edges[:, 0].long() * n + edges[:, 1])
    return torch.stack([keys // n, keys % n], dim=1)


def edge_lengths(verts: Tensor, faces: Tensor) -> Tensor:
    """(..., E) lengths of the ``mesh_edges(faces)`` of vertices (..., V, 3)."""
    edges = mesh_edges(faces)
    return (verts[..., edges[:, 0], :] - verts[..., edges[:, 1], :]).norm(dim=-1)


def face_normals(verts: Tensor, faces: Tensor) -> Tensor:
    """(..., F, 3) unit normals (right-hand rule on the corner order; zero for degenerate faces)."""
    corners = verts[..., faces, :]  # (..., F, 3, 3)
    normal = torch.cross(corners[..., 1, :] - corners[..., 0, :], corners[..., 2, :] - corners[..., 0, :], dim=-1)
    return normal / normal.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def vertex_normals(verts: Tensor, faces: Tensor) -> Tensor:
    """(..., V, 3) unit vertex normals: area-weighted mean of the adjacent face normals."""
    corners = verts[..., faces, :]
    area_normal = torch.cross(corners[..., 1, :] - corners[..., 0, :], corners[..., 2, :] - corners[..., 0, :], dim=-1)
    summed = torch.zeros_like(verts)
    for k in range(3):
        summed = summed.index_add(-2, faces[:, k], area_normal)
    return summed / summed.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def uniform_laplacian(faces: Tensor, num_verts: int) -> Tensor:
    """Sparse (V, V) float32 uniform Laplacian: (L x)_i = x_i - mean of the neighbours of i (0 rows for isolated
    vertices)."""
    edges = mesh_edges(faces)
    rows = torch.cat([edges[:, 0], edges[:, 1]])
    cols = torch.cat([edges[:, 1], edges[:, 0]])
    degree = torch.bincount(rows, minlength=num_verts).float()
    diag = torch.arange(num_verts, device=faces.device)
    values = torch.cat([-1.0 / degree[rows], (degree > 0).float()])
    index = torch.stack([torch.cat([rows, diag]), torch.cat([cols, diag])])
    return torch.sparse_coo_tensor(index, values, (num_verts, num_verts), check_invariants=False).coalesce()


def cotangent_laplacian(verts: Tensor, faces: Tensor, normalize: bool = False) -> Tensor:
    """Sparse (V, V) cotangent Laplacian: (L x)_i = sum_j w_ij (x_i - x_j), w_ij = (cot a_ij + cot b_ij) / 2.

    With ``normalize`` rows are divided by the vertex area (a third of the adjacent face areas), so that L x
    approximates the mean-curvature normal 2 H n. Differentiable w.r.t. verts (V, 3).
    """
    corners = verts[faces]  # (F, 3, 3)
    weights, rows, cols = [], [], []
    for k in range(3):  # angle at corner k is opposite edge (k + 1, k + 2)
        a, b = corners[:, (k + 1) % 3] - corners[:, k], corners[:, (k + 2) % 3] - corners[:, k]
        cot = (a * b).sum(-1) / torch.cross(a, b, dim=-1).norm(dim=-1).clamp_min(1e-12)
        i, j = faces[:, (k + 1) % 3], faces[:, (k + 2) % 3]
        weights += [cot / 2, cot / 2]
        rows += [i, j]
        cols += [j, i]
    w, rows, cols = torch.cat(weights), torch.cat(rows), torch.cat(cols)
    V = verts.shape[0]
    diag = torch.zeros(V, dtype=verts.dtype, device=verts.device).index_add(0, rows, w)
    values = torch.cat([-w, diag])
    diagonal = torch.arange(V, device=verts.device)
    index = torch.stack([torch.cat([rows, diagonal]), torch.cat([cols, diagonal])])
    if normalize:
        area = torch.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0], dim=-1).norm(dim=-1) / 2
        vertex_area = torch.zeros(V, dtype=verts.dtype, device=verts.device).index_add(
            0, faces.reshape(-1), area.repeat_interleave(3)) / 3
        values = values / vertex_area.clamp_min(1e-12)[index[0]]
    return torch.sparse_coo_tensor(index, values, (V, V), check_invariants=False).coalesce()


def laplacian_smoothing_loss(verts: Tensor, laplacian: Tensor) -> Tensor:
    """Mean squared norm of L v over the batch and vertices; verts (B, V, 3) or (V, 3), laplacian (V, V) sparse
    or dense. Returns a scalar."""
    batched = verts if verts.dim() == 3 else verts[None]
    B, V, _ = batched.shape
    flat = batched.permute(1, 0, 2).reshape(V, B * 3)
    lv = torch.sparse.mm(laplacian, flat) if laplacian.is_sparse else laplacian @ flat
    return lv.reshape(V, B, 3).square().sum(-1).mean()


def arap_energy(verts_a: Tensor, verts_b: Tensor, faces: Tensor) -> Tensor:
    """As-rigid-as-possible energy of deforming ``verts_a`` into ``verts_b`` (uniform edge weights).

    E = mean over directed edges (i, j) of |(b_i - b_j) - R_i (a_i - a_j)|^2, with R_i the best rotation of the
    one-ring of i (SVD, reflections excluded). R_i is computed without gradient: at the optimum dE/dR = 0, so the
    gradient w.r.t. both vertex sets is exact (envelope theorem) and free of SVD instabilities.
    Args:
        verts_a, verts_b: (B, V, 3) or (V, 3).
    Returns:
        (B,) or scalar energy.
    """
    if verts_a.shape != verts_b.shape:
        raise ValueError(f"verts_b: expected the shape of verts_a {tuple(verts_a.shape)}, got {tuple(verts_b.shape)}")
    edges = mesh_edges(faces)
    i = torch.cat([edges[:, 0], edges[:, 1]])
    j = torch.cat([edges[:, 1], edges[:, 0]])
    da = verts_a[..., i, :] - verts_a[..., j, :]  # (..., 2E, 3)
    db = verts_b[..., i, :] - verts_b[..., j, :]
    with torch.no_grad():
        cov = torch.zeros(verts_a.shape[:-1] + (3, 3), dtype=verts_a.dtype, device=verts_a.device)
        cov = cov.index_add(-3, i, da[..., :, None] * db[..., None, :])  # S_i = sum_j da db^T
        u, _, vh = torch.linalg.svd(cov)
        flip = torch.det(vh.transpose(-1, -2) @ u.transpose(-1, -2)) < 0
        vh = torch.where(flip[..., None, None], vh * vh.new_tensor([1.0, 1.0, -1.0])[:, None], vh)
        rot = vh.transpose(-1, -2) @ u.transpose(-1, -2)  # (..., V, 3, 3), R_i da ~ db
    residual = db - (rot[..., i, :, :] @ da[..., None])[..., 0]
    return residual.square().sum(-1).mean(-1)


def save_obj(path, verts: Tensor, faces: Tensor, uv: Tensor | None = None, face_uv: Tensor | None = None,
             texture_png_name: str | None = None) -> None:
    """Write an OBJ (and an MTL beside it when ``texture_png_name`` is given; the PNG itself is the caller's).

    Written as text here because trimesh cannot store per-corner UVs without splitting vertices; read it back
    with ``load_obj`` (trimesh). UVs use our convention ([-1, 1], v down) and are stored as OBJ vt
    ((u + 1) / 2, (1 - v) / 2).
    Args:
        verts: (V, 3); faces: (F, 3) int64; uv: (V, 2) per-vertex UV, or face_uv: (F, 3, 2) per-corner UV.
    """
    path = Path(path)
    check_shape(verts, "V 3", "verts")
    check_shape(faces, "F 3", "faces")
    lines = []
    if texture_png_name is not None:
        mtl = path.with_suffix(".mtl")
        mtl.write_text(f"newmtl material0\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nillum 1\nmap_Kd {texture_png_name}\n")
        lines += [f"mtllib {mtl.name}", "usemtl material0"]
    lines += [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in verts.detach().cpu().double().tolist()]
    corner_uv = None
    if face_uv is not None:
        corner_uv = face_uv.detach().cpu().double().reshape(-1, 2)
    elif uv is not None:
        corner_uv = uv.detach().cpu().double()[faces.reshape(-1)]
    if corner_uv is None:
        lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in faces.tolist()]
    else:
        table, corner_index = torch.unique(corner_uv, dim=0, return_inverse=True)
        lines += [f"vt {(u + 1) / 2:.6f} {(1 - v) / 2:.6f}" for u, v in table.tolist()]
        t = (corner_index.reshape(-1, 3) + 1).tolist()
        lines += [f"f {a + 1}/{ta} {b + 1}/{tb} {c + 1}/{tc}" for (a, b, c), (ta, tb, tc) in zip(faces.tolist(), t)]
    path.write_text("\n".join(lines) + "\n")


def load_obj(path) -> tuple[Tensor, Tensor]:
    """Read an OBJ with trimesh, keeping vertex order and count: verts (V, 3) float32, faces (F, 3) int64."""
    import trimesh

    mesh = trimesh.load(str(path), process=False, maintain_order=True, force="mesh")
    return torch.as_tensor(np.asarray(mesh.vertices), dtype=torch.float32), torch.as_tensor(
        np.asarray(mesh.faces), dtype=torch.int64)
