"""Tests of the soft renderer: culled rasterizer vs a brute-force all-pairs reference, gradients, robustness."""
import math

import pytest
import torch
import torch.nn.functional as F

from factories import projected_sphere, random_triangles
from mesh_recon.raster import rasterize_soft
from mesh_recon.render import (SoftRenderer, SoftRenderSettings, render_depth, render_silhouette, render_uv_texture,
                               render_vertex_attributes)
from mesh_recon.shade import aggregate_silhouette, blend_attributes, drop_occluded_pairs, interpolate_vertex_attributes

DTYPE = torch.float64


# ----------------------------------------------------------------------------------------------------------------
# Brute force: every (mesh, face, pixel) pair, written from the definitions with dense tensors (B, F, P).
# ----------------------------------------------------------------------------------------------------------------
def _pixel_centres(height, width, dtype):
    rows, cols = torch.meshgrid(torch.arange(height, dtype=dtype), torch.arange(width, dtype=dtype), indexing="ij")
    return torch.stack([(2 * cols + 1) / width - 1, (2 * rows + 1) / height - 1], -1).reshape(-1, 2)  # (P, 2)


def brute_force_pairs(verts_ndc, faces, height, width, sigma, eps):
    """Dense logit (B, F, P), nearest-point barycentrics (B, F, P, 3), normalized depth (B, F, P), mask (B, F, P)."""
    p = _pixel_centres(height, width, verts_ndc.dtype)[None, None]  # (1, 1, P, 2)
    tri = verts_ndc[:, faces]  # (B, F, 3, 3)
    corners = [tri[:, :, k, None, :2] for k in range(3)]  # (B, F, 1, 2)
    dist2, feet, crosses = [], [], []
    for k in range(3):
        a, b = corners[k], corners[(k + 1) % 3]
        e = b - a
        t = (((p - a) * e).sum(-1) / (e * e).sum(-1).clamp_min(1e-30)).clamp(0, 1)
        dist2.append(((p - a - t[..., None] * e) ** 2).sum(-1))
        feet.append(t)
        crosses.append(e[..., 0] * (p - a)[..., 1] - e[..., 1] * (p - a)[..., 0])
    dist2, feet, crosses = torch.stack(dist2, -1), torch.stack(feet, -1), torch.stack(crosses, -1)  # (B, F, P, 3)
    area2 = crosses.sum(-1, keepdim=True)
    inside = ((crosses > 0).all(-1) | (crosses < 0).all(-1)) & (area2[..., 0].abs() > 1e-12)
    d2, nearest = dist2.min(-1)
    logit = torch.where(inside, d2, -d2) / sigma
    bary_inside = crosses.roll(-1, -1) / torch.where(inside[..., None], area2, torch.ones_like(area2))
    t = feet.gather(-1, nearest[..., None])
    start = F.one_hot(nearest, 3).to(verts_ndc.dtype)
    bary = torch.where(inside[..., None], bary_inside, start * (1 - t) + start.roll(1, -1) * t)
    z = verts_ndc[..., 2]
    near, far = z.detach().amin(1, keepdim=True), z.detach().amax(1, keepdim=True)
    zn = ((far - z) / (far - near))[:, faces]  # (B, F, 3)
    depth_norm = (bary * zn[:, :, None, :]).sum(-1)
    return logit, bary, depth_norm, torch.sigmoid(logit) >= eps


def brute_force_silhouette(verts_ndc, faces, height, width, sigma=1e-2, eps=1e-4):
    logit, _, _, mask = brute_force_pairs(verts_ndc, faces, height, width, sigma, eps)
    one_minus = torch.where(mask, 1 - torch.sigmoid(logit), torch.ones_like(logit))
    return (1 - one_minus.prod(1)).reshape(-1, 1, height, width)


def brute_force_blend(verts_ndc, faces, pair_values, height, width, sigma, eps, gamma, background, bg_eps=1e-3):
    """pair_values(bary (B, F, P, 3)) -> (B, F, P, C); softmax over faces + background of log D + zn / gamma."""
    logit, bary, depth_norm, mask = brute_force_pairs(verts_ndc, faces, height, width, sigma, eps)
    log_w = torch.where(mask, torch.log(torch.sigmoid(logit)) + depth_norm / gamma, torch.full_like(logit, -math.inf))
    log_w = torch.cat([log_w, torch.full_like(log_w[:, :1], bg_eps / gamma)], 1)  # (B, F + 1, P)
    weights = torch.softmax(log_w, dim=1)
    values = pair_values(bary)  # (B, F, P, C)
    values = torch.cat([values, background.expand(values.shape[0], 1, values.shape[2], -1)], 1)
    image = (weights[..., None] * values).sum(1)  # (B, P, C)
    return image.transpose(1, 2).reshape(image.shape[0], -1, height, width)


