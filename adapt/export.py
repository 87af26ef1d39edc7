"""Exports of ``adapt.run``: per-frame textured OBJs, one morph-animated GLB, and cameras in original pixels.

Files written into the output folder:
    meshes/%05d.obj      frame t's mesh in the bird's canonical frame (z up, -y forward, +x the bird's left);
                         every OBJ has the same faces and UVs and uses meshes/material.mtl -> meshes/texture.png
    animation.glb        one mesh, one morph target per frame, the texture embedded (``export_gltf``)
    cameras.json         {"fps", "width", "height", "frames": [{"rotation", "scale", "translation"}, ...]}

Convention (cameras.json): for the canonical vertices X of frame t's OBJ, the original frame's pixel
coordinates are (u, v) = scale * (R @ X)[:2] + translation, u right, v down, pixel centre i at u = i;
(R @ X)[2] is the depth, growing away from the viewer, and R is a proper rotation.
"""
from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor

from mesh_recon.crop import crop_cameras_to_pixels
from mesh_recon.geometry import check_shape, quaternion_to_rotation_matrix
from mesh_recon.mesh import save_obj

from .export_gltf import png_bytes, write_glb

MATERIAL_NAME = "material0"  # the name save_obj's MTL convention uses


class PixelCamera(NamedTuple):
    """A weak-perspective camera in a frame's pixels: (u, v) = scale * (R @ X)[:2] + translation.

    Fields: rotation (..., 3, 3); scale (...,) pixels per canonical unit; translation (..., 2) pixels.
    """

    rotation: Tensor
    scale: Tensor
    translation: Tensor


@dataclass(frozen=True)
class ExportedFiles:
    """Paths written by ``export_sequence``."""

    meshes: tuple[Path, ...]
    material: Path
    texture: Path
    animation: Path
    cameras: Path


def camera_to_pixels(cam: Tensor, crop_box: Tensor, frame_size: tuple[int, int] | None = None,
                     box_frame_size: tuple[int, int] | None = None) -> PixelCamera:
    """A weak-perspective camera of a square crop's NDC -> the same camera in the original frame's pixels.

    Args:
        cam: (7,) or (T, 7) [s, tx, ty, qw, qx, qy, qz] in crop NDC (x right, y down, align_corners=False).
        crop_box: (4,) or (T, 4) square box (x0, y0, x1, y1) in pixel-edge coordinates (``mesh_recon.crop``)
            of the frame the crop was cut from.
        frame_size: (W, H) of the original frame; box_frame_size: (W, H) of the frame the box refers to when
            that frame was resized from the original (None: the box is in the original frame).
    Returns:
        PixelCamera with rotation (..., 3, 3), scale (...,), translation (..., 2) in original pixels.
    Convention: pixel centres (NDC -1..1 spans pixels -0.5..W-0.5); depth (R X)[2] is unchanged.
    """
    single = cam.dim() == 1
    cams, boxes = (cam[None], crop_box[None]) if single else (cam, crop_box)
    check_shape(cams, "T 7", "cam")
    check_shape(boxes, "T 4", "crop_box", {"T": cams.shape[0]})
    px = crop_cameras_to_pixels(cams, boxes.to(cams.dtype))  # pixels of the box's frame
    scale, translation = px[:, 0], px[:, 1:3]
    if box_frame_size is not None:
        if frame_size is None:
            raise ValueError("frame_size: expected the original (W, H) when box_frame_size is given, got None")
        ratio = torch.tensor([frame_size[0] / box_frame_size[0], frame_size[1] / box_frame_size[1]],
                             dtype=cams.dtype)
        # Pixel centres scale about the pixel-edge origin: u0 = (u + 0.5) * ratio - 0.5. One scale serves
        # both axes; an aspect-preserving resize makes the two ratios equal up to rounding of the size.
        translation = (translation + 0.5) * ratio - 0.5
        scale = scale * ratio.mean()
    rotation = quaternion_to_rotation_matrix(px[:, 3:])
    if single:
        return PixelCamera(rotation[0], scale[0], translation[0])
    return PixelCamera(rotation, scale, translation)


def camera_entry(camera: PixelCamera) -> dict:
    """One frame's cameras.json entry (plain floats) of a single (unbatched) PixelCamera."""
    return {"rotation": camera.rotation.double().tolist(), "scale": float(camera.scale),
            "translation": camera.translation.double().tolist()}


