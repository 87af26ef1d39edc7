"""Rasterization of batched triangle meshes in NDC: per-face bounding-box culling, soft and hard (z-buffer).

Convention: NDC x right, y down, pixel centre (i, j) of an H x W image at ((2i + 1)/W - 1, (2j + 1)/H - 1),
as ``grid_sample(align_corners=False)``; depth z grows away from the viewer (nearer = smaller z).
A batch of B meshes shares one (F, 3) face list. Work is done on (mesh, face, pixel) pairs enumerated from each
face's pixel bounding box (no padding to the largest box), in chunks of at most ``max_pairs`` pairs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor

DEFAULT_MAX_PAIRS = 1 << 17  # ~130k pairs a chunk: temporaries stay in cache (measured optimum)


def _face_pixel_boxes(face_xy: Tensor, height: int, width: int, margin: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Pixel boxes of faces grown by ``margin`` (NDC): first column/row (int64) and box width/height (0 = empty).

    face_xy: (N, 3, 2) NDC corners. Faces with a non-finite corner get an empty box.
    """
    lo = face_xy.amin(dim=1) - margin  # (N, 2)
    hi = face_xy.amax(dim=1) + margin
    size = torch.tensor([width, height], dtype=face_xy.dtype, device=face_xy.device)
    finite = torch.isfinite(face_xy).all(dim=2).all(dim=1)
    first = torch.ceil(((lo + 1) * size - 1) / 2).clamp(0, 1 << 30)
    last = torch.floor(((hi + 1) * size - 1) / 2).clamp(-1, 1 << 30)
    first = torch.where(finite[:, None], first, torch.zeros_like(first)).long()
    last = torch.where(finite[:, None], last, -torch.ones_like(last)).long()
    last = torch.minimum(last, torch.tensor([width - 1, height - 1], device=last.device))
    extent = (last - first + 1).clamp_min(0)
    return first[:, 0], first[:, 1], extent[:, 0], extent[:, 1]


def enumerate_face_pixels(face_xy: Tensor, height: int, width: int, faces_per_mesh: int, margin: float = 0.0,
                          max_pairs: int = DEFAULT_MAX_PAIRS) -> Iterator[tuple[Tensor, Tensor, Tensor, Tensor]]:
    """All (face, pixel) pairs whose pixel centre lies in the face's box grown by ``margin``, in chunks.

    Args:
        face_xy: (N, 3, 2) NDC corners of N = B * F faces (face n = b * F + f); not differentiated.
        height, width: image size H, W.
        faces_per_mesh: F.
        margin: growth of each box in NDC units.
        max_pairs: upper bound of pairs per chunk (a single face bigger than that makes its own chunk).
    Yields:
        face (P,) int64 in [0, N) non-decreasing, pixel (P,) int64 flat index b * H * W + row * W + column,
        x (P,), y (P,) NDC pixel centres (dtype of face_xy).
    """
    face_xy = face_xy.detach()  # integer work only; no grad-mode switch here, it would leak into the caller
    x0, y0, w, h = _face_pixel_boxes(face_xy, height, width, margin)
    counts = w * h
    ends = torch.cumsum(counts, 0)
    total = int(ends[-1]) if len(ends) else 0
    device, dtype = face_xy.device, face_xy.dtype
    mesh = torch.div(torch.arange(len(counts), device=device), faces_per_mesh, rounding_mode="floor")
    base = mesh * (height * width) + y0 * width + x0  # (N,) flat pixel of each box's first pixel
    start_face = 0
    while start_face < len(counts) and total > 0:
        offset0 = int(ends[start_face - 1]) if start_face > 0 else 0
        stop = max(int(torch.searchsorted(ends, offset0 + max_pairs, right=True)), start_face + 1)
        n = int(ends[stop - 1]) - offset0
        if n > 0:
            span = slice(start_face, stop)
            local = counts[span]
            rep = lambda values: torch.repeat_interleave(values, local, output_size=n)
            face = rep(torch.arange(start_face, stop, device=device))
            offset = (torch.arange(n, device=device) - rep(ends[span] - local - offset0)).to(dtype)
            box_w = rep(w[span]).to(dtype)
            row = torch.floor((offset + 0.5) / box_w)  # exact in floating point: offsets are box-local
            col = offset - row * box_w
            pixel = rep(base[span]) + (row * width + col).long()
            x = (2 * (rep(x0[span]).to(dtype) + col) + 1) / width - 1
            y = (2 * (rep(y0[span]).to(dtype) + row) + 1) / height - 1
            yield face, pixel, x, y
        start_face = stop


