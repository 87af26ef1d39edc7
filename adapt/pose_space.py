"""Online adaptation in pose space, for the articulated predictor (``mesh_recon.articulated``).

Per video, shared: bone lengths, the rest-shape residual (one base shape) and the texture; per frame: joint
rotations and the camera. There are no free per-frame vertex offsets, so a silhouette or a propagated part can only
be matched by moving the skeleton: the coverage term's pull on the nearest vertex turns a limb or the neck, and a
fold-preventing term keeps the skinned surface from crumpling where joints bend. The same image terms as the
free-form adaptation (``optimize.image_terms``) plus the avian pose and bone priors, temporal smoothness of joint
rotations, consistency of the per-frame bones and residuals with the video's, and a pose anchor: a 2-D mask cannot
tell a wing folded down from one spread towards the camera, so each frame's joints stay near the network's own
prediction, as firmly as that prediction's silhouette already fits the frame.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from birdmesh.metrics import mask_iou
from mesh_recon.articulated import ArticulatedPrediction
from mesh_recon.geometry import quaternion_to_rotation_matrix, weak_perspective_project
from mesh_recon.render import SoftRenderer, SoftRenderSettings, render_hard
from mesh_recon.skinned_template import SkinnedTemplate
from mesh_recon.skinning import matrix_to_axis_angle, matrix_to_rotation_6d, rotation_6d_to_matrix

from .config import LossWeights, OptimConfig
from .losses import FoldReference, fold_loss, fold_reference, temporal_smoothness
from .optimize import VideoCrops, VideoMaps, frame_windows, image_terms, video_maps, weigh
from .viewpoint import ViewpointTrack, choose_viewpoint_track, hypothesis_costs


def pose_prior_loss(rotations: Tensor, template: SkinnedTemplate) -> Tensor:
    """Mean squared Mahalanobis distance per dimension of the joint rotations (B, 24, 3, 3) to the avian pose prior."""
    d = matrix_to_axis_angle(rotations).flatten(1) - template.prior_pose_mean
    return ((d @ template.prior_pose_precision) * d).sum(1).mean() / d.shape[1]


def bone_prior_loss(bone_scale: Tensor, template: SkinnedTemplate) -> Tensor:
    """The same for bone-length factors (B, 24) and the template's bone prior (``adapt.run`` widens the avian one to
    the builds the predictor was trained on: ``SkinnedTemplate.widen_bone_prior``)."""
    d = bone_scale - template.prior_bone_mean
    return ((d @ template.prior_bone_precision) * d).sum(1).mean() / d.shape[1]


def rotation_smoothness(rotations: Tensor) -> Tensor:
    """Mean squared Frobenius change of joint rotations (B, J, 3, 3) between consecutive frames (0 if B < 2)."""
    return temporal_smoothness(rotations.flatten(1)) / rotations.shape[1]


@dataclass(frozen=True)
class ShapeReference:
    """What the frames of a video share: bone_scale (24,), residual (V, 3) model frame; fold: the template's rest
    mesh; rotations (T, 24, 3, 3): every frame's joint rotations as the network predicted them before the video's
    terms moved them (the pose anchor), held in each frame by anchor_weight (T,)."""

    bone_scale: Tensor
    residual: Tensor
    fold: FoldReference
    rotations: Tensor
    anchor_weight: Tensor


def shape_reference(pred: ArticulatedPrediction, template: SkinnedTemplate, keep: Tensor | None = None,
                    fit: Tensor | None = None) -> ShapeReference:
    """The video's shared bones (geometric mean) and residual (mean) over frames ``keep`` (T,) bool, fold data, and
    the pose anchor: each frame's rotations, weighted by ``fit`` (T,) squared, how well the frame's prediction already
    covers its propagated mask (IoU; None = 1): a network whose silhouette misses the bird is not trusted for its pose.
    """
    idx = torch.nonzero(keep).flatten() if keep is not None and bool(keep.any()) else torch.arange(len(pred.verts))
    return ShapeReference(pred.bone_scale[idx].log().mean(0).exp().detach(), pred.residual[idx].mean(0).detach(),
                          fold_reference(template.verts, template.faces), pred.rotations.detach(),
                          torch.ones(len(pred.verts), device=pred.verts.device) if fit is None else fit.square())


def video_reference(pred: ArticulatedPrediction, template: SkinnedTemplate, crops: VideoCrops) -> ShapeReference:
    """``shape_reference`` over the video's valid frames, its pose anchor weighted by each frame's silhouette fit."""
    return shape_reference(pred, template, crops.valid, silhouette_fit(pred.verts, pred.faces, pred.cams, crops))


def articulated_terms(pred: ArticulatedPrediction, template: SkinnedTemplate, ref: ShapeReference, frames: Tensor
                      ) -> dict:
    """Pose / bone priors, the pose anchor, rotation smoothness, fold, and consistency of bones and residual with
    the video's, for the prediction of frames ``frames`` (B,)."""
    scale = template.canonical_scale
    return {"pose_prior": pose_prior_loss(pred.rotations, template),
            # silhouettes and parts say little about depth: a joint turns only as far as they need
            "pose_anchor": (ref.anchor_weight[frames, None] * (pred.rotations - ref.rotations[frames]).square().sum(
                (-2, -1))).mean(),
            "bone_prior": bone_prior_loss(pred.bone_scale, template),
            "rotation_smooth": rotation_smoothness(pred.rotations),
            "fold": fold_loss(pred.verts, pred.faces, ref.fold),
            "consistency": (pred.bone_scale.log() - ref.bone_scale.log()).square().mean()
            + ((pred.residual - ref.residual) * scale).square().sum(-1).mean()}


