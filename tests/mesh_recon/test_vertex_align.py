"""The predictor's vertex-alignment head (mesh_recon/predictor_networks.py VertexAlignHead, sample_at_points)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from birdmesh.checkpoint import save_checkpoint
from birdmesh.config import config_to_dict
from birdmesh.errors import UserError
from mesh_recon.geometry import weak_perspective_project
from mesh_recon.predictor import MeshPredictor, pool_alignment
from mesh_recon.predictor_config import CMRConfig, ModelConfig
from mesh_recon.predictor_networks import sample_at_points
from mesh_recon.train import _resume

MIRROR = torch.tensor([-1.0, 1.0, 1.0])


def grid_sample_reference(feature_map: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """The slow obvious version: torch's grid_sample with the same conventions, (B, N, C)."""
    return F.grid_sample(feature_map, xy[:, :, None], mode="bilinear", padding_mode="border",
                         align_corners=False)[..., 0].transpose(1, 2)


def test_point_sampling_matches_grid_sample_inside_and_beyond_the_border():
    gen = torch.Generator().manual_seed(0)
    feature_map = torch.randn(2, 5, 7, 9, dtype=torch.float64, generator=gen, requires_grad=True)
    xy = torch.rand(2, 40, 2, dtype=torch.float64, generator=gen) * 2.6 - 1.3  # some points outside [-1, 1]
    xy[0, :4] = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0], [1 / 9, -1 / 7]])  # edges and cell centres
    ours, ref = sample_at_points(feature_map, xy), grid_sample_reference(feature_map, xy)
    torch.testing.assert_close(ours, ref)
    weights = torch.randn(ours.shape, dtype=torch.float64, generator=gen)
    grad_ours, = torch.autograd.grad((ours * weights).sum(), feature_map)
    grad_ref, = torch.autograd.grad((ref * weights).sum(), feature_map)
    torch.testing.assert_close(grad_ours, grad_ref)


def aligned_predictor(stages: int = 2, seed: int = 0) -> MeshPredictor:
    torch.manual_seed(seed)
    return MeshPredictor(ModelConfig(image_size=64, align_stages=stages))


def moving_predictor() -> MeshPredictor:
    """An alignment head whose last layers are not zero, so it moves vertices."""
    model = aligned_predictor().eval()
    with torch.no_grad():
        for stage in model.align_head.stages:
            stage.out.weight.normal_(std=0.05)
            stage.out.bias.normal_(std=0.05)
    return model


def test_a_new_head_leaves_the_prediction_unchanged():
    base = aligned_predictor(stages=0).eval()
    with torch.no_grad():
        base.shape_head.linear.weight.normal_(std=0.05)
    aligned = aligned_predictor(stages=2).eval()
    missing = aligned.load_state_dict(base.state_dict(), strict=False).missing_keys
    assert missing and all(key.startswith("align_head.") for key in missing)
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a, b = base(images), aligned(images)
    torch.testing.assert_close(a.verts, b.verts, rtol=0, atol=0)
    torch.testing.assert_close(a.kp3d, b.kp3d, rtol=0, atol=0)


def test_refined_meshes_stay_exactly_mirror_symmetric():
    model = moving_predictor()
    with torch.no_grad():
        pred = model(torch.rand(2, 3, 64, 64))
    sym = model.template.sym
    assert (pred.verts - pred.mean_verts).abs().max() > 1e-3, "the head moved nothing: the test would be empty"
    for verts in (pred.verts, pred.delta_v):
        assert torch.equal(verts[:, sym.mirror_index] * MIRROR, verts)
    torch.testing.assert_close(pred.kp3d, pred.vert2kp @ pred.verts)