def vertex_values(faces, attrs):
    corners = attrs[:, faces]  # (B, F, 3, C)
    return lambda bary: (bary[..., None] * corners[:, :, None]).sum(-2)


def texture_values(faces_uv, texture):
    def values(bary):
        uv = (bary[..., None] * faces_uv[None, :, None]).sum(-2)  # (B, F, P, 2)
        B, Fn, P, _ = uv.shape
        sampled = F.grid_sample(texture, uv.reshape(B, 1, Fn * P, 2), align_corners=False, padding_mode="border")
        return sampled.reshape(B, -1, Fn, P).permute(0, 2, 3, 1)
    return values


# ----------------------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------------------
def overlapping_soup(batch=2, seed=0):
    """Random overlapping triangles plus a zero-area one, float64, on a 10 x 12 image."""
    verts, faces = random_triangles(batch, 6, seed=seed, spread=0.6, size=1.0)
    verts[:, 15:18] = verts[:, 15:16]  # face 5 collapsed to a point
    return verts, faces


def sphere64(batch=2, seed=1):
    return projected_sphere(batch, level=1, seed=seed, scale=0.7, shift=0.1, dtype=DTYPE)


def max_error(a, b):
    diff = (a - b).abs()
    return f"max |diff| {diff.max():.3g} at {tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape))}"


# ----------------------------------------------------------------------------------------------------------------
# Culled renderer == brute force (images and gradients)
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [overlapping_soup, sphere64])
def test_silhouette_matches_brute_force(make):
    verts, faces = make()
    verts.requires_grad_(True)
    grad_out = torch.rand(verts.shape[0], 1, 10, 12, dtype=DTYPE)
    ours = render_silhouette(verts, faces, (10, 12), sigma=1e-2)
    (g_ours,) = torch.autograd.grad((ours * grad_out).sum(), verts)
    ref = brute_force_silhouette(verts, faces, 10, 12, sigma=1e-2)
    (g_ref,) = torch.autograd.grad((ref * grad_out).sum(), verts)
    assert torch.allclose(ours, ref, atol=1e-10), max_error(ours, ref)
    assert torch.allclose(g_ours, g_ref, atol=1e-8), max_error(g_ours, g_ref)


@pytest.mark.parametrize("make", [overlapping_soup, sphere64])
def test_vertex_attributes_match_brute_force(make):
    verts, faces = make()
    attrs = torch.rand(verts.shape[0], verts.shape[1], 3, dtype=DTYPE, requires_grad=True)
    verts.requires_grad_(True)
    background = torch.tensor([0.2, 0.5, 0.9], dtype=DTYPE)
    kwargs = dict(sigma=1e-2, gamma=0.05)
    ours = render_vertex_attributes(verts, faces, attrs, (10, 12), background=background, **kwargs)
    ref = brute_force_blend(verts, faces, vertex_values(faces, attrs), 10, 12, eps=1e-4, background=background,
                            **kwargs)
    grad_out = torch.rand_like(ours)
    g_ours = torch.autograd.grad((ours * grad_out).sum(), (verts, attrs))
    g_ref = torch.autograd.grad((ref * grad_out).sum(), (verts, attrs))
    assert torch.allclose(ours, ref, atol=1e-10), max_error(ours, ref)
    for a, b in zip(g_ours, g_ref):
        assert torch.allclose(a, b, atol=1e-8), max_error(a, b)


def test_uv_texture_matches_brute_force():
    verts, faces = overlapping_soup(seed=3)
    gen = torch.Generator().manual_seed(3)
    face_uvs = (torch.rand(faces.shape[0], 3, 2, generator=gen, dtype=DTYPE) * 2 - 1) * 0.8  # away from the seam
    texture = torch.rand(2, 4, 8, 16, generator=gen, dtype=DTYPE, requires_grad=True)
    verts.requires_grad_(True)
    ours = render_uv_texture(verts, faces, face_uvs, texture, (10, 12), sigma=1e-2, gamma=0.05)
    ref = brute_force_blend(verts, faces, texture_values(face_uvs, texture), 10, 12, 1e-2, 1e-4, 0.05,
                            torch.zeros(4, dtype=DTYPE))
    grad_out = torch.rand_like(ours)
    g_ours = torch.autograd.grad((ours * grad_out).sum(), (verts, texture))
    g_ref = torch.autograd.grad((ref * grad_out).sum(), (verts, texture))
    assert torch.allclose(ours, ref, atol=1e-10), max_error(ours, ref)
    for a, b in zip(g_ours, g_ref):
        assert torch.allclose(a, b, atol=1e-8), max_error(a, b)


