"""Rotations, cameras and screen coordinates.

Convention (DESIGN.md): camera frame as in OpenCV (x right, y down, z away from the viewer, so the nearer
surface has the smaller z); screen space is normalized device coordinates (NDC) in [-1, 1] with x right and
y down, the same as ``grid_sample(align_corners=False)``: pixel centre i of a W-pixel row is at (2i + 1)/W - 1.
Quaternions are (w, x, y, z), real part first; q and -q are the same rotation.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import Tensor


def check_shape(x: Tensor, layout: str, name: str, sizes: dict | None = None) -> None:
    """Raise ``ValueError`` unless ``x`` matches ``layout``, e.g. ``"B V 3"`` or ``"... 4"``.

    Letters are free dimensions, digits fixed sizes, a leading ``...`` any number of leading dimensions;
    ``sizes`` pins letters to known values (e.g. ``{"B": 8}``) and receives the letters seen.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of shape ({layout}), got {type(x).__name__}")
    dims = layout.split()
    ellipsis = dims[0] == "..."
    dims = dims[1:] if ellipsis else dims
    shape = tuple(x.shape)
    ok = len(shape) >= len(dims) if ellipsis else len(shape) == len(dims)
    sizes = {} if sizes is None else sizes
    if ok:
        for dim, got in zip(dims, shape[len(shape) - len(dims):]):
            if dim.isdigit():
                ok = ok and int(dim) == got
            elif sizes.setdefault(dim, got) != got:
                ok = False
    if not ok:
        pinned = {k: v for k, v in sizes.items() if k in dims}
        raise ValueError(f"{name}: expected shape ({layout}){' with ' + str(pinned) if pinned else ''}, "
                         f"got {shape}")


def quaternion_to_rotation_matrix(quat: Tensor) -> Tensor:
    """Rotation matrices of quaternions (normalized here, so any non-zero scale is fine).

    Args:
        quat: (..., 4) quaternions (w, x, y, z).
    Returns:
        (..., 3, 3) proper rotation matrices R, acting on column vectors (R @ X).
    """
    check_shape(quat, "... 4", "quat")
    w, x, y, z = torch.unbind(quat / quat.norm(dim=-1, keepdim=True).clamp_min(1e-12), dim=-1)
    rows = (
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    )
    return torch.stack(rows, dim=-1).reshape(quat.shape[:-1] + (3, 3))


def rotation_matrix_to_quaternion(rotation: Tensor) -> Tensor:
    """Quaternions of rotation matrices (Shepperd's method, stable for every angle).

    Args:
        rotation: (..., 3, 3) proper rotation matrices.
    Returns:
        (..., 4) unit quaternions (w, x, y, z) with w >= 0.
    """
    check_shape(rotation, "... 3 3", "rotation")
    m = rotation
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    trace = m00 + m11 + m22
    # Four candidate solutions (row k = 4 q_k q), each accurate when its leading component is the largest.
    candidates = torch.stack([
        torch.stack([1 + trace, m21 - m12, m02 - m20, m10 - m01], -1),
        torch.stack([m21 - m12, 1 + 2 * m00 - trace, m01 + m10, m02 + m20], -1),
        torch.stack([m02 - m20, m01 + m10, 1 + 2 * m11 - trace, m12 + m21], -1),
        torch.stack([m10 - m01, m02 + m20, m12 + m21, 1 + 2 * m22 - trace], -1),
    ], dim=-2)  # (..., 4, 4)
    leading = torch.stack([trace, m00, m11, m22], -1).argmax(-1)
    quat = torch.gather(candidates, -2, leading[..., None, None].expand(leading.shape + (1, 4))).squeeze(-2)
    quat = quat / quat.norm(dim=-1, keepdim=True)
    return torch.where(quat[..., :1] < 0, -quat, quat)


def random_quaternions(n: int, generator: torch.Generator | None = None, dtype=torch.float32,
                       device=None) -> Tensor:
    """(n, 4) quaternions (w, x, y, z) of rotations drawn uniformly from SO(3), w >= 0."""
    quat = torch.randn(n, 4, generator=generator, dtype=dtype, device=device)
    quat = quat / quat.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return torch.where(quat[:, :1] < 0, -quat, quat)


