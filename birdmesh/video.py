"""Streaming frame input (video files, image folders, single images) and video/frame output.

Frames are uint8 numpy arrays (H, W, 3) in RGB order, read one at a time so memory does not grow
with video length. Every problem with the user's input is a one-line ``UserError`` naming the file.
"""
from __future__ import annotations

import math
import os
import re
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator

import av
import cv2
import numpy as np
from PIL import Image

from .errors import UserError

VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".webm", ".mkv")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
# Image folders carry no frame rate; DAVIS sequences were shot at 24 fps.
DEFAULT_IMAGE_FPS = 24.0


class FrameSource:
    """An iterable over ``(index, frame)`` pairs; each iteration re-reads the input from its start.

    Attributes:
        path: the input file or folder.
        name: the input's stem (file name without extension, or folder name).
        fps: frame rate of the yielded frames (source rate / stride).
        size: (W, H) of the yielded frames, after ``max_side`` resizing.
        num_frames: how many frames iteration yields; exact for images, an estimate from the
            container header for video files.
    Iteration yields ``index`` (the frame's position in the source, before striding) and
    ``frame`` (H, W, 3) uint8 RGB.
    """

    def __init__(self, path: Path, fps: float, size: tuple[int, int], num_frames: int,
                 reader, stride: int, max_frames: int | None):
        self.path = path
        self.name = path.stem if path.is_file() else path.name
        self.fps = fps
        self.size = size
        self.num_frames = num_frames
        self._reader = reader
        self._stride = stride
        self._max_frames = max_frames

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        yielded = 0
        for index, frame in self._reader(self._stride):
            if self._max_frames is not None and yielded >= self._max_frames:
                return
            yield index, _resize(frame, self.size)
            yielded += 1

    def __repr__(self) -> str:
        return (f"FrameSource({str(self.path)!r}, fps={self.fps:g}, size={self.size}, "
                f"num_frames={self.num_frames})")


def open_frames(path: str | Path, stride: int = 1, max_frames: int | None = None,
                max_side: int | None = None) -> FrameSource:
    """Open a video file, an image folder (a DAVIS sequence folder too) or one image as a frame stream.

    Args:
        path: video (mp4, mov, avi, webm, mkv), folder of jpg/jpeg/png images (natural name order),
            or a single image (a one-frame input).
        stride: keep every ``stride``-th frame (source indices 0, stride, 2*stride, ...).
        max_frames: stop after this many yielded frames (None: all).
        max_side: shrink (never enlarge) so the longer side is at most this many pixels (cv2.INTER_AREA).
    Returns:
        A ``FrameSource``; the input is checked now (exists, decodable, at least one frame,
        images of one size); decoding errors later in a video surface during iteration.
    """
    _check_positive("stride", stride)
    if max_frames is not None:
        _check_positive("max_frames", max_frames)
    if max_side is not None:
        _check_positive("max_side", max_side)
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    if path.is_dir():
        fps, size, total, reader = _open_image_files(_list_images(path))
    elif path.suffix.lower() in IMAGE_EXTENSIONS:
        fps, size, total, reader = _open_image_files([path])
    elif path.suffix.lower() in VIDEO_EXTENSIONS:
        fps, size, total, reader = _open_video(path)
    else:
        raise UserError(f"{path}: not a video or image (extension '{path.suffix}'; expected one of "
                        f"{', '.join(VIDEO_EXTENSIONS + IMAGE_EXTENSIONS)} or a folder of images)")
    num_frames = math.ceil(total / stride)
    if max_frames is not None:
        num_frames = min(num_frames, max_frames)
    return FrameSource(path, fps / stride, _fit_size(size, max_side), num_frames, reader,
                       stride, max_frames)


def read_frames(path: str | Path, stride: int = 1, max_frames: int | None = None,
                max_side: int | None = None) -> np.ndarray:
    """Read a short clip whole: (T, H, W, 3) uint8 RGB. Same arguments as ``open_frames``."""
    frames = [frame for _, frame in open_frames(path, stride, max_frames, max_side)]
    return np.stack(frames)


def _check_positive(name: str, value) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")


