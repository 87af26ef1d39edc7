"""Tests of mesh_recon.mesh: template, symmetry, UV, Laplacians, ARAP, normals, OBJ."""
import math

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial.transform import Rotation

from mesh_recon.geometry import random_rotations
from mesh_recon.mesh import (arap_energy, cotangent_laplacian, edge_lengths, face_normals, face_spherical_uv,
                             face_uv_sampler, icosphere, laplacian_smoothing_loss, load_obj, make_symmetric,
                             mesh_edges, save_obj, spherical_uv, symmetrize_vertices, uniform_laplacian,
                             vertex_normals)


def test_icosphere_counts_and_orientation():
    verts, faces = icosphere(3)
    assert verts.shape == (642, 3) and faces.shape == (1280, 3)
    assert verts.dtype == torch.float32 and faces.dtype == torch.int64
    mesh = trimesh.Trimesh(verts.numpy(), faces.numpy(), process=False)
    assert mesh.is_watertight and mesh.is_winding_consistent and mesh.volume > 0  # outward winding
    assert torch.allclose(verts.norm(dim=1), torch.ones(642))
    assert icosphere(0)[0].shape == (12, 3) and icosphere(4)[1].shape == (5120, 3)
    with pytest.raises(ValueError, match="level"):
        icosphere(-1)


def test_make_symmetric_orders_centre_right_left():
    verts, faces = icosphere(3)
    sym = make_symmetric(verts, faces)
    Vc, Vr = sym.num_centre, sym.num_right
    assert Vc + 2 * Vr == 642
    x = sym.verts[:, 0]
    assert (x[:Vc].abs() < 1e-6).all() and (x[Vc:Vc + Vr] > 0).all() and (x[Vc + Vr:] < 0).all()
    mirror = sym.verts * torch.tensor([-1.0, 1.0, 1.0])
    assert torch.allclose(sym.verts[Vc + Vr:], mirror[sym.left_partner], atol=1e-6)
    assert torch.allclose(sym.verts[sym.mirror_index], mirror, atol=1e-6)
    # same faces, re-indexed: the re-ordered mesh is the input mesh
    assert torch.allclose(sym.verts[sym.faces], verts[faces])
    assert torch.equal(sym.face_mirror[sym.face_mirror], torch.arange(1280))
    assert torch.allclose(sym.verts[sym.faces[sym.face_mirror]].mean(1), mirror[sym.faces].mean(1), atol=1e-6)


def test_symmetrize_vertices_derives_left_from_right():
    verts, faces = icosphere(2)
    sym = make_symmetric(verts, faces)
    independent = sym.verts[None, :sym.num_centre + sym.num_right].repeat(2, 1, 1)
    assert torch.allclose(symmetrize_vertices(independent, sym)[0], sym.verts, atol=1e-6)
    independent = independent + torch.randn_like(independent) * 0.1
    full = symmetrize_vertices(independent, sym)
    assert torch.allclose(full[:, sym.mirror_index] * torch.tensor([-1.0, 1.0, 1.0]), full)
    with pytest.raises(ValueError, match="verts_indep"):
        symmetrize_vertices(sym.verts[None], sym)


def test_make_symmetric_rejects_asymmetric_mesh():
    verts, faces = icosphere(1)
    with pytest.raises(ValueError, match="mirror-symmetric"):
        make_symmetric(verts + torch.tensor([0.1, 0.0, 0.0]), faces)


def test_spherical_uv_convention():
    points = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, -1.0], [-1.0, 0.0, 0.0]])
    uv = spherical_uv(points * 3.0)
    expected = torch.tensor([[0.0, 0.0], [0.5, 0.0], [0.0, -1.0], [0.0, 1.0], [-0.5, 0.0]])
    assert torch.allclose(uv, expected, atol=1e-6)
    verts, _ = icosphere(2)
    mirrored = spherical_uv(verts * torch.tensor([-1.0, 1.0, 1.0]))
    off_seam = spherical_uv(verts)[:, 0].abs() < 0.999
    assert torch.allclose(mirrored[off_seam], spherical_uv(verts)[off_seam] * torch.tensor([-1.0, 1.0]), atol=1e-6)


