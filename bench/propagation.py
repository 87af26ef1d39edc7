"""Propagation speed and memory: our streaming propagation vs a naive implementation of the UVC protocol.

    python bench/propagation.py [--seq flamingo] [--frames 80] [--checkpoint PATH]

Each method runs in its own child process (so peak RSS is its own) on the same 480p DAVIS sequence and prints
frames/s, peak RAM and J&F; then the ratios. The naive protocol (UVC's test.py): global affinity over the whole
frame, first frame + 7 previous predictions as references, per reference the top-5 of each target mixed with
softmax(similarity / temperature), the 8 propagations averaged. Methods:
  ours         the default propagation: the object tracked (``localize``), the first frame within
               ``radius_first``, the previous frames within ``radius_previous``, on the first frame's principal
               components, one top-k over all of them; bfloat16 on CPUs with native bf16, else the encoder in int8;
  ours-fixed   the same without the tracking (``localize=False``: windows fixed in place, as before it): the
               tracking's cost;
  ours-global  our streaming code on the naive protocol (radius off, all output channels, per-frame top-k averaged,
               float32): J&F must match;
  naive        the protocol written plainly, full affinity matrices, float32.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from birdmesh.davis import load_sequence  # noqa: E402
from birdmesh.metrics import evaluate_semi_supervised  # noqa: E402
from birdmesh.runtime import cpu_name, data_root  # noqa: E402
from correspondence.checkpoint import DEFAULT_WEIGHTS, load_model  # noqa: E402
from correspondence.config import PropagationConfig  # noqa: E402
from correspondence.evaluate import _read_rgb  # noqa: E402
from correspondence.labels import index_to_soft, soft_to_index  # noqa: E402
from correspondence.model import UVC  # noqa: E402
from correspondence.propagate import (build_model, encode_frame, iter_propagate, labels_to_features,  # noqa: E402
                                      upsample_labels)


METHODS = ("ours", "ours-fixed", "ours-global", "naive")
PROTOCOL_TEMPERATURE = 0.02  # the protocol (our learned default is 0.05)


def naive_uvc(frames, labels0, model, topk=5, previous=7, temperature=PROTOCOL_TEMPERATURE):
    """UVC's protocol written plainly: full affinities, per-reference top-k, average of the references."""
    feats, labels, out = [], [], []
    for t, frame in enumerate(frames):
        feat = encode_frame(model, frame, use_bf16=False)
        C, h, w = feat.shape
        if t == 0:
            lab = labels_to_features(labels0, (h, w))
        else:
            refs = [0] + list(range(max(1, t - previous), t))
            preds = []
            for r in refs:
                affinity = feats[r].flatten(1).T @ feat.flatten(1)  # (N_ref, N_tar)
                top = affinity.topk(topk, dim=0)
                weights = torch.softmax(top.values / temperature, dim=0)  # (topk, N_tar)
                preds.append((labels[r].flatten(1)[:, top.indices] * weights[None]).sum(1))
            lab = torch.stack(preds).mean(0).view(-1, h, w)
            lab = lab / lab.sum(0, keepdim=True).clamp_min(1e-8)
        feats.append(feat)
        labels.append(lab)
        out.append(lab)
    return out


def run_child(method: str, seq_name: str, frames: int, checkpoint: str) -> dict:
    torch.set_num_threads(2)
    seq = load_sequence(data_root() / "davis2016", seq_name)
    if not Path(checkpoint).exists():
        model = UVC().eval()
    elif method == "naive":
        model = load_model(checkpoint)[0]
    else:  # our inference path: batch norms folded, channels-last
        model = build_model("learned", checkpoint, torch.device("cpu"))
    gt = seq.read_labels()[:frames]
    first = np.where(gt[0] == 255, 0, gt[0])
    images = [_read_rgb(p, 854) for p in seq.frames[:frames]]
    labels0 = index_to_soft(first, int(first.max()) + 1)
    tic = time.time()
    if method in ("ours", "ours-fixed"):
        stream = list(iter_propagate(iter(images), labels0, model, PropagationConfig(localize=method == "ours")))
    elif method == "ours-global":
        protocol = PropagationConfig(radius=0, first_frame_global=True, context_mixing="average", use_bf16=False,
                                     use_int8=False, match_dims=0, layer2_weight=0.0, pixel_weight=0.0,
                                     temperature=PROTOCOL_TEMPERATURE)
        stream = list(iter_propagate(iter(images), labels0, model, protocol))
    else:
        stream = naive_uvc(images, labels0, model)
    seconds = time.time() - tic
    pred = np.stack([first] + [soft_to_index(upsample_labels(lab, first.shape)) for lab in stream[1:]])
    scores = evaluate_semi_supervised(pred, gt)
    jf = (np.mean(scores["J"]) + np.mean(scores["F"])) / 2
    return {"method": method, "frames_per_s": len(images) / seconds, "peak_rss_mb":
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "J&F": float(jf)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", default="flamingo")
    parser.add_argument("--frames", type=int, default=80)
    parser.add_argument("--checkpoint", default=str(DEFAULT_WEIGHTS))
    parser.add_argument("--child", choices=METHODS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(args.child, args.seq, args.frames, args.checkpoint)))
        return
    print(f"CPU: {cpu_name()}; 2 torch threads; {args.seq}, {args.frames} frames at 480p")
    results = {}
    for method in METHODS:
        cmd = [sys.executable, __file__, "--child", method, "--seq", args.seq, "--frames", str(args.frames),
               "--checkpoint", args.checkpoint]
        results[method] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                                     .strip().splitlines()[-1])
        r = results[method]
        print(f"{method:11s} {r['frames_per_s']:.2f} frames/s  peak RSS {r['peak_rss_mb']:.0f} MB  J&F {r['J&F']:.4f}")
    ours, fixed = results["ours"], results["ours-fixed"]
    print(f"tracking cost: ours / ours-fixed frames/s {ours['frames_per_s'] / fixed['frames_per_s']:.2f}x, peak RSS "
          f"{ours['peak_rss_mb'] / fixed['peak_rss_mb']:.2f}x, J&F {100 * (ours['J&F'] - fixed['J&F']):+.2f} points")
    naive = results["naive"]
    for method in ("ours", "ours-global"):
        r = results[method]
        print(f"{method} vs naive: speed-up {r['frames_per_s'] / naive['frames_per_s']:.1f}x, peak RSS "
              f"{r['peak_rss_mb'] / naive['peak_rss_mb']:.2f}x, J&F {100 * (r['J&F'] - naive['J&F']):+.2f} points "
              f"({args.seq}, {args.frames} frames at 480p)")


if __name__ == "__main__":
    main()
