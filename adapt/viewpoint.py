"""One viewpoint for a whole video: a track through the predictor's per-frame camera hypotheses.

A symmetric silhouette cannot tell a bird seen from the left from one seen from the right, nor often front from
back, so the articulated predictor keeps several camera hypotheses per frame with probabilities. Chosen frame by
frame, the most probable one flips between such modes; a video can decide, since a bird does not turn around in
one frame. The track minimises, by dynamic programming (Viterbi), the sum of per-frame costs (how improbable a
hypothesis is and how badly its silhouette fits the propagated mask) plus a switching cost proportional to the
rotation between consecutive chosen cameras.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mesh_recon.geometry import check_shape


def rotation_angles(a: Tensor, b: Tensor) -> Tensor:
    """Geodesic angles (radians) between rotations a (..., 3, 3) and b (..., 3, 3) (broadcast)."""
    cos = ((a.transpose(-1, -2) @ b).diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    return torch.acos(cos.clamp(-1.0, 1.0))


@dataclass(frozen=True)
class ViewpointTrack:
    """track: (T,) int64 chosen hypothesis per frame; cost: its total cost; margin: how much more the best track
    costs that never uses the track's most frequent hypothesis (inf when there is no alternative); switches: number
    of frames where the chosen hypothesis index changes; per_frame_agreement: share of frames where the track picks
    the per-frame cheapest hypothesis; alternative: (T,) that best track avoiding the most frequent hypothesis (None
    when there is none)."""

    track: Tensor
    cost: float
    margin: float
    switches: int
    per_frame_agreement: float
    alternative: Tensor | None = None


def _viterbi(unary: Tensor, pair: Tensor) -> tuple[Tensor, float]:
    """Cheapest path: unary (T, H), pair (T-1, H, H) cost of going from g at t to h at t+1."""
    T, H = unary.shape
    total = unary[0].clone()
    back = torch.zeros(T, H, dtype=torch.int64)
    for t in range(1, T):
        step = total[:, None] + pair[t - 1]  # (g, h)
        total, back[t] = step.min(0).values + unary[t], step.argmin(0)
    track = torch.empty(T, dtype=torch.int64)
    track[-1] = total.argmin()
    for t in range(T - 1, 0, -1):
        track[t - 1] = back[t, track[t]]
    return track, float(total.min())


def choose_viewpoint_track(rotations: Tensor, unary: Tensor, switch_cost: float = 2.0) -> ViewpointTrack:
    """The hypothesis sequence with the lowest per-frame costs plus ``switch_cost`` per radian of camera rotation
    between consecutive frames.

    Args:
        rotations: (T, H, 3, 3) camera rotation of every hypothesis of every frame.
        unary: (T, H) per-frame cost of each hypothesis (e.g. -log probability + silhouette misfit); inf = excluded.
        switch_cost: cost of one radian of rotation between consecutive frames' chosen cameras.
    Returns:
        ViewpointTrack.
    """
    sizes: dict = {}
    check_shape(rotations, "T H 3 3", "rotations", sizes)
    check_shape(unary, "T H", "unary", sizes)
    rotations, unary = rotations.detach().double().cpu(), unary.detach().double().cpu()
    pair = switch_cost * rotation_angles(rotations[:-1, :, None], rotations[1:, None, :])  # (T-1, H, H)
    track, cost = _viterbi(unary, pair)
    common = int(torch.bincount(track, minlength=unary.shape[1]).argmax())
    excluded = unary.clone()
    excluded[:, common] = float("inf")
    alternative, alternative_cost = _viterbi(excluded, pair)
    finite = alternative_cost < float("inf")
    return ViewpointTrack(track, cost, alternative_cost - cost, int((track[1:] != track[:-1]).sum()),
                          float((track == unary.argmin(1)).double().mean()), alternative if finite else None)


def hypothesis_costs(logits: Tensor, silhouette_iou: Tensor, iou_weight: float = 4.0) -> Tensor:
    """Per-frame cost (T, H) of each hypothesis: -log of its predicted probability + ``iou_weight`` (1 - IoU of its
    rendered silhouette with the propagated mask). logits, silhouette_iou: (T, H)."""
    check_shape(silhouette_iou, "T H", "silhouette_iou", {"T": logits.shape[0], "H": logits.shape[1]})
    return -torch.log_softmax(logits, dim=1) + iou_weight * (1 - silhouette_iou)


def viewpoint_report(track: ViewpointTrack | None, refit: dict | None = None, kept: Tensor | None = None
                     ) -> dict | None:
    """report.json's record of the video's viewpoint choice (None without camera hypotheses): the track chosen from
    the network's meshes, its cost, margin, switches and agreement; with ``refit`` (``pose_space.refine_best_track``'s
    report) also the candidates' fits, and ``kept`` (T,) the track the meshes are on."""
    if track is None:
        return None
    kept = track.track if kept is None else kept
    report = {"track": kept.tolist(), "hypothesis_counts": torch.bincount(kept).tolist(), "cost": track.cost,
              "margin": track.margin, "switches": track.switches, "per_frame_agreement": track.per_frame_agreement}
    if refit is not None:
        report["refit"] = refit
    return report