def test_face_spherical_uv_is_continuous_across_seam_and_pole():
    verts, faces = icosphere(3)
    face_uv = face_spherical_uv(verts, faces)
    u = face_uv[..., 0]
    assert (u.amax(1) - u.amin(1)).max() < 0.5  # no face spans the whole texture (near-pole faces ~0.35)
    assert (u.amax(1) > 1).any()  # seam faces exist and are unwrapped past 1


def test_face_uv_sampler_shape_and_corners():
    verts, faces = icosphere(3)
    sampler = face_uv_sampler(verts, faces, tex_size=6)
    assert sampler.shape == (1280, 6, 6, 2) and sampler.abs().max() <= 1
    assert torch.allclose(sampler[:, 0, 0], spherical_uv(verts[faces[:, 0]]), atol=1e-6)  # (a, b) = (0, 0) = v0


def dense_uniform_laplacian(faces, V):
    """Reference: loop over faces, neighbour sets, x_i - mean of neighbours."""
    neighbours = [set() for _ in range(V)]
    for a, b, c in faces.tolist():
        for i, j in ((a, b), (b, c), (c, a)):
            neighbours[i].add(j)
            neighbours[j].add(i)
    L = torch.eye(V)
    for i, ns in enumerate(neighbours):
        for j in ns:
            L[i, j] = -1.0 / len(ns)
    return L


def dense_cotangent_laplacian(verts, faces):
    """Reference: loop over faces; the angle at corner k adds cot / 2 to the opposite edge."""
    V = verts.shape[0]
    L = torch.zeros(V, V, dtype=verts.dtype)
    for face in faces.tolist():
        for k in range(3):
            o, i, j = face[k], face[(k + 1) % 3], face[(k + 2) % 3]
            u, w = verts[i] - verts[o], verts[j] - verts[o]
            cot = float(u @ w) / float(torch.linalg.cross(u, w).norm())
            for a, b in ((i, j), (j, i)):
                L[a, b] -= cot / 2
                L[a, a] += cot / 2
    return L


def test_laplacians_match_loop_references():
    verts, faces = icosphere(1)
    verts = verts.double() + torch.rand(42, 3, dtype=torch.float64) * 0.1
    assert torch.allclose(uniform_laplacian(faces, 42).to_dense(), dense_uniform_laplacian(faces, 42), atol=1e-6)
    assert torch.allclose(cotangent_laplacian(verts, faces).to_dense(), dense_cotangent_laplacian(verts, faces))
    ones = torch.ones(42, 1, dtype=torch.float64)
    assert torch.allclose(torch.sparse.mm(cotangent_laplacian(verts, faces), ones), 0 * ones, atol=1e-12)


def test_cotangent_laplacian_gives_mean_curvature_on_sphere():
    verts, faces = icosphere(3)
    lx = torch.sparse.mm(cotangent_laplacian(verts.double(), faces, normalize=True), verts.double())
    # unit sphere: L x ~ 2 H n with H = 1 (barycentric areas: the 12 valence-5 vertices are off by ~14 %)
    norm = lx.norm(dim=1)
    assert norm.median() == pytest.approx(2.0, rel=0.02) and ((norm - 2).abs() < 0.3).all()
    assert (torch.nn.functional.cosine_similarity(lx, verts.double()) > 0.99).all()


def test_laplacian_smoothing_loss_sparse_equals_dense():
    verts, faces = icosphere(2)
    batch = verts[None] * torch.tensor([[[1.0]], [[2.0]]])
    L = uniform_laplacian(faces, verts.shape[0])
    expected = (L.to_dense() @ batch).square().sum(-1).mean()
    assert torch.allclose(laplacian_smoothing_loss(batch, L), expected)
    assert torch.allclose(laplacian_smoothing_loss(batch, L.to_dense()), expected)


