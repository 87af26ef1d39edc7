"""Shading: turn rasterized fragments into images (silhouette, attribute and texture aggregation).

Convention: UV coordinates are in [-1, 1] as for ``grid_sample(align_corners=False)``: u (x) indexes texture
columns, v (y) rows, v = -1 at the top. u is periodic (wraps around, the seam of a spherical map), v is
clamped to the border. Per-pair values are laid out channel-first, (C, P), so every gather and scatter is 1-D.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .raster import Fragments


def sample_texture_points(texture: Tensor, uv: Tensor, batch_index: Tensor) -> Tensor:
    """Bilinear texture lookups at scattered points, differentiable w.r.t. texture and uv.

    Args:
        texture: (B, C, Ht, Wt) textures.
        uv: (2, P) UV coordinates in [-1, 1] (u wraps, v clamped).
        batch_index: (P,) int64 texture of each point.
    Returns:
        (C, P) sampled values.
    """
    B, C, Ht, Wt = texture.shape
    uv = torch.nan_to_num(uv, nan=0.0, posinf=1.0, neginf=-1.0)
    channels = texture.transpose(0, 1).reshape(C, B * Ht * Wt)
    fu = ((uv[0] + 1) * Wt - 1) / 2
    fv = (((uv[1] + 1) * Ht - 1) / 2).clamp(0, Ht - 1)
    u0, v0 = torch.floor(fu.detach()), torch.floor(fv.detach())
    au, av = fu - u0, fv - v0
    u0 = u0.long().remainder(Wt)
    u1 = (u0 + 1).remainder(Wt)
    v0 = v0.long()
    v1 = (v0 + 1).clamp_max(Ht - 1)
    rows0, rows1 = batch_index * (Ht * Wt) + v0 * Wt, batch_index * (Ht * Wt) + v1 * Wt
    taps = torch.cat([rows0 + u0, rows0 + u1, rows1 + u0, rows1 + u1])  # (4P,)
    weights = torch.stack([(1 - au) * (1 - av), au * (1 - av), (1 - au) * av, au * av])  # (4, P)
    values = [channel.index_select(0, taps).reshape(4, -1) for channel in channels]
    return torch.stack([(weights * value).sum(0) for value in values])


class _GatherFaces(torch.autograd.Function):
    """(n, N) per-face rows gathered at the face-sorted pairs -> (n, P); backward = segment sums (fast)."""

    @staticmethod
    def forward(ctx, table, face, counts):
        ctx.save_for_backward(counts)
        return torch.stack([row.index_select(0, face) for row in table])

    @staticmethod
    def backward(ctx, grad):
        (counts,) = ctx.saved_tensors
        return torch.stack([torch.segment_reduce(row, "sum", lengths=counts) for row in grad]), None, None


def gather_face_values(table: Tensor, fragments: Fragments) -> Tensor:
    """Per-face values (n, B * F) (packed faces) at each pair -> (n, P); differentiable w.r.t. table."""
    return _GatherFaces.apply(table.contiguous(), fragments.face, fragments.face_counts)


def aggregate_silhouette(fragments: Fragments) -> Tensor:
    """Soft silhouette I = 1 - prod_f (1 - D_f), computed in the log domain as 1 - exp(-sum_f -log sigmoid(-logit)).

    Returns:
        (B, 1, H, W) in [0, 1].
    """
    B, H, W = fragments.batch_size, fragments.height, fragments.width
    # -log(1 - D) = -log sigmoid(-logit); logit >= log(eps / (1 - eps)) after culling, and the clamp keeps
    # sigmoid(-logit) above float32's smallest normal (beyond it the pixel is 1 anyway).
    neg_log = -torch.log(torch.sigmoid(-fragments.logit.clamp_max(80.0)))
    total = neg_log.new_zeros(B * H * W).scatter_add(0, fragments.pixel, neg_log)
    return (1 - torch.exp(-total)).reshape(B, 1, H, W)


def interpolate_vertex_attributes(fragments: Fragments, faces: Tensor, attrs: Tensor) -> Tensor:
    """(C, P) per-pair attributes: barycentric mix of per-vertex ``attrs`` (B, V, C) over each pair's face."""
    B, V, C = attrs.shape
    corners = attrs[:, faces]  # (B, F, 3, C)
    table = corners.permute(2, 3, 0, 1).reshape(3 * C, B * faces.shape[0])  # row j * C + c
    values = gather_face_values(table, fragments).reshape(3, C, -1)
    return (fragments.bary[:, None, :] * values).sum(0)


def sample_face_uv_texture(fragments: Fragments, face_uvs: Tensor, texture: Tensor) -> Tensor:
    """(C, P) per-pair texture values at the barycentric mix of per-corner UVs ``face_uvs`` (F, 3, 2)."""
    B = fragments.batch_size
    table = face_uvs.to(texture.dtype).permute(1, 2, 0).reshape(6, 1, -1).expand(6, B, -1).reshape(6, -1)
    uv = (fragments.bary[:, None, :] * gather_face_values(table, fragments).reshape(3, 2, -1)).sum(0)  # (2, P)
    batch = torch.div(fragments.face, fragments.faces_per_mesh, rounding_mode="floor")
    return sample_texture_points(texture, uv, batch)


