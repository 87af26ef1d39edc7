"""The adaptation's inputs: frames (capped in size and count) and the first-frame mask (given, box or guessed)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from birdmesh.davis import read_annotation
from birdmesh.errors import UserError
from birdmesh.video import open_frames

from .config import InputConfig

ASSETS = Path(__file__).resolve().parent / "assets"  # package data: a wheel install has the demo too
DEMO_VIDEO, DEMO_MASK = ASSETS / "demo_bird.mp4", ASSETS / "demo_bird_mask.png"


@dataclass(frozen=True)
class VideoInput:
    """Decoded frames and where they came from.

    Fields:
        frames: (T, H, W, 3) uint8 RGB at the processing size; fps: frames per second of ``frames``;
        original_size: (W0, H0) of the source (cameras and masks are exported at this size); name: input stem.
    """

    frames: np.ndarray
    fps: float
    original_size: tuple[int, int]
    name: str


def read_video(path: str | Path, cfg: InputConfig) -> VideoInput:
    """Read a video file, a frame folder or one image (a one-frame video), capped by ``cfg``."""
    original = open_frames(path)
    source = open_frames(path, stride=cfg.stride, max_frames=cfg.max_frames or None, max_side=cfg.max_side)
    frames = np.stack([frame for _, frame in source])
    return VideoInput(frames, source.fps, original.size, source.name)


def parse_box(text: str, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """``"x0,y0,x1,y1"`` in original-frame pixels -> ints, checked against the frame size (W, H)."""
    try:
        x0, y0, x1, y1 = (int(round(float(v))) for v in text.split(","))
    except ValueError:
        raise UserError(f"--box {text}: expected four numbers x0,y0,x1,y1") from None
    W, H = size
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, W), min(y1, H)
    if x1 - x0 < 2 or y1 - y0 < 2:
        raise UserError(f"--box {text}: the box lies outside the {W}x{H} frame or is empty")
    return x0, y0, x1, y1


def read_mask(path: str | Path, size: tuple[int, int], resize: bool) -> np.ndarray:
    """A first-frame mask (binary 0/255 or DAVIS indices; any object index counts) as (H0, W0) bool."""
    labels = read_annotation(path)
    labels = np.where(labels == 255, 1, labels) if labels.max() == 255 and len(np.unique(labels)) == 2 else labels
    if (labels.shape[1], labels.shape[0]) != tuple(size):
        if not resize:
            raise UserError(f"{path}: mask is {labels.shape[1]}x{labels.shape[0]} but the frames are "
                            f"{size[0]}x{size[1]} (pass --resize-mask to resize it)")
        labels = cv2.resize(labels.astype(np.uint8), tuple(size), interpolation=cv2.INTER_NEAREST)
    mask = (labels > 0) & (labels != 255)
    if not mask.any():
        raise UserError(f"{path}: mask is empty (no object pixels)")
    return mask


def grabcut(frame: np.ndarray, box: tuple[int, int, int, int] | None = None, prior: np.ndarray | None = None,
            iterations: int = 5) -> np.ndarray:
    """OpenCV GrabCut from a box, or from a probable-foreground prior mask; returns (H, W) bool."""
    bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
    state = np.zeros(frame.shape[:2], np.uint8)
    bg_model, fg_model = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    if box is not None:
        x0, y0, x1, y1 = box
        cv2.grabCut(bgr, state, (x0, y0, x1 - x0, y1 - y0), bg_model, fg_model, iterations, cv2.GC_INIT_WITH_RECT)
    else:
        state[:] = cv2.GC_PR_BGD
        state[prior] = cv2.GC_PR_FGD
        cv2.grabCut(bgr, state, None, bg_model, fg_model, iterations, cv2.GC_INIT_WITH_MASK)
    return (state == cv2.GC_FGD) | (state == cv2.GC_PR_FGD)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) bool -> (size[1], size[0]) bool, nearest neighbour."""
    if (mask.shape[1], mask.shape[0]) == tuple(size):
        return mask
    return cv2.resize(mask.astype(np.uint8), tuple(size), interpolation=cv2.INTER_NEAREST) > 0
