import torch

from correspondence.losses import (concentration_hinge_loss, concentration_window_loss, coordinate_cycle_loss,
                                   lab_l1, reject_outliers)


def test_lab_l1_weights_channels_per_sample():
    pred = torch.zeros(2, 3, 2, 2)
    target = torch.zeros(2, 3, 2, 2)
    target[0, 0] = 1.0  # L off by 1 in sample 0
    target[1, 1] = 1.0  # a off by 1 in sample 1
    loss = lab_l1(pred, target, (1.0, 10.0, 10.0))
    assert torch.allclose(loss, torch.tensor([1.0 / 21.0, 10.0 / 21.0]))
    assert torch.allclose(reject_outliers(loss, 0.2), torch.tensor(1.0 / 42.0))
    assert torch.allclose(reject_outliers(loss, None), loss.mean())


def test_concentration_window_is_zero_for_a_translation_and_positive_for_a_scramble():
    n = 4
    shift = torch.zeros(1, n * n, n * n)
    for y in range(n):
        for x in range(n):
            shift[0, y * n + (x + 1) % n, y * n + x] = 1.0  # a shift inside rows (wraps at the border)
    identity = torch.eye(n * n)[None]
    assert concentration_window_loss(identity, (n, n), (n, n), window=n).item() > 0  # spread of the grid itself
    scramble = identity[:, torch.randperm(n * n, generator=torch.Generator().manual_seed(0))]
    ordered = concentration_window_loss(identity, (n, n), (n, n), window=2)
    scrambled = concentration_window_loss(scramble, (n, n), (n, n), window=2)
    assert scrambled > ordered
    # Window 1: every window holds one coordinate, nothing to concentrate.
    assert concentration_window_loss(shift, (n, n), (n, n), window=1).item() == 0.0


def test_concentration_window_hand_value():
    # 2 x 2 target map, one 2 x 2 window; all targets come from the reference cells (-0.5,-0.5) and (0.5,0.5).
    transport = torch.zeros(1, 4, 4)
    transport[0, 0, :2] = 1.0
    transport[0, 3, 2:] = 1.0
    # Matched coords: two at (-0.5,-0.5), two at (0.5,0.5); mean (0,0); squared distance 0.5 each.
    assert torch.allclose(concentration_window_loss(transport, (2, 2), (2, 2), window=2), torch.tensor(0.5))


def test_concentration_hinge_hand_cases():
    coords = torch.tensor([[[-1.0, 0.0], [1.0, 0.0]]])
    assert concentration_hinge_loss(coords, torch.tensor([[2.0, 2.0]])).item() == 0.0
    assert torch.allclose(concentration_hinge_loss(coords, torch.tensor([[0.5, 0.5]])), torch.tensor(1.0))


def test_coordinate_cycle_is_zero_for_a_sharp_permutation_and_positive_when_blurred():
    n = 9
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(1))
    logits = torch.full((1, n, n), -1e4)
    logits[0, torch.arange(n), perm] = 0.0
    assert coordinate_cycle_loss(logits, (3, 3)).item() < 1e-6
    assert coordinate_cycle_loss(torch.zeros(1, n, n), (3, 3)).item() > 0.1