def _log_weights(fragments: Fragments, gamma: float, background_eps: float) -> tuple[Tensor, Tensor, float]:
    """Per-pair log softmax weight (P,), per-pixel peak (B*H*W,) (not differentiated), background log weight."""
    B, H, W = fragments.batch_size, fragments.height, fragments.width
    log_weight = torch.log(torch.sigmoid(fragments.logit)) + fragments.depth_norm / gamma
    log_bg = background_eps / gamma
    peak = torch.full((B * H * W,), log_bg, dtype=log_weight.dtype, device=log_weight.device)
    return log_weight, peak.scatter_reduce(0, fragments.pixel, log_weight.detach(), reduce="amax"), log_bg


def drop_occluded_pairs(fragments: Fragments, gamma: float = 1e-4, background_eps: float = 1e-3,
                        log_margin: float = 30.0) -> Fragments:
    """The pairs whose softmax-over-depth weight is at least exp(-log_margin) times their pixel's largest weight.

    Hidden surfaces weigh ~exp(-depth gap / gamma): with gamma = 1e-4 most back faces fall far below the margin.
    ``blend_attributes`` on the result differs from the full fragments by < exp(-log_margin) relative, at a
    fraction of the cost; the silhouette must still be computed on the full fragments.
    Returns:
        Fragments with the kept pairs (fields gathered differentiably, face_counts recounted).
    """
    log_weight, peak, _ = _log_weights(fragments, gamma, background_eps)
    keep = torch.nonzero(log_weight.detach() >= peak.index_select(0, fragments.pixel) - log_margin).reshape(-1)
    face = fragments.face.index_select(0, keep)
    return Fragments(fragments.pixel.index_select(0, keep), face,
                     torch.bincount(face, minlength=fragments.face_counts.shape[0]),
                     fragments.logit.index_select(0, keep), fragments.bary.index_select(1, keep),
                     fragments.depth_norm.index_select(0, keep), fragments.batch_size, fragments.height,
                     fragments.width, fragments.faces_per_mesh)


def blend_attributes(fragments: Fragments, pair_values: Tensor, gamma: float = 1e-4,
                     background: Tensor | None = None, background_eps: float = 1e-3) -> Tensor:
    """Softmax-over-depth blending of per-pair values (SoftRas aggregation).

    Each pair weighs w = D exp(zn / gamma), with D = sigmoid(logit) and zn = ``fragments.depth_norm`` in [0, 1]
    (1 = nearest vertex of the mesh); the background weighs exp(background_eps / gamma). Computed in the log domain
    with the per-pixel maximum subtracted, so no overflow and no 0/0.
    Args:
        fragments: from ``rasterize_soft(..., with_bary=True)``, P pairs.
        pair_values: (C, P) values per pair (e.g. ``interpolate_vertex_attributes``).
        gamma: softmax temperature on normalized depth (small = sharper, closer to a z-buffer).
        background: (C,) or (B, C) background value; 0 when None.
    Returns:
        (B, C, H, W) blended values.
    """
    B, H, W = fragments.batch_size, fragments.height, fragments.width
    pixel = fragments.pixel
    log_weight, peak, log_bg = _log_weights(fragments, gamma, background_eps)
    weight = torch.exp(log_weight - peak.index_select(0, pixel))
    weight_bg = torch.exp(log_bg - peak)  # (B*H*W,)
    denom = weight_bg.scatter_add(0, pixel, weight)
    numer = [torch.zeros_like(denom).scatter_add(0, pixel, weight * value) for value in pair_values]
    image = torch.stack(numer) / denom  # (C, B*H*W)
    if background is not None:
        bg = torch.as_tensor(background, dtype=image.dtype, device=image.device).expand(B, len(numer))
        image = image + (weight_bg / denom) * bg.t().repeat_interleave(H * W, dim=1)
    return image.reshape(-1, B, H, W).transpose(0, 1)


def shade_soft(fragments: Fragments, faces: Tensor, attrs: Tensor | None = None, face_uvs: Tensor | None = None,
               texture: Tensor | None = None, gamma: float = 1e-4, background=None) -> Tensor:
    """Blended attributes (``attrs`` (B, V, C)) or texture (``face_uvs`` (F, 3, 2) + ``texture`` (B, C, Ht, Wt))
    followed by the silhouette: (B, C + 1, H, W); only the silhouette (B, 1, H, W) when neither is given."""
    silhouette = aggregate_silhouette(fragments)
    fragments = drop_occluded_pairs(fragments, gamma)
    if attrs is not None:
        values = interpolate_vertex_attributes(fragments, faces, attrs)
    elif texture is not None and face_uvs is not None:
        values = sample_face_uv_texture(fragments, face_uvs, texture)
    else:
        return silhouette
    return torch.cat([blend_attributes(fragments, values, gamma, background), silhouette], dim=1)
