"""Synthetic flight benchmark: birds taking off and flying across real, panning backgrounds, with ground truth.

    python -m mesh_recon.synth flight --n 12 --out runs/flight [--seed 0] [--frames 64]

Each clip (plan: ``synth_flight_plan``) renders the target bird (wing beats, a constant-speed screen path with
bounces and planned exits, a 2-3x size change, heading along the flight) and up to three distractor birds with
other plumages, in front of or behind it, over consecutive frames of a DAVIS train sequence seen through a panning
window. Motion blur averages ``subframes`` renders spread over the shutter time.
Mask convention: the target's silhouette at the frame time (the middle sub-frame), minus what nearer distractors
cover; empty while the bird is out of view. Distractors are never in the mask. Ground truth follows
``synth_video`` (same arrays at the frame times) plus anchor_px (T, 2), the planned body-centre path.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import cv2
import numpy as np
import torch

from .bird_model import load_bird_model
from .geometry import rotation_matrix_to_quaternion
from .synth_appearance import random_light
from .synth_background import apply_jitter, davis_sequences, random_jitter, read_rgb
from .synth_flight_bird import BirdPose, BirdSpec, make_track, pose_track
from .synth_flight_plan import ClipPlan, FlightSettings
from .synth_render import composite
from .synth_video import render_bird_box


@dataclass(frozen=True)
class FlightClip:
    """A rendered clip: frames (T, H, W, 3) uint8, masks (T, H, W) uint8 0/1, gt dict (module docstring) and
    stats (what the clip turned out to test, measured on its masks; JSON-serialisable)."""

    frames: np.ndarray
    masks: np.ndarray
    gt: dict
    stats: dict


@dataclass(frozen=True)
class Layer:
    """One rendered bird in its box: top-left (x0, y0), rgb (h, w, 3) float [0, 1], mask (h, w) float 0/1."""

    x0: int
    y0: int
    rgb: np.ndarray
    mask: np.ndarray


def target_spec(plan: ClipPlan, width: int, height: int) -> BirdSpec:
    """The plan's target bird in pixels."""
    return BirdSpec(plan.motion, plan.takeoff_frames, plan.speed * width, plan.heading_deg, plan.start, plan.signs,
                    plan.size_start * height, plan.size_end * height, plan.exits, plan.elevation_deg)


def distractor_spec(plan: ClipPlan, width: int, height: int, rng: np.random.Generator) -> tuple[BirdSpec, bool]:
    """A random other bird (pixels) and whether it flies in front of the target (it may then hide parts of it)."""
    size = np.sqrt(plan.size_start * plan.size_end) * height * rng.uniform(0.4, 1.1)
    speed = max(plan.speed * rng.uniform(0.3, 1.5), 0.004) * width
    spec = BirdSpec("flap", 0, float(speed), float(rng.uniform(0, 30)), (float(rng.uniform()), float(rng.uniform())),
                    (float(rng.choice([-1, 1])), float(rng.choice([-1, 1]))), float(size),
                    float(size * rng.uniform(0.7, 1.4)), (), float(rng.uniform(-10, 35)), inside=False)
    return spec, bool(rng.random() < 0.4)


def subframe_count(plan: ClipPlan, settings: FlightSettings) -> int:
    """Odd number of renders per frame: the fastest motion (anchor speed plus wing tips: 2-3 beats a second of
    ~0.7 rad on a wing ~0.4 of the bird's size sweep ~0.2 of the size a frame at 24 fps) moves at most
    ``blur_step_px`` between two of them over the shutter time."""
    motion_px = plan.speed * settings.width + 0.2 * max(plan.size_start, plan.size_end) * settings.height
    steps = int(np.ceil(plan.shutter * motion_px / settings.blur_step_px))
    return int(np.clip(steps + 1 + steps % 2, 3, settings.max_subframes | 1))


def camera_offsets(plan: ClipPlan, width: int) -> np.ndarray:
    """(T, 2) camera displacement in output pixels at each frame, the integral of the plan's pan velocity."""
    t = np.arange(plan.num_frames, dtype=np.float64)
    peak = np.asarray(plan.pan, dtype=np.float64) * width
    if plan.pan_period <= 0:
        return t[:, None] * peak
    w = 2 * np.pi / plan.pan_period
    return (np.sin(w * t + plan.pan_phase) - np.sin(plan.pan_phase))[:, None] * peak / w