def test_chunking_does_not_change_fragments():
    verts, faces = sphere64(batch=3)
    full = rasterize_soft(verts, faces, 16, 16, sigma=1e-3)
    chunked = rasterize_soft(verts, faces, 16, 16, sigma=1e-3, max_pairs=50)
    for name in ("pixel", "face", "face_counts", "logit", "bary", "depth_norm"):
        assert torch.equal(getattr(full, name), getattr(chunked, name)), name


def test_dropping_occluded_pairs_keeps_the_blend():
    verts, faces = projected_sphere(2, level=2, seed=2, dtype=DTYPE)
    fragments = rasterize_soft(verts, faces, 32, 32)
    attrs = torch.rand(2, verts.shape[1], 3, dtype=DTYPE)
    full = blend_attributes(fragments, interpolate_vertex_attributes(fragments, faces, attrs))
    visible = drop_occluded_pairs(fragments)
    kept = blend_attributes(visible, interpolate_vertex_attributes(visible, faces, attrs))
    assert visible.pixel.numel() < 0.8 * fragments.pixel.numel()
    assert torch.allclose(full, kept, atol=1e-12), max_error(full, kept)


# ----------------------------------------------------------------------------------------------------------------
# Finite differences (float64, tiny inputs)
# ----------------------------------------------------------------------------------------------------------------
def _with_fixed_depth_extremes(xy, z_inner, z_fixed):
    """Vertices (B, V + 2, 3) whose nearest/farthest depths come from two constant vertices used by no face
    (the depth normalization is not differentiated, so finite differences must not move it)."""
    xy_all = torch.cat([xy, torch.zeros_like(xy[:, :2])], 1)
    return torch.cat([xy_all, torch.cat([z_inner, z_fixed], 1)[..., None]], -1)


def test_gradcheck_silhouette():
    verts, faces = random_triangles(1, 3, seed=4, size=0.9)
    xy = verts[..., :2].clone().requires_grad_(True)
    fn = lambda xy: render_silhouette(torch.cat([xy, verts[..., 2:]], -1), faces, (6, 7), sigma=0.02)
    assert torch.autograd.gradcheck(fn, (xy,), atol=1e-7)


def test_gradcheck_vertex_attributes_and_texture():
    verts, faces = random_triangles(1, 3, seed=5, size=0.9)
    faces_all = faces
    xy = verts[..., :2].clone().requires_grad_(True)
    z_inner = (verts[..., 2] * 0.5).clone().requires_grad_(True)  # strictly inside (-1, 1)
    z_fixed = torch.tensor([[-1.0, 1.0]], dtype=DTYPE)
    attrs = torch.rand(1, 11, 2, dtype=DTYPE, requires_grad=True)
    face_uvs = torch.rand(3, 3, 2, dtype=DTYPE) * 1.6 - 0.8
    texture = torch.rand(1, 2, 4, 6, dtype=DTYPE, requires_grad=True)

    def build(xy, z_inner):
        return _with_fixed_depth_extremes(xy, z_inner, z_fixed)

    def fn(xy, z_inner, attrs, texture):
        verts_all = build(xy, z_inner)
        a = render_vertex_attributes(verts_all, faces_all, attrs, (6, 7), sigma=0.02, gamma=0.1)
        t = render_uv_texture(verts_all, faces_all, face_uvs, texture, (6, 7), sigma=0.02, gamma=0.1)
        return a, t

    assert torch.autograd.gradcheck(fn, (xy, z_inner, attrs, texture), atol=1e-7)


# ----------------------------------------------------------------------------------------------------------------
# Conventions and robustness
# ----------------------------------------------------------------------------------------------------------------
def test_soft_axes_pinned_by_hand_drawn_image():
    # upper-left triangle x + y <= -0.9 in NDC: pixel centres at -0.75 / -0.25 -> the three top-left pixels
    verts = torch.tensor([[[-1.0, -1.0, 0.0], [0.1, -1.0, 0.0], [-1.0, 0.1, 0.0]]])
    image = render_silhouette(verts, torch.tensor([[0, 1, 2]]), 4, sigma=1e-4)[0, 0]
    expected = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.float32)
    assert torch.allclose(image, expected, atol=1e-3), image


