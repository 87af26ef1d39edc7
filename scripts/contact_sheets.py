"""Contact sheets: evenly spaced frames of each clip in a grid, the ground-truth mask outlined when there is one.

    python scripts/contact_sheets.py davis runs/flight --list flight.txt --out runs/flight/contact [--frames 8]
    python scripts/contact_sheets.py videos ../shared/data/train_videos/clips_more/birds/*.mp4 --out DIR

One PNG per sequence or video, named after it; each cell is titled with its frame index (and, for masks, the
mask's area in pixels, so frames with the bird out of view read "empty").
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from birdmesh.davis import load_sequence, read_annotation, read_sequence_list
from birdmesh.errors import UserError, cli_entry
from birdmesh.video import open_frames, read_image

CELL_WIDTH = 427  # half a 480p frame
COLUMNS = 4


def pick_frames(count: int, num_frames: int) -> list[int]:
    """``count`` evenly spaced indices over ``num_frames`` frames, first and last included."""
    return sorted(set(np.linspace(0, num_frames - 1, min(count, num_frames)).round().astype(int).tolist()))


def outline(frame: np.ndarray, mask: np.ndarray, width: int = CELL_WIDTH) -> np.ndarray:
    """The frame scaled to ``width`` with the mask's outline in green, one pixel thick (small birds stay visible)."""
    H, W = frame.shape[:2]
    size = (width, max(1, round(H * width / W)))
    cell = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
    small = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(small, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(cell, contours, -1, (40, 230, 60), 1)
    return cell


def titled(cell: np.ndarray, title: str) -> np.ndarray:
    """A cell (h, w, 3) uint8 with ``title`` in a black band above it."""
    band = np.zeros((22, cell.shape[1], 3), np.uint8)
    cv2.putText(band, title, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return np.concatenate([band, cell], 0)


def grid(cells: list[np.ndarray], columns: int = COLUMNS) -> np.ndarray:
    """Cells of one size in rows of ``columns`` (the last row padded black)."""
    blank = np.zeros_like(cells[0])
    rows = [cells[i:i + columns] for i in range(0, len(cells), columns)]
    rows[-1] = rows[-1] + [blank] * (columns - len(rows[-1]))
    return np.concatenate([np.concatenate(r, 1) for r in rows], 0)


def davis_sheet(root: str, name: str, count: int) -> np.ndarray:
    """Sheet of one DAVIS-layout sequence with its annotation outlined (green)."""
    seq = load_sequence(root, name)
    cells = []
    for t in pick_frames(count, len(seq.frames)):
        mask = read_annotation(seq.annotations[t]) > 0
        cell = outline(read_image(seq.frames[t]), mask)
        cells.append(titled(cell, f"{name} t={t} mask {int(mask.sum()) or 'empty'}"))
    return grid(cells)


def video_sheet(path: str, count: int) -> np.ndarray:
    """Sheet of one video file (decoded once, frames kept only where picked)."""
    total = open_frames(path).num_frames  # a header estimate: the picks are clamped to what decodes
    picks = set(pick_frames(count, total))
    cells = []
    for index, frame in open_frames(path):
        if index in picks:
            H, W = frame.shape[:2]
            cell = cv2.resize(frame, (CELL_WIDTH, round(H * CELL_WIDTH / W)), interpolation=cv2.INTER_AREA)
            cells.append(titled(cell, f"{Path(path).stem} t={index} ({W}x{H})"))
    if not cells:
        raise UserError(f"{path}: no frame decoded")
    return grid(cells)


def save_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), image[:, :, ::-1])


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("davis", "videos"))
    parser.add_argument("inputs", nargs="+", help="a DAVIS root (davis) or video files (videos)")
    parser.add_argument("--list", default="flight.txt", help="sequence list of the DAVIS root")
    parser.add_argument("--out", required=True, help="folder for the PNGs (created; files overwritten)")
    parser.add_argument("--frames", type=int, default=8)
    args = parser.parse_args(argv)
    if args.frames < 1:
        raise UserError(f"--frames: expected >= 1, got {args.frames}")
    out = Path(args.out)
    if args.kind == "davis":
        for name in read_sequence_list(args.inputs[0], args.list):
            save_png(out / f"{name}.png", davis_sheet(args.inputs[0], name, args.frames))
    else:
        for path in args.inputs:
            save_png(out / f"{Path(path).stem}.png", video_sheet(path, args.frames))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
