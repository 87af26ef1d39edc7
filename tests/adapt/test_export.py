import io
import json

import numpy as np
import pygltflib
import pytest
import torch
import trimesh
from PIL import Image

from adapt.export import camera_entry, camera_to_pixels, corner_uvs, export_sequence, project_to_pixels
from mesh_recon.geometry import quaternion_to_rotation_matrix, random_quaternions, weak_perspective_project
from mesh_recon.mesh import face_spherical_uv, icosphere, load_obj, spherical_uv

T, FPS, FRAME_WH = 3, 12.5, (320, 240)
ROT_Z90 = [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]  # 90 degrees about z: (x, y, z) -> (-y, x, z)
_NUMPY = {5126: np.float32, 5123: np.uint16, 5125: np.uint32}
_WIDTH = {"SCALAR": 1, "VEC2": 2, "VEC3": 3}


def _sequence():
    verts, faces = icosphere(3)
    gen = torch.Generator().manual_seed(0)
    frames = torch.stack([verts * (1 + 0.2 * t) + 0.05 * torch.randn(verts.shape, generator=gen) for t in range(T)])
    frames[:, 0] = torch.tensor([1.0, 2.0, 3.0])  # the hand-made camera case projects this vertex
    texture = np.random.default_rng(0).integers(0, 256, (128, 256, 3), dtype=np.uint8)
    cameras = [{"rotation": ROT_Z90, "scale": 10.0 + t, "translation": [100.0, 50.0 + t]} for t in range(T)]
    return frames, faces, face_spherical_uv(verts, faces), texture, cameras


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    frames, faces, face_uvs, texture, cameras = _sequence()
    files = export_sequence(out, frames, faces, face_uvs, texture, FPS, cameras, FRAME_WH)
    return out, files, frames, faces, face_uvs, texture


def _obj_vt(face_uvs):
    """Expected OBJ texture coordinates per corner: u to the right, v up from the image's bottom."""
    return torch.stack([(face_uvs[..., 0] + 1) / 2, (1 - face_uvs[..., 1]) / 2], -1).numpy()


def _read_accessor(gltf, blob, index):
    acc = gltf.accessors[index]
    view = gltf.bufferViews[acc.bufferView]
    start = view.byteOffset + acc.byteOffset
    data = np.frombuffer(blob, _NUMPY[acc.componentType], acc.count * _WIDTH[acc.type], start)
    return data.reshape(acc.count, _WIDTH[acc.type])


def _load_glb(path):
    gltf = pygltflib.GLTF2().load(str(path))
    return gltf, gltf.binary_blob()


def test_objs_round_trip_each_frame_with_shared_faces_and_uvs(exported):
    out, files, frames, faces, face_uvs, _ = exported
    assert [p.name for p in files.meshes] == [f"{t:05d}.obj" for t in range(T)]
    topology = set()
    for t, path in enumerate(files.meshes):
        verts, loaded_faces = load_obj(path)
        torch.testing.assert_close(verts, frames[t], atol=1e-5, rtol=0)
        assert torch.equal(loaded_faces, faces)
        lines = path.read_text().splitlines()
        assert lines[:2] == ["mtllib material.mtl", "usemtl material0"]
        topology.add("\n".join(line for line in lines if line.startswith(("vt ", "f "))))
    assert len(topology) == 1


def test_obj_loads_in_trimesh_with_texture_and_per_corner_uvs(exported):
    out, files, frames, faces, face_uvs, texture = exported
    mesh = trimesh.load(files.meshes[1], process=False)
    assert isinstance(mesh.visual, trimesh.visual.TextureVisuals)
    assert np.array_equal(np.asarray(mesh.visual.material.image.convert("RGB")), texture)
    # trimesh splits vertices at the seam but keeps face order: compare per corner.
    np.testing.assert_allclose(mesh.vertices[mesh.faces], frames[1][faces].numpy(), atol=1e-5)
    np.testing.assert_allclose(mesh.visual.uv[mesh.faces], _obj_vt(face_uvs), atol=1e-5)


def test_seam_faces_take_uvs_from_one_side_for_per_vertex_input(tmp_path):
    frames, faces, _, texture, cameras = _sequence()
    verts = icosphere(3)[0]
    naive = spherical_uv(verts)  # per-vertex: faces across the seam span the whole texture width
    assert float((naive[faces][..., 0].amax(1) - naive[faces][..., 0].amin(1)).max()) > 1.5
    files = export_sequence(tmp_path, frames, faces, naive, texture, FPS, cameras, FRAME_WH)
    mesh = trimesh.load(files.meshes[0], process=False)
    u = mesh.visual.uv[mesh.faces][..., 0]  # (F, 3) in texture widths
    assert (u.max(1) - u.min(1)).max() < 0.5
    gltf, blob = _load_glb(files.animation)
    prim = gltf.meshes[0].primitives[0]
    s = _read_accessor(gltf, blob, prim.attributes.TEXCOORD_0)[_read_accessor(gltf, blob, prim.indices)
                                                               .reshape(-1, 3)][..., 0]
    assert (s.max(1) - s.min(1)).max() < 0.5


