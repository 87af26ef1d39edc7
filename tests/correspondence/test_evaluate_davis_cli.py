"""``python -m correspondence.evaluate`` on a tiny DAVIS-layout folder: sizes checked before any work."""
import numpy as np
import pytest
from PIL import Image

from birdmesh.davis import write_annotation
from correspondence.evaluate import main as evaluate_main


def _davis(root, frame_size=(48, 32), annotation_size=(48, 32), frames=3):
    """A DAVIS root with one sequence ``seq`` (flat grey frames, a square object) and list ``one.txt``."""
    (root / "JPEGImages" / "480p" / "seq").mkdir(parents=True)
    (root / "Annotations" / "480p" / "seq").mkdir(parents=True)
    for t in range(frames):
        Image.fromarray(np.full((frame_size[1], frame_size[0], 3), 90, np.uint8)).save(
            root / "JPEGImages" / "480p" / "seq" / f"{t:05d}.jpg")
        labels = np.zeros((annotation_size[1], annotation_size[0]), np.uint8)
        labels[4:12, 4:12] = 1
        write_annotation(root / "Annotations" / "480p" / "seq" / f"{t:05d}.png", labels)
    (root / "one.txt").write_text("seq\n")
    return root


def _run(args, capsys):
    with pytest.raises(SystemExit) as info:
        evaluate_main(args)
    return info.value.code, capsys.readouterr().err.strip()


def test_annotations_of_another_size_than_the_frames_are_an_error(tmp_path, capsys):
    root = _davis(tmp_path / "davis", frame_size=(48, 32), annotation_size=(24, 16))
    code, err = _run(["--davis", str(root), "--list", "one.txt", "--out", str(tmp_path / "out"), "--method", "copy"],
                     capsys)
    assert code == 2 and err == "error: sequence seq: annotations are 24x16 but the frames are 48x32 " \
                                "(00000.png vs 00000.jpg)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["davis"]


def test_matching_sizes_are_scored_and_the_output_is_checked_first(tmp_path, capsys):
    root = _davis(tmp_path / "davis")
    evaluate_main(["--davis", str(root), "--list", "one.txt", "--out", str(tmp_path / "out"), "--method", "copy"])
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("J&F=1.0000")
    code, err = _run(["--davis", str(root), "--list", "one.txt", "--out", str(root), "--overwrite"], capsys)
    assert code == 2 and f"refusing to use {root.resolve()} as the output folder: it is --davis" in err
