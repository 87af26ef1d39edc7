"""The adaptation's inputs: frames (capped in size and count) and the first-frame mask (given, box or guessed)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from birdmesh.errors import UserError
from birdmesh.masks import load_first_mask
from birdmesh.video import open_frames

from .config import InputConfig

ASSETS = Path(__file__).resolve().parent / "assets"  # package data: a wheel install has the demo too
DEMO_VIDEO, DEMO_MASK = ASSETS / "demo_bird.mp4", ASSETS / "demo_bird_mask.png"
MIN_BACKGROUND = 0.01  # GrabCut boxes leave at least this fraction of the frame outside (its background sample)
EDGE_MARGIN = 0.02  # ... by pulling in from the frame's edges by this fraction of its shorter side


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


def box_numbers(text: str) -> tuple[float, float, float, float]:
    """``"x0,y0,x1,y1"`` -> four finite floats with x0 < x1 and y0 < y1, else a ``UserError`` (checked before any
    work; the frame's size is known only once the video is open: ``parse_box``)."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4:
        raise UserError(f"--box {text}: expected four numbers x0,y0,x1,y1")
    if not all(math.isfinite(v) for v in values):
        raise UserError(f"--box {text}: coordinates must be finite numbers")
    x0, y0, x1, y1 = values
    if x1 <= x0 or y1 <= y0:
        raise UserError(f"--box {text}: empty box (needs x0 < x1 and y0 < y1)")
    return x0, y0, x1, y1


def parse_box(text: str, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """``"x0,y0,x1,y1"`` in original-frame pixels -> ints cut to the frame of size (W, H): a box reaching beyond
    the frame is cut at its edges; one outside it is a ``UserError`` (as are those of ``box_numbers``)."""
    x0, y0, x1, y1 = box_numbers(text)
    W, H = size
    x0, y0, x1, y1 = max(round(x0), 0), max(round(y0), 0), min(round(x1), W), min(round(y1), H)
    if x1 - x0 < 2 or y1 - y0 < 2:
        raise UserError(f"--box {text}: the box lies outside the {W}x{H} frame or is empty")
    return x0, y0, x1, y1


def scale_box(box: tuple[int, int, int, int], scale: float, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """A box of original pixels -> processing pixels (``scale`` = processed / original width), inside the frame of
    size (W, H) and at least 2 pixels wide and high (GrabCut needs some inside)."""
    W, H = size
    x0, y0 = min(int(box[0] * scale), max(W - 2, 0)), min(int(box[1] * scale), max(H - 2, 0))
    x1, y1 = min(max(round(box[2] * scale), x0 + 2), W), min(max(round(box[3] * scale), y0 + 2), H)
    return x0, y0, x1, y1


def read_mask(path: str | Path, size: tuple[int, int], resize: bool) -> np.ndarray:
    """A first-frame mask file as (H0, W0) bool, every object counting (0/255, 0/1, soft grayscale or DAVIS
    palette: ``birdmesh.masks.read_object_mask``), checked against the frames' size (W0, H0)."""
    return load_first_mask(path, size, resize) > 0


def grabcut_rect(box: tuple[int, int, int, int], frame_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """x0, y0, x1, y1 -> GrabCut's rectangle (x, y, w, h), leaving it some background.

    GrabCut learns the background's colours from the pixels outside the rectangle and fails without them (OpenCV
    asserts in ``initGMMs``), so a box leaving less than ``MIN_BACKGROUND`` of the frame outside is pulled in from
    the frame's edges by ``EDGE_MARGIN`` of the frame's shorter side (at least one pixel).
    """
    H, W = frame_hw
    x0, y0, x1, y1 = box
    if H * W - (x1 - x0) * (y1 - y0) < MIN_BACKGROUND * H * W:
        m = max(1, round(EDGE_MARGIN * min(H, W)))
        x0, y0, x1, y1 = max(x0, m), max(y0, m), min(x1, W - m), min(y1, H - m)
        if x1 - x0 < 2 or y1 - y0 < 2:  # a frame too small for a margin: keep the box (box_mask falls back)
            x0, y0, x1, y1 = box
    return x0, y0, x1 - x0, y1 - y0


def grabcut(frame: np.ndarray, box: tuple[int, int, int, int] | None = None, prior: np.ndarray | None = None,
            iterations: int = 5) -> np.ndarray:
    """OpenCV GrabCut from a box (``grabcut_rect``), or from a probable-foreground prior mask; returns (H, W)
    bool. Raises ``cv2.error`` when OpenCV cannot model the colours (e.g. no background pixels)."""
    bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
    state = np.zeros(frame.shape[:2], np.uint8)
    bg_model, fg_model = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    if box is not None:
        rect = grabcut_rect(box, frame.shape[:2])
        cv2.grabCut(bgr, state, rect, bg_model, fg_model, iterations, cv2.GC_INIT_WITH_RECT)
    else:
        state[:] = cv2.GC_PR_BGD
        state[prior] = cv2.GC_PR_FGD
        cv2.grabCut(bgr, state, None, bg_model, fg_model, iterations, cv2.GC_INIT_WITH_MASK)
    return (state == cv2.GC_FGD) | (state == cv2.GC_PR_FGD)


def box_mask(frame: np.ndarray, box: tuple[int, int, int, int], iterations: int) -> tuple[np.ndarray, str | None]:
    """The first-frame mask of ``--box``: GrabCut inside it, or, where GrabCut fails, the box itself with a note.

    Returns:
        (H, W) bool mask and a one-line warning (None when GrabCut worked).
    """
    try:
        return grabcut(frame, box=box, iterations=iterations), None
    except cv2.error as err:
        x0, y0, x1, y1 = box
        mask = np.zeros(frame.shape[:2], bool)
        mask[y0:y1, x0:x1] = True
        reason = str(err).strip().splitlines()[-1]
        return mask, f"--box: GrabCut failed ({reason}); the box itself is the first-frame mask"


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) bool -> (size[1], size[0]) bool, nearest neighbour."""
    if (mask.shape[1], mask.shape[0]) == tuple(size):
        return mask
    return cv2.resize(mask.astype(np.uint8), tuple(size), interpolation=cv2.INTER_NEAREST) > 0