def barycentric_coefficients(face_xy: Tensor) -> Tensor:
    """Affine map from a point to barycentrics per face: b1 = k0 qx + k1 qy, b2 = k2 qx + k3 qy, q = p - v0.

    Args:
        face_xy: (N, 3, 2) NDC corners.
    Returns:
        (N, 4) coefficients (k0, k1, k2, k3); zero-area faces give meaningless (finite) values: mask them.
    """
    e1 = face_xy[:, 1] - face_xy[:, 0]
    e2 = face_xy[:, 2] - face_xy[:, 0]
    area2 = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    inv = 1.0 / torch.where(area2 == 0, torch.ones_like(area2), area2)
    return torch.stack([e2[:, 1] * inv, -e2[:, 0] * inv, -e1[:, 1] * inv, e1[:, 0] * inv], dim=1)


@dataclass(frozen=True)
class HardFragments:
    """Output of z-buffer rasterization: the nearest face at each pixel centre.

    Fields:
        face_index: (B, H, W) int64, index f into the shared (F, 3) face list of the face nearest to the viewer
            whose triangle contains the pixel centre; -1 where no face covers the pixel (background).
        bary: (B, H, W, 3) screen-space barycentrics of the pixel centre in that face (sum to 1, in [0, 1]);
            0 on background. Differentiable w.r.t. the NDC vertices.
        depth: (B, H, W) interpolated depth z of that face at the pixel centre; +inf on background.
            Differentiable w.r.t. the NDC vertices.
        mask: (B, 1, H, W) float, 1 where face_index >= 0 else 0.
    """

    face_index: Tensor
    bary: Tensor
    depth: Tensor
    mask: Tensor


def _zbuffer_pairs(face_xy: Tensor, face_z: Tensor, height: int, width: int, num_faces: int,
                   max_pairs: int) -> tuple[Tensor, Tensor, Tensor]:
    """Covered (pixel, face, depth) triples of all meshes: pixel flat in B*H*W, face in [0, F)."""
    e1, e2 = face_xy[:, 1] - face_xy[:, 0], face_xy[:, 2] - face_xy[:, 0]
    valid = torch.isfinite(face_z).all(dim=1) & ((e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]).abs() > 0)
    face_xy = torch.where(valid[:, None, None], face_xy, torch.full_like(face_xy, float("nan")))  # empty boxes
    table = torch.cat([face_xy[:, 0], barycentric_coefficients(face_xy), face_z[:, :1],
                       face_z[:, 1:] - face_z[:, :1]], dim=1).t().contiguous()  # (9, N): 1-D gathers are fast
    pix_all, face_all, z_all = [], [], []
    for bf, pix, x, y in enumerate_face_pixels(face_xy, height, width, num_faces, 0.0, max_pairs):
        x0, y0, k0, k1, k2, k3, z0, dz1, dz2 = [row.index_select(0, bf) for row in table]
        qx, qy = x - x0, y - y0
        b1, b2 = k0 * qx + k1 * qy, k2 * qx + k3 * qy
        keep = torch.nonzero((b1 >= 0) & (b2 >= 0) & (b1 + b2 <= 1)).reshape(-1)
        b1, b2 = b1.index_select(0, keep), b2.index_select(0, keep)
        pix_all.append(pix.index_select(0, keep))
        face_all.append(bf.index_select(0, keep) % num_faces)
        z_all.append(z0.index_select(0, keep) + b1 * dz1.index_select(0, keep) + b2 * dz2.index_select(0, keep))
    if not pix_all:
        empty = torch.zeros(0, dtype=torch.long, device=face_xy.device)
        return empty, empty, face_z.new_zeros(0)
    return torch.cat(pix_all), torch.cat(face_all), torch.cat(z_all)


