"""Readable outputs of ``adapt.evaluate``: results.csv, summary.md, scores.json and PNG plots (matplotlib, Agg)."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import cv2
import numpy as np

from mesh_recon.mesh_views import TILE  # contact-sheet cell height: mesh tiles are TILE x TILE

METHOD_COLOURS = {"adapted": (220, 40, 40), "framewise": (40, 90, 230)}  # RGB; ground truth is green
GT_COLOUR = (40, 200, 60)
OVERLAY_BOX = (TILE, 2 * TILE)  # (h, w) the frame with outlines is fitted into
LABEL_BAND, GAP = 18, 4  # pixels: title band above each cell, white gap between cells
SHEET_LEGEND = ("outlines: green ground truth, red adapted, blue frame-wise; meshes: each with its own camera, "
                "the head dark, the tail tip yellow",
                "side: turned 90 deg about the image's vertical axis (camera on the left); top: 90 deg about its "
                "horizontal axis (seen from above, camera at the bottom)")

# Metric key -> (label in summary.md, higher is better; None: informative, compared with the ground truth).
METRICS = {
    "iou": ("silhouette IoU", True),
    "part_accuracy": ("part consistency, accuracy", True),
    "part_miou": ("part consistency, mean IoU", True),
    "chamfer_cam": ("Chamfer, camera frame / size (the 3-D metric)", False),
    "fscore_cam": ("F-score @ 5% size, camera frame", True),
    "chamfer_icp": ("Chamfer-L2 / size^2, ICP-aligned", False),
    "fscore_icp": ("F-score @ 5% size, ICP-aligned", True),
    "pck_0.1": ("keypoint PCK@0.1", True),
    "normal_deg": ("mesh quality: adjacent-normal angle (deg)", None),
    "folded": ("mesh quality: share of edges folded > 90 deg", None),
    "gt_normal_deg": ("ground truth: adjacent-normal angle (deg)", None),
    "gt_folded": ("ground truth: share of edges folded > 90 deg", None),
    "time_per_frame_s": ("runtime per frame (s)", False),
}


def metric_keys(rows: list[dict], distances) -> list[str]:
    """Summary metrics present in ``rows``, in reading order (IoU, consistency per d, parts, 3-D, time)."""
    stages = [k for k in dict.fromkeys(k for r in rows for k in r) if k.startswith("time_") and k not in METRICS
              and k != "time_total_s"]
    keys = ["iou"] + [f"cons_d{d}" for d in distances] + [k for k in METRICS if k != "iou"] + stages
    return [k for k in keys if any(k in r for r in rows)]


def label(key: str) -> str:
    if key.startswith("cons_d"):
        return f"reprojection consistency, d={key[6:]}"
    if key in METRICS:
        return METRICS[key][0]
    return f"runtime, {key[5:-2]} stage (s per sequence)"  # time_<stage>_s from report.json


def higher_is_better(key: str) -> bool | None:
    """None for per-stage runtimes: informative, not a score."""
    return True if key.startswith("cons_d") else METRICS[key][1] if key in METRICS else None


def write_results_csv(path: Path, rows: list[dict]) -> None:
    """One line per (sequence, method); columns in order of first appearance; floats to 6 significant digits,
    NaN and missing left empty."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(v) for k, v in row.items()})


def _csv_value(value):
    if isinstance(value, (float, np.floating)):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value


def mean_by_method(rows: list[dict], key: str) -> dict[str, float]:
    """Mean over sequences (each sequence counts once) per method; NaN-skipping."""
    out = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        values = [r.get(key, math.nan) for r in rows if r["method"] == method]
        finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
        out[method] = float(np.mean(finite)) if finite else math.nan
    return out


def _fmt(value: float) -> str:
    return "–" if not isinstance(value, (int, float)) or not math.isfinite(value) else f"{value:.4f}"


