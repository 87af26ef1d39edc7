"""Per-frame refinement: corrections are mirror-symmetric, recover a known camera shift, and reach mask parts
beyond the silhouette gradient through the coverage term."""
import dataclasses

import numpy as np
import pytest
import torch

from adapt.config import LossWeights, OptimConfig
from adapt.losses import fold_loss, fold_reference
from adapt.optimize import VideoCrops, frame_windows, predict_frames, video_maps
from adapt.refine import apply_corrections, refine_frames
from birdmesh.metrics import mask_iou
from mesh_recon.predictor import MeshPredictor, project_vertices
from mesh_recon.predictor_config import ModelConfig
from mesh_recon.render import render_hard

S = 64


def _scene(T=4):
    torch.manual_seed(0)
    model = MeshPredictor(ModelConfig(image_size=S))
    images = torch.rand(T, 3, S, S)
    pred = predict_frames(model, images)
    return model, images, pred


def test_zero_corrections_are_the_identity_and_offsets_are_mirrored():
    model, _, pred = _scene(2)
    sym = model.template.sym
    free = sym.num_centre + sym.num_right
    same = apply_corrections(pred, torch.zeros(2, free, 3), torch.zeros(2, 7), sym)
    torch.testing.assert_close(same.verts, pred.verts)
    torch.testing.assert_close(same.cams, pred.cams)
    offsets = torch.randn(2, free, 3)
    moved = apply_corrections(pred, offsets, torch.zeros(2, 7), sym).verts - pred.verts
    right = moved[:, sym.num_centre:sym.num_centre + sym.num_right]
    left = moved[:, sym.num_centre + sym.num_right:]
    torch.testing.assert_close(left, right * torch.tensor([-1.0, 1.0, 1.0]))
    assert moved[:, :sym.num_centre, 0].abs().max() == 0


def test_refinement_recovers_a_shifted_silhouette():
    model, images, pred = _scene()
    T = len(images)
    shifted = dataclasses.replace(pred, cams=pred.cams + torch.tensor([0.0, 0.15, -0.1, 0, 0, 0, 0]))
    target = render_hard(project_vertices(shifted), pred.faces, S).mask.float()  # (T, 1, S, S)
    before = mask_iou(render_hard(project_vertices(pred), pred.faces, S).mask, target)[:, 0]
    parts = torch.cat([1 - target, torch.zeros_like(target)], 1)  # background + one absent part
    box = torch.tensor([0.0, 0.0, S, S])
    crops = VideoCrops(images, target, parts.half(), box.expand(T, 4), torch.ones(T, dtype=torch.bool), (S, S))
    maps = video_maps(pred, crops)
    cfg = OptimConfig(batch_size=T, refine_iterations=80, refine_lr=1e-2, refine_render_size=S)
    refined, history = refine_frames(pred, crops, maps, model.template.sym, cfg, LossWeights(texture=0.0))
    after = mask_iou(render_hard(project_vertices(refined), pred.faces, S).mask, target)[:, 0]
    assert len(history) == 80 and history[-1]["silhouette"] < 0.5 * history[0]["silhouette"]
    assert float(before.mean()) < 0.8 and float(after.mean()) > 0.9


@pytest.mark.parametrize("num_frames, batch_size", [(80, 8), (10, 4), (3, 8), (1, 8)])
def test_frame_windows_are_consecutive_and_visit_every_frame_equally(num_frames, batch_size):
    windows = frame_windows(num_frames, batch_size, seed=0)
    counts = np.zeros(num_frames, int)
    passes = 0
    while passes < 50:
        covered = np.zeros(num_frames, int)
        while covered.sum() < num_frames:  # one pass covers each frame exactly once
            window = next(windows)
            assert 1 <= len(window) <= batch_size and np.array_equal(window, np.arange(window[0], window[-1] + 1))
            covered[window] += 1
        assert (covered == 1).all()
        counts += covered
        passes += 1
    assert (counts == 50).all()
    a, b = frame_windows(num_frames, batch_size, seed=3), frame_windows(num_frames, batch_size, seed=3)
    assert all(np.array_equal(next(a), next(b)) for _ in range(20))  # the same seed, the same schedule


def test_coverage_pulls_the_mesh_into_mask_parts_the_silhouette_term_cannot_see():
    model, images, pred = _scene()
    T = len(images)
    silhouette = render_hard(project_vertices(pred), pred.faces, S).mask.float()  # (T, 1, S, S)
    rows = torch.nonzero(silhouette[0, 0].any(1)).flatten()
    cols = torch.nonzero(silhouette[0, 0].any(0)).flatten()
    centre = int(cols.float().mean())
    target = silhouette.clone()
    bottom = int(rows.max())
    assert bottom + 14 < S
    target[:, :, bottom + 6:bottom + 14, centre - 4:centre + 4] = 1.0  # a patch 5 pixels below the belly
    parts = torch.cat([1 - target, torch.zeros_like(target)], 1)
    box = torch.tensor([0.0, 0.0, S, S])
    crops = VideoCrops(images, target, parts.half(), box.expand(T, 4), torch.ones(T, dtype=torch.bool), (S, S))
    maps = video_maps(pred, crops)
    cfg = OptimConfig(batch_size=T, refine_iterations=60, refine_lr=1e-2, refine_render_size=S)
    patch = (target - silhouette).bool()

    def patch_covered(coverage):
        refined, _ = refine_frames(pred, crops, maps, model.template.sym, cfg,
                                   LossWeights(texture=0.0, coverage=coverage))
        mask = render_hard(project_vertices(refined), pred.faces, S).mask.bool()
        return float((mask & patch).sum() / patch.sum())

    without, with_coverage = patch_covered(0.0), patch_covered(50.0)
    assert without < 0.1 and with_coverage > 0.5, (without, with_coverage)


