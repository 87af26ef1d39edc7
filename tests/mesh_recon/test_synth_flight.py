"""Tests of the synthetic flight benchmark: paths, DAVIS layout, speeds, exits, distractors, determinism."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from birdmesh.davis import read_annotation, read_sequence_list, sequence_annotations, sequence_frames
from birdmesh.runtime import data_root
from mesh_recon.geometry import pixels_to_ndc
from mesh_recon.render import render_hard
from mesh_recon.synth_cli import main as synth_main
from mesh_recon.synth_flight import generate_flight_clip
from mesh_recon.synth_flight_path import fold, make_axis
from mesh_recon.synth_flight_plan import FlightSettings, plan_clip

NEEDED = ("train_videos/davis2016_train/JPEGImages/240p", "bird_model/avian_mesh", "bird_model/cub_sfm/sfm")
needs_data = pytest.mark.skipif(not all((data_root() / p).is_dir() for p in NEEDED),
                                reason=f"shared data ({', '.join(NEEDED)}) not found under {data_root()}; "
                                       f"set BIRDMESH_DATA")
SMALL = FlightSettings(width=320, height=180)


def make_plan(index: int = 1, settings: FlightSettings = SMALL, **changes):
    """A plan of the default cycle with fields replaced: the input factory of these tests."""
    return dataclasses.replace(plan_clip(index, 0, settings, ["bear", "boat", "surf"]), **changes)


def silhouette(gt: dict, height: int, width: int) -> np.ndarray:
    """(T, H, W) hard silhouette of the ground-truth camera-frame vertices over the whole frame."""
    verts = torch.from_numpy(gt["verts_camera"]).double()
    ndc = torch.cat([pixels_to_ndc(verts[..., :2], width, height), verts[..., 2:]], -1)
    return render_hard(ndc, torch.from_numpy(gt["faces"]), (height, width)).mask[:, 0].numpy() > 0.5


def test_fold_keeps_speed_and_box():
    axis = make_axis(30.0, 1.0, 10.0, 90.0, 1000.0)
    travelled = np.arange(0, 1000, 7.0)
    x, sign = fold(axis, travelled)
    assert x.min() >= 10 - 1e-9 and x.max() <= 90 + 1e-9
    steps = np.abs(np.diff(x))
    assert np.isclose(np.median(steps), 7.0) and (steps <= 7.0 + 1e-9).all()  # shorter only across a bounce
    assert set(np.unique(sign)) == {-1.0, 1.0}


def test_exit_leg_goes_past_the_border():
    axis = make_axis(50.0, 1.0, 10.0, 90.0, 500.0, extra={1: 60.0})
    x, _ = fold(axis, np.arange(0, 500, 1.0))
    assert np.isclose(x.min(), 10 - 60) and np.isclose(x.max(), 90)


@needs_data
def test_tiny_cli_clip_in_davis_layout_is_deterministic(tmp_path):
    args = ["flight", "--n", "1", "--frames", "6", "--width", "160", "--height", "96", "--seed", "3"]
    for folder in ("a", "b"):
        with pytest.raises(SystemExit) as info:
            synth_main(args + ["--out", str(tmp_path / folder)])
            raise SystemExit(0)
        assert info.value.code == 0
    out = tmp_path / "a"
    names = read_sequence_list(out, "flight.txt")
    assert names == read_sequence_list(out, "synth.txt") == ["flight-000-slow"]
    assert len(sequence_frames(out, names[0])) == 6 and len(sequence_annotations(out, names[0])) == 6
    with Image.open(out / "Annotations" / "480p" / names[0] / "00000.png") as png:
        assert png.mode == "L" and png.size == (160, 96)  # as the real DAVIS-2016 masks: grayscale 0/255
        assert set(np.unique(np.asarray(png))) == {0, 255}
    assert read_annotation(out / "Annotations" / "480p" / names[0] / "00000.png").sum() > 20
    clips = json.loads((out / "clips.json").read_text())["clips"]
    assert clips[0]["name"] == names[0] and clips[0]["num_frames"] == 6 and "measured" in clips[0]
    gt = np.load(out / "gt" / f"{names[0]}.npz")
    assert gt["verts_camera"].shape == (6, 3932, 3) and gt["keypoints"].shape == (6, 12, 3)
    for path in (p for p in out.rglob("*") if p.is_file() and p.suffix in (".jpg", ".png", ".npz", ".txt", ".json")):
        rel = path.relative_to(out)
        assert path.read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


@needs_data
def test_mask_moves_at_the_requested_speed_and_matches_the_ground_truth():
    plan = make_plan(num_frames=10, motion="flap", takeoff_frames=0, speed=0.06, heading_deg=10.0, exits=(),
                     distractors=0, size_start=0.3, size_end=0.3, pan=(0.02, 0.0))
    clip = generate_flight_clip(plan, SMALL)
    masks = clip.masks.astype(bool)
    assert masks.sum((1, 2)).min() > 50
    centroids = np.stack([np.argwhere(m)[:, ::-1].mean(0) for m in masks])  # (T, 2) x, y
    steps = np.linalg.norm(np.diff(centroids, axis=0), axis=1)
    requested = plan.speed * SMALL.width  # 19.2 px a frame
    assert abs(np.median(steps) / requested - 1) < 0.15, (np.round(steps, 1), requested)
    assert np.allclose(np.linalg.norm(np.diff(clip.gt["anchor_px"], axis=0), axis=1).max(), requested, rtol=0.02)
    sil = silhouette(clip.gt, SMALL.height, SMALL.width)
    assert (sil != masks).mean() < 2e-3  # the mask is the ground-truth bird at the frame time


@needs_data
def test_exit_gives_empty_masks_and_the_bird_comes_back():
    plan = make_plan(num_frames=24, motion="flap", takeoff_frames=0, speed=0.08, heading_deg=5.0,
                     exits=((8.0, 4),), distractors=0, size_start=0.25, size_end=0.25, pan=(0.0, 0.0))
    clip = generate_flight_clip(plan, SMALL)
    empty = clip.masks.sum((1, 2)) == 0
    gone = np.flatnonzero(empty)
    assert 3 <= len(gone) <= 10 and np.all(np.diff(gone) == 1), gone  # one run of empty frames
    assert not empty[:gone[0]].any() and not empty[gone[-1] + 1:].any() and gone[-1] < 23  # before and back
    assert clip.gt["keypoints"][gone, :, 2].max() == 0  # no keypoint is visible while the bird is away
    assert clip.stats["out_of_view_frames"] == gone.tolist()


@needs_data
def test_distractors_stay_out_of_the_mask():
    plan = make_plan(index=5, num_frames=4, distractors=3, exits=())
    clip = generate_flight_clip(plan, SMALL)
    sil = silhouette(clip.gt, SMALL.height, SMALL.width)
    masks = clip.masks.astype(bool)
    assert (masks & ~sil).mean() < 2e-3  # only the target (occluders may remove parts of it, never add)
    assert len(clip.stats["distractor_birds"]) == 3
