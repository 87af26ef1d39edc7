"""Consistent mesh sequences from one bird video: ``python -m adapt.run [INPUT] [--mask M | --box B] [--out DIR]``.

The pipeline, top-down (each stage a function; Li et al., NeurIPS 2020):
  1. read frames; first-frame mask (given, GrabCut in a box, or guessed); K random parts inside it;
     propagate mask + parts through the video with the correspondence model;
  2. crop each frame around its propagated mask; the predictor gives shape, camera and texture flow;
  3. map the parts (and colours) to UV through the texture flows; pool them into video-level UV maps;
  4. fine-tune the predictor on this video (rendered parts / silhouettes vs propagated ones, shared base shape
     and texture, smooth cameras) — skipped with ``--no-adapt``; then refine each frame's mesh and camera by small
     symmetric offsets and one offset shared by the video, with the same losses (``adapt/refine.py``);
  5. export meshes, animation, cameras, masks, parts, overlay and a report into ``--out`` (atomically).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

from birdmesh.config import add_config_arguments, config_to_dict, format_config, load_config, save_config
from birdmesh.errors import UserError, cli_entry
from birdmesh.masks import mask_warning
from birdmesh.outdir import atomic_output_dir, check_folder
from birdmesh.runtime import resolve_device, seed_everything
from mesh_recon.articulated import ArticulatedPredictor
from mesh_recon.bird_motion import build_factor_moments
from mesh_recon.checkpoint import load_predictor

from .config import AdaptConfig
from .export import PixelCamera, camera_entry, camera_to_pixels, export_sequence
from .export_articulated import export_rigged
from .flags import frame_flags, mesh_overreach
from .inputs import (DEMO_MASK, DEMO_VIDEO, box_mask, box_numbers, parse_box, read_mask, read_video, resize_mask,
                     scale_box)
from .losses import fold_reference
from .optimize import adapt_predictor, predict_frames, video_maps
from .outputs import project_to_ndc, write_masks, write_overlay, write_parts, write_report
from .refine import refine_frames
from .pose_space import refine_best_track, video_reference, video_viewpoint, with_track
from .stages import cached_propagate_and_crop, first_frame_labels, guess_first_mask
from .viewpoint import viewpoint_report

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "adapt.yaml"


def warn(warnings: list[str], text: str | None) -> None:
    """Keep a warning for the report and print it as one line on stderr (nothing for None)."""
    if text:
        warnings.append(text)
        print(f"warning: {text}", file=sys.stderr, flush=True)


def first_frame_mask(video, args, model, cfg: AdaptConfig, warnings: list[str]) -> np.ndarray:
    """The first-frame object mask at the processing size, from --mask, --box or a guess."""
    frame = video.frames[0]
    size = (frame.shape[1], frame.shape[0])
    if args.mask:
        given = read_mask(args.mask, video.original_size, args.resize_mask)
        warn(warnings, mask_warning(given, args.mask))
        mask = resize_mask(given, size)
        if not mask.any():
            raise UserError(f"{args.mask}: no object pixel is left at the processing size {size[0]}x{size[1]} "
                            f"(a larger input.max_side keeps it)")
        return mask
    if args.box:
        box = scale_box(parse_box(args.box, video.original_size), size[0] / video.original_size[0], size)
        mask, note = box_mask(frame, box, cfg.input.grabcut_iterations)
        warn(warnings, note)
    else:
        warn(warnings, "no --mask or --box: the first-frame mask was guessed (predictor silhouette + GrabCut)")
        mask = guess_first_mask(frame, model, cfg.input.grabcut_iterations)
    if not mask.any():
        raise UserError("the first-frame mask came out empty: pass --mask or a tighter --box")
    warn(warnings, mask_warning(mask, "--box" if args.box else "the guessed first-frame mask"))
    return mask


def run(args: argparse.Namespace, cfg: AdaptConfig, out: Path) -> dict:
    """The whole pipeline into the (temporary) output folder ``out``; returns the report."""
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    timings, warnings, tic = {}, [], time.time()

    def lap(name: str) -> None:
        nonlocal tic
        timings[name] = round(time.time() - tic, 3)
        tic = time.time()

    # 1. Frames, first-frame labels, propagation.
    video = read_video(args.input, cfg.input)
    predictor, predictor_cfg = load_predictor(cfg.predictor.checkpoint or None, device)
    if isinstance(predictor, ArticulatedPredictor):  # its bone prior: the builds it was trained on, not one species
        predictor.template.widen_bone_prior(*map(torch.from_numpy, build_factor_moments(
            predictor_cfg.data.synth.shape_variety)))
    mask0 = first_frame_mask(video, args, predictor, cfg, warnings)
    labels0 = first_frame_labels(video.frames[0], mask0, cfg)
    lap("read")
    crops, part_indices, reused = cached_propagate_and_crop(args.cache, video, labels0, cfg,
                                                            predictor_cfg.model.image_size, device)
    vanished = [int(t) for t in torch.nonzero(~crops.valid).flatten()]
    if vanished:
        warn(warnings, f"the object vanished in {len(vanished)} frames (not adapted on): {vanished[:20]}")
    flags = frame_flags(part_indices, crops.masks, crops.boxes, crops.valid, cfg.flags.min_confidence,
                        cfg.flags.max_area_jump, cfg.flags.max_area_drift)
    for name in ("truncated", "close_up", "low_confidence", "area_drift"):
        flagged = [f["frame"] for f in flags if f[name]]
        if flagged:
            warn(warnings, f"{name.replace('_', ' ')} frames ({len(flagged)}, see frame_flags): {flagged[:20]}")
    lap("propagate")
    # 2-3. Per-frame predictions (an articulated predictor: on one viewpoint track), video-level UV maps.
    articulated = isinstance(predictor, ArticulatedPredictor)
    pool = cfg.predictor.align_pooling == "video" and not args.no_adapt and not articulated
    pool_keep = crops.valid if pool else None  # frames whose alignment moves the video shares
    pred = predict_frames(predictor, crops.images, pool_keep=pool_keep)
    viewpoint = None
    if articulated:
        viewpoint = video_viewpoint(pred, crops, switch_cost=cfg.optim.viewpoint_switch_cost)
        pred = with_track(pred, viewpoint.track)
    maps = video_maps(pred, crops)
    lap("predict")
    # 4. Online adaptation.
    fold, weights = None, dataclasses.replace(cfg.loss, coverage_radius=cfg.loss.coverage_reach(articulated),
                                              part_coverage=cfg.loss.part_coverage_weight(articulated))
    if not (articulated or args.no_adapt) and cfg.loss.fold_free_form > 0:
        with torch.no_grad():  # free-form: no folds beyond the predictor's mean bird, with its own weight
            fold = fold_reference(predictor.mean_verts(), predictor.faces)
        weights = dataclasses.replace(weights, fold=cfg.loss.fold_free_form)
    history = [] if args.no_adapt else adapt_predictor(
        predictor, crops, maps, cfg.optim, weights, cfg.seed, pool, track=viewpoint.track if viewpoint else None,
        reference=video_reference(pred, predictor.template, crops) if articulated else None, fold=fold)
    lap("adapt")
    # 4b. The adapted predictions, then per-frame refinement (pooled maps and base shape from the adapted model).
    final, refine_history = maps, []
    if not args.no_adapt:  # the frame-wise baseline keeps the predictions and maps of steps 2-3
        pred = predict_frames(predictor, crops.images, pool_keep=pool_keep)
        if articulated:  # refine_best_track pools the maps of the track it keeps
            viewpoint = video_viewpoint(pred, crops, switch_cost=cfg.optim.viewpoint_switch_cost)
        else:
            final = video_maps(pred, crops)
    steps = 0 if args.no_adapt else cfg.optim.refine_iterations
    optim = dataclasses.replace(cfg.optim, refine_iterations=steps)
    refit = None
    if articulated:  # the video shares one skeleton and base shape, adapted or not
        refit = refine_best_track(pred, crops, predictor.template, viewpoint, optim, weights, cfg.seed,
                                  maps=maps if args.no_adapt else None)  # frame-wise: pooled in step 3 already
        pred, final, refine_history = refit.pred, refit.maps, refit.history
    elif not args.no_adapt:
        pred, refine_history = refine_frames(pred, crops, final, predictor.template.sym, optim, weights, cfg.seed,
                                             fold)
    lap("refine")
    # 5. Export.
    processed_wh = (crops.frame_hw[1], crops.frame_hw[0])
    rotation, scale, translation = camera_to_pixels(pred.cams, crops.boxes, video.original_size, processed_wh)
    texture = (final.texture.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    cameras = [camera_entry(PixelCamera(r, s, t)) for r, s, t in zip(rotation, scale, translation)]
    if articulated and cfg.export.animation == "rig":
        export_rigged(out, pred, predictor.template, texture, video.fps, PixelCamera(rotation, scale, translation),
                      cameras, video.original_size)
    else:
        export_sequence(out, pred.verts.cpu(), pred.faces.cpu(), pred.face_uvs.cpu(), texture, video.fps, cameras,
                        video.original_size)
    verts_ndc = project_to_ndc(pred.verts, rotation, scale, translation, video.original_size)
    mesh_masks = write_masks(out / "masks", verts_ndc, pred.faces, video.original_size)
    overreach = mesh_overreach(mesh_masks, part_indices)
    for flag, sides in zip(flags, overreach):
        flag["mesh_overreach"] = sides
    stretched = [t for t, sides in enumerate(overreach) if sides]
    if stretched:
        warn(warnings, f"the mesh reaches the frame's border beyond the bird in {len(stretched)} frames "
                       f"(see frame_flags' mesh_overreach): {stretched[:20]}")
    write_parts(out / "parts", part_indices, video.original_size)
    if cfg.export.overlay:
        write_overlay(out / "overlay.mp4", video.frames, pred.verts, rotation, scale, translation, pred.faces,
                      pred.face_uvs, final.texture.clamp(0, 1), part_indices, video.original_size, video.fps,
                      cfg.export.overlay_max_side, flags)
    lap("export")
    report = {"input": str(args.input), "frames": len(video.frames), "fps": video.fps,
              "adapted": not args.no_adapt, "settings": config_to_dict(cfg), "timings_s": timings,
              "losses": history, "refine_losses": refine_history, "warnings": warnings, "vanished_frames": vanished,
              "propagation_reused": reused, "frame_flags": flags,
              "viewpoint": viewpoint_report(viewpoint, refit.report, refit.track) if refit else None}
    write_report(out / "report.json", report)
    return report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", nargs="?", default=None, help="video file or frame folder (default: the demo)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--mask", help="first-frame mask PNG (0/255 or DAVIS palette), same size as the frames")
    group.add_argument("--box", help="x0,y0,x1,y1 around the bird in the first frame (OpenCV GrabCut)")
    parser.add_argument("--resize-mask", action="store_true", help="resize a mask of another size to the frames")
    parser.add_argument("--out", help="output folder (default: ./out/<input name>)")
    parser.add_argument("--no-adapt", action="store_true", help="frame-wise predictor only (the baseline)")
    parser.add_argument("--device", default=None, help="auto | cpu | cuda (overrides the config)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--cache", help="folder to keep and reuse the propagation in (e.g. --no-adapt vs adapted, "
                        "or when trying adaptation settings)")
    # a wheel install has no configs/ folder: AdaptConfig's defaults are the same values (tests/birdmesh/test_config)
    add_config_arguments(parser, str(DEFAULT_CONFIG) if DEFAULT_CONFIG.is_file() else None)
    args = parser.parse_args(argv)
    if args.input is None:
        args.input = str(DEMO_VIDEO)
        if not args.mask and not args.box:
            args.mask = str(DEMO_MASK)
    return args


@cli_entry
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    overrides = list(args.overrides) + ([f"device={args.device}"] if args.device else [])
    cfg = load_config(AdaptConfig, args.config, overrides)
    print(format_config(cfg), flush=True)
    if not Path(args.input).exists():
        raise UserError(f"{args.input}: no such file or folder")
    if args.box:
        box_numbers(args.box)
    if args.cache:
        check_folder(args.cache, f"--cache {args.cache}")
    # what the output folder must not hold (--overwrite would delete it); atomic_output_dir checks before any work
    inputs = {"the input": args.input, "--mask": args.mask, "--cache": args.cache,
              "predictor.checkpoint": cfg.predictor.checkpoint,
              "correspondence.checkpoint": cfg.correspondence.checkpoint}
    out = args.out or str(Path("out") / Path(args.input).stem)
    with atomic_output_dir(out, args.overwrite, inputs) as tmp:
        save_config(cfg, tmp)
        report = run(args, cfg, tmp)
    timings = ", ".join(f"{k} {v:.1f} s" for k, v in report["timings_s"].items())
    print(f"wrote {report['frames']} meshes to {out} ({timings})")


if __name__ == "__main__":
    main()
