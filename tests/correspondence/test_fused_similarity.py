"""The fused similarity: a learned model's features joined with raw Lab colour (``propagation.pixel_weight``)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from correspondence.config import PropagationConfig
from correspondence.labels import PixelFeatures
from correspondence.model import UVC
from correspondence.context import make_context, propagate_step
from correspondence.propagate import (bf16_allowed, context_radii, join_colour, pixel_weight, propagate_labels,
                                     similarity_kind, softmax_temperature)


def _random_lab(h, w, seed):
    g = torch.Generator().manual_seed(seed)
    lab = torch.rand(1, 3, h, w, generator=g) * torch.tensor([100.0, 60, 60]).view(1, 3, 1, 1)
    return lab - torch.tensor([0.0, 30, 30]).view(1, 3, 1, 1)


@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0])
def test_joined_features_mix_the_learned_and_the_colour_cosines_with_the_weight(weight):
    lab = _random_lab(24, 40, seed=0)
    learned = F.normalize(torch.randn(16, 3, 5, generator=torch.Generator().manual_seed(1)), dim=0)
    joined = join_colour(learned, lab, weight).flatten(1)
    colour = PixelFeatures(8).features(lab)[0].flatten(1)  # the pixels method's features, computed on their own
    assert joined.shape == (16 + 27, 15)
    torch.testing.assert_close(joined.norm(dim=0), torch.ones(15))
    expected = (1 - weight) * learned.flatten(1).T @ learned.flatten(1) + weight * colour.T @ colour
    torch.testing.assert_close(joined.T @ joined, expected, atol=1e-6, rtol=1e-5)


def test_joining_refuses_a_colour_grid_other_than_the_features():
    with pytest.raises(ValueError, match="grid"):
        join_colour(torch.ones(4, 3, 4), _random_lab(24, 40, seed=0), 0.5)


def test_fused_defaults_follow_the_pixels_method():
    fused, learned = PropagationConfig(pixel_weight=0.6), PropagationConfig(pixel_weight=0.0)
    model = UVC()
    assert similarity_kind(fused, model) == "fused" and pixel_weight(fused, model) == 0.6
    assert similarity_kind(learned, model) == "learned"
    assert pixel_weight(PropagationConfig(), model) == 0.8  # the default: fused
    assert similarity_kind(fused, PixelFeatures(8)) == "pixels" and pixel_weight(fused, PixelFeatures(8)) == 0.0
    # colour needs the pixels' wide windows and their temperature; fused keys are centred, so bf16 stays allowed
    assert context_radii(fused, model) == context_radii(fused, PixelFeatures(8)) == (12.0, 12.0)
    assert context_radii(learned, model) == (12.0, 6.0)
    assert softmax_temperature(fused, model) == softmax_temperature(fused, PixelFeatures(8)) == 0.02
    assert softmax_temperature(learned, model) == 0.05
    assert bf16_allowed(fused, model) is True and bf16_allowed(learned, model) is True
    assert bf16_allowed(fused, PixelFeatures(8)) is False


def test_all_colour_fused_propagation_equals_the_pixels_method():
    # With the whole weight on colour the learned part drops out: the same labels as the pixels method, whatever
    # the (random, untrained) encoder says.
    frames, labels0 = _drifting_texture(seed=2, contrast=200, base=20)
    torch.manual_seed(0)
    model = UVC().eval()
    cfg = dict(context_previous=2, topk=3, radius=4.0, layer2_weight=0.0, use_bf16=False)
    fused = propagate_labels(frames, labels0, model, PropagationConfig(**cfg, match_dims=8, pixel_weight=1.0))
    pixels = propagate_labels(frames, labels0, PixelFeatures(8), PropagationConfig(**cfg))
    learned = propagate_labels(frames, labels0, model, PropagationConfig(**cfg, match_dims=8, pixel_weight=0.0))
    torch.testing.assert_close(fused, pixels, atol=1e-5, rtol=0)
    assert (learned - pixels).abs().max() > 0.1  # the check can fail: the encoder alone labels differently


@pytest.mark.parametrize("radius", [0.0, 2.0])
def test_shifting_every_key_by_one_vector_leaves_the_labels_unchanged(radius):
    # What centring the fused keys relies on: each query's similarities shift by one constant (offset . query),
    # which changes neither its top-k nor their softmax.
    g = torch.Generator().manual_seed(4)
    keys = [F.normalize(torch.randn(12, 5, 7, generator=g), dim=0) for _ in range(2)]
    labels = [torch.softmax(torch.randn(3, 5, 7, generator=g) * 3, dim=0) for _ in range(2)]
    query = F.normalize(torch.randn(12, 5, 7, generator=g), dim=0)
    offset = torch.randn(12, 1, 1, generator=g)
    cfg = PropagationConfig(topk=4, temperature=0.05)
    plain = propagate_step(query, [make_context(k, lab, radius) for k, lab in zip(keys, labels)], cfg)
    shifted = propagate_step(query, [make_context(k - offset, lab, radius) for k, lab in zip(keys, labels)], cfg)
    torch.testing.assert_close(shifted, plain, atol=1e-5, rtol=0)


def _drifting_texture(seed, contrast, base=100):
    """4 frames (48, 64, 3) uint8 of a smooth colour texture moving 2 pixels per frame, and a box's soft labels."""
    g = torch.Generator().manual_seed(seed)
    texture = F.interpolate(torch.rand(1, 3, 6, 10, generator=g), size=(48, 80), mode="bicubic")[0]
    texture = (texture.clamp(0, 1) * contrast + base).permute(1, 2, 0).numpy().astype(np.uint8)
    labels0 = torch.zeros(2, 48, 64)
    labels0[1, 16:32, 16:40] = 1.0
    labels0[0] = 1 - labels0[1]
    return [np.ascontiguousarray(texture[:, 2 * t:2 * t + 64]) for t in range(4)], labels0


def test_centred_colour_keys_match_in_bf16_as_in_float32(monkeypatch):
    import correspondence.propagate as propagate

    # Low-contrast colour: the cosines crowd near 1, where bf16 rounding of the features as they are changes the
    # labels (why raw pixels stay float32); with the keys centred it does not.
    frames, labels0 = _drifting_texture(seed=5, contrast=60)
    colour = [join_colour(torch.zeros(8, 6, 8), propagate.frame_to_lab(f, "cpu"), 1.0) for f in frames[:2]]
    labels = propagate.labels_to_features(labels0, (6, 8))
    cfg = PropagationConfig(topk=3, temperature=0.02)

    def step(dtype, offset):
        return propagate_step(colour[1].to(dtype), [make_context((colour[0] - offset).to(dtype), labels, 4.0)], cfg)

    reference = step(torch.float32, 0.0)
    mean = colour[0].mean(dim=(1, 2), keepdim=True)
    assert (step(torch.bfloat16, 0.0) - reference).abs().max() > 0.05
    assert (step(torch.bfloat16, mean) - reference).abs().max() < 0.01
    # end to end (the whole weight on colour, so an untrained encoder's own bf16 rounding stays out of it)
    monkeypatch.setattr(propagate, "cpu_has_fast_bf16", lambda: True)
    torch.manual_seed(0)
    model = UVC().eval()
    on = dict(context_previous=2, topk=3, radius=4.0, match_dims=8, layer2_weight=0.0, pixel_weight=1.0)
    out = propagate_labels(frames, labels0, model, PropagationConfig(**on, use_bf16=True))
    reference = propagate_labels(frames, labels0, model, PropagationConfig(**on, use_bf16=False))
    assert (out - reference).abs().max() < 0.01
