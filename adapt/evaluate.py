"""Score ``adapt.run`` on bird videos, adapted vs frame-wise: ``python -m adapt.evaluate --davis ROOT --list FILE
--out DIR [--synthetic DIR2] [--max-frames N] [--set key=value ...]``.

Per sequence the pipeline runs twice from the ground-truth first-frame mask, adapted and ``--no-adapt``
(frame-wise), into DIR/runs/<seq>/<method>/, propagating once (``adapt.run --cache``); its exports are then scored
(``adapt.scores``, ``adapt.metrics3d``):
  - silhouette IoU per frame: masks/%05d.png vs the ground-truth masks;
  - mask reprojection consistency: frame t's mesh under frame t+d's camera vs the GT mask of t+d (d = 1, 5, 10, 20);
  - part consistency: each vertex's majority propagated part over the video, rendered on every frame's mesh,
    vs parts/%05d.png where both cover the object (accuracy, mean IoU over parts);
  - runtime per frame and per stage (report.json);
  - with ``--synthetic`` (videos of ``python -m mesh_recon.synth videos`` from a seed unused in training; gt/*.npz):
    the same, plus Chamfer-L2 and F-score@5% of the bird's size after camera-frame + similarity-ICP alignment,
    and keypoint PCK@0.1 (the predictor's vert2kp @ verts under the exported camera vs visible GT keypoints,
    normalised by the GT mask's bounding-box size).
Writes, atomically into DIR: results.csv, summary.md, scores.json (per-frame numbers), iou_per_frame.png,
consistency.png, contact_sheet.png and runs/.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from birdmesh.davis import load_sequence, read_annotation, read_sequence_list
from birdmesh.errors import UserError, cli_entry
from birdmesh.metrics import bbox_size_from_mask, db_eval_iou, pck
from birdmesh.outdir import atomic_output_dir
from birdmesh.video import read_image
from mesh_recon.mesh import load_obj

from . import report as report_io
from .export import project_to_pixels
from .metrics3d import camera_frame_points, sample_surface, shape_scores
from .run import main as run_main
from .scores import part_consistency, reprojection_consistency

METHODS = {"adapted": [], "framewise": ["--no-adapt"]}  # method name -> extra adapt.run arguments
DISTANCES = (1, 5, 10, 20)
SHEET_FRAMES = 4  # contact-sheet frames per sequence


@dataclass(frozen=True)
class EvalSequence:
    """One sequence to score: frame and mask paths (DAVIS layout) and, for synthetic videos, its gt .npz."""

    name: str
    dataset: str  # "davis" | "synthetic"
    frames: tuple[Path, ...]
    annotations: tuple[Path, ...]
    gt3d: Path | None = None


@dataclass(frozen=True)
class RunOutputs:
    """What one ``adapt.run`` wrote: verts (T, V, 3) canonical, faces (F, 3), T cameras.json entries,
    masks (T, H, W) bool, parts (T, H, W) uint8, frame_index (T,) indices into the input frames, the report."""

    verts: np.ndarray
    faces: np.ndarray
    cameras: list
    masks: np.ndarray
    parts: np.ndarray
    frame_index: np.ndarray
    report: dict


def list_sequences(davis: str | None, list_file: str | None, synthetic: str | None) -> list[EvalSequence]:
    """The DAVIS sequences of ``list_file`` under ``davis``, then those of ``synthetic``/ImageSets/synth.txt."""
    out = []
    if davis:
        for name in read_sequence_list(davis, list_file or "birds_dev.txt"):
            seq = load_sequence(davis, name)
            out.append(EvalSequence(name, "davis", seq.frames, seq.annotations))
    if synthetic:
        for name in read_sequence_list(synthetic, "synth.txt"):
            seq = load_sequence(synthetic, name)
            gt = Path(synthetic) / "gt" / f"{name}.npz"
            if not gt.is_file():
                raise UserError(f"{gt}: ground truth of synthetic video {name} not found")
            out.append(EvalSequence(name, "synthetic", seq.frames, seq.annotations, gt))
    names = [f"{s.dataset}/{s.name}" for s in out]
    if len(set(s.name for s in out)) != len(out):
        raise UserError(f"sequence names must be unique across --davis and --synthetic, got {names}")
    return out


def run_pipeline(seq: EvalSequence, method: str, out: Path, pipeline_args: list[str]) -> None:
    """``adapt.run`` in-process on the sequence's frame folder from its first GT mask (a user error exits)."""
    run_main([str(seq.frames[0].parent), "--mask", str(seq.annotations[0]), "--out", str(out),
              *METHODS[method], *pipeline_args])