def panned_backgrounds(files: list, offsets: np.ndarray, width: int, height: int, rng: np.random.Generator) -> list:
    """Consecutive frames (ping-pong when short) seen through a window displaced by ``offsets`` (T, 2) output
    pixels; frames are mirror-tiled sideways only when the window's travel needs more room than one frame."""
    start = int(rng.integers(len(files)))
    cycle = list(range(len(files))) + list(range(len(files) - 2, 0, -1)) or [0]
    fh, fw = read_rgb(files[0]).shape[:2]
    travel = offsets.max(0) - offsets.min(0)  # (2,) output px
    # Crop height in source px: a zoom, shrunk until the window's whole travel fits in the frame.
    ch = min(fh * rng.uniform(0.75, 0.9), fh / (1 + travel[1] / height), fw * height / (width + travel[0]))
    cw = ch * width / height
    to_src = cw / width  # source px per output px
    tiles = int(np.ceil((cw + travel[0] * to_src) / fw - 1e-6))
    slack = np.array([tiles * fw - cw - travel[0] * to_src, fh - ch - travel[1] * to_src])
    centre0 = np.array([cw / 2, ch / 2]) + rng.uniform(0, 1, 2) * np.maximum(slack, 0)
    flip = rng.random() < 0.5
    out = []
    for k in range(len(offsets)):
        frame = read_rgb(files[cycle[(start + k) % len(cycle)]])
        frame = frame[:, ::-1] if flip else frame  # mirrored before the crop: the pan keeps its direction
        strip = np.concatenate([frame if i % 2 == 0 else frame[:, ::-1] for i in range(tiles)], 1)
        centre = centre0 + (offsets[k] - offsets.min(0)) * to_src
        crop = cv2.getRectSubPix(np.ascontiguousarray(strip), (int(round(cw)), int(round(ch))),
                                 (float(centre[0]), float(centre[1])))
        crop = cv2.resize(crop, (width, height), interpolation=cv2.INTER_LINEAR)
        out.append(crop)
    return out


def _on_screen(verts_px: np.ndarray, width: int, height: int) -> bool:
    lo, hi = verts_px[:, :2].min(0), verts_px[:, :2].max(0)
    return bool(hi[0] >= 0 and hi[1] >= 0 and lo[0] < width and lo[1] < height)


def expose(background: np.ndarray, subframes: list) -> np.ndarray:
    """Motion blur: the mean over sub-frames of each sub-frame's layers (back to front) composited on
    ``background`` (H, W, 3) uint8; only the boxes the birds cover are touched. Returns (H, W, 3) uint8."""
    change = np.zeros(background.shape, np.float32)
    for layers in subframes:
        if not layers:
            continue
        x0, y0 = min(l.x0 for l in layers), min(l.y0 for l in layers)
        x1, y1 = max(l.x0 + l.mask.shape[1] for l in layers), max(l.y0 + l.mask.shape[0] for l in layers)
        crop = background[y0:y1, x0:x1].copy()
        for layer in layers:
            h, w = layer.mask.shape
            region = crop[layer.y0 - y0:layer.y0 - y0 + h, layer.x0 - x0:layer.x0 - x0 + w]
            region[:] = composite(layer.rgb, layer.mask, region)
        change[y0:y1, x0:x1] += crop.astype(np.float32) - background[y0:y1, x0:x1]
    return np.clip(background + change / max(len(subframes), 1) + 0.5, 0, 255).astype(np.uint8)


def _paste(layer: Layer | None, height: int, width: int) -> np.ndarray:
    """(H, W) bool silhouette of a layer in the full frame (all False for None)."""
    full = np.zeros((height, width), bool)
    if layer is not None:
        h, w = layer.mask.shape
        full[layer.y0:layer.y0 + h, layer.x0:layer.x0 + w] = layer.mask > 0.5
    return full


