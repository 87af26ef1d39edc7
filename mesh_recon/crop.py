"""Square crops around a bird's mask, and the maps from crop NDC back to the original image's pixels.

The predictor sees a square crop in which the bird fills about as much of the frame as in its training images;
everything it predicts (silhouettes, keypoints, cameras) lives in the crop's NDC. The adaptation exports cameras
and meshes in the original frame's pixels, so every crop comes with its box and the exact inverse maps below.

Convention: a crop box is (x0, y0, x1, y1) in pixel-edge coordinates of the original image (pixel i spans
[i, i + 1)), float, square (x1 - x0 == y1 - y0), possibly reaching outside the image. Point coordinates in pixels
are pixel-centre based as in ``geometry.ndc_to_pixels`` (the centre of pixel i is at u = i). Crop NDC follows
``grid_sample(align_corners=False)``: x right, y down, the crop's borders at -1 and +1.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .geometry import check_shape


def crop_box_from_mask(mask: Tensor, padding: float = 0.2) -> Tensor:
    """Square boxes centred on each mask's bounding box, side = (1 + 2 padding) x the box's longer side.

    Args:
        mask: (B, 1, H, W) masks (> 0.5 is the object).
        padding: margin on each side as a fraction of the longer side of the mask's box (>= 0).
    Returns:
        (B, 4) float32 boxes (x0, y0, x1, y1) in pixels; an empty mask gives the largest centred square.
    """
    check_shape(mask, "B 1 H W", "mask")
    if padding < 0:
        raise ValueError(f"padding: expected >= 0, got {padding}")
    B, _, H, W = mask.shape
    fg = mask[:, 0] > 0.5
    rows, cols = fg.any(dim=2), fg.any(dim=1)  # (B, H), (B, W)
    boxes = []
    for b in range(B):
        ys, xs = torch.nonzero(rows[b]).reshape(-1), torch.nonzero(cols[b]).reshape(-1)
        if len(xs) == 0:
            cx, cy, side = W / 2, H / 2, float(min(H, W))
        else:
            x0, x1, y0, y1 = float(xs[0]), float(xs[-1]) + 1, float(ys[0]), float(ys[-1]) + 1
            cx, cy, side = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) * (1 + 2 * padding)
        boxes.append([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2])
    return torch.tensor(boxes, dtype=torch.float32, device=mask.device).reshape(B, 4)


def crop_image(image: Tensor, box: Tensor, size: int, mode: str = "bilinear",
               padding_mode: str = "border") -> Tensor:
    """Resample the square ``box`` of each image to ``size`` x ``size``, anti-aliased when shrinking.

    Args:
        image: (B, C, H, W) images or masks.
        box: (B, 4) square boxes (x0, y0, x1, y1) in pixels; may extend beyond the image.
        size: output side S.
        mode: "bilinear" or "nearest" (grid_sample modes).
        padding_mode: what is seen outside the image: "border" repeats the edge, "zeros" is black.
    Returns:
        (B, C, S, S) crops: crop NDC (x, y) shows the image point ``crop_ndc_to_pixels((x, y), box)``.
    """
    check_shape(image, "B C H W", "image")
    check_shape(box, "B 4", "box", {"B": image.shape[0]})
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size: expected a positive int, got {size!r}")
    box = box.to(image.dtype)
    factor = int(float(((box[:, 2] - box[:, 0]) / size).min()))
    if factor >= 2 and mode == "bilinear":
        # Average k x k blocks first so a 400-pixel bird does not alias into a 128-pixel crop; block j covers
        # pixels [j k, (j + 1) k), so pixel-edge coordinates simply divide by k.
        image = F.avg_pool2d(image, factor, ceil_mode=True)
        box = box / factor
    B, _, H, W = image.shape
    ticks = (2 * torch.arange(size, dtype=image.dtype, device=image.device) + 1) / size - 1
    grid_ndc = torch.stack(torch.meshgrid(ticks, ticks, indexing="xy"), -1).reshape(1, -1, 2).expand(B, -1, -1)
    uv = crop_ndc_to_pixels(grid_ndc, box)  # (B, S*S, 2) source pixel centres
    grid = torch.stack([(2 * uv[..., 0] + 1) / W - 1, (2 * uv[..., 1] + 1) / H - 1], -1)
    return F.grid_sample(image, grid.reshape(B, size, size, 2), mode=mode, padding_mode=padding_mode,
                         align_corners=False)


def crop_around_mask(image: Tensor, mask: Tensor, size: int, padding: float = 0.2) -> tuple[Tensor, Tensor]:
    """The predictor's input: a square crop centred on the mask, the bird filling 1 / (1 + 2 padding) of it.

    Args:
        image: (B, 3, H, W) in [0, 1]; mask: (B, 1, H, W) object masks.
        size: crop side S in pixels; padding: see ``crop_box_from_mask`` (0.2 matches the synthetic training
            images, where the bird's longer side fills 0.55-0.9 of the frame).
    Returns:
        crop (B, 3, S, S) and crop_box (B, 4) (x0, y0, x1, y1) in the image's pixels.
    """
    check_shape(image, "B 3 H W", "image")
    check_shape(mask, "B 1 H W", "mask", {"B": image.shape[0], "H": image.shape[2], "W": image.shape[3]})
    box = crop_box_from_mask(mask, padding)
    return crop_image(image, box, size), box


def crop_ndc_to_pixels(xy: Tensor, box: Tensor) -> Tensor:
    """Points in crop NDC -> pixel coordinates (u, v) of the original image (pixel centre i at u = i).

    Args:
        xy: (B, N, 2) crop NDC; box: (B, 4) crop boxes.
    Returns:
        (B, N, 2) pixel coordinates.
    """
    check_shape(xy, "B N 2", "xy")
    check_shape(box, "B 4", "box", {"B": xy.shape[0]})
    side = (box[:, 2:3] - box[:, 0:1])[:, None]  # (B, 1, 1)
    return box[:, None, :2] + (xy + 1) / 2 * side - 0.5


def pixels_to_crop_ndc(uv: Tensor, box: Tensor) -> Tensor:
    """Inverse of ``crop_ndc_to_pixels``: (B, N, 2) pixel coordinates -> (B, N, 2) crop NDC."""
    check_shape(uv, "B N 2", "uv")
    check_shape(box, "B 4", "box", {"B": uv.shape[0]})
    side = (box[:, 2:3] - box[:, 0:1])[:, None]
    return 2 * (uv + 0.5 - box[:, None, :2]) / side - 1


def crop_cameras_to_pixels(cams: Tensor, box: Tensor) -> Tensor:
    """Weak-perspective cameras of crop NDC -> the same cameras in the original image's pixels.

    Convention: the result [s', u0, v0, q] projects u = s' (R X)[0] + u0, v = s' (R X)[1] + v0 (pixel centres,
    as ``crop_ndc_to_pixels``); depth (R X)[2] is unchanged, so the rotation q is the same.
    Args:
        cams: (B, 7) [s, tx, ty, qw, qx, qy, qz] in crop NDC; box: (B, 4).
    Returns:
        (B, 7) [s', u0, v0, qw, qx, qy, qz] in pixels.
    """
    check_shape(cams, "B 7", "cams")
    check_shape(box, "B 4", "box", {"B": cams.shape[0]})
    half = (box[:, 2:3] - box[:, 0:1]) / 2  # (B, 1) pixels per NDC unit
    return torch.cat([cams[:, :1] * half, box[:, :2] + (cams[:, 1:3] + 1) * half - 0.5, cams[:, 3:]], dim=1)
