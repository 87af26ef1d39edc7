import numpy as np
import pytest
import torch
from skimage.color import lab2rgb, rgb2lab

from birdmesh.color import LabToRgb, RgbToLab, lab_to_rgb, rgb_to_lab, uint8_rgb_to_lab


def test_rgb_to_lab_matches_scikit_image():
    rgb = torch.rand(2, 3, 7, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    reference = rgb2lab(rgb.permute(0, 2, 3, 1).numpy())  # skimage.color.rgb2lab, D65
    ours = rgb_to_lab(rgb).permute(0, 2, 3, 1).numpy()
    assert np.abs(ours - reference).max() < 1e-3


def test_uint8_frames_convert_as_scikit_image_over_every_level():
    levels = np.arange(256, dtype=np.uint8)  # every 8-bit level in every channel, plus random colours
    frame = np.stack([np.stack([levels, levels[::-1], np.roll(levels, 85)], -1),
                      np.random.default_rng(0).integers(0, 256, (256, 3), dtype=np.uint8)])  # (2, 256, 3)
    reference = rgb2lab(frame.astype(np.float64) / 255)
    ours = uint8_rgb_to_lab(torch.from_numpy(frame))
    assert ours.shape == (1, 3, 2, 256) and ours.dtype == torch.float32
    assert np.abs(ours[0].permute(1, 2, 0).numpy() - reference).max() < 1e-3
    with pytest.raises(ValueError, match=r"rgb: expected uint8 \(H, W, 3\)"):
        uint8_rgb_to_lab(torch.zeros(2, 2, 3))


def test_lab_to_rgb_matches_scikit_image_and_round_trips():
    rgb = torch.rand(1, 3, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    lab = torch.from_numpy(rgb2lab(rgb.permute(0, 2, 3, 1).numpy())).permute(0, 3, 1, 2)
    reference = lab2rgb(lab.permute(0, 2, 3, 1).numpy())  # skimage.color.lab2rgb
    ours = lab_to_rgb(lab).permute(0, 2, 3, 1).numpy()
    assert np.abs(ours - reference).max() < 1e-3
    assert torch.allclose(lab_to_rgb(rgb_to_lab(rgb)), rgb, atol=1e-6)


def test_known_values_white_black_and_module_equals_function():
    white_black = torch.tensor([[[[1.0]], [[1.0]], [[1.0]]], [[[0.0]], [[0.0]], [[0.0]]]])
    lab = RgbToLab()(white_black)
    assert torch.allclose(lab[0, :, 0, 0], torch.tensor([100.0, 0.0, 0.0]), atol=1e-2)
    assert torch.allclose(lab[1, :, 0, 0], torch.zeros(3), atol=1e-3)
    assert torch.equal(LabToRgb()(lab), lab_to_rgb(lab))


def test_gradients_are_finite_and_match_finite_differences():
    rgb = (torch.rand(1, 3, 3, 3, dtype=torch.float64) * 0.8 + 0.1).requires_grad_()
    assert torch.autograd.gradcheck(rgb_to_lab, (rgb,))
    lab = rgb_to_lab(rgb.detach()).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: lab_to_rgb(x, clip=False), (lab,))
    zero = torch.zeros(1, 3, 2, 2, requires_grad=True)
    rgb_to_lab(zero).sum().backward()
    assert torch.isfinite(zero.grad).all()


def test_shape_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"rgb: expected shape \(\*, 3, H, W\), got \(1, 4, 2, 2\)"):
        rgb_to_lab(torch.zeros(1, 4, 2, 2))
    with pytest.raises(TypeError, match="lab: expected a torch.Tensor"):
        lab_to_rgb(np.zeros((3, 2, 2)))
