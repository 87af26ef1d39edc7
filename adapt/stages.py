"""The stages of ``adapt.run`` between reading the video and exporting: labels, propagation, crops, predictions."""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from birdmesh.checkpoint import read_checkpoint, save_checkpoint
from birdmesh.config import config_to_dict
from birdmesh.errors import UserError
from correspondence.checkpoint import DEFAULT_WEIGHTS
from correspondence.labels import index_to_soft, soft_to_index
from correspondence.propagate import build_model, iter_propagate, upsample_labels
from mesh_recon.crop import crop_box_from_mask, crop_image
from mesh_recon.geometry import weak_perspective_project
from mesh_recon.predictor import MeshPredictor
from mesh_recon.render import render_hard

from .config import AdaptConfig
from .inputs import VideoInput, grabcut
from .optimize import VideoCrops
from .parts import random_parts

# Bumped whenever the propagation's output changes for the same settings, so older cached results are not reused
# (2: raw pixels match in float32 on CPUs with native bf16; 3: learned features' first-frame window 8 -> 12; 4: no
# matching where every candidate is background, context.changing_tiles; 5: crops zero-padded beyond the frame;
# 6: region-level localization, correspondence/track.py).
PROPAGATION_CODE_VERSION = 6


def frame_tensor(frame: np.ndarray, device) -> Tensor:
    """uint8 (H, W, 3) -> float (1, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frame)).to(device).permute(2, 0, 1)[None].float() / 255


@torch.no_grad()
def guess_first_mask(frame: np.ndarray, model: MeshPredictor, iterations: int) -> np.ndarray:
    """No mask given: the predictor's silhouette on a centred square crop, refined by GrabCut; (H, W) bool."""
    H, W = frame.shape[:2]
    image = frame_tensor(frame, next(model.parameters()).device)
    side = float(max(H, W))
    box = torch.tensor([[(W - side) / 2, (H - side) / 2, (W + side) / 2, (H + side) / 2]], device=image.device)
    crop = crop_image(image, box, model.cfg.image_size)
    pred = model(crop)
    verts = weak_perspective_project(pred.verts, pred.cams)
    silhouette = render_hard(verts, pred.faces, model.cfg.image_size).mask  # (1, 1, S, S)
    # Back to the frame: sample the crop's silhouette at every frame pixel.
    ys, xs = torch.meshgrid(torch.arange(H, device=image.device), torch.arange(W, device=image.device),
                            indexing="ij")
    grid = torch.stack([(2 * (xs - box[0, 0]) + 1) / side - 1, (2 * (ys - box[0, 1]) + 1) / side - 1], -1)
    prior = torch.nn.functional.grid_sample(silhouette, grid[None].float(), mode="nearest", align_corners=False)
    prior = prior[0, 0].cpu().numpy() > 0.5
    if not prior.any():
        raise UserError("could not guess where the bird is in the first frame: pass --mask or --box")
    try:
        return grabcut(frame, prior=prior, iterations=iterations)
    except cv2.error:  # e.g. a silhouette over the whole frame leaves GrabCut no background colours to model
        return prior


def first_frame_labels(frame: np.ndarray, mask: np.ndarray, cfg: AdaptConfig) -> Tensor:
    """Soft labels (K + 1, H, W) of the first frame: background and K random parts covering the mask."""
    parts = random_parts(frame, mask, cfg.parts.num_parts, cfg.seed, cfg.parts.color_weight)
    return index_to_soft(parts, cfg.parts.num_parts + 1)


def propagation_model(cfg: AdaptConfig, device) -> torch.nn.Module:
    """The correspondence model named by the config (``pixels`` = no learned model)."""
    return build_model(cfg.correspondence.method, cfg.correspondence.checkpoint or None, device,
                       cfg.propagation.pixel_stride)


def propagate_and_crop(video: VideoInput, labels0: Tensor, model: torch.nn.Module, cfg: AdaptConfig,
                       crop_size: int, device) -> tuple[VideoCrops, np.ndarray]:
    """Propagate mask + parts through the video and cut the predictor's crops frame by frame (memory flat).

    Returns:
        VideoCrops and the propagated part indices (T, H, W) uint8 (0 background) for export.
    """
    T, H, W = video.frames.shape[:3]
    S, K1 = crop_size, labels0.shape[0]
    # Filled in place: cat / stack of per-frame lists would hold every crop twice at the end (a 280-frame 720p clip:
    # ~0.8 GB of crops, the run's peak memory).
    images = torch.zeros(T, 3, S, S, device=device)
    masks = torch.zeros(T, 1, S, S, device=device)
    parts = torch.zeros(T, K1, S, S, device=device, dtype=torch.half)
    boxes = torch.zeros(T, 4, device=device)
    indices = np.zeros((T, H, W), np.uint8)
    valid = []
    stream = iter_propagate(iter(video.frames), labels0.to(device), model, cfg.propagation)
    for t, labels in enumerate(tqdm(stream, total=T, desc="propagate", unit="frame")):
        soft = labels0.to(device) if t == 0 else upsample_labels(labels, (H, W))  # (K + 1, H, W)
        mask = (1 - soft[:1])[None]  # (1, 1, H, W)
        area = float((mask > 0.5).float().mean())
        first_area = area if t == 0 else first_area
        valid.append(area >= cfg.parts.vanished_below(first_area))
        frame = frame_tensor(video.frames[t], device)
        # A vanished object keeps the last box it had, so the crops stay on where it was.
        box = boxes[t - 1: t] if t and not valid[-1] else crop_box_from_mask(mask, cfg.predictor.crop_padding)
        # Padded, not clamped: beyond the frame nothing is seen (the image losses mask it out, adapt/flags.py).
        images[t] = crop_image(frame, box, S, padding_mode="zeros")[0]
        masks[t] = crop_image(mask, box, S, padding_mode="zeros")[0]
        parts[t] = crop_image(soft[None], box, S, padding_mode="zeros")[0]
        boxes[t] = box[0]
        indices[t] = soft_to_index(soft)
    crops = VideoCrops(images, masks, parts, boxes, torch.tensor(valid, device=device), (H, W))
    return crops, indices


