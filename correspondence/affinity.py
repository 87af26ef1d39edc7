"""Top-k affinity between one target frame and its context frames, global or within a local window.

Both functions return, per target position, the k best reference positions of one context frame as similarity
values and flat indices; the caller merges the candidates of all context frames and mixes their labels.
Memory is bounded by chunking (global) or tiling (local); no full (N_tar, N_ref) matrix is kept. Local matching
works on tiles of target positions (``query_grid``), any subset of them (``tile_runs``), in tile order (``untile``).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def topk_global(query: torch.Tensor, key: torch.Tensor, k: int,
                chunk_size: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k cosine similarities of every query position over all key positions.

    Args:
        query: (C, N_q) L2-normalized target features.
        key: (C, N_k) L2-normalized reference features.
        k: candidates kept (clipped to N_k).
        chunk_size: query positions per matrix product (memory ~ chunk_size * N_k floats).
    Returns:
        values (N_q, k) and flat key indices (N_q, k) int64.
    """
    k = min(k, key.shape[1])
    values, indices = [], []
    for start in range(0, query.shape[1], chunk_size):
        sims = query[:, start:start + chunk_size].transpose(0, 1) @ key  # (chunk, N_k)
        top = sims.topk(k, dim=1)
        values.append(top.values.float())
        indices.append(top.indices)
    return torch.cat(values), torch.cat(indices)


# Query tile side of local matching. Each query of a tile is compared with the whole (tile + 2 r)^2 window around
# the tile, so smaller tiles waste fewer comparisons but make smaller, less efficient matrix products: on a 60 x 107
# map (480p, stride 8) with 64-d features, one target frame against 8 context frames takes 72 ms with 6, 84 ms with
# 8, 82 ms with 7 and 95 ms with 4 (2-core AVX2 CPU).
TILE = 6
# Tiles per matrix product in ``topk_local_tiles``: the similarities of a few tiles stay in cache between the
# product, the mask and the top-k. Raw pixels at stride 4 (120 x 214 map, 27-d) against one context frame: 94 ms
# all tiles at once, 52 ms by 16 or 32 tiles, 76 ms by 128; learned features at stride 8: 23 -> 21 ms (2-core AVX2).
TILES_PER_PRODUCT = 32
# Windows keep their unreachable corners when fewer cells than this would remain: torch.topk on CPU sorts partially
# only when k * 64 <= n, and its other path is 2x slower (top-5 of 268 cells 1.0 ms, of 324 cells 0.48 ms per 32
# tiles, measured), so trimming a radius-6 window (324 -> 268 cells) made matching 1.3x slower. Without the corners
# a radius-12 window (900 -> 716 cells) gives identical similarities 1.34x faster on raw pixels at stride 4 and 1.23x
# on learned features (bench/local_matching.py, 2-core Intel Xeon AVX-512-BF16).
TOPK_PARTIAL_SORT = 64 * 5


@dataclass(frozen=True)
class LocalWindows:
    """Geometry of tiled local matching on an h x w map, shared by every frame of that size.

    Fields:
        h, w, tile, reach: map size, query tile side, window margin (floor of the radius), in cells.
        flat_index: (n, M) int64 index into h * w of every window cell of every tile: the M cells of the
            (tile + 2 reach)^2 square within the radius of some query cell of the tile (its corners, which no
            query reaches, are left out: 716 of 900 cells for tile 6, radius 12; ``TOPK_PARTIAL_SORT``); cells
            outside the map point at 0 and are masked by ``off_map``.
        query_index: (n, T^2) int64 index into h * w of every query cell of every tile (``query_grid``).
        near: (T^2, M) float 0 where the window cell lies within the radius of the query cell, -inf elsewhere
            (T^2 = tile * tile queries per tile; the same for every tile).
        off_map: (n, 1, M) float 0 where the window cell lies inside the map, -inf outside. Two broadcast terms
            instead of one (n, T^2, M) mask: 2 MB instead of 93 MB on a 120 x 214 map, at the same speed.
    """

    h: int
    w: int
    tile: int
    reach: int
    flat_index: torch.Tensor
    query_index: torch.Tensor
    near: torch.Tensor
    off_map: torch.Tensor


@functools.lru_cache(maxsize=8)
def query_grid(h: int, w: int, tile: int = TILE, device: str = "cpu") -> torch.Tensor:
    """(n, T^2) int64 index into h * w of every query cell of every ``tile`` x ``tile`` tile of an h x w map, tiles
    in row-major order; the map is padded up to whole tiles and padding cells repeat the last row / column (their
    results are dropped by ``untile``)."""
    hp, wp = math.ceil(h / tile) * tile, math.ceil(w / tile) * tile
    qy, qx = torch.arange(hp, device=device).clamp_max(h - 1), torch.arange(wp, device=device).clamp_max(w - 1)
    query_flat = (qy.view(-1, 1) * w + qx.view(1, -1)).double()
    return F.unfold(query_flat[None, None], tile, stride=tile)[0].T.long()


