"""Synthetic bird videos with 3-D ground truth, written in DAVIS layout (and the bundled demo clip).

Per video ``<name>``: ``JPEGImages/480p/<name>/%05d.jpg`` frames, ``Annotations/480p/<name>/%05d.png`` masks
(0/255, as DAVIS-2016), ``videos/<name>.mp4``, ``gt/<name>.npz`` and a list ``ImageSets/synth.txt``.
The folder is named 480p whatever the frame size, so DAVIS readers find it.

Ground truth (``gt/<name>.npz``): verts_canonical (T, V, 3) posed vertices in the canonical CUB frame (the bird
moves in it); verts_camera (T, V, 3) = s R X + (tx, ty, 0): x, y are pixel coordinates (pixel centre i at i) and
z the depth in pixels, growing away from the viewer; cams_px (T, 7) [s, tx, ty, qw, qx, qy, qz] of that map;
keypoints (T, 12, 3) pixel x, y and visibility; keypoints_canonical (T, 12, 3); faces (F, 3); body_pose
(T, 24, 3), bone_scale (24,), root_rotation (T, 3), root_translation (T, 3); fps, width, height.
"""
from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from scipy.spatial.transform import Rotation

from birdmesh.errors import UserError

from .bird_model import load_bird_model, pose_bird
from .bird_motion import MOTIONS, sample_bone_scale, scripted_motion
from .geometry import pixels_to_ndc, rotation_matrix_to_quaternion
from .synth_appearance import random_light, random_look
from .synth_background import apply_jitter, davis_sequences, random_jitter, read_rgb
from .synth_camera import load_cub_rotations, low_pass, sample_viewpoints, smooth_rotation_path
from .synth_render import composite, render_birds


@dataclass(frozen=True)
class VideoSettings:
    """Frame size and framing of synthetic videos."""

    width: int = 854
    height: int = 480
    fps: float = 24.0
    fill_min: float = 0.35  # bird's larger side at frame 0, fraction of the frame height, lower bound
    fill_max: float = 0.6  # ... upper bound
    jitter_strength: float = 0.5  # colour jitter of the whole clip (one draw per video)
    noise: float = 2.0  # sensor noise sigma, grey levels
    centre_y: float = 0.5  # mean height of the bird's centre, fraction of the frame height from the top
    background: str = ""  # DAVIS train sequence behind the bird ("" = random per video)


@dataclass(frozen=True)
class SynthVideo:
    """One rendered clip: frames (T, H, W, 3) uint8, masks (T, H, W) uint8 0/1, gt dict (see module docstring)."""

    frames: np.ndarray
    masks: np.ndarray
    gt: dict


def _smooth_curve(t: np.ndarray, rng: np.random.Generator, period: float, amplitude: float, dims: int) -> np.ndarray:
    """(T, dims) smooth random drift: cosine-eased random keys every ``period`` seconds."""
    keys = rng.uniform(-amplitude, amplitude, (int(t[-1] / period) + 3, dims))
    u = t / period
    i = np.floor(u).astype(int)
    w = (0.5 - 0.5 * np.cos(np.pi * (u - i)))[:, None]
    return (1 - w) * keys[i] + w * keys[i + 1]


def _background_frames(data_dir, num_frames: int, width: int, height: int, rng: np.random.Generator,
                       name: str = "") -> list:
    """Consecutive frames of a DAVIS train sequence (``name`` or random; ping-pong if short), slowly panned."""
    seqs = davis_sequences(data_dir)
    pick = sorted(seqs)[rng.integers(len(seqs))]
    if name and name not in seqs:
        raise UserError(f"--background {name}: no such DAVIS train sequence (known: {', '.join(sorted(seqs))})")
    files = seqs[name or pick]
    start = int(rng.integers(len(files)))
    cycle = list(range(len(files))) + list(range(len(files) - 2, 0, -1)) or [0]
    t = np.arange(num_frames) / 24.0
    zoom = 0.8 + 0.15 * _smooth_curve(t, rng, 2.0, 1.0, 1)[:, 0]
    pan = _smooth_curve(t, rng, 2.0, 1.0, 2)
    flip = rng.random() < 0.5
    out = []
    for k in range(num_frames):
        frame = read_rgb(files[cycle[(start + k) % len(cycle)]])
        fh, fw = frame.shape[:2]
        ch, cw = min(fh, zoom[k] * fw * height / width), min(fw, zoom[k] * fw)
        cy, cx = fh / 2 + pan[k, 1] * (fh - ch) / 2, fw / 2 + pan[k, 0] * (fw - cw) / 2
        crop = cv2.getRectSubPix(frame, (int(cw), int(ch)), (float(cx), float(cy)))
        crop = cv2.resize(crop, (width, height), interpolation=cv2.INTER_CUBIC)
        out.append(crop[:, ::-1] if flip else crop)
    return out


