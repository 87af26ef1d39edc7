import subprocess

import av
import numpy as np
import pytest
from PIL import Image

from birdmesh.errors import UserError
from birdmesh.runtime import data_root
from birdmesh.video import open_frames, read_frames, read_image, write_frames, write_video


def smooth_frames(count=12, height=48, width=64):
    """Slowly moving colour ramps: content H.264 keeps to within a few grey levels."""
    yy, xx = np.mgrid[0:height, 0:width]
    return [np.stack([(xx * 2 + 3 * t) % 256, (yy * 3 + t) % 256, np.full_like(xx, 90 + t)], -1)
            .astype(np.uint8) for t in range(count)]


def video_packets(path):
    """(file offset, size) of each video packet, in decode order."""
    with av.open(str(path)) as container:
        return [(p.pos, p.size) for p in container.demux(container.streams.video[0]) if p.size]


@pytest.fixture
def clip(tmp_path):
    return write_video(tmp_path / "clip.mp4", smooth_frames(30, 64, 80), fps=25)


def test_round_trip_keeps_count_size_and_content(tmp_path):
    frames = smooth_frames()
    path = write_video(tmp_path / "out.mp4", iter(frames), fps=12)
    source = open_frames(path)
    assert (source.fps, source.size, source.num_frames, source.name) == (12.0, (64, 48), 12, "out")
    back = read_frames(path)
    assert back.shape == (12, 48, 64, 3) and back.dtype == np.uint8
    error = np.abs(back.astype(int) - np.stack(frames)).mean()
    assert error < 3, f"mean abs error {error:.2f}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]  # temp file renamed away


def test_odd_size_is_padded_by_edge_replication(tmp_path):
    frames = [f[:47, :63] for f in smooth_frames(4)]
    back = read_frames(write_video(tmp_path / "odd.mp4", frames, fps=10))
    assert back.shape == (4, 48, 64, 3)
    assert np.abs(back[:, -1].astype(int) - back[:, -2]).mean() < 3  # last row copies the one above
    assert np.abs(back[:, :47, :63].astype(int) - np.stack(frames)).mean() < 3


def test_stride_max_frames_and_max_side(clip):
    source = open_frames(clip, stride=3, max_frames=4, max_side=40)
    assert source.size == (40, 32) and source.fps == pytest.approx(25 / 3) and source.num_frames == 4
    items = list(source)
    assert [i for i, _ in items] == [0, 3, 6, 9]
    assert all(f.shape == (32, 40, 3) and f.dtype == np.uint8 for _, f in items)
    assert open_frames(clip, stride=7).num_frames == 5  # frames 0, 7, 14, 21, 28
    assert len(list(open_frames(clip, stride=7))) == 5
    assert open_frames(clip, max_side=500).size == (80, 64)  # never enlarges


def test_iterating_twice_restarts(clip):
    source = open_frames(clip, max_frames=3)
    first, second = [f for _, f in source], [f for _, f in source]
    assert len(first) == 3 and all(np.array_equal(a, b) for a, b in zip(first, second))


def test_folder_in_natural_order_and_single_image(tmp_path):
    frames = smooth_frames(11, 20, 30)
    folder = tmp_path / "seq"
    folder.mkdir()
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"frame{t}.png")  # frame10 must come after frame9
    (folder / "notes.txt").write_text("not an image")
    source = open_frames(folder, stride=2)
    assert (source.num_frames, source.size, source.name) == (6, (30, 20), "seq")
    items = list(source)
    assert [i for i, _ in items] == [0, 2, 4, 6, 8, 10]
    assert np.array_equal(items[-1][1], frames[10])
    single = read_frames(folder / "frame3.png")
    assert single.shape == (1, 20, 30, 3) and np.array_equal(single[0], frames[3])


