"""Training throughput of the correspondence model at a config: pairs/s per stage (forward + backward + step).

    python bench/train_uvc.py [--config configs/uvc_cpu.yaml] [--steps 10] [--threads 2]

Uses random frames of the configured sizes (data loading is measured by the training log, not here).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from birdmesh.color import rgb_to_lab  # noqa: E402
from birdmesh.config import load_config  # noqa: E402
from birdmesh.runtime import native_bf16  # noqa: E402
from correspondence.config import UVCConfig  # noqa: E402
from correspondence.model import UVC, PairBatch, autoencoder_loss  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "uvc_cpu.yaml"))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(UVCConfig, args.config)
    B, S, d = cfg.train.batch_size, cfg.data.frame_size, cfg.data
    model = UVC(cfg.model)
    model.encoder_bf16 = cfg.train.bf16 and native_bf16(torch.device("cpu"))  # as correspondence.train sets it
    precision = "bf16 encoder" if model.encoder_bf16 else "float32"
    opt = torch.optim.Adam(model.parameters(), cfg.train.lr)
    batch = PairBatch(torch.rand(B, 3, S, S), torch.rand(B, 3, S, S),
                      torch.full((B, 2), (S - d.ref_patch_size) // 16 * 8, dtype=torch.long))
    for stage in (0, 1, 2):
        times = []
        for _ in range(args.steps + 1):
            tic = time.time()
            if stage == 0:
                both = F.interpolate(torch.cat([batch.reference, batch.target]), size=d.patch_size, mode="bilinear")
                loss = autoencoder_loss(model.autoencoder, rgb_to_lab(both))
            else:
                loss, _ = model(batch, cfg.loss, stage, d.ref_patch_size, d.patch_size, True)
            opt.zero_grad()
            loss.backward()
            opt.step()
            times.append(time.time() - tic)
        median = sorted(times[1:])[len(times[1:]) // 2]
        print(f"stage {stage}: {median:.3f} s/step, {B / median:.1f} pairs/s (batch {B}, {args.threads} threads, "
              f"{precision})")


if __name__ == "__main__":
    main()
