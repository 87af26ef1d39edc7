"""Config of ``python -m adapt.run`` (online adaptation to one video); every key documented beside its default."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from birdmesh.config import Count, Fraction, FrameSide, NonNegative, NonNegativeInt, Positive, RenderSide
from correspondence.config import PropagationConfig


@dataclass(frozen=True)
class InputConfig:
    max_side: FrameSide = 854  # frames are resized so their longer side is at most this (854 = DAVIS 480p; >= 64)
    max_frames: NonNegativeInt = 0  # use at most this many frames (0 = all)
    stride: Count = 1  # keep every n-th frame
    grabcut_iterations: Count = 5  # OpenCV GrabCut iterations for --box and the automatic first mask


@dataclass(frozen=True)
class CorrespondenceSettings:
    checkpoint: str = ""  # correspondence weights ("" = the shipped correspondence/weights/uvc_cpu.pt)
    # pixels (raw Lab colours) is the default while it propagates birds better than the shipped learned model
    # (with adapt.run's settings, birds_dev J&F 0.910 vs 0.872 fused, flight benchmark 0.383 vs 0.277: the model
    # card's table, tests/correspondence/test_adapt_default.py); learned uses ``checkpoint``
    method: Literal["learned", "pixels"] = "pixels"


@dataclass(frozen=True)
class PartsConfig:
    num_parts: Count = 10  # K random parts drawn on the first frame (k-means inside the mask)
    color_weight: NonNegative = 0.5  # weight of Lab colour against position in the k-means features
    # a frame whose propagated mask covers less than this fraction of the frame, and less than min_area_first of the
    # first frame's mask, is "vanished" (not adapted on): a small bird is not vanished for being small (flight clips:
    # the true masks of birds 60 px across cover 0.0018-0.003 of the frame; slow take-off / medium flap adapted IoU
    # 0.412 / 0.570 -> 0.547 / 0.703 with zoomed propagation; DAVIS birds: first masks of 5.3-5.6 %, unchanged)
    min_area: Fraction = 0.002
    min_area_first: Fraction = 0.1

    def vanished_below(self, first_area: float) -> float:
        """The mask area (fraction of the frame) under which a frame is vanished, for a first mask of ``first_area``."""
        return min(self.min_area, self.min_area_first * first_area)


@dataclass(frozen=True)
class FlagsConfig:
    # report.json "frame_flags" and the overlay's corner (adapt/flags.py); truncated and close-up need no setting
    min_confidence: Fraction = 0.5  # low confidence: the propagated mask's mean certainty |2p - 1| below this
    max_area_jump: Positive = 2.0  # low confidence too: the mask's area changes by more than this factor
    # area drift: the mask's area is more than this factor above or below the first frame's. Calibrated on 893
    # propagated frames with ground truth (pixels, stride 4: flight, synthetic, birds_dev; session 26): frames with
    # IoU < 0.5 flagged with precision 0.84, recall 0.83, and no frame of birds_dev or the synthetic videos (1.5:
    # 0.72 / 0.89 and 4-8 % of those; 3: 0.89 / 0.66). The certainty rule alone: 0.80 / 0.17 at 0.5
    max_area_drift: Positive = 2.0


@dataclass(frozen=True)
class PredictorSettings:
    checkpoint: str = ""  # mesh predictor weights ("" = the shipped mesh_recon/weights/cmr_bird_cpu.pt)
    crop_padding: NonNegative = 0.2  # margin around the mask's box in the predictor's square crop (as in training)
    # a predictor with an alignment head (model.align_stages > 0) moves vertices to fit each frame: "video" averages
    # its moves over the frames (each adaptation window, then the whole video) so the video keeps one shape;
    # "frame" keeps each frame's own (the frame-wise baseline always does)
    align_pooling: Literal["video", "frame"] = "video"


@dataclass(frozen=True)
class LossWeights:
    part_map: NonNegative = 1.0  # rendered vs propagated per-part maps, each normalized by its maximum
    part_centre: NonNegative = 1.0  # distance between rendered and propagated part centres (NDC)
    silhouette: NonNegative = 5.0  # soft silhouette vs propagated mask (MSE); 2 -> 5: birds_dev IoU 0.716 -> 0.724
    # observed pixels (mask > 0.5) the rendering misses pull their nearest projected vertex (squared NDC distance):
    # reaches necks and legs the soft silhouette's gradient cannot see (birds_dev flamingo 0.681 -> 0.763 with
    # pixel_stride 4; 200 gave 0.715)
    coverage: NonNegative = 50.0
    # NDC distance beyond which an uncovered pixel pulls no harder (Huber); null = by predictor: none (squared)
    # free-form, 0.05 articulated. 4 synthetic videos, articulated: camera-frame Chamfer 0.0189 -> 0.0169 (flap
    # 0.017 -> 0.010: stray patches of the propagated mask far from the bird outweighed its edges), birds_dev IoU
    # 0.630 -> 0.649, part accuracy 0.638 -> 0.613
    coverage_radius: Optional[Positive] = None
    # the same pull part by part (adapt/losses.py: part_coverage_loss): a pixel propagated as part k and not drawn
    # as part k pulls the nearest vertex of part k. null = by predictor: 0 free-form (not measured), 10 articulated:
    # birds_dev (600 refinement steps) part accuracy 0.614 -> 0.633, IoU 0.707 -> 0.699, d=10 0.650 -> 0.639 (50:
    # 0.673, 0.695, 0.631); it does not turn the flamingo's leg into its neck: the parts are mapped to the mesh
    # through its own first-frame fit, where the leg already covers the neck
    part_coverage: Optional[NonNegative] = None
    texture: NonNegative = 0.5  # shared video texture rendered vs the frame (masked L1)
    # ARAP energy between each frame's mesh and the shared base shape. With the predictor's alignment head (shipped
    # since 2026-12-02) 0.3 -> 1 keeps the video's shapes closer (birds_dev seed 0: consistency d=10 0.700 -> 0.704,
    # IoU 0.808 -> 0.811); the step-17500 predictor without the head preferred 0.3 (IoU 0.762 -> 0.770)
    arap: NonNegative = 1.0
    laplacian: NonNegative = 1.0  # Laplacian of the residual (frame mesh - base shape)
    camera_smooth: NonNegative = 1.0  # consecutive-frame camera change (pixels / frame size, quaternion)
    residual_smooth: NonNegative = 1.0  # consecutive-frame change of the residual
    # articulated predictor only (adapt/pose_space.py): priors and smoothness in pose space
    pose_prior: NonNegative = 0.001  # squared Mahalanobis distance per dimension to the avian pose prior (fitted on
    # perched birds: at 0.01 it folded a spread wing back against the silhouette, tests/adapt/test_pose_space.py)
    bone_prior: NonNegative = 0.01  # the same for the bone-length factors
    # squared Frobenius distance of every joint rotation to the network's frame-wise prediction (before the
    # adaptation; in the refinement, the adapted network's), in each frame times the squared IoU of that prediction's
    # silhouette with the propagated mask (pose_space.shape_reference): propagated masks that lose a beating wing
    # otherwise fold it. Synthetic 4 videos (step-7000 predictor, refine 300): camera-frame Chamfer 0.0265 at 0 ->
    # 0.0192 at 10 unweighted -> 0.0193 at 20 weighted; birds_dev IoU 0.642 -> 0.570 -> 0.586
    pose_anchor: NonNegative = 20.0
    rotation_smooth: NonNegative = 1.0  # consecutive-frame change of every joint rotation (squared Frobenius)
    fold: NonNegative = 10.0  # adjacent faces folding beyond the rest bird's (relu(cos_rest - cos))
    # the same for the free-form predictor, beyond its mean bird (adapt/losses.py: fold_loss), in the adaptation and
    # the refinement: the coverage pull otherwise crumples the surface. birds_dev seed 0: IoU 0.820 / 0.806 / 0.730
    # at 0 / 1 / 10, adjacent-normal angle 72.3 / 18.8 / 14.8 degrees (frame-wise 18.9), folded edges 0.357 / 0.018 /
    # 0.011, consistency d=10 0.718 / 0.732 / 0.700, part accuracy 0.681 / 0.715 / 0.694
    fold_free_form: NonNegative = 1.0
    consistency: NonNegative = 10.0  # per-frame bones / residual vs the video's shared ones
    # the same term in the articulated refinement, where bones and residual are already one for the video: there it
    # only held them to the adapted network's (10: birds_dev IoU 0.665, flamingo legs x1.7; 0: 0.675, legs x2.0,
    # synthetic camera-frame Chamfer 0.0169 either way)
    refine_consistency: NonNegative = 0.0
    # the articulated refinement's free base-shape offset (optim.base_offset): its squared Laplacian and size
    # (canonical units). 4 synthetic videos: camera-frame Chamfer 0.0193
    # -> 0.0189, IoU 0.750 -> 0.768; birds_dev IoU 0.586 -> 0.630 (flamingo 0.566, mallard 0.693)
    base_offset_laplacian: NonNegative = 10.0
    base_offset_size: NonNegative = 1.0

    def coverage_reach(self, articulated: bool) -> float | None:
        """``coverage_radius`` resolved: as set, or by predictor (None = squared free-form, 0.05 articulated)."""
        if self.coverage_radius is not None:
            return self.coverage_radius
        return 0.05 if articulated else None

    def part_coverage_weight(self, articulated: bool) -> float:
        """``part_coverage`` resolved: as set, or by predictor (0 free-form, 10 articulated)."""
        if self.part_coverage is not None:
            return self.part_coverage
        return 10.0 if articulated else 0.0


@dataclass(frozen=True)
class OptimConfig:
    iterations: NonNegativeInt = 150  # adaptation steps over mini-batches of consecutive frames
    batch_size: Count = 8  # frames per step (a contiguous window)
    lr: Positive = 5e-5  # Adam learning rate of the adapted weights
    layers: str = "all"  # which predictor weights adapt: all | heads | encoder (prefix list, comma separated)
    render_size: RenderSide = 64  # side of the soft renders compared with the propagated labels
    sigma: Positive = 1e-4  # SoftRas coverage sharpness (NDC^2)
    gamma: Positive = 1e-4  # SoftRas depth temperature
    base_momentum: Fraction = 0.9  # running average of the shared base shape (per step)
    # per-frame refinement after the adaptation, steps over windows of batch_size frames (0 = off). Free-form
    # (adapt/refine.py: symmetric vertex offsets + camera corrections + one offset shared by the video): birds_dev
    # adapted IoU 0.712 -> 0.767 with the step-15500 predictor. Articulated (adapt/pose_space.py): each frame's
    # rotations and camera move only in the steps whose window holds it, 8 frames a step; birds_dev IoU 0.673 /
    # 0.707 / 0.725 at 300 / 600 / 1200 steps (session 36; 300 was the default until then)
    refine_iterations: NonNegativeInt = 600
    refine_lr: Positive = 3e-3  # Adam learning rate of the offsets (canonical units) and camera corrections
    refine_render_size: RenderSide = 64  # side of the soft renders during the refinement
    # articulated refinement: one free symmetric per-vertex offset of the video's base shape beside the smooth basis
    base_offset: bool = True
    viewpoint_switch_cost: NonNegative = 2.0  # articulated: cost of one radian of camera rotation between frames
    # when one camera-hypothesis track is chosen for the video (adapt/viewpoint.py)
    # articulated: refine this many steps on the track and on its alternative, go on with the alternative only if
    # its loss ends lower and its silhouette IoU no lower (adapt/pose_space.py: refit_choice); 0 = off, the
    # default since session 35: with the head and tail marked, the switches it made were wrong (birds_dev mallard
    # turned back to front, IoU 0.723 vs 0.743 on the track; synthetic swimmer camera-frame Chamfer 0.0148 vs 0.0139)
    # and it doubles the refinement's time
    viewpoint_refit_steps: NonNegativeInt = 0


@dataclass(frozen=True)
class ExportConfig:
    # animation.glb of an articulated predictor: "rig" = skinned on the 25-joint skeleton, world-frame OBJs and
    # pose.json (adapt/export_articulated.py); "morph" = one morph target per frame with canonical OBJs (the
    # free-form predictor always writes morph)
    animation: Literal["rig", "morph"] = "rig"
    overlay: bool = True  # write overlay.mp4
    overlay_max_side: FrameSide = 640  # longer side of each half of overlay.mp4 (frames are shrunk to fit)


@dataclass(frozen=True)
class AdaptConfig:
    seed: int = 0
    device: str = "auto"
    input: InputConfig = field(default_factory=InputConfig)
    correspondence: CorrespondenceSettings = field(default_factory=CorrespondenceSettings)
    # see correspondence/config.py; the pixels method on a stride-4 grid keeps necks and legs (configs/adapt.yaml).
    # Small birds are propagated in zoomed windows (flight benchmark, 12 clips: adapted IoU 0.278 -> 0.297, 8 clips
    # up; 0.351 with zoom_gate, the default; birds wider or taller than ~170 px, such as the DAVIS birds and the
    # cockatoo, are not zoomed: unchanged)
    propagation: PropagationConfig = field(default_factory=lambda: PropagationConfig(pixel_stride=4, zoom=True))
    parts: PartsConfig = field(default_factory=PartsConfig)
    flags: FlagsConfig = field(default_factory=FlagsConfig)
    predictor: PredictorSettings = field(default_factory=PredictorSettings)
    loss: LossWeights = field(default_factory=LossWeights)
    optim: OptimConfig = field(default_factory=OptimConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