def _camera_track(verts_rot: np.ndarray, width: int, height: int, fps: float, rng: np.random.Generator,
                  settings: VideoSettings) -> tuple[np.ndarray, np.ndarray]:
    """Pixel scale (T,) and translation (T, 2) that follow the bird smoothly, with slow zoom and drift."""
    T = len(verts_rot)
    t = np.arange(T) / fps
    extent = (verts_rot[0, :, :2].max(0) - verts_rot[0, :, :2].min(0)).max()
    scale = rng.uniform(settings.fill_min, settings.fill_max) * height / extent
    scale = scale * (1 + 0.12 * _smooth_curve(t, rng, 2.5, 1.0, 1)[:, 0])
    centre = 0.5 * (verts_rot[..., :2].max(1) + verts_rot[..., :2].min(1))  # (T, 2) canonical units
    drift = _smooth_curve(t, rng, 2.0, 1.0, 2) * [0.12 * width, 0.1 * height]
    target = np.array([width / 2, settings.centre_y * height]) + drift
    # The camera follows a low-passed bird centre: bobs and beats stay visible, the bird stays in frame.
    trans = target - scale[:, None] * low_pass(centre, fps, 0.6)
    return scale, trans


def _to_pixels(x: np.ndarray, scale: np.ndarray, trans: np.ndarray) -> np.ndarray:
    """(T, N, 3) rotated points -> s x + (tx, ty, 0): pixel x, y and depth in pixels."""
    return np.concatenate([scale[:, None, None] * x[..., :2] + trans[:, None], scale[:, None, None] * x[..., 2:]], -1)


def _render_clip(model, look, verts_px, verts_rot, kp_px, kp_rot, backgrounds, rng, settings: VideoSettings):
    """Frames (T, H, W, 3) uint8, masks (T, H, W) uint8 and keypoint visibility (T, 12) of a posed, framed clip."""
    light, ambient = random_light(1, rng)
    jitter = random_jitter(rng, settings.jitter_strength)  # one draw: the clip's colours stay stable
    frames, masks, vis = [], [], []
    for k in range(len(verts_px)):
        rgb, mask, kv = _render_frame(model, look, verts_px[k], verts_rot[k], kp_px[k], kp_rot[k], light, ambient,
                                      settings.width, settings.height)
        frame = apply_jitter(composite(rgb, mask, backgrounds[k]), jitter)
        noise = rng.normal(0, settings.noise, frame.shape).astype(np.float32)
        frames.append(np.clip(frame + noise + 0.5, 0, 255).astype(np.uint8))
        masks.append(mask.astype(np.uint8))
        vis.append(kv)
    return np.stack(frames), np.stack(masks), np.stack(vis)


def generate_video(index: int, seed: int, num_frames: int, kind: str | None = None,
                   settings: VideoSettings = VideoSettings(), data_dir: str | None = None) -> SynthVideo:
    """Render clip ``index`` of the synthetic video set ``seed`` (deterministic); ``kind`` defaults to
    ``MOTIONS[index % len(MOTIONS)]``."""
    if num_frames < 2:
        raise ValueError(f"num_frames: expected >= 2, got {num_frames}")
    rng = np.random.default_rng([int(seed), int(index), 1])  # a stream apart from the images' (seed, index)
    kind = kind or MOTIONS[index % len(MOTIONS)]
    model = load_bird_model(data_dir)
    motion = scripted_motion(model, kind, num_frames, settings.fps, rng)
    bones = sample_bone_scale(model, 1, rng)
    look = random_look(model, rng)
    posed = pose_bird(model, torch.from_numpy(motion.body_pose), torch.from_numpy(bones).expand(num_frames, -1),
                      torch.from_numpy(Rotation.from_rotvec(motion.root_rotation).as_matrix()),
                      torch.from_numpy(motion.root_translation))
    start = sample_viewpoints(load_cub_rotations(data_dir), 1, rng, 10.0)[0]
    rot = smooth_rotation_path(start, num_frames, rng, 1.5, settings.fps, 20.0)  # (T, 3, 3)
    verts_rot = np.einsum("tij,tvj->tvi", rot, posed.verts.numpy())
    kp_rot = np.einsum("tij,tkj->tki", rot, posed.keypoints.numpy())
    scale, trans = _camera_track(verts_rot, settings.width, settings.height, settings.fps, rng, settings)
    verts_px, kp_px = _to_pixels(verts_rot, scale, trans), _to_pixels(kp_rot, scale, trans)
    backgrounds = _background_frames(data_dir, num_frames, settings.width, settings.height, rng, settings.background)
    frames, masks, vis = _render_clip(model, look, verts_px, verts_rot, kp_px, kp_rot, backgrounds, rng, settings)
    quat = rotation_matrix_to_quaternion(torch.from_numpy(rot)).numpy()
    f32 = lambda x: np.asarray(x, dtype=np.float32)  # noqa: E731
    gt = {"verts_canonical": f32(posed.verts), "verts_camera": f32(verts_px),
          "cams_px": f32(np.concatenate([scale[:, None], trans, quat], 1)),
          "keypoints": f32(np.concatenate([kp_px[..., :2], vis[..., None]], -1)),
          "keypoints_canonical": f32(posed.keypoints), "faces": model.faces.numpy(),
          "body_pose": f32(motion.body_pose), "bone_scale": f32(bones[0]), "root_rotation": f32(motion.root_rotation),
          "root_translation": f32(motion.root_translation), "fps": np.float32(settings.fps),
          "width": np.int64(settings.width), "height": np.int64(settings.height), "motion": np.str_(kind)}
    return SynthVideo(frames, masks, gt)


