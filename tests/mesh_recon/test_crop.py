"""Crops around masks and the maps from crop NDC back to the original image (mesh_recon/crop.py)."""
from __future__ import annotations

import pytest
import torch

from mesh_recon.crop import (crop_around_mask, crop_box_from_mask, crop_cameras_to_pixels, crop_image,
                             crop_ndc_to_pixels, pixels_to_crop_ndc)
from mesh_recon.geometry import weak_perspective_project

from factories import random_cameras


def _rect_mask(h: int, w: int, x0: int, y0: int, x1: int, y1: int) -> torch.Tensor:
    mask = torch.zeros(1, 1, h, w)
    mask[..., y0:y1, x0:x1] = 1
    return mask


def test_box_is_square_and_centred_on_the_mask():
    box = crop_box_from_mask(_rect_mask(100, 200, 50, 20, 90, 40), padding=0.25)
    # mask box x [50, 90) y [20, 40): centre (70, 30), longer side 40 -> side 60
    torch.testing.assert_close(box, torch.tensor([[40.0, 0.0, 100.0, 60.0]]))


def test_empty_mask_gives_the_centred_square():
    torch.testing.assert_close(crop_box_from_mask(torch.zeros(1, 1, 40, 80)), torch.tensor([[20.0, 0.0, 60.0, 40.0]]))


def test_unscaled_crop_moves_a_pixel_exactly():
    image = torch.zeros(1, 1, 30, 40)
    image[0, 0, 12, 25] = 1.0  # row 12, column 25
    crop = crop_image(image, torch.tensor([[20.0, 10.0, 30.0, 20.0]]), 10)
    assert crop[0, 0, 2, 5] == 1.0 and crop.sum() == 1.0, "pixel (u=25, v=12) should land at crop (5, 2)"


def test_crop_ndc_round_trip_and_pixel_centres():
    box = torch.tensor([[-7.5, 3.0, 92.5, 103.0], [10.0, 20.0, 30.0, 40.0]])
    xy = torch.rand(2, 5, 2) * 2 - 1
    torch.testing.assert_close(pixels_to_crop_ndc(crop_ndc_to_pixels(xy, box), box), xy)
    # the centre of crop pixel 0 of a 20-pixel crop of box 2 (side 20, unscaled) is image pixel 10
    first = torch.tensor([[[-1 + 1 / 20, -1 + 1 / 20]]])
    torch.testing.assert_close(crop_ndc_to_pixels(first, box[1:]), torch.tensor([[[10.0, 20.0]]]))


def test_crop_around_mask_frames_the_object():
    mask = _rect_mask(120, 160, 30, 40, 90, 70)  # 60 x 30 object
    image = mask.expand(1, 3, -1, -1).clone()
    crop, box = crop_around_mask(image, mask, 64, padding=0.25)
    assert crop.shape == (1, 3, 64, 64)
    cols = torch.nonzero(crop[0, 0].amax(0) > 0.5).reshape(-1)
    side = 64 / 1.5  # the object's longer side is 1 / (1 + 2 padding) of the crop
    assert abs((cols[-1] - cols[0] + 1).item() - side) <= 2
    assert abs((cols[0] + cols[-1] + 1).item() / 2 - 32) <= 1, "object not centred"


def test_shrinking_crop_is_antialiased_and_keeps_geometry():
    checker = ((torch.arange(400)[:, None] + torch.arange(400)[None]) % 2).float()[None, None]
    crop = crop_image(checker, torch.tensor([[0.0, 0.0, 400.0, 400.0]]), 32)
    assert (crop - 0.5).abs().max() < 0.05, "a 1-pixel checkerboard must average out, not alias"
    square = _rect_mask(400, 400, 100, 200, 140, 240)
    small = crop_image(square, torch.tensor([[0.0, 0.0, 400.0, 400.0]]), 40)[0, 0]
    ys, xs = torch.nonzero(small > 0.5, as_tuple=True)
    assert abs(xs.float().mean().item() - 11.5) < 0.6 and abs(ys.float().mean().item() - 21.5) < 0.6


def test_cameras_in_pixels_project_like_the_crop():
    cams = random_cameras(3, seed=1, scale=0.7, shift=0.2)
    box = torch.tensor([[10.0, 5.0, 110.0, 105.0], [-20.0, -30.0, 180.0, 170.0], [0.0, 0.0, 64.0, 64.0]])
    points = torch.randn(3, 6, 3)
    expected = crop_ndc_to_pixels(weak_perspective_project(points, cams)[..., :2], box)
    torch.testing.assert_close(weak_perspective_project(points, crop_cameras_to_pixels(cams, box))[..., :2], expected)


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="padding"):
        crop_box_from_mask(torch.zeros(1, 1, 8, 8), padding=-0.1)
    with pytest.raises(ValueError, match="mask"):
        crop_around_mask(torch.zeros(1, 3, 8, 8), torch.zeros(1, 1, 8, 9), 4)
    with pytest.raises(ValueError, match="size"):
        crop_image(torch.zeros(1, 3, 8, 8), torch.zeros(1, 4), 0)