def read_run(folder: Path) -> RunOutputs:
    """Load an ``adapt.run`` output folder (meshes, cameras.json, masks, parts, report.json)."""
    report = json.loads((folder / "report.json").read_text())
    T = int(report["frames"])
    meshes = [load_obj(folder / "meshes" / f"{t:05d}.obj") for t in range(T)]
    cameras = json.loads((folder / "cameras.json").read_text())["frames"]
    masks = np.stack([read_annotation(folder / "masks" / f"{t:05d}.png") > 0 for t in range(T)])
    parts = np.stack([read_annotation(folder / "parts" / f"{t:05d}.png") for t in range(T)])
    stride = int(report.get("settings", {}).get("input", {}).get("stride", 1))
    return RunOutputs(np.stack([v.numpy() for v, _ in meshes]).astype(np.float64), meshes[0][1].numpy(), cameras,
                      masks, parts, np.arange(T) * stride, report)


def score_2d(run: RunOutputs, gt_masks: np.ndarray, distances=DISTANCES) -> dict:
    """Per-frame IoU, reprojection consistency per distance, part consistency, timings of one run."""
    iou = db_eval_iou(run.masks, gt_masks)
    consistency = {d: reprojection_consistency(run.verts, run.cameras, run.faces, gt_masks, d) for d in distances}
    parts = part_consistency(run.verts, run.cameras, run.faces, run.parts)
    timings = {k: float(v) for k, v in run.report.get("timings_s", {}).items()}
    total = sum(timings.values())
    row = {"frames": len(run.verts), "iou": float(iou.mean())}
    row.update({f"cons_d{d}": float(c.mean()) if c.size else float("nan") for d, c in consistency.items()})
    row.update({"part_accuracy": parts.accuracy, "part_miou": parts.mean_iou,
                "time_per_frame_s": total / max(len(run.verts), 1), "time_total_s": total})
    row.update({f"time_{k}_s": v for k, v in timings.items()})
    per_frame = {"iou": iou.tolist(), "consistency": {str(d): c.tolist() for d, c in consistency.items()},
                 "part_accuracy": parts.frame_accuracy.tolist()}
    return {"row": row, "per_frame": per_frame}


@lru_cache(maxsize=4)
def keypoint_weights(checkpoint: str) -> np.ndarray:
    """(K, V) softmax(vert2kp_logits) of a predictor checkpoint ("" = the shipped weights).

    The adaptation does not touch the keypoint assignment (no loss uses it), so the checkpoint's serves both methods.
    """
    from mesh_recon.checkpoint import load_predictor

    model, _ = load_predictor(checkpoint or None, "cpu")
    return torch.softmax(model.vert2kp_logits.detach().double(), dim=1).numpy()