def rasterize_hard(verts_ndc: Tensor, faces: Tensor, height: int, width: int,
                   max_pairs: int = DEFAULT_MAX_PAIRS) -> HardFragments:
    """Z-buffer rasterization (no anti-aliasing): for each pixel centre the nearest covering face.

    Both windings are drawn (no back-face culling); degenerate and non-finite faces are skipped; ties on shared
    edges go to the larger face index. Only ``bary`` and ``depth`` carry gradients (w.r.t. ``verts_ndc``).
    Args:
        verts_ndc: (B, V, 3) NDC x, y and depth z.
        faces: (F, 3) int64 vertex indices shared by the batch.
        height, width: image size H, W.
    Returns:
        HardFragments with (B, H, W) fields.
    """
    B, F = verts_ndc.shape[0], faces.shape[0]
    numel = B * height * width
    with torch.no_grad():
        face_verts = verts_ndc.detach()[:, faces].reshape(B * F, 3, 3)
        pix, face, z = _zbuffer_pairs(face_verts[..., :2], face_verts[..., 2], height, width, F, max_pairs)
        zbuf = torch.full((numel,), float("inf"), dtype=verts_ndc.dtype, device=verts_ndc.device)
        zbuf.scatter_reduce_(0, pix, z, reduce="amin")
        winner = torch.nonzero(z <= zbuf.index_select(0, pix)).reshape(-1)
        face_index = torch.full((numel,), -1, dtype=torch.long, device=verts_ndc.device)
        face_index.scatter_reduce_(0, pix.index_select(0, winner), face.index_select(0, winner), reduce="amax")
        fg, packed = foreground_pixels(face_index.reshape(B, height, width), F)
    # differentiable barycentrics and depth of the winners, from per-face rows gathered with 1-D index_select
    face_verts = verts_ndc[:, faces].reshape(B * F, 3, 3)
    table = torch.cat([face_verts[:, 0], barycentric_coefficients(face_verts[..., :2]),
                       face_verts[:, 1:, 2]], dim=1).t()  # (9, BF): x0 y0 z0 k0..k3 z1 z2
    x0, y0, z0, k0, k1, k2, k3, z1, z2 = [row.index_select(0, packed) for row in table]
    col = (fg % width).to(verts_ndc.dtype)
    row = torch.div(fg, width, rounding_mode="floor").remainder(height).to(verts_ndc.dtype)
    qx, qy = (2 * col + 1) / width - 1 - x0, (2 * row + 1) / height - 1 - y0
    b1, b2 = (k0 * qx + k1 * qy).clamp(0, 1), (k2 * qx + k3 * qy).clamp(0, 1)
    b0 = (1 - b1 - b2).clamp(0, 1)
    total = b0 + b1 + b2
    bary_fg = torch.stack([b0, b1, b2]) / total  # (3, P)
    bary = verts_ndc.new_zeros(3, numel).index_copy(1, fg, bary_fg).reshape(3, B, height, width).permute(1, 2, 3, 0)
    depth = torch.full((numel,), float("inf"), dtype=verts_ndc.dtype, device=verts_ndc.device)
    depth = depth.index_copy(0, fg, (bary_fg[0] * z0 + bary_fg[1] * z1 + bary_fg[2] * z2)).reshape(B, height, width)
    face_index = face_index.reshape(B, height, width)
    return HardFragments(face_index, bary, depth, (face_index >= 0)[:, None].to(verts_ndc.dtype))


def foreground_pixels(face_index: Tensor, faces_per_mesh: int) -> tuple[Tensor, Tensor]:
    """Covered pixels of a (B, H, W) face-index image: flat pixel index (P,) and packed face b * F + f (P,)."""
    flat = face_index.reshape(-1)
    fg = torch.nonzero(flat >= 0).reshape(-1)
    mesh = torch.div(fg, face_index.shape[1] * face_index.shape[2], rounding_mode="floor")
    return fg, mesh * faces_per_mesh + flat.index_select(0, fg)


@dataclass(frozen=True)
class Fragments:
    """Output of soft rasterization: every (mesh, face, pixel) pair whose soft coverage is at least ``eps``.

    A pair is kept when its pixel centre is inside the face or within sqrt(sigma * ln(1/eps - 1)) of it, i.e.
    sigmoid(logit) >= eps. P is the number of pairs; they are sorted by packed face index.
    Fields:
        pixel: (P,) int64 flat pixel index b * H * W + row * W + column (b the mesh of the pair).
        face: (P,) int64 packed face index b * F + f (f indexes the shared (F, 3) face list).
        face_counts: (B * F,) int64 number of pairs of each packed face (for segment sums).
        logit: (P,) signed squared distance from the pixel centre to the triangle divided by sigma: positive
            inside, negative outside; the soft coverage is D = sigmoid(logit). Differentiable.
        bary: (3, P) barycentrics (one row per face corner) of the point of the triangle nearest to the pixel
            centre (the pixel centre itself when inside), in [0, 1], summing to 1. Differentiable; None when not
            requested.
        depth_norm: (P,) normalized depth (far - z) / (far - near) interpolated with ``bary``, where near/far are
            the nearest/farthest vertex depths of the pair's mesh (not differentiated): 1 = nearest, 0 = farthest.
            Differentiable w.r.t. z; None when not requested.
        batch_size, height, width, faces_per_mesh: B, H, W, F.
    """

    pixel: Tensor
    face: Tensor
    face_counts: Tensor
    logit: Tensor
    bary: Tensor | None
    depth_norm: Tensor | None
    batch_size: int
    height: int
    width: int
    faces_per_mesh: int


