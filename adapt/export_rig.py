"""A rigged, skinned glTF (GLB) of a video's bird, and the same pose as plain JSON, for people who animate rigs.

Where ``export_gltf.write_glb`` bakes every frame into a morph target, this file keeps the articulation: one
skinned mesh on the 25-joint avian skeleton, one node per joint (named ``AVIAN_JOINT_NAMES``), and one animation
whose keys are the per-frame joint rotations, so a user can edit the motion, retarget it or re-time it.

Convention (axes): vertices and joints are stored in the avian model frame (+y forward, +z up, -x the bird's
left). A root node "bird_root" above the skeleton carries the per-frame similarity of our world frame, the
video camera frame (x right, y down, z away from the viewer, units = image heights):
X_world = root_scale[t] * root_rotation[t] @ X_model + root_translation[t]. glTF's axes (y up, a default camera
looking down -z) are (x, -y, -z) of the camera frame, so the root node holds G @ (s R X + t) with the proper
rotation G = diag(1, -1, -1) (``GLTF_FROM_WORLD``): its TRS is (G t, G R, s). A viewer's default camera then sees
the bird as the video did. Blender's importer maps glTF (x, y, z) to Blender (x, -z, y), so in Blender
X_world = (x, -z, y) of a Blender point, and Blender's front view (looking along +y) is the video's view.

Convention (skinning): rest vertices are skinned relative to the unscaled rest joints,
x -> R_j (x - J_j) + p_j with p_j from the scaled skeleton (``mesh_recon.skinning``). The file stores:
node rest translations = the unscaled offsets J_j - J_parent, inverse bind matrices = translation(-J_j) (exactly
the inverse of the rest nodes' world matrices), and per joint an animated translation channel holding the scaled
offset bone_scale[j-1] * (J_j - J_parent), constant over time, beside its rotation channel. Why not scaled rest
translations with unscaled inverse bind matrices (equally exact by the glTF spec): inverse bind matrices that
disagree with the rest nodes are read differently by importers that rebuild the bind pose from the nodes: Blender
5.0 with ``guess_original_bind_pose=False`` moves that layout's vertices by 0.7 % of the bird's size. Here the bind
pose is the same however it is derived, the bone lengths travel with the animation, and both Blender import modes
give the skinning's mesh to ~2e-7 of its size (tests/adapt/test_export_rig.py).

Convention (weights): glTF's JOINTS_0 / WEIGHTS_0 hold at most 4 influences per vertex: the 4 largest weights,
renormalised to sum 1 (``truncate_weights``). The mesh posed from the file equals linear blend skinning with
those truncated weights (float32 precision), not with the full ones.

Animation: key t at time t / fps (seconds), LINEAR; quaternions (x, y, z, w) as glTF wants, signs chosen so
consecutive keys are in the same hemisphere (no long way round between keys). Blender 5.0's importer turns seconds
into frames with ``render.fps * render.fps_base`` (a bug for fps_base != 1): set the scene to the video's fps with
fps_base 1 before importing and video frame t is Blender frame t. ``write_pose_json`` writes the same pose with
(w, x, y, z) quaternions, as the file itself says.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pygltflib as gl
import torch
from torch import Tensor

from mesh_recon.geometry import check_shape, rotation_matrix_to_quaternion
from mesh_recon.mesh import vertex_normals

from .export_gltf import _ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER, _glb_texcoords, _material, _Packer, split_uv_seams

# Joint layout of the avian model (parents -1 0 1 0 3 3 5 6 7 3 9 10 11 3 13 14 15 3 17 18 19 3 21 22 23);
# left = the bird's left = -x in the model frame (the left leg's joints have x = -1.88).
AVIAN_JOINT_NAMES = (
    "root", "tail", "tail_tip", "body", "upper_back",
    "left_hip_base", "left_hip", "left_knee", "left_ankle",
    "left_shoulder_base", "left_shoulder", "left_elbow", "left_wrist",
    "neck_base", "neck", "head", "bill",
    "right_shoulder_base", "right_shoulder", "right_elbow", "right_wrist",
    "right_hip_base", "right_hip", "right_knee", "right_ankle",
)
GLTF_FROM_WORLD = np.diag([1.0, -1.0, -1.0])  # video camera frame (y down, z away) -> glTF (y up, z towards viewer)
MAX_INFLUENCES = 4  # glTF's JOINTS_0 / WEIGHTS_0 are VEC4
_ROOT_NODE, _FIRST_JOINT_NODE = 0, 1  # node 0 = bird_root, node 1 + j = joint j, node 1 + J = the mesh


def truncate_weights(weights: np.ndarray, k: int = MAX_INFLUENCES) -> tuple[np.ndarray, np.ndarray]:
    """The k largest skinning weights of every vertex, renormalised to sum 1.

    Args:
        weights: (V, J) float LBS weights (rows sum to 1), J >= k.
    Returns:
        joints (V, k) int64 joint indices, largest weight first (ties: the lower joint index), and
        weights (V, k) float64 summing to 1 per row.
    """
    weights = np.asarray(weights, dtype=np.float64)
    joints = np.argsort(-weights, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(weights, joints, axis=1)
    return joints, top / top.sum(1, keepdims=True)


def quaternions_xyzw(rotations: np.ndarray) -> np.ndarray:
    """(T, ..., 3, 3) rotations -> (T, ..., 4) unit quaternions (x, y, z, w), sign-continuous along T.

    Each key's sign is flipped where needed so that neighbouring keys have a non-negative dot product: q and -q are
    the same rotation, but interpolating towards -q goes the long way round.
    """
    wxyz = rotation_matrix_to_quaternion(torch.as_tensor(rotations, dtype=torch.float64)).numpy()
    dots = (wxyz[1:] * wxyz[:-1]).sum(-1)  # (T-1, ...)
    signs = np.cumprod(np.where(dots < 0, -1.0, 1.0), axis=0)
    wxyz[1:] *= signs[..., None]
    return np.concatenate([wxyz[..., 1:], wxyz[..., :1]], axis=-1)


def _as_tensors(**arrays) -> dict[str, Tensor]:
    """Numpy arrays or tensors (any device, with or without grad) -> float64 CPU tensors, names kept."""
    return {name: torch.as_tensor(np.asarray(a) if not isinstance(a, Tensor) else a.detach().cpu(),
                                  dtype=torch.float64) for name, a in arrays.items()}


def _check_mesh(t: dict[str, Tensor], faces: Tensor) -> dict:
    """Shapes of the mesh and skeleton arrays; returns the sizes V, F, J and N = J - 1."""
    sizes: dict = {}
    check_shape(t["rest_verts"], "V 3", "rest_verts", sizes)
    check_shape(faces, "F 3", "faces", sizes)
    check_shape(t["face_uvs"], "F 3 2", "face_uvs", sizes)
    check_shape(t["weights"], "V J", "weights", sizes)
    check_shape(t["rest_joints"], "J 3", "rest_joints", sizes)
    if sizes["J"] < MAX_INFLUENCES:
        raise ValueError(f"weights: expected at least {MAX_INFLUENCES} joints, got {sizes['J']}")
    return dict(sizes, N=sizes["J"] - 1)


def _check_skeleton(parents: Sequence[int], joint_names: Sequence[str], num_joints: int) -> list[int]:
    parents = [int(p) for p in np.asarray(parents).reshape(-1)]
    if len(parents) != num_joints or parents[0] != -1 or any(not 0 <= p < j for j, p in enumerate(parents) if j):
        raise ValueError(f"parents: expected {num_joints} indices, parents[0] = -1 and 0 <= parents[j] < j, "
                         f"got {parents}")
    names = [str(n) for n in joint_names]
    if len(names) != num_joints or len(set(names)) != num_joints:
        raise ValueError(f"joint_names: expected {num_joints} unique names, got {names}")
    return parents


def _check_motion(fps: float, sizes: dict, **motion: Tensor) -> None:
    """Shapes of the per-frame motion (T frames, J joints), fps > 0 and proper root rotations."""
    layouts = {"local_rotations": "T N 3 3", "bone_scale": "N", "root_scale": "T",
               "root_rotation": "T 3 3", "root_translation": "T 3"}
    for name, value in motion.items():
        check_shape(value, layouts[name], name, sizes)
    if not fps > 0:
        raise ValueError(f"fps: expected > 0, got {fps}")
    det = torch.linalg.det(motion["root_rotation"])
    if (det <= 0).any():
        raise ValueError(f"root_rotation: expected proper rotations (det > 0), got det {det.min().item():.3g}")


def _skinned_primitive(packer: _Packer, rest_verts: np.ndarray, faces: Tensor, face_uvs: Tensor,
                       weights: np.ndarray) -> gl.Primitive:
    """The rest mesh split at UV seams, with JOINTS_0 / WEIGHTS_0 (4 influences) on every split vertex."""
    split = split_uv_seams(faces, face_uvs)
    idx = split.vertex_index
    normals = vertex_normals(torch.from_numpy(rest_verts), faces.cpu()).numpy()  # on the unsplit mesh: no seam
    joints4, weights4 = truncate_weights(weights)
    index_type = np.uint16 if len(idx) < 65535 else np.uint32
    attributes = gl.Attributes(
        POSITION=packer.accessor(rest_verts[idx].astype(np.float32), "VEC3", _ARRAY_BUFFER, bounds=True),
        NORMAL=packer.accessor(normals[idx].astype(np.float32), "VEC3", _ARRAY_BUFFER),
        TEXCOORD_0=packer.accessor(_glb_texcoords(split.uv), "VEC2", _ARRAY_BUFFER),
        JOINTS_0=packer.accessor(joints4[idx].astype(np.uint16), "VEC4", _ARRAY_BUFFER),
        WEIGHTS_0=packer.accessor(weights4[idx].astype(np.float32), "VEC4", _ARRAY_BUFFER))
    indices = packer.accessor(split.faces.reshape(-1).astype(index_type), "SCALAR", _ELEMENT_ARRAY_BUFFER)
    return gl.Primitive(attributes=attributes, indices=indices, material=0, mode=4)


def _skeleton(gltf: gl.GLTF2, packer: _Packer, rest_joints: np.ndarray, parents: list[int],
              names: Sequence[str]) -> None:
    """Nodes bird_root (0), joints (1..J) at the unscaled rest offsets, the mesh node (J+1) and the skin."""
    J = len(parents)
    offsets = rest_joints - rest_joints[np.maximum(parents, 0)]
    offsets[0] = rest_joints[0]
    gltf.nodes.append(gl.Node(name="bird_root", children=[_FIRST_JOINT_NODE]))
    for j in range(J):
        children = [_FIRST_JOINT_NODE + c for c in range(J) if parents[c] == j]
        gltf.nodes.append(gl.Node(name=names[j], translation=offsets[j].tolist(), children=children or None))
    gltf.nodes.append(gl.Node(name="bird", mesh=0, skin=0))
    # Rest pose: no rotations, so joint j's rest world matrix is translation(J_j) and its inverse translation(-J_j).
    ibm = np.tile(np.eye(4), (J, 1, 1))
    ibm[:, :3, 3] = -rest_joints
    ibm_column_major = np.ascontiguousarray(ibm.transpose(0, 2, 1)).astype(np.float32)
    gltf.skins.append(gl.Skin(name="avian", inverseBindMatrices=packer.accessor(ibm_column_major, "MAT4"),
                              joints=list(range(_FIRST_JOINT_NODE, _FIRST_JOINT_NODE + J)),
                              skeleton=_FIRST_JOINT_NODE))


def _channel(anim: gl.Animation, packer: _Packer, times: int, node: int, path: str, values: np.ndarray) -> None:
    kind = {3: "VEC3", 4: "VEC4"}[values.shape[-1]]
    anim.samplers.append(gl.AnimationSampler(input=times, output=packer.accessor(values.astype(np.float32), kind),
                                             interpolation="LINEAR"))
    anim.channels.append(gl.AnimationChannel(sampler=len(anim.samplers) - 1,
                                             target=gl.AnimationChannelTarget(node=node, path=path)))


def _animation(packer: _Packer, m: dict[str, np.ndarray], rest_joints: np.ndarray, parents: list[int],
               fps: float) -> gl.Animation:
    """Root TRS (axis flip included), then per joint a rotation channel and a constant scaled-offset channel."""
    T, J = len(m["root_scale"]), len(parents)
    times = packer.accessor((np.arange(T, dtype=np.float64) / fps).astype(np.float32), "SCALAR", bounds=True)
    anim = gl.Animation(name="video", samplers=[], channels=[])
    _channel(anim, packer, times, _ROOT_NODE, "translation", m["root_translation"] @ GLTF_FROM_WORLD.T)
    _channel(anim, packer, times, _ROOT_NODE, "rotation", quaternions_xyzw(GLTF_FROM_WORLD @ m["root_rotation"]))
    _channel(anim, packer, times, _ROOT_NODE, "scale", np.repeat(m["root_scale"][:, None], 3, axis=1))
    local = np.concatenate([np.tile(np.eye(3), (T, 1, 1, 1)), m["local_rotations"]], axis=1)  # (T, J, 3, 3)
    quats = quaternions_xyzw(local)  # (T, J, 4)
    scaled = (rest_joints[1:] - rest_joints[parents[1:]]) * m["bone_scale"][:, None]  # (J-1, 3)
    for j in range(J):
        _channel(anim, packer, times, _FIRST_JOINT_NODE + j, "rotation", quats[:, j])
        if j:
            _channel(anim, packer, times, _FIRST_JOINT_NODE + j, "translation", np.tile(scaled[j - 1], (T, 1)))
    return anim


def write_rigged_glb(path: str | Path, *, rest_verts, faces, face_uvs, weights, rest_joints, parents,
                     joint_names: Sequence[str], local_rotations, bone_scale, root_scale, root_rotation,
                     root_translation, texture_png: bytes, fps: float) -> None:
    """Write one skinned, textured, animated bird (glTF 2.0 binary); conventions in the module docstring.

    Args:
        path: output ``.glb``.
        rest_verts: (V, 3) model-frame rest vertices (template + residual); faces: (F, 3) int64;
        face_uvs: (F, 3, 2) per-corner UV in our [-1, 1] convention (v down);
        weights: (V, J) LBS weights, rows summing to 1 (stored as the 4 largest, renormalised);
        rest_joints: (J, 3) unscaled rest joints; parents: (J,) with parents[0] = -1; joint_names: J unique names;
        local_rotations: (T, J-1, 3, 3) rotation of joints 1..J-1 relative to their parent, per frame;
        bone_scale: (J-1,) factor of joint j's offset from its parent (index j-1), shared by all frames;
        root_scale (T,), root_rotation (T, 3, 3) proper rotations, root_translation (T, 3): the model-to-world
            similarity per frame (world = video camera frame, units = image heights);
        texture_png: PNG bytes, embedded; fps: frames per second (> 0), key t at t / fps seconds.
    Numpy arrays or CPU tensors; computed in float64, stored in float32.
    """
    t = _as_tensors(rest_verts=rest_verts, face_uvs=face_uvs, weights=weights, rest_joints=rest_joints,
                    local_rotations=local_rotations, bone_scale=bone_scale, root_scale=root_scale,
                    root_rotation=root_rotation, root_translation=root_translation)
    faces = torch.as_tensor(np.asarray(faces) if not isinstance(faces, Tensor) else faces, dtype=torch.int64)
    sizes = _check_mesh(t, faces)
    parents = _check_skeleton(parents, joint_names, sizes["J"])
    motion = {k: t[k] for k in ("local_rotations", "bone_scale", "root_scale", "root_rotation", "root_translation")}
    _check_motion(fps, sizes, **motion)
    m = {k: v.numpy() for k, v in t.items()}

    gltf = gl.GLTF2(asset=gl.Asset(version="2.0", generator="birdmesh adapt.export_rig"))
    packer = _Packer(gltf)
    primitive = _skinned_primitive(packer, m["rest_verts"], faces, t["face_uvs"], m["weights"])
    _material(packer, gltf, texture_png)
    gltf.meshes.append(gl.Mesh(name="bird", primitives=[primitive]))
    _skeleton(gltf, packer, m["rest_joints"], parents, list(joint_names))
    gltf.animations.append(_animation(packer, m, m["rest_joints"], parents, fps))
    gltf.scenes.append(gl.Scene(nodes=[_ROOT_NODE, _FIRST_JOINT_NODE + sizes["J"]]))
    gltf.scene = 0
    blob = packer.blob()
    gltf.buffers.append(gl.Buffer(byteLength=len(blob)))
    gltf.set_binary_blob(blob)
    gltf.save_binary(str(path))


def write_pose_json(path: str | Path, local_rotations, bone_scale, root_scale, root_rotation, root_translation,
                    joint_names: Sequence[str], fps: float) -> None:
    """Write the per-frame pose as JSON for driving another rig (the file states its conventions).

    Args:
        path: output ``.json``.
        local_rotations: (T, J-1, 3, 3) rotations of joints 1..J-1 relative to their parents; bone_scale (J-1,);
        root_scale (T,), root_rotation (T, 3, 3), root_translation (T, 3): model-to-world similarity per frame;
        joint_names: J names (joint 0 = the unrotated root); fps: frames per second (> 0).
    Layout: {"convention", "fps", "joint_names", "rotated_joints" (names of joints 1..J-1),
    "bone_scale" {name: factor}, "frames": [{"frame", "time", "joint_rotations_wxyz" (J-1, 4),
    "root": {"scale", "rotation_wxyz", "translation"}}]}.
    """
    t = _as_tensors(local_rotations=local_rotations, bone_scale=bone_scale, root_scale=root_scale,
                    root_rotation=root_rotation, root_translation=root_translation)
    names = [str(n) for n in joint_names]
    sizes = {"N": len(names) - 1}
    _check_motion(fps, sizes, **t)
    joint_q = rotation_matrix_to_quaternion(t["local_rotations"]).tolist()  # (T, J-1, 4) w x y z
    root_q = rotation_matrix_to_quaternion(t["root_rotation"]).tolist()
    frames = [{"frame": i, "time": i / fps, "joint_rotations_wxyz": joint_q[i],
               "root": {"scale": float(t["root_scale"][i]), "rotation_wxyz": root_q[i],
                        "translation": t["root_translation"][i].tolist()}}
              for i in range(sizes["T"])]
    doc = {
        "convention": ("Quaternions are (w, x, y, z), unit, acting on column vectors. joint_rotations_wxyz[k] "
                       "rotates joint k+1 (rotated_joints[k]) relative to its parent, in the avian model frame "
                       "(+y forward, +z up, -x the bird's left); joint 0 is not rotated. A joint's offset from its "
                       "parent is the rest offset times bone_scale[name]. World point = root.scale * "
                       "R(root.rotation_wxyz) @ model point + root.translation, world = the video camera frame "
                       "(x right, y down, z away from the viewer, units = image heights). time = frame / fps (s)."),
        "fps": float(fps), "joint_names": names, "rotated_joints": names[1:],
        "bone_scale": dict(zip(names[1:], t["bone_scale"].tolist())), "frames": frames}
    Path(path).write_text(json.dumps(doc, indent=1))
