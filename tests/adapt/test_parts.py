import numpy as np
import pytest
import torch

from adapt.losses import (part_centres, part_correspondence_loss, part_coverage_loss, quaternion_smoothness,
                          temporal_smoothness, vertex_parts)
from adapt.parts import UVPool, pool_uv_maps, random_parts, texel_surface, texel_visibility, uv_maps_from_flow
from mesh_recon.geometry import weak_perspective_project
from mesh_recon.mesh import face_spherical_uv, icosphere, spherical_uv
from mesh_recon.render import render_hard, sample_texture_hard

UV_HW = (32, 64)


def _sphere_scene(num_frames=3):
    verts, faces = icosphere(3)
    face_uvs = face_spherical_uv(verts, faces)
    angles = torch.linspace(0.0, 0.6, num_frames)
    quats = torch.stack([torch.cos(angles / 2), torch.zeros_like(angles), torch.sin(angles / 2),
                         torch.zeros_like(angles)], 1)  # rotation about y
    cams = torch.cat([torch.full((num_frames, 1), 0.8), torch.zeros(num_frames, 2), quats], 1)
    return verts.expand(num_frames, -1, -1).contiguous(), faces, face_uvs, cams


def _blocky_uv_parts(k=4):
    labels = torch.arange(k).repeat_interleave(UV_HW[1] // k).view(1, -1).expand(UV_HW[0], -1)
    return torch.nn.functional.one_hot(labels, k).permute(2, 0, 1).float()  # (K, Hu, Wu) vertical stripes


def test_texel_surface_covers_the_whole_uv_square_once():
    verts, faces = icosphere(3)
    face_index, bary = texel_surface(face_spherical_uv(verts, faces), UV_HW)
    assert (face_index >= 0).all()
    assert torch.allclose(bary.sum(-1), torch.ones(UV_HW), atol=1e-4)
    # A texel's surface point maps back to (nearly) its own UV.
    v = (torch.arange(UV_HW[0]) * 2 + 1) / UV_HW[0] - 1
    u = (torch.arange(UV_HW[1]) * 2 + 1) / UV_HW[1] - 1
    points = (verts[faces[face_index]] * bary[..., None]).sum(-2)
    from mesh_recon.mesh import spherical_uv
    uv = spherical_uv(points)
    middle = slice(4, -4)
    assert (uv[middle, :, 1] - v[middle, None]).abs().max() < 0.05
    du = (uv[middle, 2:-2, 0] - u[None, 2:-2]).abs()
    assert du.max() < 0.05


def test_parts_to_uv_to_render_round_trip_with_known_flows():
    verts, faces, face_uvs, cams = _sphere_scene()
    truth = _blocky_uv_parts()
    size = 64
    verts_ndc = weak_perspective_project(verts, cams)
    frags = render_hard(verts_ndc, faces, size)
    observed = sample_texture_hard(frags, face_uvs, truth[None].expand(3, -1, -1, -1))  # (T, K, S, S)
    # The exact texture flow: where each texel's surface point projects in each frame.
    face_index, bary = texel_surface(face_uvs, UV_HW)
    tri = verts_ndc[:, faces[face_index.clamp_min(0)]]
    flow = (tri * bary[None, ..., None]).sum(-2)[..., :2].permute(0, 3, 1, 2)  # (T, 2, Hu, Wu)
    visibility = texel_visibility(verts, cams, faces, face_index, bary, image_size=size)
    pooled = pool_uv_maps(uv_maps_from_flow(observed, flow), visibility)
    seen = visibility.sum(0)[0] > 0
    assert seen.float().mean() > 0.4  # a rotating sphere shows more than its front half
    agree = (pooled.argmax(0) == truth.argmax(0))[seen].float().mean()
    assert agree > 0.93
    rerendered = sample_texture_hard(frags, face_uvs, pooled[None].expand(3, -1, -1, -1))
    inside = frags.mask[:, 0] > 0
    assert (rerendered.argmax(1) == observed.argmax(1))[inside].float().mean() > 0.93


def test_hidden_texels_are_not_visible():
    verts, faces, face_uvs, cams = _sphere_scene(1)
    face_index, bary = texel_surface(face_uvs, UV_HW)
    visibility = texel_visibility(verts, cams, faces, face_index, bary)[0, 0]
    # Camera looks along +z at a sphere: texels with v < 0 (theta < 90 deg, the +z half, facing away) are hidden.
    v = (torch.arange(UV_HW[0]) * 2 + 1) / UV_HW[0] - 1
    assert visibility[v < -0.2].mean() < 0.02 and visibility[v > 0.2].mean() > 0.95


def test_random_parts_are_inside_the_mask_and_reproducible():
    frame = np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    mask = np.zeros((40, 60), bool)
    mask[10:30, 15:45] = True
    parts = random_parts(frame, mask, 6, seed=3)
    assert set(np.unique(parts[mask])) == set(range(1, 7)) and (parts[~mask] == 0).all()
    assert np.array_equal(parts, random_parts(frame, mask, 6, seed=3))
    with pytest.raises(ValueError, match="mask: expected at least one object pixel"):
        random_parts(frame, np.zeros_like(mask), 3, seed=0)


def test_part_losses_on_hand_made_maps():
    parts = torch.zeros(1, 3, 8, 8)
    parts[0, 0] = 1.0
    parts[0, 1, :4, :4], parts[0, 0, :4, :4] = 1.0, 0.0
    parts[0, 2, 4:, 4:], parts[0, 0, 4:, 4:] = 1.0, 0.0
    centres, mass = part_centres(parts[:, 1:])
    assert torch.allclose(centres[0], torch.tensor([[-0.5, -0.5], [0.5, 0.5]]))
    assert torch.allclose(mass[0], torch.tensor([0.25, 0.25]))
    same = part_correspondence_loss(parts, parts)
    assert same[0].item() == 0.0 and same[1].item() == 0.0
    swapped = parts[:, [0, 2, 1]]
    map_loss, centre_loss = part_correspondence_loss(swapped, parts)
    assert torch.allclose(map_loss, torch.tensor(0.5)) and torch.allclose(centre_loss, torch.tensor(2.0))


def test_vertex_parts_are_the_uv_stripes_the_vertices_lie_on():
    verts, faces = icosphere(3)
    k = 4
    labels = vertex_parts(_blocky_uv_parts(k), faces, face_spherical_uv(verts, faces), len(verts))
    u = spherical_uv(verts)[:, 0]
    stripe = ((u + 1) / 2 * k).floor().clamp(0, k - 1).long()  # the stripe of each vertex, by hand
    # a vertex near a stripe border (or the poles, whose u is any) may fall on either side: judge the others
    inside = ((u + 1) / 2 * k - stripe - 0.5).abs() < 0.4
    inside &= verts[:, :2].norm(dim=1) > 0.2
    assert inside.sum() > 0.6 * len(verts)
    assert torch.equal(labels[inside], stripe[inside])


def test_part_coverage_pulls_the_nearest_vertex_of_the_part_seen_there():
    observed, rendered = torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4)
    observed[0, 1, 0, 3] = 1.0  # part 1 seen at pixel centre (0.75, -0.75)
    observed[0, 2, 3, 0] = 1.0  # part 2 seen at (-0.75, 0.75), already drawn as part 2
    rendered[0, 2, 0, 3] = rendered[0, 2, 3, 0] = 1.0  # the silhouette covers both pixels, with part 2
    # vertex 1 (part 2) is nearest to the part-1 pixel; vertex 0 is the nearest of part 1
    verts = torch.tensor([[[-0.5, 0.0, 0.0], [0.5, -0.5, 0.0]]], requires_grad=True)
    loss = part_coverage_loss(verts, torch.tensor([1, 2]), rendered, observed)
    # (0.75 + 0.5)^2 + 0.75^2 over the 2 pixels of both parts
    assert loss.item() == pytest.approx((1.25 ** 2 + 0.75 ** 2) / 2)
    loss.backward()
    assert torch.allclose(verts.grad, torch.tensor([[[-1.25, 0.75, 0.0], [0.0, 0.0, 0.0]]]))
    assert part_coverage_loss(verts, torch.tensor([1, 2]), observed, observed).item() == 0.0
    # no vertex of part 1: nothing to pull, the pixel still counts in the area
    assert part_coverage_loss(verts, torch.tensor([2, 2]), rendered, observed).item() == 0.0
    capped = part_coverage_loss(verts, torch.tensor([1, 2]), rendered, observed, radius=0.5)
    distance = (1.25 ** 2 + 0.75 ** 2) ** 0.5
    assert capped.item() == pytest.approx(0.5 * (2 * distance - 0.5) / 2)


