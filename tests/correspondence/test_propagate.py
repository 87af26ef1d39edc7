import cv2
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from correspondence.config import PropagationConfig
from correspondence.labels import PixelFeatures, index_to_soft, soft_to_index
from correspondence.propagate import main as propagate_main
from correspondence.model import UVC
from correspondence.context import ContextFrame, make_context, mix_candidate_labels, propagate_step
from correspondence.propagate import (context_radii, iter_propagate, layer2_weight, match_dims, principal_basis,
                                     project_features, propagate_labels, softmax_temperature)


class PositionFeatures(nn.Module):
    """Features that only encode position: every frame matches itself exactly, cell by cell."""

    def __init__(self):
        super().__init__()
        self.register_buffer("anchor", torch.zeros(1))

    def features(self, lab):
        h, w = (lab.shape[-2] + 7) // 8, (lab.shape[-1] + 7) // 8
        return torch.eye(h * w).T.reshape(1, h * w, h, w)


def _blocky_labels(h, w, channels, seed=0):
    """Soft labels constant on 8 x 8 blocks (so pooling to features and upsampling back is exact inside)."""
    g = torch.Generator().manual_seed(seed)
    blocks = torch.softmax(torch.randn(channels, h // 8, w // 8, generator=g) * 3, dim=0)
    return blocks.repeat_interleave(8, 1).repeat_interleave(8, 2)


@pytest.mark.parametrize("radius", [0.0, 2.0])
def test_identity_features_propagate_labels_unchanged(radius):
    frames = [np.full((32, 48, 3), 100 + t, np.uint8) for t in range(5)]
    labels0 = _blocky_labels(32, 48, 4)
    blocks = labels0[:, ::8, ::8]  # (4, 4, 6): the labels at feature resolution
    cfg = PropagationConfig(context_previous=2, topk=3, radius=radius, temperature=0.01, use_bf16=False)
    stream = list(iter_propagate(frames, labels0, PositionFeatures(), cfg))
    assert len(stream) == 5
    for labels in stream:
        assert torch.allclose(labels, blocks, atol=1e-5)
    out = propagate_labels(frames, labels0, PositionFeatures(), cfg)
    assert out.shape == (5, 4, 32, 48)
    assert torch.allclose(out.sum(1), torch.ones(5, 32, 48), atol=1e-5)
    assert torch.equal(out[0], labels0)  # the first frame keeps its exact labels
    assert torch.allclose(out[4], out[1])


def test_mix_candidate_labels_weights_by_softmax_over_the_topk():
    values = torch.tensor([[0.9, 0.1, float("-inf"), 0.5]])
    indices = torch.tensor([[0, 1, 2, 3]])
    labels = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 1.0, 1.0]])  # (C=2, P=4)
    mixed = mix_candidate_labels(values, indices, labels, k=2, temperature=0.1)
    w = torch.softmax(torch.tensor([0.9, 0.5]) / 0.1, 0)
    assert torch.allclose(mixed[:, 0], torch.stack([w[0], w[1]]))


def test_translated_video_moves_the_mask_with_pixel_features():
    # A textured frame shifted right by 8 px per frame: the propagated square must follow.
    rng = np.random.default_rng(0)
    texture = (rng.random((6, 12, 3)) * 255).astype(np.uint8).repeat(8, 0).repeat(8, 1)  # (48, 96)
    frames = [np.roll(texture, 8 * t, axis=1)[:, :64] for t in range(3)]
    mask = np.zeros((48, 64), np.int64)
    mask[16:32, 16:32] = 1
    cfg = PropagationConfig(context_previous=1, topk=1, radius=3.0, temperature=0.01, use_bf16=False)
    out = propagate_labels(frames, index_to_soft(mask), PixelFeatures(), cfg)
    expected = np.roll(mask, 16, axis=1)
    predicted = soft_to_index(out[2])
    assert (predicted[20:28, 36:44] == 1).all() and predicted[20:28, 4:12].max() == 0
    iou = ((predicted == 1) & (expected == 1)).sum() / ((predicted == 1) | (expected == 1)).sum()
    assert iou > 0.6