def mean_table(rows: list[dict], distances) -> list[str]:
    """Markdown table: metric | adapted | frame-wise | change (relative for Chamfer and time) | better?"""
    lines = ["| metric | adapted | frame-wise | adapted − frame-wise | adapted better |", "|---|---|---|---|---|"]
    for key in [k for k in metric_keys(rows, distances) if not k.startswith("gt_")]:  # quality_table has those
        means = mean_by_method(rows, key)
        a, f = means.get("adapted", math.nan), means.get("framewise", math.nan)
        diff, better = a - f, "–"
        if math.isfinite(diff) and higher_is_better(key) is not None:
            better = "yes" if (diff > 0) == higher_is_better(key) and diff != 0 else "no"
        lines.append(f"| {label(key)} | {_fmt(a)} | {_fmt(f)} | {_fmt(diff)} | {better} |")
    return lines


def per_sequence_table(rows: list[dict], distances) -> list[str]:
    keys = [k for k in metric_keys(rows, distances) if not k.startswith(("time", "gt_"))] + ["time_per_frame_s"]
    short = {"iou": "IoU", "part_accuracy": "part acc", "part_miou": "part mIoU", "chamfer_cam": "CD cam",
             "fscore_cam": "F@5% cam", "chamfer_icp": "CD-L2 ICP", "fscore_icp": "F@5% ICP", "pck_0.1": "PCK",
             "normal_deg": "normal°", "folded": "folded", "gt_normal_deg": "GT normal°", "gt_folded": "GT folded",
             "time_per_frame_s": "s/frame"}
    head = [short.get(k, f"cons@{k[6:]}" if k.startswith("cons_d") else k) for k in keys]
    lines = ["| sequence | method | frames | " + " | ".join(head) + " |", "|---|---|---|" + "---|" * len(keys)]
    for r in rows:
        lines.append(f"| {r['dataset']}/{r['sequence']} | {r['method']} | {r.get('frames', '')} | "
                     + " | ".join(_fmt(r.get(k, math.nan)) for k in keys) + " |")
    return lines


IOU_TARGET, IOU_GAIN_TARGET = 0.80, 0.15  # DAVIS birds: mean adapted IoU, and its lead over frame-wise
CONSISTENCY_TARGET = {10: 0.70}  # reprojection distance -> minimum mean adapted consistency
CHAMFER_GAIN_TARGET = 0.30  # synthetic: relative camera-frame Chamfer improvement over frame-wise


def _verdict(ok: bool | None) -> str:
    return "n/a (too few frames)" if ok is None else ("met" if ok else "NOT met")


def target_lines(rows: list[dict], distances) -> list[str]:
    """The project's targets, checked. On DAVIS: mean adapted IoU >= 0.80 and >= 0.15 above frame-wise;
    consistency at d = 10 >= 0.70 and, at every other distance, adapted above frame-wise. On synthetic ground
    truth: camera-frame Chamfer at least 30% lower than frame-wise."""
    lines = []
    davis = [r for r in rows if r["dataset"] == "davis"]
    if davis:
        for key in ["iou"] + [f"cons_d{d}" for d in distances]:
            m = mean_by_method(davis, key)
            a, f = m.get("adapted", math.nan), m.get("framewise", math.nan)
            known = math.isfinite(a) and math.isfinite(f)
            if key == "iou":
                goal = f"target >= {IOU_TARGET:.2f} and >= +{IOU_GAIN_TARGET:.2f}"
                ok = known and a >= IOU_TARGET and a - f >= IOU_GAIN_TARGET
            elif int(key[len("cons_d"):]) in CONSISTENCY_TARGET:
                minimum = CONSISTENCY_TARGET[int(key[len("cons_d"):])]
                goal, ok = f"target >= {minimum:.2f}", known and a >= minimum
            else:
                goal, ok = "target: adapted above frame-wise", known and a > f
            lines.append(f"- DAVIS {label(key)}: adapted {_fmt(a)} vs frame-wise {_fmt(f)} ({goal}): "
                         f"{_verdict(ok if known else None)}")
    synth = [r for r in rows if r["dataset"] == "synthetic"]
    if synth:
        m = mean_by_method(synth, "chamfer_cam")
        a, f = m.get("adapted", math.nan), m.get("framewise", math.nan)
        gain = 1 - a / f if math.isfinite(a) and math.isfinite(f) and f > 0 else math.nan
        verdict = "n/a" if not math.isfinite(gain) else _verdict(gain >= CHAMFER_GAIN_TARGET)
        lines.append(f"- synthetic camera-frame Chamfer: adapted {_fmt(a)} vs frame-wise {_fmt(f)}, improvement "
                     f"{'–' if not math.isfinite(gain) else f'{100 * gain:.1f}'}% (target >= "
                     f"{100 * CHAMFER_GAIN_TARGET:.0f}%): {verdict}")
    return lines


