"""DAVIS mask propagation benchmark: ``python -m correspondence.evaluate --davis ROOT --list FILE --out DIR``.

Propagates each listed sequence's first-frame ground truth at 480p, writes DIR/<seq>/%05d.png (DAVIS palette),
DIR/per-sequence.csv and DIR/global.csv, and prints ``J&F=… J=… F=…`` last. Methods: ``learned`` (the trained
model), ``pixels`` (the same propagation on raw Lab colours) and ``copy`` (the first mask everywhere).
"""
from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from birdmesh.config import add_config_arguments, format_config, load_config, save_config
from birdmesh.davis import load_sequence, read_annotation, read_sequence_list, write_annotation
from birdmesh.errors import UserError, cli_entry
from birdmesh.metrics import evaluate_semi_supervised, summarize
from birdmesh.outdir import atomic_output_dir
from birdmesh.runtime import resolve_device

from .checkpoint import DEFAULT_WEIGHTS
from .config import PropagationConfig, UVCConfig
from .labels import index_to_soft, soft_to_index
from .propagate import build_model, iter_propagate, upsample_labels


def _read_rgb(path: Path, max_side: int) -> np.ndarray:
    frame = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    h, w = frame.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        frame = cv2.resize(frame, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    return frame


def predict_sequence(seq, model, method: str, cfg: PropagationConfig) -> np.ndarray:
    """Predicted object indices (T, H, W) uint8 for one DAVIS sequence, from its first annotation."""
    first = _first_labels(seq)
    if method == "copy":
        return np.repeat(first[None], len(seq.frames), axis=0).astype(np.uint8)
    frames = (_read_rgb(p, cfg.max_side) for p in seq.frames)
    labels0 = index_to_soft(first, seq.num_objects + 1)
    stream = iter_propagate(frames, labels0, model, cfg)
    preds = [soft_to_index(upsample_labels(lab, first.shape)) for lab in tqdm(stream, total=len(seq.frames),
                                                                                 desc=seq.name, leave=False)]
    preds[0] = first.astype(np.uint8)
    return np.stack(preds)


def _first_labels(seq) -> np.ndarray:
    first = read_annotation(seq.annotations[0])
    return np.where(first == 255, 0, first)


def check_sizes(seq) -> None:
    """UserError unless the sequence's first frame and first annotation have one size (W, H): predictions are
    made at the annotation's size, so another frame size would be scored silently against misplaced masks."""
    sizes = []
    for path in (seq.frames[0], seq.annotations[0]):
        try:
            with Image.open(path) as image:
                sizes.append(image.size)
        except (OSError, SyntaxError, ValueError) as err:
            raise UserError(f"{path}: not a readable image ({err})") from None
    (fw, fh), (aw, ah) = sizes
    if (fw, fh) != (aw, ah):
        raise UserError(f"sequence {seq.name}: annotations are {aw}x{ah} but the frames are {fw}x{fh} "
                        f"({seq.annotations[0].name} vs {seq.frames[0].name})")


def evaluate(davis_root: str, list_file: str, out: Path, method: str, checkpoint: str | None,
             cfg: PropagationConfig, device: str = "auto") -> tuple[float, float, float]:
    """Run the benchmark into ``out`` (an existing, empty folder); return global (J&F, J, F)."""
    sequences = [load_sequence(davis_root, name) for name in read_sequence_list(davis_root, list_file)]
    for seq in sequences:  # every sequence before any work
        check_sizes(seq)
    model = None if method == "copy" else build_model(method, checkpoint, resolve_device(device), cfg.pixel_stride)
    rows, per_seq = [], []
    for seq in sequences:
        name = seq.name
        tic = time.time()
        pred = predict_sequence(seq, model, method, cfg)
        seconds = time.time() - tic
        (out / name).mkdir()
        for t, labels in enumerate(pred):
            write_annotation(out / name / f"{t:05d}.png", labels)
        scores = evaluate_semi_supervised(pred, seq.read_labels(), name)
        rows.extend(scores["rows"])
        jf = (np.mean(scores["J"]) + np.mean(scores["F"])) / 2
        per_seq.append({"sequence": name, "J&F": f"{jf:.4f}", "J": f"{np.mean(scores['J']):.4f}",
                        "F": f"{np.mean(scores['F']):.4f}", "frames": len(pred),
                        "frames_per_s": f"{len(pred) / seconds:.2f}"})
        print(f"{name}: J&F={jf:.4f} ({len(pred) / seconds:.2f} frames/s)", flush=True)
    _write_csv(out / "per-sequence.csv", per_seq)
    jf, j, f = summarize(rows)
    _write_csv(out / "global.csv", [{"J&F": f"{jf:.4f}", "J": f"{j:.4f}", "F": f"{f:.4f}", "method": method}])
    return jf, j, f


def _write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--davis", required=True, help="DAVIS root (JPEGImages/480p, Annotations/480p)")
    parser.add_argument("--list", required=True, help="sequence list file (a path, or a name under ImageSets)")
    parser.add_argument("--out", required=True, help="output folder (refused if it exists, unless --overwrite)")
    parser.add_argument("--checkpoint", default=str(DEFAULT_WEIGHTS))
    parser.add_argument("--method", choices=["learned", "pixels", "copy"], default="learned")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--overwrite", action="store_true")
    add_config_arguments(parser, None)
    args = parser.parse_args(argv)
    cfg = load_config(UVCConfig, args.config, args.overrides).propagation
    print(format_config(cfg), flush=True)
    inputs = {"--davis": args.davis, "--checkpoint": args.checkpoint}
    with atomic_output_dir(args.out, args.overwrite, inputs) as out:
        save_config(cfg, out)
        jf, j, f = evaluate(args.davis, args.list, out, args.method, args.checkpoint, cfg, args.device)
    print(f"J&F={jf:.4f} J={j:.4f} F={f:.4f}")


if __name__ == "__main__":
    main()