def test_corner_uvs_moves_only_the_negative_side_of_seam_faces():
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    uv = torch.tensor([[0.9, 0.0], [-0.95, 0.1], [0.95, 0.2], [0.5, 0.3]])
    got = corner_uvs(faces, uv)
    expected = torch.tensor([[[0.9, 0.0], [1.05, 0.1], [0.95, 0.2]], [[0.9, 0.0], [0.95, 0.2], [0.5, 0.3]]])
    torch.testing.assert_close(got, expected.double())


def test_glb_morph_targets_reproduce_every_frame(exported):
    out, files, frames, faces, face_uvs, _ = exported
    gltf, blob = _load_glb(files.animation)
    assert len(gltf.meshes) == 1 and len(gltf.meshes[0].primitives) == 1
    prim = gltf.meshes[0].primitives[0]
    assert len(prim.targets) == T
    index = _read_accessor(gltf, blob, prim.indices).reshape(-1, 3).astype(np.int64)
    base = _read_accessor(gltf, blob, prim.attributes.POSITION)
    for t, target in enumerate(prim.targets):
        shape = base + _read_accessor(gltf, blob, target["POSITION"])
        np.testing.assert_allclose(shape[index], frames[t][faces].numpy(), atol=1e-5)  # face order is kept
    texcoord = _read_accessor(gltf, blob, prim.attributes.TEXCOORD_0)[index]
    expected = np.stack([(face_uvs[..., 0] + 1) / 2, (face_uvs[..., 1] + 1) / 2], -1)  # glTF: (0, 0) top-left
    np.testing.assert_allclose(texcoord, expected, atol=1e-6)


def test_glb_animation_keys_one_frame_per_time_step(exported):
    gltf, blob = _load_glb(exported[1].animation)
    (animation,) = gltf.animations
    (channel,) = animation.channels
    assert channel.target.path == "weights" and gltf.nodes[channel.target.node].mesh == 0
    sampler = animation.samplers[channel.sampler]
    times = _read_accessor(gltf, blob, sampler.input)[:, 0]
    np.testing.assert_allclose(times, np.arange(T) / FPS, rtol=1e-6)
    weights = _read_accessor(gltf, blob, sampler.output)
    assert weights.shape == (T * T, 1)
    np.testing.assert_array_equal(weights.reshape(T, T), np.eye(T))


def test_glb_layout_bounds_and_embedded_texture(exported):
    out, files, frames, faces, face_uvs, texture = exported
    gltf, blob = _load_glb(files.animation)
    assert gltf.buffers[0].byteLength == len(blob) and len(blob) % 4 == 0
    for view in gltf.bufferViews:
        assert view.byteOffset % 4 == 0 and view.byteOffset + view.byteLength <= len(blob)
    prim = gltf.meshes[0].primitives[0]
    for index in [prim.attributes.POSITION] + [target["POSITION"] for target in prim.targets]:
        acc, data = gltf.accessors[index], _read_accessor(gltf, blob, index)
        assert acc.min == data.min(0).tolist() and acc.max == data.max(0).tolist()
    image = gltf.images[gltf.textures[gltf.materials[0].pbrMetallicRoughness.baseColorTexture.index].source]
    view = gltf.bufferViews[image.bufferView]
    png = Image.open(io.BytesIO(blob[view.byteOffset:view.byteOffset + view.byteLength]))
    assert image.mimeType == "image/png" and np.array_equal(np.asarray(png), texture)


def test_glb_loads_in_trimesh_upright_with_texture(exported):
    scene = trimesh.load(exported[1].animation, force="scene")
    (mesh,) = scene.geometry.values()
    assert isinstance(mesh.visual, trimesh.visual.TextureVisuals)
    assert mesh.visual.material.baseColorTexture.size == (256, 128)
    # The node turns canonical z-up into glTF y-up: canonical +z ends on the scene's +y.
    transform, _ = scene.graph[scene.graph.nodes_geometry[0]]
    np.testing.assert_allclose(transform[:3, :3] @ [0, 0, 1], [0, 1, 0], atol=1e-6)


