"""adapt.evaluate's 3-D side: the camera-frame metric wired through read_run / score_run, rig-mode reading,
keypoint weights of both predictors, and the contact sheet's mesh views."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.spatial.transform import Rotation

import adapt.evaluate as evaluate
from adapt import report
from mesh_recon.mesh_views import BACKGROUND, TILE, VIEWS, mesh_view_tiles
from adapt.scores import render_masks
from birdmesh.checkpoint import save_checkpoint
from birdmesh.davis import write_annotation
from mesh_recon.mesh import icosphere, save_obj

T, W, H, SCALE = 4, 120, 80, 15.0
SPHERE_V, FACES = icosphere(2)[0].double().numpy(), icosphere(2)[1].numpy()
# A body that bulges towards +z (a beak-like nose) and leans to +x: nothing maps it onto its depth mirror.
EGG = SPHERE_V * np.where(SPHERE_V[:, 2:] > 0, [1.0, 0.7, 2.0], [1.0, 0.7, 0.6])
EGG[:, 0] += 0.3 * SPHERE_V[:, 2] ** 2
DEPTH_MIRROR = np.diag([1.0, 1.0, -1.0])


def cameras():
    """T cameras.json entries turning and panning: the canonical frame is never the camera frame."""
    return [{"rotation": Rotation.from_rotvec([0.3, 0.5 + 0.2 * t, 0.1]).as_matrix().tolist(), "scale": SCALE,
             "translation": [50.0 + 4 * t, 38.0]} for t in range(T)]


def camera_frame(verts, cam):
    return SCALE * verts @ np.asarray(cam["rotation"]).T + [*cam["translation"], 0.0]


def write_run(folder, verts, cams, rig: bool = False):
    """An adapt.run output folder of canonical meshes (T, V, 3); rig=True writes world-frame OBJs and pose.json."""
    (folder / "meshes").mkdir(parents=True)
    for t in range(T):
        obj = verts[t]
        if rig:  # adapt.export_articulated's world frame: image heights, origin at the frame's centre
            obj = (camera_frame(verts[t], cams[t]) - [(W - 1) / 2, (H - 1) / 2, 0]) / H
        save_obj(folder / "meshes" / f"{t:05d}.obj", torch.from_numpy(obj), torch.from_numpy(FACES))
    (folder / "cameras.json").write_text(json.dumps({"width": W, "height": H, "frames": cams}))
    if rig:
        (folder / "pose.json").write_text(json.dumps({"frames": []}))
    masks = render_masks(verts, cams, FACES, (H, W))
    for t in range(T):
        write_annotation(folder / "masks" / f"{t:05d}.png", masks[t].astype(np.uint8) * 255)
        write_annotation(folder / "parts" / f"{t:05d}.png", masks[t].astype(np.uint8))
    (folder / "report.json").write_text(json.dumps({"frames": T, "settings": {"input": {"stride": 1}}}))
    return masks


def write_truth(root, masks, cams):
    """A synthetic sequence whose truth is the egg under ``cams``: returns its EvalSequence."""
    frames, annotations = [], []
    for t in range(T):
        annotations.append(write_annotation(root / "ann" / f"{t:05d}.png", masks[t].astype(np.uint8)))
        frames.append(root / "img" / f"{t:05d}.jpg")
    gt = root / "gt.npz"
    np.savez(gt, verts_camera=np.stack([camera_frame(EGG, c) for c in cams]), faces=FACES,
             keypoints=np.zeros((T, 12, 3)))
    return evaluate.EvalSequence("egg", "synthetic", tuple(frames), tuple(annotations), gt)


@pytest.fixture
def no_keypoints(monkeypatch):
    monkeypatch.setattr(evaluate, "keypoint_weights", lambda checkpoint: None)


def test_the_true_mesh_scores_zero_and_its_depth_mirror_does_not(tmp_path, no_keypoints):
    cams = cameras()
    exact = np.repeat(EGG[None], T, 0)
    # The mirror in depth of the camera frame, written in canonical terms: X' = R^T D R X. Same silhouette.
    mirrored = np.stack([EGG @ (np.asarray(c["rotation"]).T @ DEPTH_MIRROR @ np.asarray(c["rotation"])).T
                         for c in cams])
    masks = write_run(tmp_path / "exact", exact, cams)
    assert np.array_equal(write_run(tmp_path / "mirrored", mirrored, cams), masks)
    seq = write_truth(tmp_path / "seq", masks, cams)
    good = evaluate.score_run(seq, evaluate.read_run(tmp_path / "exact"), (1,), 400)["row"]
    bad = evaluate.score_run(seq, evaluate.read_run(tmp_path / "mirrored"), (1,), 400)["row"]
    assert good["iou"] == 1.0 and bad["iou"] == 1.0  # the silhouettes cannot tell them apart
    assert good["chamfer_cam"] < 0.01 and good["fscore_cam"] == 1.0  # only the two samplings differ
    assert bad["chamfer_cam"] > 5 * good["chamfer_cam"] and bad["fscore_cam"] < 0.8, bad
    # mesh quality: the same surface (the mirror only flips normals) and the truth's own figures beside
    assert np.isclose(good["normal_deg"], good["gt_normal_deg"]) and good["folded"] == good["gt_folded"] == 0.0
    assert np.isclose(bad["normal_deg"], good["normal_deg"])


def test_rig_mode_reads_back_the_canonical_meshes_of_morph_mode(tmp_path):
    cams = cameras()
    verts = np.stack([EGG * (1 + 0.1 * t) for t in range(T)])
    write_run(tmp_path / "morph", verts, cams)
    write_run(tmp_path / "rig", verts, cams, rig=True)
    morph, rig = evaluate.read_run(tmp_path / "morph"), evaluate.read_run(tmp_path / "rig")
    assert (morph.mode, rig.mode) == ("morph", "rig")
    assert np.abs(rig.verts - morph.verts).max() < 1e-4, np.abs(rig.verts - morph.verts).max()
    assert np.array_equal(rig.faces, morph.faces) and np.array_equal(rig.masks, morph.masks)


def test_keypoint_weights_of_both_predictors(tmp_path):
    logits = torch.randn(12, 30)
    save_checkpoint(tmp_path / "free.pt", {}, {"vert2kp_logits": logits}, 0)
    regressor = torch.rand(12, 50, dtype=torch.float64)
    save_checkpoint(tmp_path / "rig.pt", {}, {"template.kp_regressor": regressor}, 0)
    save_checkpoint(tmp_path / "none.pt", {}, {"encoder.weight": torch.zeros(1)}, 0)
    assert np.allclose(evaluate.keypoint_weights(str(tmp_path / "free.pt")), torch.softmax(logits.double(), 1))
    assert np.array_equal(evaluate.keypoint_weights(str(tmp_path / "rig.pt")), regressor.numpy())
    assert evaluate.keypoint_weights(str(tmp_path / "none.pt")) is None


def _non_background(image):
    return (np.abs(image.astype(int) - BACKGROUND).sum(-1) > 0).mean()


def test_side_and_top_views_follow_the_convention():
    # A ball with a small ball behind it (+z, away from the camera): hidden from the camera, to the right in the
    # side view (camera on the left), on top in the top view (camera at the bottom).
    small = 0.3 * SPHERE_V + [0, 0, 3]
    verts, faces = np.concatenate([SPHERE_V, small]), np.concatenate([FACES, FACES + len(SPHERE_V)])
    tiles = dict(mesh_view_tiles({"m": (verts, faces, (200, 50, 50))}))
    assert list(tiles) == [f"m {v}" for v in VIEWS] and all(im.shape == (TILE, TILE, 3) for im in tiles.values())
    cam, side, top = (tiles[f"m {v}"] for v in VIEWS)

    def columns(im):
        return np.nonzero((np.abs(im.astype(int) - BACKGROUND).sum(-1) > 0).any(0))[0]

    def rows(im):
        return np.nonzero((np.abs(im.astype(int) - BACKGROUND).sum(-1) > 0).any(1))[0]

    assert np.ptp(columns(cam)) < 0.5 * TILE  # only the big ball: the small one hides behind it
    assert columns(side).max() > 0.85 * TILE and np.ptp(columns(side)) > 0.6 * TILE
    assert rows(top).min() < 0.15 * TILE and np.ptp(rows(top)) > 0.6 * TILE


def test_contact_sheet_layout_has_mesh_tiles_beside_the_truth(tmp_path, no_keypoints):
    cams = cameras()
    adapted, framewise = np.repeat(EGG[None], T, 0), np.repeat(0.8 * SPHERE_V[None], T, 0)
    masks = write_run(tmp_path / "adapted", adapted, cams)
    write_run(tmp_path / "framewise", framewise, cams)
    seq = write_truth(tmp_path / "seq", masks, cams)
    for t in range(T):
        seq.frames[t].parent.mkdir(exist_ok=True)
        Image.fromarray(np.full((H, W, 3), 100, np.uint8)).save(seq.frames[t])
    runs = {m: evaluate.read_run(tmp_path / m) for m in ("adapted", "framewise")}
    gt3d = evaluate.load_gt3d(seq.gt3d, runs["adapted"].frame_index)
    rows = evaluate.contact_cells(seq, runs, masks.astype(bool), gt3d)
    assert len(rows) == T and all(len(r) == 1 + 3 * 3 for r in rows)  # the frame, then 3 meshes x 3 views
    titles = [title for title, _ in rows[0][1:]]
    assert titles == [f"{m} {v}" for m in ("adapted", "framewise", "GT") for v in VIEWS]
    for _, image in rows[0][1:]:
        assert image.shape == (TILE, TILE, 3) and _non_background(image) > 0.05
    sheet = report.contact_sheet_image(rows)
    band, gap = report.LABEL_BAND, report.GAP
    assert sheet.shape == (2 * band + T * (gap + band + TILE), 2 * TILE + 9 * TILE + 9 * gap, 3)
    report.save_contact_sheet(tmp_path / "sheet.png", rows)
    assert (tmp_path / "sheet.png").stat().st_size > 1000
