"""Check our DAVIS J/F against a second, independent implementation on real masks.

Builds a prediction folder from the ground-truth masks of a DAVIS list, shifted by a few pixels
(zero fill, no wrap-around), writes it as indexed PNGs as a method would, reads it back, and scores it
twice: with ``birdmesh.metrics`` (cv2 disk dilation) and with the reference below, written from the
davis2017-evaluation definitions in a different way (exact Euclidean distance transform instead of
dilation, object count from the first annotation as the toolkit does). Both must agree to 4 decimals.

    python scripts/check_davis_metrics.py [--data DIR] [--list val_dev.txt] [--shift 3 5] [--out DIR]
"""
from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.ndimage import distance_transform_edt

from birdmesh.davis import (read_annotation, read_annotations, read_sequence_list,
                            sequence_annotations, write_annotation)
from birdmesh.errors import UserError, cli_entry
from birdmesh.metrics import evaluate_semi_supervised, summarize
from birdmesh.outdir import atomic_output_dir
from birdmesh.runtime import data_root


def shift_labels(labels: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Move (T, H, W) labels by (dy, dx) pixels; uncovered pixels become background."""
    out = np.zeros_like(labels)
    h, w = labels.shape[1:]
    out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        labels[:, max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


def reference_boundary(mask: np.ndarray) -> np.ndarray:
    """Boundary as ``_seg2bmap``: differs from the right, lower or lower-right pixel (inside the image)."""
    edge = np.zeros(mask.shape, bool)
    edge[:, :-1] |= mask[:, :-1] != mask[:, 1:]
    edge[:-1, :] |= mask[:-1, :] != mask[1:, :]
    edge[:-1, :-1] |= mask[:-1, :-1] != mask[1:, 1:]
    return edge


def reference_f(pred: np.ndarray, gt: np.ndarray) -> float:
    radius = math.ceil(0.008 * np.linalg.norm(gt.shape))
    pred_edge, gt_edge = reference_boundary(pred), reference_boundary(gt)
    n_pred, n_gt = int(pred_edge.sum()), int(gt_edge.sum())
    if n_pred == 0 or n_gt == 0:
        return 1.0 if n_pred == n_gt else 0.0
    # A pixel lies inside the disk dilation of a set iff its distance to the set is <= radius.
    precision = (distance_transform_edt(~gt_edge)[pred_edge] <= radius).mean()
    recall = (distance_transform_edt(~pred_edge)[gt_edge] <= radius).mean()
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def reference_scores(pred: np.ndarray, gt: np.ndarray) -> list[tuple[float, float]]:
    """Per-object (J mean, F mean) by the semi-supervised protocol, one frame at a time."""
    gt = np.where(gt == 255, 0, gt)
    scores = []
    for obj in range(1, int(gt[0].max()) + 1):
        j_values, f_values = [], []
        for p, g in zip(pred[1:-1] == obj, gt[1:-1] == obj):
            union = np.count_nonzero(p | g)
            j_values.append(np.count_nonzero(p & g) / union if union else 1.0)
            f_values.append(reference_f(p, g))
        scores.append((float(np.mean(j_values)), float(np.mean(f_values))))
    return scores


def write_predictions(root: Path, names: list[str], out: Path, dy: int, dx: int) -> None:
    for name in names:
        paths = sequence_annotations(root, name)
        for path, labels in zip(paths, shift_labels(read_annotations(paths), dy, dx)):
            write_annotation(out / name / path.name, labels)


def score(root: Path, names: list[str], pred_dir: Path) -> tuple[list[dict], list[tuple[float, float]], float]:
    rows, reference, seconds = [], [], 0.0
    for name in names:
        paths = sequence_annotations(root, name)
        gt = read_annotations(paths)
        pred = np.stack([read_annotation(pred_dir / name / p.name) for p in paths])
        start = time.perf_counter()
        result = evaluate_semi_supervised(pred, gt, sequence=name)
        seconds += time.perf_counter() - start
        rows += result["rows"]
        reference += reference_scores(pred, gt)
    return rows, reference, seconds


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="DAVIS root (default: <shared data>/davis2016)")
    parser.add_argument("--list", default="val_dev.txt", help="sequence list inside ImageSets/")
    parser.add_argument("--shift", type=int, nargs=2, default=(3, 5), metavar=("DY", "DX"))
    parser.add_argument("--out", default=None, help="keep the prediction folder here (default: temporary)")
    args = parser.parse_args(argv)
    root = Path(args.data) if args.data else data_root() / "davis2016"
    if not root.is_dir():
        raise UserError(f"{root}: DAVIS folder not found (pass --data)")
    names = read_sequence_list(root, args.list)
    with tempfile.TemporaryDirectory() as tmp:
        if args.out:
            with atomic_output_dir(args.out) as out:
                write_predictions(root, names, out, *args.shift)
            pred_dir = Path(args.out)
        else:
            pred_dir = Path(tmp)
            write_predictions(root, names, pred_dir, *args.shift)
        rows, reference, seconds = score(root, names, pred_dir)
    print(f"{'object':24s} {'J':>7s} {'J_ref':>7s} {'F':>7s} {'F_ref':>7s}")
    worst = 0.0
    for row, (j_ref, f_ref) in zip(rows, reference):
        print(f"{row['sequence'] + '_' + str(row['object']):24s} {row['J']:7.4f} {j_ref:7.4f} "
              f"{row['F']:7.4f} {f_ref:7.4f}")
        worst = max(worst, abs(row["J"] - j_ref), abs(row["F"] - f_ref))
    ours = summarize(rows)
    ref = summarize({"J": j, "F": f} for j, f in reference)
    print(f"shift (dy, dx) = {tuple(args.shift)}, {len(rows)} objects, metrics time {seconds:.1f} s")
    print("J&F / J / F  ours:      " + " / ".join(f"{v:.4f}" for v in ours))
    print("J&F / J / F  reference: " + " / ".join(f"{v:.4f}" for v in ref))
    if len(rows) != len(reference) or worst >= 5e-5 or any(abs(a - b) >= 5e-5 for a, b in zip(ours, ref)):
        raise SystemExit(f"MISMATCH: largest per-object difference {worst:.2e}")
    print(f"agree to 4 decimals (largest per-object difference {worst:.1e})")


if __name__ == "__main__":
    main()
