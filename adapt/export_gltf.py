"""One binary glTF (GLB) holding a whole sequence: a textured mesh whose frames are morph targets.

Frame t is ``base + target_t`` (base = the mean shape over the frames); the animation keys the morph weights
one-hot at time t / fps with LINEAR interpolation, so a viewer blends neighbouring frames between keys.

Convention: glTF needs one UV per vertex, so vertices are split where a vertex's corners carry different UVs
(the spherical seam, the poles); every morph target gets the same split. Vertex data stays in the bird's
canonical frame (z up, -y forward); the node's rotation turns z-up into glTF's y-up so viewers show the bird
upright. Texture coordinates are (s, t) = ((u + 1) / 2, (v + 1) / 2) of our [-1, 1] UV with v down, because
glTF's (0, 0) is the image's top-left corner; s may leave [0, 1] on seam faces and wraps (REPEAT sampler).
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pygltflib as gl
import torch
from PIL import Image
from torch import Tensor

from mesh_recon.mesh import vertex_normals

_FLOAT, _UINT16, _UINT32 = 5126, 5123, 5125
_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963
_REPEAT, _LINEAR_FILTER, _LINEAR_MIPMAP_LINEAR = 10497, 9729, 9987
_Z_UP_TO_Y_UP = [-math.sqrt(0.5), 0.0, 0.0, math.sqrt(0.5)]  # (x, y, z, w): -90 degrees about x


@dataclass(frozen=True)
class SeamSplit:
    """A mesh with one UV per vertex, made from per-corner UVs.

    Fields:
        vertex_index: (V',) int64 original vertex of each split vertex.
        uv: (V', 2) float64 UV of each split vertex (our [-1, 1] convention).
        faces: (F, 3) int64 faces on the split vertices, same order and winding as the input faces.
    """

    vertex_index: np.ndarray
    uv: np.ndarray
    faces: np.ndarray


def split_uv_seams(faces: Tensor, face_uvs: Tensor) -> SeamSplit:
    """One vertex per distinct (vertex, UV) pair among the face corners.

    Args:
        faces: (F, 3) int64; face_uvs: (F, 3, 2) per-corner UV.
    Returns:
        SeamSplit; a vertex whose corners all share one UV stays one vertex.
    """
    corner_vertex = faces.reshape(-1).cpu().numpy().astype(np.float64)
    corner_uv = face_uvs.reshape(-1, 2).detach().cpu().numpy().astype(np.float64)
    keys = np.concatenate([corner_vertex[:, None], corner_uv], axis=1)  # (3F, 3)
    unique, inverse = np.unique(keys, axis=0, return_inverse=True)
    return SeamSplit(unique[:, 0].astype(np.int64), unique[:, 1:], inverse.reshape(-1, 3).astype(np.int64))


def _glb_texcoords(uv: np.ndarray) -> np.ndarray:
    return ((uv + 1) / 2).astype(np.float32)


class _Packer:
    """Appends arrays to one binary buffer, one 4-byte aligned bufferView and one accessor each."""

    def __init__(self, gltf: gl.GLTF2):
        self.gltf, self.chunks, self.size = gltf, [], 0

    def view(self, data: bytes, target: int | None = None) -> int:
        self.gltf.bufferViews.append(gl.BufferView(buffer=0, byteOffset=self.size, byteLength=len(data),
                                                   target=target))
        padded = data + b"\0" * (-len(data) % 4)  # keeps every view (and so every accessor) 4-byte aligned
        self.chunks.append(padded)
        self.size += len(padded)
        return len(self.gltf.bufferViews) - 1

    def accessor(self, array: np.ndarray, kind: str, target: int | None = None, bounds: bool = False) -> int:
        component = {np.dtype(np.float32): _FLOAT, np.dtype(np.uint16): _UINT16,
                     np.dtype(np.uint32): _UINT32}[array.dtype]
        flat = array.reshape(len(array), -1)
        view = self.view(np.ascontiguousarray(array).tobytes(), target)
        # min/max of the stored float32 values, so a validator comparing them bit for bit agrees.
        extra = dict(min=flat.min(0).tolist(), max=flat.max(0).tolist()) if bounds else dict(min=None, max=None)
        self.gltf.accessors.append(gl.Accessor(bufferView=view, componentType=component, count=len(array),
                                               type=kind, **extra))
        return len(self.gltf.accessors) - 1

    def blob(self) -> bytes:
        return b"".join(self.chunks)


def _primitive(packer: _Packer, verts: np.ndarray, faces: Tensor, split: SeamSplit) -> gl.Primitive:
    """Base mesh (mean shape) plus one morph target (position and normal deltas) per frame."""
    T, V, _ = verts.shape
    faces_t = faces.cpu()
    normals = vertex_normals(torch.from_numpy(verts).double(), faces_t).numpy()  # on the unsplit mesh: no seam
    base = verts.mean(axis=0)
    base_normal = vertex_normals(torch.from_numpy(base).double(), faces_t).numpy()
    idx = split.vertex_index
    base32 = base[idx].astype(np.float32)
    index_type = np.uint16 if len(idx) < 65535 else np.uint32
    attributes = gl.Attributes(
        POSITION=packer.accessor(base32, "VEC3", _ARRAY_BUFFER, bounds=True),
        NORMAL=packer.accessor(base_normal[idx].astype(np.float32), "VEC3", _ARRAY_BUFFER),
        TEXCOORD_0=packer.accessor(_glb_texcoords(split.uv), "VEC2", _ARRAY_BUFFER))
    indices = packer.accessor(split.faces.reshape(-1).astype(index_type), "SCALAR", _ELEMENT_ARRAY_BUFFER)
    targets = []
    for t in range(T):
        # Delta of the float32 values actually stored, so base32 + delta reproduces frame t to float32 rounding.
        delta = (verts[t, idx].astype(np.float32) - base32).astype(np.float32)
        targets.append(gl.Attributes(
            POSITION=packer.accessor(delta, "VEC3", _ARRAY_BUFFER, bounds=True),
            NORMAL=packer.accessor((normals[t, idx] - base_normal[idx]).astype(np.float32), "VEC3", _ARRAY_BUFFER)))
    return gl.Primitive(attributes=attributes, indices=indices, material=0, mode=4, targets=targets)


def _material(packer: _Packer, gltf: gl.GLTF2, texture_png: bytes) -> None:
    gltf.images.append(gl.Image(bufferView=packer.view(texture_png), mimeType="image/png"))
    gltf.samplers.append(gl.Sampler(magFilter=_LINEAR_FILTER, minFilter=_LINEAR_MIPMAP_LINEAR,
                                    wrapS=_REPEAT, wrapT=_REPEAT))
    gltf.textures.append(gl.Texture(sampler=0, source=0))
    pbr = gl.PbrMetallicRoughness(baseColorTexture=gl.TextureInfo(index=0), metallicFactor=0.0,
                                  roughnessFactor=1.0)
    # Double-sided: a predicted bird can fold a thin tail or wing inside out for a few frames.
    gltf.materials.append(gl.Material(name="bird", pbrMetallicRoughness=pbr, doubleSided=True))


def _animation(packer: _Packer, num_frames: int, fps: float) -> gl.Animation:
    times = (np.arange(num_frames, dtype=np.float64) / fps).astype(np.float32)
    weights = np.eye(num_frames, dtype=np.float32).reshape(-1)  # key t: target t has weight 1, the others 0
    sampler = gl.AnimationSampler(input=packer.accessor(times, "SCALAR", bounds=True),
                                  output=packer.accessor(weights, "SCALAR"), interpolation="LINEAR")
    channel = gl.AnimationChannel(sampler=0, target=gl.AnimationChannelTarget(node=0, path="weights"))
    return gl.Animation(name="frames", samplers=[sampler], channels=[channel])


def png_bytes(texture: np.ndarray) -> bytes:
    """(H, W, 3) uint8 RGB -> PNG file bytes."""
    buffer = io.BytesIO()
    Image.fromarray(texture).save(buffer, format="PNG")
    return buffer.getvalue()


def write_glb(path: str | Path, verts: np.ndarray, faces: Tensor, face_uvs: Tensor, texture_png: bytes,
              fps: float) -> SeamSplit:
    """Write the sequence as one morph-animated, textured mesh (glTF 2.0 binary).

    Args:
        path: output ``.glb``.
        verts: (T, V, 3) float canonical vertices; faces: (F, 3) int64; face_uvs: (F, 3, 2) per-corner UV in our
            [-1, 1] convention (v down), continuous inside each face.
        texture_png: PNG bytes of the texture, embedded in the binary chunk.
        fps: frames per second of the animation (> 0).
    Returns:
        the SeamSplit used (maps the GLB's vertices back to the input's).
    """
    verts = np.asarray(verts, dtype=np.float64)
    split = split_uv_seams(faces, face_uvs)
    gltf = gl.GLTF2(asset=gl.Asset(version="2.0", generator="birdmesh adapt.export"))
    packer = _Packer(gltf)
    primitive = _primitive(packer, verts, faces, split)
    _material(packer, gltf, texture_png)
    T = len(verts)
    gltf.meshes.append(gl.Mesh(name="bird", primitives=[primitive], weights=[0.0] * T,
                               extras={"targetNames": [f"frame_{t:05d}" for t in range(T)]}))
    gltf.nodes.append(gl.Node(name="bird", mesh=0, rotation=_Z_UP_TO_Y_UP))
    gltf.scenes.append(gl.Scene(nodes=[0]))
    gltf.scene = 0
    gltf.animations.append(_animation(packer, T, fps))
    blob = packer.blob()
    gltf.buffers.append(gl.Buffer(byteLength=len(blob)))
    gltf.set_binary_blob(blob)
    gltf.save_binary(str(path))
    return split
