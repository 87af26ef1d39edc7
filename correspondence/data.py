"""Training data: raw videos (frame folders and clips) cached as small uint8 arrays, sampled as frame pairs."""
from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from birdmesh.errors import UserError
from birdmesh.runtime import resolve_data_path
from birdmesh.video import VIDEO_EXTENSIONS, IMAGE_EXTENSIONS, open_frames

from .config import DataConfig


def find_videos(roots: tuple[str, ...]) -> list[Path]:
    """Video files and frame folders (>= 2 images) under ``roots``, sorted for reproducibility."""
    found: list[Path] = []
    for root in roots:
        root_path = resolve_data_path(root)
        if not root_path.is_dir():
            raise UserError(f"{root_path}: training video folder not found (data.roots)")
        for path in sorted(root_path.rglob("*")):
            if path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS:
                found.append(path)
            elif path.is_dir():
                images = [p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS]
                if len(images) >= 2:
                    found.append(path)
    if not found:
        raise UserError(f"{', '.join(roots)}: no videos or frame folders found")
    return found


def _resize_short_side(frame: np.ndarray, short_side: int) -> np.ndarray:
    h, w = frame.shape[:2]
    scale = short_side / min(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def build_frame_cache(cfg: DataConfig) -> list[Path]:
    """Decode every training video once into ``cache_dir/<hash>.npy`` (T, H, W, 3) uint8; return the files."""
    cache = Path(cfg.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    files = []
    for video in tqdm(find_videos(cfg.roots), desc="frame cache", unit="video"):
        key = hashlib.sha1(f"{video.resolve()}|{cfg.cache_short_side}|{cfg.cache_stride}".encode()).hexdigest()[:16]
        out = cache / f"{key}.npy"
        if not out.exists():
            frames = [_resize_short_side(f, cfg.cache_short_side)
                      for _, f in open_frames(video, stride=cfg.cache_stride)]
            if len(frames) < 2:
                continue
            tmp = out.with_suffix(".tmp.npy")
            np.save(tmp, np.stack(frames))
            tmp.rename(out)
        files.append(out)
    return files


def _rotate(image: np.ndarray, degrees: float) -> np.ndarray:
    h, w = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    return cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


class FramePairs(Dataset):
    """Random frame pairs from cached videos: the same square region of frames t and t + gap.

    Each item: ``reference`` and ``target`` (3, S, S) float RGB in [0, 1] with S = ``frame_size`` (the reference
    is rotated by up to ``rotation_deg``), and ``patch_xy`` (2,) the top-left corner of a random
    ``ref_patch_size`` patch inside the reference. Sampling is deterministic given (seed, index).
    """

    def __init__(self, cache_files: list[Path], cfg: DataConfig, seed: int = 0, length: int = 10**7):
        self.arrays = [np.load(f, mmap_mode="r") for f in cache_files]
        # Longer videos are sampled proportionally more often.
        lengths = np.array([len(a) for a in self.arrays], dtype=np.float64)
        self.weights = lengths / lengths.sum()
        self.cfg, self.seed, self.length = cfg, seed, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, index])
        cfg = self.cfg
        frames = self.arrays[rng.choice(len(self.arrays), p=self.weights)]
        gap = int(rng.integers(1, min(cfg.max_gap, len(frames) - 1) + 1))
        t = int(rng.integers(0, len(frames) - gap))
        first, second = (t, t + gap) if rng.random() < 0.5 else (t + gap, t)
        h, w = frames.shape[1:3]
        side = int(min(h, w, round(min(h, w) * rng.uniform(*cfg.scale_range))))
        y0, x0 = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        region = (slice(y0, y0 + side), slice(x0, x0 + side))
        # The target's region moves a little: copying from the same position must not be a shortcut.
        reach = int(cfg.target_shift * side)
        ty = int(np.clip(y0 + rng.integers(-reach, reach + 1), 0, h - side))
        tx = int(np.clip(x0 + rng.integers(-reach, reach + 1), 0, w - side))
        target_region = (slice(ty, ty + side), slice(tx, tx + side))
        size = (cfg.frame_size, cfg.frame_size)
        reference = cv2.resize(np.ascontiguousarray(frames[first][region]), size, interpolation=cv2.INTER_AREA)
        target = cv2.resize(np.ascontiguousarray(frames[second][target_region]), size, interpolation=cv2.INTER_AREA)
        reference = _rotate(reference, rng.uniform(-cfg.rotation_deg, cfg.rotation_deg))
        if rng.random() < 0.5:
            reference, target = reference[:, ::-1], target[:, ::-1]
        span = cfg.frame_size - cfg.ref_patch_size
        patch_xy = rng.integers(0, span // 8 + 1, size=2) * 8
        return {
            "reference": torch.from_numpy(np.ascontiguousarray(reference)).permute(2, 0, 1).float() / 255,
            "target": torch.from_numpy(np.ascontiguousarray(target)).permute(2, 0, 1).float() / 255,
            "patch_xy": torch.from_numpy(patch_xy).long(),
        }


def infinite_loader(dataset: Dataset, batch_size: int, workers: int, start_step: int, rank: int, world: int):
    """Yield batches forever; batch ``k`` of rank ``r`` uses indices ``(k * world + r) * batch_size + i``.

    Starting at ``start_step`` makes a resumed run draw the same pairs it would have drawn.
    """
    class _Indices(torch.utils.data.Sampler):
        def __iter__(self):
            step = start_step
            while True:
                base = (step * world + rank) * batch_size
                yield from range(base, base + batch_size)
                step += 1

    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=_Indices(), num_workers=workers,
                                         persistent_workers=workers > 0)
    return iter(loader)