@pytest.mark.parametrize("radius", [None, 0.1])
def test_part_coverage_equals_a_brute_force_search_part_by_part(radius):
    g = torch.Generator().manual_seed(1)
    verts = (torch.rand(2, 40, 3, generator=g) * 1.6 - 0.8).requires_grad_()
    vert_part = torch.randint(0, 3, (40,), generator=g)  # parts 1, 2 and background (0)
    vert_part[vert_part == 2] = 3  # part 2 has no vertex
    observed, rendered = torch.rand(2, 4, 8, 8, generator=g), torch.rand(2, 4, 8, 8, generator=g)
    loss = part_coverage_loss(verts, vert_part, rendered, observed, radius)
    total, area = 0.0, 0.0
    for b in range(2):
        for k in range(1, 4):
            for i in range(8):
                for j in range(8):
                    if observed[b, k, i, j] <= 0.5:
                        continue
                    area += 1
                    members = torch.nonzero(vert_part == k).squeeze(1)
                    if len(members) == 0:
                        continue
                    point = torch.tensor([(2 * j + 1) / 8 - 1, (2 * i + 1) / 8 - 1])
                    pull = ((verts.detach()[b, members, :2] - point) ** 2).sum(1).min()
                    if radius is not None and pull.sqrt() > radius:
                        pull = radius * (2 * pull.sqrt() - radius)
                    total = total + (1 - rendered[b, k, i, j]) * pull
    assert loss.item() == pytest.approx(float(total) / area, rel=1e-5)


def test_temporal_terms():
    assert temporal_smoothness(torch.tensor([[0.0], [1.0], [3.0]])).item() == pytest.approx(2.5)
    q = torch.tensor([[1.0, 0, 0, 0], [-1.0, 0, 0, 0]])
    assert quaternion_smoothness(q).item() == pytest.approx(0.0)


def test_pooling_in_chunks_equals_pooling_at_once():
    g = torch.Generator().manual_seed(0)
    uv = torch.rand(7, 3, 4, 5, generator=g)
    vis = (torch.rand(7, 1, 4, 5, generator=g) > 0.5).float()
    vis[:, :, 0, 0] = 0  # a texel no frame sees takes the plain mean
    chunked = UVPool().add(uv[:3], vis[:3]).add(uv[3:], vis[3:]).result()
    assert torch.allclose(chunked, pool_uv_maps(uv, vis), atol=1e-6)
    assert torch.allclose(chunked[:, 0, 0], uv[:, :, 0, 0].mean(0))
    seen = vis[:, 0, 1, 1] > 0
    if seen.any():
        assert torch.allclose(chunked[:, 1, 1], uv[seen][:, :, 1, 1].mean(0), atol=1e-6)
