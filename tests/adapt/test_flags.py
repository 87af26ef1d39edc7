"""Frame flags (truncated, close-up, low confidence), the inside-the-frame loss mask, and the cheap export paths."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from adapt.config import AdaptConfig
from adapt.flags import border_sides, frame_flags, inside_frame, mask_confidence, mesh_overreach, touches_border
from adapt.inputs import VideoInput
from adapt.optimize import VideoCrops, VideoMaps, image_terms
from adapt.outputs import draw_flags, fill_silhouette, ndc_to_pixels, overlay_size
from adapt.run import main as run_main
from adapt.stages import first_frame_labels, propagate_and_crop, propagation_model
from birdmesh.config import load_config
from birdmesh.video import write_video
from mesh_recon.mesh import icosphere
from mesh_recon.render import SoftRenderer, SoftRenderSettings, render_hard


def test_inside_frame_is_zero_outside_the_frame():
    # a 40-pixel box hanging 10 pixels over the left border and 20 over the bottom of a 100 x 60 frame
    boxes = torch.tensor([[-10.0, 40.0, 30.0, 80.0], [10.0, 10.0, 50.0, 50.0]])
    inside = inside_frame(boxes, (60, 100), 40)  # one crop pixel per frame pixel
    assert inside.shape == (2, 1, 40, 40)
    assert inside[0, 0, :, :10].sum() == 0 and inside[0, 0, 20:, :].sum() == 0  # columns u < 0, rows v >= 60
    assert bool((inside[0, 0, :20, 10:] == 1).all())
    assert bool((inside[1] == 1).all())  # a box inside the frame masks nothing


def test_image_terms_ignore_renders_outside_the_frame():
    """The silhouette and part terms do not change when the render grows beyond the frame's border."""
    torch.manual_seed(0)
    verts, faces = icosphere(2)
    S = 16
    box = torch.tensor([[-20.0, 0.0, 20.0, 40.0]])  # the crop's left half lies beyond the frame
    masks = torch.zeros(1, 1, S, S)
    masks[..., 4:12, 8:12] = 1  # the visible part of the bird, against the border
    parts = torch.cat([1 - masks, masks]).reshape(1, 2, S, S)
    crops = VideoCrops(torch.rand(1, 3, S, S), masks, parts.half(), box, torch.tensor([True]), (40, 40))
    maps = VideoMaps(torch.rand(2, 8, 16), torch.rand(3, 8, 16), verts)
    renderer = SoftRenderer(SoftRenderSettings(image_size=S, sigma=1e-4, gamma=1e-4))
    face_uvs = torch.rand(len(faces), 3, 2) * 2 - 1

    def terms(shift_x):
        cams = torch.tensor([[0.25, shift_x, 0.0, 1.0, 0.0, 0.0, 0.0]])
        pred = SimpleNamespace(verts=verts[None], cams=cams, faces=faces, face_uvs=face_uvs)
        return image_terms(pred, crops, torch.tensor([0]), maps, renderer)[0]

    # a small sphere left of the border (x < 0 in crop NDC), then the same sphere further left: both fully outside
    a, b = terms(-0.6), terms(-0.7)
    assert float(a["silhouette"]) == pytest.approx(float(b["silhouette"]), abs=1e-6)
    assert float(a["silhouette"]) == pytest.approx(float(masks.mean()), rel=1e-4)  # only the missed visible mask


@pytest.fixture(scope="module")
def border_clip():
    """A 10-frame 64 x 96 clip: a textured disk walks from the centre out through the left border and back."""
    rng = np.random.default_rng(0)
    H, W = 64, 96
    background = (rng.integers(90, 140, (H, W, 1)) * np.ones(3)).astype(np.uint8)
    xs = [48, 40, 30, 10, 4, 4, 10, 30, 40, 48]  # disk centres; radius 12: frames 3-6 touch the left border
    ys, xx = np.mgrid[:H, :W]
    frames, masks = [], []
    for cx in xs:
        disk = (xx - cx) ** 2 + (ys - 32) ** 2 < 12 ** 2
        frame = background.copy()
        frame[disk] = np.stack([np.full(disk.sum(), 220), 100 + (xx[disk] - cx) * 4, np.full(disk.sum(), 40)], 1)
        frames.append(frame)
        masks.append(disk)
    return VideoInput(np.stack(frames), 10.0, (W, H), "disk"), np.stack(masks)


def test_a_bird_cut_by_the_border_is_flagged_truncated_on_those_frames_only(border_clip):
    video, truth = border_clip
    cfg = load_config(AdaptConfig, None, ["correspondence.method=pixels", "propagation.use_bf16=false",
                                          "propagation.pixel_stride=1", "parts.num_parts=2"])
    crops, indices = propagate_and_crop(video, first_frame_labels(video.frames[0], truth[0], cfg),
                                        propagation_model(cfg, "cpu"), cfg, 32, "cpu")
    flags = frame_flags(indices, crops.masks, crops.boxes, crops.valid, 0.5, 2.0, 2.0)
    expected = touches_border(truth)
    assert list(expected) == [False] * 3 + [True] * 4 + [False] * 3
    assert [f["truncated"] for f in flags] == list(expected)
    assert not any(f["close_up"] for f in flags)
    assert [f["frame"] for f in flags] == list(range(10))
    # the crops of truncated frames are padded (black) beyond the frame, not the border's colours repeated
    inside = inside_frame(crops.boxes, (64, 96), 32)
    assert float((crops.images * (1 - inside)).abs().max()) < 0.05


