"""Inference throughput of the mesh predictor (target: >= 20 images/s at 128 px on 2 cores).

    python bench/predictor.py [--weights PATH] [--batch 1 8 32] [--threads 2] [--repeats 5]

Times ``model(images)`` (encoder, shape, camera and texture-flow heads) in eval mode without gradients, median of
``--repeats`` runs after a warm-up, on the inputs of the predictor tests. Without shipped weights a fresh model of
``configs/cmr_cpu.yaml`` is timed (the same cost).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "mesh_recon"))

import torch  # noqa: E402

from birdmesh.config import load_config  # noqa: E402
from mesh_recon.checkpoint import DEFAULT_WEIGHTS, load_predictor  # noqa: E402
from mesh_recon.predictor import MeshPredictor  # noqa: E402
from mesh_recon.predictor_config import CMRConfig  # noqa: E402
from test_predictor import predictor_inputs  # noqa: E402


def images_per_second(model: MeshPredictor, batch: int, repeats: int) -> float:
    """Median images/s of ``model`` on batches of ``batch`` crops of its input size."""
    images = predictor_inputs(batch, model.cfg.image_size)
    times = []
    with torch.no_grad():
        model(images)  # warm-up: allocator, oneDNN kernels
        for _ in range(repeats):
            start = time.perf_counter()
            model(images)
            times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=None,
                        help=f"predictor weights (default: {DEFAULT_WEIGHTS.name} if present)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    weights = args.weights or (DEFAULT_WEIGHTS if DEFAULT_WEIGHTS.is_file() else None)
    if weights:
        model, _ = load_predictor(weights)
    else:
        model = MeshPredictor(load_config(CMRConfig, ROOT / "configs" / "cmr_cpu.yaml").model).eval()
    for batch in args.batch:
        rate = images_per_second(model, batch, args.repeats)
        print(f"predictor {model.cfg.image_size}px, batch {batch}, {args.threads} thread(s): {rate:.1f} images/s")


if __name__ == "__main__":
    main()
