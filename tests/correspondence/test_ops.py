import pytest
import torch
import torch.nn.functional as F

from correspondence.ops import (affinity_logits, box_from_coordinates, coordinate_grid, crop_by_box,
                                soft_argmax_coordinates, transport)


def test_coordinate_grid_matches_grid_sample_convention():
    grid = coordinate_grid(2, 4)
    # Row-major, x first: pixel (y=0, x=0) centre is (-0.75, -0.5); (y=1, x=3) is (0.75, 0.5).
    assert torch.allclose(grid[0], torch.tensor([-0.75, -0.5]))
    assert torch.allclose(grid[7], torch.tensor([0.75, 0.5]))
    image = torch.arange(8.0).view(1, 1, 2, 4)
    sampled = F.grid_sample(image, grid.view(1, 2, 4, 2), align_corners=False)
    assert torch.equal(sampled, image)


def test_affinity_axes_reference_rows_target_columns():
    ref = F.normalize(torch.randn(1, 4, 2, 3), dim=1)
    tar = torch.zeros(1, 4, 1, 2)
    tar[0, :, 0, 0] = ref[0, :, 1, 2]  # target position 0 equals reference position (y=1, x=2) = index 5
    tar[0, :, 0, 1] = ref[0, :, 0, 0]
    logits = affinity_logits(ref, tar, 0.01)
    assert logits.shape == (1, 6, 2)
    assert logits[0, :, 0].argmax() == 5 and logits[0, :, 1].argmax() == 0
    with pytest.raises(ValueError, match="feat_ref/feat_tar: expected the same"):
        affinity_logits(ref, torch.zeros(1, 5, 1, 2), 1.0)


def test_transport_copies_reference_values_through_a_permutation():
    values = torch.arange(6.0).view(1, 1, 2, 3)
    perm = torch.tensor([5, 4, 3, 2, 1, 0])
    affinity = torch.zeros(1, 6, 6)
    affinity[0, perm, torch.arange(6)] = 1.0  # target j comes from reference perm[j]
    out = transport(values, affinity, (2, 3))
    assert torch.equal(out.flatten(), perm.float())


def test_soft_argmax_finds_a_corner_spike():
    logits = torch.full((1, 1, 12), -1e4)
    logits[0, 0, 11] = 0.0  # bottom-right cell of a 3 x 4 map
    coords = soft_argmax_coordinates(logits, (3, 4))
    assert torch.allclose(coords[0, 0], torch.tensor([0.75, 2 / 3]), atol=1e-5)


def test_box_from_spread_and_crop_by_box_is_an_exact_window():
    coords = torch.tensor([[[-0.5, 0.0], [0.5, 0.0]]])
    box = box_from_coordinates(coords, spread_scale=2.0)
    assert torch.allclose(box, torch.tensor([[0.0, 0.0, 1.0, 0.05]]))
    image = torch.arange(64.0).view(1, 1, 8, 8)
    # Half-size 0.5 centred at (0.25, -0.25): the 4 x 4 window starting at pixel (x=3, y=1).
    crop = crop_by_box(image, torch.tensor([[0.25, -0.25, 0.5, 0.5]]), (4, 4))
    assert torch.allclose(crop, image[:, :, 1:5, 3:7])


def test_crop_is_differentiable_with_respect_to_the_box_centre():
    image = torch.rand(1, 1, 8, 8, dtype=torch.float64)
    box = torch.tensor([[0.1, -0.2, 0.5, 0.5]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda b: crop_by_box(image, b, (4, 4)), (box,), atol=1e-5)