DEFINITIONS = """## How each number is made
- **silhouette IoU**: exported masks/%05d.png vs the ground-truth masks, mean over frames, then over sequences.
- **reprojection consistency, d**: the mesh of frame t rendered with the camera of frame t+d, IoU with the GT mask
  of t+d, mean over t (DOVE's mask reprojection); independent of per-frame camera fitting. – when T <= d.
- **part consistency**: each vertex takes its majority propagated part over all frames (votes of the pixels
  where it is the visible vertex nearest the pixel); that one labelling is rendered on every frame's mesh and
  compared with parts/%05d.png where both the render and the propagated object cover the pixel. Accuracy is the
  mean per-frame share of agreeing pixels; mean IoU averages per-part IoU over parts.
- **Chamfer, F-score, camera frame** (synthetic; the project's 3-D metric, `birdmesh.shape_metrics`): per frame
  each mesh goes to the camera frame with its own camera, P = s (R X) + [tx, ty, 0] in the frame's pixels
  (cameras.json for the prediction, the true camera for the truth); 5000 area-weighted samples each; only the
  mean depth difference is removed, nothing is fitted, so a mesh seen from the wrong side or flat towards the
  camera scores what it looks like from the side. Chamfer = (mean predicted->true nearest distance + the
  converse) / 2 over the GT bounding-box diagonal; F-score threshold 5% of that diagonal.
- **Chamfer-L2, F-score, ICP-aligned** (synthetic, for comparison with earlier runs): 2000 samples per mesh in
  the camera frame, then a similarity ICP (Umeyama on nearest neighbours both ways, 30 steps) that fits scale,
  rotation and translation. Chamfer = sum of both mean squared nearest distances / GT diagonal squared.
- **mesh quality** (every run, and the ground truth): mean angle between the normals of faces sharing an edge,
  and the share of such edges whose normals differ by more than 90 degrees (folds, spikes); mean over frames.
- **PCK@0.1** (synthetic): the predictor checkpoint's keypoint weights (softmax(vert2kp), or the articulated
  template's kp_regressor) @ verts projected with the exported camera vs the visible GT keypoints, threshold
  0.1 x the GT mask's bounding-box longer side.
- **runtime**: report.json timings_s summed (and per stage in results.csv), divided by frames. The two runs of a
  sequence share one propagation (`adapt.run --cache`): the run that reused it (report.json `propagation_reused`)
  shows the cache load in its propagate stage, as does every run when `--cache` already held the sequence.
"""


