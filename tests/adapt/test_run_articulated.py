"""End-to-end ``adapt.run`` with an articulated predictor: rigged export, pose.json, viewpoint report, and Blender
posing the rig exactly as the per-frame OBJs."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from blender_tools import run_blender, skip_without_bpy

from adapt.export import project_to_pixels
from adapt.export_articulated import canonical_from_world
from adapt.export_gltf import split_uv_seams
from adapt.export_rig import AVIAN_JOINT_NAMES
from adapt.inputs import DEMO_MASK, DEMO_VIDEO
from adapt.run import main as run_main
from birdmesh.checkpoint import save_checkpoint
from birdmesh.config import config_to_dict
from birdmesh.video import read_frames, write_video
from mesh_recon.articulated import ArticulatedPredictor
from mesh_recon.bird_model import load_bird_model
from mesh_recon.checkpoint import load_predictor
from mesh_recon.mesh import load_obj
from mesh_recon.predictor_config import CMRConfig, ModelConfig
from mesh_recon.skinned_template import SkinnedTemplate

FAST = ["correspondence.method=pixels", "propagation.use_bf16=false", "input.max_side=160", "optim.iterations=2",
        "optim.refine_iterations=3", "optim.batch_size=3", "optim.render_size=32", "optim.refine_render_size=32",
        "parts.num_parts=4", "export.overlay=false", "optim.viewpoint_refit_steps=3"]  # the refit is an option
FPS, FRAMES = 12, 5


@pytest.fixture(scope="module")
def articulated_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    cfg = CMRConfig(model=ModelConfig(shape="articulated", image_size=64, feature_dim=32, flow_channels=16,
                                      residual_basis=8, camera_hypotheses=3))
    model = ArticulatedPredictor(cfg.model)
    bird = load_bird_model()
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.7071, 0.7071, 0.0, 0.0]])
    model.reset_template(SkinnedTemplate.from_bird_model(bird, 8), quats, bird.bone_mean)
    path = tmp_path_factory.mktemp("weights") / "articulated.pt"
    save_checkpoint(path, config_to_dict(cfg), model.state_dict(), 0)
    return path


@pytest.fixture(scope="module")
def run_out(tmp_path_factory, articulated_checkpoint):
    folder = tmp_path_factory.mktemp("clip")
    write_video(folder / "bird.mp4", read_frames(DEMO_VIDEO, max_frames=FRAMES), fps=FPS)
    out = folder / "out"
    sets = []
    for item in FAST + [f"predictor.checkpoint={articulated_checkpoint}"]:
        sets += ["--set", item]
    run_main([str(folder / "bird.mp4"), "--mask", str(DEMO_MASK), "--out", str(out), *sets])
    return out


def test_rigged_outputs_and_report(run_out):
    assert len(sorted((run_out / "meshes").glob("*.obj"))) == FRAMES
    pose = json.loads((run_out / "pose.json").read_text())
    assert pose["joint_names"] == list(AVIAN_JOINT_NAMES) and len(pose["frames"]) == FRAMES
    q = np.array([f["joint_rotations_wxyz"] for f in pose["frames"]])
    assert q.shape == (FRAMES, 24, 4) and np.allclose(np.linalg.norm(q, axis=-1), 1, atol=1e-6)
    report = json.loads((run_out / "report.json").read_text())
    view = report["viewpoint"]
    assert len(view["track"]) == FRAMES and sum(view["hypothesis_counts"]) == FRAMES and view["margin"] >= 0
    refit = view["refit"]  # the tracks refined and the one kept (3 hypotheses: there is an alternative)
    assert refit["candidates"] == ["track", "alternative"] and refit["chosen"] in refit["candidates"]
    assert len(refit["loss"]) == 2 and all(0 <= iou <= 1 for iou in refit["silhouette_iou"]) and refit["steps"] == 3
    assert len(report["refine_losses"]) == 3 and "pose_prior" in report["refine_losses"][0]


def test_objs_place_the_bird_where_the_video_shows_it(run_out):
    # world frame: pixel (u, v) = (H x + (W - 1) / 2, H y + (H - 1) / 2); the rendered masks are the same meshes
    cameras = json.loads((run_out / "cameras.json").read_text())
    W, H = cameras["width"], cameras["height"]
    from PIL import Image

    for t in (0, FRAMES - 1):
        verts, _ = load_obj(run_out / "meshes" / f"{t:05d}.obj")
        u = (H * verts[:, 0] + (W - 1) / 2).round().long().clamp(0, W - 1)
        v = (H * verts[:, 1] + (H - 1) / 2).round().long().clamp(0, H - 1)
        mask = np.asarray(Image.open(run_out / "masks" / f"{t:05d}.png")) > 0
        assert mask[v.numpy(), u.numpy()].mean() > 0.9  # vertices project inside the exported silhouette
        # and cameras.json's canonical camera takes the canonical mesh there too
        canonical = canonical_from_world(verts.numpy(), cameras["frames"][t], (W, H))
        pixels = project_to_pixels(canonical, cameras["frames"][t])
        assert np.allclose(pixels[:, 0], H * verts[:, 0].numpy() + (W - 1) / 2, atol=1e-3)
        assert np.allclose(pixels[:, 1], H * verts[:, 1].numpy() + (H - 1) / 2, atol=1e-3)


@pytest.mark.blender
def test_blender_poses_the_rig_as_the_objs(run_out, articulated_checkpoint, tmp_path):
    skip_without_bpy()
    frames = [0, 2, FRAMES - 1]
    info, got, _ = run_blender(run_out / "animation.glb", frames, FPS, tmp_path)
    assert (info["armatures"], info["meshes"], info["skinned"]) == (1, 1, [True]) and len(info["bones"]) == 25
    assert all(r == [0.0, FRAMES - 1.0] for r in info["frame_ranges"]), info["frame_ranges"]
    verts0, faces = load_obj(run_out / "meshes" / "00000.obj")
    split = split_uv_seams(faces, load_predictor(articulated_checkpoint)[0].template.face_uvs)
    for k, t in enumerate(frames):
        obj = load_obj(run_out / "meshes" / f"{t:05d}.obj")[0].numpy()[split.vertex_index]
        diag = np.linalg.norm(np.ptp(obj, axis=0))
        assert np.abs(got[k] - obj).max() <= 1e-3 * diag, (t, np.abs(got[k] - obj).max() / diag)
