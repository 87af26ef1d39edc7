"""Local top-k matching (``correspondence.affinity.topk_local_tiles``): windows with and without their corners.

    python bench/local_matching.py [--repeats 15] [--threads 2]

A window is the (tile + 2 reach)^2 square around a query tile; its corners lie beyond the radius of every query
of the tile, so ``local_windows`` leaves them out (when enough cells remain for torch.topk's partial sort). This
times one target frame against one context frame, both ways, interleaved in one process, on the maps propagation
uses: raw pixels at ``adapt.run``'s stride 4 (120 x 214 cells, 27-d, float32) and learned features at stride 8
(60 x 107, 64-d principal components, bfloat16) within radius 12 and 6. Prints the median times, their ratio, the
window cells and the window geometry's memory, and checks that both give the same similarities.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import correspondence.affinity as affinity  # noqa: E402
from birdmesh.runtime import cpu_name  # noqa: E402

CASES = [("pixels, stride 4, radius 12", 120, 214, 27, 12.0, torch.float32),
         ("learned, stride 8, radius 12", 60, 107, 64, 12.0, torch.bfloat16),
         ("learned, stride 8, radius 6", 60, 107, 64, 6.0, torch.bfloat16)]


def geometry(h: int, w: int, radius: float, corners: bool) -> affinity.LocalWindows:
    """The window geometry with its corners (``TOPK_PARTIAL_SORT`` raised out of reach) or without."""
    saved = affinity.TOPK_PARTIAL_SORT
    affinity.TOPK_PARTIAL_SORT = 10**9 if corners else saved
    try:
        affinity.local_windows.cache_clear()
        return affinity.local_windows(h, w, radius)
    finally:
        affinity.TOPK_PARTIAL_SORT = saved
        affinity.local_windows.cache_clear()


def window_megabytes(win: affinity.LocalWindows) -> float:
    return sum(t.numel() * t.element_size() for t in (win.flat_index, win.query_index, win.near, win.off_map)) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_name()}; {args.threads} threads; top-5; median of {args.repeats}")
    for name, h, w, channels, radius, dtype in CASES:
        gen = torch.Generator().manual_seed(0)
        query = F.normalize(torch.randn(channels, h, w, generator=gen), dim=0).to(dtype)
        key = F.normalize(torch.randn(channels, h, w, generator=gen), dim=0).to(dtype)
        runs = {}
        for label, corners in (("with corners", True), ("without", False)):
            win = geometry(h, w, radius, corners)
            runs[label] = (win, affinity.query_tiles(query, win.query_index), affinity.key_tiles(key, win), [])
        for _ in range(args.repeats):
            for win, queries, keys, times in runs.values():
                tic = time.perf_counter()
                affinity.topk_local_tiles(queries, keys, win, 5)
                times.append(time.perf_counter() - tic)
        values = [affinity.topk_local_tiles(q, k, win, 5)[0] for win, q, k, _ in runs.values()]
        same = torch.equal(*values)
        (full, *_, t_full), (trim, *_, t_trim) = runs.values()
        a, b = statistics.median(t_full), statistics.median(t_trim)
        print(f"{name}: with corners {a * 1e3:.1f} ms ({full.flat_index.shape[1]} cells, "
              f"{window_megabytes(full):.1f} MB), without {b * 1e3:.1f} ms ({trim.flat_index.shape[1]} cells, "
              f"{window_megabytes(trim):.1f} MB): {a / b:.2f}x; same similarities: {same}")


if __name__ == "__main__":
    main()
