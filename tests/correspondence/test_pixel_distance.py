import numpy as np
import pytest
import torch

from correspondence.config import PropagationConfig
from correspondence.labels import PixelFeatures, index_to_soft, soft_to_index
from correspondence.propagate import (DISTANCE_CENTRE_WEIGHT, distance_embedding, distance_patches, frame_to_lab,
                                      iter_propagate, similarity_kind, softmax_temperature)


def test_distance_embedding_dot_products_are_minus_half_squared_distances_up_to_a_query_constant():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 3, 4, generator=g), torch.randn(5, 2, 3, generator=g)
    queries, _ = distance_embedding(a)
    _, keys = distance_embedding(b)
    dots = queries.flatten(1).T @ keys.flatten(1)  # (12, 6)
    qa, kb = a.flatten(1).T, b.flatten(1).T
    brute = torch.tensor([[-0.5 * float(((q - k) ** 2).sum()) + 0.5 * float((q ** 2).sum()) for k in kb] for q in qa])
    assert torch.allclose(dots, brute, atol=1e-5)
    # so each query's ranking of the keys is by distance, nearest first
    assert torch.equal(dots.argsort(dim=1, descending=True), torch.cdist(qa, kb).argsort(dim=1))


def test_pixel_distance_propagation_matches_a_brute_force_top_k_of_squared_distances():
    rng = np.random.default_rng(1)
    frames = [(rng.random((24, 32, 3)) * 255).astype(np.uint8) for _ in range(2)]
    labels0 = torch.softmax(torch.randn(3, 24, 32, generator=torch.Generator().manual_seed(2)) * 2, dim=0)
    k, temperature = 4, 0.01
    cfg = PropagationConfig(context_previous=0, topk=k, radius=0.0, temperature=temperature, localize=False,
                            pixel_similarity="distance")
    out = list(iter_propagate(frames, labels0, PixelFeatures(4), cfg))[1]  # (3, 6, 8)
    labs = [frame_to_lab(f, "cpu") for f in frames]
    mean_l = float(labs[0][0, 0].mean())  # every frame's lightness is matched to the first frame's
    first, target = (distance_patches(lab, 4, mean_l).flatten(1).T for lab in labs)
    first_labels = torch.nn.functional.adaptive_avg_pool2d(labels0[None], (6, 8))[0].flatten(1)  # (3, 48)
    expected = torch.zeros(3, 48)
    for i, query in enumerate(target):
        d2 = ((first - query) ** 2).sum(dim=1)
        nearest = d2.argsort()[:k]
        weights = torch.softmax(-0.5 * d2[nearest] / temperature, dim=0)
        expected[:, i] = (first_labels[:, nearest] * weights).sum(dim=1)
    assert torch.allclose(out.flatten(1), expected, atol=1e-4)


def test_distance_patches_match_the_first_frames_lightness_and_weight_each_cells_own_colour():
    g = torch.Generator().manual_seed(4)
    lab = torch.rand(1, 3, 12, 16, generator=g) * torch.tensor([60.0, 40, 40]).view(1, 3, 1, 1) + torch.tensor(
        [20.0, -20, -20]).view(1, 3, 1, 1)
    patches = distance_patches(lab, 4, 2 * float(lab[0, 0].mean()))  # a frame half as bright as the first one
    assert patches.shape == (27, 3, 4)
    # by hand at cell (1, 2): the 3 x 3 cells' mean colours / 100 with L doubled, the centre cell weighted
    cells = []
    for i in range(3):
        for j in range(1, 4):
            colour = lab[0, :, 4 * i:4 * i + 4, 4 * j:4 * j + 4].mean(dim=(1, 2)) / 100 * torch.tensor([2.0, 1, 1])
            cells.append(colour * (DISTANCE_CENTRE_WEIGHT if (i, j) == (1, 2) else 1.0))
    assert torch.allclose(patches[:, 1, 2], torch.stack(cells, dim=1).flatten(), atol=1e-6)


def _dark_bird_on_pale_ground(shift: int) -> np.ndarray:
    """A brown square on a pale brown ground of its own direction in Lab, (30, 5, 10) vs (60, 10, 20) (the
    RGB of each, rounded), moving right by ``shift`` px, with a grain on both that turns the cosines of either to noise."""
    rng = np.random.default_rng(shift)
    frame = np.array([174.0, 137, 110]) + rng.normal(0, 6, (64, 96, 3))
    frame[16:48, 16 + shift:48 + shift] = np.array([84.0, 68, 55]) + rng.normal(0, 6, (32, 32, 3))
    return frame.clip(0, 255).round().astype(np.uint8)


@pytest.mark.parametrize("similarity", ["distance", "cosine"])
def test_a_dark_object_on_a_ground_of_its_own_hue_is_followed_by_distance(similarity):
    frames = [_dark_bird_on_pale_ground(4 * t) for t in range(5)]
    mask = np.zeros((64, 96), np.int64)
    mask[16:48, 16:48] = 1
    cfg = PropagationConfig(context_previous=3, radius=4.0, pixel_stride=4, pixel_similarity=similarity,
                            localize=False)
    labels = list(iter_propagate(frames, index_to_soft(mask), PixelFeatures(4), cfg))[-1]
    predicted = soft_to_index(torch.nn.functional.interpolate(labels[None], size=(64, 96), mode="nearest")[0]) == 1
    truth = np.zeros((64, 96), bool)
    truth[16:48, 32:64] = True
    iou = (predicted & truth).sum() / max((predicted | truth).sum(), 1)
    if similarity == "distance":
        assert iou > 0.9
    else:  # the benchmark's cosine cannot tell the dark square from the pale ground
        assert iou < 0.7


def test_pixel_similarity_and_temperature_by_setting():
    model = PixelFeatures(4)
    assert similarity_kind(PropagationConfig(), model) == "pixels"  # the benchmark protocol stays the default
    assert softmax_temperature(PropagationConfig(), model) == 0.02
    distance = PropagationConfig(pixel_similarity="distance")
    assert similarity_kind(distance, model) == "pixel_distance" and softmax_temperature(distance, model) == 0.0025
