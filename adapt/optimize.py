"""The per-video state (crops, video-level UV maps) and the adaptation loop that fine-tunes the predictor."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from mesh_recon.crop import crop_cameras_to_pixels
from mesh_recon.geometry import weak_perspective_project
from mesh_recon.losses import coverage_loss, masked_l1, silhouette_loss
from mesh_recon.mesh import uniform_laplacian
from mesh_recon.predictor import MeshPredictor, Prediction, pool_alignment, texture_from_flow
from mesh_recon.render import SoftRenderer, SoftRenderSettings

from .config import LossWeights, OptimConfig
from .flags import inside_frame
from .losses import (FoldReference, base_shape_loss, fold_loss, part_correspondence_loss, part_coverage_loss,
                     quaternion_smoothness, temporal_smoothness, vertex_parts)
from .parts import UVPool, texel_surface, texel_visibility, uv_maps_from_flow


@dataclass(frozen=True)
class VideoCrops:
    """Everything the adaptation reads, aligned with the predictor's square crops.

    Fields:
        images: (T, 3, S, S) RGB in [0, 1]; masks: (T, 1, S, S) propagated object masks (soft);
        parts: (T, K + 1, S, S) propagated soft parts, float16 to save memory (channel 0 background);
        boxes: (T, 4) crop boxes (x0, y0, x1, y1) in the processed frames' pixels;
        valid: (T,) bool, False where the object vanished; frame_hw: (H, W) of the processed frames.
    """

    images: Tensor
    masks: Tensor
    parts: Tensor
    boxes: Tensor
    valid: Tensor
    frame_hw: tuple[int, int]


@dataclass(frozen=True)
class VideoMaps:
    """Video-level maps shared by all frames: parts (K + 1, Hu, Wu), texture (3, Hu, Wu), base shape (V, 3)."""

    parts: Tensor
    texture: Tensor
    base: Tensor


@torch.no_grad()
def predict_frames(model: MeshPredictor, images: Tensor, batch_size: int = 16, pool_keep: Tensor | None = None
                   ) -> Prediction:
    """The predictor on every crop (no gradient), batched; returns one Prediction for all T frames.

    With ``pool_keep`` ((T,) bool), the alignment head's moves are averaged over those frames
    (``pool_alignment``): one shape correction for the whole video.
    """
    preds = [model(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
    first = preds[0]
    cat = {name: None if getattr(first, name) is None else torch.cat([getattr(p, name) for p in preds])
           for name in first.BATCHED}
    pred = dataclasses.replace(first, **cat)
    return pred if pool_keep is None else pool_alignment(pred, pool_keep)


def video_maps(pred: Prediction, crops: VideoCrops, chunk: int = 16) -> VideoMaps:
    """Pool every valid frame's parts and texture into UV space (weighted by visibility and by whether the texel's
    crop point lies inside the frame: beyond it crops are zero padding, not black bird; in chunks of frames) and
    average the shapes."""
    uv_hw = tuple(pred.uv_flow.shape[-2:])
    face_index, bary = texel_surface(pred.face_uvs, uv_hw)
    keep = crops.valid if bool(crops.valid.any()) else torch.ones_like(crops.valid)
    frames = torch.nonzero(keep).flatten()
    parts, texture = UVPool(), UVPool()
    for start in range(0, len(frames), chunk):
        idx = frames[start:start + chunk]
        flow = pred.uv_flow[idx]
        inside = inside_frame(crops.boxes[idx], crops.frame_hw, crops.images.shape[-1])
        inside = -F.max_pool2d(-inside, 3, 1, 1)  # eroded by a pixel: bilinear samples there mix in the padding
        inside = uv_maps_from_flow(inside, flow)
        visibility = texel_visibility(pred.verts[idx], pred.cams[idx], pred.faces, face_index, bary) * inside
        parts.add(uv_maps_from_flow(crops.parts[idx].float(), flow), visibility, inside)
        texture.add(texture_from_flow(crops.images[idx], flow), visibility, inside)
    return VideoMaps(parts.result(), texture.result(), pred.verts[frames].mean(0))


def select_parameters(model: MeshPredictor, layers: str) -> list[torch.nn.Parameter]:
    """The weights the adaptation updates: ``all``, ``heads`` (shape, camera, flow and alignment heads) or name
    prefixes."""
    if layers == "all":
        return list(model.parameters())
    heads = ("shape_head", "camera_head", "flow_head", "align_head", "pose_head", "bone_head", "residual_head",
             "mean_residual")
    prefixes = heads if layers == "heads" else tuple(
        p.strip() for p in layers.split(",") if p.strip())
    chosen = [p for name, p in model.named_parameters() if name.startswith(prefixes)]
    if not chosen:
        raise ValueError(f"layers: no predictor weights match {layers!r}")
    return chosen


def _resize(x: Tensor, size: int) -> Tensor:
    return x if x.shape[-1] == size else F.interpolate(x, size=(size, size), mode="area")


def image_terms(pred: Prediction, crops: VideoCrops, frames: Tensor, maps: VideoMaps, renderer: SoftRenderer,
                coverage_radius: float | None = None, part_coverage: bool = False) -> tuple[dict, Tensor]:
    """The terms comparing renders with the video, for a window of consecutive frames ``frames`` (B,): parts,
    silhouette, coverage (its pull capped beyond ``coverage_radius``, ``mesh_recon.losses.coverage_loss``), texture,
    and the cameras' smoothness; with ``part_coverage`` also the pull part by part (``losses.part_coverage_loss``).
    Shared by the free-form and the articulated adaptation. Returns (terms, the projected vertices (B, V, 3))."""
    B, size = len(frames), renderer.height
    verts_ndc = weak_perspective_project(pred.verts, pred.cams)
    texture = torch.cat([maps.parts, maps.texture])[None].expand(B, -1, -1, -1)
    out = renderer(verts_ndc, pred.faces, face_uvs=pred.face_uvs, texture=texture)
    K1 = maps.parts.shape[0]
    parts_r, rgb_r, sil_r = out[:, :K1], out[:, K1:K1 + 3], out[:, -1:]
    valid = crops.valid[frames]
    parts_o, mask_o = _resize(crops.parts[frames].float(), size), _resize(crops.masks[frames], size)
    image_o = _resize(crops.images[frames], size)
    # Beyond the frame the video shows nothing (crops are zero-padded there): compare only inside it, so a bird cut
    # by the border is not pulled away from it (adapt/flags.py).
    inside = inside_frame(crops.boxes[frames], crops.frame_hw, size)  # (B, 1, size, size)
    parts_r, sil_r, parts_o, mask_o = parts_r * inside, sil_r * inside, parts_o * inside, mask_o * inside
    terms = {}
    if bool(valid.any()):
        terms["part_map"], terms["part_centre"] = part_correspondence_loss(parts_r[valid], parts_o[valid])
        terms["silhouette"] = silhouette_loss(sil_r[valid], mask_o[valid])
        terms["coverage"] = coverage_loss(verts_ndc[valid], mask_o[valid], sil_r[valid], coverage_radius)
        if part_coverage:
            vert_part = vertex_parts(maps.parts, pred.faces, pred.face_uvs, pred.verts.shape[1])
            terms["part_coverage"] = part_coverage_loss(verts_ndc[valid], vert_part, parts_r[valid], parts_o[valid],
                                                        coverage_radius)
        terms["texture"] = masked_l1(rgb_r[valid], image_o[valid], mask_o[valid])
    cams_px = crop_cameras_to_pixels(pred.cams, crops.boxes[frames])
    scale = cams_px.new_tensor([max(crops.frame_hw), crops.frame_hw[1], crops.frame_hw[0]])
    terms["camera_smooth"] = temporal_smoothness(cams_px[:, :3] / scale) + quaternion_smoothness(cams_px[:, 3:])
    return terms, verts_ndc


def weigh(terms: dict, weights) -> tuple[Tensor, dict]:
    """(sum of weight x term, the terms as floats) for terms named as fields of ``weights``."""
    loss = sum(getattr(weights, name) * value for name, value in terms.items())
    return loss, {name: float(value.detach()) for name, value in terms.items()}


def adaptation_losses(pred: Prediction, crops: VideoCrops, frames: Tensor, maps: VideoMaps, renderer: SoftRenderer,
                      laplacian: Tensor, weights: LossWeights, fold: FoldReference | None = None
                      ) -> tuple[Tensor, dict]:
    """All free-form adaptation terms for a window of consecutive frames ``frames`` (B,) with predictions ``pred``:
    ``image_terms`` plus the base-shape terms (ARAP to the shared base, Laplacian and smoothness of the residual)
    and, given ``fold`` (the predictor's mean bird), no folds beyond the mean bird's."""
    terms, _ = image_terms(pred, crops, frames, maps, renderer, weights.coverage_radius,
                           bool(weights.part_coverage))
    terms["arap"], terms["laplacian"] = base_shape_loss(pred.verts, maps.base, pred.faces, laplacian)
    terms["residual_smooth"] = temporal_smoothness(pred.verts - maps.base)
    if fold is not None:
        terms["fold"] = fold_loss(pred.verts, pred.faces, fold)
    return weigh(terms, weights)


def frame_windows(num_frames: int, batch_size: int, seed: int) -> Iterator[np.ndarray]:
    """Endless windows of consecutive frame indices that visit every frame equally often.

    Each pass cuts the video into windows of ``batch_size`` frames at a random phase (the first and last window
    may be shorter) and yields them in random order. Uniform window starts would visit the first and last
    ``batch_size - 1`` frames up to ``batch_size`` times less often than the others (frame 0 only in windows
    starting at 0), leaving the ends of the video barely fitted.
    """
    rng = np.random.default_rng(seed)
    B = max(1, min(batch_size, num_frames))
    while True:
        phase = int(rng.integers(0, B)) if B < num_frames else 0
        bounds = sorted({0, *range(phase, num_frames, B), num_frames})
        windows = [np.arange(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
        for i in rng.permutation(len(windows)):
            yield windows[i]


def adapt_predictor(model: MeshPredictor, crops: VideoCrops, maps: VideoMaps, cfg: OptimConfig,
                    weights: LossWeights, seed: int = 0, pool_align: bool = True, track: Tensor | None = None,
                    reference=None, fold: FoldReference | None = None) -> list[dict]:
    """Fine-tune the predictor on one video; returns the loss history (one dict per step).

    Each step takes a window of up to ``batch_size`` consecutive frames (``frame_windows``). The model stays in
    eval mode (BatchNorm keeps its training statistics: a window of one video is not a representative batch).
    The shared base shape follows the predicted shapes as a running average. ``pool_align``: the alignment
    head's moves are averaged over each window's valid frames (``pool_alignment``), as over the whole video after.
    An articulated predictor (``mesh_recon.articulated``) renders with the cameras of the video's viewpoint ``track``
    ((T,) hypothesis per frame) and is held by ``pose_space.articulated_terms`` around ``reference`` (the video's
    shared bones and residual, a ``pose_space.ShapeReference``, following the predictions as a running average)
    instead of the free-form base-shape terms; a free-form one given ``fold`` is kept from folding beyond it.
    """
    from .pose_space import articulated_terms, with_track

    params = select_parameters(model, cfg.layers)
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    renderer = SoftRenderer(SoftRenderSettings(image_size=cfg.render_size, sigma=cfg.sigma, gamma=cfg.gamma))
    laplacian = None if track is not None else uniform_laplacian(model.faces, len(maps.base)).to(
        device=maps.base.device, dtype=maps.base.dtype)
    windows = frame_windows(len(crops.images), cfg.batch_size, seed)
    base = maps.base.clone()
    history = []
    model.eval()
    bar = tqdm(range(cfg.iterations), desc="adapt", unit="step")
    for step in bar:
        tic = time.time()
        frames = torch.from_numpy(next(windows)).to(crops.images.device)
        pred = model(crops.images[frames])
        if track is not None:
            pred = with_track(pred, track[frames])
            terms, _ = image_terms(pred, crops, frames, maps, renderer, weights.coverage_radius,
                                   bool(weights.part_coverage))
            terms.update(articulated_terms(pred, model.template, reference, frames))
            loss, stats = weigh(terms, weights)
        else:
            if pool_align:
                pred = pool_alignment(pred, crops.valid[frames])
            loss, stats = adaptation_losses(pred, crops, frames, VideoMaps(maps.parts, maps.texture, base), renderer,
                                            laplacian, weights, fold)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            m = cfg.base_momentum
            base = m * base + (1 - m) * pred.verts.detach().mean(0)
            if track is not None:
                reference = dataclasses.replace(
                    reference, bone_scale=(m * reference.bone_scale.log()
                                           + (1 - m) * pred.bone_scale.detach().log().mean(0)).exp(),
                    residual=m * reference.residual + (1 - m) * pred.residual.detach().mean(0))
        stats.update(step=step, loss=float(loss.detach()), seconds=time.time() - tic)
        history.append(stats)
        bar.set_postfix(loss=f"{stats['loss']:.4f}", sil=f"{stats.get('silhouette', 0):.4f}",
                        part=f"{stats.get('part_map', 0):.4f}")
    return history