def test_grayscale_and_rgba_become_rgb(tmp_path):
    gray = (np.arange(20 * 30).reshape(20, 30) % 256).astype(np.uint8)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    rgba = np.dstack([smooth_frames(1, 20, 30)[0], np.full((20, 30), 7, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    assert np.array_equal(read_image(tmp_path / "gray.png"), np.repeat(gray[:, :, None], 3, axis=2))
    assert np.array_equal(read_frames(tmp_path / "rgba.png")[0], rgba[:, :, :3])


def test_write_frames_png_exact_and_jpg(tmp_path):
    frames = smooth_frames(3, 16, 24)
    paths = write_frames(tmp_path / "png", frames, pattern="%03d.png")
    assert [p.name for p in paths] == ["000.png", "001.png", "002.png"]
    assert np.array_equal(read_frames(tmp_path / "png"), np.stack(frames))
    write_frames(tmp_path / "jpg", frames)
    assert np.abs(read_frames(tmp_path / "jpg").astype(int) - np.stack(frames)).mean() < 3
    with pytest.raises(ValueError, match="pattern"):
        write_frames(tmp_path / "bad", frames, pattern="%05d.gif")


def test_errors_on_missing_unknown_and_undecodable(tmp_path):
    with pytest.raises(UserError, match=r"nothing\.mp4: no such file"):
        open_frames(tmp_path / "nothing.mp4")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match=r"notes\.txt: not a video or image \(extension '\.txt'"):
        open_frames(tmp_path / "notes.txt")
    (tmp_path / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(UserError, match=r"noise\.mp4: not a readable video"):
        open_frames(tmp_path / "noise.mp4")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(UserError, match=r"broken\.jpg: not a readable image"):
        open_frames(tmp_path / "broken.jpg")
    with pytest.raises(ValueError, match="stride: expected a positive integer, got 0"):
        open_frames(tmp_path / "noise.mp4", stride=0)


def test_errors_on_zero_frames(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"empty: no readable frames"):
        open_frames(tmp_path / "empty")
    with av.open(str(tmp_path / "header_only.mp4"), "w") as container:  # a container with no frame
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        container.start_encoding()  # writes the header although no frame follows
        container.mux(stream.encode(None))
    with pytest.raises(UserError, match=r"header_only\.mp4: no readable frames"):
        open_frames(tmp_path / "header_only.mp4")


def test_mixed_image_sizes_name_the_file_and_both_sizes(tmp_path):
    for name, (h, w) in [("00000.jpg", (20, 30)), ("00001.jpg", (20, 30)), ("00002.jpg", (21, 30))]:
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(tmp_path / name)
    with pytest.raises(UserError, match=r"00002\.jpg: image size 30x21 differs from 30x20 of 00000\.jpg"):
        open_frames(tmp_path)


def test_truncated_video_mid_packet_names_the_frame(clip, tmp_path):
    data = clip.read_bytes()
    offset, size = video_packets(clip)[15]
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[:offset + size // 2])  # the index (written first) survives, the data does not
    source = open_frames(cut)  # the first frames are fine: the failure comes while streaming
    with pytest.raises(UserError, match=r"cut\.mp4: frame \d+ could not be decoded \(file truncated"):
        list(source)


def test_truncated_video_on_a_packet_boundary_is_detected(clip, tmp_path):
    data = clip.read_bytes()
    offset, size = video_packets(clip)[20]
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[:offset + size])  # ends cleanly: only the index tells frames are missing
    with pytest.raises(UserError, match=r"cut\.mp4: file truncated: the data ends after 21 of the 30"):
        read_frames(cut)


def test_truncated_video_without_index_fails_at_open(tmp_path):
    with av.open(str(tmp_path / "plain.mp4"), "w") as container:  # index written last, not faststart
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for frame in smooth_frames(10):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    data = (tmp_path / "plain.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"cut\.mp4: not a readable video \(truncated, corrupt"):
        open_frames(tmp_path / "cut.mp4")


def test_corrupted_packet_names_its_display_frame(clip, tmp_path):
    data = bytearray(clip.read_bytes())
    packets = video_packets(clip)
    offset, size = packets[10]
    data[offset:offset + size] = np.random.default_rng(0).bytes(size)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(bytes(data))
    # Packet 10 in decode order; with B-frames its display index is nearby, and reported exactly.
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        pts = [p.pts for p in container.demux(stream) if p.size][10]
        expected = round(float(pts * stream.time_base * stream.average_rate))
    with pytest.raises(UserError, match=rf"bad\.mp4: frame {expected} could not be decoded"):
        read_frames(bad)


@pytest.mark.parametrize("name, codec", [("clip.mkv", "libx264"), ("clip.avi", "mpeg4"),
                                         ("clip.webm", "libvpx-vp9")])
def test_other_containers(tmp_path, name, codec):
    if codec not in av.codecs_available:
        pytest.skip(f"{codec} not in this FFmpeg build")
    frames = smooth_frames(10)
    with av.open(str(tmp_path / name), "w") as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    source = open_frames(tmp_path / name)
    assert (source.size, source.fps, source.num_frames) == ((64, 48), 25.0, 10)
    back = read_frames(tmp_path / name)
    assert back.shape == (10, 48, 64, 3) and np.abs(back.astype(int) - np.stack(frames)).mean() < 8


def test_rotation_metadata_is_applied_as_ffmpeg_does(clip, tmp_path):
    ffmpeg = pytest.importorskip("imageio_ffmpeg").get_ffmpeg_exe()
    rotated, reference = tmp_path / "rotated.mp4", tmp_path / "ffmpeg_frame0.png"
    # A phone-style file: same pixels, plus a display matrix asking for a 90 degree turn.
    subprocess.run([ffmpeg, "-loglevel", "error", "-display_rotation", "90", "-i", str(clip),
                    "-c", "copy", str(rotated)], check=True)
    subprocess.run([ffmpeg, "-loglevel", "error", "-i", str(rotated), "-frames:v", "1", str(reference)],
                   check=True)  # FFmpeg's own autorotate is the reference
    source = open_frames(rotated, max_frames=1)
    assert source.size == (64, 80)
    frame = next(iter(source))[1]
    assert np.abs(frame.astype(int) - np.asarray(Image.open(reference))).mean() < 1
    assert np.array_equal(frame, np.rot90(read_frames(clip, max_frames=1)[0]))


def test_write_video_leaves_nothing_on_error(tmp_path):
    def failing():
        yield from smooth_frames(3)
        raise RuntimeError("producer failed")

    with pytest.raises(RuntimeError, match="producer failed"):
        write_video(tmp_path / "a.mp4", failing(), fps=10)
    frames = smooth_frames(2) + [np.zeros((10, 10, 3), np.uint8)]
    with pytest.raises(ValueError, match=r"frames\[2\]: expected size 64x48 like frame 0, got 10x10"):
        write_video(tmp_path / "b.mp4", frames, fps=10)
    with pytest.raises(ValueError, match="frames: expected at least one frame, got none"):
        write_video(tmp_path / "c.mp4", [], fps=10)
    with pytest.raises(ValueError, match=r"frames\[0\]: expected a \(H, W, 3\) uint8 array"):
        write_video(tmp_path / "d.mp4", [np.zeros((8, 8, 3), np.float32)], fps=10)
    with pytest.raises(ValueError, match=r"path: expected a \.mp4, \.mov or \.mkv name"):
        write_video(tmp_path / "e.webm", smooth_frames(2), fps=10)
    assert list(tmp_path.iterdir()) == []


def test_real_video_when_present():
    path = data_root() / "videos" / "cockatoo.mp4"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    source = open_frames(path, max_frames=3, max_side=160)
    assert (source.size, source.fps, source.num_frames) == ((160, 90), 20.0, 3)
    assert read_frames(path, max_frames=3, max_side=160).shape == (3, 90, 160, 3)


def test_real_davis_folder_when_present():
    folder = data_root() / "davis2016" / "JPEGImages" / "480p" / "bmx-trees"
    if not folder.is_dir():
        pytest.skip(f"{folder} not present")
    source = open_frames(folder, stride=40)
    assert (source.size, source.num_frames) == ((854, 480), 2)
    assert [i for i, _ in source] == [0, 40]
