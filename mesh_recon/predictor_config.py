"""Config of the CMR mesh predictor jobs (training, evaluation, export); every key documented beside its default.

Loss weights default to CMR's (``akanazawa/cmr: experiments/shape.py``); the YAML files in ``configs/`` say where
and why they differ.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from birdmesh.config import Count, Fraction, NonNegative, NonNegativeInt, Positive

from .synth import SynthSettings


@dataclass(frozen=True)
class ModelConfig:
    image_size: Count = 128  # input side S in pixels (a multiple of 32); CMR used 256
    feature_dim: Count = 200  # image feature shared by the heads (CMR nz_feat)
    template_level: NonNegativeInt = 3  # icosphere subdivisions (3: 642 vertices, 1280 faces)
    num_keypoints: Count = 12  # rows of vert2kp (the synthetic data's avian keypoints)
    flow_channels: Count = 128  # width of the texture-flow decoder's first layer (then /2, /4, /4, /8)
    scale_prior: Positive = 0.8  # camera scale predicted as scale_prior * exp(a): the typical synthetic scale
    align_stages: NonNegativeInt = 0  # vertex-alignment refinement stages after the shape head (0 = CMR's heads
    # only): image features sampled at each vertex's projection move it (predictor_networks.VertexAlignHead)
    align_hidden: Count = 96  # width of each alignment stage's per-vertex layers
    shape: Literal["free", "articulated"] = "free"  # free: CMR's per-vertex offsets of a learned icosphere mean
    # shape; articulated: joint rotations, bone lengths and a smooth residual of the skinned avian mesh
    # (mesh_recon.articulated; template_level and align_* do not apply)
    residual_basis: Count = 48  # articulated: low-frequency Laplacian eigenvectors spanning the residual
    camera_hypotheses: Count = 8  # articulated: cameras with probabilities per image (camera multiplex)


@dataclass(frozen=True)
class LossConfig:
    mask: NonNegative = 2.0  # silhouette MSE (soft render vs mask)
    keypoint: NonNegative = 30.0  # squared NDC error of visible projected keypoints
    camera: NonNegative = 2.0  # 1 - (q . q_gt)^2 + squared scale/translation error, when the batch has GT cameras
    chamfer: NonNegative = 0.0  # 3D Chamfer distance to the ground-truth mesh, when the batch has one (synthetic;
    # not in CMR, whose CUB images have none)
    coverage: NonNegative = 0.0  # mask pixels the render misses pull their nearest projected vertex (the adaptation's
    # term; not in CMR): the soft silhouette's gradient reaches only about a pixel past the rendered outline
    deform: NonNegative = 10.0  # mean |delta v|
    laplacian: NonNegative = 30.0  # mean |L v| (uniform Laplacian) of the predicted vertices
    vert2kp_entropy: NonNegative = 0.16  # entropy of each keypoint's distribution over vertices
    texture: NonNegative = 0.5  # masked L1 between the rendered predicted texture and the image
    texture_feature: NonNegative = 0.5  # LPIPS-like distance of the predictor's own stem features (frozen here)
    texture_dt: NonNegative = 0.5  # mask barrier sampled at the texture flow (keeps the flow on the bird)
    # Articulated predictor only (model.shape = articulated); each needs the synthetic ground truth it names.
    pose: NonNegative = 1.0  # |R - R_gt|^2 of the joint rotations (synthetic body_pose)
    bone: NonNegative = 1.0  # squared log error of the bone-length factors
    vertex: NonNegative = 10.0  # mean distance of each posed vertex to its ground-truth position (canonical frame)
    residual: NonNegative = 1.0  # mean norm of the rest-shape residual (the skeleton should carry the shape)
    residual_laplacian: NonNegative = 10.0  # mean norm of its uniform Laplacian
    hypothesis: NonNegative = 0.5  # cross-entropy of the camera probabilities to the best hypothesis
    render_size: Count = 64  # side of the soft renders the losses compare with (masks/images are area-resized)
    sigma: Positive = 1e-4  # SoftRas coverage sharpness (NDC^2)
    gamma: Positive = 1e-4  # SoftRas depth softmax temperature
    barrier_sharpness: Positive = 50.0  # k of the flow barrier 1 / (1 + exp(-k signed distance / side)) (CMR: 50)


@dataclass(frozen=True)
class DataConfig:
    folder: str = ""  # images of 'python -m mesh_recon.synth images'; "" = generate on the fly (never repeats)
    seed: int = 0  # synthetic dataset seed for on-the-fly images (evaluation uses another one)
    workers: NonNegativeInt = 1  # DataLoader processes generating/reading batches
    data_dir: str = ""  # shared data folder ("" = $BIRDMESH_DATA or ../shared/data)
    synth: SynthSettings = field(default_factory=SynthSettings)  # randomisation of on-the-fly images


@dataclass(frozen=True)
class TrainConfig:
    out_dir: str = "runs/cmr_cpu"  # checkpoints (last.pt), config.yaml and log.csv
    seed: int = 0  # torch seed (+ rank under torchrun)
    device: str = "auto"  # auto = CUDA when available
    batch_size: Count = 16  # per process
    steps: NonNegativeInt = 8000  # total optimizer steps
    lr: Positive = 2e-4  # Adam learning rate (CMR: 1e-4 with 500 epochs; more here for fewer steps)
    decay_fraction: Fraction = 0.25  # the last fraction of steps decays lr linearly to lr * final_lr_factor
    final_lr_factor: NonNegative = 0.05
    gt_camera_steps: NonNegativeInt = 0  # the first steps render with the ground-truth cameras (shape learns while the
    # camera head learns from the camera term alone; CMR did so throughout); afterwards with the predicted ones
    init_from_free: str = ""  # articulated: start the encoder and texture flow from these free-form weights
    # (e.g. mesh_recon/weights/cmr_bird_cpu.pt); "" = from scratch
    grad_clip: NonNegative = 10.0  # max global gradient norm (0 = off)
    checkpoint_every: Count = 250
    log_every: Count = 25
    threads: NonNegativeInt = 0  # torch threads per process (0 = torch's default)


@dataclass(frozen=True)
class CMRConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
