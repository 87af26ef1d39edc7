"""Tests of synthetic bird images and videos: masks, keypoints, cameras, determinism, files and Dataset."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as nnf

from birdmesh.davis import read_annotation, read_sequence_list, sequence_frames
from mesh_recon.bird_model import load_bird_model
from mesh_recon.geometry import ndc_to_pixels, pixels_to_ndc, weak_perspective_project
from mesh_recon.render import render_hard
from mesh_recon.synth import SynthBirdImages, SynthSettings, generate_batch
from mesh_recon.synth_camera import frame_cameras, load_cub_rotations, sample_viewpoints
from mesh_recon.synth_cli import main as synth_main
from mesh_recon.synth_render import keypoint_visibility
from mesh_recon.synth_video import VideoSettings, generate_video

SIZE = 48
NO_OCCLUSION = SynthSettings(occlusion_prob=0.0)


def make_batch(n: int = 8, seed: int = 0, start: int = 0, settings: SynthSettings = SynthSettings()) -> dict:
    """Input factory shared with bench/synth.py."""
    return generate_batch(n, SIZE, seed, start, settings)


@pytest.fixture(scope="module")
def clean_batch():
    return make_batch(12, seed=1, settings=NO_OCCLUSION)


def test_batch_shapes_and_ranges(clean_batch):
    b, n = clean_batch, 12
    assert b["image"].shape == (n, 3, SIZE, SIZE) and b["mask"].shape == (n, 1, SIZE, SIZE)
    assert b["kp"].shape == (n, 12, 3) and b["cam"].shape == (n, 7) and b["verts"].shape == (n, 3932, 3)
    assert all(v.dtype == torch.float32 for v in b.values())
    assert 0 <= b["image"].min() and b["image"].max() <= 1
    assert set(b["mask"].unique().tolist()) <= {0.0, 1.0} and set(b["kp"][..., 2].unique().tolist()) <= {0.0, 1.0}
    assert torch.allclose(b["cam"][:, 3:].norm(dim=1), torch.ones(n), atol=1e-5)
    assert b["kp"][..., 2].mean() > 0.4  # most keypoints of a framed bird are seen


def test_mask_equals_hard_silhouette(clean_batch):
    b = clean_batch
    frags = render_hard(weak_perspective_project(b["verts"], b["cam"]), load_bird_model().faces, SIZE)
    assert torch.equal(frags.mask, b["mask"]), f"{(frags.mask != b['mask']).sum().item()} pixels differ"


def test_occluded_mask_inside_silhouette():
    b = make_batch(8, seed=2, settings=SynthSettings(occlusion_prob=1.0))
    sil = render_hard(weak_perspective_project(b["verts"], b["cam"]), load_bird_model().faces, SIZE).mask
    assert (b["mask"] <= sil).all() and b["mask"].sum() < sil.sum()


@pytest.mark.parametrize("occlusion", [0.0, 1.0])
def test_visible_keypoints_touch_the_mask(occlusion):
    b = make_batch(10, seed=3, settings=SynthSettings(occlusion_prob=occlusion, truncation_prob=0.5))
    near = nnf.max_pool2d(b["mask"], 3, 1, 1)[:, 0]  # mask grown by one pixel: 3x3 block test
    uv = torch.round(ndc_to_pixels(b["kp"][..., :2], SIZE, SIZE)).long()
    vis = b["kp"][..., 2] > 0
    bi, ki = torch.nonzero(vis, as_tuple=True)
    u, v = uv[bi, ki, 0], uv[bi, ki, 1]
    assert ((u >= 0) & (u < SIZE) & (v >= 0) & (v < SIZE)).all()
    assert (near[bi, v, u] > 0).all()


def test_keypoint_visibility_depth_test():
    depth = torch.full((1, 8, 8), float("inf"))
    depth[0, 2:6, 2:6] = 1.0  # a square surface at depth 1
    centre = pixels_to_ndc(torch.tensor([3.0, 3.0]), 8, 8)
    kp = torch.stack([torch.cat([centre, torch.tensor([z])]) for z in (1.02, 2.0, 0.5)]
                     + [torch.tensor([1.5, 0.0, 1.0]), torch.cat([pixels_to_ndc(torch.tensor([0.0, 0.0]), 8, 8),
                                                                  torch.tensor([1.0])])])[None]
    # On the surface / hidden behind it / in front of it / off the image / over background.
    assert keypoint_visibility(kp, depth, slack=0.06).tolist() == [[True, False, True, False, False]]


def test_samples_do_not_depend_on_batching():
    whole = make_batch(4, seed=5)
    tail = make_batch(2, seed=5, start=2)
    for key in whole:
        assert torch.equal(whole[key][2:], tail[key]), key
    assert not torch.equal(make_batch(2, seed=6)["image"], whole["image"][:2])


def test_cub_viewpoints_and_framing():
    rng = np.random.default_rng(0)
    rot = sample_viewpoints(load_cub_rotations(), 64, rng)
    assert np.allclose(rot @ rot.transpose(0, 2, 1), np.eye(3), atol=1e-9) and np.allclose(np.linalg.det(rot), 1)
    pts = rng.normal(size=(64, 50, 3))
    scale, trans = frame_cameras(pts, rng, (0.5, 0.8), shift=0.0, truncation_prob=0.0)
    xy = scale[:, None, None] * pts[..., :2] + trans[:, None]
    side = (xy.max(1) - xy.min(1)).max(1) / 2
    assert (side >= 0.5 - 1e-9).all() and (side <= 0.8 + 1e-9).all()
    assert np.allclose((xy.max(1) + xy.min(1)) / 2, 0, atol=1e-9)


def _run(args):
    with pytest.raises(SystemExit) as info:
        synth_main(args)
        raise SystemExit(0)
    return info.value.code


def test_cli_files_are_deterministic_and_load(tmp_path):
    args = ["images", "--n", "6", "--size", "32", "--shard-size", "4", "--seed", "7"]
    assert _run(args + ["--out", str(tmp_path / "a")]) == 0
    assert _run(args + ["--out", str(tmp_path / "b")]) == 0
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 2 * 7 + 2  # two shards of 7 fields, index.json, config.yaml
    for rel in files:
        if rel.name != "config.yaml":  # the config names the output folder
            assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    data = SynthBirdImages(tmp_path / "a")
    assert len(data) == 6
    item = data[5]
    assert item["image"].shape == (3, 32, 32) and item["mask"].shape == (1, 32, 32) and item["kp"].shape == (12, 3)
    assert item["cam"].shape == (7,) and item["verts"].shape == (3932, 3) and item["verts"].dtype == torch.float32
    direct = generate_batch(1, 32, 7, 5)
    assert torch.allclose(item["image"], direct["image"][0], atol=0.51 / 255)
    assert torch.allclose(item["verts"], direct["verts"][0], atol=2e-3)
    assert torch.equal(item["mask"], direct["mask"][0]) and torch.equal(item["kp"], direct["kp"][0])


def test_cli_missing_data_is_one_line_error(tmp_path, capsys):
    code = _run(["images", "--n", "2", "--out", str(tmp_path / "x"), "--data", str(tmp_path / "nothing")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "not found" in err
    assert not (tmp_path / "x").exists()


def test_video_ground_truth_is_consistent():
    settings = VideoSettings(width=96, height=64)
    clip = generate_video(0, seed=0, num_frames=3, kind="walk", settings=settings)
    gt = clip.gt
    assert clip.frames.shape == (3, 64, 96, 3) and clip.masks.shape == (3, 64, 96)
    cams = torch.from_numpy(gt["cams_px"]).double()
    verts = torch.from_numpy(gt["verts_canonical"]).double()
    projected = weak_perspective_project(verts, cams)  # pixel-space camera: xy in pixels
    assert torch.allclose(projected[..., :2], torch.from_numpy(gt["verts_camera"][..., :2]).double(), atol=1e-3)
    # The mask is the hard silhouette of the camera-frame vertices over the whole frame.
    cam_verts = torch.from_numpy(gt["verts_camera"]).double()
    ndc = torch.cat([pixels_to_ndc(cam_verts[..., :2], 96, 64), cam_verts[..., 2:]], -1)
    sil = render_hard(ndc, torch.from_numpy(gt["faces"]), (64, 96)).mask[:, 0].numpy()
    assert (sil != clip.masks).mean() < 2e-3  # crop-box rendering matches up to float rounding on edges
    assert clip.masks[0].sum() > 100


def test_cli_videos_in_davis_layout(tmp_path):
    out = tmp_path / "v"
    args = ["videos", "--n", "1", "--frames", "2", "--width", "64", "--height", "48", "--motions", "swim"]
    assert _run(args + ["--out", str(out)]) == 0
    assert _run(args + ["--out", str(tmp_path / "again")]) == 0
    for rel in (p.relative_to(out) for p in out.rglob("*") if p.is_file()):
        # The mp4 is left out: the H.264 encoder is not byte-reproducible; the frames it encodes are compared.
        if rel.suffix in (".jpg", ".png", ".npz", ".txt"):
            assert (out / rel).read_bytes() == (tmp_path / "again" / rel).read_bytes(), rel
    names = read_sequence_list(out, "synth.txt")
    assert names == ["synth-swim-000"]
    assert len(sequence_frames(out, names[0])) == 2
    mask = read_annotation(out / "Annotations" / "480p" / names[0] / "00000.png")
    assert mask.shape == (48, 64) and set(np.unique(mask)) <= {0, 1} and mask.sum() > 0
    assert (out / "videos" / f"{names[0]}.mp4").stat().st_size > 0
    gt = np.load(out / "gt" / f"{names[0]}.npz")
    assert gt["verts_camera"].shape == (2, 3932, 3) and str(gt["motion"]) == "swim"
    assert (out / "config.yaml").is_file()


def test_settings_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        SynthSettings().shift = 1.0
