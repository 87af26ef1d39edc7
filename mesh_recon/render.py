"""Rendering entry points: soft (differentiable, SoftRas) and hard (z-buffer) images of batched meshes.

Convention: inputs are vertices already projected to NDC (x right, y down, in [-1, 1] on screen) with depth z
growing away from the viewer (see ``geometry.weak_perspective_project``); images are (B, C, H, W).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple, Union

import torch
from torch import Tensor, nn

from .geometry import check_shape
from .raster import HardFragments, foreground_pixels, rasterize_hard, rasterize_soft
from .shade import (aggregate_silhouette, blend_attributes, drop_occluded_pairs, interpolate_vertex_attributes,
                    sample_face_uv_texture, sample_texture_points, shade_soft)

ImageSize = Union[int, Tuple[int, int]]


def image_hw(image_size: ImageSize) -> tuple[int, int]:
    """(H, W) from an int (square) or an (H, W) pair; ValueError otherwise."""
    if isinstance(image_size, int) and image_size > 0:
        return image_size, image_size
    if (isinstance(image_size, (tuple, list)) and len(image_size) == 2
            and all(isinstance(s, int) and s > 0 for s in image_size)):
        return int(image_size[0]), int(image_size[1])
    raise ValueError(f"image_size: expected a positive int or (H, W), got {image_size!r}")


def check_mesh(verts_ndc: Tensor, faces: Tensor) -> dict:
    """Validate (B, V, 3) floating vertices and (F, 3) int64 faces indexing them; returns the sizes seen."""
    sizes: dict = {}
    check_shape(verts_ndc, "B V 3", "verts_ndc", sizes)
    check_shape(faces, "F 3", "faces", sizes)
    if not verts_ndc.is_floating_point():
        raise ValueError(f"verts_ndc: expected a floating dtype, got {verts_ndc.dtype}")
    if faces.dtype != torch.int64:
        raise ValueError(f"faces: expected dtype int64, got {faces.dtype}")
    if faces.numel() and (int(faces.min()) < 0 or int(faces.max()) >= sizes["V"]):
        raise ValueError(f"faces: expected indices in [0, {sizes['V']}), got [{int(faces.min())}, {int(faces.max())}]")
    return sizes


def render_hard(verts_ndc: Tensor, faces: Tensor, image_size: ImageSize) -> HardFragments:
    """Z-buffer rasterization for exports and overlays (any resolution, e.g. (480, 854)).

    Args:
        verts_ndc: (B, V, 3) NDC x, y and depth z (nearer = smaller z).
        faces: (F, 3) int64 faces shared by the batch.
        image_size: int (square) or (H, W).
    Returns:
        HardFragments: face_index (B, H, W) int64 (-1 background), bary (B, H, W, 3), depth (B, H, W) (+inf
        background), mask (B, 1, H, W) float 0/1.
    """
    check_mesh(verts_ndc, faces)
    height, width = image_hw(image_size)
    return rasterize_hard(verts_ndc, faces, height, width)


def _hard_face_values(fragments: HardFragments, face_values: Tensor) -> Tensor:
    """Barycentric mix of per-face corner values (B, F, 3, C) at each pixel -> (B, C, H, W), 0 on background."""
    B, F, _, C = face_values.shape
    H, W = fragments.face_index.shape[1:]
    fg, packed = foreground_pixels(fragments.face_index, F)
    table = face_values.permute(2, 3, 0, 1).reshape(3, C, B * F)
    bary = fragments.bary.permute(3, 0, 1, 2).reshape(3, -1).index_select(1, fg)  # (3, P)
    values = sum(bary[j] * torch.stack([row.index_select(0, packed) for row in table[j]]) for j in range(3))
    image = face_values.new_zeros(C, B * H * W).index_copy(1, fg, values.to(face_values.dtype))
    return image.reshape(C, B, H, W).transpose(0, 1).contiguous()


def interpolate_hard(fragments: HardFragments, faces: Tensor, attrs: Tensor) -> Tensor:
    """Per-vertex attributes interpolated at the visible surface of a hard rasterization.

    Args:
        fragments: from ``render_hard`` (B, H, W).
        faces: (F, 3) int64 faces used for the rasterization.
        attrs: (B, V, C) per-vertex attributes (colours, normals, depth, one-hot parts...).
    Returns:
        (B, C, H, W) interpolated attributes, 0 on background.
    """
    check_shape(attrs, "B V C", "attrs", {"B": fragments.face_index.shape[0]})
    check_shape(faces, "F 3", "faces")
    return _hard_face_values(fragments, attrs[:, faces])


def sample_texture_hard(fragments: HardFragments, face_uvs: Tensor, texture: Tensor,
                        background: Tensor | None = None) -> Tensor:
    """UV texture lookup at the visible surface of a hard rasterization.

    Args:
        fragments: from ``render_hard`` (B, H, W).
        face_uvs: (F, 3, 2) per-corner UV in [-1, 1] (u may exceed [-1, 1] on seam faces: it wraps).
        texture: (B, C, Ht, Wt) textures.
        background: (C,) value of background pixels, 0 when None.
    Returns:
        (B, C, H, W) sampled texture.
    """
    B = fragments.face_index.shape[0]
    check_shape(face_uvs, "F 3 2", "face_uvs")
    check_shape(texture, "B C Ht Wt", "texture", {"B": B})
    uv = _hard_face_values(fragments, face_uvs.to(texture.dtype).expand(B, -1, -1, -1))  # (B, 2, H, W)
    b_idx, py, px = torch.nonzero(fragments.face_index >= 0, as_tuple=True)
    values = sample_texture_points(texture, uv[b_idx, :, py, px].t(), b_idx).t()  # (P, C)
    C, (H, W) = texture.shape[1], fragments.face_index.shape[1:]
    image = texture.new_zeros(B, H, W, C)
    if background is not None:
        image = image + torch.as_tensor(background, dtype=texture.dtype, device=texture.device).reshape(C)
    return image.index_put((b_idx, py, px), values).permute(0, 3, 1, 2)


def render_silhouette(verts_ndc: Tensor, faces: Tensor, image_size: ImageSize, sigma: float = 1e-4) -> Tensor:
    """Soft silhouettes (SoftRas): 1 - prod_f (1 - sigmoid(+-d^2 / sigma)).

    Args:
        verts_ndc: (B, V, 3) NDC x, y, depth z.
        faces: (F, 3) int64 shared faces.
        image_size: int or (H, W).
        sigma: sharpness in NDC^2 (1e-4 = a blur of about 0.6 pixel at 128 px).
    Returns:
        (B, 1, H, W) in [0, 1], differentiable w.r.t. verts_ndc.
    """
    check_mesh(verts_ndc, faces)
    height, width = image_hw(image_size)
    return aggregate_silhouette(rasterize_soft(verts_ndc, faces, height, width, sigma, with_bary=False))


def render_vertex_attributes(verts_ndc: Tensor, faces: Tensor, attrs: Tensor, image_size: ImageSize,
                             sigma: float = 1e-4, gamma: float = 1e-4, background: Tensor | None = None) -> Tensor:
    """Soft rendering of per-vertex attributes (colours, features, depth...), softmax over depth.

    Args:
        verts_ndc: (B, V, 3); faces: (F, 3) int64; attrs: (B, V, C).
        image_size: int or (H, W); sigma: coverage sharpness (NDC^2); gamma: depth softmax temperature.
        background: (C,) or (B, C), 0 when None.
    Returns:
        (B, C, H, W), differentiable w.r.t. verts_ndc and attrs.
    """
    sizes = check_mesh(verts_ndc, faces)
    check_shape(attrs, "B V C", "attrs", sizes)
    height, width = image_hw(image_size)
    fragments = drop_occluded_pairs(rasterize_soft(verts_ndc, faces, height, width, sigma), gamma)
    return blend_attributes(fragments, interpolate_vertex_attributes(fragments, faces, attrs), gamma, background)


def render_uv_texture(verts_ndc: Tensor, faces: Tensor, uvs: Tensor, texture: Tensor, image_size: ImageSize,
                      sigma: float = 1e-4, gamma: float = 1e-4, background: Tensor | None = None) -> Tensor:
    """Soft rendering of a UV-mapped texture with any number of channels (RGB, or K one-hot parts at once).

    Args:
        verts_ndc: (B, V, 3); faces: (F, 3) int64.
        uvs: (F, 3, 2) per-corner UV or (V, 2) per-vertex UV, in [-1, 1] (grid_sample convention; u wraps).
        texture: (B, C, Ht, Wt).
        image_size, sigma, gamma, background: as ``render_vertex_attributes``.
    Returns:
        (B, C, H, W), differentiable w.r.t. verts_ndc and texture.
    """
    sizes = check_mesh(verts_ndc, faces)
    check_shape(texture, "B C Ht Wt", "texture", sizes)
    face_uvs = _face_uvs(uvs, faces, sizes["V"])
    height, width = image_hw(image_size)
    fragments = drop_occluded_pairs(rasterize_soft(verts_ndc, faces, height, width, sigma), gamma)
    return blend_attributes(fragments, sample_face_uv_texture(fragments, face_uvs, texture), gamma, background)


def render_depth(verts_ndc: Tensor, faces: Tensor, image_size: ImageSize, sigma: float = 1e-4,
                 gamma: float = 1e-4, background: Tensor | float | None = None) -> Tensor:
    """Soft depth z (softmax over depth of the interpolated z); background = farthest vertex depth when None.

    Returns:
        (B, 1, H, W) depth, differentiable w.r.t. verts_ndc.
    """
    check_mesh(verts_ndc, faces)
    if background is None:
        background = verts_ndc.detach()[..., 2].amax(dim=1, keepdim=True)  # (B, 1)
    return render_vertex_attributes(verts_ndc, faces, verts_ndc[..., 2:], image_size, sigma, gamma,
                                    torch.as_tensor(background, dtype=verts_ndc.dtype).reshape(-1, 1))


def _face_uvs(uvs: Tensor, faces: Tensor, num_verts: int) -> Tensor:
    if uvs.dim() == 2:
        check_shape(uvs, "V 2", "uvs", {"V": num_verts})
        return uvs[faces]
    check_shape(uvs, "F 3 2", "uvs", {"F": faces.shape[0]})
    return uvs


@dataclass(frozen=True)
class SoftRenderSettings:
    """Settings of ``SoftRenderer``: image_size int or (H, W); sigma (NDC^2) coverage sharpness; gamma depth
    softmax temperature; background (C,) value of attribute channels or None for 0."""

    image_size: ImageSize = 128
    sigma: float = 1e-4
    gamma: float = 1e-4
    background: tuple | None = None


class SoftRenderer(nn.Module):
    """Soft renderer of per-vertex attributes or UV textures plus silhouette, in one rasterization.

    forward(verts_ndc (B, V, 3), faces (F, 3), attrs (B, V, C) | None, face_uvs (F, 3, 2) | None,
    texture (B, C, Ht, Wt) | None) -> (B, C + 1, H, W): C shaded channels then the silhouette
    (C = 0 when neither attrs nor texture is given).
    """

    def __init__(self, settings: SoftRenderSettings = SoftRenderSettings()):
        super().__init__()
        self.settings = settings
        self.height, self.width = image_hw(settings.image_size)

    def forward(self, verts_ndc: Tensor, faces: Tensor, attrs: Tensor | None = None,
                face_uvs: Tensor | None = None, texture: Tensor | None = None) -> Tensor:
        s = self.settings
        fragments = rasterize_soft(verts_ndc, faces, self.height, self.width, s.sigma, with_bary=True)
        return shade_soft(fragments, faces, attrs, face_uvs, texture, s.gamma, s.background)
