import copy

import pytest
import torch
import torch.nn as nn

from correspondence.checkpoint import DEFAULT_WEIGHTS, load_model
from correspondence.networks import GrayEncoder, fuse_batchnorm
from correspondence.propagate import build_model


def _encoder_with_trained_looking_batchnorms() -> GrayEncoder:
    torch.manual_seed(0)
    encoder = GrayEncoder()
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
