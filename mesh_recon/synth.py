"""Synthetic bird images with ground truth: generation in memory, sharded files, a torch Dataset and the CLI.

    python -m mesh_recon.synth images --n 20000 --size 128 --out runs/synth128 [--seed 0]
    python -m mesh_recon.synth videos --n 8 --frames 48 --out runs/synth_videos   (see synth_video)
    python -m mesh_recon.synth demo --out build/demo                             (the bundled demo clip)

Each sample: an articulated avian-mesh bird (pose prior or a frame of a scripted motion), a random plumage,
a CUB photo's viewpoint, composited on a real video frame. Ground truth: visible mask, 12 keypoints
(NDC x, y and visibility by depth test), the camera [s, tx, ty, qw, qx, qy, qz] in the canonical CUB frame and
the posed vertices in that frame (weak_perspective_project(verts, cam) gives the rendered vertices).
Sample i depends only on (seed, i): shards, batch sizes and worker counts do not change the data.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from birdmesh.errors import UserError

from .bird_model import BirdModel, load_bird_model, pose_bird
from .bird_motion import MOTIONS, sample_body_type, sample_bone_scale, sample_prior_pose, scripted_motion
from .geometry import ndc_to_pixels, rotation_matrix_to_quaternion, weak_perspective_project
from .synth_appearance import random_light, random_look
from .synth_background import load_background_pool
from .synth_camera import frame_cameras, load_cub_rotations, sample_viewpoints
from .synth_render import finish_image, render_birds

SHARD_FIELDS = ("image", "mask", "kp", "cam", "verts", "body_pose", "bone_scale")


@dataclass(frozen=True)
class SynthSettings:
    """Randomisation of synthetic images (defaults used for training data)."""

    motion_fraction: float = 0.3  # share of poses taken from scripted motions (flying, pecking...) not the prior
    prior_temperature: float = 1.0  # scale of pose-prior deviations
    bone_temperature: float = 0.5  # scale of bone-length-prior deviations
    view_jitter_deg: float = 10.0  # rotation noise on the CUB viewpoints
    fill_min: float = 0.55  # bird's larger side as a fraction of the image side, lower bound
    fill_max: float = 0.9  # ... upper bound
    shift: float = 0.08  # centre jitter (NDC)
    truncation_prob: float = 0.1  # bird pushed across the border
    occlusion_prob: float = 0.15  # an occluder (branch, blob) covers part of the bird
    degrade_strength: float = 1.0  # colour jitter, blur, noise and JPEG (0 = none)
    shape_variety: float = 0.0  # builds beyond the bone prior (long necks / legs / tails, stout bodies:
    # bird_motion.sample_body_type); 0 = the template's songbird build (the evaluation hold-out's generator)


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The random stream of sample ``index`` of dataset ``seed`` (independent of batching)."""
    return np.random.default_rng([int(seed), int(index)])


def _sample_pose(model: BirdModel, rng: np.random.Generator, settings: SynthSettings) -> np.ndarray:
    if rng.random() < settings.motion_fraction:
        kind = MOTIONS[rng.integers(len(MOTIONS))]
        frames = int(rng.integers(1, 48))
        return scripted_motion(model, kind, frames, 24.0, rng).body_pose[-1]
    return sample_prior_pose(model, 1, rng, settings.prior_temperature)[0]


def _frame(verts_cam: torch.Tensor, rot: torch.Tensor, rngs: list, settings: SynthSettings) -> torch.Tensor:
    """(n, 7) cameras framing each bird: verts_cam (n, V, 3) rotated vertices, rot (n, 3, 3) their rotations."""
    framing = [frame_cameras(verts_cam[i:i + 1].numpy(), r, (settings.fill_min, settings.fill_max),
                             settings.shift, settings.truncation_prob) for i, r in enumerate(rngs)]
    scale = torch.tensor([f[0][0] for f in framing], dtype=torch.float32)
    trans = torch.from_numpy(np.stack([f[1][0] for f in framing])).float()
    return torch.cat([scale[:, None], trans, rotation_matrix_to_quaternion(rot)], 1)