def random_rotations(n: int, generator: torch.Generator | None = None, dtype=torch.float32,
                     device=None) -> Tensor:
    """(n, 3, 3) rotation matrices drawn uniformly from SO(3) (Haar measure, via normalized Gaussian quaternions)."""
    return quaternion_to_rotation_matrix(random_quaternions(n, generator, dtype, device))


def weak_perspective_project(verts: Tensor, cams: Tensor) -> Tensor:
    """Weak-perspective projection of object-space vertices to NDC with depth.

    Convention: cams = [s, tx, ty, qw, qx, qy, qz]; xy = s * (R X)[:2] + t, z = (R X)[2] (not scaled),
    z grows away from the viewer.
    Args:
        verts: (B, V, 3) object-space vertices.
        cams: (B, 7) cameras.
    Returns:
        (B, V, 3): NDC x (right), NDC y (down), depth z.
    """
    sizes: dict = {}
    check_shape(verts, "B V 3", "verts", sizes)
    check_shape(cams, "B 7", "cams", sizes)
    rotated = verts @ quaternion_to_rotation_matrix(cams[:, 3:]).transpose(1, 2)  # (B, V, 3)
    xy = cams[:, None, :1] * rotated[..., :2] + cams[:, None, 1:3]
    return torch.cat([xy, rotated[..., 2:]], dim=-1)


def perspective_project(verts_cam: Tensor, focal: Union[Tensor, float],
                        principal: Sequence[float] | Tensor = (0.0, 0.0), min_depth: float = 1e-6) -> Tensor:
    """Pinhole projection of camera-frame vertices to NDC with depth.

    Convention: x_ndc = focal * X / Z + px, y_ndc = focal * Y / Z + py, z = Z (> 0 in front of the camera);
    focal is in NDC units (focal = 1 sees a 90 degree field of view across the width).
    Depths below ``min_depth`` are clamped before the division (keeps points behind the camera finite).
    Args:
        verts_cam: (B, V, 3) vertices in the camera frame.
        focal: float or (B,) focal lengths.
        principal: (2,) or (B, 2) principal point in NDC.
    Returns:
        (B, V, 3): NDC x, NDC y, depth Z.
    """
    check_shape(verts_cam, "B V 3", "verts_cam")
    focal = torch.as_tensor(focal, dtype=verts_cam.dtype, device=verts_cam.device).reshape(-1, 1, 1)
    principal = torch.as_tensor(principal, dtype=verts_cam.dtype, device=verts_cam.device).reshape(-1, 1, 2)
    if focal.shape[0] not in (1, verts_cam.shape[0]):
        raise ValueError(f"focal: expected a float or shape ({verts_cam.shape[0]},), got {tuple(focal.shape)}")
    depth = verts_cam[..., 2:]
    xy = focal * verts_cam[..., :2] / depth.clamp_min(min_depth) + principal
    return torch.cat([xy, depth], dim=-1)


def _image_wh(width: int, height: int, like: Tensor) -> Tensor:
    return torch.tensor([width, height], dtype=like.dtype, device=like.device)


def ndc_to_pixels(xy: Tensor, width: int, height: int) -> Tensor:
    """(..., 2) NDC (x, y) -> (..., 2) pixel coordinates (u, v); pixel centre i is at u = i (align_corners=False)."""
    check_shape(xy, "... 2", "xy")
    size = _image_wh(width, height, xy)
    return ((xy + 1) * size - 1) / 2


def pixels_to_ndc(uv: Tensor, width: int, height: int) -> Tensor:
    """(..., 2) pixel coordinates (u, v) -> (..., 2) NDC (x, y); pixel centre i maps to (2i + 1)/W - 1."""
    check_shape(uv, "... 2", "uv")
    size = _image_wh(width, height, uv)
    return (2 * uv + 1) / size - 1