def test_pooled_alignment_adds_the_mean_of_the_kept_frames_moves():
    model = moving_predictor()
    with torch.no_grad():
        model.shape_head.linear.weight.normal_(std=0.05)  # frames differ before the head too
        pred = model(torch.rand(4, 3, 64, 64))
    before = pred.verts - pred.align_moves  # what the shape head alone gave
    keep = torch.tensor([True, False, True, True])
    pooled = pool_alignment(pred, keep)
    shared = (pred.align_moves[0] + pred.align_moves[2] + pred.align_moves[3]) / 3  # frame 1 left out
    for b in range(4):
        torch.testing.assert_close(pooled.verts[b], before[b] + shared)
    torch.testing.assert_close(pooled.delta_v, pooled.verts - pred.mean_verts)
    torch.testing.assert_close(pooled.kp3d, pred.vert2kp @ pooled.verts)
    sym = model.template.sym
    assert torch.equal(pooled.verts[:, sym.mirror_index] * MIRROR, pooled.verts)
    # No frame kept (the object vanished everywhere): every frame's move counts.
    everyone = pool_alignment(pred, torch.zeros(4, dtype=torch.bool))
    torch.testing.assert_close(everyone.verts, before + pred.align_moves.mean(0))
    assert pool_alignment(aligned_predictor(stages=0).eval()(torch.rand(2, 3, 64, 64))).align_moves is None


def test_a_pooled_frame_depends_on_every_frame_and_stays_trainable():
    model = moving_predictor()
    images = torch.rand(3, 3, 64, 64, requires_grad=True)
    pooled = pool_alignment(model(images))
    grad_images, grad_head = torch.autograd.grad(pooled.verts[0].sum(),
                                                 [images, model.align_head.stages[-1].out.weight])
    assert all(grad_images[b].abs().sum() > 0 for b in range(3)), "frame 0's shape must see the other frames"
    assert grad_head.abs().sum() > 0


@pytest.mark.parametrize("angle", [0.0, 0.7, -2.0])
def test_a_screen_displacement_moves_every_projection_by_it(angle):
    # A camera turned about the symmetry axis x keeps screen-vertical moves symmetric: a stage asking for +0.1
    # NDC in y moves every projected vertex by exactly that, whatever the camera's scale and rotation.
    model = aligned_predictor(stages=1)
    stage = model.align_head.stages[0]
    with torch.no_grad():
        stage.out.bias.copy_(torch.tensor([0.0, 0.1, 0.0]))
    verts = model.mean_verts()[None].detach()
    quat = torch.tensor([[math.cos(angle / 2), math.sin(angle / 2), 0.0, 0.0]])
    cams = torch.cat([torch.tensor([[0.6, 0.05, -0.1]]), quat], dim=1)
    maps = [torch.randn(1, 128, 8, 8), torch.randn(1, 256, 4, 4)]
    moved = model.align_head(verts, cams, maps)
    before, after = weak_perspective_project(verts, cams), weak_perspective_project(moved, cams)
    torch.testing.assert_close(after[..., 1] - before[..., 1], torch.full((1, verts.shape[1]), 0.1))
    torch.testing.assert_close(after[..., 0], before[..., 0])


def test_a_run_seeded_from_weights_without_the_head_starts_it_fresh(tmp_path):
    cfg = CMRConfig(model=ModelConfig(image_size=64, align_stages=1))
    base = aligned_predictor(stages=0)
    path = tmp_path / "last.pt"
    save_checkpoint(path, config_to_dict(cfg), base.state_dict(), 12)  # no optimizer: seeded by --init-from
    model = aligned_predictor(stages=1)
    fresh_head = {k: v.clone() for k, v in model.align_head.state_dict().items()}
    assert _resume(path, model, torch.optim.Adam(model.parameters()), rank=1) == 12
    torch.testing.assert_close(model.encoder.state_dict(), base.encoder.state_dict())
    torch.testing.assert_close(model.align_head.state_dict(), fresh_head)
    # The reverse (weights with a head the config lacks) is a user error, not a silent drop.
    save_checkpoint(path, config_to_dict(cfg), model.state_dict(), 12)
    with pytest.raises(UserError, match="lacks: align_head"):
        _resume(path, aligned_predictor(stages=0), torch.optim.Adam(base.parameters()), rank=1)
