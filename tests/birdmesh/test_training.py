import torch

from birdmesh.checkpoint import read_checkpoint, save_checkpoint
from birdmesh.training import seed_run_from_weights


def test_init_from_weights_seeds_a_run_once(tmp_path):
    weights = tmp_path / "shipped.pt"
    state = {"w": torch.tensor([1.5, -2.25]).half(), "count": torch.tensor(3)}
    save_checkpoint(weights, {"train": {"lr": 1.0}}, state, step=750, version=2)
    last = tmp_path / "run" / "last.pt"
    seed_run_from_weights(weights, last)
    ckpt = read_checkpoint(last)
    assert ckpt["step"] == 750 and ckpt["version"] == 2
    assert ckpt["state_dict"]["w"].dtype == torch.float32
    assert torch.equal(ckpt["state_dict"]["w"], torch.tensor([1.5, -2.25]))
    assert torch.equal(ckpt["state_dict"]["count"], torch.tensor(3))
    assert "optimizer" not in ckpt  # the run starts with fresh optimizer state

    # An existing run wins: repeating the command resumes it instead of resetting it.
    save_checkpoint(last, {}, {"w": torch.zeros(2)}, step=900)
    seed_run_from_weights(weights, last)
    assert read_checkpoint(last)["step"] == 900
