"""Losses of the online adaptation, one function each (inputs are plain tensors, crop NDC).

Convention: part maps are (B, K + 1, S, S) with channel 0 the background; only channels 1..K are compared.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from correspondence.ops import coordinate_grid
from mesh_recon.losses import coverage_pulls
from mesh_recon.mesh import arap_energy, face_normals, laplacian_smoothing_loss
from mesh_recon.shade import sample_texture_points


def part_centres(parts: Tensor) -> tuple[Tensor, Tensor]:
    """Soft centre (x, y) of every part channel and its mass.

    Args:
        parts: (B, K, S, S) non-negative maps.
    Returns:
        centres (B, K, 2) in NDC, mass (B, K) = mean of each map.
    """
    B, K, H, W = parts.shape
    grid = coordinate_grid(H, W, device=parts.device, dtype=parts.dtype)  # (H W, 2)
    flat = parts.flatten(2)
    mass = flat.sum(2)
    centres = (flat @ grid) / mass.clamp_min(1e-6)[..., None]
    return centres, mass / (H * W)


def part_correspondence_loss(rendered: Tensor, observed: Tensor, min_mass: float = 1e-3) -> tuple[Tensor, Tensor]:
    """Rendered video-level parts vs the propagated parts of the same frames.

    (a) per-part maps, each divided by its maximum, compared by MSE (so small parts count as much as large
    ones); (b) squared distance between part centres. Parts absent from the observation (mass below
    ``min_mass``) are left out of both terms.
    Args:
        rendered, observed: (B, K + 1, S, S) soft part maps (channel 0 background).
    Returns:
        (map loss, centre loss) scalars.
    """
    rendered, observed = rendered[:, 1:], observed[:, 1:]
    present = (observed.mean(dim=(2, 3)) > min_mass).float()  # (B, K)
    norm_r = rendered / rendered.amax(dim=(2, 3), keepdim=True).clamp_min(1e-3)
    norm_o = observed / observed.amax(dim=(2, 3), keepdim=True).clamp_min(1e-3)
    per_part = ((norm_r - norm_o) ** 2).mean(dim=(2, 3))
    count = present.sum().clamp_min(1.0)
    map_loss = (per_part * present).sum() / count
    centre_r, _ = part_centres(rendered)
    centre_o, _ = part_centres(observed)
    centre_loss = (((centre_r - centre_o) ** 2).sum(-1) * present).sum() / count
    return map_loss, centre_loss


def vertex_parts(parts_uv: Tensor, faces: Tensor, face_uvs: Tensor, num_verts: int) -> Tensor:
    """(V,) int64 part of each vertex: the video-level part UV map ``parts_uv`` (K + 1, Hu, Wu) sampled at the
    vertex's face corners ``face_uvs`` (F, 3, 2) of ``faces`` (F, 3), summed over them, argmax (0 = background)."""
    zero = torch.zeros(face_uvs.shape[0] * 3, dtype=torch.long, device=parts_uv.device)
    corner = sample_texture_points(parts_uv[None], face_uvs.reshape(-1, 2).T.to(parts_uv.dtype), zero)  # (K+1, 3F)
    summed = torch.zeros(num_verts, parts_uv.shape[0], dtype=parts_uv.dtype, device=parts_uv.device)
    return summed.index_add_(0, faces.reshape(-1), corner.T).argmax(1)


def part_coverage_loss(verts_ndc: Tensor, vert_part: Tensor, rendered: Tensor, observed: Tensor,
                       radius: float | None = None) -> Tensor:
    """The coverage pull part by part: every pixel propagated as part k (> 0.5) that the rendering does not show as
    part k pulls the nearest projected vertex of part k (``coverage_loss``, Huber beyond ``radius``).

    The plain coverage pull stops once the silhouette covers a pixel, whichever limb covers it, and pulls whichever
    vertex is nearest: a flamingo's leg drawn over the water where its head feeds satisfies it. The propagated parts
    say which part of the bird is there.
    Args:
        verts_ndc: (B, V, 2+) projected vertices; vert_part: (V,) int64 (``vertex_parts``);
        rendered, observed: (B, K + 1, S, S) soft part maps (channel 0 background).
    Returns:
        scalar: sum of weighted pulls over parts / the pixels of all parts (0 when every part is where it was seen).
    """
    total, area = verts_ndc.new_zeros(()), verts_ndc.new_zeros(())
    for k in range(1, observed.shape[1]):  # one nearest-vertex search per part, among its own vertices
        members = torch.nonzero(vert_part == k).squeeze(1)
        if len(members) == 0:
            area = area + (observed[:, k] > 0.5).sum()
            continue
        pulls, observed_k = coverage_pulls(verts_ndc[:, members], observed[:, k:k + 1], rendered[:, k:k + 1], radius)
        total, area = total + pulls, area + observed_k
    return total / area.clamp_min(1.0)


