"""Which skinned template for the articulated predictor: the avian mesh itself, or the free-form predictor's learned
icosphere mean shape with skinning weights carried over from it? An oracle comparison plus the rendering cost.

    python bench/template_choice.py [--n 64] [--threads 2]

Both templates are posed with the synthetic hold-out's ground-truth joint rotations and bone lengths and drawn with
its true cameras (seed 90210, ``mesh_recon.evaluate``'s hold-out): what each can express at best. Printed: mask IoU
of the hard render against the true mask, the camera-frame Chamfer and F-score@5 % (``birdmesh.shape_metrics``),
mesh quality beside the ground truth's, and the soft-silhouette cost per training batch (16 images, 64 px, forward +
backward) of each template's face count.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.spatial import cKDTree  # noqa: E402

from birdmesh.metrics import mask_iou  # noqa: E402
from birdmesh.shape_metrics import mesh_camera_chamfer, mesh_quality, quaternion_matrix, to_camera_frame  # noqa: E402
from mesh_recon.bird_model import axis_angle_to_matrix, load_bird_model  # noqa: E402
from mesh_recon.checkpoint import load_predictor  # noqa: E402
from mesh_recon.geometry import weak_perspective_project  # noqa: E402
from mesh_recon.mesh import uniform_laplacian  # noqa: E402
from mesh_recon.render import render_hard, render_silhouette  # noqa: E402
from mesh_recon.skinned_template import SkinnedTemplate  # noqa: E402
from mesh_recon.synth import generate_batch  # noqa: E402


def carried_weights(sphere_model: torch.Tensor, sphere_faces: torch.Tensor, template: SkinnedTemplate,
                    smooth_steps: int = 5) -> torch.Tensor:
    """(642, J) skinning weights of the sphere's vertices (model frame): the nearest avian vertex's, then smoothed
    over the sphere's mesh (uniform Laplacian steps) and renormalised."""
    _, nearest = cKDTree(template.verts.double().numpy()).query(sphere_model.double().numpy())
    weights = template.weights[torch.from_numpy(nearest)].double()
    lap = uniform_laplacian(sphere_faces, len(sphere_model)).double()
    for _ in range(smooth_steps):
        weights = weights - 0.5 * torch.sparse.mm(lap, weights)
    weights = weights.clamp_min(0)
    return (weights / weights.sum(1, keepdim=True)).float()


def oracle_scores(name: str, verts: torch.Tensor, faces: torch.Tensor, data: dict, faces_gt: torch.Tensor) -> None:
    """Print mean IoU, camera-frame Chamfer / F-score and mesh quality of posed meshes (B, V, 3) vs the truth."""
    S = data["image"].shape[-1]
    iou = mask_iou(render_hard(weak_perspective_project(verts, data["cam"]), faces, S).mask, data["mask"])[:, 0]
    rows = []
    for i in range(len(verts)):
        cam = data["cam"][i].double()
        frame = dict(scale=float(cam[0]), rotation=quaternion_matrix(cam[3:].numpy()), translation=cam[1:3].numpy())
        pred, gt = to_camera_frame(verts[i].numpy(), **frame), to_camera_frame(data["verts"][i].numpy(), **frame)
        score = mesh_camera_chamfer(pred, faces.numpy(), gt, faces_gt.numpy(), seed=i)
        quality, quality_gt = mesh_quality(pred, faces.numpy()), mesh_quality(gt, faces_gt.numpy())
        rows.append((score.chamfer, score.fscore, quality.normal_angle_deg, quality.folded,
                     quality_gt.normal_angle_deg, quality_gt.folded))
    c, f, n, fo, ng, fg = np.mean(rows, 0)
    print(f"{name:32s} IoU {float(iou.mean()):.3f}  cam-Chamfer {c:.4f}  F@5% {f:.3f}  normal {n:.1f} deg "
          f"(gt {ng:.1f})  folded {fo:.3f} (gt {fg:.3f})  ({len(faces)} faces)")


def render_cost(verts: torch.Tensor, faces: torch.Tensor, cams: torch.Tensor, repeats: int = 3) -> float:
    """Median seconds of a soft silhouette (64 px) forward + backward for a batch."""
    times = []
    for _ in range(repeats + 1):
        v = verts.clone().requires_grad_(True)
        start = time.perf_counter()
        render_silhouette(weak_perspective_project(v, cams), faces, 64, 1e-4).sum().backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bird = load_bird_model()
    template = SkinnedTemplate.from_bird_model(bird, 8)
    data = generate_batch(args.n, 128, 90210, 0)
    rotations, bones = axis_angle_to_matrix(data["body_pose"]), data["bone_scale"]
    avian, _ = template.pose(template.verts, rotations, bones)
    oracle_scores("avian mesh (3932 v)", avian, template.faces, data, bird.faces)
    free, _ = load_predictor()
    lin, shift = template.to_canonical[:3], template.to_canonical[3]
    sphere_model = (free.mean_verts().detach() - shift) @ torch.linalg.inv(lin)  # canonical -> model frame
    sphere = SkinnedTemplate({**{k: getattr(template, k) for k in SkinnedTemplate.NAMES},
                              "verts": sphere_model, "faces": free.faces,
                              "weights": carried_weights(sphere_model, free.faces, template)})
    posed_sphere, _ = sphere.pose(sphere.verts, rotations, bones)
    oracle_scores("icosphere mean + carried weights", posed_sphere, free.faces, data, bird.faces)
    rest_sphere = free.mean_verts().detach().expand(args.n, -1, -1)
    oracle_scores("icosphere mean, unposed", rest_sphere, free.faces, data, bird.faces)
    cams = data["cam"][:16]
    t_avian, t_sphere = render_cost(avian[:16], template.faces, cams), render_cost(posed_sphere[:16], free.faces, cams)
    print(f"soft silhouette 16 x 64 px fwd+bwd ({args.threads} threads): avian {t_avian * 1000:.0f} ms, "
          f"icosphere {t_sphere * 1000:.0f} ms ({t_avian / t_sphere:.2f}x)")


if __name__ == "__main__":
    main()