def test_stride_4_pixel_features_keep_a_thin_moving_bar():
    # A 6-px-wide bar moving 4 px per frame over a smooth background: on the stride-8 grid it never fills a cell
    # and blurs into the background; on the stride-4 grid it is followed (the flamingo-leg case).
    ys, xs = np.mgrid[0:64, 0:96]
    background = np.stack([60 + xs, 80 + ys, 120 + 0 * xs], -1).astype(np.uint8)
    frames, masks = [], []
    for t in range(4):
        frame, mask = background.copy(), np.zeros((64, 96), np.int64)
        x0 = 40 + 4 * t
        frame[8:56, x0:x0 + 6] = (230, 40, 150)
        mask[8:56, x0:x0 + 6] = 1
        frames.append(frame)
        masks.append(mask)
    cfg = PropagationConfig(context_previous=2, topk=3, radius=3.0, temperature=0.01, use_bf16=False)
    ious = {}
    for stride in (4, 8):
        predicted = soft_to_index(propagate_labels(frames, index_to_soft(masks[0]), PixelFeatures(stride), cfg)[3])
        ious[stride] = ((predicted == 1) & (masks[3] == 1)).sum() / ((predicted == 1) | (masks[3] == 1)).sum()
    assert ious[4] > 0.9 and ious[4] > ious[8] + 0.3


@pytest.mark.parametrize("first_frame_global", [False, True])
def test_first_frame_is_matched_within_the_radius_unless_global(first_frame_global):
    # The texture jumps 5 cells between frames; with radius 2 a local match cannot reach the first frame's
    # square, a global one (UVC's protocol) finds it. Only the first frame is context.
    rng = np.random.default_rng(1)
    texture = (rng.random((8, 20, 3)) * 255).astype(np.uint8).repeat(8, 0).repeat(8, 1)  # (64, 160)
    frames = [np.roll(texture, 40 * t, axis=1)[:, :96] for t in range(2)]
    mask = np.zeros((64, 96), np.int64)
    mask[16:48, 8:32] = 1
    cfg = PropagationConfig(context_previous=0, topk=1, radius=2.0, temperature=0.01, use_bf16=False,
                            first_frame_global=first_frame_global)
    predicted = soft_to_index(propagate_labels(frames, index_to_soft(mask), PixelFeatures(), cfg)[1])
    moved = predicted[20:44, 52:68]
    if first_frame_global:
        assert (moved == 1).all()
    else:
        assert moved.max() == 0

def _write_clip(folder, n=3, size=(32, 48)):
    folder.mkdir()
    for t in range(n):
        Image.fromarray(np.full((*size, 3), 50 * t, np.uint8)).save(folder / f"{t:05d}.jpg")
    return folder


def _run_cli(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        propagate_main(args)
    return exit_info.value.code, capsys.readouterr().err.strip()


def test_cli_errors_are_one_line_and_leave_no_output(tmp_path, capsys):
    clip = _write_clip(tmp_path / "clip")
    out = tmp_path / "out"
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "small.png")
    code, err = _run_cli([str(clip), "--mask", str(tmp_path / "small.png"), "--out", str(out),
                          "--method", "pixels"], capsys)
    assert code == 2 and "small.png: mask is 10x10 but the frames are 48x32" in err and len(err.splitlines()) == 1
    Image.fromarray(np.zeros((32, 48), np.uint8)).save(tmp_path / "empty.png")
    code, err = _run_cli([str(clip), "--mask", str(tmp_path / "empty.png"), "--out", str(out),
                          "--method", "pixels"], capsys)
    assert code == 2 and "empty.png: mask is empty" in err
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    code, err = _run_cli([str(tmp_path / "bad.mp4"), "--mask", str(tmp_path / "empty.png"), "--out", str(out)],
                         capsys)
    assert code == 2 and "bad.mp4" in err
    assert not out.exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_cli_writes_one_palette_png_per_frame_at_input_size(tmp_path):
    clip = _write_clip(tmp_path / "clip", n=4)
    mask = np.zeros((16, 24), np.uint8)
    mask[4:12, 4:12] = 255
    Image.fromarray(mask).save(tmp_path / "half.png")
    propagate_main([str(clip), "--mask", str(tmp_path / "half.png"), "--resize-mask", "--out",
                    str(tmp_path / "out"), "--method", "pixels", "--set", "use_bf16=false"])
    pngs = sorted((tmp_path / "out").glob("*.png"))
    assert [p.name for p in pngs] == [f"{t:05d}.png" for t in range(4)]
    first = Image.open(pngs[0])
    assert first.mode == "P" and first.size == (48, 32)
    assert (np.asarray(first)[8:24, 8:24] == 1).all()


