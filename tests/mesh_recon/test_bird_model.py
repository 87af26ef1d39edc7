"""Tests of the articulated bird model: LBS, mirror symmetry, CUB alignment, pose prior and scripted motions."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from birdmesh.errors import UserError
from birdmesh.runtime import data_root
from mesh_recon.bird_model import (KEYPOINT_FLIP, axis_angle_to_matrix, load_bird_model, pose_bird,
                                   read_cub_mean_shape)
from mesh_recon.bird_motion import (MOTIONS, mirror_bones, mirror_pose, sample_bone_scale, sample_prior_pose,
                                    scripted_motion, spread_wing_pose)
from mesh_recon.synth_camera import load_cub_rotations

MIRROR = torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)


@pytest.fixture(scope="module")
def model():
    return load_bird_model()


def _worst(a: torch.Tensor, b: torch.Tensor) -> str:
    diff = (a - b).abs()
    return f"max abs diff {diff.max().item():.3g} at {np.unravel_index(diff.argmax().item(), diff.shape)}"


def test_rest_pose_reproduces_template(model):
    zero = torch.zeros(2, 24, 3, dtype=torch.float64)
    posed = pose_bird(model, zero, frame="model")
    expected = model.verts.expand(2, -1, -1)
    assert torch.allclose(posed.verts, expected, atol=1e-12, rtol=0), _worst(posed.verts, expected)
    assert torch.allclose(posed.joints[0], model.joints, atol=1e-12, rtol=0)
    posed32 = pose_bird(model, zero.float(), frame="model")
    assert posed32.verts.dtype == torch.float32
    assert torch.allclose(posed32.verts[0], model.verts.float(), atol=1e-5, rtol=0), \
        _worst(posed32.verts[0], model.verts.float())
    file = json.loads((data_root() / "bird_model/avian_mesh/bird_eccv.json").read_text())
    assert np.array_equal(np.asarray(file["V"]), model.verts.numpy())  # the template is the file's, untouched


def test_weights_renormalised_and_file_rows_not_exact(model):
    raw = np.asarray(json.loads((data_root() / "bird_model/avian_mesh/bird_eccv.json").read_text())["weights"])
    assert 1e-8 < np.abs(raw.sum(1) - 1).max() < 1e-5  # why we renormalise
    assert torch.allclose(model.weights.sum(1), torch.ones(len(model.weights), dtype=torch.float64), atol=1e-14)


def test_axis_angle_matches_scipy():
    rotvec = torch.tensor([[0.0, 0.0, 0.0], [1e-9, 0, 0], [0.3, -1.2, 0.5], [0, 0, np.pi - 1e-3]], dtype=torch.float64)
    expected = torch.from_numpy(Rotation.from_rotvec(rotvec.numpy()).as_matrix())  # scipy reference
    assert torch.allclose(axis_angle_to_matrix(rotvec), expected, atol=1e-12)


def test_pose_shape_error(model):
    with pytest.raises(ValueError, match=r"body_pose: expected shape \(B, 24, 3\), got \(2, 25, 3\)"):
        pose_bird(model, torch.zeros(2, 25, 3))


def test_missing_data_is_user_error(tmp_path):
    with pytest.raises(UserError, match="bird_eccv.json: bird model file not found"):
        load_bird_model(str(tmp_path))


def test_mirrored_pose_maps_left_onto_right(model):
    rng = np.random.default_rng(0)
    pose = np.concatenate([sample_prior_pose(model, 3, rng), spread_wing_pose(model)[None]])
    bones = sample_bone_scale(model, 4, rng)
    posed = pose_bird(model, torch.from_numpy(pose), torch.from_numpy(bones), frame="model")
    mirrored = pose_bird(model, torch.from_numpy(mirror_pose(pose)), torch.from_numpy(mirror_bones(bones)),
                         frame="model")
    left, right = model.lr_pairs[:, 0], model.lr_pairs[:, 1]
    # Tolerance: the shipped template itself is symmetric only to 0.003 (bird ~20 units long).
    assert torch.allclose(mirrored.verts[:, left], posed.verts[:, right] * MIRROR, atol=0.02), \
        _worst(mirrored.verts[:, left], posed.verts[:, right] * MIRROR)
    flip = list(KEYPOINT_FLIP)
    assert torch.allclose(mirrored.keypoints, posed.keypoints[:, flip] * MIRROR, atol=0.02)
    assert np.allclose(mirror_pose(mirror_pose(pose)), pose)


def test_cub_alignment_matches_cub_conventions(model):
    S = read_cub_mean_shape(data_root())  # (3, 15): 1 beak, 4 crown, 7/11 legs, 13 tail (0-based)
    posed = pose_bird(model, torch.zeros(1, 24, 3, dtype=torch.float64))
    verts, kp = posed.verts[0].numpy(), posed.keypoints[0].numpy()
    assert abs(np.linalg.det(model.cub_rotation.numpy()) - 1) < 1e-9  # proper: no mirror
    head = model.weights.numpy().argmax(1) == 15
    crown = verts[head][np.argmax(verts[head, 2])]
    feet = kp[[7, 8]].mean(0)
    assert kp[0, 1] < kp[9, 1] and S[1, 1] < S[1, 13]  # beak forward (-y) of the tail, as in S
    assert kp[1, 0] > 0 > kp[2, 0] and S[0, 6] > 0 > S[0, 10]  # left eye at +x, as in S
    rotations = load_cub_rotations()
    y = lambda p: (rotations @ p)[:, 1]  # image y (down) under every CUB photo's camera  # noqa: E731
    assert (y(crown) < y(feet)).mean() > 0.97
    assert (y(S[:, 4]) < y(S[:, [7, 11]].mean(1))).mean() > 0.97
    beak_right = (rotations @ (kp[0] - kp[9]))[:, 0] > 0
    s_beak_right = (rotations @ (S[:, 1] - S[:, 13]))[:, 0] > 0
    assert (beak_right == s_beak_right).mean() > 0.97
    matched = np.linalg.norm(kp[[0, 4, 7, 8, 9]] - S[:, [1, 9, 7, 11, 13]].T, axis=1)
    assert matched.max() < 0.3, matched  # S spans ~2 units


def test_spread_pose_opens_wings_like_fly_model(model):
    spread = spread_wing_pose(model)
    assert np.allclose(mirror_pose(spread), spread, atol=1e-3)
    kp = pose_bird(model, torch.from_numpy(spread)[None], frame="model").keypoints[0].numpy()
    fly_kp = model.kp_regressor.numpy() @ model.fly_verts.numpy()
    span, fly_span = kp[6, 0] - kp[5, 0], fly_kp[6, 0] - fly_kp[5, 0]
    assert abs(span - fly_span) < 0.1 * fly_span, (span, fly_span)
    rest_kp = model.kp_regressor.numpy() @ model.verts.numpy()
    assert rest_kp[6, 0] - rest_kp[5, 0] < 0.2 * fly_span  # folded at rest


def test_prior_samples_are_seeded(model):
    a = sample_prior_pose(model, 5, np.random.default_rng(3))
    b = sample_prior_pose(model, 5, np.random.default_rng(3))
    assert a.shape == (5, 24, 3) and np.array_equal(a, b)
    bones = sample_bone_scale(model, 100, np.random.default_rng(0))
    assert bones.shape == (100, 24) and bones.min() >= 0.8 and bones.max() <= 1.3


@pytest.mark.parametrize("kind", MOTIONS)
def test_scripted_motions_are_smooth(model, kind):
    motion = scripted_motion(model, kind, 24, 24.0, np.random.default_rng(1))
    assert motion.body_pose.shape == (24, 24, 3) and motion.root_translation.shape == (24, 3)
    posed = pose_bird(model, torch.from_numpy(motion.body_pose),
                      root_rotation=torch.from_numpy(Rotation.from_rotvec(motion.root_rotation).as_matrix()),
                      root_translation=torch.from_numpy(motion.root_translation))
    step = (posed.verts[1:] - posed.verts[:-1]).norm(dim=-1).amax(dim=1)  # canonical bird ~2 long
    limit = 1.0 if kind in ("flap", "takeoff") else 0.25  # wing tips (1.6 from the body) beat at up to 3 Hz
    assert torch.isfinite(posed.verts).all() and step.max() < limit, step.max()


def test_flap_beats_the_wings(model):
    motion = scripted_motion(model, "flap", 48, 24.0, np.random.default_rng(0))
    kp = pose_bird(model, torch.from_numpy(motion.body_pose), frame="model").keypoints.numpy()
    tip_height = kp[:, 5, 2] - kp[:, 4, 2]  # left wing tip above the nape
    assert tip_height.max() - tip_height.min() > 5.0  # wings sweep several units (bird ~20 long)
    assert np.allclose(kp[:, 5, 2], kp[:, 6, 2], atol=0.05)  # both wings beat together