def base_offset_terms(offset: Tensor, laplacian: Tensor, scale: float) -> dict:
    """Regularisers of the video's free base-shape offset (V, 3), model frame: mean squared uniform Laplacian
    (``laplacian`` (V, V) sparse) and mean squared length, in canonical units (``scale`` per model unit)."""
    canonical = offset * scale
    return {"base_offset_laplacian": torch.sparse.mm(laplacian, canonical).square().sum(-1).mean(),
            "base_offset_size": canonical.square().sum(-1).mean()}


def select_frames(pred: ArticulatedPrediction, frames: Tensor) -> ArticulatedPrediction:
    """The prediction of frames ``frames`` (B,) only."""
    return dataclasses.replace(pred, **{name: getattr(pred, name)[frames] for name in pred.BATCHED
                                        if getattr(pred, name) is not None})


@torch.no_grad()
def silhouette_fit(verts: Tensor, faces: Tensor, cams: Tensor, crops: VideoCrops, size: int = 64) -> Tensor:
    """(T,) IoU of each frame's hard silhouette (verts (T, V, 3), cams (T, 7)) with its propagated mask, at ``size``
    pixels; 0 where the bird vanished (it says nothing there)."""
    masks = (F.interpolate(crops.masks, size=(size, size), mode="area") > 0.5).float().cpu()
    sil = render_hard(weak_perspective_project(verts, cams), faces, size).mask
    iou = mask_iou(sil.cpu(), masks)[:, 0]
    iou[~crops.valid.cpu()] = 0.0
    return iou.to(verts.device)


@torch.no_grad()
def video_viewpoint(pred: ArticulatedPrediction, crops: VideoCrops, size: int = 64, switch_cost: float = 2.0
                    ) -> ViewpointTrack:
    """Choose one camera-hypothesis track for the video: each hypothesis' hard silhouette against the propagated
    mask (IoU) and its probability, with smooth camera motion (``viewpoint.choose_viewpoint_track``)."""
    T, H = pred.cam_hypotheses.shape[:2]
    iou = torch.stack([silhouette_fit(pred.verts, pred.faces, pred.cam_hypotheses[:, h], crops, size)
                       for h in range(H)], 1)
    rotations = quaternion_to_rotation_matrix(pred.cam_hypotheses[..., 3:].cpu())
    return choose_viewpoint_track(rotations, hypothesis_costs(pred.cam_logits.cpu(), iou), switch_cost)


def with_track(pred: ArticulatedPrediction, track: Tensor) -> ArticulatedPrediction:
    """The prediction whose cameras are the track's hypotheses: track (T,) int64 for T frames."""
    frames = torch.arange(len(track), device=pred.cams.device)
    return dataclasses.replace(pred, cams=pred.cam_hypotheses[frames, track.to(pred.cams.device)])


def posed(pred: ArticulatedPrediction, template: SkinnedTemplate, rotations: Tensor, bone_scale: Tensor,
          residual: Tensor, cams: Tensor) -> ArticulatedPrediction:
    """The prediction re-posed: rotations (B, 24, 3, 3), bone_scale (24,), residual (V, 3) shared, cams (B, 7)."""
    B = len(rotations)
    verts, joints = template.pose(template.verts + residual, rotations, bone_scale.expand(B, -1))
    return dataclasses.replace(pred, verts=verts, joints=joints, kp3d=template.kp_regressor @ verts, cams=cams,
                               rotations=rotations, bone_scale=bone_scale.expand(B, -1),
                               residual=residual.expand(B, -1, -1), delta_v=verts - pred.mean_verts)


