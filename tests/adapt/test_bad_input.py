"""Bad inputs to ``adapt.run``: a one-line error naming the file or value, a non-zero exit, nothing left behind.

Every run uses a 4-frame 96x64 synthetic clip and settings that keep it to a second or two (``FAST``).
"""
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Annotated

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import adapt.inputs as inputs
import adapt.run as adapt_run
from adapt.config import AdaptConfig
from adapt.inputs import box_mask, grabcut_rect, parse_box, read_mask
from birdmesh.checkpoint import save_checkpoint
from birdmesh.config import Bounds, config_to_dict, load_config
from birdmesh.davis import read_annotation, write_annotation
from birdmesh.errors import UserError
from birdmesh.masks import mask_warning
from correspondence.config import UVCConfig
from mesh_recon.predictor import MeshPredictor
from mesh_recon.predictor_config import CMRConfig, ModelConfig

W, H, T = 96, 64, 4
FAST = ["correspondence.method=pixels", "propagation.use_bf16=false", "input.max_side=96", "optim.iterations=2",
        "optim.refine_iterations=2", "optim.batch_size=2", "optim.render_size=32", "parts.num_parts=3",
        "export.overlay=false"]


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    torch.manual_seed(0)
    cfg = CMRConfig(model=ModelConfig(image_size=64))
    path = tmp_path_factory.mktemp("weights") / "predictor.pt"
    save_checkpoint(path, config_to_dict(cfg), MeshPredictor(cfg.model).state_dict(), 0)
    return path


def _ellipse(frame_or_mask, t, value):
    cv2.ellipse(frame_or_mask, (40 + 3 * t, 32), (18, 10), 0, 0, 360, value, -1)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A frame folder (a yellow ellipse moving over a smooth background) and its 0/255 first-frame mask."""
    root = tmp_path_factory.mktemp("clip")
    rng = np.random.default_rng(0)
    background = cv2.resize((rng.random((8, 12, 3)) * 120 + 60).astype(np.uint8), (W, H))
    (root / "frames").mkdir()
    for t in range(T):
        frame = background.copy()
        _ellipse(frame, t, (230, 200, 40))
        Image.fromarray(frame).save(root / "frames" / f"{t:05d}.png")
    mask = np.zeros((H, W), np.uint8)
    _ellipse(mask, 0, 255)
    Image.fromarray(mask).save(root / "mask.png")
    return root / "frames", root / "mask.png", mask > 0


def _run(args, predictor, extra=()):
    sets = [a for s in [*FAST, f"predictor.checkpoint={predictor}", *extra] for a in ("--set", s)]
    adapt_run.main([str(a) for a in args] + sets)


def _fails(args, predictor, capsys, expected, extra=()):
    """Run, expect exit 2 and a last stderr line ``error: ...`` holding ``expected``; returns that line."""
    with pytest.raises(SystemExit) as info:
        _run(args, predictor, extra)
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1] if err.strip() else ""
    assert info.value.code == 2 and last.startswith("error: ") and expected in last, (args, err)
    assert "Traceback" not in err
    return last


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if the pipeline starts: these inputs must be refused before any work."""
    def refuse(*args, **kwargs):
        raise AssertionError("the pipeline started")
    monkeypatch.setattr(adapt_run, "run", refuse)


# 1. Masks: soft / JPEG-saved 0/255 masks keep their interior; odd masks warn ---------------------------------------

