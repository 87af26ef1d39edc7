"""``python -m mesh_recon.evaluate``: bad options and outputs are refused before anything is evaluated."""
import pytest

import mesh_recon.evaluate as evaluate


@pytest.fixture
def no_work(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the evaluation started")
    monkeypatch.setattr(evaluate, "load_predictor", refuse)


def _run(args, capsys):
    with pytest.raises(SystemExit) as info:
        evaluate.main(args)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    return info.value.code, err


def test_existing_output_is_refused_before_evaluating(tmp_path, capsys, no_work):
    (tmp_path / "eval").mkdir()
    code, err = _run(["--out", str(tmp_path / "eval"), "--synthetic-n", "2"], capsys)
    assert code == 2 and "eval: output folder exists (pass --overwrite to replace it)" in err
    (tmp_path / "file").write_text("x")
    code, err = _run(["--out", str(tmp_path / "file"), "--synthetic-n", "2", "--overwrite"], capsys)
    assert code == 2 and "file: is a file, not a folder" in err


def test_nothing_to_evaluate_is_an_error(tmp_path, capsys, no_work):
    for n in ("0", "-3"):
        code, err = _run(["--out", str(tmp_path / "eval"), "--synthetic-n", n], capsys)
        assert code == 2 and f"--synthetic-n {n}: expected at least 1 synthetic image (0 only with --davis)" in err
    code, err = _run(["--out", str(tmp_path / "eval"), "--davis", str(tmp_path), "--davis-stride", "0"], capsys)
    assert code == 2 and "--davis-stride 0: expected at least 1" in err
    assert list(tmp_path.iterdir()) == []


def _box_mesh():
    """A closed unit box: (8, 3) vertices, (12, 3) faces."""
    import itertools

    import torch

    verts = torch.tensor(list(itertools.product([-0.5, 0.5], repeat=3)), dtype=torch.float32)
    faces = torch.tensor([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1], [2, 3, 7], [2, 7, 6],
                          [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]])
    return verts, faces


def test_view_panels_show_what_the_camera_cannot():
    """The 3-D view sheet: a prediction equal to the truth draws the same shapes; a prediction flattened along the
    camera's depth (a cut-out) matches the truth through the camera but not from the side."""
    import numpy as np
    import torch

    from mesh_recon.mesh_views import BACKGROUND, TILE

    verts, faces = _box_mesh()
    cams = torch.tensor([[0.6, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]])  # identity rotation: depth is z
    images = torch.rand(1, 3, 32, 32)
    flat = verts * torch.tensor([1.0, 1.0, 0.02])

    def drawn(panel, tile):  # (TILE, TILE) bool: pixels a mesh covers
        return (panel[0, :, tile * TILE:(tile + 1) * TILE] != np.array(BACKGROUND)).any(-1)

    same = evaluate.view_panels(images, verts[None], cams, faces, verts[None], cams, faces)
    assert same.shape == (1, TILE, 7 * TILE, 3) and same.dtype == np.uint8
    for view in range(3):  # pred tiles 1..3, GT tiles 4..6 (titles aside: they are drawn in black at the top)
        assert (drawn(same, 1 + view)[20:] == drawn(same, 4 + view)[20:]).all()
    cutout = evaluate.view_panels(images, flat[None], cams, faces, verts[None], cams, faces)
    camera_pred, camera_gt = drawn(cutout, 1)[20:].sum(), drawn(cutout, 4)[20:].sum()
    side_pred, side_gt = drawn(cutout, 2)[20:].sum(), drawn(cutout, 5)[20:].sum()
    assert abs(camera_pred - camera_gt) <= 0.05 * camera_gt
    assert side_pred < 0.2 * side_gt