def score_3d(run: RunOutputs, gt: dict, gt_masks: np.ndarray, vert2kp: np.ndarray | None, num_points: int = 2000,
             icp_iterations: int = 30) -> dict:
    """Chamfer-L2 / F-score per frame after alignment (``metrics3d``) and PCK@0.1 against synthetic ground truth.

    Args:
        gt: arrays of gt/<name>.npz already indexed by ``run.frame_index`` (verts_camera (T, Vg, 3),
            keypoints (T, K, 3)) plus faces (Fg, 3); gt_masks: (T, H, W) bool; vert2kp: (K, V) or None (no PCK).
    """
    chamfer, fscore = [], []
    for t in range(len(run.verts)):
        gt_points = sample_surface(gt["verts_camera"][t], gt["faces"], num_points, seed=t)
        pred_points = camera_frame_points(sample_surface(run.verts[t], run.faces, num_points, seed=t), run.cameras[t])
        scores = shape_scores(pred_points, gt_points, iterations=icp_iterations)
        chamfer.append(scores.chamfer)
        fscore.append(scores.fscore)
    pck_value = float("nan")
    if vert2kp is not None and vert2kp.shape == (gt["keypoints"].shape[1], run.verts.shape[1]):
        pred_kp = np.stack([project_to_pixels(vert2kp @ v, c)[:, :2] for v, c in zip(run.verts, run.cameras)])
        gt_kp = gt["keypoints"]
        pck_value = pck(pred_kp, gt_kp[..., :2], gt_kp[..., 2] > 0.5, bbox_size_from_mask(gt_masks), 0.1)
    row = {"chamfer_l2": float(np.mean(chamfer)), "fscore_5pct": float(np.mean(fscore)), "pck_0.1": pck_value}
    return {"row": row, "per_frame": {"chamfer_l2": chamfer, "fscore_5pct": fscore}}


def load_gt3d(path: Path, frame_index: np.ndarray) -> dict:
    """The synthetic ground truth needed for ``score_3d``, at the run's frames."""
    with np.load(path) as data:
        missing = {"verts_camera", "faces", "keypoints"} - set(data.files)
        if missing:
            raise UserError(f"{path}: missing ground-truth arrays {sorted(missing)}")
        return {"verts_camera": data["verts_camera"][frame_index].astype(np.float64),
                "keypoints": data["keypoints"][frame_index].astype(np.float64), "faces": data["faces"]}


def evaluate_sequence(seq: EvalSequence, runs_dir: Path, pipeline_args: list[str], distances=DISTANCES,
                      num_points: int = 2000) -> dict:
    """Run both methods on one sequence and score them.

    Returns:
        {"rows": [one flat dict per method], "per_frame": {method: {...}}, "sheet": [(title, (h, w, 3) uint8)]}.
    """
    rows, per_frame, runs = [], {}, {}
    for method in METHODS:
        out = runs_dir / method
        run_pipeline(seq, method, out, pipeline_args)
        run = runs[method] = read_run(out)
        if run.frame_index[-1] >= len(seq.annotations):
            raise UserError(f"{seq.name}: the run has more frames than the {len(seq.annotations)} annotations")
        gt_masks = np.stack([read_annotation(seq.annotations[i]) > 0 for i in run.frame_index])
        if gt_masks.shape[1:] != run.masks.shape[1:]:
            raise UserError(f"{seq.name}: annotations are {gt_masks.shape[2]}x{gt_masks.shape[1]} but the exported "
                            f"masks {run.masks.shape[2]}x{run.masks.shape[1]}")
        scored = score_2d(run, gt_masks, distances)
        if seq.gt3d is not None:
            checkpoint = run.report.get("settings", {}).get("predictor", {}).get("checkpoint", "")
            three = score_3d(run, load_gt3d(seq.gt3d, run.frame_index), gt_masks, keypoint_weights(checkpoint),
                             num_points)
            scored["row"].update(three["row"])
            scored["per_frame"].update(three["per_frame"])
        rows.append({"dataset": seq.dataset, "sequence": seq.name, "method": method, **scored["row"]})
        per_frame[method] = scored["per_frame"]
        print(f"{seq.dataset}/{seq.name} {method}: " + ", ".join(
            f"{k} {v:.3f}" for k, v in scored["row"].items() if k in ("iou", "cons_d1", "part_accuracy", "chamfer_l2")),
            flush=True)
    return {"rows": rows, "per_frame": per_frame, "sheet": contact_cells(seq, runs, gt_masks)}


