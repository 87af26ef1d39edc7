import math

import numpy as np
import pytest
import torch

from birdmesh.metrics import (boundary_tolerance, bbox_size_from_mask, db_eval_boundary, db_eval_iou,
                              evaluate_semi_supervised, keypoint_box_diagonal, mask_boundary, mask_iou,
                              pck, pck_per_keypoint, summarize)


def square(top, left, side=20, size=(64, 64)):
    mask = np.zeros(size, bool)
    mask[top:top + side, left:left + side] = True
    return mask


def slow_boundary(mask):
    """Loop version of the DAVIS boundary: a pixel differing from its E, S or SE neighbour inside the image."""
    h, w = mask.shape
    out = np.zeros((h, w), bool)
    for y in range(h):
        for x in range(w):
            for dy, dx in ((0, 1), (1, 0), (1, 1)):
                if y + dy < h and x + dx < w and mask[y, x] != mask[y + dy, x + dx]:
                    out[y, x] = True
    return out


def slow_f(pred, gt, bound_th=0.008):
    """Boundary F with an explicit disk: a boundary pixel matches if some other-boundary pixel lies
    at (dy, dx) with dy^2 + dx^2 <= r^2."""
    h, w = pred.shape
    r = bound_th if bound_th >= 1 else math.ceil(bound_th * math.sqrt(h * h + w * w))
    pb, gb = slow_boundary(pred), slow_boundary(gt)

    def matched(a, b):
        hits = 0
        for y, x in zip(*np.nonzero(a)):
            hits += any(b[y + dy, x + dx] for dy in range(-r, r + 1) for dx in range(-r, r + 1)
                        if dy * dy + dx * dx <= r * r and 0 <= y + dy < h and 0 <= x + dx < w)
        return hits

    n_p, n_g = pb.sum(), gb.sum()
    if n_p == 0 and n_g == 0:
        return 1.0
    if n_p == 0 or n_g == 0:
        return 0.0
    precision, recall = matched(pb, gb) / n_p, matched(gb, pb) / n_g
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def random_blob(rng, size):
    """A smoothed random field thresholded: irregular blobs with holes and several parts."""
    field = rng.random((size[0] // 4 + 2, size[1] // 4 + 2))
    field = np.kron(field, np.ones((4, 4)))[: size[0], : size[1]]
    return field > 0.6


def test_iou_hand_cases():
    a = square(10, 10)
    assert db_eval_iou(a, a) == 1.0
    assert db_eval_iou(a, square(40, 40)) == 0.0
    assert db_eval_iou(a, square(10, 15)) == pytest.approx(300 / 500)  # overlap 20x15, union 800 - 300
    empty = np.zeros_like(a)
    assert db_eval_iou(empty, empty) == 1.0 and db_eval_iou(a, empty) == 0.0


def test_boundary_pins_the_half_pixel_convention():
    mask = np.zeros((5, 6), bool)
    mask[1:3, 2:4] = True
    expected = np.array([[0, 1, 1, 1, 0, 0],   # above: differs from the pixel below or below-right
                         [0, 1, 0, 1, 0, 0],   # left: differs from the right; inside right col: from the right
                         [0, 1, 1, 1, 0, 0],   # bottom row of the square differs from below
                         [0, 0, 0, 0, 0, 0],
                         [0, 0, 0, 0, 0, 0]], bool)
    assert np.array_equal(mask_boundary(mask), expected)
    assert not mask_boundary(np.ones((4, 4), bool)).any()  # a full frame has no boundary


def test_boundary_f_hand_cases():
    a = square(10, 10)
    assert boundary_tolerance(480, 854) == 8 and boundary_tolerance(64, 64) == 1
    assert db_eval_boundary(a, a) == 1.0
    assert db_eval_boundary(a, square(40, 40)) == 0.0
    assert db_eval_boundary(a, square(10, 11)) == 1.0  # 1 px shift, tolerance 1 px
    # Diagonal 1 px shift: of the 80 boundary pixels only the far corner is sqrt(2) > 1 px from the other.
    assert db_eval_boundary(a, square(11, 11)) == pytest.approx(79 / 80)
    empty = np.zeros_like(a)
    assert db_eval_boundary(empty, empty) == 1.0
    assert db_eval_boundary(a, empty) == 0.0 and db_eval_boundary(empty, a) == 0.0


def test_boundary_f_matches_slow_reference():
    rng = np.random.default_rng(0)
    for trial in range(6):
        size = (24 + 3 * trial, 30 + 5 * trial)
        pred, gt = random_blob(rng, size), random_blob(rng, size)
        for bound_th in (0.008, 2, 3):
            assert db_eval_boundary(pred, gt, bound_th) == pytest.approx(slow_f(pred, gt, bound_th), abs=1e-12)
        shifted = np.roll(gt, (1, 2), axis=(0, 1))
        assert db_eval_boundary(shifted, gt, 2) == pytest.approx(slow_f(shifted, gt, 2), abs=1e-12)
    assert np.array_equal(mask_boundary(pred), slow_boundary(pred))


def test_batched_equals_per_frame():
    rng = np.random.default_rng(1)
    pred = np.stack([random_blob(rng, (32, 40)) for _ in range(4)])
    gt = np.stack([random_blob(rng, (32, 40)) for _ in range(4)])
    assert np.allclose(db_eval_iou(pred, gt), [db_eval_iou(p, g) for p, g in zip(pred, gt)])
    assert np.allclose(db_eval_boundary(pred, gt), [db_eval_boundary(p, g) for p, g in zip(pred, gt)])
    with pytest.raises(ValueError, match=r"pred, gt: expected two masks of one shape"):
        db_eval_iou(pred, gt[0])


def test_semi_supervised_drops_first_and_last_frames():
    gt = np.zeros((4, 10, 10), int)
    gt[:, 2:6, 2:6] = 1                # object 1: a 4x4 square
    gt[:, 7:9, 1:5] = 2                # object 2: a 2x4 bar
    pred = np.zeros_like(gt)
    pred[0], pred[3] = 2, 1            # first and last frames all wrong: they must not count
    pred[1] = gt[1]                    # frame 1 perfect: J = F = 1 for both objects
    pred[2, 7:9, 2:6] = 2              # frame 2: object 1 missing (J = F = 0), object 2 shifted by 1 px:
    result = evaluate_semi_supervised(pred, gt, sequence="toy")  # J = 6 / 10, F = 1 (1 px tolerance)
    assert result["objects"] == [1, 2]
    assert result["J"] == pytest.approx([0.5, 0.8]) and result["F"] == pytest.approx([0.5, 1.0])
    assert result["J_frames"].shape == (2, 2) and result["J_recall"] == pytest.approx([0.5, 1.0])
    assert result["rows"][1] == {"sequence": "toy", "object": 2, "J": pytest.approx(0.8), "F": 1.0}
    assert summarize(result["rows"]) == pytest.approx((0.7, 0.65, 0.75))


def test_semi_supervised_rules():
    gt = np.zeros((3, 8, 8), int)
    gt[:, 1:4, 1:4] = 1
    gt[:, 6, 6] = 255                  # void counts as background
    pred = (gt == 1).astype(int)
    assert evaluate_semi_supervised(pred, gt)["J"] == [1.0]
    with pytest.raises(ValueError, match=r"pred_labels: expected object indices 0\.\.1 .*got 2"):
        evaluate_semi_supervised(pred * 2, gt)
    with pytest.raises(ValueError, match="gt_labels: expected at least 3 frames"):
        evaluate_semi_supervised(gt[:2], gt[:2])


def test_summarize_averages_objects_not_sequences():
    rows = [{"J": 1.0, "F": 1.0}, {"J": 0.0, "F": 0.5}, {"J": 0.0, "F": 0.0}]  # 1 + 2 objects
    assert summarize(rows) == pytest.approx(((1 / 3 + 0.5) / 2, 1 / 3, 0.5))
    with pytest.raises(ValueError, match="per_object_rows"):
        summarize([])


def test_pck_hand_case():
    gt = np.zeros((1, 4, 2))
    pred = np.array([[[0.5, 0.0], [0.6, 0.8], [2.0, 0.0], [50.0, 0.0]]])  # distances 0.5, 1.0, 2, 50
    visible = np.array([[True, True, True, False]])
    assert pck(pred, gt, visible, norm=np.array([10.0]), alpha=0.1) == pytest.approx(2 / 3)
    assert np.allclose(pck_per_keypoint(pred, gt, visible, np.array([10.0])), [1, 1, 0, np.nan],
                       equal_nan=True)
    assert math.isnan(pck(pred, gt, np.zeros((1, 4), bool), np.array([10.0])))
    with pytest.raises(ValueError, match=r"visible, norm: expected shapes \(1, 4\) and \(1,\)"):
        pck(pred, gt, visible, norm=np.array([10.0, 1.0]))


def test_pck_normalisers():
    mask = np.zeros((2, 10, 12), bool)
    mask[0, 2:5, 3:8] = True           # 3 rows x 5 columns
    assert bbox_size_from_mask(mask).tolist() == [5.0, 0.0]
    assert bbox_size_from_mask(mask[0]) == 5.0
    keypoints = np.array([[[1.0, 1.0], [4.0, 5.0], [100.0, 100.0]]])
    assert keypoint_box_diagonal(keypoints, np.array([[True, True, False]])).tolist() == [5.0]


def test_mask_iou_numpy_torch_and_gradient():
    rng = np.random.default_rng(2)
    pred, gt = rng.random((3, 1, 8, 9)) > 0.5, rng.random((3, 1, 8, 9)) > 0.5
    expected = np.array([db_eval_iou(p[0], g[0]) for p, g in zip(pred, gt)])[:, None]
    assert np.allclose(mask_iou(pred, gt), expected)
    assert torch.allclose(mask_iou(torch.from_numpy(pred), torch.from_numpy(gt)).double(),
                          torch.from_numpy(expected))
    soft = torch.rand(2, 1, 5, 6, dtype=torch.float64, requires_grad=True)
    target = (torch.rand(2, 1, 5, 6, dtype=torch.float64) > 0.5).double()
    assert torch.autograd.gradcheck(lambda p: mask_iou(p, target), (soft,))
    empty = torch.zeros(1, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    value = mask_iou(empty, torch.zeros(1, 1, 4, 4, dtype=torch.float64))
    value.sum().backward()
    assert value.item() == 1.0 and torch.isfinite(empty.grad).all()
