"""Outputs of ``adapt.run`` besides the meshes (``export.py``): masks, parts, overlay video, report."""
from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import torch
from PIL import Image
from torch import Tensor

from birdmesh.davis import DAVIS_PALETTE
from mesh_recon.raster import HardFragments
from mesh_recon.render import sample_texture_hard


def project_to_ndc(verts: Tensor, rotation: Tensor, scale: Tensor, translation: Tensor,
                   wh: tuple[int, int]) -> Tensor:
    """(T, V, 3) canonical vertices -> NDC x, y of a (W, H) image plus depth, for the hard renderer."""
    cam_points = verts @ rotation.transpose(1, 2)  # (T, V, 3)
    uv = scale[:, None, None] * cam_points[..., :2] + translation[:, None]
    W, H = wh
    x, y = (2 * uv[..., 0] + 1) / W - 1, (2 * uv[..., 1] + 1) / H - 1
    return torch.stack([x, y, cam_points[..., 2]], -1)


def fill_silhouette(uv: np.ndarray, faces: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """The union of a mesh's projected triangles: (V, 2) pixel coordinates (pixel centre i at u = i), (F, 3) faces
    -> (H, W) bool.

    A silhouette needs no depth test, so OpenCV fills each triangle (4 fractional bits) instead of the z-buffer:
    ~8x cheaper at 1280x720. It sets every pixel ``render_hard`` sets (centre inside a triangle) and some edge
    pixels whose centre is just outside: about half a pixel wider (IoU 0.997 for a 400-pixel bird at 1280x720).
    Non-finite triangles are skipped.
    """
    H, W = hw
    corners = uv[faces]  # (F, 3, 2)
    corners = corners[np.isfinite(corners).all(axis=(1, 2))]
    # 16 sub-pixel steps; the clip keeps far-off vertices inside int32 (only triangles that huge are bent by it)
    fixed = np.round(np.clip(corners, -2 ** 22, 2 ** 22) * 16).astype(np.int32)
    canvas = np.zeros((H, W), np.uint8)
    for tri in fixed:
        cv2.fillConvexPoly(canvas, tri, 1, lineType=cv2.LINE_8, shift=4)
    return canvas > 0


def ndc_to_pixels(verts_ndc: Tensor, wh: tuple[int, int]) -> np.ndarray:
    """(..., 2+) NDC x, y of a (W, H) image (``project_to_ndc``) -> (..., 2) float64 pixel centres."""
    xy = verts_ndc[..., :2].detach().cpu().double().numpy()
    return ((xy + 1) * np.array(wh, dtype=np.float64) - 1) / 2


def painter_fragments(verts_ndc: Tensor, faces: Tensor, hw: tuple[int, int]) -> HardFragments:
    """A cheap stand-in for ``render_hard`` for display: triangles filled far to near by OpenCV (painter's algorithm
    on mean face depth), then the barycentrics of each covered pixel centre.

    ``render_hard`` at 640x360 takes ~150 ms for a close-up bird (a third of the frame), this ~50 ms. Faces that
    interpenetrate can be drawn in the wrong order (fine for an overlay, not for measurements).
    Args:
        verts_ndc: (1, V, 3) NDC x, y and depth (nearer = smaller); faces: (F, 3); hw: (H, W).
    Returns:
        HardFragments (B = 1); depth is 0 on covered pixels (not computed), +inf elsewhere.
    """
    H, W = hw
    uv = ndc_to_pixels(verts_ndc[0], (W, H))  # (V, 2)
    faces_np = faces.cpu().numpy()
    depth = verts_ndc[0, :, 2].detach().cpu().numpy()[faces_np].mean(1)
    corners = uv[faces_np]  # (F, 3, 2)
    fixed = np.round(np.clip(corners, -2 ** 22, 2 ** 22) * 16).astype(np.int32)
    canvas = np.zeros((H, W), np.int32)  # face index + 1, 0 background
    order = np.argsort(-depth, kind="stable")
    for f in order[np.isfinite(corners[order]).all(axis=(1, 2)) & np.isfinite(depth[order])].tolist():
        cv2.fillConvexPoly(canvas, fixed[f], f + 1, lineType=cv2.LINE_8, shift=4)
    ys, xs = np.nonzero(canvas)
    face = canvas[ys, xs] - 1
    a, b, c = corners[face, 0], corners[face, 1], corners[face, 2]  # (P, 2) each
    e1, e2, q = b - a, c - a, np.stack([xs, ys], 1) - a
    det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    det = np.where(np.abs(det) < 1e-12, 1e-12, det)
    b1 = np.clip((q[:, 0] * e2[:, 1] - q[:, 1] * e2[:, 0]) / det, 0, 1)
    b2 = np.clip((e1[:, 0] * q[:, 1] - e1[:, 1] * q[:, 0]) / det, 0, 1)
    bary = np.stack([np.clip(1 - b1 - b2, 0, 1), b1, b2], 1)
    bary /= bary.sum(1, keepdims=True).clip(1e-12)  # edge pixels just outside a triangle get clamped weights
    bary_img = np.zeros((H, W, 3), np.float32)
    bary_img[ys, xs] = bary
    face_index = torch.from_numpy(canvas.astype(np.int64) - 1)[None]
    covered = face_index >= 0
    depth_img = torch.where(covered, 0.0, float("inf"))
    return HardFragments(face_index, torch.from_numpy(bary_img)[None], depth_img, covered[:, None].float())


def write_masks(folder: Path, verts_ndc: Tensor, faces: Tensor, wh: tuple[int, int]) -> list[np.ndarray]:
    """Silhouettes at (W, H) of (T, V, 3) NDC vertices, one 0/255 PNG per frame; returns the masks as (H, W) bool."""
    folder.mkdir()
    uv, faces_np = ndc_to_pixels(verts_ndc, wh), faces.cpu().numpy()
    masks = []
    for t in range(len(uv)):
        mask = fill_silhouette(uv[t], faces_np, (wh[1], wh[0]))
        cv2.imwrite(str(folder / f"{t:05d}.png"), mask.astype(np.uint8) * 255)
        masks.append(mask)
    return masks


def write_parts(folder: Path, part_indices: np.ndarray, wh: tuple[int, int]) -> None:
    """Propagated part indices (T, h, w) as DAVIS-palette PNGs at (W, H) (what ``birdmesh.davis.write_annotation``
    writes, at zlib level 1: 40% faster than its default 6 for files a few percent larger)."""
    folder.mkdir()
    palette = DAVIS_PALETTE.reshape(-1).tolist()
    for t, labels in enumerate(part_indices):
        resized = cv2.resize(labels.astype(np.uint8), wh, interpolation=cv2.INTER_NEAREST)
        image = Image.frombytes("P", wh, np.ascontiguousarray(resized).tobytes())
        image.putpalette(palette)
        image.save(folder / f"{t:05d}.png", compress_level=1)


# What the overlay's corner shows for each frame flag (``adapt.flags.frame_flags``): letter, RGB colour.
FLAG_MARKS = {"truncated": ("T", (255, 60, 60)), "close_up": ("C", (255, 170, 0)),
              "low_confidence": ("L", (255, 255, 0)), "area_drift": ("D", (0, 200, 255)),
              "mesh_overreach": ("O", (255, 0, 255))}


def draw_flags(image: np.ndarray, flags: dict | None) -> np.ndarray:
    """Write the raised flags of one frame as coloured letters (T, C, L, D, O) in the top-left corner, in place."""
    x = 4
    for name, (letter, colour) in FLAG_MARKS.items():
        if flags and flags.get(name):
            cv2.putText(image, letter, (x, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
            cv2.putText(image, letter, (x, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1, cv2.LINE_AA)
            x += 14
    return image


def encode_video(path: Path, frames, fps: float, crf: int = 18, preset: str = "superfast") -> int:
    """H.264 (yuv420p) of (H, W, 3) uint8 RGB frames with even sides; returns the frame count.

    ``birdmesh.video.write_video`` encodes at x264's default preset (medium): per 1280x360 cockatoo frame on an idle
    core 65 ms, veryfast 23 ms (same size), superfast ~12 ms (files 1.5x larger: ~15 KB a frame at crf 18).
    The output folder is already atomic.
    """
    container = av.open(str(path), mode="w", options={"movflags": "faststart"})
    try:
        stream, count = None, 0
        for frame in frames:
            if stream is None:
                stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(100000),
                                              options={"crf": str(crf), "preset": preset})
                stream.height, stream.width = frame.shape[:2]
                stream.pix_fmt = "yuv420p"
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
            count += 1
        if stream is not None:
            container.mux(stream.encode(None))
    finally:
        container.close()
    return count


def overlay_size(wh: tuple[int, int], max_side: int) -> tuple[int, int]:
    """(w, h) of one overlay half: the (W, H) frame shrunk (never enlarged) to ``max_side``, sides even."""
    shrink = min(1.0, max_side / max(wh))
    return tuple(max(2, 2 * round(side * shrink / 2)) for side in wh)


def write_overlay(path: Path, frames: np.ndarray, verts: Tensor, rotation: Tensor, scale: Tensor,
                  translation: Tensor, faces: Tensor, face_uvs: Tensor, texture: Tensor, part_indices: np.ndarray,
                  original_wh: tuple[int, int], fps: float, max_side: int = 640,
                  flags: list[dict] | None = None) -> None:
    """Side by side per frame: the textured mesh over the video | the propagated parts over the video, each half
    at most ``max_side`` pixels on its longer side; ``flags`` (one dict per frame, ``adapt.flags``) are marked in
    the top-left corner.

    Args:
        frames: (T, H, W, 3) uint8 processed frames; part_indices: (T, H, W) uint8; verts: (T, V, 3); cameras
            (rotation (T, 3, 3), scale (T,), translation (T, 2)) in original pixels; texture (C, Ht, Wt) in [0, 1].
    """
    H, W = frames.shape[1:3]
    w, h = overlay_size((W, H), max_side)
    # Frames and parts shrink first and the mesh is drawn at the output size: the z-buffer, texture lookup and
    # blending then touch 0.56x the pixels at 854x480 (cameras are in original pixels).
    ratio = w / original_wh[0]
    verts_ndc = project_to_ndc(verts, rotation, scale * ratio, (translation + 0.5) * ratio - 0.5, (w, h))
    colours = DAVIS_PALETTE[np.arange(256) % len(DAVIS_PALETTE)].astype(np.uint16)

    def sides():
        for t in range(len(frames)):
            frame = cv2.resize(frames[t], (w, h), interpolation=cv2.INTER_AREA) if (w, h) != (W, H) else frames[t]
            frags = painter_fragments(verts_ndc[t:t + 1], faces, (h, w))
            covered = frags.mask[0, 0].cpu().numpy()[..., None] > 0.5
            left = frame.copy()  # whole-image arithmetic + copyto: boolean indexing of a close-up costs 3x more
            if covered.any():
                rgb = sample_texture_hard(frags, face_uvs, texture[None])[0].permute(1, 2, 0).cpu().numpy()
                np.copyto(left, (0.2 * frame.astype(np.float32) + 204 * rgb).astype(np.uint8), where=covered)
            parts = cv2.resize(part_indices[t], (w, h), interpolation=cv2.INTER_NEAREST)
            right = frame.copy()  # (a + b) >> 1 == floor(0.5 a + 0.5 b): the float blend, in integers
            np.copyto(right, ((frame + colours[parts]) >> 1).astype(np.uint8), where=parts[..., None] > 0)
            pair = np.concatenate([left, right], axis=1)
            yield draw_flags(pair, flags[t] if flags else None)

    encode_video(path, sides(), fps)


def write_report(path: Path, report: dict) -> None:
    """report.json: settings, losses over time, timings, warnings (plain JSON types)."""
    path.write_text(json.dumps(report, indent=1, default=float))
