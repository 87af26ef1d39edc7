"""adapt.evaluate: hand-computed metric values, then the whole CLI on a tiny synthetic case with known answers."""
import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.spatial.transform import Rotation

import adapt.evaluate as evaluate
from adapt.metrics3d import (Similarity, chamfer_fscore, compose, sample_surface, shape_scores,
                             similarity_align, umeyama)
from adapt.scores import part_consistency, render_masks, reprojection_consistency, vertex_map
from birdmesh.davis import write_annotation
from mesh_recon.mesh import icosphere, save_obj

SQUARE = np.array([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], dtype=np.float64)
SQUARE_FACES = np.array([[0, 1, 2], [0, 2, 3]])


def camera(tx: float, ty: float, scale: float = 10.0, rotation=None) -> dict:
    return {"rotation": (np.eye(3) if rotation is None else rotation).tolist(), "scale": scale,
            "translation": [tx, ty]}


# --- 2-D scores -------------------------------------------------------------------------------------------------

def test_square_covers_the_pixel_centres_inside_its_edges():
    # Edges at u = 39.5 .. 59.5, v = 29.5 .. 49.5: pixel centres 40..59 x 30..49, 400 pixels.
    mask = render_masks(SQUARE[None], [camera(49.5, 39.5)], SQUARE_FACES, (80, 100))[0]
    rows, cols = np.nonzero(mask)
    assert mask.sum() == 400 and (rows.min(), rows.max(), cols.min(), cols.max()) == (30, 49, 40, 59)


def test_reprojection_consistency_perfect_and_drifting_shapes():
    T = 6
    cams = [camera(49.5 + 2 * t, 39.5) for t in range(T)]  # the camera pans, the shape stays
    gt = render_masks(np.repeat(SQUARE[None], T, 0), cams, SQUARE_FACES, (80, 120))
    still = np.repeat(SQUARE[None], T, 0)
    assert np.allclose(reprojection_consistency(still, cams, SQUARE_FACES, gt, 1), 1.0)
    # Frame t's shape slides 0.5 units (5 px) right per frame and its camera compensates: every frame fits
    # perfectly alone, yet shape t under camera t+d sits 5d px left of the truth.
    drift = still + np.array([0.5, 0, 0]) * np.arange(T)[:, None, None]
    drift_cams = [camera(49.5 + 2 * t - 5 * t, 39.5) for t in range(T)]
    assert np.allclose(render_masks(drift, drift_cams, SQUARE_FACES, (80, 120)), gt)
    d1 = reprojection_consistency(drift, drift_cams, SQUARE_FACES, gt, 1)
    d2 = reprojection_consistency(drift, drift_cams, SQUARE_FACES, gt, 2)
    assert d1.shape == (5,) and np.allclose(d1, 300 / 500)  # 15x20 overlap, 25x20 union
    assert d2.shape == (4,) and np.allclose(d2, 200 / 600)  # 10x20 overlap, 30x20 union
    assert reprojection_consistency(drift, drift_cams, SQUARE_FACES, gt, T).shape == (0,)


def test_reprojection_consistency_rejects_bad_inputs():
    cams = [camera(10, 10)] * 3
    gt = np.zeros((3, 20, 20), bool)
    with pytest.raises(ValueError, match="d: expected an integer frame distance >= 1, got 0"):
        reprojection_consistency(np.repeat(SQUARE[None], 3, 0), cams, SQUARE_FACES, gt, 0)
    with pytest.raises(ValueError, match=r"cameras: expected one entry per frame \(3\), got 2"):
        reprojection_consistency(np.repeat(SQUARE[None], 3, 0), cams[:2], SQUARE_FACES, gt, 1)
    with pytest.raises(ValueError, match=r"gt_masks: expected shape \(3, H, W\)"):
        reprojection_consistency(np.repeat(SQUARE[None], 3, 0), cams, SQUARE_FACES, gt[:2], 1)