@pytest.mark.parametrize("native", [False, True])
def test_bf16_matching_only_on_cpus_with_native_bf16(monkeypatch, native):
    import correspondence.propagate as propagate

    monkeypatch.setattr(propagate, "cpu_has_fast_bf16", lambda: native)
    frames = [np.full((32, 48, 3), 100 + t, np.uint8) for t in range(3)]
    labels0 = _blocky_labels(32, 48, 3)
    cfg = PropagationConfig(context_previous=1, topk=2, radius=2.0, temperature=0.01, use_bf16=True)
    assert propagate.bf16_matching(True, torch.device("cpu")) is native
    assert propagate.bf16_matching(False, torch.device("cpu")) is False
    out = propagate_labels(frames, labels0, PositionFeatures(), cfg)
    reference = propagate_labels(frames, labels0, PositionFeatures(), PropagationConfig(
        context_previous=1, topk=2, radius=2.0, temperature=0.01, use_bf16=False))
    assert torch.allclose(out, reference, atol=1e-2)  # same labels in either precision


def test_raw_pixels_match_in_float32_even_where_bf16_is_native(monkeypatch):
    import correspondence.propagate as propagate

    # Smooth colour texture drifting one pixel per frame: raw-pixel cosines all lie close to 1, where bfloat16
    # rounding would tie the top-k and change the labels.
    monkeypatch.setattr(propagate, "cpu_has_fast_bf16", lambda: True)
    g = torch.Generator().manual_seed(0)
    texture = F.interpolate(torch.rand(1, 3, 8, 14, generator=g), size=(32, 56), mode="bicubic")[0]
    texture = (texture.clamp(0, 1) * 60 + 100).permute(1, 2, 0).numpy().astype(np.uint8)
    frames = [np.ascontiguousarray(texture[:, t:t + 48]) for t in range(4)]
    labels0 = _blocky_labels(32, 48, 3)
    model = PixelFeatures(8)
    on = dict(context_previous=2, topk=3, radius=3.0, temperature=0.02)
    assert propagate.bf16_allowed(PropagationConfig(use_bf16=True), model) is False
    assert propagate.bf16_allowed(PropagationConfig(use_bf16=True), PositionFeatures()) is True
    out = propagate_labels(frames, labels0, model, PropagationConfig(**on, use_bf16=True))
    reference = propagate_labels(frames, labels0, model, PropagationConfig(**on, use_bf16=False))
    assert torch.equal(out, reference)


