"""The fold term of the adaptation (adapt.losses.fold_loss): face pairs and bending checked on hand-made meshes."""
import math

import torch

from adapt.losses import adjacent_cosines, face_pairs, fold_loss, fold_reference


def test_face_pairs_and_fold_by_hand():
    # two triangles sharing edge (1, 2): flat, then the second one raised upright over the edge (normals 90 deg apart)
    faces = torch.tensor([[0, 1, 2], [2, 1, 3]])
    assert face_pairs(faces).sort(dim=1).values.tolist() == [[0, 1]]
    flat = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]]])
    bent = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0.5, 0.5, 0.7071]]])
    rest = fold_reference(flat[0], faces)
    assert torch.allclose(rest.rest_cos, torch.ones(1))
    assert float(fold_loss(flat, faces, rest)) == 0.0
    cos = float(adjacent_cosines(bent[0], faces, rest.pairs))
    assert abs(cos) < 1e-4
    assert math.isclose(float(fold_loss(bent, faces, rest)), 1 - cos, rel_tol=1e-6)
    # a rest shape bent as far costs nothing for the same bend, and a flatter pose costs nothing either
    assert float(fold_loss(bent, faces, fold_reference(bent[0], faces))) == 0.0
    assert float(fold_loss(flat, faces, fold_reference(bent[0], faces))) == 0.0


def test_pairs_of_a_closed_mesh_cover_every_edge_once():
    # a tetrahedron: 6 edges, each shared by exactly two of its 4 faces
    faces = torch.tensor([[0, 1, 2], [0, 3, 1], [0, 2, 3], [1, 3, 2]])
    pairs = face_pairs(faces)
    assert len(pairs) == 6
    shared = {tuple(sorted(set(faces[a].tolist()) & set(faces[b].tolist()))) for a, b in pairs.tolist()}
    assert shared == {(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)}
