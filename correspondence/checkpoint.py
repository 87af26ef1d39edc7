"""The correspondence model's checkpoints: loading for inference and exporting shipped fp16 weights."""
from __future__ import annotations

from pathlib import Path

import torch

from birdmesh.checkpoint import half_precision, read_checkpoint, save_checkpoint
from birdmesh.config import config_from_dict, config_to_dict
from birdmesh.errors import UserError

from .config import UVCConfig
from .model import UVC

DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "uvc_cpu.pt"


def load_model(path: str | Path | None = None, device: str | torch.device = "cpu") -> tuple[UVC, UVCConfig]:
    """The trained correspondence model in eval mode (default: the shipped ``weights/uvc_cpu.pt``)."""
    path = path or DEFAULT_WEIGHTS
    ckpt = read_checkpoint(path)
    cfg = config_from_dict(UVCConfig, ckpt["config"], str(path))
    model = UVC(cfg.model)
    problem = None
    try:
        fit = model.load_state_dict({k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v
                                     for k, v in ckpt["state_dict"].items()}, strict=False)
    except (RuntimeError, TypeError, AttributeError) as err:  # shapes, non-tensors, not a dict
        problem = " ".join(str(err).split())  # torch's message spans lines: the details come after the first
        problem = problem if len(problem) <= 200 else problem[:197] + "..."
    else:
        problem = "; ".join(f"{len(keys)} {what} keys (e.g. {keys[0]})" for what, keys in
                            (("missing", fit.missing_keys), ("unexpected", fit.unexpected_keys)) if keys) or None
    if problem:
        raise UserError(f"{path}: weights do not fit the correspondence model of its config ({problem})")
    return model.to(device).eval(), cfg


def export_weights(checkpoint: str | Path, out: str | Path) -> Path:
    """Write the model weights of a training checkpoint as a small fp16 file (no optimizer state)."""
    ckpt = read_checkpoint(checkpoint)
    cfg = config_from_dict(UVCConfig, ckpt["config"], str(checkpoint))
    save_checkpoint(out, config_to_dict(cfg), half_precision(ckpt["state_dict"]), ckpt["step"])
    return Path(out)
