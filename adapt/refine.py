"""Per-frame refinement after the network adaptation: small symmetric vertex offsets and camera corrections.

The adapted predictor fits the propagated silhouettes of a video only up to what its weights can express
(birds_dev: IoU 0.71-0.82 between its silhouettes and the propagated masks). This stage optimizes, for every frame,
a mirror-symmetric vertex offset and a camera correction on top of the adapted prediction, plus one offset shared by
the whole video (it moves the base shape too, e.g. to grow a neck the predictor lacks), with the same losses as the
adaptation: per-frame offsets stay small residuals of the shared base shape (ARAP, Laplacian, temporal smoothness)
and the shared offset stays smooth (Laplacian).
"""
from __future__ import annotations

import dataclasses
import time

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from mesh_recon.mesh import SymmetricMesh, laplacian_smoothing_loss, symmetrize_vertices, uniform_laplacian
from mesh_recon.predictor import Prediction
from mesh_recon.render import SoftRenderer, SoftRenderSettings

from .config import LossWeights, OptimConfig
from .losses import FoldReference
from .optimize import VideoCrops, VideoMaps, adaptation_losses, frame_windows


def apply_corrections(pred: Prediction, offsets: Tensor, cam_deltas: Tensor, sym: SymmetricMesh) -> Prediction:
    """The prediction with per-frame corrections.

    Args:
        pred: Prediction of B frames; offsets: (B, Vc + Vr, 3) centre + right vertex offsets (mirrored here);
        cam_deltas: (B, 7) added to the cameras (the quaternion is renormalized).
    Returns:
        Prediction with verts + symmetric offsets and the corrected cameras (other fields shared).
    """
    delta = symmetrize_vertices(offsets, sym)
    cams = pred.cams + cam_deltas
    cams = torch.cat([cams[:, :3], F.normalize(cams[:, 3:], dim=1)], dim=1)
    return dataclasses.replace(pred, verts=pred.verts + delta, delta_v=pred.delta_v + delta, cams=cams)


def _select(pred: Prediction, frames: Tensor) -> Prediction:
    return dataclasses.replace(pred, **{name: getattr(pred, name)[frames] for name in Prediction.BATCHED
                                        if getattr(pred, name) is not None})


def refine_frames(pred: Prediction, crops: VideoCrops, maps: VideoMaps, sym: SymmetricMesh, cfg: OptimConfig,
                  weights: LossWeights, seed: int = 0, fold: FoldReference | None = None
                  ) -> tuple[Prediction, list[dict]]:
    """Optimize per-frame offsets, camera corrections and a shared offset (``cfg.refine_iterations`` steps).

    Each step takes a window of up to ``cfg.batch_size`` consecutive frames (``frame_windows``, as the adaptation
    does), so the temporal terms see neighbours; ``fold`` as in ``adaptation_losses``. Returns the refined
    Prediction of all T frames and the loss history.
    """
    steps = cfg.refine_iterations
    if steps <= 0:
        return pred, []
    T, num_free, device = len(crops.images), sym.num_centre + sym.num_right, pred.verts.device
    offsets = torch.zeros(T, num_free, 3, device=device, requires_grad=True)
    cam_deltas = torch.zeros(T, 7, device=device, requires_grad=True)
    shared = torch.zeros(1, num_free, 3, device=device, requires_grad=True)
    optimizer = torch.optim.Adam([offsets, cam_deltas, shared], lr=cfg.refine_lr)
    renderer = SoftRenderer(SoftRenderSettings(image_size=cfg.refine_render_size, sigma=cfg.sigma, gamma=cfg.gamma))
    laplacian = uniform_laplacian(pred.faces, len(maps.base)).to(device=maps.base.device, dtype=maps.base.dtype)
    windows, history = frame_windows(T, cfg.batch_size, seed + 1), []
    fixed = dataclasses.replace(pred, verts=pred.verts.detach(), cams=pred.cams.detach())
    bar = tqdm(range(steps), desc="refine", unit="step")
    for step in bar:
        tic = time.time()
        frames = torch.from_numpy(next(windows)).to(crops.images.device)
        window = apply_corrections(_select(fixed, frames), offsets[frames] + shared, cam_deltas[frames], sym)
        shared_v = symmetrize_vertices(shared, sym)
        window_maps = VideoMaps(maps.parts, maps.texture, maps.base + shared_v[0])
        loss, stats = adaptation_losses(window, crops, frames, window_maps, renderer, laplacian, weights, fold)
        shared_smoothness = laplacian_smoothing_loss(shared_v, laplacian)
        loss = loss + weights.laplacian * shared_smoothness
        stats["shared_laplacian"] = float(shared_smoothness.detach())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        stats.update(step=step, loss=float(loss.detach()), seconds=time.time() - tic)
        history.append(stats)
        bar.set_postfix(loss=f"{stats['loss']:.4f}", sil=f"{stats.get('silhouette', 0):.4f}")
    with torch.no_grad():
        return apply_corrections(fixed, offsets + shared, cam_deltas, sym), history
