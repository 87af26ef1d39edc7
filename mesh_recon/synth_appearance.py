"""Appearance of synthetic birds: body parts, per-bird procedural plumage and Lambertian shading.

A bird's look is a per-vertex albedo (colours per body part, from LBS weights and keypoint proximity) plus
per-pixel patterns (wing bars, mottling) evaluated on the rest-pose position of the visible surface, so the
pattern sticks to the feathers when the bird moves. Light: ambient + one directional Lambertian light.
"""
from __future__ import annotations

import colorsys
import functools
from dataclasses import dataclass

import numpy as np
import torch

from .bird_model import BirdModel

PARTS = ("back", "belly", "breast", "head", "crown", "beak", "eye", "wing", "wing_tip", "tail", "legs")
_P = {name: i for i, name in enumerate(PARTS)}


@dataclass(frozen=True)
class BirdLook:
    """One bird's appearance: albedo (V, 3) float32 in [0, 1]; stripe (V,) float32 weight of wing bars;
    pattern (K, 6) float32 rows (dx, dy, dz, frequency, phase, amplitude) of sinusoids on rest positions,
    row 0 the wing bars, the others mottling."""

    albedo: np.ndarray
    stripe: np.ndarray
    pattern: np.ndarray


@functools.lru_cache(maxsize=4)
def vertex_parts(model: BirdModel) -> np.ndarray:
    """(V,) int64 index into :data:`PARTS` for each vertex, from its dominant skinning joint and the keypoints."""
    verts = model.verts.numpy()
    dominant = model.weights.numpy().argmax(1)
    kp = model.kp_regressor.numpy() @ verts
    parts = np.full(len(verts), _P["back"])
    front = verts[:, 1] > 1.5
    parts[verts[:, 2] < -0.5] = _P["belly"]
    parts[front & (verts[:, 2] < 1.5) & (verts[:, 2] >= -0.5)] = _P["breast"]
    groups = {"head": (15,), "beak": (16,), "wing": (9, 10, 11, 17, 18, 19), "wing_tip": (12, 20),
              "tail": (2,), "legs": (7, 8, 23, 24)}
    for name, joints in groups.items():
        parts[np.isin(dominant, joints)] = _P[name]
    parts[(parts == _P["head"]) & (verts[:, 2] > kp[1, 2] + 0.3)] = _P["crown"]
    eye_dist = np.minimum(np.linalg.norm(verts - kp[1], axis=1), np.linalg.norm(verts - kp[2], axis=1))
    parts[(eye_dist < 0.45) & np.isin(parts, (_P["head"], _P["crown"]))] = _P["eye"]
    parts.setflags(write=False)  # cached: shared by every caller
    return parts


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1))))


def _plumage_colour(rng: np.random.Generator) -> np.ndarray:
    """A bird-like base colour: mostly browns and greys, sometimes a vivid hue."""
    kind = rng.choice(3, p=(0.55, 0.25, 0.2))
    if kind == 0:  # earthy browns, olives and buffs
        return _hsv(rng.uniform(0.04, 0.17), rng.uniform(0.25, 0.7), rng.uniform(0.2, 0.75))
    if kind == 1:  # greys, black, white
        value = rng.uniform(0.05, 0.25) if rng.random() < 0.5 else rng.uniform(0.3, 0.95)
        return _hsv(rng.uniform(0, 1), rng.uniform(0, 0.1), value)
    return _hsv(rng.uniform(0, 1), rng.uniform(0.5, 0.95), rng.uniform(0.35, 0.9))


def _tint(colour: np.ndarray, rng: np.random.Generator, value: tuple[float, float], sat: float = 1.0) -> np.ndarray:
    h, s, v = colorsys.rgb_to_hsv(*colour)
    return _hsv(h + rng.normal(0, 0.02), s * sat, v * rng.uniform(*value))