def coverage_radius(sigma: float, eps: float) -> float:
    """NDC distance beyond which a pixel outside a face has coverage sigmoid(-d^2 / sigma) below ``eps``."""
    return math.sqrt(sigma * math.log(1.0 / eps - 1.0))


def _face_columns(face_xy: Tensor) -> Tensor:
    """(10, N) per-face rows: corner x (3), corner y (3), 1 / |edge k|^2 (3, 0 for a zero-length edge),
    orientation sign(2 area) (0 for a zero-area face). Edge k goes from corner k to corner k + 1."""
    xs, ys = face_xy[..., 0].t(), face_xy[..., 1].t()  # (3, N)
    ex, ey = torch.roll(xs, -1, 0) - xs, torch.roll(ys, -1, 0) - ys
    len2 = ex * ex + ey * ey
    inv_len2 = torch.where(len2 > 1e-20, 1.0 / len2.clamp_min(1e-20), torch.zeros_like(len2))
    area2 = ex[0] * ey[2] - ey[0] * ex[2]  # cross(v1 - v0, v0 - v2) = cross(v1 - v0, v2 - v0) sign-flipped twice
    orient = torch.sign(-area2) * (area2.abs() > 1e-12)
    return torch.cat([xs, ys, inv_len2, orient[None]]).contiguous()


def _edge_terms(columns: list, x: Tensor, y: Tensor) -> dict:
    """Per pair (P,) and edge k, lists of 3 tensors: edge (ex, ey), p - v_k (wx, wy), clamped foot t, p - nearest
    point of the segment (qx, qy), squared distance d2, oriented cross (cr > 0 inside for every edge)."""
    ax, ay, inv_len2, orient = columns[0:3], columns[3:6], columns[6:9], columns[9]
    terms = {name: [] for name in ("ex", "ey", "wx", "wy", "t", "qx", "qy", "d2", "cr")}
    for k in range(3):
        ex, ey = ax[(k + 1) % 3] - ax[k], ay[(k + 1) % 3] - ay[k]
        wx, wy = x - ax[k], y - ay[k]
        t = ((wx * ex + wy * ey) * inv_len2[k]).clamp_(0, 1)
        qx, qy = wx - t * ex, wy - t * ey
        for name, value in zip(terms, (ex, ey, wx, wy, t, qx, qy, qx * qx + qy * qy, (ex * wy - ey * wx) * orient)):
            terms[name].append(value)
    return terms


def _nearest_edge(terms: dict) -> tuple[list, Tensor, Tensor]:
    """One-hot float rows (3 x (P,)) of the nearest edge (first on ties), its squared distance, inside (float)."""
    d2 = terms["d2"]
    d01 = torch.minimum(d2[0], d2[1])
    is1 = (d2[1] < d2[0]).to(d01.dtype)
    is2 = (d2[2] < d01).to(d01.dtype)
    one_hot = [(1 - is1) * (1 - is2), is1 * (1 - is2), is2]
    cr = terms["cr"]
    inside = (torch.minimum(torch.minimum(cr[0], cr[1]), cr[2]) > 0).to(d01.dtype)
    return one_hot, torch.minimum(d01, d2[2]), inside


def _at_nearest(one_hot: list, values: list) -> Tensor:
    return one_hot[0] * values[0] + one_hot[1] * values[1] + one_hot[2] * values[2]


def _bary(terms: dict, one_hot: list, inside: Tensor) -> list:
    """Barycentrics (3 x (P,)): exact inside (b_j = cr_{j+1} / sum cr), on the nearest edge outside."""
    cr = terms["cr"]
    scale = inside / ((cr[0] + cr[1] + cr[2]).abs() + (1 - inside))
    t = _at_nearest(one_hot, terms["t"])
    return [cr[(j + 1) % 3] * scale + (1 - inside) * (one_hot[j] * (1 - t) + one_hot[j - 1] * t) for j in range(3)]


