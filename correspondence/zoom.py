"""Propagation inside a zoomed window that follows a small object (UVC's region-level localization, then
fine-grained matching within the region).

A bird a few dozen pixels across is a few cells of the matching grid: its wings are thinner than a cell and it
moves more than a window between frames. Here every frame is cut to a square window around where the tracker
(``track.locate``, on the whole frame) places the object, ``zoom_size`` pixels wide for ``zoom_padding`` times the
object's first-frame extent (at most ``zoom_max`` times enlarged), and the labels are propagated between these
windows: the object stays near their centre, so the local windows of the matching find it whatever its speed, and
its thin parts are zoom times more cells. The labels go back to the whole frame on a grid finer than the features'
by the zoom. Only the object at a window's centre keeps its labels (``keep_central_blob``, ``zoom_gate``): a look-alike
bird flying past would otherwise take them. Labels are never looked at by kind (masks, parts, keypoints).

The window keeps its first size for the whole video. Sized by the tracked mass, it grew with every spill onto the
background, which then had more room to spill (flight J&F 0.396 fixed, 0.370 within 0.67-1.5x, 0.369 within
0.25-4x); a bird that comes more than ``zoom_padding`` times nearer is cut by the window.

Measured on the flight benchmark (raw pixels, stride 4) with the windows placed on the true boxes: J&F 0.383 ->
0.625 (0.396 placed by the tracker, 0.460 with the gate); the correspondence model card has the figures.
"""
from __future__ import annotations

import collections
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from birdmesh.color import uint8_rgb_to_lab

from .config import PropagationConfig
from .context import ContextFrame, label_centre, label_mass, make_context, propagate_step
from .track import Track, background, coarse_features, locate, start_track, update_track

GATE_GAP = 6  # window cells (flight J&F 0.460; 12 cells: 0.455; the main blob alone: 0.439, wings cut off)


@dataclass(frozen=True)
class ZoomWindow:
    """The zoom of one video: ``size`` the window's side in pixels of the matched image (a multiple of the feature
    stride), ``side`` the first frame's window side in frame pixels (``zoom_padding`` x the object's extent),
    ``out_stride`` frame pixels per cell of the yielded labels."""

    size: int
    side: float
    out_stride: int


def zoom_window(labels0: torch.Tensor, cfg: PropagationConfig, stride: int,
                frame_hw: tuple[int, int] | None = None) -> ZoomWindow | None:
    """The video's zoom from its first labels (L, H', W') and the frames' size (H, W) (None: the labels'), or None
    (no zoom): off, no tracker, nothing labelled, an object too large to gain ``zoom_min`` times more cells, or one
    whose ``zoom_padding`` times its extent does not fit in the frame (a bird that large in a small frame is not small:
    the window would only enlarge the whole frame, at more cost than the frame; the 480x270 demo bird, 154 px across)."""
    if not (cfg.zoom and cfg.localize) or labels0.shape[0] < 2:
        return None
    ys, xs = torch.nonzero(label_mass(labels0) > 0.5, as_tuple=True)
    if len(ys) == 0:
        return None
    H, W = frame_hw if frame_hw is not None else labels0.shape[-2:]
    scale = max(H / labels0.shape[1], W / labels0.shape[2])
    extent = (max(int(ys.max() - ys.min()), int(xs.max() - xs.min())) + 1) * scale
    size = max(cfg.zoom_size // stride, 1) * stride
    side = max(cfg.zoom_padding * extent, size / cfg.zoom_max)
    if size / side < cfg.zoom_min or cfg.zoom_padding * extent > min(H, W):
        return None
    return ZoomWindow(size, side, max(1, round(stride * side / size)))


def window_grid(centre: torch.Tensor, side: float, size: int, frame_hw: tuple[int, int]) -> torch.Tensor:
    """Sampling grid (1, size, size, 2) of a square window of ``side`` frame pixels around ``centre`` (y, x) (in
    continuous pixel coordinates: pixel k spans [k, k + 1)), for ``grid_sample(align_corners=False)``."""
    H, W = frame_hw
    steps = (torch.arange(size, dtype=torch.float32) + 0.5) * (side / size) - side / 2
    gy = 2 * (float(centre[0]) + steps) / H - 1
    gx = 2 * (float(centre[1]) + steps) / W - 1
    return torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)[None]


