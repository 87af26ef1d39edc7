"""The committed model files load safely (weights_only), fit their architectures and run on a tiny input."""
import pytest
import torch

from correspondence.checkpoint import DEFAULT_WEIGHTS as UVC_WEIGHTS
from correspondence.checkpoint import load_model
from mesh_recon.checkpoint import DEFAULT_WEIGHTS as CMR_WEIGHTS
from mesh_recon.checkpoint import load_predictor

MAX_BYTES = 25 * 1024 * 1024


@pytest.mark.skipif(not UVC_WEIGHTS.exists(), reason="no shipped correspondence weights yet")
def test_shipped_correspondence_weights():
    assert UVC_WEIGHTS.stat().st_size < MAX_BYTES
    stored = torch.load(UVC_WEIGHTS, map_location="cpu", weights_only=True)
    assert all(v.dtype == torch.float16 for v in stored["state_dict"].values() if v.is_floating_point())
    model, _ = load_model()
    feats = model.features(torch.rand(1, 3, 64, 96) * 100)
    assert feats.shape[-2:] == (8, 12) and torch.allclose(feats.norm(dim=1), torch.ones(1, 8, 12), atol=1e-3)


@pytest.mark.skipif(not CMR_WEIGHTS.exists(), reason="no shipped predictor weights yet")
def test_shipped_predictor_weights():
    assert CMR_WEIGHTS.stat().st_size < MAX_BYTES
    model, cfg = load_predictor()
    pred = model(torch.rand(2, 3, cfg.model.image_size, cfg.model.image_size))
    assert pred.verts.shape == (2, 642, 3) and torch.isfinite(pred.verts).all()
    assert (pred.cams[:, 0] > 0).all()


ARTICULATED_WEIGHTS = CMR_WEIGHTS.with_name("cmr_bird_articulated_cpu.pt")


@pytest.mark.skipif(not ARTICULATED_WEIGHTS.exists(), reason="no shipped articulated predictor weights yet")
def test_shipped_articulated_predictor_weights():
    assert ARTICULATED_WEIGHTS.stat().st_size < MAX_BYTES
    model, cfg = load_predictor(ARTICULATED_WEIGHTS)
    assert cfg.model.shape == "articulated"
    # the file carries its template: skinning weights float32, rows summing to 1
    assert torch.allclose(model.template.weights.sum(1), torch.ones(len(model.template.weights)), atol=1e-5)
    with torch.no_grad():
        pred = model(torch.rand(2, 3, cfg.model.image_size, cfg.model.image_size))
    assert pred.verts.shape == (2, 3932, 3) and torch.isfinite(pred.verts).all()
    assert pred.cam_hypotheses.shape == (2, cfg.model.camera_hypotheses, 7) and (pred.cams[:, 0] > 0).all()
