"""DAVIS-format data: sequence lists, frame and annotation paths, indexed-PNG label maps.

Layout (DAVIS 2016 and 2017): ``root/JPEGImages/<resolution>/<seq>/%05d.jpg``,
``root/Annotations/<resolution>/<seq>/%05d.png``, ``root/ImageSets/.../<list>.txt``.
Label maps are (H, W) uint8 object indices: 0 background, 1..N objects (255 is "void" in DAVIS 2017).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import UserError


def pascal_palette(num_colors: int = 256) -> np.ndarray:
    """The PASCAL VOC / DAVIS colormap: (num_colors, 3) uint8.

    Bits 0, 1, 2 of the index go to the top bit of R, G, B; bits 3, 4, 5 to the next bit; and so on,
    so index 1 is (128, 0, 0), 2 is (0, 128, 0), 3 is (128, 128, 0), 4 is (0, 0, 128).
    """
    index = np.arange(num_colors)
    palette = np.zeros((num_colors, 3), dtype=np.int64)
    for level in range(8):
        for channel in range(3):
            bit = (index >> (3 * level + channel)) & 1
            palette[:, channel] |= bit << (7 - level)
    return palette.astype(np.uint8)


DAVIS_PALETTE = pascal_palette(256)


def read_sequence_list(root: str | Path, list_file: str | Path) -> list[str]:
    """Sequence names from a DAVIS list file, in file order, without repeats.

    Args:
        root: DAVIS root folder.
        list_file: path to the list, absolute or relative to ``root`` or to ``root/ImageSets``
            (e.g. ``"val_dev.txt"`` or ``"2017/val.txt"``).
    Lines hold either a bare sequence name or DAVIS-2016 style frame paths
    (``/JPEGImages/480p/bear/00000.jpg /Annotations/480p/bear/00000.png``); blank lines and
    ``#`` comments are skipped.
    """
    root = Path(root)
    candidates = [Path(list_file), root / list_file, root / "ImageSets" / list_file]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise UserError(f"{list_file}: sequence list not found (looked in {root} and {root / 'ImageSets'})")
    names: list[str] = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        first = line.split()[0]
        name = Path(first).parent.name if "/" in first else first
        if name not in names:
            names.append(name)
    if not names:
        raise UserError(f"{path}: sequence list is empty")
    return names


def _sequence_files(folder: Path, pattern: str, what: str) -> list[Path]:
    if not folder.is_dir():
        raise UserError(f"{folder}: {what} folder not found")
    files = sorted(folder.glob(pattern))
    if not files:
        raise UserError(f"{folder}: no {pattern} {what} in the folder")
    return files


def sequence_frames(root: str | Path, seq: str, resolution: str = "480p") -> list[Path]:
    """Sorted frame paths ``root/JPEGImages/<resolution>/<seq>/*.jpg``."""
    return _sequence_files(Path(root) / "JPEGImages" / resolution / seq, "*.jpg", "frames")


def sequence_annotations(root: str | Path, seq: str, resolution: str = "480p") -> list[Path]:
    """Sorted annotation paths ``root/Annotations/<resolution>/<seq>/*.png``."""
    return _sequence_files(Path(root) / "Annotations" / resolution / seq, "*.png", "annotations")


def colors_to_indices(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 colours -> (H, W) uint8 indices into ``DAVIS_PALETTE`` and (H, W) bool "colour not in the
    palette" (those pixels' indices are meaningless)."""
    codes = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    palette_codes = ((DAVIS_PALETTE[:, 0].astype(np.int64) << 16)
                     | (DAVIS_PALETTE[:, 1].astype(np.int64) << 8) | DAVIS_PALETTE[:, 2])
    order = np.argsort(palette_codes)
    position = np.clip(np.searchsorted(palette_codes[order], codes), 0, len(order) - 1)
    labels = order[position]
    return labels.astype(np.uint8), palette_codes[labels] != codes


def _colors_to_indices(path: Path, rgb: np.ndarray) -> np.ndarray:
    labels, unknown = colors_to_indices(rgb)
    if unknown.any():
        y, x = np.argwhere(unknown)[0]
        raise UserError(f"{path}: colour {tuple(int(c) for c in rgb[y, x])} at (x={x}, y={y}) is not "
                        f"in the DAVIS palette")
    return labels


def _gray_to_indices(gray: np.ndarray) -> np.ndarray:
    # DAVIS 2016 masks are 0/255 binary images; any other gray image already holds indices.
    values = np.unique(gray)
    if np.isin(values, (0, 255)).all():
        return (gray == 255).astype(np.uint8)
    return gray.astype(np.uint8)


def read_annotation(path: str | Path) -> np.ndarray:
    """Read a DAVIS annotation as object indices: (H, W) uint8.

    Palette PNGs give their palette indices; 0/255 binary masks give 0/1; other grayscale PNGs
    are taken as indices; RGB(A) PNGs are mapped back through ``DAVIS_PALETTE`` (an unknown colour is
    an error), except RGB images with R = G = B, which are read as grayscale. This is the benchmark's reading of
    its own files; a user's first-frame mask (possibly soft or JPEG-saved) goes through ``birdmesh.masks``.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            array = np.asarray(image)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise UserError(f"{path}: not a readable image ({err})") from None
    if mode == "P":
        return array.astype(np.uint8)
    if mode == "1":
        return array.astype(np.uint8)
    if mode == "L":
        return _gray_to_indices(array)
    if mode in ("RGB", "RGBA"):
        rgb = array[..., :3]
        if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
            return _gray_to_indices(rgb[..., 0])
        return _colors_to_indices(path, rgb)
    raise UserError(f"{path}: unsupported annotation mode {mode} (expected palette, grayscale or RGB PNG)")


def write_annotation(path: str | Path, labels: np.ndarray) -> Path:
    """Write (H, W) integer object indices in 0..255 as an indexed PNG with ``DAVIS_PALETTE``."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise ValueError(f"labels: expected an (H, W) integer array, got shape {labels.shape} "
                         f"dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(f"labels: expected values in 0..255, got {labels.min()}..{labels.max()}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = labels.shape
    image = Image.frombytes("P", (width, height), np.ascontiguousarray(labels, dtype=np.uint8).tobytes())
    image.putpalette(DAVIS_PALETTE.reshape(-1).tolist())
    image.save(path)
    return path


def read_annotations(paths: list[Path]) -> np.ndarray:
    """Read several annotations of one size: (T, H, W) uint8 object indices."""
    labels = [read_annotation(p) for p in paths]
    for path, other in zip(paths[1:], labels[1:]):
        if other.shape != labels[0].shape:
            raise UserError(f"{path}: annotation size {other.shape[1]}x{other.shape[0]} differs from "
                            f"{labels[0].shape[1]}x{labels[0].shape[0]} of {Path(paths[0]).name}")
    return np.stack(labels)


@dataclass(frozen=True)
class DavisSequence:
    """One DAVIS sequence: its frame and annotation paths and how many objects it has.

    ``num_objects`` is the largest object index of the first annotation (void 255 ignored), as the
    semi-supervised protocol gives the objects in the first frame.
    """

    name: str
    frames: tuple[Path, ...]
    annotations: tuple[Path, ...]
    num_objects: int

    def read_labels(self) -> np.ndarray:
        """All annotations: (T, H, W) uint8 object indices."""
        return read_annotations(list(self.annotations))


def load_sequence(root: str | Path, seq: str, resolution: str = "480p") -> DavisSequence:
    """Collect a sequence's paths and count its objects from the first annotation."""
    frames = sequence_frames(root, seq, resolution)
    annotations = sequence_annotations(root, seq, resolution)
    first = read_annotation(annotations[0])
    first = first[first != 255]
    return DavisSequence(seq, tuple(frames), tuple(annotations), int(first.max()) if first.size else 0)