def generate_batch(n: int, size: int, seed: int = 0, start: int = 0, settings: SynthSettings = SynthSettings(),
                   data_dir: str | None = None) -> dict[str, torch.Tensor]:
    """Samples ``start .. start + n - 1`` of the synthetic dataset ``seed``, in memory.

    Returns a dict of float32 tensors: image (n, 3, S, S) in [0, 1]; mask (n, 1, S, S) 0/1 visible bird;
    kp (n, 12, 3) NDC x, y and visibility 0/1; cam (n, 7); verts (n, V, 3) canonical-frame posed vertices;
    body_pose (n, 24, 3); bone_scale (n, 24).
    """
    if n < 1 or size < 8:
        raise ValueError(f"n, size: expected n >= 1 and size >= 8, got {n}, {size}")
    model, pool, rotations = load_bird_model(data_dir), load_background_pool(data_dir), load_cub_rotations(data_dir)
    rngs = [sample_rng(seed, start + i) for i in range(n)]
    poses = torch.from_numpy(np.stack([_sample_pose(model, r, settings) for r in rngs])).float()
    bones = torch.from_numpy(np.concatenate([sample_bone_scale(model, 1, r, settings.bone_temperature)
                                             for r in rngs])).float()
    looks = [random_look(model, r) for r in rngs]
    offsets = None
    if settings.shape_variety > 0:  # its own stream: the same sample keeps its pose, view and look
        builds = [sample_body_type(model, np.random.default_rng([int(seed), int(start + i), 1]),
                                   settings.shape_variety) for i in range(n)]
        bones = bones * torch.from_numpy(np.stack([b[0] for b in builds])).float()
        offsets = torch.from_numpy(np.stack([b[1] for b in builds])).float()
    posed = pose_bird(model, poses, bones, rest_offsets=offsets)
    rot = torch.from_numpy(np.concatenate([sample_viewpoints(rotations, 1, r, settings.view_jitter_deg)
                                           for r in rngs])).float()
    verts_cam = posed.verts @ rot.transpose(1, 2)
    cams = _frame(verts_cam, rot, rngs, settings)
    light, ambient = (torch.from_numpy(np.concatenate(x)) for x in zip(*[random_light(1, r) for r in rngs]))
    kp_ndc = weak_perspective_project(posed.keypoints, cams)
    out = render_birds(weak_perspective_project(posed.verts, cams), kp_ndc, verts_cam, model.faces,
                       model.verts.float(), looks, light, ambient, (size, size))
    kp_px = ndc_to_pixels(kp_ndc[..., :2], size, size).numpy()
    finished = [finish_image(out.rgb[i].permute(1, 2, 0).numpy(), out.mask[i, 0].numpy(), kp_px[i],
                             out.kp_vis[i].numpy(), pool, r, settings.occlusion_prob, settings.degrade_strength)
                for i, r in enumerate(rngs)]
    images, masks, vis = (np.stack(x) for x in zip(*finished))
    return {
        "image": torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0,
        "mask": torch.from_numpy(masks)[:, None].float(),
        "kp": torch.cat([kp_ndc[..., :2], torch.from_numpy(vis)[..., None].float()], -1),
        "cam": cams, "verts": posed.verts, "body_pose": poses, "bone_scale": bones,
    }


def batch_to_arrays(batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Storage form of a batch: uint8 image (n, 3, S, S) and mask (n, S, S), float16 verts, float32 the rest."""
    arrays = {k: v.numpy().astype(np.float32) for k, v in batch.items()}
    arrays["image"] = np.clip(batch["image"].numpy() * 255 + 0.5, 0, 255).astype(np.uint8)
    arrays["mask"] = batch["mask"][:, 0].numpy().astype(np.uint8)
    arrays["verts"] = batch["verts"].numpy().astype(np.float16)  # ~1e-3 rounding on a bird ~2 long
    return arrays


def write_shard(folder: Path, arrays: dict[str, np.ndarray]) -> None:
    """One shard = a folder of ``<field>.npy`` files (memory-mapped by the Dataset, byte-identical per seed)."""
    folder.mkdir(parents=True)
    for name in SHARD_FIELDS:
        np.save(folder / f"{name}.npy", np.ascontiguousarray(arrays[name]))


class SynthBirdImages(torch.utils.data.Dataset):
    """Images written by ``python -m mesh_recon.synth images``.

    Item: dict of float32 tensors image (3, S, S) in [0, 1], mask (1, S, S) 0/1, kp (12, 3) NDC x, y, visibility,
    cam (7,), verts (V, 3), body_pose (24, 3), bone_scale (24,).
    """

    def __init__(self, root: str | Path):
        root = Path(root)
        index_path = root / "index.json"
        if not index_path.is_file():
            raise UserError(f"{root}: not a synthetic image folder (no index.json; make one with "
                            f"'python -m mesh_recon.synth images')")
        index = json.loads(index_path.read_text())
        self.root, self.size = root, int(index["size"])
        self.shards = [(root / name, int(count)) for name, count in index["shards"]]
        self.offsets = np.cumsum([0] + [count for _, count in self.shards])
        self._cache: dict = {}

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _shard(self, k: int) -> dict[str, np.ndarray]:
        if k not in self._cache:  # memory maps are opened lazily, so each DataLoader worker has its own
            self._cache[k] = {f: np.load(self.shards[k][0] / f"{f}.npy", mmap_mode="r") for f in SHARD_FIELDS}
        return self._cache[k]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} samples")
        k = int(np.searchsorted(self.offsets, i, side="right") - 1)
        arrays = self._shard(k)
        j = i - int(self.offsets[k])
        item = {f: torch.from_numpy(np.array(arrays[f][j], dtype=np.float32)) for f in SHARD_FIELDS}
        item["image"] = item["image"] / 255.0
        item["mask"] = item["mask"][None]
        return item


def main(argv: list[str] | None = None) -> None:
    from .synth_cli import main as cli_main

    cli_main(argv)


if __name__ == "__main__":
    main()
