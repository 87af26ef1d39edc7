"""Tests of the video viewpoint track: Viterbi against brute force, flipping per-frame choices, the margin."""
from __future__ import annotations

import itertools
import math

import torch

from adapt.viewpoint import choose_viewpoint_track, hypothesis_costs, rotation_angles
from mesh_recon.bird_model import axis_angle_to_matrix


def _yaw(angles: torch.Tensor) -> torch.Tensor:
    return axis_angle_to_matrix(torch.stack([torch.zeros_like(angles), angles, torch.zeros_like(angles)], -1))


def test_rotation_angles_by_hand():
    a = _yaw(torch.tensor([0.0, 0.3, -1.0], dtype=torch.float64))
    b = _yaw(torch.tensor([0.5, 0.3, 2.0], dtype=torch.float64))
    assert torch.allclose(rotation_angles(a, b), torch.tensor([0.5, 0.0, 3.0], dtype=torch.float64), atol=1e-6)


def test_track_is_the_brute_force_optimum():
    gen = torch.Generator().manual_seed(0)
    T, H, w = 5, 3, 1.5
    rotations = axis_angle_to_matrix(torch.randn(T, H, 3, generator=gen, dtype=torch.float64))
    unary = torch.rand(T, H, generator=gen, dtype=torch.float64) * 3
    result = choose_viewpoint_track(rotations, unary, w)
    best = math.inf
    for path in itertools.product(range(H), repeat=T):
        cost = sum(float(unary[t, h]) for t, h in enumerate(path))
        cost += sum(w * float(rotation_angles(rotations[t, path[t]], rotations[t + 1, path[t + 1]]))
                    for t in range(T - 1))
        if cost < best:
            best, best_path = cost, path
    assert result.track.tolist() == list(best_path)
    assert math.isclose(result.cost, best, rel_tol=1e-9)


def test_video_picks_the_true_viewpoint_where_frame_choices_flip():
    # A bird turning slowly; hypothesis 1 is the same bird seen from behind (180 degrees about the vertical),
    # which fits the silhouette as well: the noisy per-frame costs prefer it on a third of the frames.
    T = 30
    yaw = torch.linspace(0.0, 0.6, T, dtype=torch.float64)
    rotations = torch.stack([_yaw(yaw), _yaw(yaw + math.pi)], 1)  # (T, 2, 3, 3)
    wrong_frames = torch.arange(T) % 3 == 1
    probs = torch.where(wrong_frames[:, None], torch.tensor([0.4, 0.6], dtype=torch.float64),
                        torch.tensor([0.6, 0.4], dtype=torch.float64))
    unary = hypothesis_costs(probs.log(), torch.full((T, 2), 0.9, dtype=torch.float64))
    assert int((unary.argmin(1) == 1).sum()) == 10  # frame by frame the choice flips ten times
    result = choose_viewpoint_track(rotations, unary)
    assert result.track.tolist() == [0] * T and result.switches == 0
    # the margin: always seen from behind costs the sum of the unary differences, 10 frames against 20
    expected = 10 * (math.log(0.6) - math.log(0.4))
    assert math.isclose(result.margin, expected, rel_tol=1e-9) and result.alternative.tolist() == [1] * T
    assert math.isclose(result.per_frame_agreement, 20 / 30)


def test_excluded_hypotheses_are_never_chosen():
    rotations = _yaw(torch.zeros(4, 3, dtype=torch.float64))
    unary = torch.tensor([[0.0, float("inf"), 1.0]] * 4, dtype=torch.float64)
    result = choose_viewpoint_track(rotations, unary)
    assert result.track.tolist() == [0] * 4 and math.isclose(result.margin, 4.0)
    assert result.alternative.tolist() == [2] * 4
    alone = choose_viewpoint_track(rotations[:, :1], unary[:, :1])  # one hypothesis: nothing to refit against
    assert alone.alternative is None and alone.margin == float("inf")