def project_to_pixels(verts, camera: dict) -> np.ndarray:
    """Project canonical vertices with a cameras.json entry.

    Args:
        verts: (V, 3) canonical vertices (array or tensor); camera: {"rotation", "scale", "translation"}.
    Returns:
        (V, 3) float64: pixel u (right), pixel v (down), depth (R X)[2] (away from the viewer).
    """
    points = np.asarray(verts, dtype=np.float64).reshape(-1, 3)
    rotated = points @ np.asarray(camera["rotation"], dtype=np.float64).T
    uv = camera["scale"] * rotated[:, :2] + np.asarray(camera["translation"], dtype=np.float64)
    return np.concatenate([uv, rotated[:, 2:]], axis=1)


def corner_uvs(faces: Tensor, uv: Tensor) -> Tensor:
    """Per-corner UVs, continuous inside each face.

    Args:
        faces: (F, 3) int64; uv: (V, 2) per-vertex or (F, 3, 2) per-corner UV in [-1, 1] (grid_sample).
    Returns:
        (F, 3, 2) float64. A face spanning more than half the width (u range > 1) crosses the seam u = +-1, so
        its corners with u < 0 move to u + 2 (viewers wrap u), and it no longer smears the whole texture row.
        A corner on a pole row (|v| = 1, where every u is the same surface point) takes the mean u of the
        face's other corners. Already continuous per-corner UVs come back unchanged.
    """
    face_uv = uv[faces] if uv.dim() == 2 else uv
    check_shape(face_uv, "F 3 2", "uv", {"F": faces.shape[0]})
    face_uv = face_uv.detach().cpu().double()
    u, v = face_uv[..., 0], face_uv[..., 1]
    pole = v.abs() >= 1 - 1e-6
    span = torch.where(pole, -math.inf, u).amax(dim=1) - torch.where(pole, math.inf, u).amin(dim=1)
    u = torch.where((span > 1)[:, None] & (u < 0) & ~pole, u + 2, u)
    others = (~pole).sum(dim=1, keepdim=True)
    mean_others = torch.where(pole, 0.0, u).sum(dim=1, keepdim=True) / others.clamp_min(1)
    u = torch.where(pole & (others > 0), mean_others, u)
    return torch.stack([u, v], dim=-1)


def write_obj_sequence(folder: Path, verts: Tensor, faces: Tensor, face_uvs: Tensor,
                       texture_png: bytes) -> tuple[list[Path], Path, Path]:
    """meshes/%05d.obj (one per frame, sharing one material and texture) -> (obj paths, mtl path, png path).

    Args:
        verts: (T, V, 3) canonical vertices; faces: (F, 3); face_uvs: (F, 3, 2) continuous per-corner UV.
    """
    folder.mkdir(exist_ok=True)
    texture, material = folder / "texture.png", folder / "material.mtl"
    texture.write_bytes(texture_png)
    material.write_text(f"newmtl {MATERIAL_NAME}\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nillum 1\nmap_Kd {texture.name}\n")
    header = f"mtllib {material.name}\nusemtl {MATERIAL_NAME}\n"
    # Frames differ only in their "v" lines: save_obj writes frame 0 (geometry only; the shared material goes on
    # top), its "vt" and "f" lines are kept, and later frames format just their vertices in one numpy call.
    first = folder / f"{0:05d}.obj"
    save_obj(first, verts[0], faces, face_uv=face_uvs)
    lines = first.read_text().split("\n")
    tail = "\n".join(lines[len(verts[0]):])
    first.write_text(header + "\n".join(lines))
    paths = [first]
    for t in range(1, len(verts)):
        path = folder / f"{t:05d}.obj"
        buffer = io.StringIO()
        np.savetxt(buffer, verts[t].detach().cpu().double().numpy(), fmt="v %.6f %.6f %.6f")
        path.write_text(header + buffer.getvalue() + tail)
        paths.append(path)
    return paths, material, texture