def _visible_keypoints(kp_px: np.ndarray, kp_vis: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Keep the rule of ``keypoint_visibility``: a visible keypoint touches the visible mask in its 3x3 block."""
    H, W = mask.shape
    u, v = np.round(kp_px[:, 0]).astype(int), np.round(kp_px[:, 1]).astype(int)
    inside = (u >= 0) & (u < W) & (v >= 0) & (v < H)
    near = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    return kp_vis & inside & near[np.clip(v, 0, H - 1), np.clip(u, 0, W - 1)]


@dataclass(frozen=True)
class FrameRender:
    """One frame: image (H, W, 3) uint8, target mask (H, W) uint8 0/1, keypoint visibility (12,) bool and the
    target's pose at the frame time."""

    image: np.ndarray
    mask: np.ndarray
    kp_vis: np.ndarray
    pose: BirdPose


def render_frame(model, birds: list, target: int, k: int, offsets: np.ndarray, background: np.ndarray,
                 light, ambient) -> FrameRender:
    """Frame ``k`` with motion blur, the target's visible mask at the frame time and its keypoint visibility.

    Args:
        birds: BirdTracks back to front; target: index of the target among them;
        offsets: (N,) sub-frame times around k (odd N, the middle one 0).
    """
    H, W = background.shape[:2]
    poses = [pose_track(model, b, k + offsets) for b in birds]
    mid = len(offsets) // 2
    subframes, mid_layers, kp_vis = [], [None] * len(birds), np.zeros(12, bool)
    for j in range(len(offsets)):
        layers = []
        for i, (bird, pose) in enumerate(zip(birds, poses)):
            if not _on_screen(pose.verts_px[j], W, H):
                continue
            (x0, y0), rgb, mask, vis = render_bird_box(model, bird.look, pose.verts_px[j], pose.verts_rot[j],
                                                       pose.kp_px[j], pose.kp_rot[j], light, ambient, W, H)
            layers.append(Layer(x0, y0, rgb, mask))
            if j == mid:
                mid_layers[i] = layers[-1]
                kp_vis = vis if i == target else kp_vis
        subframes.append(layers)
    mask = _paste(mid_layers[target], H, W)
    for layer in mid_layers[target + 1:]:
        mask &= ~_paste(layer, H, W)  # nearer distractors hide the target
    kp_vis = _visible_keypoints(poses[target].kp_px[mid], kp_vis, mask)
    return FrameRender(expose(background, subframes), mask.astype(np.uint8), kp_vis, pose_at(poses[target], mid))


def generate_flight_clip(plan: ClipPlan, settings: FlightSettings = FlightSettings(),
                         data_dir: str | None = None) -> FlightClip:
    """Render one planned clip (deterministic in the plan)."""
    W, H, T = settings.width, settings.height, plan.num_frames
    if T < 2:
        raise ValueError(f"plan.num_frames: expected >= 2, got {T}")
    model = load_bird_model(data_dir)
    rng = np.random.default_rng([int(plan.seed), int(plan.index), 12])
    target = make_track(model, target_spec(plan, W, H), T, W, H, settings.fps, rng)
    behind, front, others = [], [], []
    for k in range(plan.distractors):
        drng = np.random.default_rng([int(plan.seed), int(plan.index), 13, k])  # apart: counts don't shift others
        spec, in_front = distractor_spec(plan, W, H, drng)
        (front if in_front else behind).append(make_track(model, spec, T, W, H, settings.fps, drng))
        others.append({"in_front": in_front, "speed": round(spec.speed / W, 4),
                       "size": round(spec.size_start / H, 4)})
    birds = behind + [target] + front
    light, ambient = random_light(1, rng)
    jitter = random_jitter(rng, settings.jitter_strength)
    n_sub = subframe_count(plan, settings)
    offsets = plan.shutter * (np.linspace(-0.5, 0.5, n_sub) if n_sub > 1 else np.zeros(1))
    files = davis_sequences(data_dir)[plan.background]
    backgrounds = panned_backgrounds(files, camera_offsets(plan, W), W, H, rng)
    frames, renders = [], []
    for k in range(T):
        out = render_frame(model, birds, len(behind), k, offsets, backgrounds[k], light, ambient)
        noise = rng.normal(0, settings.noise, out.image.shape).astype(np.float32)
        frames.append(np.clip(apply_jitter(out.image, jitter) + noise + 0.5, 0, 255).astype(np.uint8))
        renders.append(out)
    masks = np.stack([r.mask for r in renders])
    gt = ground_truth([r.pose for r in renders], np.stack([r.kp_vis for r in renders]), model.faces.numpy(),
                      target.bone_scale, plan, settings)
    stats = {"subframes": n_sub, "exits_planned_at": [round(t, 1) for _, t, _ in target.exits_made],
             "distractor_birds": others, **measure_masks(masks, gt["anchor_px"])}
    return FlightClip(np.stack(frames), masks, gt, stats)


def pose_at(pose: BirdPose, i: int) -> BirdPose:
    """The pose at one of its times (every field indexed by ``i``)."""
    return BirdPose(**{f.name: getattr(pose, f.name)[i] for f in fields(pose)})


def ground_truth(poses: list, kp_vis: np.ndarray, faces: np.ndarray, bone_scale: np.ndarray, plan: ClipPlan,
                 settings: FlightSettings) -> dict:
    """``synth_video``'s ground-truth arrays (see its module docstring) from T single-time target poses, plus
    anchor_px (T, 2). root_translation is zero: the camera translation alone places the bird."""
    stack = lambda name: np.stack([getattr(p, name) for p in poses])  # noqa: E731
    f32 = lambda x: np.asarray(x, dtype=np.float32)  # noqa: E731
    quat = rotation_matrix_to_quaternion(torch.from_numpy(stack("rot"))).numpy()
    cams = np.concatenate([stack("scale")[:, None], stack("trans"), quat], 1)
    return {"verts_canonical": f32(stack("verts_canonical")), "verts_camera": f32(stack("verts_px")),
            "cams_px": f32(cams), "keypoints": f32(np.concatenate([stack("kp_px")[..., :2], kp_vis[..., None]], -1)),
            "keypoints_canonical": f32(stack("kp_canonical")), "faces": faces, "body_pose": f32(stack("body_pose")),
            "bone_scale": f32(bone_scale), "root_rotation": f32(stack("root_rotation")),
            "root_translation": np.zeros((len(poses), 3), np.float32), "fps": np.float32(settings.fps),
            "width": np.int64(settings.width), "height": np.int64(settings.height), "motion": np.str_(plan.motion),
            "anchor_px": f32(stack("anchor_px"))}


def measure_masks(masks: np.ndarray, anchor_px: np.ndarray) -> dict:
    """What a clip ended up testing, from its masks (T, H, W) and planned anchors (T, 2): frames out of view, frames
    cut by a border, median per-frame speeds of the mask centroid (frames fully in view) and of the anchor (px),
    the mask box's larger side (px, min and max over frames fully in view) and its end / start ratio."""
    T, H, W = masks.shape
    empty = masks.sum((1, 2)) == 0
    border = masks[:, 0].any(1) | masks[:, -1].any(1) | masks[:, :, 0].any(1) | masks[:, :, -1].any(1)
    whole = np.flatnonzero(~empty & ~border)
    centroid, side = {}, {}
    for t in whole:
        ys, xs = np.nonzero(masks[t])
        centroid[t] = np.array([xs.mean(), ys.mean()])
        side[t] = max(xs.max() - xs.min(), ys.max() - ys.min()) + 1
    steps = [np.linalg.norm(centroid[t + 1] - centroid[t]) for t in whole if t + 1 in centroid]
    sizes = np.array([side[t] for t in whole], dtype=np.float64)
    quarter = max(1, len(sizes) // 4)
    return {"out_of_view_frames": np.flatnonzero(empty).tolist(), "border_frames": int((border & ~empty).sum()),
            "mask_speed_px": round(float(np.median(steps)), 2) if steps else None,
            "anchor_speed_px": round(float(np.median(np.linalg.norm(np.diff(anchor_px, axis=0), axis=1))), 2),
            "size_px": [int(sizes.min()), int(sizes.max())] if len(sizes) else None,
            "size_ratio": round(float(np.median(sizes[-quarter:]) / np.median(sizes[:quarter])), 2)
            if len(sizes) else None}