def test_cameras_json_projects_a_canonical_point_to_the_hand_computed_pixel(exported):
    out, files, *_ = exported
    doc = json.loads(files.cameras.read_text())
    assert (doc["fps"], doc["width"], doc["height"], len(doc["frames"])) == (FPS, *FRAME_WH, T)
    X = load_obj(files.meshes[2])[0][0].numpy()  # (1, 2, 3)
    # R X = (-2, 1, 3); scale 12, translation (100, 52) -> u = 12 * -2 + 100, v = 12 * 1 + 52, depth 3.
    np.testing.assert_allclose(project_to_pixels(X, doc["frames"][2])[0], [76.0, 64.0, 3.0], atol=1e-5)


def test_camera_to_pixels_hand_case():
    cam = torch.tensor([0.5, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    camera = camera_to_pixels(cam, torch.tensor([10.0, 20.0, 110.0, 120.0]))
    # X = (1, 0, 0): crop NDC (0.5, 0); the 100-pixel box spans pixel edges 10..110 -> centre coords 10 + 75 - 0.5.
    np.testing.assert_allclose(project_to_pixels([[1.0, 0.0, 0.0]], camera_entry(camera))[0], [84.5, 69.5, 0.0])


def test_camera_to_pixels_agrees_with_projecting_in_the_crop_then_mapping_pixels():
    gen = torch.Generator().manual_seed(1)
    B, S, processed, original = 4, 64, (320, 180), (1280, 720)
    cams = torch.cat([0.3 + torch.rand(B, 1, generator=gen), torch.rand(B, 2, generator=gen) - 0.5,
                      random_quaternions(B, gen)], 1).double()
    corner = torch.rand(B, 2, generator=gen).double() * 150 - 20
    side = 40 + 100 * torch.rand(B, 1, generator=gen).double()
    boxes = torch.cat([corner, corner + side], 1)
    X = torch.randn(B, 20, 3, generator=gen).double()
    # Independent path: crop NDC -> pixels of an S x S crop -> processed-frame pixels -> original pixels.
    ndc = weak_perspective_project(X, cams)
    crop_px = (ndc[..., :2] + 1) * S / 2 - 0.5
    frame_px = corner[:, None] + (crop_px + 0.5) * side[:, None] / S - 0.5
    expected = (frame_px + 0.5) * (original[0] / processed[0]) - 0.5
    camera = camera_to_pixels(cams, boxes, frame_size=original, box_frame_size=processed)
    for b in range(B):
        got = project_to_pixels(X[b], camera_entry(camera_to_pixels(cams[b], boxes[b], original, processed)))
        np.testing.assert_allclose(got[:, :2], expected[b].numpy(), atol=1e-9)
        np.testing.assert_allclose(got[:, 2], ndc[b, :, 2].numpy(), atol=1e-9)  # depth unchanged
    torch.testing.assert_close(camera.rotation, quaternion_to_rotation_matrix(cams[:, 3:]))
    assert torch.allclose(torch.det(camera.rotation), torch.ones(B, dtype=torch.float64))


@pytest.mark.parametrize("change, match", [
    (dict(cameras=[]), "cameras: expected one entry per frame"),
    (dict(texture=np.zeros((8, 8, 3), np.float32)), "texture: expected"),
    (dict(fps=0.0), "fps: expected"),
    (dict(faces=torch.tensor([[0, 1, 9999]])), "faces: expected indices"),
])
def test_export_sequence_rejects_bad_inputs(tmp_path, change, match):
    frames, faces, face_uvs, texture, cameras = _sequence()
    args = dict(verts=frames, faces=faces, uv=face_uvs, texture=texture, fps=FPS, cameras=cameras)
    args.update(change)
    with pytest.raises(ValueError, match=match):
        export_sequence(tmp_path, frame_size=FRAME_WH, **args)


def test_corner_uvs_gives_a_pole_corner_the_mean_u_of_its_face():
    faces = torch.tensor([[0, 1, 2]])
    uv = torch.tensor([[0.0, -1.0], [0.9, -0.8], [-0.9, -0.8]])  # pole, then two corners across the seam
    expected = torch.tensor([[[1.0, -1.0], [0.9, -0.8], [1.1, -0.8]]], dtype=torch.float64)
    torch.testing.assert_close(corner_uvs(faces, uv), expected)


def test_corner_uvs_keeps_the_templates_continuous_uvs():
    verts, faces = icosphere(3)
    face_uvs = face_spherical_uv(verts, faces)
    torch.testing.assert_close(corner_uvs(faces, face_uvs), face_uvs.double())