def test_batched_predictions_pool_the_alignment_over_the_whole_video():
    torch.manual_seed(0)
    model = MeshPredictor(ModelConfig(image_size=S, align_stages=1)).eval()
    with torch.no_grad():
        model.align_head.stages[0].out.weight.normal_(std=0.05)
    images, keep = torch.rand(5, 3, S, S), torch.tensor([True, True, False, True, True])
    frame_wise = predict_frames(model, images, batch_size=2)  # chunks of 2, 2, 1
    with torch.no_grad():
        torch.testing.assert_close(frame_wise.verts, model(images).verts)
    pooled = predict_frames(model, images, batch_size=2, pool_keep=keep)
    moves = frame_wise.align_moves
    assert (moves[0] - moves[1]).abs().max() > 1e-4, "the head must move frames differently for a real test"
    expected = frame_wise.verts - moves + moves[keep].mean(0)
    torch.testing.assert_close(pooled.verts, expected)
    torch.testing.assert_close(pooled.cams, frame_wise.cams)


def test_texture_pooling_ignores_the_padding_beyond_the_frame():
    """Two views of one grey bird; the second crop sticks out of the frame on its left half (zero padding there).
    Pooled texture: what the frames show inside the frame (0.6), not darkened towards the padding's black."""
    model, _, pred = _scene(2)
    pred = dataclasses.replace(pred, verts=pred.verts[:1].expand(2, -1, -1), cams=pred.cams[:1].expand(2, -1),
                               uv_flow=pred.uv_flow[:1].expand(2, -1, -1, -1))
    images = torch.full((2, 3, S, S), 0.6)
    images[1, :, :, :S // 2] = 0.0  # crop pixels left of the frame's edge
    boxes = torch.tensor([[0.0, 0.0, S, S], [-S / 2, 0.0, S / 2, S]])
    mask = torch.ones(2, 1, S, S)
    crops = VideoCrops(images, mask, torch.cat([1 - mask, mask], 1).half(), boxes, torch.ones(2, dtype=torch.bool),
                       (S, S))
    texture = video_maps(pred, crops).texture
    assert float(texture.min()) > 0.59 and float(texture.max()) < 0.61


def test_fold_term_keeps_the_coverage_pull_from_crumpling_the_mesh():
    # the coverage term drags single vertices towards a patch 5 pixels below the belly; the fold term (no pair of
    # adjacent faces bent beyond the mean bird's, adapt.losses.fold_loss) makes the surface follow as a whole
    model, images, pred = _scene()
    T = len(images)
    silhouette = render_hard(project_vertices(pred), pred.faces, S).mask.float()
    rows = torch.nonzero(silhouette[0, 0].any(1)).flatten()
    centre = int(torch.nonzero(silhouette[0, 0].any(0)).flatten().float().mean())
    target = silhouette.clone()
    target[:, :, int(rows.max()) + 6:int(rows.max()) + 14, centre - 4:centre + 4] = 1.0
    parts = torch.cat([1 - target, torch.zeros_like(target)], 1)
    box = torch.tensor([0.0, 0.0, S, S])
    crops = VideoCrops(images, target, parts.half(), box.expand(T, 4), torch.ones(T, dtype=torch.bool), (S, S))
    maps = video_maps(pred, crops)
    cfg = OptimConfig(batch_size=T, refine_iterations=60, refine_lr=1e-2, refine_render_size=S)
    with torch.no_grad():
        rest = fold_reference(model.mean_verts(), model.faces)
    weights = LossWeights(texture=0.0, coverage=50.0, fold=10.0)
    free, _ = refine_frames(pred, crops, maps, model.template.sym, cfg, weights)
    held, history = refine_frames(pred, crops, maps, model.template.sym, cfg, weights, fold=rest)
    assert "fold" in history[0] and "fold" not in refine_frames(pred, crops, maps, model.template.sym,
                                                                dataclasses.replace(cfg, refine_iterations=1),
                                                                weights)[1][0]
    folds = [float(fold_loss(p.verts, pred.faces, rest)) for p in (pred, free, held)]
    assert folds[2] < 0.1 * folds[1], folds  # measured: 0.0013 before, 0.218 pulled freely, 0.0135 held
