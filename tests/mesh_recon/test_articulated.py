"""Tests of the articulated predictor: skinning, rotations, mirror symmetry, the camera multiplex, checkpoints."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mesh_recon.articulated import ArticulatedPredictor, spread_viewpoints
from mesh_recon.articulated_losses import camera_errors, multiplex_loss
from mesh_recon.bird_model import axis_angle_to_matrix, load_bird_model, pose_bird
from mesh_recon.bird_motion import mirror_bones, mirror_pose, sample_bone_scale, sample_prior_pose
from mesh_recon.checkpoint import DEFAULT_WEIGHTS, export_weights, load_predictor
from mesh_recon.predictor import MeshPredictor
from mesh_recon.predictor_config import CMRConfig, ModelConfig
from mesh_recon.skinned_template import SkinnedTemplate
from mesh_recon.skinning import forward_kinematics, linear_blend_skinning, matrix_to_rotation_6d, \
    rotation_6d_to_matrix
from birdmesh.checkpoint import save_checkpoint
from birdmesh.config import config_to_dict

MIRROR = torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)


@pytest.fixture(scope="module")
def bird():
    return load_bird_model()


@pytest.fixture(scope="module")
def template(bird):
    return SkinnedTemplate.from_bird_model(bird, 16).double()


def _random_pose(bird, n: int, seed: int):
    rng = np.random.default_rng(seed)
    pose = torch.from_numpy(sample_prior_pose(bird, n, rng, 1.5))
    bones = torch.from_numpy(sample_bone_scale(bird, n, rng, 1.0))
    return pose, bones


def test_skinning_matches_a_slow_per_vertex_reference(template, bird):
    pose, bones = _random_pose(bird, 1, 0)
    rotations, positions = forward_kinematics(axis_angle_to_matrix(pose), template.joints, template.parents.tolist(),
                                              bones)
    fast = linear_blend_skinning(template.verts, template.weights, template.joints, rotations, positions)[0]
    for v in range(0, len(template.verts), 97):  # each vertex: sum_j w_vj (R_j (x - J_j) + p_j), one by one
        x = template.verts[v]
        slow = sum(float(template.weights[v, j]) * (rotations[0, j] @ (x - template.joints[j]) + positions[0, j])
                   for j in range(template.num_joints))
        assert torch.allclose(fast[v], slow, atol=1e-10), (v, fast[v], slow)


def test_template_pose_equals_pose_bird(template, bird):
    pose, bones = _random_pose(bird, 3, 1)
    verts, joints = template.pose(template.verts, axis_angle_to_matrix(pose), bones)
    # the template is the avian mesh made exactly mirror-symmetric (moves of <= 0.2 % of its length)
    assert float((template.verts - bird.verts).abs().max()) < 0.004 * float(np.ptp(bird.verts.numpy(), 0).max())
    ref = pose_bird(dataclasses.replace(bird, verts=template.verts, joints=template.joints), pose, bones)
    # the template stores float32 (the shipped file's precision): agreement to float32 rounding
    assert torch.allclose(verts, ref.verts, atol=2e-6), (verts - ref.verts).abs().max()
    assert torch.allclose(joints, ref.joints, atol=2e-6)


def test_zero_pose_gives_the_template(template):
    eye = torch.eye(3, dtype=torch.float64).expand(2, 24, 3, 3)
    verts, _ = template.pose(template.verts, eye, torch.ones(2, 24, dtype=torch.float64))
    assert torch.allclose(verts, template.canonical(template.verts).expand(2, -1, -1), atol=1e-5)


def test_mirrored_pose_gives_the_mirrored_mesh(template, bird):
    pose, bones = _random_pose(bird, 2, 2)
    verts, _ = template.pose(template.verts, axis_angle_to_matrix(pose), bones)
    mirrored, _ = template.pose(template.verts, axis_angle_to_matrix(torch.from_numpy(mirror_pose(pose.numpy()))),
                                torch.from_numpy(mirror_bones(bones.numpy())))
    # the canonical frame is symmetric in x: the mirrored bird's vertex i is the mirror of vertex mirror[i]
    expected = verts[:, template.mirror] * MIRROR
    assert torch.allclose(mirrored, expected, atol=1e-6), (mirrored - expected).abs().max()


def test_rotation_6d_round_trip_and_proper():
    rot = axis_angle_to_matrix(torch.randn(20, 3, dtype=torch.float64))
    assert torch.allclose(rotation_6d_to_matrix(matrix_to_rotation_6d(rot)), rot, atol=1e-12)
    out = rotation_6d_to_matrix(torch.randn(50, 6, dtype=torch.float64))
    assert torch.allclose(out.transpose(-1, -2) @ out, torch.eye(3, dtype=torch.float64).expand(50, 3, 3), atol=1e-12)
    assert torch.allclose(torch.linalg.det(out), torch.ones(50, dtype=torch.float64))


@pytest.mark.parametrize("angle", [0.0, math.pi - 1e-3])
def test_rotation_6d_gradients_by_finite_differences(angle):
    start = axis_angle_to_matrix(torch.tensor([0.0, angle, 0.0], dtype=torch.float64))
    d6 = matrix_to_rotation_6d(start).clone().requires_grad_(True)
    assert torch.autograd.gradcheck(rotation_6d_to_matrix, (d6,), eps=1e-6, atol=1e-6)
    # useful gradients: rotations about all three axes are reachable from here (Jacobian rank 3 on SO(3))
    jac = torch.autograd.functional.jacobian(rotation_6d_to_matrix, d6.detach()).reshape(9, 6)
    assert int(torch.linalg.matrix_rank(jac, atol=1e-8)) == 3


def test_axis_angle_has_no_gradient_at_zero_but_6d_has():
    # why the predictor does not output axis-angle: Rodrigues with a normalised axis is flat at the rest pose
    zero = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    axis_angle_to_matrix(zero)[0, 1].backward()
    assert float(zero.grad.abs().max()) == 0.0
    d6 = matrix_to_rotation_6d(torch.eye(3, dtype=torch.float64)).requires_grad_(True)
    rotation_6d_to_matrix(d6)[0, 1].backward()
    assert float(d6.grad.abs().max()) > 0.5


def test_multiplex_loss_hand_case():
    costs = torch.tensor([[1.0, 3.0, 2.0], [4.0, 2.0, 5.0]])
    logits = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 0.0]])
    best_cost, prob, best = multiplex_loss(costs, logits)
    assert best.tolist() == [0, 1]
    assert math.isclose(float(best_cost), (1.0 + 2.0) / 2)
    # cross-entropy by hand: image 0 uniform -> log 3; image 1: -log(e^2 / (e + e^2 + 1))
    expected = (math.log(3) + (-2 + math.log(math.e + math.e ** 2 + 1))) / 2
    assert math.isclose(float(prob), expected, rel_tol=1e-6)


def test_camera_errors_zero_for_the_truth_and_sign_blind():
    cam = torch.tensor([[0.7, 0.1, -0.2, 0.6, 0.0, 0.8, 0.0]])
    flipped = torch.cat([cam[:, :3], -cam[:, 3:]], 1)
    other = torch.tensor([[0.7, 0.1, -0.2, 1.0, 0.0, 0.0, 0.0]])
    err = camera_errors(torch.stack([cam, flipped, other], 1), cam)
    assert float(err[0, 0]) < 1e-12 and float(err[0, 1]) < 1e-12
    assert math.isclose(float(err[0, 2]), 1 - 0.6 ** 2, rel_tol=1e-6)  # 1 - (q . q_gt)^2


def test_spread_viewpoints_are_distinct_unit_quaternions():
    rot = axis_angle_to_matrix(torch.randn(200, 3) * 2).double()
    quats = spread_viewpoints(rot, 6)
    assert torch.allclose(quats.norm(dim=1), torch.ones(6), atol=1e-5)
    closeness = (quats @ quats.T).abs() - torch.eye(6)
    assert float(closeness.max()) < 0.95  # no two hypotheses start at the same rotation


@pytest.fixture(scope="module")
def small_model(bird):
    cfg = CMRConfig(model=ModelConfig(shape="articulated", image_size=64, feature_dim=32, flow_channels=16,
                                      residual_basis=8, camera_hypotheses=3))
    model = ArticulatedPredictor(cfg.model)
    quats = F.normalize(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0]]), dim=1)
    model.reset_template(SkinnedTemplate.from_bird_model(bird, 8), quats, bird.bone_mean)
    return model.eval(), cfg


def test_prediction_is_symmetric_at_the_mean_and_exposes_hypotheses(small_model):
    model, cfg = small_model
    with torch.no_grad():
        model.mean_residual.normal_(0, 0.5)
        pred = model(torch.rand(2, 3, 64, 64))
    assert pred.cam_hypotheses.shape == (2, 3, 7) and pred.cam_logits.shape == (2, 3)
    best = pred.cam_logits.argmax(1)
    assert torch.equal(pred.cams, pred.cam_hypotheses[torch.arange(2), best])
    residual = pred.residual
    assert torch.allclose(residual[:, model.template.mirror] * MIRROR.float(), residual, atol=1e-6)
    assert torch.allclose(pred.bone_scale, pred.bone_scale[:, [j - 1 for j in _flip()]], atol=0)


def _flip():
    from mesh_recon.bird_model import JOINT_FLIP

    return [JOINT_FLIP[j] for j in range(1, 25)]


def test_checkpoint_round_trip_weights_only(small_model, tmp_path):
    model, cfg = small_model
    save_checkpoint(tmp_path / "last.pt", config_to_dict(cfg), model.state_dict(), 7, 1)
    export_weights(tmp_path / "last.pt", tmp_path / "small.pt")
    raw = torch.load(tmp_path / "small.pt", weights_only=True)
    assert raw["state_dict"]["encoder.fc.0.weight"].dtype == torch.float16
    assert raw["state_dict"]["template.weights"].dtype == torch.float32  # skinning weights keep summing to 1
    loaded, loaded_cfg = load_predictor(tmp_path / "small.pt")
    assert isinstance(loaded, ArticulatedPredictor) and loaded_cfg.model.shape == "articulated"
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a, b = model(images), loaded(images)
    assert torch.allclose(a.verts, b.verts, atol=2e-2)
    assert torch.equal(a.faces, b.faces)


def test_free_form_checkpoint_still_loads_and_predicts():
    model, cfg = load_predictor(DEFAULT_WEIGHTS)
    assert isinstance(model, MeshPredictor) and cfg.model.shape == "free"
    with torch.no_grad():
        pred = model(torch.rand(1, 3, cfg.model.image_size, cfg.model.image_size))
    assert pred.verts.shape == (1, 642, 3) and torch.isfinite(pred.verts).all()