def quality_table(rows: list[dict]) -> list[str]:
    """Markdown: mesh quality per sequence of each method beside the ground truth's (– on DAVIS), then the mean
    over sequences per dataset."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    keys = [f"{m}:{k}" for k in ("normal_deg", "folded") for m in methods + ["gt"]]
    head = [f"{'GT' if m == 'gt' else m} {'normal°' if k == 'normal_deg' else 'folded'}"
            for m, k in (key.split(":") for key in keys)]
    lines = ["| sequence | " + " | ".join(head) + " |", "|---|" + "---|" * len(keys)]

    def value(subset: list[dict], key: str) -> float:
        method, metric = key.split(":")
        if method == "gt":  # the same truth beside every method: take the first row's
            return mean_by_method(subset, "gt_" + metric).get(subset[0]["method"], math.nan)
        return mean_by_method(subset, metric).get(method, math.nan)

    groups = {f"{r['dataset']}/{r['sequence']}": [x for x in rows if (x["dataset"], x["sequence"]) ==
                                                  (r["dataset"], r["sequence"])] for r in rows}
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        groups[f"**{dataset} mean**"] = [r for r in rows if r["dataset"] == dataset]
    for name, subset in groups.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(value(subset, k)) for k in keys) + " |")
    return lines


def summary_markdown(rows: list[dict], distances, meta: dict) -> str:
    """summary.md: targets, mean tables per dataset, per-sequence table, definitions, plots."""
    parts = ["# adapt.evaluate: adapted vs frame-wise", "", f"Command: `{meta.get('command', '')}`", ""]
    if meta.get("max_frames"):
        parts += [f"Only the first {meta['max_frames']} frames of each sequence were scored.", ""]
    parts += ["## Targets", *target_lines(rows, distances), ""]
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        subset = [r for r in rows if r["dataset"] == dataset]
        count = len({r["sequence"] for r in subset})
        title = f"## {dataset}: mean over {count} sequence{'s' * (count != 1)}"
        parts += [title, "", *mean_table(subset, distances), ""]
    parts += ["## Per sequence", "", *per_sequence_table(rows, distances), ""]
    if any("normal_deg" in r for r in rows):
        parts += ["## Mesh quality (lower: smoother; the ground truth's own figures beside)", "",
                  *quality_table(rows), ""]
    parts += [DEFINITIONS,
              "## Plots", "![IoU per frame](iou_per_frame.png)", "", "![consistency vs d](consistency.png)", "",
              "![contact sheet: frames with outlines (green GT, red adapted, blue frame-wise), then each mesh from its "
              "camera, the side and above](contact_sheet.png)", ""]
    return "\n".join(parts)


def overlay_masks(frame: np.ndarray, gt_mask: np.ndarray, masks: dict[str, np.ndarray],
                  box: tuple[int, int] = OVERLAY_BOX) -> np.ndarray:
    """A frame (H, W, 3) uint8 with the GT (green) and each method's silhouette outlined, scaled to fit ``box``
    (h, w) and centred on a dark band: (h, w, 3) uint8."""
    H, W = frame.shape[:2]
    ratio = min(box[0] / H, box[1] / W)
    size = (max(1, round(W * ratio)), max(1, round(H * ratio)))
    cell = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
    # The ground truth drawn thicker and first: where a method matches it, a green band stays visible.
    outlines = [(gt_mask, GT_COLOUR)] + [(m, METHOD_COLOURS.get(k, (255, 255, 0))) for k, m in masks.items()]
    for i, (mask, colour) in enumerate(outlines):
        small = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(small, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(cell, contours, -1, colour, 2 if i == 0 else 1)
    out = np.full((*box, 3), 30, np.uint8)
    top, left = (box[0] - size[1]) // 2, (box[1] - size[0]) // 2
    out[top:top + size[1], left:left + size[0]] = cell
    return out


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    import matplotlib.pyplot as plt

    return plt


def plot_iou_per_frame(path: Path, results: list[dict]) -> None:
    """One panel per sequence: IoU over frames for each method."""
    plt = _pyplot()
    n = len(results)
    fig, axes = plt.subplots(n, 1, figsize=(8, 2.4 * n), squeeze=False)
    for ax, res in zip(axes[:, 0], results):
        for method, frames in res["per_frame"].items():
            ax.plot(frames["iou"], label=method, color=np.array(METHOD_COLOURS.get(method, (0, 0, 0))) / 255)
        first = res["rows"][0]
        ax.set_title(f"{first['dataset']}/{first['sequence']}", fontsize=9)
        ax.set_ylim(0, 1)
        ax.set_ylabel("IoU")
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("frame")
    axes[0, 0].legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_consistency(path: Path, rows: list[dict], distances) -> None:
    """Reprojection consistency vs d: mean over sequences per method (thick) and per sequence (thin)."""
    plt = _pyplot()
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 3.5), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        subset = [r for r in rows if r["dataset"] == dataset]
        for method in dict.fromkeys(r["method"] for r in subset):
            colour = np.array(METHOD_COLOURS.get(method, (0, 0, 0))) / 255
            for r in (r for r in subset if r["method"] == method):
                ax.plot(distances, [r.get(f"cons_d{d}", math.nan) for d in distances], color=colour, alpha=0.3, lw=1)
            means = [mean_by_method(subset, f"cons_d{d}")[method] for d in distances]
            ax.plot(distances, means, "o-", color=colour, lw=2.5, label=method)
        ax.set_title(f"{dataset}: mask reprojection", fontsize=10)
        ax.set_xlabel("frame distance d")
        ax.set_ylabel("IoU")
        ax.set_xticks(list(distances))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def titled(title: str, image: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 -> (LABEL_BAND + h, w, 3) with ``title`` in white on black above (cut to the width)."""
    band = np.zeros((LABEL_BAND, image.shape[1], 3), np.uint8)
    cv2.putText(band, title, (3, LABEL_BAND - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return np.concatenate([band, image], 0)


def contact_sheet_image(rows_of_cells: list[list]) -> np.ndarray:
    """Rows of titled cells ((title, (h, w, 3) uint8), one height per row) under a legend band, left-aligned with
    ``GAP`` white pixels between cells and rows: (H, W, 3) uint8."""
    rows = []
    for cells in rows_of_cells:
        pieces = [titled(title, image) for title, image in cells]
        gap = np.full((pieces[0].shape[0], GAP, 3), 255, np.uint8)
        rows.append(np.concatenate([p for piece in pieces for p in (piece, gap)][:-1], 1))
    width = max(r.shape[1] for r in rows)
    legend = np.zeros((2 * LABEL_BAND, width, 3), np.uint8)
    for i, line in enumerate(SHEET_LEGEND):
        cv2.putText(legend, line, (3, (i + 1) * LABEL_BAND - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1,
                    cv2.LINE_AA)
    out = [legend]
    for r in rows:
        padded = np.full((r.shape[0], width, 3), 255, np.uint8)
        padded[:, :r.shape[1]] = r
        out += [np.full((GAP, width, 3), 255, np.uint8), padded]
    return np.concatenate(out, 0)


def save_contact_sheet(path: Path, rows_of_cells: list[list]) -> None:
    """contact_sheet_image as a PNG."""
    cv2.imwrite(str(path), cv2.cvtColor(contact_sheet_image(rows_of_cells), cv2.COLOR_RGB2BGR))


def _json_safe(x):
    """Plain JSON: NaN and infinity become null (strict parsers refuse them), numpy scalars plain numbers."""
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def write_all(folder: Path, results: list[dict], distances, meta: dict) -> None:
    """results.csv, summary.md, scores.json and the three plots of ``adapt.evaluate`` into ``folder``."""
    folder = Path(folder)
    rows = [row for res in results for row in res["rows"]]
    write_results_csv(folder / "results.csv", rows)
    (folder / "summary.md").write_text(summary_markdown(rows, distances, meta))
    per_frame = {f"{res['rows'][0]['dataset']}/{res['rows'][0]['sequence']}": res["per_frame"] for res in results}
    (folder / "scores.json").write_text(json.dumps(_json_safe({"rows": rows, "per_frame": per_frame})))
    plot_iou_per_frame(folder / "iou_per_frame.png", results)
    plot_consistency(folder / "consistency.png", rows, distances)
    save_contact_sheet(folder / "contact_sheet.png", [row for res in results for row in res["sheet"]])
