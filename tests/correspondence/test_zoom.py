"""Propagation in zoomed windows that follow a small object (``correspondence.zoom``)."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from correspondence.config import PropagationConfig
from correspondence.labels import PixelFeatures, index_to_soft, soft_to_index
from correspondence.propagate import iter_propagate, propagate_labels
from correspondence.zoom import crop_labels, crop_window, keep_central_blob, uncrop_labels, zoom_window

H, W = 60, 90


def _ramp_labels():
    """(2, H, W) labels whose object channel is a linear function of the pixel centre (k + 0.5): bilinear
    resampling reproduces it exactly, so every sample can be checked against the formula."""
    ys, xs = np.mgrid[:H, :W] + 0.5
    ramp = torch.tensor(0.2 + 0.004 * ys + 0.005 * xs, dtype=torch.float32)
    return torch.stack([1 - ramp, ramp]), lambda y, x: 0.2 + 0.004 * y + 0.005 * x


def test_window_samples_the_frame_where_its_geometry_says():
    labels, ramp = _ramp_labels()
    centre, side, size = torch.tensor([27.3, 41.9]), 16.0, 40  # zoom 2.5 at a centre between pixels
    window = crop_labels(labels, centre, side, size)
    j = np.arange(size) + 0.5
    ys, xs = np.meshgrid(27.3 - side / 2 + j * side / size, 41.9 - side / 2 + j * side / size, indexing="ij")
    # bilinear between pixel centres: exact for a ramp, in pixel-index coordinates (centre at k + 0.5 -> k)
    np.testing.assert_allclose(window[1].numpy(), ramp(ys, xs), atol=1e-5)
    np.testing.assert_allclose(window.sum(0).numpy(), 1.0, atol=1e-5)
    image = crop_window(labels[None], centre, side, size)[0]
    np.testing.assert_allclose(image.numpy(), window.numpy(), atol=1e-5)


def test_window_labels_go_back_to_their_place_and_background_elsewhere():
    labels, ramp = _ramp_labels()
    centre, side, size = torch.tensor([30.0, 45.0]), 20.0, 50
    window = crop_labels(labels, centre, side, size)
    back = uncrop_labels(window, centre, side, (H, W), (H // 2, W // 2))  # cells of 2 x 2 pixels
    cy, cx = np.mgrid[:H // 2, :W // 2] * 2.0 + 1.0  # cell centres, pixel coordinates
    inside = (np.abs(cy - 30) < side / 2 - 1) & (np.abs(cx - 45) < side / 2 - 1)
    outside = (np.abs(cy - 30) > side / 2 + 1) | (np.abs(cx - 45) > side / 2 + 1)
    np.testing.assert_allclose(back[1].numpy()[inside], ramp(cy, cx)[inside], atol=1e-4)
    assert back[1].numpy()[outside].max() == 0 and back[0].numpy()[outside].min() == 1
    np.testing.assert_allclose(back.sum(0).numpy(), 1.0, atol=1e-5)


def _labels_with_square(extent, frame=(200, 300)):
    mask = np.zeros(frame, np.int64)
    mask[50:50 + extent, 60:60 + extent] = 1
    return index_to_soft(mask, 2)


@pytest.mark.parametrize("extent, expected", [(20, (128, 128 / 3, 1)), (30, (128, 60.0, 2)), (60, None)])
def test_zoom_window_zooms_small_objects_within_its_limits(extent, expected):
    cfg = PropagationConfig(zoom=True, zoom_size=130, zoom_padding=2.0, zoom_min=1.5, zoom_max=3.0)
    window = zoom_window(_labels_with_square(extent), cfg, stride=4)  # size: 130 -> 128, a multiple of 4
    if expected is None:  # 120 px of window for 128: less than 1.5x zoom, not worth it
        assert window is None
    else:
        assert (window.size, window.side, window.out_stride) == pytest.approx(expected)
    assert zoom_window(_labels_with_square(extent), PropagationConfig(zoom=False), 4) is None
    assert zoom_window(_labels_with_square(extent), PropagationConfig(zoom=True, localize=False), 4) is None


def _flying_clip(steps=8, speed=11, side=10):
    """A small red / yellow checkerboard crossing a textured background at ``speed`` px per frame, and its masks."""
    rng = np.random.default_rng(3)
    background = rng.integers(40, 140, (128 // 8, 256 // 8, 3)).astype(np.uint8).repeat(8, 0).repeat(8, 1)
    background[..., 0] //= 3
    yy, xx = np.mgrid[:side, :side]
    bird = np.where(((yy // 2 + xx // 2) % 2 == 0)[..., None], [230, 30, 30], [240, 220, 40]).astype(np.uint8)
    frames, masks = [], []
    for t in range(steps):
        y, x = 50 + 2 * t, 20 + speed * t
        frame, mask = background.copy(), np.zeros((128, 256), np.int64)
        frame[y:y + side, x:x + side], mask[y:y + side, x:x + side] = bird, 1
        frames.append(frame)
        masks.append(mask)
    return frames, masks


def test_zoomed_propagation_follows_a_small_fast_object_on_a_finer_grid():
    frames, masks = _flying_clip()
    cfg = PropagationConfig(context_previous=2, topk=3, radius=3.0, temperature=0.01, pixel_stride=4, zoom=True,
                            zoom_size=64, zoom_padding=2.0, zoom_max=3.0)
    stream = list(iter_propagate(frames, index_to_soft(masks[0], 2), PixelFeatures(4), cfg))
    assert all(labels.shape == (2, 128, 256) for labels in stream)  # 64 px for 21.3: 1-px cells, not 4
    ious = {}
    for zoom in (True, False):  # 10 px = 2.5 cells of the plain grid: its edges blur, its checkers are lost
        labels = propagate_labels(frames, index_to_soft(masks[0], 2), PixelFeatures(4), replace(cfg, zoom=zoom))
        predicted, truth = np.stack([soft_to_index(lab) for lab in labels[1:]]) > 0, np.stack(masks[1:]) > 0
        ious[zoom] = (predicted & truth).sum((1, 2)) / (predicted | truth).sum((1, 2))
    assert ious[True].min() > 0.8, ious[True]  # measured 0.85-1.0
    assert ious[True].mean() > ious[False].mean() + 0.1, ious  # measured 0.93 vs 0.71


def test_zoom_window_leaves_an_object_whose_window_exceeds_the_frame():
    cfg = PropagationConfig(zoom=True, zoom_size=512, zoom_padding=2.0, zoom_min=1.5, zoom_max=3.0)
    # 50 px: twice that fits a 200-px tall frame (zoom 5.1, capped at 3: a 171-px window); a 90-px tall one it does not
    assert zoom_window(_labels_with_square(50, frame=(200, 300)), cfg, 4).side == pytest.approx(512 / 3)
    assert zoom_window(_labels_with_square(50, frame=(90, 300)), cfg, 4) is None


def test_zoom_window_measures_the_object_in_frame_pixels():
    # a mask at twice the frames' resolution (``correspondence.propagate --mask`` of a video read at max_side)
    cfg = PropagationConfig(zoom=True, zoom_size=128, zoom_padding=2.0, zoom_min=1.5, zoom_max=5.0)
    window = zoom_window(_labels_with_square(40, frame=(200, 300)), cfg, 4, frame_hw=(100, 150))
    assert window.side == pytest.approx(2.0 * 20)


def test_an_object_smaller_than_a_cell_is_still_tracked():
    frames, masks = _flying_clip(steps=3, speed=4, side=10)
    masks[0] = np.zeros_like(masks[0])
    masks[0][52:54, 25:27] = 1  # 2 x 2 px of the bird: a quarter of a 4-px cell at most
    cfg = PropagationConfig(context_previous=2, topk=3, radius=3.0, temperature=0.01, pixel_stride=4, zoom=True,
                            zoom_size=64, zoom_padding=2.0, zoom_max=3.0)
    labels = propagate_labels(frames, index_to_soft(masks[0], 2), PixelFeatures(4), cfg)
    assert labels.shape == (3, 2, 128, 256) and torch.isfinite(labels).all()


def _parts_window(blobs, r=64):
    """(3, r, r) soft labels (background, two parts): each blob (y0, y1, x0, x1, part) a block of that part at 0.9,
    the rest of its mass background; a faint 0.2 haze of part 1 over the whole window."""
    labels = torch.zeros(3, r, r)
    labels[0], labels[1] = 0.8, 0.2
    for y0, y1, x0, x1, part in blobs:
        labels[:, y0:y1, x0:x1] = 0.0
        labels[0, y0:y1, x0:x1], labels[part, y0:y1, x0:x1] = 0.1, 0.9
    return labels


def test_keep_central_blob_drops_a_look_alike_and_keeps_a_detached_wing():
    body, wing = (26, 38, 24, 40, 1), (28, 34, 44, 56, 2)  # the wing 4 cells right of the body: within the gap
    look_alike = (50, 60, 4, 14, 1)  # a confident blob 12+ cells from both, off the window's centre
    labels = _parts_window([body, wing, look_alike])
    out = keep_central_blob(labels, gap=6)
    # kept: within 3 cells (4-connected steps: |dy| + |dx|) of the body or the wing, by brute force
    ys, xs = np.mgrid[:64, :64]
    kept_blobs = [(y, x) for y0, y1, x0, x1, _ in (body, wing) for y in range(y0, y1) for x in range(x0, x1)]
    keep = torch.from_numpy(np.min([np.abs(ys - y) + np.abs(xs - x) for y, x in kept_blobs], axis=0) <= 3)
    torch.testing.assert_close(out.sum(0), torch.ones(64, 64))
    torch.testing.assert_close(out[:, keep], labels[:, keep])  # untouched, the faint fringe too
    assert (out[0, ~keep] == 1).all() and (out[1:, ~keep] == 0).all()  # the look-alike and the haze: background
    # alone, nothing is dropped; the wing 5 dilation steps away goes with a gap of 3
    single = _parts_window([body])
    torch.testing.assert_close(keep_central_blob(single), single)
    assert (keep_central_blob(labels, gap=3)[2] == 0).all()


def test_keep_central_blob_prefers_the_centre_to_a_larger_blob_at_the_border():
    centre, border = (28, 36, 28, 36, 1), (0, 14, 50, 64, 1)  # 64 cells of mass at the centre, 196 in a corner
    out = keep_central_blob(_parts_window([centre, border]))
    assert out[1, 28:36, 28:36].min() == pytest.approx(0.9) and (out[1, 0:14, 50:64] == 0).all()