def arap_reference(verts_a, verts_b, faces):
    """Reference: per vertex, Kabsch rotation of the one-ring with scipy, then the mean residual."""
    edges = mesh_edges(faces).tolist()
    ring = {}
    for i, j in edges:
        ring.setdefault(i, []).append(j)
        ring.setdefault(j, []).append(i)
    total, count = 0.0, 0
    for i, js in ring.items():
        da = (verts_a[i] - verts_a[js]).numpy()
        db = (verts_b[i] - verts_b[js]).numpy()
        rot, _ = Rotation.align_vectors(db, da)  # rot.apply(da) ~ db
        total += float(((db - rot.apply(da)) ** 2).sum())
        count += len(js)
    return total / count


def test_arap_energy():
    verts, faces = icosphere(1)
    verts = verts.double()
    rot = random_rotations(1, torch.Generator().manual_seed(0), dtype=torch.float64)[0]
    rigid = verts @ rot.T + torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)
    assert arap_energy(verts, rigid, faces) < 1e-20
    bent = verts + 0.1 * torch.sin(3 * verts[:, :1]) * torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    assert float(arap_energy(verts, bent, faces)) == pytest.approx(arap_reference(verts, bent, faces), rel=1e-9)
    batch = torch.stack([rigid, bent]).requires_grad_(True)
    energy = arap_energy(verts.expand(2, -1, -1), batch, faces)
    assert energy.shape == (2,)
    energy.sum().backward()
    assert torch.isfinite(batch.grad).all() and batch.grad[1].abs().sum() > 0
    # gradient: rotations fixed at their optimum (envelope theorem) -> matches finite differences
    bent_var = bent.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda b: arap_energy(verts, b, faces), (bent_var,), atol=1e-7)


def test_edges_and_normals():
    verts, faces = icosphere(3)
    assert mesh_edges(faces).shape == (1920, 2)  # Euler: V - E + F = 2
    lengths = edge_lengths(verts[None].repeat(2, 1, 1), faces)
    assert lengths.shape == (2, 1920) and lengths.min() > 0.5 * lengths.max()
    centroids = verts[faces].mean(1)
    assert (torch.nn.functional.cosine_similarity(face_normals(verts, faces), centroids) > 0.99).all()
    normals = vertex_normals(verts[None], faces)[0]
    assert torch.allclose(normals.norm(dim=1), torch.ones(642)) and (normals * verts).sum(1).min() > 0.999
    degenerate = torch.zeros(3, 3)
    assert torch.isfinite(face_normals(degenerate, torch.tensor([[0, 1, 2]]))).all()


def test_obj_round_trip_with_trimesh(tmp_path):
    verts, faces = icosphere(2)
    path = tmp_path / "mesh.obj"
    save_obj(path, verts, faces)
    loaded_verts, loaded_faces = load_obj(path)
    assert torch.allclose(loaded_verts, verts, atol=1e-6) and torch.equal(loaded_faces, faces)
    face_uv = face_spherical_uv(verts, faces)
    textured = tmp_path / "textured.obj"
    save_obj(textured, verts, faces, face_uv=face_uv, texture_png_name="texture.png")
    assert "map_Kd texture.png" in (tmp_path / "textured.mtl").read_text()
    loaded_verts, loaded_faces = load_obj(textured)
    assert loaded_verts.shape == verts.shape and torch.equal(loaded_faces, faces)
    vt = np.array([line.split()[1:] for line in textured.read_text().splitlines() if line.startswith("vt ")], float)
    assert math.isclose(vt[:, 1].min(), 0.0, abs_tol=0.05) and vt[:, 1].max() <= 1.0


def test_mesh_edges_match_a_set_of_sorted_pairs():
    faces = torch.randint(0, 40, (60, 3), generator=torch.Generator().manual_seed(0))
    expected = sorted({tuple(sorted((int(f[a]), int(f[b])))) for f in faces for a, b in ((0, 1), (1, 2), (2, 0))})
    assert mesh_edges(faces).tolist() == [list(e) for e in expected]
    assert mesh_edges(torch.zeros(0, 3, dtype=torch.long)).shape == (0, 2)
