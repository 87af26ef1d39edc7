"""Region-level localization during propagation (UVC's idea, done coarsely): where the labelled object went in each
new frame, so that every context frame's window is centred on it, and re-finding the object after it was lost.

The same similarity that matches cells locates the object: each target cell of a coarse grid (``localize_stride``
pixels) takes the label mass of its top-k matches among a small long-term memory (the first frame and the most
recent confident frames, globally), and the object is the densest object-sized blob of that mass near where its
motion predicts it, or anywhere once it was lost. Labels are never looked at by kind: the mass is everything but the
background channel 0, so masks, parts and keypoint heatmaps share this code.

Per frame (``track_step``): predict (``locate``), propagate with the windows shifted by whole tiles towards the
prediction (``context.tile_shift``; a static object is not shifted), then judge (``update_track``): a frame whose
label mass collapses, or a lost object not found again with enough matched mass, is reported as plain background and
does not enter the context queue. Memory stays flat: a fixed number of coarse frames.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .affinity import TILE, topk_global
from .config import PropagationConfig
from .context import ContextFrame, label_centre, label_mass, propagate_step, tile_shift

MASS_FLOOR = 0.05  # memory cells with more label mass than this are all kept; the others are sampled 1 in 4
# a confident object slower than this share of the previous frames' window (cells per frame) is not searched for:
# its motion prediction keeps it well inside the windows, and the coarse match is skipped (its cost, its risk)
SEARCH_SPEED = 0.25
MASS_MEMORY = 0.8  # the track's reference mass: this share of the old one + the rest of each confident frame's
# windows move only by the motion beyond this share of their reach: within it the window finds the object anyway, and
# a label centre that wanders under occlusion (not motion) does not drag the windows off it (val_dev bmx-trees)
SHIFT_SLACK = 0.5
PRIOR_SPREAD = 1.0  # width of the motion prior around the predicted centre: object size + speed / 2 (Gaussian sigma)
# a lost object is looked for near where its last motion would have taken it (clamped to the frame): the matched mass
# is weighted by a Gaussian this wide x (object size + speed x frames lost + an eighth of the frame's height + width,
# the last term growing by itself every REFIND_WIDEN frames lost), never less than frames lost / REFIND_PATIENCE (a
# bird may come back anywhere, later), and the best blob must score refind_score weighted: a look-alike far from
# there does not take the track while the bird is out. Flight J&F 0.460 -> 0.508 with refind_score 0.2 (widths 0.25 /
# 1 / 2, unweighted score, 0.3: 0.471 / 0.486 / 0.461 vs 0.492 at 0.5; not widening with time 0.501; patience 10:
# 0.491, none: 0.508). Looking anywhere when nothing near scores (the search before, as a fallback): 0.460.
REFIND_SPREAD = 0.5
REFIND_WIDEN = 10
REFIND_PATIENCE = 30


@dataclass(frozen=True)
class CoarseFrame:
    """A memory frame on the coarse grid: unit features (C, hc, wc) and label mass other than background
    (hc, wc) in [0, 1]."""

    features: torch.Tensor
    mass: torch.Tensor


@dataclass(frozen=True)
class Sighting:
    """Where the object is predicted in a target frame: ``centre`` (2,) float (y, x) in feature cells, None = not
    found; ``score``: mean matched label mass in an object-sized box there (0..1; -1 when no search was run)."""

    centre: torch.Tensor | None
    score: float


@dataclass(frozen=True)
class Track:
    """The tracked object. Fields: ``memory`` the first frame then up to ``localize_memory`` recent confident
    frames (coarse); ``centre`` (2,) its last confident centre and ``velocity`` (2,) its last motion (feature cells,
    cells per frame; None until two confident frames in a row; kept while it is lost); ``mass`` its reference label
    mass (feature cells, a running average over confident frames); ``lost`` the number of frames since it was last
    seen (0 = tracked)."""

    memory: tuple[CoarseFrame, ...]
    centre: torch.Tensor
    velocity: torch.Tensor | None
    mass: float
    lost: int = 0


def coarse_features(features: torch.Tensor, factor: int) -> torch.Tensor:
    """(C, h, w) unit features -> (C, ceil(h / f), ceil(w / f)) float32 unit features (mean of f x f cells)."""
    x = features.float()
    if factor > 1:
        x = F.normalize(F.avg_pool2d(x[None], factor, factor, ceil_mode=True)[0], dim=0)
    return x


def coarse_frame(coarse: torch.Tensor, labels: torch.Tensor, factor: int) -> CoarseFrame:
    """Coarse features (C, hc, wc) and fine labels (L, h, w) -> a memory frame."""
    mass = label_mass(labels)[None, None]
    if factor > 1:
        mass = F.avg_pool2d(mass, factor, factor, ceil_mode=True)
    return CoarseFrame(coarse, mass[0, 0])


def start_track(features: torch.Tensor, labels: torch.Tensor, factor: int) -> Track | None:
    """A track from the first frame's features (C, h, w) and labels (L, h, w); None when nothing is labelled."""
    centre = label_centre(labels)
    if centre is None:
        return None
    memory = (coarse_frame(coarse_features(features, factor), labels, factor),)
    return Track(memory, centre, None, float(label_mass(labels).sum()))