def test_soft_nearer_triangle_wins():
    big = torch.tensor([[-0.9, -0.9], [0.9, -0.9], [0.0, 0.9]])
    verts = torch.cat([torch.cat([big, torch.full((3, 1), 0.5)], 1),  # far, colour (0, 1)
                       torch.cat([big * 0.7, torch.full((3, 1), -0.5)], 1)])[None]  # near, colour (1, 0)
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
    colours = torch.tensor([[0.0, 1.0]] * 3 + [[1.0, 0.0]] * 3)[None]
    image = render_vertex_attributes(verts, faces, colours, 32)
    centre = image[0, :, 16, 16]
    assert centre[0] > 0.999 and centre[1] < 1e-3
    depth = render_depth(verts, faces, 32)
    assert depth[0, 0, 16, 16] == pytest.approx(-0.5, abs=1e-3)


def test_no_nan_for_degenerate_outside_and_view_filling_meshes():
    degenerate = torch.tensor([[[0.1, 0.1, 0.0], [0.1, 0.1, 0.0], [0.1, 0.1, 0.0],  # point
                                [-0.5, 0.0, 0.1], [0.0, 0.0, 0.2], [0.5, 0.0, 0.3],  # collinear
                                [2.0, 2.0, 0.0], [3.0, 2.0, 0.0], [2.0, 3.0, 0.0],  # outside the view
                                [-0.3, -0.3, 0.5], [0.3, -0.3, 0.5], [0.0, 0.3, 0.5]]])
    faces = torch.arange(12).reshape(4, 3)
    sphere, sphere_faces = projected_sphere(2, level=2, scale=4.0)  # fills the view
    texture = torch.rand(2, 3, 8, 16, requires_grad=True)
    for verts, fcs in ((degenerate, faces), (sphere, sphere_faces)):
        verts = verts.clone().requires_grad_(True)
        B, V = verts.shape[:2]
        attrs = torch.rand(B, V, 3, requires_grad=True)
        uv = torch.rand(V, 2) * 2 - 1
        images = [render_silhouette(verts, fcs, 24), render_vertex_attributes(verts, fcs, attrs, 24),
                  render_uv_texture(verts, fcs, uv, texture[:B], 24), render_depth(verts, fcs, 24)]
        loss = sum(image.square().mean() for image in images)
        loss.backward()
        assert all(torch.isfinite(image).all() for image in images)
        assert torch.isfinite(verts.grad).all() and torch.isfinite(attrs.grad).all()
    assert torch.isfinite(texture.grad).all()


def test_interior_is_covered_and_far_outside_is_empty():
    verts, faces = projected_sphere(1, level=3, scale=0.6)
    image = render_silhouette(verts, faces, 64)
    # SoftRas: a pixel near shared edges of small faces stays a little below 1 (here ~0.99)
    assert image[0, 0, 32, 32] > 0.95 and image[0, 0, 0, 0] == 0


def test_soft_renderer_module_equals_functions():
    verts, faces = projected_sphere(2, level=2, seed=7)
    attrs = torch.rand(2, verts.shape[1], 3)
    renderer = SoftRenderer(SoftRenderSettings(image_size=(20, 24), background=(0.1, 0.2, 0.3)))
    out = renderer(verts, faces, attrs=attrs)
    assert out.shape == (2, 4, 20, 24)
    expected = render_vertex_attributes(verts, faces, attrs, (20, 24), background=torch.tensor([0.1, 0.2, 0.3]))
    assert torch.allclose(out[:, :3], expected, atol=1e-6)
    assert torch.allclose(out[:, 3:], render_silhouette(verts, faces, (20, 24)), atol=1e-6)
    assert torch.allclose(aggregate_silhouette(rasterize_soft(verts, faces, 20, 24)), out[:, 3:], atol=1e-6)


def test_errors_name_the_argument():
    verts, faces = projected_sphere(1, level=0)
    with pytest.raises(ValueError, match="image_size"):
        render_silhouette(verts, faces, 0)
    with pytest.raises(ValueError, match="faces: expected indices in"):
        render_silhouette(verts, faces + 100, 8)
    with pytest.raises(ValueError, match=r"attrs: expected shape \(B V C\)"):
        render_vertex_attributes(verts, faces, torch.rand(2, 12, 3), 8)
    with pytest.raises(ValueError, match="faces: expected dtype int64"):
        render_silhouette(verts, faces.int(), 8)
