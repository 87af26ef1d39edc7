"""Loss terms of the mesh predictor (mesh_recon/losses.py): values against hand or loop references, gradients."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import distance_transform_edt

from mesh_recon.geometry import quaternion_to_rotation_matrix, random_quaternions
from mesh_recon.losses import (camera_loss, chamfer_loss, coverage_loss, deformation_loss, keypoint_loss,
                               laplacian_loss, mask_barrier, masked_l1, predictor_losses, silhouette_loss,
                               texture_flow_barrier_loss, vert2kp_entropy)
from mesh_recon.predictor import MeshPredictor
from mesh_recon.predictor_config import LossConfig, ModelConfig
from mesh_recon.render import SoftRenderer, SoftRenderSettings
from mesh_recon.template import sphere_template

from test_predictor import predictor_inputs


def test_keypoint_loss_ignores_invisible_keypoints():
    pred = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]]])
    gt = torch.tensor([[[0.0, 0.5, 1.0], [1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]])
    # visible errors 0.25 and 1.0 over 2 keypoints x 2 coordinates
    torch.testing.assert_close(keypoint_loss(pred, gt), torch.tensor(1.25 / 4))
    assert torch.autograd.gradcheck(lambda p: keypoint_loss(p, gt.double()), pred.double().requires_grad_())


def test_camera_loss_is_zero_for_the_same_rotation_either_sign():
    # reference: |R - R_gt|_F^2 / 8 = sin^2(angle / 2)
    cams = torch.tensor([[0.7, 0.1, -0.2, 0.5, 0.5, 0.5, 0.5]])
    flipped = torch.cat([cams[:, :3], -cams[:, 3:]], 1)
    torch.testing.assert_close(camera_loss(cams, flipped), torch.tensor(0.0))
    quarter = torch.tensor([[0.7, 0.1, -0.2, math.cos(math.pi / 8), 0.0, 0.0, math.sin(math.pi / 8)]])
    other = torch.tensor([[0.5, 0.1, 0.0, 1.0, 0.0, 0.0, 0.0]])
    expected = math.sin(math.pi / 8) ** 2 + 0.2 ** 2 + 0.2 ** 2  # 45 degrees apart
    torch.testing.assert_close(camera_loss(quarter, other), torch.tensor(expected, dtype=torch.float32))


def test_camera_rotation_term_against_matrices():
    gen = torch.Generator().manual_seed(3)
    q1, q2 = random_quaternions(5, gen, torch.float64), random_quaternions(5, gen, torch.float64)
    cams1 = torch.cat([torch.ones(5, 3, dtype=torch.float64), q1], 1)
    cams2 = torch.cat([torch.ones(5, 3, dtype=torch.float64), q2], 1)
    frobenius = (quaternion_to_rotation_matrix(q1) - quaternion_to_rotation_matrix(q2)).square().sum((1, 2))
    torch.testing.assert_close(camera_loss(cams1, cams2), frobenius.mean() / 8)


def test_silhouette_deformation_and_texture_values():
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :] = 1
    torch.testing.assert_close(silhouette_loss(mask, mask), torch.tensor(0.0))
    torch.testing.assert_close(silhouette_loss(torch.full_like(mask, 0.5), mask), torch.tensor(0.25))
    delta = torch.zeros(2, 3, 3)
    delta[0, 0] = torch.tensor([3.0, 4.0, 0.0])
    torch.testing.assert_close(deformation_loss(delta), torch.tensor(5.0 / 6))
    image, rendered = torch.zeros(1, 3, 4, 4), torch.ones(1, 3, 4, 4)
    torch.testing.assert_close(masked_l1(rendered, image, mask), torch.tensor(1.0))
    torch.testing.assert_close(masked_l1(rendered * (1 - mask), image, mask), torch.tensor(0.0))


def test_chamfer_loss_against_a_point_loop():
    torch.manual_seed(0)
    verts, verts_gt = torch.randn(2, 7, 3), torch.randn(2, 5, 3)

    def nearest_mean(a, b):  # mean over points of a of the distance to the closest point of b
        return sum(min(math.dist(p, q) for q in b.tolist()) for p in a.tolist()) / len(a)

    expected = sum(nearest_mean(verts[b], verts_gt[b]) + nearest_mean(verts_gt[b], verts[b]) for b in range(2)) / 4
    assert math.isclose(float(chamfer_loss(verts, verts_gt)), expected, rel_tol=1e-5)
    assert float(chamfer_loss(verts_gt, verts_gt)) == 0.0
    # a hand case: one point at distance 3 from both of the other cloud's (identical) points
    one, two = torch.tensor([[[0.0, 0.0, 3.0]]]), torch.zeros(1, 2, 3)
    assert math.isclose(float(chamfer_loss(one, two)), 3.0)


def test_coverage_pulls_the_nearest_vertex_towards_uncovered_pixels_only():
    mask = torch.zeros(1, 1, 4, 4)
    mask[0, 0, 0, :2] = 1.0  # pixel centres (-0.75, -0.75) and (-0.25, -0.75)
    mask[0, 0, 3, 3] = 0.4  # too faint to count
    silhouette = torch.zeros_like(mask)
    silhouette[0, 0, 0, 0] = 1.0  # the first is covered
    verts = torch.tensor([[[0.75, 0.75, 0.0], [-0.25, 0.75, 0.3]]], requires_grad=True)
    loss = coverage_loss(verts, mask, silhouette)
    # the uncovered pixel (-0.25, -0.75) is nearest to vertex 1: squared distance 1.5^2, over a mask area of 2
    assert loss.item() == pytest.approx(1.5 ** 2 / 2)
    loss.backward()
    assert torch.allclose(verts.grad, torch.tensor([[[0.0, 0.0, 0.0], [0.0, 1.5, 0.0]]]))  # d/dy (y + 0.75)^2 / 2
    assert coverage_loss(verts, mask, mask).item() == 0.0
    # capped at radius 0.5 (Huber): 0.5 * (2 * 1.5 - 0.5) / 2, and the pull's slope stays 2 * 0.5 / 2 beyond it
    verts.grad = None
    capped = coverage_loss(verts, mask, silhouette, radius=0.5)
    assert capped.item() == pytest.approx(0.5 * 2.5 / 2)
    capped.backward()
    assert torch.allclose(verts.grad, torch.tensor([[[0.0, 0.0, 0.0], [0.0, 0.5, 0.0]]]))
    assert coverage_loss(verts, mask, silhouette, radius=2.0).item() == pytest.approx(1.5 ** 2 / 2)  # within reach


@pytest.mark.parametrize("radius", [None, 0.1])
def test_coverage_equals_a_brute_force_nearest_vertex_search(radius):
    g = torch.Generator().manual_seed(0)
    verts = (torch.rand(3, 50, 3, generator=g) * 1.6 - 0.8).requires_grad_()
    mask = torch.rand(3, 1, 16, 16, generator=g)
    silhouette = torch.rand(3, 1, 16, 16, generator=g)  # soft: partly covered pixels pull less
    loss = coverage_loss(verts, mask, silhouette, radius)
    (fast_grad,) = torch.autograd.grad(loss, verts)
    total = 0.0
    for b in range(3):
        for i in range(16):
            for j in range(16):
                point = torch.tensor([(2 * j + 1) / 16 - 1, (2 * i + 1) / 16 - 1])
                distances = ((verts[b, :, :2] - point) ** 2).sum(1)
                if mask[b, 0, i, j] > 0.5:
                    d = distances.min().sqrt()
                    pull = d ** 2 if radius is None or d <= radius else radius * (2 * d - radius)
                    total = total + (1 - silhouette[b, 0, i, j]) * pull
    reference = total / (mask > 0.5).sum()
    (reference_grad,) = torch.autograd.grad(reference, verts)
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
    assert torch.allclose(fast_grad, reference_grad, atol=1e-6)


def test_vert2kp_entropy_bounds():
    uniform = torch.full((3, 10), 0.1)
    torch.testing.assert_close(vert2kp_entropy(uniform), torch.tensor(math.log(10)))
    torch.testing.assert_close(vert2kp_entropy(torch.eye(3, 10)), torch.tensor(0.0))


def test_laplacian_loss_matches_a_neighbour_loop():
    sym = sphere_template(1).sym
    verts = sym.verts[None] * torch.tensor([1.0, 2.0, 0.5]) + 0.01 * torch.randn(1, len(sym.verts), 3)
    neighbours = [set() for _ in range(len(sym.verts))]
    for a, b, c in sym.faces.tolist():
        for i, j in ((a, b), (b, c), (c, a)):
            neighbours[i].add(j)
            neighbours[j].add(i)
    expected = torch.stack([(verts[0, i] - verts[0, sorted(n)].mean(0)).norm() for i, n in enumerate(neighbours)])
    torch.testing.assert_close(laplacian_loss(verts, sym.faces), expected.mean())


def test_mask_barrier_against_scipy_distance_transform():
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:24, 10:20] = 1
    barrier = mask_barrier(mask, sharpness=50.0)[0, 0].numpy()
    m = mask[0, 0].numpy().astype(bool)
    signed = (distance_transform_edt(~m) - distance_transform_edt(m)) / 32
    np.testing.assert_allclose(barrier, 1 / (1 + np.exp(-50 * signed)), atol=0.03)
    assert barrier[16, 15] < 0.1 and barrier[0, 0] > 0.9


def test_texture_flow_barrier_is_low_inside_the_mask():
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:24, 8:24] = 1
    barrier = mask_barrier(mask)
    inside = torch.zeros(1, 2, 8, 16)  # every texel samples the image centre
    outside = torch.full((1, 2, 8, 16), -0.95)  # every texel samples the top-left corner
    assert texture_flow_barrier_loss(inside, barrier) < 0.01 < 0.9 < texture_flow_barrier_loss(outside, barrier)


def _loss_inputs(size: int = 64):
    torch.manual_seed(0)
    model = MeshPredictor(ModelConfig(image_size=size))
    images = predictor_inputs(2, size)
    mask = torch.zeros(2, 1, size, size)
    mask[..., size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 1
    kp = torch.cat([torch.rand(2, 12, 2) - 0.5, torch.ones(2, 12, 1)], -1)
    cams = torch.tensor([[0.8, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]]).repeat(2, 1)
    renderer = SoftRenderer(SoftRenderSettings(32))
    verts = 0.6 * torch.nn.functional.normalize(torch.randn(2, 40, 3), dim=-1)  # a ground-truth mesh's vertices
    return model, {"image": images, "mask": mask, "kp": kp, "cam": cams, "verts": verts}, renderer


def test_predictor_losses_terms_and_gradients():
    model, batch, renderer = _loss_inputs()
    feature_net = lambda x: [torch.nn.functional.avg_pool2d(x, 4)]
    loss, stats = predictor_losses(model(batch["image"]), batch, renderer, LossConfig(chamfer=1.0, coverage=1.0),
                                   feature_net)
    assert set(stats) == {"mask", "keypoint", "camera", "chamfer", "coverage", "deform", "laplacian",
                          "vert2kp_entropy", "texture", "texture_feature", "texture_dt", "iou"}
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in stats.values())
    assert stats["coverage"] > 0  # the mask's corners lie outside the initial sphere's silhouette
    loss.backward()
    for name in ("shape_head.linear.weight", "camera_head.linear.weight", "flow_head.out.weight", "mean_free",
                 "vert2kp_logits", "encoder.stem.0.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, f"no gradient reaches {name}"


def test_texture_terms_do_not_move_the_shape():
    model, batch, renderer = _loss_inputs()
    only_texture = LossConfig(mask=0, keypoint=0, camera=0, deform=0, laplacian=0, vert2kp_entropy=0,
                              texture=1.0, texture_feature=0, texture_dt=0)
    loss, _ = predictor_losses(model(batch["image"]), batch, renderer, only_texture)
    loss.backward()
    assert model.mean_free.grad is None or model.mean_free.grad.abs().max() == 0
    assert model.camera_head.linear.weight.grad is None or model.camera_head.linear.weight.grad.abs().max() == 0
    assert model.flow_head.out.weight.grad.abs().sum() > 0
