"""Evaluate the mesh predictor: ``python -m mesh_recon.evaluate --checkpoint P --out DIR``.

Synthetic hold-out (``--synthetic-n N --seed S``; S must differ from the training ``data.seed``): mask IoU of the
rendered silhouette, keypoint PCK@0.1 of the mask's box size, camera rotation error (degrees) and Chamfer distance
to the ground-truth posed mesh after centring and scale alignment (canonical units; a bird is ~2 long); and the
project's camera-frame Chamfer / F-score@5 % (each mesh through its own camera, mean depth removed, nothing fitted:
``birdmesh.shape_metrics``), mesh quality (mean adjacent-normal angle, share of edges folded past 90 degrees) of the
prediction beside the ground truth's, and for an articulated predictor the mean joint-angle error.
Real birds (``--davis ROOT --list birds_dev.txt``): every ``--davis-stride``-th frame, cropped around its
ground-truth mask as at inference; IoU of the rendered silhouette with that mask in the crop.
Writes DIR/metrics.csv (one row per image), DIR/summary.json, DIR/examples_<source>.png (input | overlay |
textured render | texture) and prints one summary line.
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor

from birdmesh.davis import load_sequence, read_annotation, read_sequence_list
from birdmesh.errors import UserError, cli_entry
from birdmesh.metrics import bbox_size_from_mask, mask_iou
from birdmesh.outdir import atomic_output_dir, check_output_dir
from birdmesh.runtime import resolve_data_path, resolve_device
from birdmesh.shape_metrics import mesh_camera_chamfer, mesh_quality, quaternion_matrix, to_camera_frame

from .checkpoint import DEFAULT_WEIGHTS, load_predictor
from .crop import crop_around_mask, crop_image
from .geometry import ndc_to_pixels, quaternion_to_rotation_matrix
from .mesh import vertex_normals
from .mesh_views import TILE, marked_colour, mesh_view_tiles
from .predictor import MeshPredictor, Prediction, project_keypoints, project_vertices, texture_from_flow
from .render import interpolate_hard, render_hard, sample_texture_hard
from .synth import SynthSettings, generate_batch

DEFAULT_HOLDOUT_SEED = 90210  # never a training seed (configs use data.seed 0)
NUM_EXAMPLES = 8


def rotation_error_deg(quat: Tensor, quat_gt: Tensor) -> Tensor:
    """(B,) geodesic angle in degrees between rotations of quaternions (B, 4) (q and -q equal)."""
    cos_half = (torch.nn.functional.normalize(quat, dim=1) * torch.nn.functional.normalize(quat_gt, dim=1)).sum(1)
    return torch.rad2deg(2 * torch.acos(cos_half.abs().clamp(max=1.0)))


def sample_surface(verts: Tensor, faces: Tensor, count: int, generator: torch.Generator) -> Tensor:
    """(count, 3) points uniformly distributed on the surface of one mesh verts (V, 3), faces (F, 3)."""
    corners = verts[faces]  # (F, 3, 3)
    area = torch.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0], dim=1).norm(dim=1)
    face = torch.multinomial(area, count, replacement=True, generator=generator)
    a, b = torch.rand(2, count, 1, generator=generator, dtype=verts.dtype)
    fold = (a + b) > 1
    a, b = torch.where(fold, 1 - a, a), torch.where(fold, 1 - b, b)
    c = corners[face]
    return c[:, 0] + a * (c[:, 1] - c[:, 0]) + b * (c[:, 2] - c[:, 0])


def aligned_chamfer(points: Tensor, points_gt: Tensor) -> float:
    """Symmetric mean nearest-neighbour distance after centring both clouds (N, 3), (M, 3) and scaling ``points``
    to the RMS radius of ``points_gt`` (the weak-perspective scale of a shape is not observable)."""
    p, g = points - points.mean(0), points_gt - points_gt.mean(0)
    p = p * (g.square().sum(1).mean().sqrt() / p.square().sum(1).mean().sqrt().clamp_min(1e-12))
    dist = torch.cdist(p, g)
    return float((dist.min(1).values.mean() + dist.min(0).values.mean()) / 2)


def silhouettes(pred: Prediction, size: int) -> Tensor:
    """(B, 1, S, S) hard 0/1 silhouettes of the predicted meshes in the input crop."""
    return render_hard(project_vertices(pred), pred.faces, size).mask


def example_panels(images: Tensor, pred: Prediction) -> np.ndarray:
    """(B, S, 5S, 3) uint8 rows: input | shaded mesh over the input | textured render | texture (S x 2S)."""
    B, _, S, _ = images.shape
    verts_ndc = project_vertices(pred)
    fragments = render_hard(verts_ndc, pred.faces, S)
    rotated = pred.verts @ quaternion_to_rotation_matrix(pred.cams[:, 3:]).transpose(1, 2)
    light = (-vertex_normals(rotated, pred.faces)[..., 2:]).clamp(0, 1)  # facing the viewer = bright
    shade = interpolate_hard(fragments, pred.faces, 0.25 + 0.75 * light)  # (B, 1, S, S)
    tint = images.new_tensor([1.0, 0.8, 0.5]).reshape(1, 3, 1, 1)
    overlay = images * (1 - 0.7 * fragments.mask) + 0.7 * fragments.mask * tint * shade
    kp = ndc_to_pixels(project_keypoints(pred), S, S)
    texture = texture_from_flow(images, pred.uv_flow)
    textured = sample_texture_hard(fragments, pred.face_uvs, texture)
    texture = torch.nn.functional.interpolate(texture, size=(S, 2 * S), mode="bilinear", align_corners=False)
    panels = torch.cat([images, overlay, textured, texture], dim=3).clamp(0, 1)
    out = np.ascontiguousarray((panels.permute(0, 2, 3, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8))
    for b in range(B):
        for u, v in kp[b].cpu().numpy():
            cv2.circle(out[b], (int(round(u + S)), int(round(v))), max(1, S // 64), (0, 255, 0), -1)
    return out


@torch.no_grad()
def evaluate_synthetic(model: MeshPredictor, n: int, seed: int, batch: int = 32, data_dir: str | None = None,
                       settings: SynthSettings = SynthSettings()) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """Per-image metric rows on synthetic hold-out images, the example panels of the first batch and its meshes
    from the camera, the side and above (``view_panels``)."""
    S, rows, examples, views = model.cfg.image_size, [], None, None
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    for start in range(0, n, batch):
        data = generate_batch(min(batch, n - start), S, seed, start, settings, data_dir=data_dir)
        images, masks = data["image"].to(device), data["mask"]
        pred = model(images)
        iou = mask_iou(silhouettes(pred, S).cpu(), masks)[:, 0]
        kp = ndc_to_pixels(project_keypoints(pred).cpu(), S, S).numpy()
        kp_gt, vis = ndc_to_pixels(data["kp"][..., :2], S, S).numpy(), data["kp"][..., 2].numpy() > 0.5
        norm = bbox_size_from_mask(masks[:, 0].numpy() > 0.5)
        hits = np.linalg.norm(kp - kp_gt, axis=-1) <= 0.1 * norm[:, None]
        rot = rotation_error_deg(pred.cams[:, 3:].cpu(), data["cam"][:, 3:])
        joint_err = joint_angle_error_deg(pred, data["body_pose"])
        faces_gt = _bird_faces(data_dir)
        for i in range(len(images)):
            pts = sample_surface(pred.verts[i].cpu().double(), pred.faces.cpu(), 4000, gen)
            pts_gt = sample_surface(data["verts"][i].double(), faces_gt, 4000, gen)
            rows.append({"source": "synthetic", "name": f"seed{seed}/{start + i}", "iou": float(iou[i]),
                         "pck": float(hits[i][vis[i]].mean()) if vis[i].any() else float("nan"),
                         "visible_kp": int(vis[i].sum()), "rot_deg": float(rot[i]),
                         "chamfer": aligned_chamfer(pts, pts_gt),
                         **camera_frame_scores(pred.verts[i], pred.cams[i], pred.faces, data["verts"][i],
                                               data["cam"][i], faces_gt, seed=start + i),
                         "joint_deg": float(joint_err[i]) if joint_err is not None else float("nan")})
        if examples is None:
            examples = example_panels(images[:NUM_EXAMPLES], _slice(pred, NUM_EXAMPLES))
            k = NUM_EXAMPLES
            views = view_panels(images[:k], pred.verts[:k], pred.cams[:k], pred.faces, data["verts"][:k],
                                data["cam"][:k], faces_gt, pred.vert2kp)
    return rows, examples, views


def joint_angle_error_deg(pred: Prediction, body_pose: Tensor) -> Tensor | None:
    """(B,) mean geodesic angle (degrees) between predicted and true joint rotations (B, 24, 3) axis-angle;
    None for a free-form prediction (no joints)."""
    rotations = getattr(pred, "rotations", None)
    if rotations is None:
        return None
    from .bird_model import axis_angle_to_matrix

    relative = rotations.cpu().double().transpose(-1, -2) @ axis_angle_to_matrix(body_pose.double())
    cos = ((relative.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.acos(cos)).mean(1)


def camera_frame(verts: Tensor, cam: Tensor) -> np.ndarray:
    """(V, 3) model-frame vertices and their weak-perspective camera (7,) -> (V, 3) float64 camera frame."""
    c = cam.detach().cpu().double()
    return to_camera_frame(verts.detach().cpu().double().numpy(), float(c[0]), quaternion_matrix(c[3:].numpy()),
                           c[1:3].numpy())


def view_panels(images: Tensor, verts: Tensor, cams: Tensor, faces: Tensor, verts_gt: Tensor, cams_gt: Tensor,
                faces_gt: Tensor, keypoint_weights: Tensor | None = None) -> np.ndarray:
    """One row per image (B, 3, S, S in [0, 1]): the image, then the predicted mesh (verts (B, V, 3), cams (B, 7),
    faces (F, 3)) and the true one (verts_gt (B, M, 3), cams_gt, faces_gt) from the camera, the side and above
    (``mesh_views``), one scale per row: a mesh right only through the camera shows here. With the predictor's
    ``keypoint_weights`` (K, V) the head and the tail tip are marked (``landmark_colours``; on the truth too when it
    has the predictor's vertices, as the articulated template does).
    Returns (B, TILE, 7 * TILE, 3) uint8."""
    weights = None if keypoint_weights is None else keypoint_weights.detach().cpu().double().numpy()
    rows = []
    for i in range(len(images)):
        image = (images[i].permute(1, 2, 0).cpu().numpy() * 255).round().clip(0, 255).astype(np.uint8)
        meshes = {}
        for label, v, cam, f, colour in (("pred", verts[i], cams[i], faces, (220, 40, 40)),
                                          ("GT", verts_gt[i], cams_gt[i], faces_gt, (40, 200, 60))):
            v, f = camera_frame(v, cam), f.cpu().numpy()
            meshes[label] = (v, f, marked_colour(v, f, colour, [weights]))
        tiles = [cv2.resize(image, (TILE, TILE), interpolation=cv2.INTER_AREA)]
        for title, tile in mesh_view_tiles(meshes):
            tile = tile.copy()
            cv2.putText(tile, title, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
            tiles.append(tile)
        rows.append(np.concatenate(tiles, 1))
    return np.stack(rows)


def camera_frame_scores(verts: Tensor, cam: Tensor, faces: Tensor, verts_gt: Tensor, cam_gt: Tensor,
                        faces_gt: Tensor, seed: int = 0) -> dict:
    """The camera-frame Chamfer / F-score@5 % (``birdmesh.shape_metrics``) of one image, each mesh with its own
    camera (7,), and the mesh quality of both (prediction and ground truth). verts (V, 3), verts_gt (M, 3)."""
    pred_cam, gt_cam = camera_frame(verts, cam), camera_frame(verts_gt, cam_gt)
    scores = mesh_camera_chamfer(pred_cam, faces.cpu().numpy(), gt_cam, faces_gt.numpy(), seed)
    quality, quality_gt = mesh_quality(pred_cam, faces.cpu().numpy()), mesh_quality(gt_cam, faces_gt.numpy())
    return {"cam_chamfer": scores.chamfer, "fscore": scores.fscore, "normal_deg": quality.normal_angle_deg,
            "folded": quality.folded, "gt_normal_deg": quality_gt.normal_angle_deg, "gt_folded": quality_gt.folded}


def _bird_faces(data_dir: str | None) -> Tensor:
    from .bird_model import load_bird_model

    return load_bird_model(data_dir).faces


def _slice(pred: Prediction, k: int) -> Prediction:
    return type(pred)(**{name: value[:k] if name in pred.BATCHED and value is not None else value
                         for name, value in pred.__dict__.items()})


def _read_frame(path: Path) -> Tensor:
    rgb = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0


@torch.no_grad()
def evaluate_davis(model: MeshPredictor, root: str, list_file: str, stride: int = 4,
                   padding: float = 0.2) -> tuple[list[dict], np.ndarray]:
    """Per-frame IoU rows on real bird videos (crops around the GT mask), and example panels."""
    S, rows, panels = model.cfg.image_size, [], []
    device = next(model.parameters()).device
    for name in read_sequence_list(root, list_file):
        seq = load_sequence(root, name)
        for t in range(0, len(seq.frames), stride):
            labels = read_annotation(seq.annotations[t])
            mask = torch.from_numpy(((labels > 0) & (labels != 255)).astype(np.float32))[None, None]
            if mask.sum() == 0:
                continue
            crop, box = crop_around_mask(_read_frame(seq.frames[t]), mask, S, padding)
            mask_crop = (crop_image(mask, box, S) > 0.5).float()
            pred = model(crop.to(device))
            iou = float(mask_iou(silhouettes(pred, S).cpu(), mask_crop)[0, 0])
            rows.append({"source": "davis", "name": f"{name}/{t:05d}", "iou": iou})
            if t % (stride * 5) == 0 and len(panels) < NUM_EXAMPLES:
                panels.append(example_panels(crop.to(device), pred)[0])
    return rows, np.stack(panels) if panels else np.zeros((0, S, 5 * S, 3), np.uint8)


def summarize(rows: list[dict]) -> dict:
    """Means (and the median rotation error) per source."""
    summary = {}
    for source in sorted({r["source"] for r in rows}):
        part = [r for r in rows if r["source"] == source]
        entry = {"images": len(part), "iou": float(np.mean([r["iou"] for r in part]))}
        if source == "synthetic":
            pck = np.array([r["pck"] for r in part])
            weights = np.array([r["visible_kp"] for r in part])
            entry["pck@0.1"] = float(np.nansum(pck * weights) / max(weights.sum(), 1))
            entry["rot_median_deg"] = float(np.median([r["rot_deg"] for r in part]))
            entry["rot_mean_deg"] = float(np.mean([r["rot_deg"] for r in part]))
            entry["chamfer"] = float(np.mean([r["chamfer"] for r in part]))
            for key in ("cam_chamfer", "fscore", "normal_deg", "folded", "gt_normal_deg", "gt_folded", "joint_deg"):
                entry[key] = float(np.mean([r[key] for r in part]))
        summary[source] = entry
    return summary


def summary_line(summary: dict) -> str:
    parts = []
    if "synthetic" in summary:
        s = summary["synthetic"]
        parts.append(f"synthetic IoU={s['iou']:.3f} PCK@0.1={s['pck@0.1']:.3f} rot_median={s['rot_median_deg']:.1f}deg "
                     f"chamfer={s['chamfer']:.4f} cam_chamfer={s['cam_chamfer']:.4f} F@5%={s['fscore']:.3f} "
                     f"normal={s['normal_deg']:.1f}deg (gt {s['gt_normal_deg']:.1f}) folded={s['folded']:.3f} "
                     f"(gt {s['gt_folded']:.3f}) joint={s['joint_deg']:.1f}deg (n={s['images']})")
    if "davis" in summary:
        parts.append(f"davis IoU={summary['davis']['iou']:.3f} (n={summary['davis']['images']})")
    return " | ".join(parts)


def _write_outputs(out: Path, rows: list[dict], sheets: dict, summary: dict) -> None:
    fields = ["source", "name", "iou", "pck", "visible_kp", "rot_deg", "chamfer", "cam_chamfer", "fscore",
              "normal_deg", "folded", "gt_normal_deg", "gt_folded", "joint_deg"]
    with (out / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows([{k: (f"{v:.5f}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows])
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    for source, panels in sheets.items():
        if len(panels):
            cv2.imwrite(str(out / f"examples_{source}.png"), cv2.cvtColor(np.concatenate(panels, 0), cv2.COLOR_RGB2BGR))


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(DEFAULT_WEIGHTS), help="training checkpoint or exported weights")
    parser.add_argument("--out", required=True, help="output folder (refused if it exists, unless --overwrite)")
    parser.add_argument("--synthetic-n", type=int, default=256, help="synthetic hold-out images (0 = skip)")
    parser.add_argument("--seed", type=int, default=DEFAULT_HOLDOUT_SEED, help="synthetic hold-out dataset seed")
    parser.add_argument("--wide", action="store_true",
                        help="hold-out from the widened synthetic distribution (shape_variety 1, motion_fraction 0.5, "
                             "as configs/cmr_articulated_cpu.yaml trains on) instead of the default generator")
    parser.add_argument("--davis", default=None, help="DAVIS root with the real bird videos (e.g. $DATA/davis2016)")
    parser.add_argument("--list", default="birds_dev.txt", help="sequence list (a path, or a name under ImageSets)")
    parser.add_argument("--davis-stride", type=int, default=4, help="evaluate every n-th frame")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    if args.synthetic_n < 0 or (args.synthetic_n == 0 and not args.davis):
        raise UserError(f"--synthetic-n {args.synthetic_n}: expected at least 1 synthetic image (0 only with --davis)")
    if args.davis_stride < 1:
        raise UserError(f"--davis-stride {args.davis_stride}: expected at least 1")
    inputs = {"--checkpoint": args.checkpoint, "--davis": args.davis and str(resolve_data_path(args.davis))}
    check_output_dir(args.out, args.overwrite, inputs)  # before evaluating, not after
    model, cfg = load_predictor(args.checkpoint, resolve_device(args.device))
    rows, sheets = [], {}
    if args.synthetic_n > 0:
        if args.seed == cfg.data.seed:
            print(f"warning: --seed {args.seed} is the training data seed; these images were seen in training")
        settings = SynthSettings(shape_variety=1.0, motion_fraction=0.5) if args.wide else SynthSettings()
        synth_rows, sheets["synthetic"], sheets["synthetic_views"] = evaluate_synthetic(
            model, args.synthetic_n, args.seed, data_dir=cfg.data.data_dir or None, settings=settings)
        rows += synth_rows
    if args.davis:
        davis_rows, sheets["davis"] = evaluate_davis(model, str(resolve_data_path(args.davis)), args.list,
                                                     args.davis_stride)
        rows += davis_rows
    summary = summarize(rows)
    with atomic_output_dir(args.out, args.overwrite, inputs) as out:
        _write_outputs(out, rows, sheets, summary)
    print(summary_line(summary))


if __name__ == "__main__":
    main()