class _SoftPairs(torch.autograd.Function):
    """Soft coverage logit, barycentrics and normalized depth of (face, pixel) pairs, with a hand-written backward.

    forward(face_xy (N, 3, 2), face_zn (N, 3), face (P,), x (P,), y (P,), sigma, threshold, with_bary) ->
    logit (K,), bary (3, K), depth_norm (K,), keep (K,) int64, face_counts (N,): the pairs with logit >= threshold.
    With q the nearest point of the nearest edge segment (a, b) at foot t: d(d^2)/da = -2 (p - q)(1 - t),
    d(d^2)/db = -2 (p - q) t (also inside, where q is the foot on the nearest edge line). Inside, b_j = A_j / A
    with A_j = cross(v_{j+1} - p, v_{j+2} - p); outside, (b_k, b_{k+1}) = (1 - t, t).
    Per-face gradients are segment sums over the face-sorted pairs.
    """

    @staticmethod
    def forward(ctx, face_xy, face_zn, face, x, y, sigma, threshold, with_bary):
        table = _face_columns(face_xy)
        terms = _edge_terms([row.index_select(0, face) for row in table], x, y)
        _, dmin, inside = _nearest_edge(terms)
        logit = dmin * (2 * inside - 1) / sigma
        keep = torch.nonzero(logit >= threshold).reshape(-1)
        face, x, y, logit = [value.index_select(0, keep) for value in (face, x, y, logit)]
        face_counts = torch.bincount(face, minlength=face_xy.shape[0])
        ctx.save_for_backward(table, face_zn, face, x, y, face_counts)
        ctx.sigma, ctx.with_bary = sigma, with_bary
        ctx.mark_non_differentiable(keep, face_counts)
        if not with_bary:
            return logit, logit.new_zeros(3, 0), logit.new_zeros(0), keep, face_counts
        terms = _edge_terms([row.index_select(0, face) for row in table], x, y)
        one_hot, _, inside = _nearest_edge(terms)
        bary = _bary(terms, one_hot, inside)
        zn = [face_zn[:, j].index_select(0, face) for j in range(3)]
        depth_norm = bary[0] * zn[0] + bary[1] * zn[1] + bary[2] * zn[2]
        return logit, torch.stack(bary), depth_norm, keep, face_counts

    @staticmethod
    def backward(ctx, grad_logit, grad_bary, grad_depth, _keep, _counts):
        table, face_zn, face, x, y, face_counts = ctx.saved_tensors
        columns = [row.index_select(0, face) for row in table]
        terms = _edge_terms(columns, x, y)
        one_hot, _, inside = _nearest_edge(terms)
        t = _at_nearest(one_hot, terms["t"])
        coef = grad_logit * (2 * inside - 1) * (-2.0 / ctx.sigma)
        qx, qy = coef * _at_nearest(one_hot, terms["qx"]), coef * _at_nearest(one_hot, terms["qy"])
        share = [one_hot[j] * (1 - t) + one_hot[j - 1] * t for j in range(3)]  # corner j as start / end of edge
        gx = [qx * share[j] for j in range(3)]
        gy = [qy * share[j] for j in range(3)]
        grad_zn = None
        per_face = lambda values: torch.segment_reduce(values, "sum", lengths=face_counts)  # face-sorted pairs
        if ctx.with_bary:
            bary = _bary(terms, one_hot, inside)
            zn = [face_zn[:, j].index_select(0, face) for j in range(3)]
            g = [grad_bary[j] + grad_depth * zn[j] for j in range(3)]
            _add_bary_grad(gx, gy, g, bary, terms, columns[9], one_hot, inside, t, columns[6:9])
            grad_zn = torch.stack([per_face(grad_depth * bary[j]) for j in range(3)], 1)
        grad_xy = torch.stack([torch.stack([per_face(gx[j]), per_face(gy[j])], 1) for j in range(3)], 1)
        return grad_xy, grad_zn, None, None, None, None, None, None


