"""Top-k affinity between one target frame and its context frames, global or within a local window.

Both functions return, per target position, the k best reference positions of one context frame as similarity
values and flat indices; the caller merges the candidates of all context frames and mixes their labels.
Memory is bounded by chunking (global) or tiling (local); no full (N_tar, N_ref) matrix is kept.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def topk_global(query: torch.Tensor, key: torch.Tensor, k: int, chunk_size: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
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
        top = sims.float().topk(k, dim=1)
        values.append(top.values)
        indices.append(top.indices)
    return torch.cat(values), torch.cat(indices)


def _window_offsets_mask(tile: int, reach: int, radius: float, device) -> torch.Tensor:
    """(tile^2, (tile + 2 reach)^2) bool: key cell of the window lies within ``radius`` of the query cell."""
    q = torch.arange(tile, device=device)
    kk = torch.arange(tile + 2 * reach, device=device) - reach
    dy = q.view(-1, 1, 1, 1) - kk.view(1, 1, -1, 1)
    dx = q.view(1, -1, 1, 1) - kk.view(1, 1, 1, -1)
    return ((dy**2 + dx**2) <= radius**2).reshape(tile * tile, -1)


def topk_local(query: torch.Tensor, key: torch.Tensor, k: int, radius: float, tile: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
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
    C, h, w = query.shape
    reach = int(math.floor(radius))
    hp, wp = math.ceil(h / tile) * tile, math.ceil(w / tile) * tile
    window = tile + 2 * reach
    q = F.pad(query, (0, wp - w, 0, hp - h))
    q_tiles = F.unfold(q[None].float(), tile, stride=tile)[0].view(C, tile * tile, -1)  # (C, T^2, n)
    kpad = F.pad(key[None].float(), (reach, reach + wp - w, reach, reach + hp - h))
    k_tiles = F.unfold(kpad, window, stride=tile)[0].view(C, window * window, -1)  # (C, W^2, n)
    sims = torch.einsum("cqn,ckn->nqk", q_tiles.to(query.dtype), k_tiles.to(query.dtype)).float()
    # Flat index of every window cell in the unpadded key map, and its validity.
    ys = torch.arange(hp + 2 * reach, device=key.device) - reach
    xs = torch.arange(wp + 2 * reach, device=key.device) - reach
    flat = (ys.view(-1, 1) * w + xs.view(1, -1)).float()
    valid = ((ys >= 0) & (ys < h)).view(-1, 1) & ((xs >= 0) & (xs < w)).view(1, -1)
    flat_tiles = F.unfold(flat[None, None], window, stride=tile)[0].T.long()  # (n, W^2)
    valid_tiles = F.unfold(valid[None, None].float(), window, stride=tile)[0].T > 0.5
    allowed = _window_offsets_mask(tile, reach, radius, key.device)[None] & valid_tiles[:, None, :]
    sims = sims.masked_fill(~allowed, float("-inf"))
    kk = min(k, window * window)
    top = sims.topk(kk, dim=2)  # (n, T^2, kk)
    indices = torch.gather(flat_tiles[:, None, :].expand(-1, tile * tile, -1), 2, top.indices)
    # Tiles back to the padded map, then drop padding rows/cols.
    nty, ntx = hp // tile, wp // tile
    def untile(x: torch.Tensor) -> torch.Tensor:
        x = x.view(nty, ntx, tile, tile, kk).permute(0, 2, 1, 3, 4).reshape(hp, wp, kk)
        return x[:h, :w].reshape(h * w, kk)
    return untile(top.values), untile(indices)