def matched_mass(target: torch.Tensor, memory: tuple[CoarseFrame, ...], region: torch.Tensor | None, k: int,
                 temperature: float) -> torch.Tensor:
    """Label mass (hc, wc) that each target cell (of ``region``, bool (hc, wc); None = all) takes from its top-k
    matches among the memory frames' cells, mixed by softmax(similarity / temperature): the label propagation of
    ``context.mix_candidate_labels``, globally, on the coarse grid. Cells outside ``region`` get 0."""
    hc, wc = target.shape[-2:]
    sample = torch.zeros(hc, wc, dtype=torch.bool, device=target.device)
    sample[::2, ::2] = True  # background is sampled: it only has to be told apart
    keys, key_mass = [], []
    for frame in memory:
        keep = ((frame.mass > MASS_FLOOR) | sample).flatten()
        keys.append(frame.features.flatten(1)[:, keep])
        key_mass.append(frame.mass.flatten()[keep])
    queries = target.flatten(1) if region is None else target.flatten(1)[:, region.flatten()]
    values, indices = topk_global(queries, torch.cat(keys, 1).to(queries.dtype), k)
    mass = (torch.cat(key_mass)[indices] * torch.softmax(values / temperature, dim=1)).sum(1)
    out = target.new_zeros(hc * wc, dtype=torch.float32)
    if region is None:
        return mass.view(hc, wc)
    out[region.flatten()] = mass
    return out.view(hc, wc)


