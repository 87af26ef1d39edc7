import numpy as np
import pytest
from PIL import Image

from birdmesh.davis import (DAVIS_PALETTE, load_sequence, read_annotation, read_annotations,
                            read_sequence_list, sequence_annotations, sequence_frames,
                            write_annotation)
from birdmesh.errors import UserError
from birdmesh.runtime import data_root


def voc_color(index):
    """PASCAL VOC colormap entry, written the slow way: take the index 3 bits at a time."""
    r = g = b = 0
    for level in range(8):
        r |= ((index >> 0) & 1) << (7 - level)
        g |= ((index >> 1) & 1) << (7 - level)
        b |= ((index >> 2) & 1) << (7 - level)
        index >>= 3
    return [r, g, b]


def make_davis(root, seq="bird", frames=3, size=(6, 8)):
    (root / "JPEGImages" / "480p" / seq).mkdir(parents=True)
    for t in range(frames):
        Image.fromarray(np.zeros((*size, 3), np.uint8)).save(root / "JPEGImages" / "480p" / seq / f"{t:05d}.jpg")
        labels = np.zeros(size, np.uint8)
        labels[1:3, 1:3], labels[4, 5:7] = 1, 2
        write_annotation(root / "Annotations" / "480p" / seq / f"{t:05d}.png", labels)
    return root


def test_palette_known_entries_and_reference():
    assert DAVIS_PALETTE.shape == (256, 3) and DAVIS_PALETTE.dtype == np.uint8
    assert DAVIS_PALETTE[:9].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128],
                                          [128, 0, 128], [0, 128, 128], [128, 128, 128], [64, 0, 0]]
    assert DAVIS_PALETTE[255].tolist() == [224, 224, 192]  # the DAVIS "void" colour
    assert DAVIS_PALETTE.tolist() == [voc_color(i) for i in range(256)]
    assert len({tuple(c) for c in DAVIS_PALETTE.tolist()}) == 256


def test_write_then_read_annotation_round_trip(tmp_path):
    labels = np.array([[0, 1, 2, 3], [4, 5, 255, 0]])
    path = write_annotation(tmp_path / "sub" / "a.png", labels)
    with Image.open(path) as image:
        assert image.mode == "P"
        assert np.array_equal(np.array(image.getpalette()[:768]).reshape(256, 3), DAVIS_PALETTE)
    back = read_annotation(path)
    assert back.dtype == np.uint8 and np.array_equal(back, labels)
    with pytest.raises(ValueError, match=r"labels: expected values in 0\.\.255, got 0\.\.300"):
        write_annotation(tmp_path / "b.png", np.array([[0, 300]]))
    with pytest.raises(ValueError, match=r"labels: expected an \(H, W\) integer array"):
        write_annotation(tmp_path / "b.png", np.zeros((2, 2), np.float32))


def test_binary_gray_and_rgb_masks(tmp_path):
    binary = np.array([[0, 255, 255], [0, 0, 255]], np.uint8)
    Image.fromarray(binary).save(tmp_path / "binary.png")
    assert read_annotation(tmp_path / "binary.png").tolist() == [[0, 1, 1], [0, 0, 1]]
    Image.fromarray(np.repeat(binary[:, :, None], 3, axis=2)).save(tmp_path / "white.png")
    assert read_annotation(tmp_path / "white.png").tolist() == [[0, 1, 1], [0, 0, 1]]
    indices = np.array([[0, 3, 1], [2, 2, 0]], np.uint8)
    Image.fromarray(indices).save(tmp_path / "gray_indices.png")
    assert np.array_equal(read_annotation(tmp_path / "gray_indices.png"), indices)
    Image.fromarray(DAVIS_PALETTE[indices]).save(tmp_path / "colored.png")
    assert np.array_equal(read_annotation(tmp_path / "colored.png"), indices)
    colored = DAVIS_PALETTE[indices].copy()
    colored[1, 2] = (10, 200, 30)
    Image.fromarray(colored).save(tmp_path / "odd_colour.png")
    with pytest.raises(UserError, match=r"odd_colour\.png: colour \(10, 200, 30\) at \(x=2, y=1\) is not"):
        read_annotation(tmp_path / "odd_colour.png")
    with pytest.raises(UserError, match=r"missing\.png: no such file"):
        read_annotation(tmp_path / "missing.png")


def test_sequence_list_formats(tmp_path):
    (tmp_path / "ImageSets").mkdir()
    (tmp_path / "ImageSets" / "names.txt").write_text("bear\n# a comment\n\nblackswan\nbear\n")
    (tmp_path / "ImageSets" / "paths.txt").write_text(
        "/JPEGImages/480p/bear/00000.jpg /Annotations/480p/bear/00000.png\n"
        "/JPEGImages/480p/bear/00001.jpg /Annotations/480p/bear/00001.png\n"
        "/JPEGImages/480p/cows/00000.jpg /Annotations/480p/cows/00000.png\n")
    assert read_sequence_list(tmp_path, "names.txt") == ["bear", "blackswan"]
    assert read_sequence_list(tmp_path, tmp_path / "ImageSets" / "paths.txt") == ["bear", "cows"]
    with pytest.raises(UserError, match=r"nope\.txt: sequence list not found"):
        read_sequence_list(tmp_path, "nope.txt")


def test_sequence_paths_and_reader(tmp_path):
    root = make_davis(tmp_path)
    frames, annotations = sequence_frames(root, "bird"), sequence_annotations(root, "bird")
    assert [p.name for p in frames] == ["00000.jpg", "00001.jpg", "00002.jpg"]
    assert [p.name for p in annotations] == ["00000.png", "00001.png", "00002.png"]
    sequence = load_sequence(root, "bird")
    assert (sequence.name, len(sequence.frames), sequence.num_objects) == ("bird", 3, 2)
    labels = sequence.read_labels()
    assert labels.shape == (3, 6, 8) and labels[0, 4, 6] == 2
    with pytest.raises(UserError, match=r"480p/fish: frames folder not found"):
        sequence_frames(root, "fish")
    write_annotation(tmp_path / "big.png", np.zeros((7, 8), np.uint8))
    with pytest.raises(UserError, match=r"big\.png: annotation size 8x7 differs from 8x6 of 00000\.png"):
        read_annotations([annotations[0], tmp_path / "big.png"])


def test_real_davis2016_when_present():
    root = data_root() / "davis2016"
    if not (root / "ImageSets" / "val_dev.txt").is_file():
        pytest.skip(f"{root} not present")
    names = read_sequence_list(root, "val_dev.txt")
    assert len(names) == 10 and names[0] == "bmx-trees"
    sequence = load_sequence(root, "bmx-trees")
    assert sequence.num_objects == 1 and len(sequence.frames) == len(sequence.annotations) == 80
    first = read_annotation(sequence.annotations[0])
    assert first.shape == (480, 854) and set(np.unique(first)) == {0, 1}