def propagation_key(video: VideoInput, labels0: Tensor, cfg: AdaptConfig, crop_size: int, device) -> str:
    """A digest of everything ``propagate_and_crop`` reads: frames, first-frame labels, the settings that shape the
    propagation and the crops, the correspondence weights file and the device (bf16 paths differ by device)."""
    settings = {name: config_to_dict(getattr(cfg, name)) for name in ("correspondence", "propagation", "parts")}
    settings.update(crop_size=crop_size, crop_padding=cfg.predictor.crop_padding, device=str(device),
                    code_version=PROPAGATION_CODE_VERSION)
    if cfg.correspondence.method != "pixels":
        weights = Path(cfg.correspondence.checkpoint or DEFAULT_WEIGHTS)
        settings["weights"] = [str(weights.resolve()), weights.stat().st_size, weights.stat().st_mtime_ns]
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for frame in video.frames:  # frame by frame: no stacked copy of the whole video
        digest.update(np.ascontiguousarray(frame))
    digest.update(labels0.detach().cpu().float().numpy().tobytes())
    return digest.hexdigest()[:32]


def cache_entry_to_crops(entry: dict, key: str, frames: int, channels: int, crop_size: int,
                         device) -> tuple[VideoCrops, np.ndarray]:
    """A cache file's content -> (VideoCrops, part indices (T, H, W)), checked against what this run expects.

    Args:
        entry: ``read_checkpoint``'s dict; key: ``propagation_key``; frames: T; channels: K + 1 labels;
        crop_size: the predictor's S.
    Raises:
        ValueError: naming what is missing or mis-shaped (an older or damaged file: recompute, do not crash).
    """
    config, saved = entry.get("config"), entry.get("state_dict")
    if not isinstance(config, dict) or config.get("propagation_key") != key:
        raise ValueError("another propagation key")
    if not isinstance(saved, dict):
        raise ValueError("no tensors")
    try:
        H, W = (int(v) for v in config["frame_hw"])
    except (KeyError, TypeError, ValueError):
        raise ValueError("no frame size") from None
    S = crop_size
    expected = {"images": (frames, 3, S, S), "masks": (frames, 1, S, S), "parts": (frames, channels, S, S),
                "boxes": (frames, 4), "valid": (frames,), "part_indices": (frames, H, W)}
    for name, shape in expected.items():
        value = saved.get(name)
        if not torch.is_tensor(value):
            raise ValueError(f"'{name}' missing")
        if tuple(value.shape) != shape:
            raise ValueError(f"'{name}' has shape {tuple(value.shape)}, expected {shape}")
    tensors = {name: saved[name].to(device) for name in expected}
    crops = VideoCrops(tensors["images"], tensors["masks"], tensors["parts"], tensors["boxes"],
                       tensors["valid"].bool(), (H, W))
    return crops, tensors["part_indices"].cpu().numpy()


def cached_propagate_and_crop(cache_dir: str | Path | None, video: VideoInput, labels0: Tensor, cfg: AdaptConfig,
                              crop_size: int, device) -> tuple[VideoCrops, np.ndarray, bool]:
    """``propagate_and_crop`` with the correspondence model of the config, reusing ``cache_dir`` when given;
    the third value tells whether the result came from the cache.

    Propagation dominates a run and does not depend on the adaptation settings, so comparing adapted with
    frame-wise runs, or sweeping adaptation settings, need not repeat it. Entries are keyed by
    ``propagation_key``; an unreadable, stale or inconsistent file is recomputed and replaced, with one warning on
    stderr (``birdmesh.checkpoint``: atomic writes, ``weights_only`` loads).
    """
    if cache_dir is None:
        return (*propagate_and_crop(video, labels0, propagation_model(cfg, device), cfg, crop_size, device), False)
    key = propagation_key(video, labels0, cfg, crop_size, device)
    path = Path(cache_dir) / f"propagation-{key}.pt"
    if path.is_file():
        try:
            crops, indices = cache_entry_to_crops(read_checkpoint(path), key, len(video.frames), labels0.shape[0],
                                                  crop_size, device)
        except (UserError, ValueError) as err:
            reason = str(err).removeprefix(f"{path}: ")
            print(f"warning: {path}: cache entry unusable ({reason}); recomputing the propagation", file=sys.stderr,
                  flush=True)
        else:
            print(f"propagation reused from {path}", flush=True)
            return crops, indices, True
    crops, indices = propagate_and_crop(video, labels0, propagation_model(cfg, device), cfg, crop_size, device)
    tensors = {"images": crops.images, "masks": crops.masks, "parts": crops.parts, "boxes": crops.boxes,
               "valid": crops.valid, "part_indices": torch.from_numpy(indices)}
    save_checkpoint(path, {"propagation_key": key, "frame_hw": list(crops.frame_hw)},
                    {name: value.cpu() for name, value in tensors.items()}, step=0)
    return crops, indices, False