def crop_window(image: torch.Tensor, centre: torch.Tensor, side: float, size: int) -> torch.Tensor:
    """(1, C, H, W) image -> (1, C, size, size) bilinear window; beyond the frame its border pixels continue."""
    grid = window_grid(centre, side, size, tuple(image.shape[-2:])).to(image.device, image.dtype)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)


def crop_labels(labels: torch.Tensor, centre: torch.Tensor, side: float, size: int) -> torch.Tensor:
    """(L, H, W) soft labels -> (L, size, size) window (bilinear); beyond the frame, background."""
    grid = window_grid(centre, side, size, tuple(labels.shape[-2:])).to(labels.device, torch.float32)
    return with_background(labels, lambda x: F.grid_sample(x, grid, align_corners=False))


def uncrop_labels(labels: torch.Tensor, centre: torch.Tensor, side: float, frame_hw: tuple[int, int],
                  grid_hw: tuple[int, int]) -> torch.Tensor:
    """A window's soft labels (L, r, r) -> (L, h, w) on a grid covering the frame (``frame_hw`` pixels); outside the
    window, background."""
    H, W = frame_hw
    h, w = grid_hw
    ys = ((torch.arange(h, dtype=torch.float32) + 0.5) * (H / h) - float(centre[0])) * (2 / side)
    xs = ((torch.arange(w, dtype=torch.float32) + 0.5) * (W / w) - float(centre[1])) * (2 / side)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)[None].to(labels.device)
    return with_background(labels, lambda x: F.grid_sample(x, grid, align_corners=False))