def render_bird_box(model, look, verts_px, verts_rot, kp_px, kp_rot, light, ambient, W: int, H: int):
    """Render one bird inside its pixel box only (cheap at 854x480).

    Args:
        verts_px, kp_px: (V, 3), (12, 3) pixel x, y (depth unused); verts_rot, kp_rot: the same rotated points in
        canonical units (their z feeds the z-buffer); light (1, 3), ambient (1,); W, H: frame size.
    Returns:
        (x0, y0) of the box in the frame, rgb (h, w, 3) float [0, 1], mask (h, w) float 0/1, kp_vis (12,) bool.
    """
    lo = np.clip(np.floor(verts_px[:, :2].min(0)) - 2, 0, [W - 1, H - 1]).astype(int)
    hi = np.clip(np.ceil(verts_px[:, :2].max(0)) + 3, lo + 1, [W, H]).astype(int)
    (x0, y0), (cw, ch) = lo, hi - lo
    shift = np.array([x0, y0], dtype=np.float64)
    to_ndc = lambda p: torch.cat([pixels_to_ndc(torch.from_numpy(p[:, :2] - shift), int(cw), int(ch)),  # noqa: E731
                                  torch.from_numpy(p[:, 2:3])], -1)[None].float()
    # Depth for the z-buffer is the canonical (R X)[2], the same unit as the visibility slack.
    verts_ndc = to_ndc(np.concatenate([verts_px[:, :2], verts_rot[:, 2:]], 1))
    kp_ndc = to_ndc(np.concatenate([kp_px[:, :2], kp_rot[:, 2:]], 1))
    out = render_birds(verts_ndc, kp_ndc, torch.from_numpy(verts_rot)[None].float(), model.faces,
                       model.verts.float(), [look], torch.from_numpy(light), torch.from_numpy(ambient),
                       (int(ch), int(cw)))
    return (int(x0), int(y0)), out.rgb[0].permute(1, 2, 0).numpy(), out.mask[0, 0].numpy(), out.kp_vis[0].numpy()


def _render_frame(model, look, verts_px, verts_rot, kp_px, kp_rot, light, ambient, W: int, H: int):
    """Full-frame rgb (H, W, 3), mask (H, W) and kp vis (12,) of one bird (rendered in its box)."""
    (x0, y0), rgb_box, mask_box, kp_vis = render_bird_box(model, look, verts_px, verts_rot, kp_px, kp_rot, light,
                                                          ambient, W, H)
    ch, cw = mask_box.shape
    rgb, mask = np.zeros((H, W, 3), np.float32), np.zeros((H, W), np.float32)
    rgb[y0:y0 + ch, x0:x0 + cw] = rgb_box
    mask[y0:y0 + ch, x0:x0 + cw] = mask_box
    return rgb, mask, kp_vis


def save_npz(path: Path, arrays: dict) -> None:
    """``np.savez_compressed`` with fixed zip timestamps, so equal arrays give byte-identical files."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, value in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asanyarray(value), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, buffer.getvalue())


def write_mask_png(path: Path, mask: np.ndarray) -> None:
    """(H, W) 0/1 mask as an 8-bit grayscale 0/255 PNG (DAVIS-2016 style)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.asarray(mask) > 0).astype(np.uint8) * 255, mode="L").save(path)