def _add_bary_grad(gx, gy, g, bary, terms, orient, one_hot, inside, t, inv_len2) -> None:
    """Accumulate into gx, gy (3 x (P,)) the gradient of the barycentrics for upstream gradients g (3 x (P,))."""
    cr = terms["cr"]
    # inside: dL/dv_m = sum_j h_j dA_j/dv_m, h_j = (g_j - sum_i g_i b_i) / A (A signed = orient * sum cr)
    mean = g[0] * bary[0] + g[1] * bary[1] + g[2] * bary[2]
    scale = inside * orient / ((cr[0] + cr[1] + cr[2]).abs() + (1 - inside))
    h = [(g[j] - mean) * scale for j in range(3)]
    rx, ry = [-w for w in terms["wx"]], [-w for w in terms["wy"]]  # v_m - p
    for m in range(3):
        prev, nxt = (m - 1) % 3, (m + 1) % 3
        gx[m] = gx[m] + h[prev] * ry[nxt] - h[nxt] * ry[prev]
        gy[m] = gy[m] - h[prev] * rx[nxt] + h[nxt] * rx[prev]
    # outside: (b_k, b_{k+1}) = (1 - t, t), t = (w . e) / |e|^2, w = p - a, e = b - a; zero where t is clamped
    g_t = _at_nearest(one_hot, [g[(k + 1) % 3] - g[k] for k in range(3)])
    inv = _at_nearest(one_hot, inv_len2)
    g_t = g_t * (1 - inside) * ((t > 0) & (t < 1)).to(t.dtype) * inv
    ex, ey = _at_nearest(one_hot, terms["ex"]), _at_nearest(one_hot, terms["ey"])
    wx, wy = _at_nearest(one_hot, terms["wx"]), _at_nearest(one_hot, terms["wy"])
    end_x, end_y = (wx - 2 * t * ex) * g_t, (wy - 2 * t * ey) * g_t
    start_x, start_y = (2 * t * ex - ex - wx) * g_t, (2 * t * ey - ey - wy) * g_t
    for j in range(3):
        gx[j] = gx[j] + one_hot[j] * start_x + one_hot[j - 1] * end_x
        gy[j] = gy[j] + one_hot[j] * start_y + one_hot[j - 1] * end_y


def rasterize_soft(verts_ndc: Tensor, faces: Tensor, height: int, width: int, sigma: float = 1e-4,
                   eps: float = 1e-4, with_bary: bool = True, max_pairs: int = DEFAULT_MAX_PAIRS) -> Fragments:
    """Soft rasterization (SoftRas) of B meshes sharing one face list, with bounding-box culling.

    Args:
        verts_ndc: (B, V, 3) NDC x, y and depth z (nearer = smaller z).
        faces: (F, 3) int64.
        height, width: image size H, W.
        sigma: sharpness in NDC^2 (coverage sigmoid(+-d^2 / sigma)).
        eps: pairs with coverage below eps are dropped (their box margin is coverage_radius(sigma, eps)).
        with_bary: also compute barycentrics and normalized depth (for attribute shading).
        max_pairs: candidate pairs per chunk, bounding the memory of a mesh that fills the view.
    Returns:
        Fragments (see its docstring).
    """
    B, F = verts_ndc.shape[0], faces.shape[0]
    z = verts_ndc[..., 2]
    near, far = z.detach().amin(dim=1, keepdim=True), z.detach().amax(dim=1, keepdim=True)
    zn = ((far - z) / (far - near).clamp_min(1e-12))  # (B, V) normalized depth, 1 = nearest
    face_xy = verts_ndc[..., :2][:, faces].reshape(B * F, 3, 2)
    face_zn = zn[:, faces].reshape(B * F, 3)
    threshold, margin, parts = -math.log(1.0 / eps - 1.0), coverage_radius(sigma, eps), []
    for face, pixel, x, y in enumerate_face_pixels(face_xy, height, width, F, margin, max_pairs):
        logit, bary, depth_norm, keep, counts = _SoftPairs.apply(face_xy, face_zn, face, x, y, sigma, threshold,
                                                                 with_bary)
        parts.append((pixel.index_select(0, keep), face.index_select(0, keep), counts, logit, bary, depth_norm))
    if not parts:
        empty = torch.zeros(0, dtype=torch.long, device=verts_ndc.device)
        parts = [(empty, empty, torch.zeros(B * F, dtype=torch.long, device=verts_ndc.device),
                  verts_ndc.new_zeros(0), verts_ndc.new_zeros(3, 0), verts_ndc.new_zeros(0))]
    pixel, face, counts, logit, bary, depth_norm = zip(*parts)
    return Fragments(torch.cat(pixel), torch.cat(face), sum(counts[1:], counts[0]), torch.cat(logit),
                     torch.cat(bary, 1) if with_bary else None, torch.cat(depth_norm) if with_bary else None,
                     B, height, width, F)
