"""Exports of an articulated adaptation: a rigged animation.glb, pose.json and per-frame OBJs placed as in the video.

Files (``--export rig``, the default for an articulated predictor):
    animation.glb   the skinned bird on its 25-joint skeleton, one rotation channel per joint, the root carrying each
                    frame's camera (``export_rig``); texture embedded
    pose.json       per frame: joint rotations (quaternions w x y z) and the root transform
    meshes/%05d.obj frame t's skinned mesh in the world frame: the video camera frame, x right, y down, z away from the
                    viewer, in units of the frame's height, origin at the frame's centre ((W - 1) / 2, (H - 1) / 2) in
                    pixels; so pixel (u, v) = (H x + (W - 1) / 2, H y + (H - 1) / 2). Blender shows a point (x, y, z)
                    of this frame at (x, -z, y) after importing animation.glb.
    cameras.json    as ever: per frame the weak-perspective camera of the canonical frame in original pixels
``--export morph`` writes today's morph-target animation.glb and canonical OBJs instead (``export.export_sequence``).
The OBJs and the GLB skin with the same 4-influence weights, so they agree to float precision.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mesh_recon.articulated import ArticulatedPrediction
from mesh_recon.skinned_template import SkinnedTemplate
from mesh_recon.skinning import forward_kinematics, linear_blend_skinning

from .export import PixelCamera, write_cameras, write_obj_sequence
from .export_gltf import png_bytes
from .export_rig import AVIAN_JOINT_NAMES, truncate_weights, write_pose_json, write_rigged_glb


@dataclass(frozen=True)
class RootTransforms:
    """Model frame -> world frame per frame: X_world = scale[t] * rotation[t] @ X + translation[t]; scale (T,),
    rotation (T, 3, 3), translation (T, 3), float64."""

    scale: Tensor
    rotation: Tensor
    translation: Tensor

    def apply(self, points: Tensor) -> Tensor:
        """(T, V, 3) model-frame points -> world points."""
        return self.scale[:, None, None] * points.double() @ self.rotation.transpose(1, 2) + self.translation[:, None]


def root_transforms(template: SkinnedTemplate, cameras: PixelCamera, frame_size: tuple[int, int]) -> RootTransforms:
    """Compose the template's model-to-canonical similarity with each frame's pixel camera and the world frame.

    Args:
        cameras: PixelCamera of T frames ((u, v) = scale (R X_canonical)[:2] + translation, depth (R X)[2]);
        frame_size: (W, H) of the original frames.
    """
    W, H = frame_size
    lin = template.to_canonical[:3].double().T  # c R_cub (X_canonical = c R_cub X + t_cub)
    t_cub = template.to_canonical[3].double()
    rot_cam = cameras.rotation.double().cpu()
    s = cameras.scale.double().cpu() / H
    c = lin[:, 0].norm()
    centre = torch.tensor([(W - 1) / 2, (H - 1) / 2], dtype=torch.float64)
    offset = torch.cat([(cameras.translation.double().cpu() - centre) / H,
                        torch.zeros(len(s), 1, dtype=torch.float64)], 1)
    return RootTransforms(s * c, rot_cam @ (lin / c), s[:, None] * (t_cub @ rot_cam.transpose(1, 2)) + offset)


def skinned_model_verts(template: SkinnedTemplate, pred: ArticulatedPrediction, weights: Tensor) -> Tensor:
    """(T, V, 3) model-frame meshes of the prediction's rotations, shared bones and residual, skinned with ``weights``
    (V, J) (e.g. the 4-influence ones the GLB stores)."""
    rest = (template.verts + pred.residual[0]).double().cpu()
    joints = template.joints.double().cpu()
    bones = pred.bone_scale[0].double().cpu().expand(len(pred.rotations), -1)
    rotations, positions = forward_kinematics(pred.rotations.double().cpu(), joints, template.parents.tolist(), bones)
    return linear_blend_skinning(rest, weights.double(), joints, rotations, positions)


def dense_truncated_weights(weights: Tensor) -> Tensor:
    """(V, J) the 4 largest weights of each vertex, renormalised, zeros elsewhere (what the GLB stores)."""
    joints, top = truncate_weights(weights.double().cpu().numpy())
    dense = np.zeros(tuple(weights.shape))
    np.put_along_axis(dense, joints, top, axis=1)
    return torch.from_numpy(dense)


def export_rigged(out_dir: Path, pred: ArticulatedPrediction, template: SkinnedTemplate, texture: np.ndarray,
                  fps: float, cameras: PixelCamera, camera_entries: list[dict], frame_size: tuple[int, int]
                  ) -> dict[str, Path]:
    """Write animation.glb (rigged), pose.json, meshes/%05d.obj (world frame) and cameras.json into ``out_dir``.

    Args:
        pred: the final prediction of T frames (bones and residual shared: frame 0's are used); texture (H, W, 3)
        uint8; cameras: PixelCamera of the T frames; camera_entries: their cameras.json entries; frame_size (W, H).
    """
    out_dir = Path(out_dir)
    roots = root_transforms(template, cameras, frame_size)
    weights = dense_truncated_weights(template.weights)
    world = roots.apply(skinned_model_verts(template, pred, weights))
    png = png_bytes(texture)
    write_obj_sequence(out_dir / "meshes", world, template.faces.cpu(), template.face_uvs.cpu().double(), png)
    motion = dict(local_rotations=pred.rotations.detach().cpu(), bone_scale=pred.bone_scale[0].detach().cpu(),
                  root_scale=roots.scale, root_rotation=roots.rotation, root_translation=roots.translation)
    write_rigged_glb(out_dir / "animation.glb", rest_verts=(template.verts + pred.residual[0]).detach().cpu(),
                     faces=template.faces.cpu(), face_uvs=template.face_uvs.cpu(), weights=template.weights.cpu(),
                     rest_joints=template.joints.cpu(), parents=template.parents.tolist(),
                     joint_names=AVIAN_JOINT_NAMES, texture_png=png, fps=fps, **motion)
    write_pose_json(out_dir / "pose.json", joint_names=AVIAN_JOINT_NAMES, fps=fps, **motion)
    write_cameras(out_dir / "cameras.json", camera_entries, fps, frame_size)
    return {"animation": out_dir / "animation.glb", "pose": out_dir / "pose.json", "meshes": out_dir / "meshes"}


def canonical_from_world(world, camera: dict, frame_size: tuple[int, int]) -> np.ndarray:
    """Undo the placement of a rig-mode OBJ: world points (V, 3) of one frame -> canonical points (V, 3), given that
    frame's cameras.json entry {"rotation", "scale", "translation"} and the original (W, H).

    world = (scale (R X)[:2] + translation - centre, scale (R X)[2]) / H with centre ((W - 1) / 2, (H - 1) / 2), so
    R X = (H world[:2] - translation + centre, H world[2]) / scale.
    """
    W, H = frame_size
    world = np.asarray(world, dtype=np.float64)
    centre = np.array([(W - 1) / 2, (H - 1) / 2])
    rotated = np.concatenate([H * world[:, :2] - np.asarray(camera["translation"], dtype=np.float64) + centre,
                              H * world[:, 2:]], 1) / float(camera["scale"])
    return rotated @ np.asarray(camera["rotation"], dtype=np.float64)
