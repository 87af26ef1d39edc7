"""Region-level localization during propagation (``correspondence.track``) and the shifted windows it drives."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from correspondence.affinity import (TILE, key_tiles, local_windows, query_tiles, shifted_runs, topk_local_tiles,
                                     untile)
from correspondence.config import PropagationConfig
from correspondence.context import label_centre, shift_tile_flags, tile_shift
from correspondence.labels import PixelFeatures, index_to_soft, soft_to_index
from correspondence.propagate import propagate_labels
from correspondence import track
from correspondence.track import find_object, matched_mass, CoarseFrame

H, W, SIDE = 96, 192, 16  # frame and object size (pixels): 24 x 48 cells at stride 4


def _background(seed=0):
    """A static texture of random 8 x 8 px blocks in muted greens and blues."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(40, 140, (H // 8, W // 8, 3)).astype(np.uint8)
    blocks[..., 0] //= 3  # little red: the object is the only red thing
    return blocks.repeat(8, 0).repeat(8, 1)


def _object():
    """A red and yellow 16 x 16 px checkerboard."""
    yy, xx = np.mgrid[:SIDE, :SIDE]
    return np.where(((yy // 4 + xx // 4) % 2 == 0)[..., None], [230, 30, 30], [240, 220, 40]).astype(np.uint8)


def _clip(positions, seed=0, noise=0):
    """Frames (T, H, W, 3) with the object's top-left corner at each (y, x) (None = absent) and masks (T, H, W)."""
    rng = np.random.default_rng(seed + 1)
    frames, masks = [], []
    for position in positions:
        frame, mask = _background(seed).copy(), np.zeros((H, W), np.int64)
        if position is not None:
            y, x = position
            frame[y:y + SIDE, x:x + SIDE], mask[y:y + SIDE, x:x + SIDE] = _object(), 1
        if noise:
            frame = np.clip(frame.astype(int) + rng.integers(-noise, noise + 1, frame.shape), 0, 255).astype(np.uint8)
        frames.append(frame)
        masks.append(mask)
    return np.stack(frames), np.stack(masks)


def _cfg(**changes):
    base = dict(context_previous=2, topk=3, radius=3.0, temperature=0.01, use_bf16=False, pixel_stride=4)
    return PropagationConfig(**{**base, **changes})


def _iou(pred, gt):
    union = ((pred > 0) | (gt > 0)).sum()
    return 1.0 if union == 0 else ((pred > 0) & (gt > 0)).sum() / union


def _predict(frames, masks, cfg):
    labels = propagate_labels(list(frames), index_to_soft(masks[0], 2), PixelFeatures(4), cfg)
    return labels, np.stack([soft_to_index(lab) for lab in labels])


def test_localization_recovers_a_translation_larger_than_the_window():
    # 80 px = 20 cells at stride 4, against a 3-cell window: without localization the object is lost
    frames, masks = _clip([(40, 24), (40, 104), (40, 104)])
    _, found = _predict(frames, masks, _cfg())
    _, blind = _predict(frames, masks, _cfg(localize=False))
    assert _iou(found[1], masks[1]) > 0.8, _iou(found[1], masks[1])
    assert _iou(blind[1], masks[1]) < 0.1


def test_find_object_puts_the_blob_at_the_matched_mass():
    # the slow obvious way: the coarse target is the memory frame rolled by a known shift
    g = torch.Generator().manual_seed(0)
    feats = F.normalize(torch.randn(8, 12, 24, generator=g), dim=0)
    mass = torch.zeros(12, 24)
    mass[3:6, 4:7] = 1.0
    target = torch.roll(feats, shifts=(4, 13), dims=(1, 2))
    matched = matched_mass(target, (CoarseFrame(feats, mass),), None, k=1, temperature=0.01)
    sighting = find_object(matched, size=3.0)
    assert torch.allclose(sighting.centre, torch.tensor([8.0, 18.0]), atol=0.3), sighting.centre
    assert sighting.score > 0.9


def test_window_centring_is_the_identity_for_a_static_scene():
    frames, masks = _clip([(40, 80)] * 8, noise=6)
    on, _ = _predict(frames, masks, _cfg())
    off, _ = _predict(frames, masks, _cfg(localize=False))
    assert torch.equal(on, off)


@pytest.mark.parametrize("similarity", ["cosine", "distance"])
def test_a_bird_that_leaves_for_ten_frames_is_found_within_three_frames_of_its_return(similarity):
    # visible for 8 frames (moving right 8 px a frame), absent for 10, back elsewhere, moving left
    positions = [(40, 16 + 8 * t) for t in range(8)] + [None] * 10 + [(24, 150 - 8 * t) for t in range(10)]
    frames, masks = _clip(positions)
    labels, pred = _predict(frames, masks, _cfg(pixel_similarity=similarity))
    assert all(_iou(pred[t], masks[t]) > 0.6 for t in range(1, 8))
    back = 18
    first_found = next(t for t in range(back, len(positions)) if _iou(pred[t], masks[t]) > 0.5)
    assert first_found <= back + 2, first_found
    assert all(_iou(pred[t], masks[t]) > 0.5 for t in range(first_found, len(positions)))


def _with_lookalike(frames, at, since):
    """The frames with a copy of the object pasted at ``at`` (y, x) from frame ``since`` on (not in the masks)."""
    frames = frames.copy()
    y, x = at
    frames[since:, y:y + SIDE, x:x + SIDE] = _object()
    return frames


@pytest.mark.parametrize("uniform", [False, True])
def test_a_bird_that_flies_out_is_refound_where_it_left_not_on_a_lookalike(uniform, monkeypatch):
    # right 8 px a frame to the right border, out for 4 frames, back at the border flying left; from the frame it
    # left, a look-alike sits still in the far corner. Searching the whole frame alike (the refind prior made
    # uniform) takes the look-alike as soon as the bird is gone, and keeps it.
    if uniform:
        monkeypatch.setattr(track, "REFIND_SPREAD", 1e6)
    positions = [(40, 120 + 8 * t) for t in range(8)] + [None] * 4 + [(40, 176 - 8 * t) for t in range(8)]
    frames, masks = _clip(positions)
    frames = _with_lookalike(frames, (4, 4), since=8)
    _, pred = _predict(frames, masks, _cfg())
    on_lookalike = [(pred[t, 4:20, 4:20] > 0).mean() for t in range(8, len(positions))]
    back = [_iou(pred[t], masks[t]) for t in range(13, len(positions))]
    if uniform:
        assert max(on_lookalike) > 0.5, on_lookalike
    else:
        assert max(on_lookalike) == 0, on_lookalike
        assert all(pred[t].max() == 0 for t in range(8, 12))
        assert min(back) > 0.6, back


def test_a_bird_that_comes_back_far_from_where_it_left_is_found_within_refind_patience():
    # still at the left for 4 frames, out for 6, back at the right border (154 px away) for good
    positions = [(40, 16)] * 4 + [None] * 6 + [(40, 170)] * 30
    frames, masks = _clip(positions)
    _, pred = _predict(frames, masks, _cfg())
    found = [t for t in range(10, len(positions)) if _iou(pred[t], masks[t]) > 0.6]
    assert found and found[0] - 3 <= track.REFIND_PATIENCE, found  # the last frame seen: 3
    assert found == list(range(found[0], len(positions)))


def test_frames_without_the_object_are_reported_empty():
    positions = [(40, 40)] * 4 + [None] * 4
    frames, masks = _clip(positions)
    labels, pred = _predict(frames, masks, _cfg())
    for t in range(4, 8):
        assert pred[t].max() == 0
        assert torch.equal(labels[t][0], torch.ones(H, W)) and labels[t][1:].abs().max() == 0


def _topk_shifted_reference(query, key, k, radius, shift):
    """Loop over query cells: the k best key cells within ``radius`` of the query cell moved back by ``shift``
    whole tiles; none when that tile lies off the (whole-tile) map."""
    C, h, w = query.shape
    tiles_y, tiles_x = math.ceil(h / TILE), math.ceil(w / TILE)
    values = torch.full((h * w, k), float("-inf"))
    for y in range(h):
        for x in range(w):
            if not (0 <= y // TILE - shift[0] < tiles_y and 0 <= x // TILE - shift[1] < tiles_x):
                continue
            cy, cx = y - shift[0] * TILE, x - shift[1] * TILE
            sims = []
            for ky in range(h):
                for kx in range(w):
                    if (ky - cy) ** 2 + (kx - cx) ** 2 <= radius**2:
                        sims.append(float(query[:, y, x] @ key[:, ky, kx]))
            best = sorted(sims, reverse=True)[:k]
            values[y * w + x, :len(best)] = torch.tensor(best)
    return values


@pytest.mark.parametrize("shift", [(0, 0), (1, -2), (-1, 1), (3, 0)])
def test_shifted_local_topk_equals_the_loop_reference(shift):
    h, w, radius, k = 13, 20, 2.5, 3
    g = torch.Generator().manual_seed(1)
    query, key = F.normalize(torch.randn(5, h, w, generator=g), dim=0), F.normalize(torch.randn(5, h, w, generator=g), 0)
    win = local_windows(h, w, radius, TILE)
    values, _ = topk_local_tiles(query_tiles(query, win.query_index), key_tiles(key, win), win, k, None, shift)
    # the tiled kernel centres each query tile's window on its tile moved by whole tiles: so does the reference
    expected = _topk_shifted_reference(query, key, k, radius, shift)
    got = untile(values, h, w)
    assert torch.equal(got.isinf(), expected.isinf())
    finite = expected.isfinite()
    assert torch.allclose(got[finite], expected[finite], atol=1e-5), (got[finite] - expected[finite]).abs().max()


def test_shifted_runs_cover_the_run_in_query_order():
    tiles_y, tiles_x = 3, 5
    for shift in [(0, 0), (0, 2), (1, -1), (-2, 4), (5, 0), (-1, 0), (2, 0)]:
        pairs = shifted_runs(slice(2, 13), shift, tiles_y, tiles_x)
        queries = [q for query, _ in pairs for q in range(query.start, query.stop)]
        assert queries == list(range(2, 13))
        for query, key in pairs:
            for offset, q in enumerate(range(query.start, query.stop)):
                ky, kx = q // tiles_x - shift[0], q % tiles_x - shift[1]
                on_map = 0 <= ky < tiles_y and 0 <= kx < tiles_x
                assert (key is not None) == on_map
                if key is not None:
                    assert key.start + offset == ky * tiles_x + kx


def test_shift_tile_flags_and_tile_shift_by_hand():
    flags = torch.zeros(3 * 4, dtype=torch.bool)
    flags[1 * 4 + 2] = True  # tile (1, 2)
    moved = shift_tile_flags(flags, (1, -2), 3, 4).view(3, 4)
    assert moved[2, 0] and moved.sum() == 1
    assert not shift_tile_flags(flags, (2, 0), 3, 4).any()
    assert tile_shift(torch.tensor([10.0, 10.0]), torch.tensor([12.9, 3.0])) == (0, -1)
    assert tile_shift(None, torch.tensor([1.0, 1.0])) == (0, 0)
    # with slack, only the motion beyond it moves the windows: 14 cells, slack 6 -> 8 cells -> 1 tile; 8 -> 2 -> none
    assert tile_shift(torch.tensor([0.0, 0.0]), torch.tensor([-14.0, 8.0]), 6, slack=6.0) == (-1, 0)
    assert tile_shift(torch.tensor([0.0, 0.0]), torch.tensor([26.0, -5.9]), 6, slack=6.0) == (3, 0)


def test_label_centre_is_one_rule_for_masks_and_heatmaps():
    labels = torch.zeros(3, 10, 10)
    labels[0] = 1.0
    labels[:, 2, 7] = torch.tensor([0.0, 0.5, 0.5])  # two parts in one cell
    assert torch.allclose(label_centre(labels), torch.tensor([2.0, 7.0]))
    assert label_centre(torch.eye(3)[0].view(3, 1, 1).expand(3, 4, 4)) is None  # background only


def test_keypoint_heatmaps_follow_the_same_jump():
    # one code path: two Gaussian keypoint heatmaps on the object travel with it like a mask does
    frames, masks = _clip([(40, 24), (40, 104), (40, 104)])
    ys, xs = torch.meshgrid(torch.arange(H).float(), torch.arange(W).float(), indexing="ij")
    points = [(44.0, 28.0), (52.0, 36.0)]  # (y, x) on the object in frame 0
    heat = torch.stack([torch.exp(-((ys - y) ** 2 + (xs - x) ** 2) / (2 * 4.0**2)) for y, x in points])
    labels0 = torch.cat([(1 - heat.sum(0)).clamp_min(0)[None], heat])
    labels0 = labels0 / labels0.sum(0, keepdim=True)
    out = propagate_labels(list(frames), labels0, PixelFeatures(4), _cfg())
    for channel, (y, x) in enumerate(points, start=1):
        peak = divmod(int(out[1, channel].argmax()), W)
        assert abs(peak[0] - y) <= 4 and abs(peak[1] - (x + 80)) <= 4, (channel, peak)
