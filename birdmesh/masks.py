"""A user's first-frame mask file -> object indices: binary, soft grayscale, colour or DAVIS palette images.

Users hand in masks from many tools: 0/255 or 0/1 PNGs, blurred or JPEG-saved ones (soft edges, values between),
DAVIS palette PNGs (several objects, 255 = void). A soft 0/255 mask read as DAVIS indices turns into a ring (its
interior 255 is "void"), so the reading is decided by the file's mode, not by guessing from values alone.
Benchmark annotations keep their own reader (``birdmesh.davis.read_annotation``).
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from .davis import colors_to_indices
from .errors import UserError

VOID = 255  # DAVIS-2017 "void" index of palette annotations: counted as background
TINY_FRACTION = 0.001  # a mask covering less of its frame than this is probably not the object


def _open(path: Path) -> tuple[str, np.ndarray, list[int] | None]:
    try:
        with Image.open(path) as image:
            image.load()
            return image.mode, np.asarray(image), image.getpalette()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise UserError(f"{path}: not a readable image ({err})") from None


def intensity_foreground(gray: np.ndarray) -> np.ndarray:
    """(H, W) intensities -> (H, W) bool, true at or above half the range.

    The range is 0..1 when the image holds nothing above 1 (0/1 masks, mode '1'), else 0..255, or 0..65535 for
    16-bit images: a blurred or JPEG-saved 0/255 mask keeps its whole interior and loses only half its soft edge.
    """
    top = float(gray.max()) if gray.size else 0.0
    full = 1.0 if top <= 1 else 255.0 if top <= 255 else 65535.0
    return gray.astype(np.float64) >= full / 2


def _palette_to_indices(array: np.ndarray, palette: list[int] | None) -> np.ndarray:
    colors = np.array(palette or [], np.int64).reshape(-1, 3)
    used = np.unique(array)
    if len(colors) > used.max() and (colors[used, 0] == colors[used, 1]).all() and \
            (colors[used, 1] == colors[used, 2]).all():
        # a grayscale image stored as indexed: its colours, not its indices, are the intensities
        return intensity_foreground(colors[array, 0]).astype(np.uint8)
    return np.where(array == VOID, 0, array).astype(np.uint8)


def read_object_mask(path: str | Path) -> np.ndarray:
    """Object indices (H, W) uint8 of a mask image, 0 background (DAVIS void 255 included), 1..N objects.

    Convention, by the file's mode: palette ('P') images hold object indices (the DAVIS layout), unless every
    colour they use is gray (a grayscale image saved as indexed); grayscale ('L', '1', 16-bit) and RGB images hold
    intensities, foreground at or above half the range (``intensity_foreground``). An RGB image drawn only in DAVIS
    palette colours keeps its objects apart; any other colour image takes its brightest channel, so a JPEG-saved
    DAVIS-red mask stays foreground. Alpha channels are ignored.
    """
    path = Path(path)
    mode, array, palette = _open(path)
    if array.ndim not in (2, 3) or array.size == 0:
        raise UserError(f"{path}: expected a 2-D mask image, got an array of shape {array.shape}")
    if mode == "P":
        return _palette_to_indices(array, palette)
    if array.ndim == 2:
        return intensity_foreground(array).astype(np.uint8)
    rgb = array[..., :3] if array.shape[2] >= 3 else array[..., :1].repeat(3, axis=2)
    if not ((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()):
        labels, unknown = colors_to_indices(rgb)
        if not unknown.any():
            return np.where(labels == VOID, 0, labels).astype(np.uint8)
    return intensity_foreground(rgb.max(axis=2)).astype(np.uint8)


def mask_warning(mask: np.ndarray, name: str) -> str | None:
    """A one-line note when a (H, W) mask looks odd (every pixel foreground, or under ``TINY_FRACTION`` of the
    frame), else None."""
    covered = int(np.count_nonzero(mask))
    if covered == mask.size:
        return f"{name}: the mask covers the whole {mask.shape[1]}x{mask.shape[0]} frame (inverted, or not a mask?)"
    if covered < TINY_FRACTION * mask.size:
        return (f"{name}: the mask covers only {covered} pixels ({100 * covered / mask.size:.3f} % of the "
                f"{mask.shape[1]}x{mask.shape[0]} frame)")
    return None


def load_first_mask(path: str | Path, frame_size: tuple[int, int], resize: bool) -> np.ndarray:
    """A first-frame mask checked against the frames' (W, H): (H, W) uint8 object indices, 0 background.

    Raises:
        UserError: unreadable file, another size than the frames (unless ``resize``: nearest neighbour), no object.
    """
    labels = read_object_mask(path)
    if (labels.shape[1], labels.shape[0]) != tuple(frame_size):
        if not resize:
            raise UserError(f"{path}: mask is {labels.shape[1]}x{labels.shape[0]} but the frames are "
                            f"{frame_size[0]}x{frame_size[1]} (pass --resize-mask to resize it)")
        labels = cv2.resize(labels, tuple(frame_size), interpolation=cv2.INTER_NEAREST)
    if not labels.any():
        raise UserError(f"{path}: mask is empty (no object pixels: grayscale masks need values at or above half "
                        f"their range, palette masks indices 1..254)")
    return labels
