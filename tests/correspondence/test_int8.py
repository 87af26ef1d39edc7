"""The int8 encoder used for propagation on CPUs without native bfloat16 (``propagation.use_int8``)."""
import pytest
import torch

from correspondence.checkpoint import DEFAULT_WEIGHTS
from correspondence.config import PropagationConfig
from correspondence.int8 import Int8Encoder, int8_available
from correspondence.labels import PixelFeatures
from correspondence.model import UVC
from correspondence.propagate import build_model, frame_to_lab, int8_encoding, propagate_labels

from test_fused_similarity import _drifting_texture  # prepend import mode: this folder is on sys.path

pytestmark = pytest.mark.skipif(not int8_available(), reason="this PyTorch has no quantized x86 kernels")


@pytest.fixture(scope="module")
def shipped_model():
    if not DEFAULT_WEIGHTS.exists():
        pytest.skip("no shipped correspondence weights")
    return build_model("learned", str(DEFAULT_WEIGHTS), torch.device("cpu")).eval()


@pytest.mark.parametrize("layer2_weight", [0.0, 0.5])
def test_int8_features_point_where_the_float_features_point(shipped_model, layer2_weight):
    frames, _ = _drifting_texture(seed=3, contrast=200, base=20)
    labs = [frame_to_lab(frame, "cpu") for frame in frames]
    quantized = Int8Encoder(shipped_model.encoder, labs[0])  # calibrated on the first frame only
    for lab in (labs[0], labs[3]):  # and used on a later one
        reference = shipped_model.features(lab, layer2_weight)
        features = quantized.features(lab, layer2_weight)
        assert features.shape == reference.shape == (1, 256 + (128 if layer2_weight else 0), 6, 8)
        cosine = (features * reference).sum(dim=1)
        assert cosine.min() > 0.98 and cosine.mean() > 0.99
        assert cosine.mean() < 0.99999  # really quantized: the check could fail


def test_int8_propagation_gives_the_float_labels(shipped_model, monkeypatch):
    import correspondence.propagate as propagate

    monkeypatch.setattr(propagate, "cpu_has_fast_bf16", lambda: False)
    frames, labels0 = _drifting_texture(seed=3, contrast=200, base=20)
    cfg = dict(context_previous=2, topk=3, radius=4.0)
    int8 = propagate_labels(frames, labels0, shipped_model, PropagationConfig(**cfg, use_int8=True))
    float32 = propagate_labels(frames, labels0, shipped_model, PropagationConfig(**cfg, use_int8=False))
    assert (int8 - float32).abs().mean() < 0.005 and (int8 - float32).abs().max() < 0.1
    assert (int8.argmax(dim=1) != float32.argmax(dim=1)).float().mean() < 0.01


def test_int8_serves_learned_models_on_cpus_without_native_bf16(monkeypatch):
    import correspondence.propagate as propagate

    model, on, off = UVC().eval(), PropagationConfig(), PropagationConfig(use_int8=False)
    monkeypatch.setattr(propagate, "cpu_has_fast_bf16", lambda: False)
    assert int8_encoding(on, model) is True
    assert int8_encoding(off, model) is False
    assert int8_encoding(on, PixelFeatures(8)) is False  # no encoder to quantize
    monkeypatch.setattr(propagate, "cpu_has_fast_bf16", lambda: True)
    assert int8_encoding(on, model) is False  # native bf16 is faster still
    assert int8_encoding(PropagationConfig(use_bf16=False), model) is True
