"""Tests of the hard (z-buffer) renderer and of the screen conventions shared by every renderer."""
import cv2
import numpy as np
import pytest
import torch

from factories import projected_sphere, random_triangles
from mesh_recon.geometry import ndc_to_pixels
from mesh_recon.render import interpolate_hard, render_hard, sample_texture_hard

# One triangle in the upper-left quadrant of NDC (x < 0, y < 0), at depth 0.
UPPER_LEFT = torch.tensor([[[-1.0, -1.0, 0.0], [0.0, -1.0, 0.0], [-1.0, 0.0, 0.0]]])
ONE_FACE = torch.tensor([[0, 1, 2]])


def fill_poly_reference(verts_ndc: torch.Tensor, faces: torch.Tensor, size: int, factor: int = 5) -> np.ndarray:
    """Independent silhouette: cv2.fillPoly of every projected triangle, point-sampled at our pixel centres.

    fillPoly also fills pixels that an edge merely crosses; drawing at an odd ``factor`` times the resolution and
    reading the fine pixel at each coarse pixel centre (fine index factor * i + (factor - 1) / 2) shrinks that
    one-pixel band to 1 / factor of a pixel.
    """
    shift, fine = 8, size * factor
    masks = []
    for verts in verts_ndc:
        pix = ndc_to_pixels(verts[:, :2].double(), fine, fine).numpy()
        polys = np.round(pix[faces.numpy()] * (1 << shift)).astype(np.int32)
        mask = np.zeros((fine, fine), np.uint8)
        for poly in polys:  # one call per triangle: a multi-polygon call fills overlaps even-odd
            cv2.fillPoly(mask, [poly], 1, lineType=cv2.LINE_8, shift=shift)
        masks.append(mask[(factor - 1) // 2::factor, (factor - 1) // 2::factor])
    return np.stack(masks)


def test_axes_pinned_by_hand_drawn_image():
    # 4 x 4 pixels: the triangle covers pixel centres with x + y <= -1 in NDC, i.e. the top-left corner.
    expected = torch.tensor([[1, 1, 0, 0],
                             [1, 0, 0, 0],
                             [0, 0, 0, 0],
                             [0, 0, 0, 0]], dtype=torch.float32)
    fragments = render_hard(UPPER_LEFT, ONE_FACE, 4)
    assert torch.equal(fragments.mask[0, 0], expected)
    assert torch.equal(fragments.face_index[0], torch.where(expected.bool(), 0, -1))


def test_non_square_image_axes():
    fragments = render_hard(UPPER_LEFT, ONE_FACE, (2, 8))  # H = 2, W = 8
    assert fragments.mask.shape == (1, 1, 2, 8)
    assert fragments.mask[0, 0, 0, :3].tolist() == [1, 1, 0] and fragments.mask[0, 0, 1].sum() == 0


def test_silhouette_matches_fill_poly():
    verts_ndc, faces = projected_sphere(batch=6, level=3, seed=3, scale=0.7, shift=0.2, stretch=(0.6, 0.8, 1.3))
    mask = render_hard(verts_ndc, faces, 256).mask[:, 0].bool().numpy()
    reference = fill_poly_reference(verts_ndc, faces, 256).astype(bool)
    iou = (mask & reference).sum((1, 2)) / (mask | reference).sum((1, 2))
    assert iou.min() >= 0.99, f"IoU per image {iou}"


@pytest.mark.parametrize("near_first", [True, False])
def test_nearer_triangle_wins(near_first):
    big = torch.tensor([[-0.9, -0.9], [0.9, -0.9], [0.0, 0.9]])
    near = torch.cat([big, torch.full((3, 1), -0.5)], 1)
    far = torch.cat([big * 0.8, torch.full((3, 1), 0.5)], 1)
    verts = torch.cat([near, far] if near_first else [far, near])[None]
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
    colours = torch.tensor([[1.0, 0.0]] * 3 + [[0.0, 1.0]] * 3)[None]
    if not near_first:
        colours = colours.flip(1)
    fragments = render_hard(verts, faces, 32)
    image = interpolate_hard(fragments, faces, colours)
    covered = fragments.mask[0, 0].bool()
    assert torch.allclose(image[0, 0][covered], torch.ones(()))
    assert torch.allclose(image[0, 1][covered], torch.zeros(()))
    assert torch.allclose(fragments.depth[0][covered], torch.tensor(-0.5))


def test_depth_equals_interpolated_z_and_background_fill():
    verts_ndc, faces = projected_sphere(batch=2, seed=4)
    fragments = render_hard(verts_ndc, faces, 48)
    z_image = interpolate_hard(fragments, faces, verts_ndc[..., 2:])
    fg = fragments.mask[:, 0].bool()
    assert torch.allclose(z_image[:, 0][fg], fragments.depth[fg], atol=1e-6)
    assert torch.isinf(fragments.depth[~fg]).all() and (fragments.face_index[~fg] == -1).all()
    assert (fragments.depth[fg] < 0).float().mean() > 0.99  # visible half of a unit sphere: nearer = negative z
    assert torch.allclose(fragments.bary.sum(-1)[fg], torch.ones(()))


def test_degenerate_outside_and_nan_faces_are_skipped():
    verts = torch.tensor([[[-0.5, -0.5, 0], [0.5, -0.5, 0], [0, 0.5, 0],  # a good face
                           [0.1, 0.1, -1], [0.1, 0.1, -1], [0.2, 0.2, -1],  # zero area, in front
                           [3.0, 3.0, -2], [4.0, 3.0, -2], [3.0, 4.0, -2],  # outside the view
                           [float("nan"), 0, -3], [0.5, 0.5, -3], [0, 0.5, -3]]])
    faces = torch.arange(12).reshape(4, 3)
    fragments = render_hard(verts, faces, 16)
    assert set(fragments.face_index.unique().tolist()) == {-1, 0}
    assert torch.isfinite(fragments.bary).all()


def test_interpolate_gradients_flow_to_attrs_and_verts():
    verts_ndc, faces = random_triangles(2, 3, seed=5, dtype=torch.float64)
    verts_ndc.requires_grad_(True)
    attrs = torch.rand(2, 9, 4, dtype=torch.float64, requires_grad=True)
    image = interpolate_hard(render_hard(verts_ndc, faces, 16), faces, attrs)
    image.square().sum().backward()
    assert attrs.grad.abs().sum() > 0 and verts_ndc.grad.abs().sum() > 0
    assert torch.isfinite(verts_ndc.grad).all()


def test_full_video_resolution_and_large_mesh():
    verts_ndc, faces = projected_sphere(batch=1, level=4, seed=6, scale=1.5)  # fills the view
    fragments = render_hard(verts_ndc, faces, (480, 854))
    assert fragments.face_index.shape == (1, 480, 854)
    assert fragments.mask.mean() > 0.95


def test_sample_texture_hard_reads_the_texel_under_uv():
    # UV of all three corners at one texel centre -> the whole triangle reads that texel; u wraps by 2
    texture = torch.zeros(1, 2, 4, 8)
    texture[0, :, 1, 6] = torch.tensor([3.0, 5.0])
    uv = torch.tensor([[(2 * 6 + 1) / 8 - 1 - 2.0, (2 * 1 + 1) / 4 - 1]]).expand(1, 3, 2)
    fragments = render_hard(UPPER_LEFT, ONE_FACE, 4)
    image = sample_texture_hard(fragments, uv, texture, background=torch.tensor([-1.0, -1.0]))
    assert image[0, :, 0, 0].tolist() == [3.0, 5.0] and image[0, :, 3, 3].tolist() == [-1.0, -1.0]
