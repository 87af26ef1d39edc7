"""Tests of mesh_recon.geometry: rotations, cameras, NDC <-> pixels."""
import math

import pytest
import torch
import torch.nn.functional as F
from scipy.spatial.transform import Rotation

from mesh_recon.geometry import (check_shape, ndc_to_pixels, perspective_project, pixels_to_ndc,
                                 quaternion_to_rotation_matrix, random_quaternions, random_rotations,
                                 rotation_matrix_to_quaternion, weak_perspective_project)


def test_quaternion_matches_scipy():
    quat = random_quaternions(16, torch.Generator().manual_seed(0), dtype=torch.float64)
    # scipy: Rotation.from_quat takes (x, y, z, w), scalar last
    expected = Rotation.from_quat(quat[:, [1, 2, 3, 0]].numpy()).as_matrix()
    got = quaternion_to_rotation_matrix(quat * 3.0)  # any scale: normalized inside
    assert torch.allclose(got, torch.from_numpy(expected), atol=1e-12)


def test_rotations_are_proper():
    rot = random_rotations(32, torch.Generator().manual_seed(1), dtype=torch.float64)
    assert rot.shape == (32, 3, 3)
    eye = torch.eye(3, dtype=torch.float64).expand(32, 3, 3)
    assert torch.allclose(rot @ rot.transpose(1, 2), eye, atol=1e-12)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(32, dtype=torch.float64), atol=1e-12)


def test_rotation_matrix_round_trip_including_half_turns():
    quat = random_quaternions(64, torch.Generator().manual_seed(2), dtype=torch.float64)
    half_turns = torch.tensor([[0.0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [1, 0, 0, 0]], dtype=torch.float64)
    quat = torch.cat([quat, half_turns])
    back = rotation_matrix_to_quaternion(quaternion_to_rotation_matrix(quat))
    same = torch.minimum((back - quat).abs().amax(1), (back + quat).abs().amax(1))
    assert same.max() < 1e-10, f"worst {same.max():.3g} at {same.argmax()}"


def test_quaternion_gradcheck():
    quat = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(quaternion_to_rotation_matrix, (quat,))


def test_weak_perspective_known_values():
    # 90 degrees about z: (x, y, z) -> (-y, x, z)
    cams = torch.tensor([[2.0, 0.1, -0.2, math.cos(math.pi / 4), 0, 0, math.sin(math.pi / 4)]])
    verts = torch.tensor([[[1.0, 0.0, 0.5], [0.0, 1.0, -0.5]]])
    out = weak_perspective_project(verts, cams)
    expected = torch.tensor([[[0.1, 1.8, 0.5], [-1.9, -0.2, -0.5]]])
    assert torch.allclose(out, expected, atol=1e-6)


def test_weak_perspective_depth_sign_convention():
    # identity rotation: the point at z = -1 is nearer to the viewer (smaller z) than z = +1
    cams = torch.tensor([[1.0, 0, 0, 1, 0, 0, 0]])
    out = weak_perspective_project(torch.tensor([[[0.0, 0, -1], [0, 0, 1]]]), cams)
    assert out[0, 0, 2] < out[0, 1, 2]


def test_perspective_project():
    verts = torch.tensor([[[1.0, -2.0, 4.0], [0.0, 0.0, 2.0]]])
    out = perspective_project(verts, torch.tensor([2.0]), principal=(0.1, 0.2))
    assert torch.allclose(out, torch.tensor([[[0.6, -0.8, 4.0], [0.1, 0.2, 2.0]]]))
    assert torch.isfinite(perspective_project(torch.zeros(1, 1, 3), 1.0)).all()
    with pytest.raises(ValueError, match="focal"):
        perspective_project(verts, torch.ones(3))


def test_ndc_pixels_round_trip_and_centres():
    uv = torch.tensor([[0.0, 0.0], [9.0, 4.0], [3.5, 2.25]])
    ndc = pixels_to_ndc(uv, width=10, height=5)
    assert torch.allclose(ndc[0], torch.tensor([-0.9, -0.8]))  # pixel centre 0 -> (2*0 + 1)/W - 1
    assert torch.allclose(ndc_to_pixels(ndc, 10, 5), uv, atol=1e-5)


def test_pixel_convention_matches_grid_sample():
    # a spike at column 7, row 2 of a 5 x 10 image is read back by grid_sample at pixels_to_ndc(7, 2)
    image = torch.zeros(1, 1, 5, 10)
    image[0, 0, 2, 7] = 1.0
    grid = pixels_to_ndc(torch.tensor([[[[7.0, 2.0]]]]), width=10, height=5)
    assert F.grid_sample(image, grid, align_corners=False).item() == pytest.approx(1.0)


def test_shape_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"cams: expected shape \(B 7\)"):
        weak_perspective_project(torch.zeros(2, 5, 3), torch.zeros(2, 6))
    with pytest.raises(ValueError, match="cams"):
        weak_perspective_project(torch.zeros(2, 5, 3), torch.zeros(3, 7))
    with pytest.raises(ValueError, match="quat"):
        quaternion_to_rotation_matrix(torch.zeros(3))
    with pytest.raises(TypeError, match="x: expected a torch.Tensor"):
        check_shape([1, 2], "B", "x")
