"""Tests of the rigged GLB writer: an independent numpy glTF skinning re-poses the file and must give the mesh of
``forward_kinematics`` + ``linear_blend_skinning`` (4 largest weights) and the root similarity; Blender (``bpy``)
imports it and must pose the same mesh; the pose JSON round-trips."""
from __future__ import annotations

import json

import numpy as np
import pygltflib
import pytest
import torch

from blender_tools import run_blender, skip_without_bpy

from adapt.export_gltf import png_bytes, split_uv_seams
from adapt.export_rig import AVIAN_JOINT_NAMES, GLTF_FROM_WORLD, write_pose_json, write_rigged_glb
from birdmesh.runtime import data_root
from mesh_recon.bird_model import axis_angle_to_matrix, load_bird_model
from mesh_recon.geometry import quaternion_to_rotation_matrix
from mesh_recon.skinned_template import template_face_uvs
from mesh_recon.skinning import forward_kinematics, linear_blend_skinning

T, FPS = 4, 10.0  # integer fps: Blender 5.0's importer maps seconds to frames with render.fps * fps_base
_NUMPY = {5121: np.uint8, 5123: np.uint16, 5125: np.uint32, 5126: np.float32}
_WIDTH = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT4": 16}
_HAS_MODEL = (data_root() / "bird_model" / "avian_mesh" / "bird_eccv.json").is_file()
blender_test = pytest.mark.blender  # select with `pytest -m blender`; the run is recorded by record_property
needs_model = pytest.mark.skipif(not _HAS_MODEL, reason=f"avian model not in {data_root()} (shared data absent)")


def _worst(err: np.ndarray, diag: float) -> str:
    return f"max error {err.max():.3g} = {err.max() / diag:.3g} of the diagonal at vertex {err.argmax()}"


@pytest.fixture(scope="module")
def rig():
    """The real avian template with a smooth residual and a small random pose (torch float64)."""
    if not _HAS_MODEL:
        pytest.skip(f"avian model not in {data_root()} (shared data absent)")
    torch.set_num_threads(1)
    model = load_bird_model()
    canonical = model.verts @ (model.cub_scale * model.cub_rotation.T) + model.cub_translation
    gen = torch.Generator().manual_seed(0)
    J = model.joints.shape[0]
    verts = model.verts
    residual = 0.3 * torch.sin(verts @ torch.randn(3, 3, generator=gen, dtype=torch.float64) / 4)  # smooth field
    return dict(
        rest_verts=verts + residual, faces=model.faces, face_uvs=template_face_uvs(canonical.float(), model.faces),
        weights=model.weights, rest_joints=model.joints, parents=model.parents, joint_names=AVIAN_JOINT_NAMES,
        local_rotations=axis_angle_to_matrix(0.3 * torch.randn(T, J - 1, 3, generator=gen, dtype=torch.float64)),
        bone_scale=0.8 + 0.7 * torch.rand(J - 1, generator=gen, dtype=torch.float64),
        root_scale=0.05 + 0.02 * torch.rand(T, generator=gen, dtype=torch.float64),
        root_rotation=axis_angle_to_matrix(torch.randn(T, 3, generator=gen, dtype=torch.float64)),
        root_translation=torch.randn(T, 3, generator=gen, dtype=torch.float64))


@pytest.fixture(scope="module")
def glb(rig, tmp_path_factory):
    path = tmp_path_factory.mktemp("rig") / "bird.glb"
    texture = np.random.default_rng(0).integers(0, 256, (32, 64, 3), dtype=np.uint8)
    write_rigged_glb(path, **rig, texture_png=png_bytes(texture), fps=FPS)
    return path


def _top4_weights(weights: np.ndarray) -> np.ndarray:
    """(V, J) -> (V, J) keeping each row's 4 largest weights, renormalised (what JOINTS_0 / WEIGHTS_0 can hold)."""
    keep = np.argsort(-weights, axis=1, kind="stable")[:, :4]
    out = np.zeros_like(weights)
    np.put_along_axis(out, keep, np.take_along_axis(weights, keep, 1), 1)
    return out / out.sum(1, keepdims=True)


def expected_world(rig: dict, weights: np.ndarray | None = None, bone_scale=None, transpose: bool = False):
    """(T, V, 3) world vertices from the torch skinning: the reference the file must reproduce."""
    local = rig["local_rotations"].transpose(-1, -2) if transpose else rig["local_rotations"]
    scale = rig["bone_scale"] if bone_scale is None else bone_scale
    rot, pos = forward_kinematics(local, rig["rest_joints"], rig["parents"].tolist(), scale.expand(T, -1))
    w = torch.from_numpy(_top4_weights(rig["weights"].numpy()) if weights is None else weights)
    model_frame = linear_blend_skinning(rig["rest_verts"], w, rig["rest_joints"], rot, pos)
    world = rig["root_scale"][:, None, None] * model_frame @ rig["root_rotation"].transpose(1, 2)
    return (world + rig["root_translation"][:, None]).numpy()


