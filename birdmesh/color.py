"""Differentiable sRGB <-> CIE Lab (D65) conversions on batched torch tensors.

Convention: RGB in [0, 1] as (B, 3, H, W) (or (3, H, W)); Lab with L in [0, 100], a and b roughly in [-128, 127],
matching scikit-image's ``rgb2lab`` / ``lab2rgb`` with the D65 white point.
"""
from __future__ import annotations

import functools

import torch

_XYZ_FROM_RGB = ((0.412453, 0.357580, 0.180423),
                 (0.212671, 0.715160, 0.072169),
                 (0.019334, 0.119193, 0.950227))
_WHITE_D65 = (0.95047, 1.0, 1.08883)
_EPS = 6.0 / 29.0


def _check_channels(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 3 or x.shape[-3] != 3:
        raise ValueError(f"{name}: expected shape (*, 3, H, W), got {tuple(x.shape)}")


def _mix(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    # (3, 3) applied along the channel axis -3.
    return torch.einsum("ij,...jhw->...ihw", matrix, x)


def _srgb_to_linear(rgb: torch.Tensor) -> torch.Tensor:
    """The sRGB curve, values in [0, 1]; the linear segment keeps the gradient finite near 0 (no pow of 0)."""
    return torch.where(rgb > 0.04045, ((rgb.clamp_min(0.04045) + 0.055) / 1.055) ** 2.4, rgb / 12.92)


def _linear_to_lab(linear: torch.Tensor) -> torch.Tensor:
    """Linear-light RGB (*, 3, H, W) -> Lab (*, 3, H, W)."""
    matrix = torch.tensor(_XYZ_FROM_RGB, dtype=linear.dtype, device=linear.device)
    white = torch.tensor(_WHITE_D65, dtype=linear.dtype, device=linear.device).view(3, 1, 1)
    xyz = _mix(linear, matrix) / white
    f = torch.where(xyz > _EPS**3, xyz.clamp_min(_EPS**3) ** (1.0 / 3.0), xyz / (3 * _EPS**2) + 4.0 / 29.0)
    fx, fy, fz = f.unbind(-3)
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=-3)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB (*, 3, H, W) in [0, 1] -> Lab (*, 3, H, W), L in [0, 100]. Differentiable."""
    _check_channels(rgb, "rgb")
    return _linear_to_lab(_srgb_to_linear(rgb.clamp(0.0, 1.0)))


@functools.lru_cache(maxsize=4)
def _linear_table(device: str) -> torch.Tensor:
    """(256,) linear-light value of every 8-bit sRGB level, computed in float64."""
    return _srgb_to_linear(torch.arange(256, dtype=torch.float64) / 255.0).float().to(device)


def uint8_rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """8-bit sRGB (H, W, 3) uint8 (a decoded frame, channels last) -> Lab (1, 3, H, W) float32, as ``rgb_to_lab``
    of rgb / 255 but with the sRGB curve as a 256-entry table lookup (a 480p frame: 16 vs 20 ms on 2 cores; frames
    are decoded as uint8 anyway). Not differentiable (integer input)."""
    if rgb.dtype != torch.uint8 or rgb.dim() != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"rgb: expected uint8 (H, W, 3), got {rgb.dtype} {tuple(rgb.shape)}")
    linear = _linear_table(str(rgb.device))[rgb.int()]  # (H, W, 3)
    return _linear_to_lab(linear.permute(2, 0, 1)[None])


def lab_to_rgb(lab: torch.Tensor, clip: bool = True) -> torch.Tensor:
    """Lab (*, 3, H, W) -> sRGB (*, 3, H, W) in [0, 1] (clipped unless ``clip=False``). Differentiable."""
    _check_channels(lab, "lab")
    L, a, b = lab.unbind(-3)
    fy = (L + 16.0) / 116.0
    f = torch.stack([fy + a / 500.0, fy, fy - b / 200.0], dim=-3)
    xyz = torch.where(f > _EPS, f ** 3, 3 * _EPS**2 * (f - 4.0 / 29.0))
    white = torch.tensor(_WHITE_D65, dtype=lab.dtype, device=lab.device).view(3, 1, 1)
    matrix = torch.linalg.inv(torch.tensor(_XYZ_FROM_RGB, dtype=torch.float64)).to(lab)
    linear = _mix(xyz * white, matrix)
    linear_pos = linear.clamp_min(0.0031308)
    rgb = torch.where(linear > 0.0031308, 1.055 * linear_pos ** (1.0 / 2.4) - 0.055, 12.92 * linear)
    return rgb.clamp(0.0, 1.0) if clip else rgb


class RgbToLab(torch.nn.Module):
    """Module form of :func:`rgb_to_lab`."""

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        return rgb_to_lab(rgb)


class LabToRgb(torch.nn.Module):
    """Module form of :func:`lab_to_rgb`."""

    def forward(self, lab: torch.Tensor) -> torch.Tensor:
        return lab_to_rgb(lab)