def test_soft_binary_and_palette_masks_read_as_the_object(tmp_path, clip):
    _, _, truth = clip
    gray = truth.astype(np.uint8) * 255
    soft = cv2.GaussianBlur(gray, (7, 7), 2)
    Image.fromarray(soft).save(tmp_path / "soft.png")
    Image.fromarray(gray).save(tmp_path / "saved.jpg", quality=70)
    Image.fromarray(truth.astype(np.uint8)).save(tmp_path / "zero_one.png")
    Image.fromarray(np.repeat(soft[..., None], 3, 2)).save(tmp_path / "rgb.png")
    Image.fromarray(gray).convert("P").save(tmp_path / "gray_palette.png")  # grayscale stored as indexed
    for name in ("soft.png", "saved.jpg", "zero_one.png", "rgb.png", "gray_palette.png"):
        mask = read_mask(tmp_path / name, (W, H), False)
        iou = (mask & truth).sum() / (mask | truth).sum()
        assert iou > 0.95, (name, iou)  # read as DAVIS indices the soft ones lost their 255 interior ("void")
    labels = truth.astype(np.uint8) * 2
    labels[:3] = 255  # DAVIS-2017 void
    write_annotation(tmp_path / "davis.png", labels)
    assert np.array_equal(read_mask(tmp_path / "davis.png", (W, H), False), truth)
    assert (read_annotation(tmp_path / "davis.png")[:3] == 255).all()  # the benchmark's reading keeps void


def test_odd_masks_warn_in_one_line():
    full, tiny, fine = np.ones((H, W), bool), np.zeros((H, W), bool), np.zeros((H, W), bool)
    tiny[3, 3], fine[10:40, 10:50] = True, True
    assert "covers the whole 96x64 frame" in mask_warning(full, "m.png")
    assert "covers only 1 pixels" in mask_warning(tiny, "m.png")
    assert mask_warning(fine, "m.png") is None


def test_soft_jpeg_mask_end_to_end_keeps_the_interior_and_warns_on_odd_masks(tmp_path, clip, predictor, capsys):
    frames, _, truth = clip
    Image.fromarray(truth.astype(np.uint8) * 255).save(tmp_path / "soft.jpg", quality=60)
    _run([frames, "--mask", tmp_path / "soft.jpg", "--out", tmp_path / "out", "--no-adapt"], predictor)
    parts = np.asarray(Image.open(tmp_path / "out" / "parts" / "00000.png"))
    assert (parts[28:37, 30:50] > 0).all()  # the interior, not a ring
    Image.fromarray(np.full((H, W), 255, np.uint8)).save(tmp_path / "full.png")
    capsys.readouterr()
    _run([frames, "--mask", tmp_path / "full.png", "--out", tmp_path / "full", "--no-adapt"], predictor)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    assert any("full.png: the mask covers the whole 96x64 frame" in w for w in warnings)
    assert any("covers the whole" in w for w in json.loads((tmp_path / "full" / "report.json").read_text())["warnings"])


# 2. SIGTERM cleans up like Ctrl-C -----------------------------------------------------------------------------------

def test_sigterm_removes_the_temporary_folder(tmp_path, clip, predictor):
    frames, mask, _ = clip
    sets = [a for s in [*FAST, f"predictor.checkpoint={predictor}", "optim.iterations=500"] for a in ("--set", s)]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "adapt.run", str(frames), "--mask", str(mask), "--out",
                             str(tmp_path / "out"), *sets], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not list(tmp_path.glob(".out.tmp-*")) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert list(tmp_path.glob(".out.tmp-*")), "the temporary output folder never appeared"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143 and err.strip().splitlines()[-1] == "error: terminated (SIGTERM)"
    assert _names(tmp_path) == []


# 3. Output folders that would replace the user's files are refused before any work -------------------------------

def test_output_folder_holding_cwd_home_root_or_inputs_is_refused(tmp_path, clip, predictor, capsys, monkeypatch,
                                                                   no_work):
    frames, mask, _ = clip
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(tmp_path / "elsewhere"))
    cases = [(".", "it is the current folder"), ("..", "it holds the current folder"), ("/", "it is the root"),
             (str(frames), f"it is the input {frames}"), (str(frames.parent), f"it holds the input {frames}")]
    for out, expected in cases:
        last = _fails([frames, "--mask", mask, "--out", out, "--overwrite"], predictor, capsys, expected)
        assert last.startswith(f"error: {out}: refusing to use ")
    Image.open(mask).save(work / "mask.png")
    _fails([frames, "--mask", "mask.png", "--out", "."], predictor, capsys, "it is the current folder")
    monkeypatch.setenv("HOME", str(tmp_path))
    _fails([frames, "--mask", mask, "--out", tmp_path, "--overwrite"], predictor, capsys, "it is the home folder")
    assert _names(work) == ["mask.png"] and _names(tmp_path) == ["work"]