def _fit_size(size: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    width, height = size
    if max_side is None or max(width, height) <= max_side:
        return size
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _resize(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if (frame.shape[1], frame.shape[0]) == size:
        return frame
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


def _natural_key(path: Path) -> list:
    # "frame2" before "frame10"; zero-padded names keep their plain order.
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def _list_images(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir()
             if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()]
    if not files:
        raise UserError(f"{folder}: no readable frames (no {'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} "
                        f"images in the folder)")
    return sorted(files, key=_natural_key)


def _image_size(path: Path) -> tuple[int, int]:
    # PIL reads only the header here, so checking a long folder stays cheap.
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, SyntaxError, ValueError) as err:
        raise UserError(f"{path}: not a readable image ({err})") from None


def _open_image_files(files: list[Path]):
    size = _image_size(files[0])
    for path in files[1:]:
        other = _image_size(path)
        if other != size:
            raise UserError(f"{path}: image size {other[0]}x{other[1]} differs from "
                            f"{size[0]}x{size[1]} of {files[0].name} (all frames must share one size)")

    def reader(stride: int) -> Iterator[tuple[int, np.ndarray]]:
        for index in range(0, len(files), stride):
            yield index, read_image(files[index])

    return DEFAULT_IMAGE_FPS, size, len(files), reader


def read_image(path: str | Path) -> np.ndarray:
    """Read one image file as (H, W, 3) uint8 RGB; grayscale, palette and RGBA are converted."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode.startswith(("I", "F")):  # 16-bit and float images: no faithful 8-bit RGB
                raise UserError(f"{path}: unsupported image mode {image.mode} (expected 8-bit RGB, "
                                f"grayscale, palette or RGBA)")
            # Alpha is dropped, not composited: frames are photographs, alpha is incidental.
            return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise UserError(f"{path}: not a readable image ({err})") from None


def _open_container(path: Path):
    try:
        return av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as err:
        raise UserError(f"{path}: not a readable video (truncated, corrupt or not a video: "
                        f"{_short(err)})") from None


def _short(err: Exception) -> str:
    return " ".join(str(err).split())[:200]


def _open_video(path: Path):
    container = _open_container(path)
    try:
        if not container.streams.video:
            raise UserError(f"{path}: no readable frames (the file has no video stream)")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or 30
        fps = float(rate)
        if stream.frames:
            total = stream.frames
        elif stream.duration is not None and stream.time_base is not None:
            total = max(1, round(float(stream.duration * stream.time_base) * fps))
        elif container.duration:
            total = max(1, round(container.duration / av.time_base * fps))
        else:
            total = 1
    finally:
        container.close()
    # Decode the first frame now, so an undecodable file fails at open, not deep inside a job.
    frames = _decode_video(path, stride=1)
    try:
        first = next(frames, None)
    finally:
        frames.close()
    if first is None:
        raise UserError(f"{path}: no readable frames")
    height, width = first[1].shape[:2]
    return fps, (width, height), total, lambda stride: _decode_video(path, stride)


def _decode_video(path: Path, stride: int) -> Iterator[tuple[int, np.ndarray]]:
    """Decode every frame in order (inter-coded video cannot skip), convert every ``stride``-th.

    The corruption checks are described in ``_check_complete``.
    """
    container = _open_container(path)
    try:
        stream = container.streams.video[0]
        # Without "explode" FFmpeg conceals many bitstream errors and returns damaged frames silently.
        stream.codec_context.options = {"err_detect": "explode"}
        decoded, packets_kept, packets_all = 0, 0, 0
        packet = None
        try:
            for packet in container.demux(stream):
                if packet.size:
                    packets_all += 1
                    # Packets marked discard (edit lists) legitimately produce no frame.
                    packets_kept += 0 if packet.is_discard else 1
                for frame in packet.decode():
                    if frame.is_corrupt:
                        raise UserError(f"{path}: frame {decoded} is corrupt (damaged video data)")
                    if decoded % stride == 0:
                        yield decoded, _upright(frame)
                    decoded += 1
        except av.FFmpegError as err:
            index = _display_index(packet, stream, fallback=decoded)
            raise UserError(f"{path}: frame {index} could not be decoded (file truncated or "
                            f"corrupt: {_short(err)})") from None
        _check_complete(path, decoded, packets_kept, packets_all, stream.frames)
    finally:
        container.close()


def _upright(frame: av.VideoFrame) -> np.ndarray:
    """(H, W, 3) uint8 RGB as a player shows it: phone videos store a rotation, not rotated pixels."""
    rgb = frame.to_ndarray(format="rgb24")
    quarter_turns = round((frame.rotation or 0) / 90) % 4  # counter-clockwise, as FFmpeg's autorotate
    return np.ascontiguousarray(np.rot90(rgb, quarter_turns)) if quarter_turns else rgb


def _display_index(packet, stream, fallback: int) -> int:
    """Display-order index of a packet's frame from its timestamp (decode order differs with B-frames)."""
    rate = stream.average_rate or stream.guessed_rate
    if packet is None or packet.pts is None or not rate or stream.time_base is None:
        return fallback
    seconds = (packet.pts - (stream.start_time or 0)) * stream.time_base
    return max(0, round(float(seconds * rate)))


def _check_complete(path: Path, decoded: int, packets_kept: int, packets_all: int,
                    indexed: int) -> None:
    """Refuse a video whose decoder or demuxer silently lost frames.

    FFmpeg may skip a damaged packet without an error: then fewer frames come out than packets went in.
    A truncated file may end cleanly on a packet boundary: then the container index (mp4 sample
    table) lists more frames than the data holds.
    """
    if decoded == 0:
        raise UserError(f"{path}: no readable frames")
    if decoded < packets_kept:
        raise UserError(f"{path}: corrupt video data: only {decoded} of {packets_kept} frames "
                        f"could be decoded")
    if indexed and packets_all < indexed:
        raise UserError(f"{path}: file truncated: the data ends after {packets_all} of the "
                        f"{indexed} frames its index lists")


def _even_pad(frame: np.ndarray) -> np.ndarray:
    # yuv420p stores chroma at half resolution, so H.264 needs even sides; replicate the last row/column.
    pad_h, pad_w = frame.shape[0] % 2, frame.shape[1] % 2
    if pad_h or pad_w:
        frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return frame


def _as_rgb_uint8(frame, name: str, index: int) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim == 2:
        frame = np.repeat(frame[:, :, None], 3, axis=2)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"{name}[{index}]: expected a (H, W, 3) uint8 array, got shape "
                         f"{tuple(frame.shape)} dtype {frame.dtype}")
    return np.ascontiguousarray(frame)


