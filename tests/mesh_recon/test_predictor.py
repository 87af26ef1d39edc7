"""The CMR mesh predictor (mesh_recon/predictor.py, predictor_networks.py, template.py, checkpoint.py, train.py)."""
from __future__ import annotations

import math

import pytest
import torch

from birdmesh.checkpoint import save_checkpoint
from birdmesh.config import config_to_dict
from mesh_recon.checkpoint import export_weights, load_predictor
from mesh_recon.mesh import spherical_uv
from mesh_recon.predictor import MeshPredictor, project_keypoints, texture_from_flow
from mesh_recon.predictor_config import CMRConfig, LossConfig, ModelConfig
from mesh_recon.predictor_networks import camera_from_raw, mirror_uv_flow
from mesh_recon.template import keypoint_logits, mirror_average, shrink_wrap, sphere_template

MIRROR = torch.tensor([-1.0, 1.0, 1.0])


def predictor_inputs(batch: int = 4, size: int = 64, seed: int = 0) -> torch.Tensor:
    """(B, 3, S, S) random smooth images in [0, 1] (shared with bench/predictor.py)."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, size // 8, size // 8, generator=gen)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def small_predictor(size: int = 64, seed: int = 0) -> MeshPredictor:
    torch.manual_seed(seed)
    model = MeshPredictor(ModelConfig(image_size=size))
    with torch.no_grad():  # make the offsets visible so that mirroring is tested on non-zero values
        model.shape_head.linear.weight.normal_(std=0.05)
    return model


def test_prediction_shapes_and_ranges():
    pred = small_predictor().eval()(predictor_inputs(3))
    assert pred.verts.shape == pred.delta_v.shape == (3, 642, 3)
    assert pred.cams.shape == (3, 7) and pred.uv_flow.shape == (3, 2, 128, 256) and pred.kp3d.shape == (3, 12, 3)
    assert (pred.cams[:, 0] > 0).all()
    torch.testing.assert_close(pred.cams[:, 3:].norm(dim=1), torch.ones(3))
    assert pred.uv_flow.abs().max() <= 1
    torch.testing.assert_close(pred.vert2kp.sum(1), torch.ones(12))


def test_wrong_image_size_is_refused():
    with pytest.raises(ValueError, match="images"):
        small_predictor()(torch.zeros(1, 3, 32, 32))


def test_mirroring_is_exact():
    model = small_predictor()
    pred = model.eval()(predictor_inputs(2))
    sym = model.template.sym
    for verts in (pred.verts, pred.delta_v, pred.mean_verts[None]):
        assert torch.equal(verts[:, sym.mirror_index] * MIRROR, verts), "left side is not the mirrored right side"
    assert torch.equal(pred.uv_flow, pred.uv_flow.flip(-1)), "UV flow is not mirror symmetric"


def test_uv_mirror_matches_the_mesh_mirror():
    # the flow's column flip is the mesh's mirror only if spherical UV maps x -> -x to u -> -u
    sym = sphere_template().sym
    uv = spherical_uv(sym.verts)
    off_seam = uv[:, 0].abs() < 0.999
    mirrored = spherical_uv(sym.verts[sym.mirror_index])
    torch.testing.assert_close(mirrored[off_seam], uv[off_seam] * torch.tensor([-1.0, 1.0]), atol=1e-6, rtol=0)
    half = torch.arange(8.0).reshape(1, 1, 1, 8)
    assert mirror_uv_flow(half)[0, 0, 0].tolist() == [7, 6, 5, 4, 3, 2, 1, 0, 0, 1, 2, 3, 4, 5, 6, 7]


def test_camera_projects_known_points():
    # raw -> s = 0.5 * e^0, t = (0.1, -0.2), q = 90 degrees about z: R (1, 0, 0) = (0, 1, 0), R (0, 1, 0) = (-1, 0, 0)
    half = math.sqrt(0.5)
    raw = torch.tensor([[0.0, 0.1, -0.2, half - 1.0, 0.0, 0.0, half]])
    cams = camera_from_raw(raw, scale_prior=0.5)
    torch.testing.assert_close(cams, torch.tensor([[0.5, 0.1, -0.2, half, 0.0, 0.0, half]]))
    model = small_predictor()
    pred = model.eval()(predictor_inputs(1))
    points = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 2.0]]])
    pred = type(pred)(**{**pred.__dict__, "kp3d": points, "cams": cams})
    expected = torch.tensor([[[0.1, 0.3], [-0.4, -0.2], [0.1, -0.2]]])
    torch.testing.assert_close(project_keypoints(pred), expected)


def test_identity_texture_flow_reproduces_the_image():
    image = torch.rand(2, 3, 128, 256)
    ys = (2 * torch.arange(128) + 1) / 128 - 1
    xs = (2 * torch.arange(256) + 1) / 256 - 1
    flow = torch.stack(torch.meshgrid(xs, ys, indexing="xy"))[None].expand(2, -1, -1, -1)  # (2, 2, 128, 256)
    torch.testing.assert_close(texture_from_flow(image, flow), image)


def test_template_init_is_symmetric_and_keypoints_follow_the_surface():
    template = sphere_template()
    sym = template.sym
    gen = torch.Generator().manual_seed(0)
    blob = torch.randn(3000, 3, generator=gen, dtype=torch.float64)
    blob = blob / blob.norm(dim=1, keepdim=True) * torch.tensor([0.3, 1.0, 0.5], dtype=torch.float64)  # ellipsoid
    target = torch.cat([blob, blob * MIRROR.double()]).numpy()
    verts = torch.from_numpy(shrink_wrap(sym, target, iterations=20))
    assert torch.equal(verts[sym.mirror_index] * MIRROR.double(), verts)
    assert abs(verts[:, 1].max().item() - 1.0) < 0.1 and abs(verts[:, 0].max().item() - 0.3) < 0.05
    torch.testing.assert_close(mirror_average(verts.numpy(), sym.mirror_index.numpy()), verts.numpy())
    logits = keypoint_logits(verts.float(), verts[:2].float())
    assert logits.argmax(1).tolist() == [0, 1]


def test_tiny_batch_overfits():
    from mesh_recon.synth import generate_batch
    from mesh_recon.template import bird_template_init
    from mesh_recon.train import TrainingStep

    data = generate_batch(3, 64, seed=5)
    batch = {k: data[k] for k in ("image", "mask", "kp", "cam")}
    torch.manual_seed(0)
    model = MeshPredictor(ModelConfig(image_size=64))
    model.reset_template(*bird_template_init(model.template))
    step = TrainingStep(model, LossConfig(render_size=64, deform=1.0, laplacian=5.0, texture_feature=0.0))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    history = []
    for _ in range(40):
        loss, stats = step(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(stats)
    first, last = history[0], history[-1]
    assert last["mask"] < 0.5 * first["mask"], f"silhouette loss {first['mask']:.4f} -> {last['mask']:.4f}"
    assert last["keypoint"] < 0.1 * first["keypoint"], \
        f"keypoint loss {first['keypoint']:.4f} -> {last['keypoint']:.4f}"
    assert last["iou"] > 0.6


def test_checkpoint_round_trip(tmp_path):
    cfg = CMRConfig(model=ModelConfig(image_size=64))
    model = small_predictor().eval()
    save_checkpoint(tmp_path / "last.pt", config_to_dict(cfg), model.state_dict(), 7, optimizer={"lr": 1.0})
    images = predictor_inputs(2)
    expected = model(images)
    loaded, loaded_cfg = load_predictor(tmp_path / "last.pt")
    assert loaded_cfg == cfg and not loaded.training
    torch.testing.assert_close(loaded(images).verts, expected.verts)
    exported = export_weights(tmp_path / "last.pt", tmp_path / "small.pt")
    raw = torch.load(exported, weights_only=True)
    assert raw["step"] == 7 and "optimizer" not in raw and raw["state_dict"]["mean_free"].dtype == torch.float16
    half, _ = load_predictor(exported)
    torch.testing.assert_close(half(images).verts, expected.verts, atol=2e-2, rtol=0)


def test_evaluation_metrics():
    from mesh_recon.evaluate import aligned_chamfer, rotation_error_deg, sample_surface

    quarter = torch.tensor([[math.cos(math.pi / 8), 0.0, 0.0, math.sin(math.pi / 8)]])
    torch.testing.assert_close(rotation_error_deg(quarter, -torch.tensor([[1.0, 0.0, 0.0, 0.0]])), torch.tensor([45.0]))
    sym = sphere_template(2).sym
    points = sample_surface(sym.verts.double(), sym.faces, 2000, torch.Generator().manual_seed(0))
    radius = points.norm(dim=1)  # on the flat faces inscribed in the unit sphere
    assert radius.max() <= 1 + 1e-9 and radius.min() > 0.9
    assert aligned_chamfer(points * 3 + 1, points) < 1e-6, "Chamfer must ignore scale and position"
    assert aligned_chamfer(points * torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64), points) > 0.05


def test_evaluate_cli_writes_metrics_and_examples(tmp_path, capsys):
    from mesh_recon.evaluate import main

    cfg = CMRConfig(model=ModelConfig(image_size=64))
    save_checkpoint(tmp_path / "model.pt", config_to_dict(cfg), small_predictor().state_dict(), 0)
    main(["--checkpoint", str(tmp_path / "model.pt"), "--out", str(tmp_path / "eval"), "--synthetic-n", "3",
          "--davis", "$DATA/davis2016", "--davis-stride", "40"])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("synthetic IoU=") and "davis IoU=" in line
    rows = (tmp_path / "eval" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 3 + 4  # header, 3 synthetic images, 2 sequences x 2 frames
    assert (tmp_path / "eval" / "examples_synthetic.png").is_file() and (tmp_path / "eval" / "summary.json").is_file()
