"""Matching only where labels can change (``context.changing_tiles``) and the tile layout it rests on."""
import pytest
import torch
import torch.nn.functional as F

from correspondence import context as context_module
from correspondence.affinity import (TILE, key_tiles, local_windows, query_grid, query_tiles, tile_runs,
                                     topk_local_tiles, untile)
from correspondence.config import PropagationConfig
from correspondence.context import LABEL_FLOOR, ContextFrame, changing_tiles, make_context, propagate_step


def _features(c, h, w, seed):
    return F.normalize(torch.randn(c, h, w, generator=torch.Generator().manual_seed(seed)), dim=0)


def _object_labels(h, w, box, channels=3, seed=0):
    """Background everywhere except a box of random soft labels over channels 1.. (plus some background)."""
    labels = torch.zeros(channels, h, w)
    labels[0] = 1.0
    y0, y1, x0, x1 = box
    inside = torch.softmax(torch.randn(channels, y1 - y0, x1 - x0, generator=torch.Generator().manual_seed(seed)), 0)
    labels[:, y0:y1, x0:x1] = inside
    return labels


@pytest.mark.parametrize("h,w,tile", [(9, 13, 4), (12, 12, 6), (7, 20, 6)])
def test_untile_puts_the_query_grid_back_in_map_order(h, w, tile):
    grid = query_grid(h, w, tile)
    assert torch.equal(untile(grid.flatten(), h, w, tile), torch.arange(h * w))
    two_columns = torch.stack([grid.flatten(), -grid.flatten()], 1)
    assert torch.equal(untile(two_columns, h, w, tile)[:, 1], -torch.arange(h * w))


def test_tile_runs_by_hand():
    flags = torch.tensor([False, True, True, False, True, False, False, True])
    assert tile_runs(flags) == [slice(1, 3), slice(4, 5), slice(7, 8)]
    assert tile_runs(torch.zeros(4, dtype=torch.bool)) == []
    assert tile_runs(torch.ones(3, dtype=torch.bool)) == [slice(0, 3)]


def test_local_topk_of_some_tiles_equals_those_tiles_of_all():
    h, w = 25, 31
    query, key = _features(8, h, w, 0), _features(8, h, w, 1)
    win = local_windows(h, w, 4.0, 6)
    queries, keys = query_tiles(query, win.query_index), key_tiles(key, win)
    values, indices = topk_local_tiles(queries, keys, win, 3)
    runs = [slice(1, 4), slice(9, 10), slice(12, 20)]
    rows = torch.cat([torch.arange(r.start * 36, r.stop * 36) for r in runs])
    some_values, some_indices = topk_local_tiles(queries, keys, win, 3, runs)
    assert torch.equal(some_values, values[rows]) and torch.equal(some_indices, indices[rows])
    assert topk_local_tiles(queries, keys, win, 3, [])[0].shape == (0, 3)


def test_changing_tiles_cover_every_window_that_reaches_a_labelled_cell():
    h, w, radius = 30, 42, 5.0
    labels = _object_labels(h, w, (12, 13, 20, 21))  # one cell: a window missing any cell shows
    frame = make_context(_features(4, h, w, 0), labels, radius)
    grid = query_grid(h, w, TILE)
    changing = changing_tiles([frame], grid)
    # brute force: a tile changes when one of its query cells lies within radius of a labelled cell
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    labelled = (labels[1:] >= LABEL_FLOOR).any(0)
    ly, lx = ys[labelled].float(), xs[labelled].float()
    near = ((ys.flatten()[:, None] - ly) ** 2 + (xs.flatten()[:, None] - lx) ** 2 <= radius**2).any(1)
    expected = near[grid].any(1)
    assert (changing >= expected).all()  # never skips a tile that may change
    assert changing.sum() < grid.shape[0] / 2  # and skips most of the rest (square windows: a few more)
    # a single-channel label or a labelled globally matched frame: everything changes
    assert changing_tiles([make_context(_features(4, h, w, 0), labels[1:2], radius)], grid).all()
    assert changing_tiles([frame, ContextFrame(_features(4, h, w, 1), labels)], grid).all()
    assert changing_tiles([frame, ContextFrame(_features(4, h, w, 1), _object_labels(h, w, (0, 0, 0, 0)))],
                          grid).equal(changing)


@pytest.mark.parametrize("mixing", ["joint", "average"])
def test_skipping_unchanging_tiles_gives_the_labels_of_full_matching(monkeypatch, mixing):
    h, w = 36, 50
    target = _features(16, h, w, 1)  # context 0's features: its object is found again
    context = [make_context(_features(16, h, w, 1), _object_labels(h, w, (10, 16, 8, 14), seed=1), 6.0),
               make_context(_features(16, h, w, 2), _object_labels(h, w, (12, 18, 10, 17), seed=2), 3.0),
               make_context(_features(16, h, w, 3), _object_labels(h, w, (30, 33, 40, 44), seed=3), 3.0)]
    cfg = PropagationConfig(topk=4, temperature=0.05, context_mixing=mixing)
    sparse = propagate_step(target, context, cfg)
    assert changing_tiles(context, query_grid(h, w, TILE)).float().mean() < 0.6
    monkeypatch.setattr(context_module, "changing_tiles", lambda ctx, grid: torch.ones(grid.shape[0], dtype=torch.bool))
    full = propagate_step(target, context, cfg)
    assert (sparse - full).abs().max() < LABEL_FLOOR
    assert (full[1:].sum(0) > 0.1).sum() >= 36  # the objects do get labels (context 0's box: 36 cells)