def grid_mesh(n: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """A flat (n+1) x (n+1) vertex grid over [-1, 1]^2 at z = 0."""
    xs = np.linspace(-1, 1, n + 1)
    verts = np.array([[x, y, 0.0] for y in xs for x in xs])
    faces = []
    for i in range(n):
        for j in range(n):
            a = i * (n + 1) + j
            faces += [[a, a + 1, a + n + 2], [a, a + n + 2, a + n + 1]]
    return verts, np.array(faces)


def test_part_consistency_one_labelling_explains_consistent_parts_only():
    verts, faces = grid_mesh()
    labels = np.where(verts[:, 0] < 0, 1, 2)  # left half part 1, right half part 2
    # 4-pixel vertex spacing and 4-pixel pans: every vertex is seen by as many pixels in every frame.
    cams = [camera(40.5 + 4 * t, 30.5, 16.0) for t in range(3)]
    seen = [vertex_map(verts, c, faces, (64, 90)) for c in cams]
    parts = np.stack([np.where(s >= 0, labels[s], 0) for s in seen]).astype(np.uint8)
    seq = np.repeat(verts[None], 3, 0)
    perfect = part_consistency(seq, cams, faces, parts)
    assert perfect.accuracy == 1.0 and perfect.mean_iou == 1.0 and np.array_equal(perfect.vertex_parts, labels)
    # Frame 2's parts swap sides: the majority keeps frames 0-1's labelling, frame 2 disagrees everywhere.
    flipped = parts.copy()
    flipped[2] = np.where(parts[2] > 0, 3 - parts[2], 0)
    scores = part_consistency(seq, cams, faces, flipped)
    assert np.allclose(scores.frame_accuracy, [1, 1, 0]) and np.isclose(scores.accuracy, 2 / 3)
    assert np.array_equal(scores.vertex_parts, labels) and 0 < scores.mean_iou < 1


# --- 3-D scores -------------------------------------------------------------------------------------------------

def test_chamfer_fscore_identical_and_hand_computed():
    points = np.random.default_rng(0).normal(size=(50, 3))
    assert chamfer_fscore(points, points, 0.01) == (0.0, 1.0)
    # One point each, 5 apart: squared distance 25 both ways.
    assert chamfer_fscore([[0, 0, 0]], [[3, 4, 0]], 5.0) == (50.0, 1.0)
    assert chamfer_fscore([[0, 0, 0]], [[3, 4, 0]], 4.9) == (50.0, 0.0)
    with pytest.raises(ValueError, match="threshold: expected a distance > 0"):
        chamfer_fscore(points, points, 0)
    with pytest.raises(ValueError, match=r"gt_points: expected a non-empty \(N, 3\) point array, got shape \(4,\)"):
        chamfer_fscore(points, np.zeros(4), 1)


def _known_similarity() -> Similarity:
    rotation = Rotation.from_rotvec([0.1, -0.2, 0.15]).as_matrix()
    return Similarity(1.4, rotation, np.array([0.3, -0.2, 0.5]))


def test_umeyama_recovers_a_known_similarity_exactly():
    source = np.random.default_rng(1).normal(size=(30, 3))
    truth = _known_similarity()
    found = umeyama(source, truth.apply(source))
    assert np.isclose(found.scale, truth.scale) and np.allclose(found.rotation, truth.rotation)
    assert np.allclose(found.translation, truth.translation) and np.isclose(np.linalg.det(found.rotation), 1)


def test_similarity_icp_aligns_a_scaled_rotated_copy_without_correspondences():
    verts, faces = icosphere(2)
    body = verts.double().numpy() * [1.0, 0.5, 0.3]  # an ellipsoid: no rotational symmetry to slide along
    target = sample_surface(body, faces.numpy(), 1500, seed=0)
    source = sample_surface(body, faces.numpy(), 1500, seed=1)  # other samples of the same surface
    floor, _ = chamfer_fscore(source, target, 0.05)  # what two samplings of one surface score
    unknown = _known_similarity()
    moved = unknown.apply(source)
    found = similarity_align(moved, target, iterations=60)
    residual = compose(found, unknown)  # should be the identity
    angle = np.degrees(Rotation.from_matrix(residual.rotation).magnitude())
    assert abs(residual.scale - 1) < 0.01 and angle < 1.0 and np.abs(residual.translation).max() < 0.02
    assert chamfer_fscore(found.apply(moved), target, 0.05)[0] < 1.05 * floor < chamfer_fscore(moved, target, 0.05)[0]


def test_shape_scores_ignore_the_weak_perspective_depth_offset():
    verts, faces = icosphere(2)
    gt = sample_surface(verts.numpy() * [60, 30, 20] + [200, 100, 0], faces.numpy(), 1000, seed=0)
    scores = shape_scores(gt + [0, 0, 500], gt)
    assert scores.chamfer < 1e-12 and scores.fscore == 1.0
    squashed = shape_scores(gt * [1, 1, 0.2] + [0, 0, 500], gt)
    assert squashed.chamfer > 1e-3 and squashed.fscore < 1.0


def test_sample_surface_is_deterministic_and_on_the_mesh():
    a = sample_surface(SQUARE, SQUARE_FACES, 200, seed=3)
    assert np.array_equal(a, sample_surface(SQUARE, SQUARE_FACES, 200, seed=3))
    assert a.shape == (200, 3) and np.all(a[:, 2] == 0) and np.all(np.abs(a[:, :2]) <= 1)
    assert abs(a[:, 0].mean()) < 0.15 and abs(a[:, 1].mean()) < 0.15  # both triangles sampled, by area


# --- the CLI on a tiny synthetic case ---------------------------------------------------------------------------

T, H, W, SCALE = 6, 60, 90, 12.0
SPHERE_V, SPHERE_F = icosphere(2)[0].double().numpy(), icosphere(2)[1].numpy()
BODY = SPHERE_V
KEYPOINT_VERTS = np.array([0, 5, 40, 100])
PART_OF_VERTEX = np.where(BODY[:, 0] < 0, 1, 2)


def _true_cameras():
    return [camera(30 + 4 * t, 30, SCALE) for t in range(T)]


def _write_dataset(root, name, synthetic: bool):
    """A DAVIS-layout sequence of a sphere panning right; synthetic ones get gt/<name>.npz."""
    cams = _true_cameras()
    masks = render_masks(np.repeat(BODY[None], T, 0), cams, SPHERE_F, (H, W))
    for t in range(T):
        (root / "JPEGImages/480p" / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((H, W, 3), 90 + 100 * masks[t][..., None], np.uint8)).save(
            root / "JPEGImages/480p" / name / f"{t:05d}.jpg")
        write_annotation(root / "Annotations/480p" / name / f"{t:05d}.png", masks[t].astype(np.uint8))
    (root / "ImageSets").mkdir(exist_ok=True)
    (root / "ImageSets" / ("synth.txt" if synthetic else "list.txt")).write_text(name + "\n")
    if synthetic:
        (root / "gt").mkdir(exist_ok=True)
        cam_points = np.stack([SCALE * BODY + [c["translation"][0], c["translation"][1], 0] for c in cams])
        keypoints = np.concatenate([cam_points[:, KEYPOINT_VERTS, :2], np.ones((T, len(KEYPOINT_VERTS), 1))], -1)
        np.savez(root / "gt" / f"{name}.npz", verts_camera=cam_points, faces=SPHERE_F, keypoints=keypoints)


def _fake_pipeline(seq, method, out, pipeline_args):
    """Writes what adapt.run would. Adapted: the true sphere and cameras. Frame-wise: every frame fits alone,
    but the sphere drifts in the canonical frame (each camera shifts it back: shape t under camera t+d misses)
    and spins about the view axis (same silhouette, but the surface slides under the propagated parts)."""
    assert "--set" in pipeline_args and "input.max_frames=6" in pipeline_args
    true_cams = _true_cameras()
    drift, turn = (0.0, 0.0) if method == "adapted" else (0.3, 0.4)
    verts = [BODY @ Rotation.from_rotvec([0, 0, turn * t]).as_matrix().T + [drift * t, 0, 0] for t in range(T)]
    cams = [camera(c["translation"][0] - SCALE * drift * t, 30, SCALE) for t, c in enumerate(true_cams)]
    (out / "meshes").mkdir(parents=True)
    for t in range(T):
        save_obj(out / "meshes" / f"{t:05d}.obj", torch.from_numpy(verts[t]), torch.from_numpy(SPHERE_F))
    (out / "cameras.json").write_text(json.dumps({"frames": cams}))
    masks = render_masks(np.stack(verts), cams, SPHERE_F, (H, W))
    for t in range(T):
        write_annotation(out / "masks" / f"{t:05d}.png", masks[t].astype(np.uint8) * 255)
        seen = vertex_map(BODY, true_cams[t], SPHERE_F, (H, W))  # propagation follows the image
        write_annotation(out / "parts" / f"{t:05d}.png", np.where(seen >= 0, PART_OF_VERTEX[seen], 0).astype(np.uint8))
    report = {"frames": T, "settings": {"input": {"stride": 1}, "predictor": {"checkpoint": ""}},
              "timings_s": {"propagate": 0.6, "adapt": 1.2 if method == "adapted" else 0.0}}
    (out / "report.json").write_text(json.dumps(report))


def test_cli_scores_a_perfect_and_a_drifting_run(tmp_path, monkeypatch):
    _write_dataset(tmp_path / "davis", "sphere", synthetic=False)
    _write_dataset(tmp_path / "synth", "toy", synthetic=True)
    monkeypatch.setattr(evaluate, "run_pipeline", _fake_pipeline)
    onehot = np.zeros((len(KEYPOINT_VERTS), len(BODY)))
    onehot[np.arange(len(KEYPOINT_VERTS)), KEYPOINT_VERTS] = 1
    monkeypatch.setattr(evaluate, "keypoint_weights", lambda checkpoint: onehot)
    out = tmp_path / "eval"
    evaluate.main(["--davis", str(tmp_path / "davis"), "--list", "list.txt", "--synthetic", str(tmp_path / "synth"),
                   "--out", str(out), "--max-frames", "6", "--distances", "1,2,10", "--points", "400"])
    rows = {(r["dataset"], r["method"]): r for r in csv.DictReader(open(out / "results.csv"))}
    assert set(rows) == {(d, m) for d in ("davis", "synthetic") for m in ("adapted", "framewise")}
    for dataset in ("davis", "synthetic"):
        good, drifting = rows[dataset, "adapted"], rows[dataset, "framewise"]
        assert float(good["iou"]) == 1.0 and float(drifting["iou"]) > 0.99  # both fit every frame alone
        assert float(good["cons_d1"]) == 1.0 and float(good["cons_d2"]) == 1.0 and good["cons_d10"] == ""
        assert float(drifting["cons_d2"]) < float(drifting["cons_d1"]) < 0.9
        assert float(good["part_accuracy"]) == 1.0 and float(drifting["part_accuracy"]) < 1.0
        assert np.isclose(float(good["time_per_frame_s"]), 1.8 / T)
    synth = rows["synthetic", "adapted"]
    assert float(synth["chamfer_icp"]) < 1e-9 and float(synth["fscore_icp"]) == 1.0 and float(synth["pck_0.1"]) == 1.0
    assert float(rows["synthetic", "framewise"]["pck_0.1"]) < 0.5  # the spin carries the keypoint vertices away
    summary = (out / "summary.md").read_text()
    assert "DAVIS reprojection consistency, d=1: adapted 1.0000 vs frame-wise" in summary and ": met" in summary
    assert "n/a (too few frames)" in summary and "| synthetic/toy | framewise |" in summary
    # Both fit every frame: IoU 1.0 clears 0.80 but not the +0.15 lead over frame-wise (> 0.99).
    assert "frame-wise 0.99" in summary and "(target >= 0.80 and >= +0.15): NOT met" in summary
    scores = json.loads((out / "scores.json").read_text())
    assert len(scores["per_frame"]["davis/sphere"]["adapted"]["iou"]) == T
    for png in ("iou_per_frame.png", "consistency.png", "contact_sheet.png"):
        assert Image.open(out / png).size[0] > 100
    assert (out / "runs" / "toy" / "framewise" / "report.json").is_file()


def test_cli_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        evaluate.main(["--out", str(tmp_path / "x")])
    assert info.value.code == 2 and "give --davis ROOT" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate.main(["--davis", str(tmp_path), "--list", "nope.txt", "--out", str(tmp_path / "x")])
    assert "nope.txt: sequence list not found" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_cli_runs_the_real_pipeline_on_a_tiny_clip(tmp_path):
    """adapt.run in-process, both methods, 3 frames at 160 px: the evaluation reads what the pipeline writes."""
    from adapt.inputs import DEMO_MASK, DEMO_VIDEO
    from birdmesh.checkpoint import save_checkpoint
    from birdmesh.config import config_to_dict
    from birdmesh.video import read_frames
    from mesh_recon.predictor import MeshPredictor
    from mesh_recon.predictor_config import CMRConfig

    torch.manual_seed(0)
    checkpoint = tmp_path / "predictor.pt"
    save_checkpoint(checkpoint, config_to_dict(CMRConfig()), MeshPredictor(CMRConfig().model).state_dict(), 0)
    root = tmp_path / "davis"
    mask = np.asarray(Image.open(DEMO_MASK).convert("L")) > 127
    for t, frame in enumerate(read_frames(DEMO_VIDEO, max_frames=4)):
        (root / "JPEGImages/480p/demo").mkdir(parents=True, exist_ok=True)
        Image.fromarray(frame).save(root / "JPEGImages/480p/demo" / f"{t:05d}.jpg")
        write_annotation(root / "Annotations/480p/demo" / f"{t:05d}.png", mask.astype(np.uint8))
    (root / "list.txt").write_text("demo\n")
    sets = ["correspondence.method=pixels", "propagation.use_bf16=false", "input.max_side=160", "optim.iterations=2",
            "optim.refine_iterations=3", "optim.batch_size=3", "optim.render_size=32", "parts.num_parts=4",
            "export.overlay=false", f"predictor.checkpoint={checkpoint}"]
    out = tmp_path / "eval"
    evaluate.main(["--davis", str(root), "--list", "list.txt", "--out", str(out), "--max-frames", "3",
                   *[a for s in sets for a in ("--set", s)]])
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["method"] for r in rows] == ["adapted", "framewise"] and all(r["frames"] == "3" for r in rows)
    assert all(0 <= float(r["iou"]) <= 1 and r["cons_d1"] != "" and r["cons_d5"] == "" for r in rows)
    assert float(rows[0]["time_adapt_s"]) > 0 == float(rows[1]["time_adapt_s"])
    assert len(list((out / "runs" / "demo" / "adapted" / "meshes").glob("*.obj"))) == 3


def test_list_names_the_synthetic_sequences_without_davis(tmp_path):
    for name in ("synth-a", "synth-b"):
        _write_dataset(tmp_path, name, synthetic=True)
    (tmp_path / "ImageSets" / "synth.txt").write_text("synth-a\nsynth-b\n")
    (tmp_path / "ImageSets" / "one.txt").write_text("synth-b\n")
    assert [s.name for s in evaluate.list_sequences(None, None, str(tmp_path))] == ["synth-a", "synth-b"]
    assert [s.name for s in evaluate.list_sequences(None, "one.txt", str(tmp_path))] == ["synth-b"]