def find_object(mass: torch.Tensor, size: float, prior: torch.Tensor | None = None,
                weighted: bool = False) -> Sighting:
    """The densest object-sized blob of a matched mass map (hc, wc), weighted by ``prior`` (hc, wc) in [0, 1]:
    centre of the mass within an object-sized box around the best box (coarse cells) and its mean mass (times the
    prior there when ``weighted``)."""
    side = max(1, int(round(size))) | 1
    box = F.avg_pool2d(mass[None, None], side, 1, side // 2, count_include_pad=True)[0, 0]
    ranked = box if prior is None else box * prior.to(box.device)
    y, x = divmod(int(ranked.flatten().argmax()), mass.shape[1])
    reach = side // 2 + 1
    local = torch.zeros_like(mass)
    local[max(y - reach, 0):y + reach + 1, max(x - reach, 0):x + reach + 1] = 1.0
    centre = label_centre((mass * local)[None])  # one channel: its own mass
    return Sighting(centre, float(ranked[y, x] if weighted else box[y, x]))


def gaussian_prior(shape: tuple[int, int], centre: torch.Tensor, sigma: float) -> torch.Tensor:
    """(h, w) exp(-d^2 / (2 sigma^2)) of the distance d to ``centre`` (y, x), in cells."""
    ys = torch.arange(shape[0], dtype=torch.float32).view(-1, 1) - float(centre[0])
    xs = torch.arange(shape[1], dtype=torch.float32).view(1, -1) - float(centre[1])
    return torch.exp(-(ys**2 + xs**2) / (2 * sigma**2))


def to_coarse(cells: torch.Tensor, factor: int) -> torch.Tensor:
    """(y, x) feature cells -> coarse cells (centres of f x f blocks)."""
    return (cells - (factor - 1) / 2) / factor


def to_fine(cells: torch.Tensor, factor: int) -> torch.Tensor:
    """(y, x) coarse cells -> feature cells."""
    return cells * factor + (factor - 1) / 2


def locate(track: Track, target: torch.Tensor, factor: int, cfg: PropagationConfig, window: float) -> Sighting:
    """Where the tracked object is in a target frame (coarse features (C, hc, wc)).

    Tracked and slow (below ``SEARCH_SPEED`` of the ``window`` radius, cells per frame): its constant-velocity
    prediction, no search. Tracked otherwise: the blob of ``matched_mass`` in a region around the prediction that
    grows with the object's speed and size, weighted by a Gaussian motion prior; the prediction if nothing scores
    ``cfg.search_score`` (``update_track`` judges the result by its label mass). Lost: the best blob of the whole
    frame weighted by a wide Gaussian around where its last motion leads (``REFIND_SPREAD``; never below frames lost
    / ``REFIND_PATIENCE``), None (still lost) if its weighted score is less than ``cfg.refind_score``.
    """
    speed = 0.0 if track.velocity is None else float(track.velocity.norm())
    predicted = track.centre + (0 if track.velocity is None else track.velocity)
    if track.lost == 0 and track.velocity is not None and speed < SEARCH_SPEED * window:
        return Sighting(predicted, -1.0)
    hc, wc = target.shape[-2:]
    size = max(float(track.mass) ** 0.5 / factor, 1.0)  # object side, coarse cells
    region, prior = None, None
    if track.lost > 0:
        guess = track.centre + (0 if track.velocity is None else track.velocity * track.lost)
        guess = torch.minimum(guess.clamp_min(0), torch.tensor([hc * factor - 1.0, wc * factor - 1.0]))
        sigma = REFIND_SPREAD * (size + (hc + wc) / 8 * (1 + track.lost / REFIND_WIDEN) + speed * track.lost / factor)
        prior = gaussian_prior((hc, wc), to_coarse(guess, factor), sigma)
        prior = prior.clamp_min(min(1.0, track.lost / REFIND_PATIENCE))
    elif track.velocity is None:  # motion unknown: anywhere, nearer first
        prior = gaussian_prior((hc, wc), to_coarse(track.centre, factor), PRIOR_SPREAD * (hc + wc) / 4)
    else:  # tracked, moving: near its prediction
        centre = to_coarse(predicted, factor)
        reach = size + 2.0 * speed / factor + 2.0
        sigma = PRIOR_SPREAD * (size + 0.5 * speed / factor + 2.0)
        ys, xs = torch.arange(hc).view(-1, 1), torch.arange(wc).view(1, -1)
        region = ((ys - float(centre[0])).abs() <= reach) & ((xs - float(centre[1])).abs() <= reach)
        prior = gaussian_prior((hc, wc), centre, sigma)
        if not region.any():
            return Sighting(predicted, 0.0)
        region = region.to(target.device)
    mass = matched_mass(target, track.memory, region, cfg.topk, cfg.temperature)
    found = find_object(mass, size, prior, weighted=track.lost > 0)
    if found.centre is None or found.score < (cfg.search_score if track.lost == 0 else cfg.refind_score):
        return Sighting(predicted if track.lost == 0 else None, found.score)
    return Sighting(to_fine(found.centre, factor), found.score)


def update_track(track: Track, sighting: Sighting, labels: torch.Tensor, target: torch.Tensor, factor: int,
                 cfg: PropagationConfig) -> tuple[Track, bool]:
    """Judge a propagated frame (labels (L, h, w)) and update the track; True when the frame is confident.

    Not confident (reported as background by ``track_step``): no sighting, or the label mass below
    ``cfg.lost_mass`` of the track's mass (collapsed, or the object left the frame) or above its inverse (spilled
    onto the background).
    """
    mass = float(label_mass(labels).sum())
    centre = label_centre(labels)
    plausible = cfg.lost_mass * track.mass <= mass <= track.mass / max(cfg.lost_mass, 1e-6)
    if sighting.centre is None or centre is None or not plausible:
        return dataclasses.replace(track, lost=track.lost + 1), False  # its velocity: where it was going
    velocity = centre - track.centre if track.lost == 0 else None
    recent = (*track.memory[1:], coarse_frame(target, labels, factor))[-cfg.localize_memory:]
    memory = (track.memory[0], *(recent if cfg.localize_memory > 0 else ()))
    return Track(memory, centre, velocity, MASS_MEMORY * track.mass + (1 - MASS_MEMORY) * mass, 0), True


def background(labels: torch.Tensor) -> torch.Tensor:
    """Plain background labels shaped like (L, h, w) ``labels``: channel 0 is 1, the others 0."""
    out = torch.zeros_like(labels)
    out[0] = 1.0
    return out


def track_step(track: Track, features: torch.Tensor, context: list[ContextFrame], cfg: PropagationConfig,
               factor: int, window: float, unit: torch.Tensor | None = None) -> tuple[torch.Tensor, Track, bool]:
    """One target frame: locate the object, propagate with every local window centred on it, judge the result.

    Args:
        features: (C, h, w) target features; context: the first frame, then the previous confident frames.
        factor: coarse grid / feature grid; window: the previous frames' window radius (cells).
        unit: (C', h, w) unit features of the target for the coarse match (the kind ``start_track`` was given);
            None = ``features``, when they are unit features themselves.
    Returns:
        labels (L, h, w) (plain background when the object is absent), the updated track, and whether the frame
        is confident (only confident frames should join the context).
    """
    target = coarse_features(features if unit is None else unit, factor)
    sighting = locate(track, target, factor, cfg, window)
    if sighting.centre is None:
        labels = background(context[0].labels)
    else:
        shifts = [tile_shift(frame.centre, sighting.centre, TILE, SHIFT_SLACK * frame.window.reach)
                  if frame.window is not None else (0, 0) for frame in context]
        labels = propagate_step(features, context, cfg, shifts)
    track, confident = update_track(track, sighting, labels, target, factor, cfg)
    return (labels if confident else background(labels)), track, confident
