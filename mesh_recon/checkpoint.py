"""The mesh predictor's checkpoints: loading for inference (default: the shipped weights) and fp16 export."""
from __future__ import annotations

from pathlib import Path

import torch

from birdmesh.checkpoint import half_precision, read_checkpoint, save_checkpoint
from birdmesh.config import config_from_dict, config_to_dict
from birdmesh.errors import UserError

from .articulated import ArticulatedPredictor
from .predictor import MeshPredictor
from .predictor_config import CMRConfig

DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "cmr_bird_cpu.pt"
VERSION = 1
# An articulated template's buffers that stay float32 in the fp16 file: the skinning weights must keep summing to 1
# and the rest geometry must not move; the residual basis, UVs, keypoint regressor and priors are fine in fp16.
TEMPLATE_FLOAT32 = ("template.verts", "template.weights", "template.joints", "template.to_canonical")


def load_predictor(path: str | Path | None = None,
                   device: str | torch.device = "cpu") -> tuple[MeshPredictor | ArticulatedPredictor, CMRConfig]:
    """The trained predictor in eval mode and its config (default: ``weights/cmr_bird_cpu.pt``).

    Accepts a training checkpoint (``last.pt``) or an exported fp16 file; weights are cast to float32. The config's
    ``model.shape`` picks the free-form (CMR) or the articulated predictor.
    """
    path = Path(path or DEFAULT_WEIGHTS)
    ckpt = read_checkpoint(path)
    cfg = config_from_dict(CMRConfig, ckpt["config"], str(path))
    model = ArticulatedPredictor(cfg.model) if cfg.model.shape == "articulated" else MeshPredictor(cfg.model)
    state = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first_line = str(err).splitlines()[0]
        raise UserError(f"{path}: weights do not fit the predictor of its config ({first_line})") from None
    return model.to(device).eval(), cfg


def export_weights(checkpoint: str | Path, out: str | Path) -> Path:
    """Write the model weights of a training checkpoint as a small fp16 file (no optimizer state); an articulated
    template's geometry and skinning weights stay float32 (``TEMPLATE_FLOAT32``)."""
    ckpt = read_checkpoint(checkpoint)
    cfg = config_from_dict(CMRConfig, ckpt["config"], str(checkpoint))
    weights = half_precision(ckpt["state_dict"], keep=TEMPLATE_FLOAT32)
    save_checkpoint(out, config_to_dict(cfg), weights, int(ckpt["step"]), VERSION)
    return Path(out)
