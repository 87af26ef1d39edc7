import copy

import pytest
import torch
import torch.nn as nn

from correspondence.checkpoint import DEFAULT_WEIGHTS, load_model
from correspondence.networks import FrameEncoder, fuse_batchnorm
from correspondence.propagate import build_model


def _encoder_with_trained_looking_batchnorms() -> FrameEncoder:
    torch.manual_seed(0)
    encoder = FrameEncoder()
    for module in encoder.modules():
        if isinstance(module, nn.BatchNorm2d):  # fresh statistics (mean 0, var 1) would hide a wrong fold
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return encoder.eval()


def test_fuse_batchnorm_keeps_the_eval_function_and_removes_every_batchnorm():
    encoder = _encoder_with_trained_looking_batchnorms()
    lab = torch.rand(2, 3, 40, 56) * 100  # only L reaches the encoder
    with torch.no_grad():
        expected = encoder(lab)
        fused = fuse_batchnorm(copy.deepcopy(encoder))
        got = fused(lab)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    fused_convs, convs = (sum(isinstance(m, nn.Conv2d) for m in net.modules()) for net in (fused, encoder))
    assert fused_convs == convs
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.skipif(not DEFAULT_WEIGHTS.exists(), reason="no shipped correspondence weights")
def test_inference_model_gives_the_features_of_the_checkpoint():
    reference = load_model()[0]
    model = build_model("learned", None, torch.device("cpu"))
    lab = torch.rand(1, 3, 64, 96) * 100
    with torch.no_grad():
        torch.testing.assert_close(model.features(lab), reference.features(lab), atol=1e-4, rtol=1e-3)


def _random_lab(batch: int, height: int, width: int) -> torch.Tensor:
    unit = torch.rand(batch, 3, height, width)
    return unit * unit.new_tensor([100.0, 160.0, 160.0]).view(1, 3, 1, 1) - unit.new_tensor([0, 80, 80]).view(1, 3, 1, 1)


def test_an_l_checkpoint_loads_into_a_lab_encoder_with_the_same_function():
    l_encoder = _encoder_with_trained_looking_batchnorms()
    lab_encoder = FrameEncoder(in_channels=3).eval()
    lab_encoder.load_state_dict(l_encoder.state_dict())
    lab = _random_lab(2, 40, 56)
    with torch.no_grad():
        torch.testing.assert_close(lab_encoder(lab), l_encoder(lab))
        lab_encoder.body[0].weight[:, 1:] += 0.1  # once a and b carry weight, colour changes the features
        assert not torch.allclose(lab_encoder(lab), l_encoder(lab), atol=1e-3)


def test_color_dropout_shows_the_lab_encoder_only_l_for_dropped_samples():
    torch.manual_seed(0)
    encoder = FrameEncoder(in_channels=3).eval()
    lab = _random_lab(2, 32, 40)
    gray = torch.cat([lab[:, :1], torch.zeros_like(lab[:, 1:])], dim=1)  # a = b = 0: no colour
    with torch.no_grad():
        kept_dropped = encoder(lab, color_keep=torch.tensor([1.0, 0.0]))
        torch.testing.assert_close(kept_dropped[0], encoder(lab[:1])[0])
        torch.testing.assert_close(kept_dropped[1], encoder(gray[1:])[0])
        assert not torch.allclose(kept_dropped[1], encoder(lab[1:])[0], atol=1e-3)