def contact_cells(seq: EvalSequence, runs: dict, gt_masks: np.ndarray) -> list:
    """``SHEET_FRAMES`` evenly spaced frames with the GT and each method's silhouette outlined."""
    T = min(len(r.verts) for r in runs.values())
    picks = sorted(set(np.linspace(0, T - 1, min(SHEET_FRAMES, T)).round().astype(int).tolist()))
    frame_index = next(iter(runs.values())).frame_index
    cells = []
    for t in picks:
        frame = read_image(seq.frames[frame_index[t]])
        cell = report_io.overlay_masks(frame, gt_masks[t], {m: r.masks[t] for m, r in runs.items()})
        cells.append((f"{seq.name} t={frame_index[t]}", cell))
    return cells


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--davis", help="DAVIS root (JPEGImages/480p, Annotations/480p, ImageSets)")
    parser.add_argument("--list",
                        help="sequence list, relative to the DAVIS root or ImageSets (default: birds_dev.txt)")
    parser.add_argument("--synthetic",
                        help="folder of `python -m mesh_recon.synth videos` (use a seed unused in training)")
    parser.add_argument("--out", required=True, help="output folder (written atomically)")
    parser.add_argument("--max-frames", type=int, default=0, help="score at most N frames per sequence (0 = all)")
    parser.add_argument("--distances", default=",".join(map(str, DISTANCES)), help="reprojection distances d")
    parser.add_argument("--points", type=int, default=2000, help="surface samples per mesh for Chamfer / F-score")
    parser.add_argument("--config", help="adapt.run config file (default: adapt.run's)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="adapt.run config override, passed to both methods (repeatable)")
    parser.add_argument("--cache", help="keep the propagations in this folder for later evaluations (default: a "
                        "temporary folder, shared by the two methods of a sequence and removed at the end)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    args = parser.parse_args(argv)
    if not args.davis and not args.synthetic:
        raise UserError("give --davis ROOT (with --list) and/or --synthetic DIR")
    try:
        args.distances = tuple(sorted({int(d) for d in args.distances.split(",") if d.strip()}))
    except ValueError:
        raise UserError(f"--distances {args.distances}: expected comma-separated integers") from None
    if not args.distances or min(args.distances) < 1 or args.max_frames < 0 or args.points < 10:
        raise UserError("--distances >= 1, --max-frames >= 0, --points >= 10 expected")
    return args


def pipeline_arguments(args: argparse.Namespace) -> list[str]:
    """adapt.run arguments shared by every run: config, overrides, frame cap."""
    sets = list(args.overrides) + ([f"input.max_frames={args.max_frames}"] if args.max_frames else [])
    return ([f"--config={args.config}"] if args.config else []) + [a for s in sets for a in ("--set", s)]


@cli_entry
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    sequences = list_sequences(args.davis, args.list, args.synthetic)
    out = Path(args.out)
    inputs = {"--davis": args.davis, "--synthetic": args.synthetic, "--cache": args.cache}  # not to be replaced
    with atomic_output_dir(out, args.overwrite, inputs) as tmp, \
            tempfile.TemporaryDirectory(prefix="adapt-eval-") as scratch:
        pipeline_args = pipeline_arguments(args) + ["--cache", args.cache or scratch]
        results = [evaluate_sequence(seq, tmp / "runs" / seq.name, pipeline_args, args.distances, args.points)
                   for seq in sequences]
        given = sys.argv[1:] if argv is None else argv
        command = "python -m adapt.evaluate " + " ".join(shlex.quote(a) for a in given)
        report_io.write_all(tmp, results, args.distances, {"command": command, "max_frames": args.max_frames})
    print(f"wrote {out / 'summary.md'}, results.csv and plots for {len(sequences)} sequences")


if __name__ == "__main__":
    main()