# ---- an independent glTF reader and skinning in numpy ----

def _accessor(gltf, blob: bytes, index: int) -> np.ndarray:
    acc = gltf.accessors[index]
    view = gltf.bufferViews[acc.bufferView]
    width = _WIDTH[acc.type]
    data = np.frombuffer(blob, _NUMPY[acc.componentType], acc.count * width, view.byteOffset + (acc.byteOffset or 0))
    return data.reshape(acc.count, width).astype(np.float64)


def _quat_xyzw_to_matrix(q: np.ndarray) -> np.ndarray:
    x, y, z, w = q / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def _trs_matrix(translation, rotation, scale) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = _quat_xyzw_to_matrix(np.asarray(rotation if rotation is not None else [0, 0, 0, 1], float))
    m[:3, :3] *= np.asarray(scale if scale is not None else [1, 1, 1], float)[None]
    m[:3, 3] = translation if translation is not None else 0.0
    return m


def _world_matrices(gltf, blob: bytes, key: int) -> list[np.ndarray]:
    """World matrix of every node with each animated channel taken at its key ``key`` (glTF column vectors)."""
    trs = [{"translation": n.translation, "rotation": n.rotation, "scale": n.scale} for n in gltf.nodes]
    for anim in gltf.animations:
        for channel in anim.channels:
            sampler = anim.samplers[channel.sampler]
            assert _accessor(gltf, blob, sampler.input)[key, 0] == np.float32(key / FPS)
            trs[channel.target.node][channel.target.path] = _accessor(gltf, blob, sampler.output)[key]
    world = [None] * len(gltf.nodes)

    def visit(node: int, parent: np.ndarray) -> None:
        world[node] = parent @ _trs_matrix(**trs[node])
        for child in gltf.nodes[node].children or []:
            visit(child, world[node])

    for root in gltf.scenes[gltf.scene].nodes:
        visit(root, np.eye(4))
    return world


def numpy_pose(path, key: int) -> np.ndarray:
    """(V', 3) the file's skinned mesh at animation key ``key``, in glTF world coordinates."""
    gltf = pygltflib.GLTF2().load(str(path))
    blob = gltf.binary_blob()
    (mesh_node,) = [i for i, n in enumerate(gltf.nodes) if n.mesh is not None]
    attributes = gltf.meshes[gltf.nodes[mesh_node].mesh].primitives[0].attributes
    skin = gltf.skins[gltf.nodes[mesh_node].skin]
    world = _world_matrices(gltf, blob, key)
    ibm = _accessor(gltf, blob, skin.inverseBindMatrices).reshape(-1, 4, 4).transpose(0, 2, 1)  # column-major
    joint_mats = np.stack([np.linalg.inv(world[mesh_node]) @ world[n] @ ibm[k] for k, n in enumerate(skin.joints)])
    pos = _accessor(gltf, blob, attributes.POSITION)
    joints = _accessor(gltf, blob, attributes.JOINTS_0).astype(np.int64)
    weights = _accessor(gltf, blob, attributes.WEIGHTS_0)
    blended = (weights[:, :, None, None] * joint_mats[joints]).sum(1)  # (V', 4, 4)
    return (blended[:, :3, :3] @ pos[:, :, None])[..., 0] + blended[:, :3, 3]


