"""Hand cases of the camera-frame Chamfer / F-score and the mesh-quality figures."""
import math

import numpy as np

from birdmesh.shape_metrics import camera_frame_chamfer, mesh_quality, quaternion_matrix, to_camera_frame


def test_chamfer_removes_only_the_mean_depth():
    gt = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0]])
    assert camera_frame_chamfer(gt + [0.0, 0.0, 7.0], gt, 10.0).chamfer == 0.0  # depth is free
    shifted = camera_frame_chamfer(gt + [3.0, 4.0, 7.0], gt, 10.0)  # x, y are not: 5 away each way
    assert math.isclose(shifted.chamfer, 0.5) and shifted.fscore == 0.0


def test_fscore_by_hand():
    gt = np.array([[0.0, 0, 0], [100.0, 0, 0]])
    pred = np.array([[1.0, 0, 0], [100.0, 30.0, 0]])  # one within 5 % of the diagonal (100), one not
    scores = camera_frame_chamfer(pred, gt, 100.0)
    assert math.isclose(scores.fscore, 0.5)  # precision 1/2, recall 1/2
    assert math.isclose(scores.chamfer, (1 + 30 + 1 + 30) / 4 / 100)


def test_mesh_quality_flat_and_folded():
    faces = np.array([[0, 1, 2], [2, 1, 3]])
    flat = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]])
    assert mesh_quality(flat, faces).normal_angle_deg < 1e-6 and mesh_quality(flat, faces).folded == 0.0
    folded = flat.copy()
    folded[3] = [0.0, 0.0, -0.2]  # the second triangle turned past 90 degrees over the shared edge
    quality = mesh_quality(folded, faces)
    assert quality.normal_angle_deg > 90 and quality.folded == 1.0


def test_camera_frame_is_scale_rotation_and_image_translation():
    rot = quaternion_matrix([math.cos(0.5), 0.0, math.sin(0.5), 0.0])  # 1 radian about y
    out = to_camera_frame(np.array([[1.0, 0.0, 0.0]]), 2.0, rot, [5.0, 6.0])
    assert np.allclose(out, [[2 * math.cos(1.0) + 5, 6.0, -2 * math.sin(1.0)]])