# 4. --box ---------------------------------------------------------------------------------------------------------

def test_box_values_are_checked_and_clipped(tmp_path, clip, predictor, capsys, no_work):
    frames, mask, _ = clip
    for box, expected in [("0,0,inf,inf", "must be finite"), ("nan,0,10,10", "must be finite"),
                          ("5,5,3,30", "empty box"), ("1,2,3", "expected four numbers"), ("a,b,c,d", "four numbers")]:
        last = _fails([frames, f"--box={box}", "--out", tmp_path / "out"], predictor, capsys, expected)
        assert f"--box {box}" in last
    assert parse_box("-20,-20,500,500", (W, H)) == (0, 0, W, H)
    assert _names(tmp_path) == []


def test_box_over_the_whole_frame_still_gives_a_mask(tmp_path, clip, predictor, monkeypatch):
    frames, _, _ = clip
    assert grabcut_rect((0, 0, W, H), (H, W)) == (1, 1, W - 2, H - 2)  # background left for GrabCut's model
    assert grabcut_rect((10, 5, 50, 40), (H, W)) == (10, 5, 40, 35)
    old = os.umask(0o027)
    try:  # 8. the output folder gets the umask's permissions (mkdtemp alone gives 0700)
        _run([frames, "--box=-10,-10,500,500", "--out", tmp_path / "whole", "--no-adapt"], predictor)
    finally:
        os.umask(old)
    assert len(list((tmp_path / "whole" / "meshes").glob("*.obj"))) == T
    assert (tmp_path / "whole").stat().st_mode & 0o777 == 0o750


def test_box_falls_back_to_the_box_when_grabcut_fails(clip, monkeypatch):
    frame = np.asarray(Image.open(clip[0] / "00000.png"))

    def broken(*args, **kwargs):
        raise cv2.error("OpenCV(5): error: (-215:Assertion failed) !bgdSamples.empty() in function 'initGMMs'")
    monkeypatch.setattr(inputs.cv2, "grabCut", broken)
    mask, note = box_mask(frame, (10, 5, 50, 40), 2)
    assert mask.sum() == 40 * 35 and mask[5:40, 10:50].all()
    assert "GrabCut failed" in note and "the box itself" in note and "\n" not in note


# 5. Correspondence weights that do not fit -------------------------------------------------------------------------

def test_correspondence_checkpoint_with_wrong_weights(tmp_path, clip, predictor, capsys):
    frames, mask, _ = clip
    save_checkpoint(tmp_path / "uvc.pt", config_to_dict(UVCConfig()), {"encoder.foo": torch.zeros(3)}, 0)
    last = _fails([frames, "--mask", mask, "--out", tmp_path / "out"], predictor, capsys,
                  f"{tmp_path / 'uvc.pt'}: weights do not fit the correspondence model",
                  ["correspondence.method=learned", f"correspondence.checkpoint={tmp_path / 'uvc.pt'}"])
    assert "missing keys (e.g. encoder." in last and "1 unexpected keys (e.g. encoder.foo)" in last
    assert _names(tmp_path) == ["uvc.pt"]


# 6. Config values that pass a range check but break the run --------------------------------------------------------

def test_non_finite_floats_and_tiny_image_sizes_are_refused(tmp_path, clip, predictor, capsys):
    for item, expected in [("optim.lr=.nan", "key 'optim.lr' must be a finite number, got nan"),
                           ("optim.lr=.inf", "key 'optim.lr' must be a finite number, got inf"),
                           ("loss.silhouette=.nan", "key 'loss.silhouette' must be a finite number"),
                           ("loss.silhouette=nan", "key 'loss.silhouette' must be a finite number"),
                           ("parts.min_area=-.inf", "key 'parts.min_area' must be a finite number"),
                           ("input.max_side=1", "key 'input.max_side' must be >= 64, got 1"),
                           ("optim.render_size=2", "key 'optim.render_size' must be >= 8")]:
        with pytest.raises(UserError, match="^--set: " + expected.replace(".", r"\.")):
            load_config(AdaptConfig, None, [item])
    frames, mask, _ = clip
    _fails([frames, "--mask", mask, "--out", tmp_path / "out"], predictor, capsys, "finite", ["optim.lr=.nan"])
    assert _names(tmp_path) == []


