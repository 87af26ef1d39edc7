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
  - mesh quality: mean angle between adjacent face normals and the share of edges folded past 90 degrees;
  - with ``--synthetic`` (videos of ``python -m mesh_recon.synth videos`` from a seed unused in training; gt/*.npz):
    the same, plus (``adapt.scores3d``) the camera-frame Chamfer and F-score@5% (the project's 3-D metric: each
    mesh placed by its own camera, nothing fitted), the older Chamfer-L2 / F-score after similarity ICP, keypoint
    PCK@0.1 and the ground truth's mesh quality.
Both kinds of ``adapt.run`` output are read: canonical OBJs (free-form predictor, ``export.animation=morph``) and
world-frame OBJs with pose.json (articulated predictor, rig export), which go back to canonical with cameras.json.
Writes, atomically into DIR: results.csv, summary.md, scores.json (per-frame numbers), iou_per_frame.png,
consistency.png, contact_sheet.png (frames with outlines, each mesh from its camera, the side and above) and runs/.
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
from birdmesh.metrics import db_eval_iou
from birdmesh.outdir import atomic_output_dir
from birdmesh.video import read_image
from mesh_recon.mesh import load_obj
from mesh_recon.mesh_views import marked_colour, mesh_view_tiles

from . import report as report_io
from .export_articulated import canonical_from_world
from .run import main as run_main
from .scores import part_consistency, reprojection_consistency
from .scores3d import camera_frame_verts, load_gt3d, quality_row, score_3d

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
    """What one ``adapt.run`` wrote: verts (T, V, 3) canonical (rig-mode OBJs taken back from the world frame),
    faces (F, 3), T cameras.json entries, masks (T, H, W) bool, parts (T, H, W) uint8, frame_index (T,) indices
    into the input frames, the report, mode "morph" (canonical OBJs) or "rig" (world-frame OBJs, pose.json)."""

    verts: np.ndarray
    faces: np.ndarray
    cameras: list
    masks: np.ndarray
    parts: np.ndarray
    frame_index: np.ndarray
    report: dict
    mode: str = "morph"


def list_sequences(davis: str | None, list_file: str | None, synthetic: str | None) -> list[EvalSequence]:
    """The DAVIS sequences of ``list_file`` under ``davis``, then those of ``synthetic``/ImageSets/synth.txt
    (of ``list_file`` when there is no ``davis``: one list names the sequences of the one dataset)."""
    out = []
    if davis:
        for name in read_sequence_list(davis, list_file or "birds_dev.txt"):
            seq = load_sequence(davis, name)
            out.append(EvalSequence(name, "davis", seq.frames, seq.annotations))
    if synthetic:
        for name in read_sequence_list(synthetic, list_file if list_file and not davis else "synth.txt"):
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
    """Load an ``adapt.run`` output folder (meshes, cameras.json, masks, parts, report.json).

    A folder with pose.json is rig mode: its OBJs are in the world frame (``adapt.export_articulated``) and go back
    to the canonical frame with each frame's cameras.json entry, so every score reads one kind of mesh.
    """
    report = json.loads((folder / "report.json").read_text())
    T = int(report["frames"])
    meshes = [load_obj(folder / "meshes" / f"{t:05d}.obj") for t in range(T)]
    camera_doc = json.loads((folder / "cameras.json").read_text())
    cameras = camera_doc["frames"]
    verts = np.stack([v.numpy() for v, _ in meshes]).astype(np.float64)
    mode = "rig" if (folder / "pose.json").is_file() else "morph"
    if mode == "rig":
        frame_size = (int(camera_doc["width"]), int(camera_doc["height"]))
        verts = np.stack([canonical_from_world(v, c, frame_size) for v, c in zip(verts, cameras)])
    masks = np.stack([read_annotation(folder / "masks" / f"{t:05d}.png") > 0 for t in range(T)])
    parts = np.stack([read_annotation(folder / "parts" / f"{t:05d}.png") for t in range(T)])
    stride = int(report.get("settings", {}).get("input", {}).get("stride", 1))
    return RunOutputs(verts, meshes[0][1].numpy(), cameras, masks, parts, np.arange(T) * stride, report, mode)


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
def keypoint_weights(checkpoint: str) -> np.ndarray | None:
    """(K, V) keypoint weights of a predictor checkpoint ("" = the shipped weights): softmax(vert2kp_logits) of the
    free-form predictor, the template's kp_regressor of the articulated one; None when it has neither.

    The adaptation does not touch the keypoint assignment (no loss uses it), so the checkpoint's serves both methods.
    """
    from birdmesh.checkpoint import read_checkpoint
    from mesh_recon.checkpoint import DEFAULT_WEIGHTS

    state = read_checkpoint(checkpoint or DEFAULT_WEIGHTS)["state_dict"]  # no model built: only one tensor is needed
    if "vert2kp_logits" in state:
        return torch.softmax(state["vert2kp_logits"].double(), dim=1).numpy()
    if "template.kp_regressor" in state:
        return state["template.kp_regressor"].double().numpy()
    return None


def score_run(seq: EvalSequence, run: RunOutputs, distances=DISTANCES, num_points: int = 2000) -> dict:
    """Every score of one read run: ``score_2d``, mesh quality and, on synthetic videos, ``scores3d.score_3d``.

    Returns:
        {"row": flat dict, "per_frame": {name: list}, "gt_masks": (T, H, W) bool, "gt3d": ``load_gt3d`` or None}.
    """
    if run.frame_index[-1] >= len(seq.annotations):
        raise UserError(f"{seq.name}: the run has more frames than the {len(seq.annotations)} annotations")
    gt_masks = np.stack([read_annotation(seq.annotations[i]) > 0 for i in run.frame_index])
    if gt_masks.shape[1:] != run.masks.shape[1:]:
        raise UserError(f"{seq.name}: annotations are {gt_masks.shape[2]}x{gt_masks.shape[1]} but the exported "
                        f"masks {run.masks.shape[2]}x{run.masks.shape[1]}")
    scored = score_2d(run, gt_masks, distances)
    quality = quality_row(run.verts, run.faces)
    scored["row"].update(quality["row"])
    scored["per_frame"].update(quality["per_frame"])
    gt3d = None
    if seq.gt3d is not None:
        gt3d = load_gt3d(seq.gt3d, run.frame_index)
        checkpoint = run.report.get("settings", {}).get("predictor", {}).get("checkpoint", "")
        three = score_3d(run.verts, run.faces, run.cameras, gt3d, gt_masks, keypoint_weights(checkpoint), num_points)
        scored["row"].update(three["row"])
        scored["per_frame"].update(three["per_frame"])
    return {**scored, "gt_masks": gt_masks, "gt3d": gt3d}


def evaluate_sequence(seq: EvalSequence, runs_dir: Path, pipeline_args: list[str], distances=DISTANCES,
                      num_points: int = 2000) -> dict:
    """Run both methods on one sequence and score them.

    Returns:
        {"rows": [one flat dict per method], "per_frame": {method: {...}},
        "sheet": ``contact_cells`` rows [[(title, (h, w, 3) uint8), ...], ...]}.
    """
    rows, per_frame, runs = [], {}, {}
    for method in METHODS:
        out = runs_dir / method
        run_pipeline(seq, method, out, pipeline_args)
        run = runs[method] = read_run(out)
        scored = score_run(seq, run, distances, num_points)
        rows.append({"dataset": seq.dataset, "sequence": seq.name, "method": method, **scored["row"]})
        per_frame[method] = scored["per_frame"]
        print(f"{seq.dataset}/{seq.name} {method}: " + ", ".join(
            f"{k} {v:.3f}" for k, v in scored["row"].items()
            if k in ("iou", "cons_d1", "part_accuracy", "chamfer_cam", "fscore_cam", "normal_deg")), flush=True)
    return {"rows": rows, "per_frame": per_frame, "sheet": contact_cells(seq, runs, scored["gt_masks"],
                                                                         scored["gt3d"])}


def contact_cells(seq: EvalSequence, runs: dict, gt_masks: np.ndarray, gt3d: dict | None = None) -> list:
    """``SHEET_FRAMES`` evenly spaced frames, one row each: the frame with the GT and each method's silhouette
    outlined, then each method's mesh (and the true one, given ``gt3d``) from its camera, the side and above.

    Args:
        runs: method -> RunOutputs (same frames); gt_masks: (T, H, W) bool; gt3d: ``load_gt3d`` at those frames.
    Returns:
        [[(title, (h, w, 3) uint8), ...] per picked frame] (``report.save_contact_sheet``).
    """
    T = min(len(r.verts) for r in runs.values())
    picks = sorted(set(np.linspace(0, T - 1, min(SHEET_FRAMES, T)).round().astype(int).tolist()))
    frame_index = next(iter(runs.values())).frame_index
    weights = [keypoint_weights(r.report.get("settings", {}).get("predictor", {}).get("checkpoint", ""))
               for r in runs.values()]
    rows = []
    for t in picks:
        frame = read_image(seq.frames[frame_index[t]])
        cell = report_io.overlay_masks(frame, gt_masks[t], {m: r.masks[t] for m, r in runs.items()})
        meshes = {m: (camera_frame_verts(r.verts[t:t + 1], r.cameras[t:t + 1])[0], r.faces,
                      report_io.METHOD_COLOURS.get(m, (200, 200, 0))) for m, r in runs.items()}
        if gt3d is not None:  # already in the camera frame, in the same pixels
            meshes["GT"] = (gt3d["verts_camera"][t], gt3d["faces"], report_io.GT_COLOUR)
        # the head and the tail tip marked: a bird facing backwards covers its silhouette as well
        meshes = {m: (v, f, marked_colour(v, f, c, weights)) for m, (v, f, c) in meshes.items()}
        rows.append([(f"{seq.name} t={frame_index[t]}", cell), *mesh_view_tiles(meshes)])
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--davis", help="DAVIS root (JPEGImages/480p, Annotations/480p, ImageSets)")
    parser.add_argument("--list",
                        help="sequence list, relative to the DAVIS root or ImageSets (default: birds_dev.txt); "
                             "without --davis, of the --synthetic folder (default: synth.txt)")
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