@needs_model
def test_numpy_reposing_of_the_file_matches_torch_skinning(rig, glb):
    vertex_index = split_uv_seams(rig["faces"], rig["face_uvs"]).vertex_index
    expected = expected_world(rig)[:, vertex_index]
    # Wrong variants the test must tell apart: bone scales ignored, joint rotations transposed.
    wrong = [expected_world(rig, bone_scale=torch.ones(24, dtype=torch.float64))[:, vertex_index],
             expected_world(rig, transpose=True)[:, vertex_index]]
    for key in (0, T // 2, T - 1):
        got = numpy_pose(glb, key) @ GLTF_FROM_WORLD.T  # glTF -> video camera frame (G is its own inverse)
        diag = np.linalg.norm(np.ptp(expected[key], axis=0))
        err = np.linalg.norm(got - expected[key], axis=1)
        print(f"key {key}: numpy re-pose {_worst(err, diag)}")
        assert err.max() <= 1e-5 * diag, _worst(err, diag)
        for variant in wrong:
            assert np.linalg.norm(got - variant[key], axis=1).max() > 100 * 1e-5 * diag


@needs_model
def test_file_layout(rig, glb):
    gltf = pygltflib.GLTF2().load(str(glb))
    blob = gltf.binary_blob()
    (skin,) = gltf.skins
    assert [gltf.nodes[n].name for n in skin.joints] == list(AVIAN_JOINT_NAMES)
    attributes = gltf.meshes[0].primitives[0].attributes
    weights = _accessor(gltf, blob, attributes.WEIGHTS_0)
    assert np.allclose(weights.sum(1), 1, atol=1e-6) and np.all(np.diff(weights, axis=1) <= 0)
    (anim,) = gltf.animations
    targets = {(gltf.nodes[c.target.node].name, c.target.path) for c in anim.channels}
    assert {(name, "rotation") for name in AVIAN_JOINT_NAMES} <= targets
    assert {("bird_root", p) for p in ("translation", "rotation", "scale")} <= targets
    assert all(s.interpolation == "LINEAR" for s in anim.samplers)
    assert gltf.images[0].mimeType == "image/png"


def test_joint_names_are_unique_and_sided_by_x():
    assert len(set(AVIAN_JOINT_NAMES)) == 25
    if _HAS_MODEL:
        joints = load_bird_model().joints
        for j, name in enumerate(AVIAN_JOINT_NAMES):
            side = name.split("_")[0] if not name.endswith("_base") else "mid"  # *_base joints sit on the midline
            sign = {"left": -1.0, "right": 1.0}.get(side, 0.0)  # the model frame's -x is the bird's left
            assert (joints[j, 0] * sign > 0.5) if sign else abs(joints[j, 0]) < 0.01, (name, joints[j])


def test_pose_json_round_trips(tmp_path):
    gen = torch.Generator().manual_seed(1)
    local = axis_angle_to_matrix(2.0 * torch.randn(3, 24, 3, generator=gen, dtype=torch.float64))
    root = axis_angle_to_matrix(2.0 * torch.randn(3, 3, generator=gen, dtype=torch.float64))
    bone, scale, trans = torch.rand(24, dtype=torch.float64) + 0.5, torch.rand(3, dtype=torch.float64), torch.randn(3, 3)
    path = tmp_path / "pose.json"
    write_pose_json(path, local, bone, scale, root, trans, AVIAN_JOINT_NAMES, 25.0)
    doc = json.loads(path.read_text())
    assert "(w, x, y, z)" in doc["convention"] and doc["rotated_joints"] == list(AVIAN_JOINT_NAMES[1:])
    back = quaternion_to_rotation_matrix(torch.tensor([f["joint_rotations_wxyz"] for f in doc["frames"]], dtype=torch.float64))
    assert torch.allclose(back, local, atol=1e-12)
    back_root = quaternion_to_rotation_matrix(torch.tensor([f["root"]["rotation_wxyz"] for f in doc["frames"]], dtype=torch.float64))
    assert torch.allclose(back_root, root, atol=1e-12)
    assert np.allclose([f["root"]["translation"] for f in doc["frames"]], trans.numpy(), atol=1e-6)
    assert np.allclose([f["root"]["scale"] for f in doc["frames"]], scale.numpy())
    assert np.allclose(list(doc["bone_scale"].values()), bone.numpy()) and doc["frames"][2]["time"] == 2 / 25.0


def test_bad_inputs_are_named(rig, tmp_path):
    bad = dict(rig, bone_scale=rig["bone_scale"][:-1])
    with pytest.raises(ValueError, match="bone_scale"):
        write_rigged_glb(tmp_path / "x.glb", **bad, texture_png=b"", fps=FPS)
    with pytest.raises(ValueError, match="joint_names"):
        write_rigged_glb(tmp_path / "x.glb", **dict(rig, joint_names=["a"] * 25), texture_png=b"", fps=FPS)


@blender_test
@needs_model
@pytest.mark.parametrize("guess_bind_pose", [True, False])
def test_blender_imports_and_poses_the_same_mesh(rig, glb, tmp_path, record_property, guess_bind_pose):
    skip_without_bpy()
    frames = [0, T // 2, T - 1]
    info, got, seconds = run_blender(glb, frames, FPS, tmp_path, guess_bind_pose)
    assert (info["armatures"], info["meshes"], info["skinned"]) == (1, 1, [True])
    assert info["bones"] == list(AVIAN_JOINT_NAMES)
    # Keys at t / FPS seconds, scene at FPS frames per second: video frame t is Blender frame t.
    assert info["frame_ranges"] and all(r == [0.0, T - 1.0] for r in info["frame_ranges"]), info["frame_ranges"]
    expected = expected_world(rig)[:, split_uv_seams(rig["faces"], rig["face_uvs"]).vertex_index]
    # The importer keeps the file's vertex order (merge_vertices is off and every vertex is used), so vertices
    # are compared one to one, not as point sets.
    assert got.shape == (len(frames),) + expected.shape[1:], (got.shape, expected.shape)
    worst = 0.0
    for k, f in enumerate(frames):
        diag = np.linalg.norm(np.ptp(expected[f], axis=0))
        err = np.linalg.norm(got[k] - expected[f], axis=1)
        worst = max(worst, err.max() / diag)
        print(f"Blender {info['version']} frame {f}: {_worst(err, diag)} ({seconds:.1f} s)")
        assert err.max() <= 1e-3 * diag, _worst(err, diag)
    record_property("blender_version", info["version"])
    record_property("blender_max_error_over_diagonal", worst)