def test_infinity_only_where_a_field_allows_it():
    @dataclass(frozen=True)
    class Limits:
        patience: Annotated[float, Bounds(low=0, allow_inf=True)] = 10.0  # inf = never stop

    assert load_config(Limits, None, ["patience=.inf"]).patience == float("inf")
    with pytest.raises(UserError, match="'patience' must be a finite number, got nan"):
        load_config(Limits, None, ["patience=.nan"])


# 7. --cache --------------------------------------------------------------------------------------------------------

def test_cache_that_is_a_file_is_refused_before_any_work(tmp_path, clip, predictor, capsys, no_work):
    frames, mask, _ = clip
    (tmp_path / "cache").write_text("not a folder")
    _fails([frames, "--mask", mask, "--out", tmp_path / "out", "--cache", tmp_path / "cache"], predictor, capsys,
           f"--cache {tmp_path / 'cache'}: is a file, not a folder")
    _fails([frames, "--mask", mask, "--out", tmp_path / "out", "--cache", tmp_path / "cache" / "sub"], predictor,
           capsys, "cannot create the folder")
    assert _names(tmp_path) == ["cache"]


def test_inconsistent_cache_entries_are_recomputed_with_one_warning(tmp_path, clip, predictor, capsys):
    frames, mask, _ = clip
    cache = tmp_path / "cache"
    base = [frames, "--mask", mask, "--cache", cache, "--no-adapt"]
    _run([*base, "--out", tmp_path / "a"], predictor)
    entry = next(cache.glob("propagation-*.pt"))
    for name, damage in [("missing", lambda d: d["state_dict"].pop("boxes")),
                         ("shape", lambda d: d["state_dict"].update(parts=d["state_dict"]["parts"][:, :2]))]:
        content = torch.load(entry, weights_only=True)
        damage(content)
        torch.save(content, entry)
        capsys.readouterr()
        _run([*base, "--out", tmp_path / name], predictor)
        warnings = [line for line in capsys.readouterr().err.splitlines() if "cache entry unusable" in line]
        assert len(warnings) == 1 and entry.name in warnings[0]
        assert not json.loads((tmp_path / name / "report.json").read_text())["propagation_reused"]
    _run([*base, "--out", tmp_path / "again"], predictor)  # the recomputed entry replaced the damaged one
    assert json.loads((tmp_path / "again" / "report.json").read_text())["propagation_reused"]


# 8. --out naming a file; folders created for a failed run ----------------------------------------------------------

def test_output_that_is_a_file_is_refused_with_or_without_overwrite(tmp_path, clip, predictor, capsys, no_work):
    frames, mask, _ = clip
    (tmp_path / "result").write_text("keep me")
    for flags in ([], ["--overwrite"]):
        _fails([frames, "--mask", mask, "--out", tmp_path / "result", *flags], predictor, capsys,
               f"{tmp_path / 'result'}: is a file, not a folder")
    assert _names(tmp_path) == ["result"] and (tmp_path / "result").read_text() == "keep me"


def test_failed_run_removes_the_parent_folders_it_created(tmp_path, clip, predictor, capsys):
    frames, _, _ = clip
    Image.fromarray(np.zeros((H, W), np.uint8)).save(tmp_path / "empty.png")
    _fails([frames, "--mask", tmp_path / "empty.png", "--out", tmp_path / "a" / "b" / "out"], predictor, capsys,
           "empty.png: mask is empty")
    _fails([frames, f"--box={W + 5},0,{W + 50},{H}", "--out", tmp_path / "a" / "out"], predictor, capsys,
           f"--box {W + 5},0,{W + 50},{H}: the box lies outside the 96x64 frame")
    assert _names(tmp_path) == ["empty.png"]
