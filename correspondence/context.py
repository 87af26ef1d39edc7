"""One target frame's labels from its context frames: the first frame and the previous predictions.

Each context frame is matched within its own window (pre-cut once, ``make_context``) or globally; the candidates of
all context frames are merged by one top-k (or averaged per frame, as UVC) and their labels mixed by a softmax over
the similarities. Only tiles of target positions whose candidates may carry a label are matched
(``changing_tiles``).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from .affinity import (TILE, LocalWindows, key_tiles, local_windows, query_grid, query_tiles, tile_runs, topk_global,
                       topk_local_tiles, untile)
from .config import PropagationConfig

# labels below this (channels 1..) count as background when deciding where to match (``changing_tiles``)
LABEL_FLOOR = 1e-3


def mix_candidate_labels(values: torch.Tensor, indices: torch.Tensor, context_labels: torch.Tensor,
                         k: int, temperature: float) -> torch.Tensor:
    """Merge the candidates of all context frames: top-k overall, softmax(sim / temperature), mix labels.

    Args:
        values: (N, M) candidate similarities (-inf = masked), M = sum of per-frame candidates.
        indices: (N, M) flat indices into the stacked context positions.
        context_labels: (C, P) labels of all context positions.
    Returns:
        (C, N) soft labels.
    """
    top = values.topk(min(k, values.shape[1]), dim=1)
    weights = torch.softmax(top.values / temperature, dim=1)  # (N, k)
    chosen = torch.gather(indices, 1, top.indices)
    picked = context_labels[:, chosen]  # (C, N, k)
    return (picked * weights[None]).sum(dim=2)


@dataclass(frozen=True)
class ContextFrame:
    """A frame serving as context: features (C, h, w), soft labels (L, h, w) and, for frames matched within a
    local window, its features pre-cut into windows (``affinity.key_tiles``), computed once, and that window's
    geometry. Its windows can be centred on where its object went in the target (``propagate_step``'s shifts)."""

    features: torch.Tensor
    labels: torch.Tensor
    tiles: torch.Tensor | None = None
    window: LocalWindows | None = None

    @functools.cached_property
    def labelled_tiles(self) -> torch.Tensor:
        """Whether the frame can give a target position a label other than background (see ``changing_tiles``):
        (n,) bool by query tile of its window, or a scalar bool for a globally matched frame; computed once for
        all the targets the frame serves."""
        if self.labels.shape[0] < 2:  # no background channel to tell apart
            labelled = torch.ones(self.labels.shape[1:], dtype=torch.bool, device=self.labels.device).flatten()
        else:
            labelled = (self.labels[1:] >= LABEL_FLOOR).any(dim=0).flatten()  # (h * w,)
        return labelled.any() if self.window is None else labelled[self.window.flat_index].any(dim=1)

    @functools.cached_property
    def centre(self) -> torch.Tensor | None:
        """(2,) float (y, x) centre of the label mass other than background, in cells; None without any."""
        return label_centre(self.labels)


def label_mass(labels: torch.Tensor) -> torch.Tensor:
    """Soft labels (L, h, w), channel 0 background -> (h, w) float mass of the other channels (a single channel:
    its own); one rule for masks, parts and keypoint heatmaps."""
    return (1.0 - labels[0].float()).clamp_min(0) if labels.shape[0] > 1 else labels[0].float()


def label_centre(labels: torch.Tensor) -> torch.Tensor | None:
    """Soft labels (L, h, w), channel 0 background -> (2,) float (y, x) centre of ``label_mass`` in cells (None when
    there is no mass)."""
    mass = label_mass(labels)
    total = float(mass.sum())
    if total <= 1e-6:
        return None
    ys = torch.arange(mass.shape[0], dtype=mass.dtype, device=mass.device)
    xs = torch.arange(mass.shape[1], dtype=mass.dtype, device=mass.device)
    return torch.stack([(mass.sum(1) * ys).sum(), (mass.sum(0) * xs).sum()]).cpu() / total


def tile_shift(source: torch.Tensor | None, target: torch.Tensor | None, tile: int = TILE,
               slack: float = 0.0) -> tuple[int, int]:
    """Whole tiles (dy, dx) from an object's centre in a context frame to its predicted centre in the target
    (cells, (y, x)), of the part of the motion beyond ``slack`` cells per axis (what the window's own reach
    absorbs); (0, 0) when either is unknown. Rounding to tiles leaves windows within half a tile of that centring,
    and a static object (centres within slack + half a tile) is not moved at all."""
    if source is None or target is None:
        return 0, 0
    motion = target - source
    beyond = motion.sign() * (motion.abs() - slack).clamp_min(0.0)
    dy, dx = (beyond / tile).round().tolist()
    return int(dy), int(dx)


def shift_tile_flags(flags: torch.Tensor, shift: tuple[int, int], tiles_y: int, tiles_x: int) -> torch.Tensor:
    """(n,) bool by key tile -> (n,) bool by query tile, query tile (i, j) taking key tile (i - dy, j - dx)'s
    flag (False off the map)."""
    if shift == (0, 0):
        return flags
    dy, dx = shift
    grid = flags.view(tiles_y, tiles_x)
    out = torch.zeros_like(grid)
    ys, xs = slice(max(dy, 0), tiles_y + min(dy, 0)), slice(max(dx, 0), tiles_x + min(dx, 0))
    src_ys, src_xs = slice(max(-dy, 0), tiles_y - max(dy, 0)), slice(max(-dx, 0), tiles_x - max(dx, 0))
    if ys.stop > ys.start and xs.stop > xs.start:
        out[ys, xs] = grid[src_ys, src_xs]
    return out.flatten()


def make_context(features: torch.Tensor, labels: torch.Tensor, radius: float) -> ContextFrame:
    """Wrap a frame for the context queue, cutting its windows once when it will be matched locally (radius > 0,
    in feature cells; otherwise it is matched globally)."""
    if radius <= 0:
        return ContextFrame(features, labels)
    win = local_windows(features.shape[1], features.shape[2], float(radius), device=str(features.device))
    return ContextFrame(features, labels, key_tiles(features, win), win)


def changing_tiles(context: list[ContextFrame], grid: torch.Tensor,
                   shifts: list[tuple[int, int]] | None = None) -> torch.Tensor:
    """(n,) bool: the query tiles (``affinity.query_grid``) whose labels may differ from plain background.

    A target position mixes labels of context cells it may match, so its labels per channel never exceed theirs:
    when every such cell is background up to ``LABEL_FLOOR`` (channels 1.. all below it), the position is set to
    background without matching, off by less than ``LABEL_FLOOR`` per channel. (The floor, not exact zeros: the
    softmax's tails never quite vanish and, taken as labels, would spread the object one window per frame.)
    Conservative: a tile counts as changing when any cell of its square window (any cell at all for a globally
    matched frame) is labelled, or when the labels have a single channel. ``shifts``: per context frame, its windows'
    shift in tiles (``propagate_step``).
    """
    changing = torch.zeros(grid.shape[0], dtype=torch.bool, device=grid.device)
    for position, frame in enumerate(context):
        shift = (0, 0) if shifts is None or frame.window is None else shifts[position]
        if shift == (0, 0):
            changing |= frame.labelled_tiles
        else:
            win = frame.window
            changing |= shift_tile_flags(frame.labelled_tiles, shift, math.ceil(win.h / win.tile),
                                         math.ceil(win.w / win.tile))
    return changing


def propagate_step(target_feat: torch.Tensor, context: list[ContextFrame], cfg: PropagationConfig,
                   shifts: list[tuple[int, int]] | None = None) -> torch.Tensor:
    """Labels of one target frame from its context.

    Matching runs by tiles of target positions (``affinity.query_grid``), only where labels may change
    (``changing_tiles``); the other positions are background (channel 0), as the matching would make them up to
    ``LABEL_FLOOR``. A locally matched context frame's windows are centred ``shifts[i]`` = (dy, dx) tiles away
    from the target position (``tile_shift``: where its object went); positions left without any candidate (all
    their windows off the map) are background.

    Args:
        target_feat: (C, h, w) target features.
        context: the first frame, then previous frames; each is matched within its window when it carries
            tiles, globally otherwise.
        cfg: with its temperature set (``iter_propagate`` resolves None with ``softmax_temperature``).
        shifts: one (dy, dx) per context frame, in tiles of ``TILE`` cells; None = all (0, 0).
    Returns:
        (L, h, w) soft labels.
    """
    if cfg.temperature is None:
        raise ValueError("cfg.temperature: None; resolve it by method with softmax_temperature(cfg, model)")
    _, h, w = target_feat.shape
    grid = query_grid(h, w, TILE, str(target_feat.device))  # (n, T^2)
    if any(frame.window is not None and frame.window.tile != TILE for frame in context):
        raise ValueError(f"context windows: expected query tiles of {TILE} cells (affinity.TILE)")
    shifted = shifts is not None and any(shift != (0, 0) for shift in shifts)
    shifts = shifts if shifted else [(0, 0)] * len(context)
    changing = changing_tiles(context, grid, shifts) if shifted else changing_tiles(context, grid)
    runs = tile_runs(changing)
    labels = torch.cat([frame.labels.flatten(1) for frame in context], dim=1)  # (L, n_ctx * h * w)
    out = labels.new_zeros(labels.shape[0], grid.numel())
    out[0] = 1.0
    if runs:
        queries = query_tiles(target_feat, grid)  # (n, T^2, C)
        chosen = torch.cat([queries[run] for run in runs]).flatten(0, 1)  # (N, C), rows in tile order
        all_values, all_indices = [], []
        for position, frame in enumerate(context):
            if frame.tiles is None:
                values, indices = topk_global(chosen.T, frame.features.flatten(1), cfg.topk, cfg.chunk_size)
            else:
                values, indices = topk_local_tiles(queries, frame.tiles, frame.window, cfg.topk, runs,
                                                   shifts[position])
            all_values.append(values)
            all_indices.append(indices + position * h * w)
        if cfg.context_mixing == "average":  # UVC's test.py: each context frame votes with its own top-k, equally
            mixed = sum(mix_candidate_labels(v, i, labels, cfg.topk, cfg.temperature)
                        for v, i in zip(all_values, all_indices)) / len(context)
        else:  # one top-k over the candidates of all context frames
            mixed = mix_candidate_labels(torch.cat(all_values, 1), torch.cat(all_indices, 1), labels, cfg.topk,
                                         cfg.temperature)
        if shifted:  # rows without candidates: NaN from the softmax -> background
            orphans = mixed.isnan().any(dim=0)
            mixed = mixed.nan_to_num(0.0)
            mixed[0] += orphans.to(mixed.dtype)
        out.view(labels.shape[0], *grid.shape)[:, changing] = mixed.view(labels.shape[0], -1, grid.shape[1])
    return untile(out.T, h, w).T.reshape(-1, h, w)
