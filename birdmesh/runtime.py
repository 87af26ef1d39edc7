"""Device choice, seeding and the location of the shared data folder."""
from __future__ import annotations

import functools
import os
import random
import subprocess
from pathlib import Path

import numpy as np
import torch

from .errors import UserError

DATA_ENV = "BIRDMESH_DATA"


def resolve_device(name: str = "auto") -> torch.device:
    """Map ``auto`` to CUDA when present, else CPU; check an explicit ``cuda`` is available."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise UserError(f"--device {name}: {err}") from None


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) for reproducible runs."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def data_root(explicit: str | None = None) -> Path:
    """The shared data folder: ``explicit``, else ``$BIRDMESH_DATA``, else ``../shared/data`` beside the repo."""
    if explicit:
        return Path(explicit)
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV])
    repo = Path(__file__).resolve().parents[1]
    for candidate in (repo.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"):
        if candidate.is_dir():
            return candidate
    return repo.parent / "shared" / "data"


def resolve_data_path(path: str) -> Path:
    """Expand a config path: a leading ``$DATA/`` means the shared data folder."""
    if path.startswith("$DATA/") or path == "$DATA":
        return data_root() / path[len("$DATA/"):]
    return Path(path)


@functools.cache  # asked once per propagated frame; the answer never changes within a process
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX-512 BF16 or AMX). Elsewhere oneDNN emulates bf16 and a
    bf16 matmul runs ~30x slower than float32 (measured on an AVX2 EPYC), so callers fall back to float32."""
    try:
        caps = torch.cpu.get_capabilities()
    except Exception:  # noqa: BLE001 - older torch or an unknown CPU: assume no native bf16
        return False
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 natively: a CUDA GPU that supports it, or a CPU with AVX-512 BF16 or
    AMX (``cpu_has_fast_bf16``)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_fast_bf16()


def cpu_name() -> str:
    """'<model name> (avx512: yes/no)' from lscpu, printed beside every benchmark timing (machines differ up to 2x)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return "unknown CPU"
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Model name")), "?")
    return f"{model} (avx512: {'yes' if 'avx512f' in text else 'no'})"
