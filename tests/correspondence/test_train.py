"""Training: a tiny overfit, resuming, checkpoint round trip and 2-process DDP on generated clips."""
import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from birdmesh.checkpoint import read_checkpoint
from birdmesh.config import load_config
from correspondence.checkpoint import export_weights, load_model
from correspondence.config import UVCConfig
from correspondence.train import train


def _make_clips(root, n_clips=2, n_frames=6, size=(48, 64)):
    """Frame folders of a smooth random texture drifting 2 px per frame."""
    rng = np.random.default_rng(0)
    for c in range(n_clips):
        base = (rng.random((size[0] // 4, size[1] // 4 + 8, 3)) * 255).astype(np.uint8)
        big = np.array(Image.fromarray(base).resize(((size[1] // 4 + 8) * 4, size[0] * 1), Image.BILINEAR))
        folder = root / f"clip{c}"
        folder.mkdir(parents=True)
        for t in range(n_frames):
            Image.fromarray(big[:, 2 * t:2 * t + size[1]]).save(folder / f"{t:05d}.png")


def _tiny_overrides(tmp_path, steps, ae_steps=2, warmup=2):
    return [f"data.roots=['{tmp_path / 'clips'}']", f"data.cache_dir={tmp_path / 'cache'}",
            "data.cache_short_side=48", "data.frame_size=48", "data.ref_patch_size=24", "data.patch_size=32",
            "data.workers=0", "data.max_gap=2", "model.ae_channels=8", "train.batch_size=2",
            f"train.out_dir={tmp_path / 'run'}", f"train.ae_steps={ae_steps}", f"train.warmup_steps={warmup}",
            f"train.steps={steps}", "train.checkpoint_every=2", "train.log_every=1", "train.device=cpu",
            "train.threads=1"]


@pytest.mark.parametrize("encoder_input", ["L", "Lab"])
def test_resume_continues_from_the_checkpoint_and_weights_round_trip(tmp_path, encoder_input):
    _make_clips(tmp_path / "clips")
    cfg = load_config(UVCConfig, None, _tiny_overrides(tmp_path, steps=4) + [f"model.encoder_input={encoder_input}",
                                                                            "train.decay_steps=2"])
    ckpt = train(cfg, max_steps=3)
    assert read_checkpoint(ckpt)["step"] == 3
    train(cfg)  # resumes at 3, runs to ae_steps + steps = 6
    state = read_checkpoint(ckpt)
    assert state["step"] == 6
    assert (tmp_path / "run" / "config.yaml").exists()
    with open(tmp_path / "run" / "log_stage2.csv") as f:
        lr_by_step = {int(row["step"]): float(row["lr"]) for row in csv.DictReader(f)}
    # the last 2 of 6 steps decay linearly to 5 %: the update to step 5 used 1e-4, the one to step 6 half way down
    assert lr_by_step[5] == pytest.approx(1e-4) and lr_by_step[6] == pytest.approx(1e-4 * (1 - 0.5 * 0.95))
    shipped = export_weights(ckpt, tmp_path / "w.pt")
    loaded = torch.load(shipped, map_location="cpu", weights_only=True)
    assert all(v.dtype == torch.float16 for v in loaded["state_dict"].values() if v.is_floating_point())
    model, loaded_cfg = load_model(shipped)
    assert loaded_cfg == cfg
    for name, value in model.state_dict().items():
        assert torch.allclose(value.float(), state["state_dict"][name].float(), atol=1e-2, rtol=1e-2), name


def test_tiny_overfit_drives_the_reconstruction_loss_down():
    from correspondence.config import LossConfig, ModelConfig
    from correspondence.model import UVC, autoencoder_loss, warmup_loss
    from birdmesh.color import rgb_to_lab

    torch.manual_seed(0)
    model = UVC(ModelConfig(ae_channels=8))
    g = torch.Generator().manual_seed(1)
    base = torch.nn.functional.interpolate(torch.rand(2, 3, 8, 12, generator=g), size=(32, 48), mode="bilinear")
    ref, tar = rgb_to_lab(base[..., :32]), rgb_to_lab(base[..., 8:40])  # the target shows the scene moved 8 px
    loss_cfg = LossConfig(color_switch=0.0, concentration=0.0)
    # A frozen autoencoder that is the identity would make the task trivial; train it briefly first.
    ae_opt = torch.optim.Adam(model.autoencoder.parameters(), 2e-3)
    for _ in range(100):
        loss = autoencoder_loss(model.autoencoder, torch.cat([ref, tar]))
        ae_opt.zero_grad()
        loss.backward()
        ae_opt.step()
    model.autoencoder.requires_grad_(False)
    opt = torch.optim.Adam(model.encoder.parameters(), 1e-3)
    first = None
    for _ in range(40):
        loss, stats = warmup_loss(model, ref, tar, loss_cfg, reject=False)
        first = first if first is not None else stats["color"].item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert stats["color"].item() < 0.7 * first


@pytest.mark.skipif(sys.platform != "linux", reason="gloo on linux")
def test_two_process_ddp_ends_with_identical_weights(tmp_path):
    _make_clips(tmp_path / "clips")
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
            "correspondence.train", "--config", "configs/uvc_cpu.yaml"]
    for item in _tiny_overrides(tmp_path, steps=3):
        args += ["--set", item]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    done = subprocess.run(args, cwd=root, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "replicas identical across 2 ranks: True" in done.stdout
    assert read_checkpoint(tmp_path / "run" / "last.pt")["step"] == 5


def test_bf16_encoder_gives_float32_features_and_the_same_gradients_within_rounding():
    from birdmesh.color import rgb_to_lab
    from correspondence.config import LossConfig, ModelConfig
    from correspondence.model import UVC, track_match_loss, training_features

    torch.manual_seed(0)
    model = UVC(ModelConfig(ae_channels=8))
    model.autoencoder.requires_grad_(False)
    g = torch.Generator().manual_seed(2)
    frame = rgb_to_lab(torch.nn.functional.interpolate(torch.rand(2, 3, 12, 12, generator=g), size=(64, 64),
                                                       mode="bilinear"))
    patch = frame[..., 8:40, 16:48]
    results = {}
    for bf16 in (False, True):
        model.encoder_bf16 = bf16
        feats = training_features(model, patch)
        model.zero_grad()
        loss, _ = track_match_loss(model, patch, frame, LossConfig(), reject=False)
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.encoder.parameters()])
        results[bf16] = feats, loss.detach(), grads
    (f32, loss32, g32), (f16, loss16, g16) = results[False], results[True]
    assert f16.dtype == torch.float32 and torch.allclose(f16.norm(dim=1), torch.ones(()), atol=1e-5)
    assert not torch.equal(f16, f32) and (f16 - f32).abs().max() < 0.05  # rounded, not another computation
    assert abs(loss16 - loss32) < 0.02 * loss32
    assert torch.nn.functional.cosine_similarity(g16, g32, dim=0) > 0.95
