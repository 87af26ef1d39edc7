"""Config of the correspondence jobs (training, propagation, evaluation); every key documented beside its default."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from birdmesh.config import Count, Fraction, NonNegative, NonNegativeInt, Positive


@dataclass(frozen=True)
class ModelConfig:
    use_layer4: bool = False  # keep ResNet-18 layer4 (stride 1, 512-d, UVC) or stop after layer3 (256-d, CRW)
    temperature: Positive = 0.07  # softmax temperature of the affinity between L2-normalized features
    ae_channels: Count = 64  # width of the colour autoencoder's stride-8 code
    # what the encoder sees: the L channel (UVC: colour is only what it learns to carry) or L, a, b (it may then
    # also match on colour, as the raw-pixel baseline does); an L checkpoint loads into a Lab encoder (zero a, b)
    encoder_input: Literal["L", "Lab"] = "L"
    # Lab encoder in training: share of samples whose a, b input is zeroed, so matching cannot rest on colour alone
    color_dropout: Fraction = 0.5


@dataclass(frozen=True)
class LossConfig:
    lab_weights: tuple[float, float, float] = (1.0, 10.0, 10.0)  # L1 weights of L, a, b (UVC: 1 / 10 / 10)
    color_switch: NonNegative = 0.1  # orthogonal regularization in colour space (reference rebuilt through A^T)
    concentration: NonNegative = 0.3  # window concentration regularizer (UVC --lc 0.3)
    concentration_window: Count = 8  # window of the concentration regularizer, in feature cells
    coordinate_cycle: NonNegative = 0.0  # optional cycle term in coordinate space (0 in UVC's released run)
    outlier_threshold: Optional[float] = 2.5  # per-sample loss above this is dropped (None = off)
    outlier_warmup_steps: NonNegativeInt = 2000  # no outlier rejection during the first steps of each phase


@dataclass(frozen=True)
class DataConfig:
    roots: tuple[str, ...] = ("$DATA/train_videos",)  # folders searched for frame folders and video clips
    cache_dir: str = "runs/frame_cache"  # decoded, downscaled frames (uint8 .npy per video), built once
    cache_short_side: Count = 160  # frames are cached with this short side
    cache_stride: Count = 1  # keep every n-th frame of each video in the cache
    max_gap: Count = 10  # frame pairs are 1..max_gap cached frames apart
    patch_size: Count = 128  # warm-up: both frames cropped to this square size
    frame_size: Count = 192  # phase 2: target frame size (square)
    ref_patch_size: Count = 96  # phase 2: reference patch cropped from the reference frame
    rotation_deg: NonNegative = 10.0  # random rotation of the reference frame
    target_shift: NonNegative = 0.1  # the target's region moves by up to this fraction of its side
    scale_range: tuple[float, float] = (0.8, 1.2)  # random scale of the crops
    workers: NonNegativeInt = 1  # DataLoader worker processes


@dataclass(frozen=True)
class TrainConfig:
    out_dir: str = "runs/uvc_cpu"
    seed: int = 0
    device: str = "auto"
    batch_size: Count = 8  # per process
    lr: Positive = 1e-4
    # the encoder's lr decays linearly to lr * final_lr_factor over the run's last decay_steps steps (0 = constant,
    # as UVC). Tried on the Lab CPU run (constant 1e-4 to step 23500, then decayed to step 27000): val_dev J&F
    # 0.606 -> 0.611, birds_dev 0.824 -> 0.766 (its mallard-water swings 0.51-0.81 between checkpoints either way)
    decay_steps: NonNegativeInt = 0
    final_lr_factor: NonNegative = 0.05
    ae_steps: NonNegativeInt = 1500  # colour autoencoder pretraining steps (then frozen)
    ae_lr: Positive = 1e-3
    warmup_steps: NonNegativeInt = 3000  # phase 1: whole-patch reconstruction
    steps: NonNegativeInt = 20000  # total steps of phases 1 + 2
    checkpoint_every: Count = 250
    log_every: Count = 25
    threads: NonNegativeInt = 0  # torch threads per process (0 = leave torch's default)
    # the gray encoder in bfloat16 autocast where the device multiplies bf16 natively (else float32); affinities,
    # softmaxes and losses stay float32 (bench/train_uvc.py, 2 cores of an AVX-512-BF16 EPYC: a phase-2 step
    # 1.06 -> 0.71 s)
    bf16: bool = True


@dataclass(frozen=True)
class PropagationConfig:
    context_previous: NonNegativeInt = 7  # the first frame plus this many previous predictions
    topk: Count = 5  # references kept per target position
    radius: float = 12.0  # local window (feature cells) around each target position; <= 0 means global
    # windows of the first and of the previous frames; None = by method: ``radius`` for raw pixels, 12 and 6 cells
    # for learned features, whose far matches in the previous frames are mostly distractors (an early model: birds_dev
    # J&F 0.619 with 12 / 12, 0.651 with 12 / 6, 0.666 with 8 / 6; the shipped one, choosing on val_dev + birds_dev:
    # 8 / 6 0.561 + 0.745, 12 / 6 0.571 + 0.742); pixels fall 0.865 -> 0.786 with 12 / 6.
    # Ignored when radius <= 0 (all global).
    radius_first: Optional[float] = None
    radius_previous: Optional[float] = None
    # match the first frame over the whole image (UVC's test.py) instead of within its window like the others
    first_frame_global: bool = False
    # softmax temperature over the top-k similarities; None = by method: 0.02 for raw pixels (the benchmark protocol),
    # 0.05 for learned features (birds_dev J&F 0.729 -> 0.745, val_dev 0.556 -> 0.562; 0.01 gave 0.690 on birds_dev)
    temperature: Optional[Positive] = None
    # match on the features' first principal components (those of the first frame, then L2-normalized; 0 = all
    # channels); None = by method: 64 for learned features (birds_dev J&F 0.666 -> 0.680, affinity 4x cheaper),
    # all 27 for raw pixels
    match_dims: Optional[NonNegativeInt] = None
    # share of the learned encoder's layer2 in the similarity (the rest is its output layer's; 0 = output only, as
    # UVC); None = by method: 0.5 for learned features (birds_dev J&F 0.680 -> 0.729), raw pixels ignore it
    layer2_weight: Optional[Fraction] = None
    # share of raw Lab colour (3 x 3 patches of stride-8 cells, as the ``pixels`` method) in a learned model's
    # similarity: (1 - w) cos(learned) + w cos(colour); None = by method: 0.8 for learned models (shipped file, J&F
    # birds_dev 0.871, val_dev 0.660; features alone 0.781, 0.616), pixels ignore it. With w > 0 ("fused") the
    # windows and the temperature default to the pixels' (radius, 0.02)
    pixel_weight: Optional[Fraction] = None
    max_side: Count = 854  # frames are resized so their longer side is at most this
    chunk_size: Count = 2048  # target positions per affinity chunk (bounds memory)
    # joint: one top-k over the candidates of all context frames; average: a top-k per frame, frames averaged (UVC)
    context_mixing: Literal["joint", "average"] = "joint"
    # raw pixels' similarity: ``cosine`` of the Lab patches (the benchmark protocol), or ``distance`` = minus half
    # their squared distance, each frame's lightness scaled to the first frame's mean (brightness counts: an olive
    # bird no longer matches dark foliage as well as itself). Stride 4, J&F cosine -> distance: flight 0.383 -> 0.402,
    # birds_dev 0.910 -> 0.909; not the default: on the cockatoo it labels more wall in the close-ups and the meshes
    # reach the border beyond the bird in 62 frames instead of 15 (the model card)
    pixel_similarity: Literal["cosine", "distance"] = "cosine"
    pixel_stride: Count = 8  # grid of the ``pixels`` method, in pixels (4 keeps thin parts; the learned model is 8)
    # bfloat16 encoder + matching of learned features on CPUs with native bf16 (2x faster, same labels); raw pixels
    # always match in float32 (bf16 ties their near-1 cosines: birds_dev 0.865 -> 0.792)
    use_bf16: bool = True
    # on CPUs without native bf16, a learned model's encoder in int8 (``correspondence.int8``, calibrated on the
    # first frame): 2-core AVX2 CPU 1.41 -> 2.18 frames/s; J&F birds_dev 0.871 -> 0.870, val_dev 0.660 -> 0.660
    use_int8: bool = True
    # region-level localization (correspondence/track.py): each new frame, find where the object went (coarse global
    # match against the first and recent confident frames) and centre every context frame's window there; a frame
    # whose object collapsed or left is reported as background and the object is searched for in the whole frame
    # until found again. Off = every window around the same position (the protocol before).
    localize: bool = True
    localize_stride: Count = 8  # grid of the coarse match, in pixels (the feature grid if that is coarser)
    localize_memory: NonNegativeInt = 2  # recent confident frames kept beside the first one for the coarse match
    # a frame whose propagated label mass falls below this share of the tracked mass is lost (reported empty)
    lost_mass: Fraction = 0.2
    # tracked and searched for (fast): the best object-sized box near the motion prediction must hold at least this
    # mean matched label mass to centre the windows there (else they follow the motion prediction)
    search_score: Fraction = 0.1
    # lost: the same, weighted by nearness to where it was going (track.REFIND_SPREAD), to resume (else the frame stays
    # empty). With the nearness weight, flight J&F 0.460 -> 0.508 (0.3 -> 0.2 scored unweighted: 0.492 -> 0.511; 0.15 /
    # 0.25: 0.498 / 0.506); birds_dev 0.910 / 0.872 and val_dev 0.661 unchanged
    refind_score: Fraction = 0.2
    # a small object (first-frame extent x zoom_padding below zoom_size / zoom_min pixels) is propagated in a window
    # that follows it, zoom_size pixels wide for zoom_padding times its extent, at most zoom_max times enlarged
    # (correspondence/zoom.py; needs localize). Flight J&F 0.383 -> 0.396 (slow small birds 0.49 -> 0.73), DAVIS
    # birds too large to be zoomed: off here (the benchmark protocol), on in adapt.run (the model card)
    zoom: bool = False
    zoom_size: Count = 512
    zoom_padding: Positive = 2.0
    zoom_min: Positive = 1.5
    zoom_max: Positive = 3.0
    # keep only the object at the window's centre (zoom.keep_central_blob): flight J&F 0.396 -> 0.460
    zoom_gate: bool = True


@dataclass(frozen=True)
class UVCConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    propagation: PropagationConfig = field(default_factory=PropagationConfig)