def test_close_up_and_low_confidence_flags():
    T, H, W, S = 4, 40, 60, 8
    labels = np.zeros((T, H, W), np.uint8)
    labels[:, 10:20, 20:30] = 1
    labels[2, 10:30, 20:40] = 1  # area x4 from frame 1: an implausible jump
    masks = torch.ones(T, 1, S, S)
    masks[3] = 0.5  # a mask of pure doubt
    boxes = torch.tensor([[15.0, 5.0, 35.0, 25.0]] * T)
    boxes[1] = torch.tensor([-10.0, -10.0, 50.0, 50.0])  # crop side 60 > the frame's height 40
    flags = frame_flags(labels, masks, boxes, torch.ones(T, dtype=torch.bool), 0.5, 2.0, 8.0)
    assert [f["close_up"] for f in flags] == [False, True, False, False]
    assert [f["low_confidence"] for f in flags] == [False, False, True, True]  # jump up at 2, doubt (and down) at 3
    assert mask_confidence(masks)[0] == 1 and mask_confidence(masks)[3] == 0


def test_area_drift_compares_each_frame_with_the_first_visible_one():
    # a 10 x 10 bird (area 100) growing slowly, frame by frame (never a 2x jump), then shrinking; frame 0 vanished
    sides = [0, 10, 12, 15, 13, 10, 8, 6]  # areas 0, 100, 144, 225, 169, 100, 64, 36
    T, H, W, S = len(sides), 40, 40, 8
    labels = np.zeros((T, H, W), np.uint8)
    for t, side in enumerate(sides):
        labels[t, :side, :side] = 1
    valid = torch.tensor([side > 0 for side in sides])
    boxes = torch.tensor([[0.0, 0.0, 20.0, 20.0]] * T)
    flags = frame_flags(labels, torch.ones(T, 1, S, S), boxes, valid, 0.5, 2.0, 2.0)
    assert [f["area_drift"] for f in flags] == [False, False, False, True, False, False, False, True]  # 2.25, 0.36
    assert not any(f["low_confidence"] for f in flags)  # no step between frames is a 2x jump
    flags = frame_flags(labels, torch.ones(T, 1, S, S), boxes, valid, 0.5, 2.0, 3.0)
    assert not any(f["area_drift"] for f in flags)


def test_mesh_overreach_names_the_sides_the_mesh_alone_reaches():
    H, W = 100, 200
    bird = np.zeros((3, H, W), bool)
    mesh = np.zeros((3, H, W), bool)
    bird[0, 20:60, 50:120] = mesh[0, 18:62, 48:122] = True  # inside: nothing reached
    bird[1, 0:40, 0:60] = True  # the bird cut at the top-left corner ...
    mesh[1, 0:70, 0:200] = True  # ... the mesh stretched to the right border too
    bird[2, 50:99, 10:40] = True  # one pixel row short of the bottom: within the 1 % margin
    mesh[2, 50:100, 10:40] = True
    assert border_sides(bird).tolist() == [[False] * 4, [True, False, True, False], [False] * 4]
    assert border_sides(bird, 0.01)[2].tolist() == [False, True, False, False]
    assert mesh_overreach(mesh, bird) == [[], ["right"], []]
    # the object's labels may be at another size than the rendered masks: sides are tested at each one's own size
    small = bird[:, ::2, ::2]
    assert mesh_overreach(mesh, small) == [[], ["right"], []]
    assert touches_border(mesh).tolist() == [False, True, True]


def test_fill_silhouette_matches_the_z_buffer():
    verts, faces = icosphere(3)
    ndc = torch.cat([verts[:, :2] * torch.tensor([0.5, 0.8]) + 0.1, verts[:, 2:]], 1)[None]
    hard = render_hard(ndc, faces, (360, 640)).mask[0, 0].numpy() > 0.5
    filled = fill_silhouette(ndc_to_pixels(ndc, (640, 360))[0], faces.numpy(), (360, 640))
    # OpenCV also sets edge pixels whose centre is just outside: a superset, about half a pixel wider
    assert not (hard & ~filled).any() and (hard & filled).sum() / (hard | filled).sum() > 0.99


def test_overlay_helpers():
    assert overlay_size((854, 480), 640) == (640, 360) and overlay_size((161, 91), 640) == (160, 92)
    image = np.zeros((40, 80, 3), np.uint8)
    assert draw_flags(image.copy(), {"truncated": False}).sum() == 0
    assert draw_flags(image.copy(), {"truncated": True})[:20, :20].sum() > 0


def test_report_lists_the_flags_of_a_clip_cut_by_the_border(tmp_path, border_clip, predictor_checkpoint):
    video, truth = border_clip
    write_video(tmp_path / "disk.mp4", video.frames, fps=10)
    Image.fromarray(truth[0].astype(np.uint8) * 255).save(tmp_path / "mask.png")
    sets = []
    for item in ["correspondence.method=pixels", "propagation.use_bf16=false", "propagation.pixel_stride=1",
                 "parts.num_parts=2", f"predictor.checkpoint={predictor_checkpoint}"]:
        sets += ["--set", item]
    run_main([str(tmp_path / "disk.mp4"), "--mask", str(tmp_path / "mask.png"), "--out", str(tmp_path / "out"),
              "--no-adapt", *sets])
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [f["truncated"] for f in report["frame_flags"]] == list(touches_border(truth))
    assert set(report["frame_flags"][0]) >= {"frame", "truncated", "close_up", "low_confidence", "area_drift",
                                             "mesh_overreach"}
    rendered = np.stack([np.array(Image.open(tmp_path / "out" / "masks" / f"{t:05d}.png")) > 0 for t in range(10)])
    parts = np.stack([np.array(Image.open(tmp_path / "out" / "parts" / f"{t:05d}.png")) for t in range(10)])
    assert [f["mesh_overreach"] for f in report["frame_flags"]] == mesh_overreach(rendered, parts)