def test_average_mixing_gives_each_context_frame_an_equal_vote():
    # Two context frames with identical features but different labels: a joint top-1 picks one frame's label,
    # averaging takes the mean of both (UVC's test-time protocol).
    feats = F.normalize(torch.randn(8, 2, 3, generator=torch.Generator().manual_seed(0)), dim=0)
    first = torch.zeros(2, 2, 3)
    first[1] = 1.0
    second = torch.zeros(2, 2, 3)
    second[0] = 1.0
    context = [ContextFrame(feats, first), ContextFrame(feats, second)]
    joint = propagate_step(feats, context, PropagationConfig(topk=1, temperature=0.01, context_mixing="joint"))
    average = propagate_step(feats, context, PropagationConfig(topk=1, temperature=0.01, context_mixing="average"))
    assert torch.allclose(average, torch.full((2, 2, 3), 0.5), atol=1e-5)
    assert torch.allclose(joint.sum(0), torch.ones(2, 3)) and set(joint.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("stride", [8, 4])
def test_pixel_features_are_normalized_uncentred_lab_neighbourhoods(stride):
    lab = torch.rand(1, 3, 3 * stride, 4 * stride, generator=torch.Generator().manual_seed(3)) * torch.tensor(
        [100.0, 60, 60]).view(1, 3, 1, 1) - torch.tensor([0.0, 30, 30]).view(1, 3, 1, 1)
    feats = PixelFeatures(stride).features(lab)
    assert feats.shape == (1, 27, 3, 4)
    # by hand at cell (1, 2): the mean colours of the 3 x 3 cells around it, Lab / 100, unit length
    s = stride
    cells = [lab[0, :, s * i:s * i + s, s * j:s * j + s].mean(dim=(1, 2)) / 100 for i in range(3) for j in range(1, 4)]
    expected = torch.stack(cells, dim=1).flatten()  # channel-major, like unfold
    assert torch.allclose(feats[0, :, 1, 2], expected / expected.norm(), atol=1e-6)


def test_each_context_frame_is_matched_within_its_own_radius():
    # The target is the context shifted 5 cells to the right: its true matches lie 5 cells away, so a context frame
    # cut with a radius of 3 cells cannot carry the labels across while one with a radius of 6 can.
    C, h, w = 64, 8, 24
    feats = F.normalize(torch.randn(C, h, w, generator=torch.Generator().manual_seed(0)), dim=0)
    target = torch.roll(feats, shifts=5, dims=2)
    labels = torch.zeros(2, h, w)
    labels[1, :, 4:6] = 1.0
    labels[0] = 1 - labels[1]
    expected = torch.roll(labels, shifts=5, dims=2)[:, :, 8:]  # columns whose source lies inside the frame
    cfg = PropagationConfig(topk=1, temperature=0.01)
    far = propagate_step(target, [make_context(feats, labels, 6.0)], cfg)
    near = propagate_step(target, [make_context(feats, labels, 3.0)], cfg)
    assert torch.allclose(far[:, :, 8:], expected, atol=1e-4)
    assert near[1, :, 9:11].max() < 1e-6  # no object cell lies within 3 cells of where the object moved
    # mixed windows in one context: the wide one wins on the object's cells
    both = propagate_step(target, [make_context(feats, labels, 3.0), make_context(feats, labels, 6.0)], cfg)
    assert torch.allclose(both[:, :, 8:], expected, atol=1e-4)


def test_context_windows_by_method():
    learned = nn.Identity()  # anything that is not the raw-pixel feature model counts as learned
    assert context_radii(PropagationConfig(radius=12.0), learned) == (12.0, 6.0)
    assert context_radii(PropagationConfig(radius=20.0), learned) == (12.0, 6.0)  # fixed windows, not radius
    assert context_radii(PropagationConfig(radius=12.0), PixelFeatures(8)) == (12.0, 12.0)
    assert context_radii(PropagationConfig(radius=12.0, radius_previous=3.0), PixelFeatures(8)) == (12.0, 3.0)
    assert context_radii(PropagationConfig(radius=12.0, radius_first=10.0), learned) == (10.0, 6.0)
    assert context_radii(PropagationConfig(radius=12.0, first_frame_global=True), learned) == (0.0, 6.0)
    assert context_radii(PropagationConfig(radius=0.0, radius_previous=3.0), learned) == (0.0, 0.0)  # all global


def test_principal_basis_spans_the_top_singular_vectors_of_the_centred_features():
    g = torch.Generator().manual_seed(0)
    scales = torch.tensor([9.0, 7.0, 5.0, 3.0] + [0.1] * 28)  # 4 clear principal directions among 32 channels
    mixing = torch.linalg.qr(torch.randn(32, 32, generator=g))[0]
    feats = (mixing @ (scales[:, None] * torch.randn(32, 6 * 10, generator=g)) + 2.0).view(32, 6, 10)
    basis = principal_basis(feats, 4)
    assert basis.shape == (32, 4)
    assert torch.allclose(basis.T @ basis, torch.eye(4), atol=1e-5)
    centred = feats.flatten(1) - feats.flatten(1).mean(1, keepdim=True)
    reference = torch.linalg.svd(centred.double(), full_matrices=False)[0][:, :4].float()  # brute force
    assert torch.allclose(basis @ basis.T, reference @ reference.T, atol=1e-4)  # the same subspace
    assert principal_basis(feats, 100).shape == (32, 32)  # capped at the channel count
    projected = project_features(feats, basis)
    assert projected.shape == (4, 6, 10) and torch.allclose(projected.norm(dim=0), torch.ones(6, 10), atol=1e-5)


class SubspaceFeatures(nn.Module):
    """Position features of 3 channels embedded in 40: each frame is the previous one shifted one cell right."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.register_buffer("embed", torch.linalg.qr(torch.randn(40, 3, generator=g))[0])
        self.register_buffer("base", torch.randn(3, 4, 48, generator=g))
        self.t = 0

    def features(self, lab):
        z = torch.roll(self.base, shifts=self.t, dims=2)
        self.t += 1
        return F.normalize(torch.einsum("cd,dhw->chw", self.embed, z), dim=0)[None]


def test_matching_on_principal_components_keeps_labels_of_features_in_a_subspace():
    # 40-d features that span 3 dimensions: their 3 principal components keep every cosine similarity, so labels
    # travel exactly as with all 40 channels; 1 component loses most of them.
    frames = [np.zeros((32, 384, 3), np.uint8)] * 5
    labels0 = _blocky_labels(32, 384, 3)
    runs = {}
    for dims in (0, 3, 1):
        cfg = PropagationConfig(context_previous=2, topk=1, radius=3.0, temperature=0.01, use_bf16=False,
                                match_dims=dims)
        runs[dims] = torch.stack(list(iter_propagate(frames, labels0, SubspaceFeatures(), cfg)))
    assert torch.allclose(runs[3], runs[0], atol=1e-5)
    assert (runs[1] - runs[0]).abs().max() > 0.5


def test_match_dims_by_method():
    assert match_dims(PropagationConfig(), nn.Identity()) == 64
    assert match_dims(PropagationConfig(), PixelFeatures(8)) == 0
    assert match_dims(PropagationConfig(match_dims=16), PixelFeatures(8)) == 16
    assert match_dims(PropagationConfig(match_dims=0), nn.Identity()) == 0


def test_layer2_weight_by_method():
    assert layer2_weight(PropagationConfig(), UVC()) == 0.5
    assert layer2_weight(PropagationConfig(layer2_weight=0.2), UVC()) == 0.2
    assert layer2_weight(PropagationConfig(layer2_weight=0.2), PixelFeatures(8)) == 0.0
    assert layer2_weight(PropagationConfig(), PositionFeatures()) == 0.0  # any feature model without layers


def test_layer2_features_mix_the_two_layers_cosines_with_the_weight():
    torch.manual_seed(0)
    model = UVC().eval()
    lab = torch.rand(1, 3, 48, 64) * torch.tensor([100.0, 60.0, 60.0]).view(1, 3, 1, 1)
    captured = {}
    model.encoder.body[5].register_forward_hook(lambda module, inputs, output: captured.update(layer2=output))
    with torch.no_grad():
        joined = model.features(lab, 0.3)[0].flatten(1)  # (128 + 256, N)
        output = model.features(lab)[0].flatten(1)
    layer2 = F.normalize(captured["layer2"][0].flatten(1), dim=0)
    assert joined.shape[0] == 128 + 256
    torch.testing.assert_close(joined.norm(dim=0), torch.ones(joined.shape[1]))
    expected = 0.3 * layer2.T @ layer2 + 0.7 * output.T @ output  # the cosines of each layer, mixed
    torch.testing.assert_close(joined.T @ joined, expected, atol=1e-5, rtol=1e-4)


def test_softmax_temperature_by_method_and_resolved_before_matching():
    assert softmax_temperature(PropagationConfig(), PixelFeatures(8)) == 0.02  # the benchmark protocol
    assert softmax_temperature(PropagationConfig(), UVC()) == 0.02  # fused with colour by default
    assert softmax_temperature(PropagationConfig(pixel_weight=0.0), UVC()) == 0.05  # learned features alone
    assert softmax_temperature(PropagationConfig(temperature=0.3), UVC()) == 0.3
    feats = torch.randn(4, 3, 3)
    context = [make_context(feats, torch.ones(2, 3, 3), 0.0)]
    with pytest.raises(ValueError, match="softmax_temperature"):
        propagate_step(feats, context, PropagationConfig())


def test_cli_soft_mask_keeps_its_interior_and_odd_masks_warn(tmp_path, capsys):
    # A blurred 0/255 mask: read as DAVIS indices its 255 interior was "void" and the object became a ring.
    clip = _write_clip(tmp_path / "clip", n=2)
    mask = np.zeros((32, 48), np.uint8)
    mask[8:24, 8:32] = 255
    Image.fromarray(cv2.GaussianBlur(mask, (5, 5), 1.5)).save(tmp_path / "soft.png")
    propagate_main([str(clip), "--mask", str(tmp_path / "soft.png"), "--out", str(tmp_path / "out"),
                    "--method", "pixels", "--set", "use_bf16=false"])
    first = np.asarray(Image.open(tmp_path / "out" / "00000.png"))
    assert (first[10:22, 10:30] == 1).all() and first[0].max() == 0
    Image.fromarray(np.full((32, 48), 255, np.uint8)).save(tmp_path / "full.png")
    capsys.readouterr()
    propagate_main([str(clip), "--mask", str(tmp_path / "full.png"), "--out", str(tmp_path / "full"),
                    "--method", "pixels", "--set", "use_bf16=false"])
    assert "warning: " + str(tmp_path / "full.png") + ": the mask covers the whole 48x32 frame" in \
        capsys.readouterr().err


def test_cli_refuses_outputs_holding_cwd_or_inputs_and_wrong_weights(tmp_path, capsys, monkeypatch):
    from birdmesh.checkpoint import save_checkpoint
    from birdmesh.config import config_to_dict
    from correspondence.config import UVCConfig

    clip = _write_clip(tmp_path / "clip")
    mask = np.zeros((32, 48), np.uint8)
    mask[8:24, 8:32] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    monkeypatch.chdir(tmp_path)
    for out, expected in [(".", "it is the current folder"), ("clip", "it is the input clip"),
                          ("..", "it holds the current folder")]:
        code, err = _run_cli(["clip", "--mask", "mask.png", "--out", out, "--overwrite", "--method", "pixels"],
                             capsys)
        assert code == 2 and err.splitlines()[-1].startswith(f"error: {out}: refusing to use ") and expected in err
    (tmp_path / "file.txt").write_text("x")
    code, err = _run_cli(["clip", "--mask", "mask.png", "--out", "file.txt", "--overwrite"], capsys)
    assert code == 2 and "file.txt: is a file, not a folder" in err
    save_checkpoint(tmp_path / "uvc.pt", config_to_dict(UVCConfig()), {"encoder.foo": torch.zeros(2)}, 0)
    code, err = _run_cli(["clip", "--mask", "mask.png", "--out", "out", "--checkpoint", "uvc.pt"], capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert "uvc.pt: weights do not fit the correspondence model" in err and "encoder.foo" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip", "file.txt", "mask.png", "uvc.pt"]
