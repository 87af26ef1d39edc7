"""Cameras for synthetic birds: viewpoints from the real distribution of CUB bird photos, framing, smooth paths.

CUB's SfM annotations (``bird_model/cub_sfm/sfm/anno_train.mat``, ``sfm_anno``) give one proper rotation per photo,
mapping the canonical frame (see ``bird_model``) to the camera frame (x right, y down, z away from the viewer).
Cameras follow DESIGN.md: [s, tx, ty, qw, qx, qy, qz] with xy = s (R X)[:2] + t in NDC, depth (R X)[2].
"""
from __future__ import annotations

import functools

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

from birdmesh.errors import UserError
from birdmesh.runtime import data_root

MIRROR = np.diag([-1.0, 1.0, 1.0])


@functools.lru_cache(maxsize=2)
def load_cub_rotations(data_dir: str | None = None) -> np.ndarray:
    """(N, 3, 3) float64 SfM rotations of the CUB training photos (read-only array)."""
    from scipy.io import loadmat

    path = data_root(data_dir) / "bird_model" / "cub_sfm" / "sfm" / "anno_train.mat"
    if not path.is_file():
        raise UserError(f"{path}: CUB SfM annotation not found (set --data or BIRDMESH_DATA)")
    anno = loadmat(str(path), struct_as_record=False, squeeze_me=True)["sfm_anno"]
    rotations = np.stack([np.asarray(a.rot, dtype=np.float64) for a in anno])
    rotations.setflags(write=False)
    return rotations


def sample_viewpoints(rotations: np.ndarray, n: int, rng: np.random.Generator, jitter_deg: float = 10.0,
                      mirror_prob: float = 0.5) -> np.ndarray:
    """(n, 3, 3) rotations: random CUB photos' viewpoints, mirrored with ``mirror_prob`` and jittered.

    Mirroring (M R M, M = diag(-1, 1, 1), as CMR flips its images) makes the distribution left/right symmetric;
    the jitter is a rotation about a random axis with angle ~ N(0, jitter_deg), applied in the camera frame.
    """
    picked = rotations[rng.integers(len(rotations), size=n)]
    flip = rng.random(n) < mirror_prob
    picked = np.where(flip[:, None, None], MIRROR @ picked @ MIRROR, picked)
    axis = rng.normal(size=(n, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    jitter = Rotation.from_rotvec(axis * np.radians(rng.normal(0, jitter_deg, (n, 1)))).as_matrix()
    return jitter @ picked


def frame_cameras(rotated: np.ndarray, rng: np.random.Generator, fill: tuple[float, float] = (0.55, 0.9),
                  shift: float = 0.08, truncation_prob: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Scale and translation framing each bird in a square image.

    Args:
        rotated: (n, V, 3) vertices already rotated into the camera frame (R X).
        fill: range of the bird's larger projected side as a fraction of the image side.
        shift: uniform jitter of the bird's centre (NDC).
        truncation_prob: chance of a larger bird pushed towards a random border (truncated by the frame).
    Returns:
        scale (n,) and translation (n, 2) in NDC.
    """
    lo, hi = rotated[..., :2].min(1), rotated[..., :2].max(1)  # (n, 2)
    n = len(rotated)
    scale = 2 * rng.uniform(*fill, n) / (hi - lo).max(1)
    offset = rng.uniform(-shift, shift, (n, 2))
    truncated = rng.random(n) < truncation_prob
    scale = np.where(truncated, scale * rng.uniform(1.0, 1.4, n), scale)
    push = rng.normal(size=(n, 2))
    push = 0.45 * push / np.linalg.norm(push, axis=1, keepdims=True)
    offset = np.where(truncated[:, None], offset + push, offset)
    trans = offset - scale[:, None] * (lo + hi) / 2
    return scale, trans


def smooth_rotation_path(start: np.ndarray, num_frames: int, rng: np.random.Generator, seconds_per_key: float,
                         fps: float, max_deg: float = 25.0) -> np.ndarray:
    """(T, 3, 3) slow camera orbit: slerp through random rotations within ``max_deg`` of ``start`` (3, 3).

    Key rotations are applied in the camera frame (start's left) every ``seconds_per_key``; eased per segment.
    """
    duration = max(num_frames - 1, 1) / fps
    n_keys = int(np.ceil(duration / seconds_per_key)) + 1
    axis = rng.normal(size=(n_keys, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    angles = np.radians(rng.uniform(0, max_deg, (n_keys, 1)))
    angles[0] = 0.0
    keys = Rotation.from_rotvec(axis * angles) * Rotation.from_matrix(start)
    key_times = np.arange(n_keys) * seconds_per_key
    t = np.arange(num_frames) / fps
    seg = np.minimum((t // seconds_per_key).astype(int), n_keys - 2)
    u = (t - key_times[seg]) / seconds_per_key
    eased = key_times[seg] + seconds_per_key * (0.5 - 0.5 * np.cos(np.pi * u))
    return Slerp(key_times, keys)(np.clip(eased, 0, key_times[-1])).as_matrix()


def low_pass(x: np.ndarray, fps: float, seconds: float) -> np.ndarray:
    """Centred moving average along axis 0 over ``seconds`` (edge-padded): smooths a camera's follow of the bird."""
    k = max(1, int(round(seconds * fps)) | 1)
    pad = np.concatenate([np.repeat(x[:1], k // 2, 0), x, np.repeat(x[-1:], k // 2, 0)], 0)
    kernel = np.ones(k) / k
    return np.stack([np.convolve(pad[:, i], kernel, mode="valid") for i in range(x.shape[1])], 1)
