"""Benchmark of the mesh_recon renderers (one run prints every figure).

    python bench/render.py [--threads 1] [--repeats 5]

Threads default to 1: with another job busy on the 2 cores, 2 intra-op threads oversubscribe them and every
small op waits at a barrier (measured 3-100x slower); pass --threads 2 on an idle machine.

Soft cases: batch 8, icosphere 642 v / 1280 f (scale 0.8, random rotations), forward + backward of an L1 loss.
Each case runs in a fresh child process that reports its time (median wall and CPU seconds per call after one
warm-up) and its peak-RSS rise (ru_maxrss after the runs minus before them, inputs already built).
Hard cases: z-buffer images per second. Ratios: against the brute-force all-pairs renderer of the tests (small
case, it does not fit in memory at 128 px) and against deodr's hard rasterizer when it is installed.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "mesh_recon")]

from factories import bird_like_mesh, projected_sphere  # noqa: E402  (test input factories)
from mesh_recon.render import (render_hard, render_silhouette, render_uv_texture,  # noqa: E402
                               render_vertex_attributes)

TARGETS = {"silhouette@128": 0.15, "parts8@128": 0.35}
MEMORY_TARGET_MB = 1024


def soft_case(name: str, size: int, batch: int = 8):
    """A closure running forward + backward of the named soft case, and the loss inputs it needs."""
    verts, faces = projected_sphere(batch)
    verts.requires_grad_(True)
    if name == "silhouette":
        target = torch.rand(batch, 1, size, size)
        return lambda: (render_silhouette(verts, faces, size) - target).abs().mean().backward()
    if name == "parts8":  # 8 one-hot part maps in a 128 x 256 UV texture, one pass
        from mesh_recon.mesh import face_spherical_uv, icosphere
        face_uvs = face_spherical_uv(*icosphere(3))
        labels = torch.randint(0, 8, (batch, 128, 256))
        texture = torch.nn.functional.one_hot(labels, 8).permute(0, 3, 1, 2).float().requires_grad_(True)
        target = torch.rand(batch, 8, size, size)
        return lambda: (render_uv_texture(verts, faces, face_uvs, texture, size) - target).abs().mean().backward()
    if name == "rgb_vertex":
        attrs = torch.rand(batch, verts.shape[1], 3, requires_grad=True)
        target = torch.rand(batch, 3, size, size)
        return lambda: (render_vertex_attributes(verts, faces, attrs, size) - target).abs().mean().backward()
    if name == "brute_silhouette":  # the all-pairs reference of the tests
        from test_raster import brute_force_silhouette
        target = torch.rand(batch, 1, size, size)
        return lambda: (brute_force_silhouette(verts, faces, size, size, sigma=1e-4) - target).abs().mean().backward()
    if name == "culled_silhouette_small":
        target = torch.rand(batch, 1, size, size)
        return lambda: (render_silhouette(verts, faces, size) - target).abs().mean().backward()
    raise ValueError(f"case: unknown {name!r}")


def ok(passed: bool) -> str:
    return "ok" if passed else "MISSED"


def time_calls(fn, repeats: int) -> tuple[float, float]:
    fn()
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def child(case: str, size: int, batch: int, repeats: int, threads: int) -> None:
    torch.set_num_threads(threads)
    fn = soft_case(case, size, batch)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    wall, cpu = time_calls(fn, repeats)
    rise_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(json.dumps({"wall": wall, "cpu": cpu, "rss_rise_mb": rise_mb}))


def run_child(case: str, size: int, batch: int, repeats: int, threads: int) -> dict:
    command = [sys.executable, __file__, "--child", case, "--size", str(size), "--batch", str(batch),
               "--repeats", str(repeats), "--threads", str(threads)]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def hard_rate(verts, faces, size, repeats: int) -> float:
    """Images per second of render_hard (batch of verts)."""
    wall, _ = time_calls(lambda: render_hard(verts, faces, size), repeats)
    return verts.shape[0] / wall


def deodr_rate(verts, faces, size) -> tuple[float, float] | None:
    """Images per second of deodr's hard rasterizer (sigma = 0) on the same meshes, and IoU with ours."""
    try:
        import numpy as np
        from deodr.differentiable_renderer import Scene2D
    except ImportError:
        return None
    from mesh_recon.geometry import ndc_to_pixels
    height, width = (size, size) if isinstance(size, int) else size
    F, V = faces.shape[0], verts.shape[1]
    masks, start = [], time.perf_counter()
    for mesh in verts:
        ij = ndc_to_pixels(mesh[:, :2].double(), width, height).numpy()
        scene = Scene2D(faces=faces.numpy().astype(np.uint32), faces_uv=faces.numpy().astype(np.uint32), ij=ij,
                        depths=mesh[:, 2].double().numpy() + 10, textured=np.zeros(F, bool), uv=np.zeros((V, 2)),
                        shade=np.zeros(V), colors=np.ones((V, 1)), shaded=np.zeros(F, bool),
                        edgeflags=np.zeros((F, 3), bool), height=height, width=width, nb_colors=1,
                        texture=np.zeros((1, 1, 1)), background_color=np.zeros(1), backface_culling=False)
        masks.append(scene.render(sigma=0)[0][..., 0])
    rate = verts.shape[0] / (time.perf_counter() - start)
    ours = render_hard(verts, faces, size).mask[:, 0].numpy() > 0
    theirs = np.stack(masks) > 0.5
    return rate, float((ours & theirs).sum() / (ours | theirs).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--child")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.size, args.batch, args.repeats, args.threads)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads; soft: batch 8, 642 v / 1280 f, forward + backward")
    for case, size in [("silhouette", 128), ("parts8", 128), ("rgb_vertex", 128), ("silhouette", 256),
                       ("parts8", 256)]:
        r = run_child(case, size, 8, args.repeats, args.threads)
        target = TARGETS.get(f"{case}@{size}")
        verdict = "" if target is None else f"  target <= {target:.2f} s: {ok(r['wall'] <= target)}"
        if size == 128:
            verdict += f"  memory target <= {MEMORY_TARGET_MB} MB: {ok(r['rss_rise_mb'] <= MEMORY_TARGET_MB)}"
        print(f"{case:>11} @ {size:3d} px: {r['wall']:.3f} s wall ({r['cpu']:.3f} s CPU), "
              f"peak RSS +{r['rss_rise_mb']:.0f} MB{verdict}")
    brute = run_child("brute_silhouette", 32, 2, 2, args.threads)
    culled = run_child("culled_silhouette_small", 32, 2, args.repeats, args.threads)
    print(f"brute force all pairs (batch 2, 32 px silhouette): {brute['wall']:.3f} s, +{brute['rss_rise_mb']:.0f} MB; "
          f"culled {culled['wall']:.4f} s, +{culled['rss_rise_mb']:.0f} MB: "
          f"x{brute['wall'] / culled['wall']:.0f} faster")
    sphere, sphere_faces = projected_sphere(8)
    bird, bird_faces = bird_like_mesh(8)
    for label, verts, faces, size in [("642 v / 1280 f", sphere, sphere_faces, 128),
                                      ("2562 v / 5120 f bird-like", bird, bird_faces, 128),
                                      ("2562 v / 5120 f bird-like", bird, bird_faces, (480, 854))]:
        rate = hard_rate(verts, faces, size, args.repeats)
        line = f"hard {label} @ {size}: {rate:.0f} images/s (render_hard)"
        other = deodr_rate(verts, faces, size)
        if other is not None:
            line += f"; deodr {other[0]:.0f} images/s (ours x{rate / other[0]:.2f}), mask IoU {other[1]:.4f}"
        print(line)


if __name__ == "__main__":
    main()
