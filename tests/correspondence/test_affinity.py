import math

import pytest
import torch
import torch.nn.functional as F

from correspondence.affinity import TILES_PER_PRODUCT, TOPK_PARTIAL_SORT, local_windows, topk_global, topk_local


def _features(c, h, w, seed):
    return F.normalize(torch.randn(c, h, w, generator=torch.Generator().manual_seed(seed)), dim=0)


def _brute_force_local(query, key, k, radius):
    """Slow reference: dense similarities, cells farther than radius set to -inf, then top-k."""
    c, h, w = query.shape
    sims = query.flatten(1).T @ key.flatten(1)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    pos = torch.stack([ys.flatten(), xs.flatten()], 1).float()
    dist2 = ((pos[:, None] - pos[None]) ** 2).sum(-1)
    sims = sims.masked_fill(dist2 > radius**2, float("-inf"))
    return sims.topk(k, dim=1)


@pytest.mark.parametrize("h,w,radius", [(9, 13, 3.0), (16, 8, 2.5), (5, 5, 12.0), (30, 29, 2.0), (40, 37, 12.0)])
def test_local_topk_matches_brute_force(h, w, radius):
    query, key = _features(8, h, w, 0), _features(8, h, w, 1)
    if (h, w) == (30, 29):  # the case that cuts the tiles into several products
        assert math.ceil(h / 4) * math.ceil(w / 4) > TILES_PER_PRODUCT
    values, indices = topk_local(query, key, 4, radius, tile=4)
    ref = _brute_force_local(query, key, 4, radius)
    assert torch.allclose(values, ref.values, atol=1e-5)
    # Indices agree where values are distinct (ties may be ordered differently).
    sims = query.flatten(1).T @ key.flatten(1)
    assert torch.allclose(torch.gather(sims, 1, indices), values, atol=1e-5)


@pytest.mark.parametrize("tile,radius", [(6, 12.0), (6, 6.0), (4, 12.0)])
def test_windows_leave_out_only_the_corners_no_query_reaches(tile, radius):
    win = local_windows(40, 50, radius, tile)
    reach = int(radius)
    side = tile + 2 * reach
    wy, wx = torch.meshgrid(torch.arange(side) - reach, torch.arange(side) - reach, indexing="ij")
    qy, qx = torch.meshgrid(torch.arange(tile), torch.arange(tile), indexing="ij")
    d2 = (wy.flatten()[:, None] - qy.flatten()[None]) ** 2 + (wx.flatten()[:, None] - qx.flatten()[None]) ** 2
    reachable = int((d2 <= radius**2).any(1).sum())
    # corners are dropped unless that would leave top-k on too few cells (torch.topk's slower path)
    expected = reachable if reachable >= TOPK_PARTIAL_SORT else side * side
    assert win.flat_index.shape[1] == expected == win.near.shape[1] == win.off_map.shape[2]
    if (tile, radius) == (6, 12.0):
        assert expected == 716


def test_local_topk_never_returns_a_cell_outside_the_radius():
    h, w, radius = 12, 10, 2.0
    values, indices = topk_local(_features(4, h, w, 2), _features(4, h, w, 3), 13, radius, tile=8)
    q = torch.arange(h * w)
    dy = (indices // w - (q // w)[:, None]).float()
    dx = (indices % w - (q % w)[:, None]).float()
    finite = torch.isfinite(values)
    assert ((dy**2 + dx**2)[finite] <= radius**2).all()
    assert finite.sum(1).min() == 6  # a corner cell: (0,0) (0,1) (0,2) (1,0) (2,0) (1,1) within radius 2


def test_global_topk_matches_dense_and_is_chunk_independent():
    query, key = _features(6, 7, 5, 4).flatten(1), _features(6, 4, 6, 5).flatten(1)
    dense = (query.T @ key).topk(3, dim=1)
    for chunk in (1, 7, 1000):
        values, indices = topk_global(query, key, 3, chunk)
        assert torch.allclose(values, dense.values) and torch.equal(indices, dense.indices)


def test_identical_frames_match_each_position_to_itself():
    feat = _features(32, 6, 7, 6)
    values, indices = topk_local(feat, feat, 1, 3.0)
    assert torch.equal(indices[:, 0], torch.arange(42))
    assert torch.allclose(values[:, 0], torch.ones(42), atol=1e-5)
    assert math.isclose(topk_global(feat.flatten(1), feat.flatten(1), 1)[0].min().item(), 1.0, abs_tol=1e-5)