def refine_pose_space(pred: ArticulatedPrediction, crops: VideoCrops, maps: VideoMaps, template: SkinnedTemplate,
                      cfg: OptimConfig, weights: LossWeights, seed: int = 0
                      ) -> tuple[ArticulatedPrediction, list[dict]]:
    """Optimise per-frame joint rotations and cameras, and the video's shared bones and residual (``PoseSpaceFit``)
    for ``cfg.refine_iterations`` steps. Returns the refined prediction of all T frames and the loss
    history."""
    steps = cfg.refine_iterations
    if steps <= 0:
        ref = shape_reference(pred, template, crops.valid)
        return posed(pred, template, pred.rotations, ref.bone_scale, ref.residual, pred.cams), []
    fit = PoseSpaceFit(pred, crops, maps, template, cfg, weights, seed)
    fit.run(steps)
    return fit.result(), fit.history


class PoseSpaceFit:
    """The pose-space refinement, resumable: ``run(n)`` takes n more steps, the frame windows going on where they
    stopped (run(a) then run(b) is run(a + b)); ``result()`` is the refined prediction of all T frames.

    Starts from ``pred`` (T frames, cameras on one viewpoint track) with the video's mean bones and residual;
    rotations change by a 6-D offset composed on the right of each predicted rotation, bones by a shared log factor
    (mirror partners equal), the residual by a shared symmetric combination of the template's smooth basis and, with
    ``cfg.base_offset``, a shared symmetric per-vertex offset (``base_offset_terms``).
    """

    def __init__(self, pred: ArticulatedPrediction, crops: VideoCrops, maps: VideoMaps, template: SkinnedTemplate,
                 cfg: OptimConfig, weights: LossWeights, seed: int = 0):
        from mesh_recon.bird_model import JOINT_FLIP

        self.pred, self.crops, self.maps, self.template = pred, crops, maps, template
        self.cfg, self.weights = cfg, weights
        self.refine_weights = dataclasses.replace(weights, consistency=weights.refine_consistency)
        self.ref = video_reference(pred, template, crops)
        T, device = len(pred.verts), pred.verts.device
        self.identity = matrix_to_rotation_6d(torch.eye(3, device=device))
        self.rot_delta = torch.zeros(T, pred.rotations.shape[1], 6, device=device, requires_grad=True)
        self.cam_delta = torch.zeros(T, 7, device=device, requires_grad=True)
        self.bone_delta = torch.zeros(pred.bone_scale.shape[1], device=device, requires_grad=True)
        self.coeff_delta = torch.zeros(template.basis.shape[1], 3, device=device, requires_grad=True)
        # the smooth basis cannot thin a songbird's head and body into a flamingo's: one free offset for the video
        self.offset = torch.zeros_like(template.verts, requires_grad=cfg.base_offset)
        self.laplacian = template.laplacian().to(device) if cfg.base_offset else None
        params = [self.rot_delta, self.cam_delta, self.bone_delta, self.coeff_delta]
        self.optimizer = torch.optim.Adam(params + ([self.offset] if cfg.base_offset else []), lr=cfg.refine_lr)
        self.renderer = SoftRenderer(SoftRenderSettings(image_size=cfg.refine_render_size, sigma=cfg.sigma,
                                                        gamma=cfg.gamma))
        self.mirror_bones = [JOINT_FLIP[j] - 1 for j in range(1, 25)]
        self.windows, self.history = frame_windows(T, cfg.batch_size, seed + 1), []

    def current(self, frames: Tensor) -> ArticulatedPrediction:
        pred, template = self.pred, self.template
        rotations = pred.rotations.detach()[frames] @ rotation_6d_to_matrix(self.identity + self.rot_delta[frames])
        cams = pred.cams.detach()[frames] + self.cam_delta[frames]
        cams = torch.cat([cams[:, :3], F.normalize(cams[:, 3:], dim=1)], 1)
        bones = self.ref.bone_scale * torch.exp(0.5 * (self.bone_delta + self.bone_delta[self.mirror_bones]))
        residual = self.ref.residual + template.symmetrize(((template.basis @ self.coeff_delta) + self.offset)[None])[0]
        return posed(select_frames(pred, frames), template, rotations, bones, residual, cams)

    def run(self, steps: int) -> None:
        device = self.pred.verts.device
        bar = tqdm(range(steps), desc="refine pose", unit="step")
        for _ in bar:
            tic = time.time()
            frames = torch.from_numpy(next(self.windows)).to(device)
            window = self.current(frames)
            terms, _ = image_terms(window, self.crops, frames, self.maps, self.renderer,
                                   self.weights.coverage_radius, bool(self.weights.part_coverage))
            terms.update(articulated_terms(window, self.template, self.ref, frames))
            if self.cfg.base_offset:
                terms.update(base_offset_terms(self.offset, self.laplacian, self.template.canonical_scale))
            loss, stats = weigh(terms, self.refine_weights)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            stats.update(step=len(self.history), loss=float(loss.detach()), seconds=time.time() - tic)
            self.history.append(stats)
            bar.set_postfix(loss=f"{stats['loss']:.4f}", sil=f"{stats.get('silhouette', 0):.4f}")

    @torch.no_grad()
    def result(self) -> ArticulatedPrediction:
        return self.current(torch.arange(len(self.pred.verts), device=self.pred.verts.device))