def write_video(path: str | Path, frames: Iterable[np.ndarray], fps: float, crf: int = 18) -> Path:
    """Encode frames as H.264 (yuv420p) into ``path``, atomically.

    Args:
        path: output .mp4 (recommended), .mov or .mkv file.
        frames: iterable of (H, W, 3) uint8 RGB (or (H, W) gray) arrays, all one size; odd sides are
            padded to even by edge replication.
        fps: frame rate (> 0).
        crf: x264 quality (0 lossless .. 51 worst; 18 is visually near-lossless).
    Returns:
        ``path``. The video is written to a temporary file beside it and renamed only when complete,
        so an error leaves no half-written file.
    """
    if not fps or fps <= 0:
        raise ValueError(f"fps: expected a positive number, got {fps!r}")
    path = Path(path)
    if path.suffix.lower() not in (".mp4", ".mov", ".mkv"):
        raise ValueError(f"path: expected a .mp4, .mov or .mkv name (H.264 containers), got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.tmp-", suffix=path.suffix,
                                        dir=path.parent)
    os.close(handle)
    try:
        count = _encode(Path(tmp_name), frames, fps, crf)
        if count == 0:
            raise ValueError("frames: expected at least one frame, got none")
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def _encode(tmp: Path, frames: Iterable[np.ndarray], fps: float, crf: int) -> int:
    # faststart puts the index first: players can stream the file, and a truncated copy keeps its index.
    options = {"movflags": "faststart"} if tmp.suffix.lower() in (".mp4", ".mov") else {}
    container = av.open(str(tmp), mode="w", options=options)
    try:
        stream, size, count = None, None, 0
        for index, frame in enumerate(frames):
            frame = _as_rgb_uint8(frame, "frames", index)
            if size is None:
                size = frame.shape[:2]
                stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(100000),
                                              options={"crf": str(crf)})
                stream.height, stream.width = (side + side % 2 for side in size)
                stream.pix_fmt = "yuv420p"
            elif frame.shape[:2] != size:
                raise ValueError(f"frames[{index}]: expected size {size[1]}x{size[0]} like frame 0, "
                                 f"got {frame.shape[1]}x{frame.shape[0]}")
            video_frame = av.VideoFrame.from_ndarray(_even_pad(frame), format="rgb24")
            container.mux(stream.encode(video_frame))
            count += 1
        if stream is not None:
            container.mux(stream.encode(None))
        return count
    finally:
        container.close()


def write_frames(folder: str | Path, frames: Iterable[np.ndarray], pattern: str = "%05d.jpg",
                 quality: int = 95) -> list[Path]:
    """Write frames as numbered images: ``folder / (pattern % i)`` for i = 0, 1, ...

    Args:
        frames: iterable of (H, W, 3) uint8 RGB (or (H, W) gray) arrays.
        pattern: printf-style name ending in .jpg, .jpeg or .png.
        quality: JPEG quality (ignored for PNG).
    Returns:
        The written paths, in order.
    """
    if Path(pattern % 0).suffix.lower() not in IMAGE_EXTENSIONS:
        raise ValueError(f"pattern: expected a name ending in .jpg, .jpeg or .png, got {pattern!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, frame in enumerate(frames):
        path = folder / (pattern % index)
        Image.fromarray(_as_rgb_uint8(frame, "frames", index)).save(path, quality=quality)
        paths.append(path)
    return paths
