"""Checkpoint files shared by every model: ``{config, state_dict, version, step, ...}``, loaded safely."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import UserError


def save_checkpoint(path: str | Path, config: dict, state_dict: dict, step: int, version: int = 1,
                    **extra) -> None:
    """Write ``{config, state_dict, version, step, **extra}`` atomically (temp file, then rename).

    Args:
        config: the job's config as a plain dict (``birdmesh.config.config_to_dict``).
        extra: more tensors/numbers/dicts, e.g. optimizer states, for resuming.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"config": config, "state_dict": state_dict, "version": version, "step": step, **extra}, tmp)
    os.replace(tmp, path)


def read_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint dict with ``weights_only=True``; a UserError names a missing or broken file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a bad file for the user
        raise UserError(f"{path}: not a readable checkpoint ({type(err).__name__})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "config" not in ckpt:
        raise UserError(f"{path}: not a birdmesh checkpoint (needs 'config' and 'state_dict')")
    return ckpt


def half_precision(state_dict: dict, keep: tuple[str, ...] = ()) -> dict:
    """fp16 copy of a state dict's floating tensors (for shipped weights); other entries, and those whose names
    start with a prefix in ``keep``, unchanged."""
    return {k: (v.half() if v.is_floating_point() and not k.startswith(keep) else v) for k, v in state_dict.items()}