def untile(x: torch.Tensor, h: int, w: int, tile: int = TILE) -> torch.Tensor:
    """Rows in tile order (``query_grid``) -> rows in map order: (n * T^2, *rest) -> (h * w, *rest)."""
    hp, wp = math.ceil(h / tile) * tile, math.ceil(w / tile) * tile
    rest = x.shape[1:]
    x = x.reshape(hp // tile, wp // tile, tile, tile, *rest).transpose(1, 2).reshape(hp, wp, *rest)
    return x[:h, :w].reshape(h * w, *rest)


@functools.lru_cache(maxsize=8)
def local_windows(h: int, w: int, radius: float, tile: int = TILE, device: str = "cpu") -> LocalWindows:
    """The (cached) window geometry of ``topk_local`` for an h x w map and a radius > 0."""
    reach = int(math.floor(radius))
    hp, wp = math.ceil(h / tile) * tile, math.ceil(w / tile) * tile
    window = tile + 2 * reach
    ys = torch.arange(hp + 2 * reach, device=device) - reach
    xs = torch.arange(wp + 2 * reach, device=device) - reach
    flat = (ys.view(-1, 1) * w + xs.view(1, -1)).double()
    valid = ((ys >= 0) & (ys < h)).view(-1, 1) & ((xs >= 0) & (xs < w)).view(1, -1)
    flat_tiles = F.unfold(flat[None, None], window, stride=tile)[0].T.long()  # (n, W^2)
    valid_tiles = F.unfold(valid[None, None].float(), window, stride=tile)[0].T > 0.5
    q = torch.arange(tile, device=device)
    kk = torch.arange(window, device=device) - reach
    dy = q.view(-1, 1, 1, 1) - kk.view(1, 1, -1, 1)
    dx = q.view(1, -1, 1, 1) - kk.view(1, 1, 1, -1)
    near = ((dy**2 + dx**2) <= radius**2).reshape(tile * tile, -1)
    reachable = near.any(0)  # (W^2,): no product, mask or top-k for the window's corners
    if int(reachable.sum()) >= TOPK_PARTIAL_SORT:
        flat_tiles, valid_tiles, near = flat_tiles[:, reachable], valid_tiles[:, reachable], near[:, reachable]
    near_bias = torch.zeros(near.shape, device=device).masked_fill_(~near, float("-inf"))
    off_map = torch.zeros(valid_tiles.shape, device=device).masked_fill_(~valid_tiles, float("-inf"))[:, None]
    flat_tiles = torch.where(valid_tiles, flat_tiles, torch.zeros_like(flat_tiles))
    return LocalWindows(h, w, tile, reach, flat_tiles, query_grid(h, w, tile, device), near_bias, off_map)


def key_tiles(key: torch.Tensor, win: LocalWindows) -> torch.Tensor:
    """Key features gathered into the windows of ``win``: (C, h, w) -> (n, C, M), in key's dtype.

    Computed once per context frame and reused for every target that frame serves. The gather copies whole rows
    (each window cell's C features) and the result is their transposed view: transposing the copy would cost 4x
    the gather (101 vs 27 ms on a 60 x 107 map, 91 channels, 2-core AVX2 CPU) while a float32 matrix product
    takes the transposed operand at almost no cost. bfloat16 matrix products with transposed operands are slow on
    CPU, so bfloat16 keys are made contiguous in (n, C, M).
    """
    rows = key.flatten(1).T.contiguous().index_select(0, win.flat_index.flatten())  # (n M, C): row gathers
    tiles = rows.view(*win.flat_index.shape, -1).transpose(1, 2)
    return tiles.contiguous() if key.dtype == torch.bfloat16 else tiles


def query_tiles(query: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Query features gathered into the tiles of a (n, T^2) ``query_grid``: (C, h, w) -> (n, T^2, C)."""
    return query.flatten(1).T.contiguous().index_select(0, grid.flatten()).view(*grid.shape, -1)


def tile_runs(selected: torch.Tensor) -> list[slice]:
    """(n,) bool over tiles -> the runs of consecutive selected tiles as slices (views, not copies, of tiled
    tensors: a selected region is mostly a few runs per row of tiles)."""
    edge = torch.zeros(1, dtype=torch.int8)
    flags = torch.cat([edge, selected.to(torch.int8).cpu(), edge])
    edges = torch.nonzero(flags.diff()).flatten().tolist()
    return [slice(start, stop) for start, stop in zip(edges[0::2], edges[1::2])]


def shifted_runs(run: slice, shift: tuple[int, int], tiles_y: int, tiles_x: int) -> list[tuple[slice, slice | None]]:
    """Pair the query tiles of ``run`` with the key tiles ``shift`` = (dy, dx) tiles away (query tile (i, j) uses
    key tile (i - dy, j - dx): the context frame's window centred where the object came from), in query order.

    Returns:
        (query slice, key slice) pairs of equal length; key None where the key tiles lie off the map (no
        candidates). A zero shift gives [(run, run)].
    """
    if shift == (0, 0):
        return [(run, run)]
    dy, dx = shift
    pairs = []
    if dx == 0:  # whole rows move: one contiguous piece on the map, the rest off it
        lo = min(max(run.start, dy * tiles_x), run.stop)
        hi = max(min(run.stop, (tiles_y + dy) * tiles_x), lo)
        for a, b, on_map in ((run.start, lo, False), (lo, hi, True), (hi, run.stop, False)):
            if b > a:
                pairs.append((slice(a, b), slice(a - dy * tiles_x, b - dy * tiles_x) if on_map else None))
        return pairs
    for row in range(run.start // tiles_x, (run.stop - 1) // tiles_x + 1):
        start, stop = max(run.start, row * tiles_x), min(run.stop, (row + 1) * tiles_x)
        key_row = row - dy
        if not 0 <= key_row < tiles_y:
            pairs.append((slice(start, stop), None))
            continue
        col0, col1 = start - row * tiles_x, stop - row * tiles_x
        lo, hi = min(max(col0, dx), col1), max(min(col1, tiles_x + dx), col0)  # columns whose key lies on the map
        for a, b, on_map in ((col0, lo, False), (lo, hi, True), (hi, col1, False)):
            if b > a:
                key = slice(key_row * tiles_x + a - dx, key_row * tiles_x + b - dx) if on_map else None
                pairs.append((slice(row * tiles_x + a, row * tiles_x + b), key))
    return pairs


def topk_local_tiles(queries: torch.Tensor, keys: torch.Tensor, win: LocalWindows, k: int,
                     runs: list[slice] | None = None,
                     shift: tuple[int, int] = (0, 0)) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k within the radius, from pre-cut tiles (``query_tiles``, ``key_tiles``), for the tiles of ``runs``
    (default: all), each query tile against the key tile ``shift`` = (dy, dx) tiles away (``shifted_runs``).

    Returns:
        values (N, k) (masked candidates are -inf; all of a row's where its key tile lies off the map) and flat key
        indices (N, k) int64 into h * w, rows in tile order (``untile`` puts all tiles' rows in map order),
        N = T^2 x the tiles in ``runs``.
    """
    kk, tile = min(k, keys.shape[2]), win.tile
    tiles_y, tiles_x = math.ceil(win.h / tile), math.ceil(win.w / tile)
    values, indices = [], []
    for run in [slice(0, queries.shape[0])] if runs is None else runs:
        for query_run, key_run in shifted_runs(run, shift, tiles_y, tiles_x):
            if key_run is None:
                rows = (query_run.stop - query_run.start) * tile * tile
                values.append(torch.full((rows, kk), float("-inf"), device=queries.device))
                indices.append(torch.zeros((rows, kk), dtype=torch.long, device=queries.device))
                continue
            offset = key_run.start - query_run.start
            for start in range(query_run.start, query_run.stop, TILES_PER_PRODUCT):
                part = slice(start, min(start + TILES_PER_PRODUCT, query_run.stop))
                key_part = slice(part.start + offset, part.stop + offset)
                # (tiles, T^2, M) float32: bfloat16 products promoted by the first (broadcast) addition
                sims = torch.add(torch.bmm(queries[part], keys[key_part]), win.near).add_(win.off_map[key_part])
                top = sims.topk(kk, dim=2)
                values.append(top.values.reshape(-1, kk))
                window_index = win.flat_index[key_part, None, :].expand(-1, tile * tile, -1)
                indices.append(torch.gather(window_index, 2, top.indices).reshape(-1, kk))
    if not values:
        return queries.new_empty((0, kk), dtype=torch.float32), torch.empty((0, kk), dtype=torch.long)
    return torch.cat(values), torch.cat(indices)


def topk_local(query: torch.Tensor, key: torch.Tensor, k: int, radius: float,
               tile: int = TILE) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k similarities of every query position among key positions within ``radius`` cells (same frame grid).

    The map is cut into ``tile`` x ``tile`` query tiles; each tile is compared with the key window around it
    (one batched matrix product), then cells farther than ``radius`` are masked out.

    Args:
        query, key: (C, h, w) L2-normalized feature maps of the same size.
        k: candidates kept per query position.
        radius: window radius in feature cells (> 0).
    Returns:
        values (h * w, k) (masked candidates are -inf) and flat key indices (h * w, k) int64 into h * w.
    """
    if query.shape != key.shape:
        raise ValueError(f"query/key: expected the same (C, h, w), got {tuple(query.shape)} and {tuple(key.shape)}")
    win = local_windows(query.shape[1], query.shape[2], float(radius), tile, str(query.device))
    values, indices = topk_local_tiles(query_tiles(query, win.query_index), key_tiles(key, win), win, k)
    return untile(values, win.h, win.w, tile), untile(indices, win.h, win.w, tile)