def write_cameras(path: Path, cameras: Sequence[dict], fps: float, frame_size: tuple[int, int]) -> None:
    """cameras.json; ``cameras`` are entries as made by ``camera_entry``."""
    frames = [{"rotation": np.asarray(c["rotation"], dtype=np.float64).tolist(), "scale": float(c["scale"]),
               "translation": np.asarray(c["translation"], dtype=np.float64).tolist()} for c in cameras]
    doc = {"fps": float(fps), "width": int(frame_size[0]), "height": int(frame_size[1]),
           "convention": "(u, v) = scale * (rotation @ X)[:2] + translation in pixels of the original frame "
                         "(x right, y down, pixel centre i at i); depth (rotation @ X)[2] grows away from the viewer",
           "frames": frames}
    path.write_text(json.dumps(doc, indent=1))


def _check_inputs(verts: Tensor, faces: Tensor, texture: np.ndarray, fps: float, cameras: Sequence[dict],
                  frame_size: tuple[int, int]) -> None:
    sizes: dict = {}
    check_shape(verts, "T V 3", "verts", sizes)
    check_shape(faces, "F 3", "faces")
    if sizes["T"] == 0:
        raise ValueError("verts: expected at least one frame, got shape (0, V, 3)")
    if not torch.isfinite(verts).all():
        raise ValueError("verts: expected finite values, got NaN or infinity")
    if faces.numel() and (int(faces.min()) < 0 or int(faces.max()) >= sizes["V"]):
        raise ValueError(f"faces: expected indices in [0, {sizes['V']}), got [{int(faces.min())}, {int(faces.max())}]")
    if texture.dtype != np.uint8 or texture.ndim != 3 or texture.shape[2] != 3:
        raise ValueError(f"texture: expected (H, W, 3) uint8, got {texture.shape} {texture.dtype}")
    if not (isinstance(fps, (int, float, np.floating, np.integer)) and math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps: expected a finite number > 0, got {fps!r}")
    if len(cameras) != sizes["T"]:
        raise ValueError(f"cameras: expected one entry per frame ({sizes['T']}), got {len(cameras)}")
    if len(frame_size) != 2 or min(frame_size) < 1:
        raise ValueError(f"frame_size: expected (W, H) of the original frame, got {frame_size!r}")
    for t, camera in enumerate(cameras):
        if np.shape(camera.get("rotation")) != (3, 3) or np.shape(camera.get("translation")) != (2,) \
                or np.shape(camera.get("scale")) != ():
            raise ValueError(f"cameras[{t}]: expected rotation 3x3, scale, translation [tx, ty], got {camera!r}")


def _tensor(x) -> Tensor:
    return x.detach().cpu() if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))


def export_sequence(out_dir, verts, faces, uv, texture, fps: float, cameras: Sequence[dict],
                    frame_size: tuple[int, int]) -> ExportedFiles:
    """Write meshes/, animation.glb and cameras.json of a reconstructed sequence into ``out_dir``.

    Args:
        out_dir: an existing folder (the temporary folder of ``atomic_output_dir``).
        verts: (T, V, 3) float canonical vertices per frame (tensor or array).
        faces: (F, 3) int faces, counter-clockwise seen from outside.
        uv: (V, 2) per-vertex or (F, 3, 2) per-corner UV in [-1, 1] (grid_sample convention, v down).
        texture: (H, W, 3) uint8 RGB texture (row 0 is v = -1).
        fps: frames per second of the video (> 0).
        cameras: T entries {"rotation": 3x3, "scale": s, "translation": [tx, ty]} in original-frame pixels
            (``camera_entry(camera_to_pixels(...))``).
        frame_size: (W, H) of the original frames.
    Returns:
        ExportedFiles.
    """
    out_dir = Path(out_dir)
    verts, faces, uv = _tensor(verts).double(), _tensor(faces).long(), _tensor(uv).double()
    texture = _tensor(texture).numpy()
    _check_inputs(verts, faces, texture, fps, cameras, frame_size)
    face_uvs = corner_uvs(faces, uv)
    png = png_bytes(texture)
    meshes, material, texture_path = write_obj_sequence(out_dir / "meshes", verts, faces, face_uvs, png)
    write_glb(out_dir / "animation.glb", verts.numpy(), faces, face_uvs, png, fps)
    write_cameras(out_dir / "cameras.json", cameras, fps, frame_size)
    return ExportedFiles(tuple(meshes), material, texture_path, out_dir / "animation.glb", out_dir / "cameras.json")