@dataclass(frozen=True)
class TrackRefit:
    """The refinement kept: pred (T frames), maps pooled on its track, history, track (T,) int64, and report: the
    candidates ("track", "alternative") and the one chosen; with two, the steps each took before the choice and
    their mean loss over the last of them and silhouette IoU with the propagated masks then."""

    pred: ArticulatedPrediction
    maps: VideoMaps
    history: list
    track: Tensor
    report: dict


def refine_best_track(pred: ArticulatedPrediction, crops: VideoCrops, template: SkinnedTemplate,
                      viewpoint: ViewpointTrack, cfg: OptimConfig, weights: LossWeights, seed: int = 0,
                      tail: int = 50, maps: VideoMaps | None = None) -> TrackRefit:
    """``refine_pose_space`` on the video's viewpoint track; with ``cfg.viewpoint_refit_steps`` > 0 first that many
    steps on it and on its alternative (the best track avoiding its main hypothesis, same frame windows), then the
    rest of the steps on the one ``refit_choice`` keeps (losses: means over the last ``tail`` of those steps). The
    track is chosen from the network's meshes; a bird that is not the predictor's songbird (a flamingo, a duck) can
    look better from the wrong side until its bones and pose have adapted, so the choice is made again after fitting.
    ``maps``: those of ``pred`` on ``viewpoint.track`` when already pooled (else pooled here)."""
    steps = cfg.refine_iterations
    candidates = [viewpoint.track]
    if cfg.viewpoint_refit_steps > 0 and steps > 0 and viewpoint.alternative is not None:
        candidates.append(viewpoint.alternative)
    names = ["track", "alternative"][:len(candidates)]
    if len(candidates) == 1:
        on_track = with_track(pred, viewpoint.track)
        maps = video_maps(on_track, crops) if maps is None else maps
        refined, history = refine_pose_space(on_track, crops, maps, template, cfg, weights, seed)
        return TrackRefit(refined, maps, history, viewpoint.track, {"candidates": names, "chosen": "track"})
    probe = min(steps, cfg.viewpoint_refit_steps)
    fits, losses, ious = [], [], []
    for track in candidates:
        on_track = with_track(pred, track)
        fit = PoseSpaceFit(on_track, crops, video_maps(on_track, crops), template, cfg, weights, seed)
        fit.run(probe)
        last = fit.history[-tail:]
        losses.append(sum(h["loss"] for h in last) / len(last))
        probed = fit.result()
        ious.append(float(silhouette_fit(probed.verts, probed.faces, probed.cams, crops)[crops.valid].mean()))
        fits.append(fit)
    best = refit_choice(losses, ious)
    fits[best].run(steps - probe)
    report = {"candidates": names, "steps": probe, "loss": losses, "silhouette_iou": ious, "chosen": names[best]}
    return TrackRefit(fits[best].result(), fits[best].maps, fits[best].history, candidates[best], report)


def refit_choice(losses: list[float], ious: list[float]) -> int:
    """Which refit candidate goes on: index 0 (the video's track) unless another ended with a lower loss and a
    silhouette IoU (with the propagated masks) at least as high; then the one of lowest loss.

    The loss alone can prefer a bird turned back to front: on birds_dev the mallard's alternative ended with a loss
    0.547 vs 0.558 but IoU 0.726 vs 0.745, its tail where the duck's head is (contact sheet marks). Neither figure
    sees depth: on the synthetic swimmer both favoured the alternative (0.165 vs 0.176, 0.845 vs 0.828), which ended
    worse in 3-D (camera-frame Chamfer 0.0148 vs 0.0139); hence ``optim.viewpoint_refit_steps`` 0 by default.
    """
    best = min(range(len(losses)), key=losses.__getitem__)
    return best if ious[best] >= ious[0] else 0