def with_background(labels: torch.Tensor, resample: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Resample (L, h, w) soft labels with a zero-padding ``resample`` of (1, L, h, w) so that what it pads is
    background (channel 0 = 1), not nothing."""
    offset = torch.zeros(labels.shape[0], 1, 1, device=labels.device)
    offset[0] = 1.0
    return resample((labels.float() - offset)[None])[0] + offset


def iter_zoomed(frames: Iterable[np.ndarray], labels0: torch.Tensor, encode, cfg: PropagationConfig,
                zoom: ZoomWindow, radii: tuple[float, float], factor: int, device) -> Iterator[torch.Tensor]:
    """``propagate.iter_propagate`` in zoomed windows: soft labels (L, h, w) per frame on the ``zoom.out_stride``
    grid of the frame.

    Args:
        frames: uint8 RGB frames (H, W, 3); labels0: (L, H', W') first labels (resized to the frames if needed).
        encode: a ``propagate.FrameEncoder`` (Lab (1, 3, H, W) -> feat, key, unit); its first call, which fixes the
            video's calibration, is on the first window.
        cfg: with its temperature set; zoom: ``zoom_window``'s; radii: the first / previous frames' window radii;
        factor: coarse localization cells per feature cell.
    """
    radius_first, radius_previous = radii
    previous: collections.deque = collections.deque(maxlen=max(cfg.context_previous, 0))
    first, track = None, None
    for frame in frames:
        lab = uint8_rgb_to_lab(torch.from_numpy(np.ascontiguousarray(frame)).to(device))
        H, W = lab.shape[-2:]
        out_hw = (math.ceil(H / zoom.out_stride), math.ceil(W / zoom.out_stride))
        if first is None:
            soft0 = labels0.to(device).float()
            if tuple(soft0.shape[-2:]) != (H, W):
                soft0 = F.interpolate(soft0[None], size=(H, W), mode="bilinear", align_corners=False)[0]
            first, track = start_zoomed(lab, soft0, encode, zoom, radius_first, factor)
            yield F.adaptive_avg_pool2d(soft0[None], out_hw)[0]
            continue
        _, _, unit = encode(lab)
        target = coarse_features(unit, factor)
        sighting = locate(track, target, factor, cfg, radius_previous)
        if sighting.centre is None:
            cells = background(torch.zeros(first.labels.shape[0], *unit.shape[-2:], device=unit.device))
            window_labels = key = None  # update_track: lost
        else:
            cell = (H / unit.shape[-2], W / unit.shape[-1])  # frame pixels per feature cell
            centre = (sighting.centre + 0.5) * torch.tensor(cell)
            side = zoom.side  # one size for the whole video: see the module's docstring
            feat, key, _ = encode(crop_window(lab, centre, side, zoom.size))
            window_labels = propagate_step(feat, [first, *previous], cfg)
            if cfg.zoom_gate:
                window_labels = keep_central_blob(window_labels)
            cells = confident_cells(uncrop_labels(window_labels, centre, side, (H, W), tuple(unit.shape[-2:])))
        track, confident = update_track(track, sighting, cells, target, factor, cfg)
        if not confident:
            yield background(first.labels.new_zeros(first.labels.shape[0], *out_hw))
            continue
        if cfg.context_previous > 0:
            previous.append(make_context(key, window_labels, radius_previous))
        yield uncrop_labels(window_labels, centre, side, (H, W), out_hw)


def start_zoomed(lab: torch.Tensor, labels: torch.Tensor, encode, zoom: ZoomWindow, radius: float,
                 factor: int) -> tuple[ContextFrame, Track]:
    """The first frame (Lab (1, 3, H, W), labels (L, H, W)) as zoomed context, and the tracker started on the whole
    frame. The window is encoded first: that call fixes the encoder's calibration for the video."""
    centre = label_centre(labels) + 0.5  # cells -> continuous pixel coordinates
    feat, key, _ = encode(crop_window(lab, centre, zoom.side, zoom.size))
    window_labels = F.adaptive_avg_pool2d(crop_labels(labels, centre, zoom.side, zoom.size)[None],
                                          tuple(feat.shape[-2:]))[0]
    _, _, unit = encode(lab)
    cells = F.adaptive_avg_pool2d(labels[None], tuple(unit.shape[-2:]))[0]
    confident = confident_cells(cells)
    # an object smaller than half a cell has no confident cell: its soft cells start the track
    track = start_track(unit, confident if float(label_mass(confident).sum()) > 0 else cells, factor)
    return make_context(key, window_labels, radius), track


def confident_cells(labels: torch.Tensor) -> torch.Tensor:
    """(L, h, w) soft labels with the cells where the object holds less than half the mass made background: the
    tracker's centre of these follows the object, where the faint labels spread over the window would hold it
    towards the window's own centre (which was placed by the tracker: a lag that grows frame after frame)."""
    faint = label_mass(labels) < 0.5
    out = labels.clone()
    out[:, faint] = 0.0
    out[0, faint] = 1.0
    return out


def keep_central_blob(labels: torch.Tensor, gap: int = GATE_GAP) -> torch.Tensor:
    """(L, r, r) window labels -> the same with only the object at the window's centre: the confident blobs (label
    mass > 1/2) within ``gap`` cells of the blob with the most centre-weighted mass, and a 3-cell fringe around them,
    keep their labels; everything else becomes background.

    The window is centred on where the tracker put the object, so a blob far from its centre is something else that
    looks like it: a look-alike bird flying past (the flight clips' distractors) or a patch of background of its
    colour. Left in, it takes labels, joins the context and drags the next windows off the bird. Blobs near the main
    one stay: a wing drawn thinner than a cell comes apart from the body.
    """
    from scipy import ndimage  # here: only zoomed videos pay for its import

    mass = label_mass(labels).cpu().numpy()
    blobs, count = ndimage.label(mass > 0.5)
    if count < 2:
        return labels
    ys, xs = np.ogrid[:mass.shape[0], :mass.shape[1]]
    sigma = mass.shape[1] / 4  # the window is zoom_padding (2) x the object or more: its extent is at most half
    weight = mass * np.exp(-((ys - mass.shape[0] / 2) ** 2 + (xs - mass.shape[1] / 2) ** 2) / (2 * sigma**2))
    main = 1 + int(np.argmax(ndimage.sum(weight, blobs, index=np.arange(1, count + 1))))
    near = ndimage.binary_dilation(blobs == main, iterations=gap)
    keep = ndimage.binary_dilation(np.isin(blobs, np.unique(blobs[near & (blobs > 0)])), iterations=3)
    drop = torch.from_numpy(~keep).to(labels.device)
    out = labels.clone()
    out[:, drop] = 0.0
    out[0, drop] = 1.0
    return out
