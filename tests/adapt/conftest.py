"""Fixtures shared by the adapt tests."""
import pytest
import torch

from birdmesh.checkpoint import save_checkpoint
from birdmesh.config import config_to_dict
from mesh_recon.predictor import MeshPredictor
from mesh_recon.predictor_config import CMRConfig


@pytest.fixture(scope="module")
def predictor_checkpoint(tmp_path_factory):
    """A free-form predictor with random weights (seed 0), saved as a training checkpoint."""
    torch.manual_seed(0)
    cfg = CMRConfig()
    path = tmp_path_factory.mktemp("weights") / "predictor.pt"
    save_checkpoint(path, config_to_dict(cfg), MeshPredictor(cfg.model).state_dict(), 0)
    return path