def base_shape_loss(verts: Tensor, base: Tensor, faces: Tensor, laplacian: Tensor) -> tuple[Tensor, Tensor]:
    """How far each frame's mesh departs from the shared base shape, beyond a rigid motion of each one-ring.

    Args:
        verts: (B, V, 3) per-frame canonical vertices; base: (V, 3) the shared base shape.
        faces: (F, 3); laplacian: (V, V) (sparse or dense) Laplacian of the template.
    Returns:
        (ARAP energy, Laplacian of the residual) scalars.
    """
    arap = arap_energy(base.expand_as(verts), verts, faces).mean()
    return arap, laplacian_smoothing_loss(verts - base, laplacian)


def temporal_smoothness(values: Tensor) -> Tensor:
    """Mean squared change between consecutive rows: values (B, ...) ordered in time -> scalar (0 if B < 2)."""
    if values.shape[0] < 2:
        return values.new_zeros(())
    return ((values[1:] - values[:-1]) ** 2).flatten(1).sum(1).mean()


def quaternion_smoothness(quats: Tensor) -> Tensor:
    """Mean rotation change between consecutive unit quaternions (B, 4): 1 - |q_t . q_t+1| (sign-free)."""
    if quats.shape[0] < 2:
        return quats.new_zeros(())
    return (1 - (quats[1:] * quats[:-1]).sum(-1).abs()).mean()


def face_pairs(faces: Tensor) -> Tensor:
    """(P, 2) int64 pairs of faces sharing an edge (edges with exactly two faces) of (F, 3) faces."""
    edges = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).sort(dim=1).values
    owner = torch.arange(len(faces), device=faces.device).repeat(3)
    key = edges[:, 0] * (int(edges.max()) + 1) + edges[:, 1]
    key, order = key.sort(stable=True)
    owner = owner[order]
    _, counts = torch.unique_consecutive(key, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    pairs = starts[counts == 2]
    return torch.stack([owner[pairs], owner[pairs + 1]], 1)


def adjacent_cosines(verts: Tensor, faces: Tensor, pairs: Tensor) -> Tensor:
    """(..., P) cosines between the normals of each face pair of vertices (..., V, 3)."""
    normal = face_normals(verts, faces)
    return (normal[..., pairs[:, 0], :] * normal[..., pairs[:, 1], :]).sum(-1)


@dataclass(frozen=True)
class FoldReference:
    """What ``fold_loss`` compares with: the (P, 2) face pairs of a mesh and their normals' cosines (P,) on its rest
    shape."""

    pairs: Tensor
    rest_cos: Tensor


def fold_loss(verts: Tensor, faces: Tensor, rest: FoldReference) -> Tensor:
    """Mean loss of flatness between adjacent faces beyond the rest shape's: relu(cos_rest - cos), (B, V, 3) verts.

    Zero while every pair of faces is at least as flat as on the rest bird; a fold or a spike (normals turned
    apart) costs up to 2 per pair.
    """
    return F.relu(rest.rest_cos - adjacent_cosines(verts, faces, rest.pairs)).mean()


def fold_reference(rest_verts: Tensor, faces: Tensor) -> FoldReference:
    """The fold data of a rest shape (V, 3) with faces (F, 3)."""
    pairs = face_pairs(faces)
    return FoldReference(pairs, adjacent_cosines(rest_verts, faces, pairs).detach())
