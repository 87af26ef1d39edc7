"""Throughput of synthetic training images (target: >= 50 images/s at 128 px on 2 cores).

    python bench/synth.py [--size 128] [--n 512] [--workers 1 2]

Prints images/s for one process (one thread) and for parallel worker processes, as
``python -m mesh_recon.synth images --workers W`` runs them.
"""
from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mesh_recon.synth import generate_batch  # noqa: E402

CHUNK = 64


def _work(args: tuple) -> int:
    import cv2
    import torch

    size, seed, start, n = args
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    for first in range(start, start + n, CHUNK):
        generate_batch(min(CHUNK, start + n - first), size, seed, first)
    return n


def images_per_second(size: int, n: int, workers: int) -> float:
    """Images/s generating ``n`` images of ``size`` px with ``workers`` processes (after a warm-up)."""
    per = -(-n // workers)
    tasks = [(size, 0, k * per, per) for k in range(workers)]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers) as pool:
        pool.map(_work, [(size, 1, k * 8, 8) for k in range(workers)])  # warm-up: imports, model, backgrounds
        start = time.perf_counter()
        done = sum(pool.map(_work, tasks))
        return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    for workers in args.workers:
        rate = images_per_second(args.size, args.n, workers)
        print(f"synth images {args.size}px, {workers} worker(s): {rate:.1f} images/s")


if __name__ == "__main__":
    main()
