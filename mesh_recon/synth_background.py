"""Backgrounds and image degradations for synthetic birds: real video frames, colour jitter, blur, noise, JPEG.

Backgrounds are random crops of the non-bird DAVIS-2016 train frames (``train_videos/davis2016_train``, 240p);
a pool of decoded frames is kept in memory so each crop costs one resize.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from birdmesh.errors import UserError
from birdmesh.runtime import data_root

DAVIS_TRAIN = Path("train_videos") / "davis2016_train" / "JPEGImages" / "240p"


@dataclass(frozen=True, eq=False)
class BackgroundPool:
    """Decoded frames (each (H, W, 3) uint8 RGB) and, per frame, its sequence name."""

    frames: tuple
    sequences: tuple


def davis_sequences(data_dir: str | None = None) -> dict[str, list[Path]]:
    """Sequence name -> sorted frame paths of the DAVIS-2016 train folder; UserError if it is missing or empty."""
    folder = data_root(data_dir) / DAVIS_TRAIN
    if not folder.is_dir():
        raise UserError(f"{folder}: background frames not found (set --data or BIRDMESH_DATA to the data folder)")
    seqs = {p.name: sorted(p.glob("*.jpg")) for p in sorted(folder.iterdir()) if p.is_dir()}
    seqs = {name: files for name, files in seqs.items() if files}
    if not seqs:
        raise UserError(f"{folder}: no JPEG frames in any sequence folder")
    return seqs


def read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file; UserError if unreadable."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise UserError(f"{path}: not a readable image")
    return np.ascontiguousarray(image[:, :, ::-1])


@functools.lru_cache(maxsize=2)
def load_background_pool(data_dir: str | None = None, max_frames: int = 600) -> BackgroundPool:
    """Up to ``max_frames`` frames spread evenly over all sequences (fixed choice: same pool every run)."""
    paths = [(name, p) for name, files in davis_sequences(data_dir).items() for p in files]
    step = max(1, len(paths) // max_frames)
    chosen = paths[::step][:max_frames]
    return BackgroundPool(tuple(read_rgb(p) for _, p in chosen), tuple(name for name, _ in chosen))


def random_crop(pool: BackgroundPool, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A random crop (random frame, scale, position, mirror) resized to (height, width, 3) uint8."""
    frame = pool.frames[rng.integers(len(pool.frames))]
    fh, fw = frame.shape[:2]
    aspect = width / height
    side = rng.uniform(0.45, 1.0) * min(fh, fw / aspect)
    ch, cw = max(int(side), 8), max(int(side * aspect), 8)
    y0, x0 = rng.integers(0, fh - ch + 1), rng.integers(0, fw - cw + 1)
    crop = frame[y0:y0 + ch, x0:x0 + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return cv2.resize(np.ascontiguousarray(crop), (width, height), interpolation=cv2.INTER_LINEAR)


@dataclass(frozen=True)
class ColourJitter:
    """Brightness and contrast factors, saturation factor, per-channel gains; identity is (1, 1, 1, (1, 1, 1))."""

    brightness: float
    contrast: float
    saturation: float
    gains: tuple


def random_jitter(rng: np.random.Generator, strength: float = 1.0) -> ColourJitter:
    """A random colour jitter; ``strength`` 0 gives the identity."""
    r = lambda w: 1 + strength * rng.uniform(-w, w)  # noqa: E731
    return ColourJitter(r(0.25), r(0.25), r(0.35), tuple(r(0.06) for _ in range(3)))


def apply_jitter(image: np.ndarray, jitter: ColourJitter) -> np.ndarray:
    """Colour-jitter an (H, W, 3) uint8 image; returns uint8."""
    x = image.astype(np.float32)
    gray = x.mean(axis=2, keepdims=True)
    x = gray + jitter.saturation * (x - gray)
    x = (x - x.mean()) * jitter.contrast + x.mean()
    x = x * jitter.brightness * np.asarray(jitter.gains, dtype=np.float32)
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def degrade(image: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Camera-like degradations of an (H, W, 3) uint8 image: blur, sensor noise and JPEG, each at random."""
    if rng.random() < 0.25 * strength:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.3, 1.2))
    if rng.random() < 0.35 * strength:
        noise = rng.normal(0, rng.uniform(1, 6), image.shape).astype(np.float32)
        image = np.clip(image.astype(np.float32) + noise + 0.5, 0, 255).astype(np.uint8)
    if rng.random() < 0.5 * strength:
        ok, buf = cv2.imencode(".jpg", image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(30, 95))])
        image = np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1])
    return image


def random_occluder(height: int, width: int, box: tuple, rng: np.random.Generator) -> np.ndarray:
    """(H, W) bool shape (ellipse, bar or polygon) overlapping part of the pixel box (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    bw, bh = max(x1 - x0, 4), max(y1 - y0, 4)
    cx, cy = rng.uniform(x0, x0 + bw), rng.uniform(y0, y0 + bh)
    mask = np.zeros((height, width), np.uint8)
    kind = rng.integers(3)
    if kind == 0:
        axes = (int(rng.uniform(0.15, 0.4) * bw) + 1, int(rng.uniform(0.15, 0.4) * bh) + 1)
        cv2.ellipse(mask, (int(cx), int(cy)), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    elif kind == 1:  # a branch or post across the bird
        angle = rng.uniform(0, np.pi)
        d = np.array([np.cos(angle), np.sin(angle)]) * 2 * max(height, width)
        p0, p1 = (np.array([cx, cy]) - d).astype(int), (np.array([cx, cy]) + d).astype(int)
        thickness = max(2, int(rng.uniform(0.06, 0.18) * bw))
        cv2.line(mask, tuple(int(v) for v in p0), tuple(int(v) for v in p1), 1, thickness)
    else:
        n = int(rng.integers(3, 7))
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        rad = rng.uniform(0.1, 0.35, n) * max(bw, bh)
        pts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1).astype(np.int32)
        cv2.fillPoly(mask, [pts], 1)
    return mask.astype(bool)