def random_look(model: BirdModel, rng: np.random.Generator) -> BirdLook:
    """A random plumage: colours per part, optional wing bars, mottling and per-vertex speckle."""
    body = _plumage_colour(rng)
    colours = {"back": body, "wing": _tint(body, rng, (0.6, 1.1)), "tail": _tint(body, rng, (0.5, 1.0))}
    colours["wing_tip"] = _tint(colours["wing"], rng, (0.3, 0.7)) if rng.random() < 0.6 else colours["wing"]
    colours["belly"] = (0.5 * body + 0.5 * _hsv(0.1, 0.15, 0.9)) if rng.random() < 0.7 else body
    colours["breast"] = _plumage_colour(rng) if rng.random() < 0.3 else colours["belly"]
    colours["head"] = _plumage_colour(rng) if rng.random() < 0.4 else body
    colours["crown"] = _plumage_colour(rng) if rng.random() < 0.35 else colours["head"]
    colours["beak"] = [_hsv(0, 0, 0.12), _hsv(0.13, 0.8, 0.85), _hsv(0.07, 0.8, 0.8), _hsv(0, 0, 0.5)][rng.integers(4)]
    colours["legs"] = [_hsv(0, 0, 0.2), _hsv(0.03, 0.35, 0.6), _hsv(0.08, 0.5, 0.45)][rng.integers(3)]
    colours["eye"] = _hsv(0, 0, 0.05) if rng.random() < 0.8 else _hsv(0, 0, 0.95)
    table = np.stack([colours[name] for name in PARTS])
    parts = vertex_parts(model)
    albedo = table[parts] * (1 + rng.normal(0, 0.06, size=(len(parts), 1)))  # speckle
    stripe = np.isin(parts, (_P["wing"], _P["wing_tip"])).astype(np.float32)
    k = 4
    dirs = rng.normal(size=(k, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    dirs[0] = [0.0, 0.8, 0.6]  # wing bars run across the folded wing
    freq = np.concatenate([[rng.uniform(1.0, 2.5)], rng.uniform(0.3, 3.0, k - 1)])
    amp = np.concatenate([[rng.uniform(0.3, 0.6) if rng.random() < 0.4 else 0.0], rng.uniform(0, 0.12, k - 1)])
    pattern = np.concatenate([dirs, freq[:, None], rng.uniform(0, 2 * np.pi, (k, 1)), amp[:, None]], 1)
    return BirdLook(np.clip(albedo, 0, 1).astype(np.float32), stripe, pattern.astype(np.float32))


def vertex_normals(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area-weighted unit vertex normals: verts (B, V, 3), faces (F, 3) int64 -> (B, V, 3)."""
    corners = verts[:, faces]  # (B, F, 3, 3)
    face_n = torch.cross(corners[:, :, 1] - corners[:, :, 0], corners[:, :, 2] - corners[:, :, 0], dim=-1)
    normals = torch.zeros_like(verts)
    for i in range(3):
        normals.index_add_(1, faces[:, i], face_n)
    return normals / normals.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def surface_attributes(looks: list[BirdLook], normals_cam: torch.Tensor, rest_verts: torch.Tensor) -> torch.Tensor:
    """Per-vertex channels to interpolate: (B, V, 10) = albedo 3, camera-frame normal 3, rest position 3, stripe 1."""
    albedo = torch.from_numpy(np.stack([look.albedo for look in looks])).to(normals_cam)
    stripe = torch.from_numpy(np.stack([look.stripe for look in looks])).to(normals_cam)[..., None]
    rest = rest_verts.to(normals_cam).expand(len(looks), -1, -1)
    return torch.cat([albedo, normals_cam, rest, stripe], dim=-1)


def shade(surface: torch.Tensor, looks: list[BirdLook], light_dir: torch.Tensor, ambient: torch.Tensor) -> torch.Tensor:
    """Pattern and Lambertian shading of interpolated surface channels.

    Args:
        surface: (B, 10, H, W) from ``interpolate_hard`` of :func:`surface_attributes`.
        light_dir: (B, 3) unit vectors towards the light, camera frame (x right, y down, z away).
        ambient: (B,) ambient fraction in [0, 1]; the directional light gives the rest.
    Returns:
        (B, 3, H, W) colours in [0, 1] (background pixels are meaningless; composite with the mask).
    """
    albedo, normal, rest, stripe = surface[:, :3], surface[:, 3:6], surface[:, 6:9], surface[:, 9:10]
    pattern = torch.from_numpy(np.stack([look.pattern for look in looks])).to(surface)  # (B, K, 6)
    proj = torch.einsum("bkc,bchw->bkhw", pattern[..., :3], rest)  # (B, K, H, W)
    waves = torch.sin(pattern[..., 3, None, None] * proj + pattern[..., 4, None, None])
    amp = pattern[..., 5, None, None]
    bars = torch.tanh(3 * waves[:, :1]) * amp[:, :1] * stripe  # sharp bands on the wings only
    mottle = (waves[:, 1:] * amp[:, 1:]).sum(1, keepdim=True)
    colour = albedo * (1 + bars + mottle)
    # Two-sided: thin feathers show either face, so turn every normal towards the camera (negative z).
    normal = normal / normal.norm(dim=1, keepdim=True).clamp_min(1e-6)
    normal = torch.where(normal[:, 2:3] > 0, -normal, normal)
    lambert = (normal * light_dir[:, :, None, None]).sum(1, keepdim=True).clamp_min(0)
    light = ambient[:, None, None, None] + (1 - ambient[:, None, None, None]) * 1.3 * lambert
    return (colour * light).clamp(0, 1)


def random_light(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3) unit directions towards the light (mostly from above and the camera side) and (n,) ambient levels."""
    direction = rng.normal(size=(n, 3)) * [0.6, 0.5, 0.4] + [0.0, -0.6, -0.6]
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    return direction.astype(np.float32), rng.uniform(0.25, 0.6, n).astype(np.float32)
