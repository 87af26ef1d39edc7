"""End-to-end cost of ``adapt.run``: wall time per stage and peak RAM on an 80-frame 854x480 DAVIS bird video.

    python bench/adapt.py [--seq flamingo] [--no-adapt] [--set key=value ...]

Runs the pipeline in a child process (its own peak RSS) from the ground-truth first-frame mask and prints the
per-stage times from report.json, the total wall time and the peak RSS, against the targets (<= 4 min, <= 4 GB).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from birdmesh.runtime import cpu_name, data_root  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", default="flamingo")
    parser.add_argument("--no-adapt", action="store_true")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    davis = data_root() / "davis2016"
    frames = davis / "JPEGImages" / "480p" / args.seq
    mask = davis / "Annotations" / "480p" / args.seq / "00000.png"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        cmd = [sys.executable, "-m", "adapt.run", str(frames), "--mask", str(mask), "--out", str(out)]
        cmd += ["--no-adapt"] if args.no_adapt else []
        for item in args.overrides:
            cmd += ["--set", item]
        tic = time.time()
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        wall = time.time() - tic
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        report = json.loads((out / "report.json").read_text())
    print(f"CPU: {cpu_name()}; {args.seq}: {report['frames']} frames, adapted={report['adapted']}")
    for stage, seconds in report["timings_s"].items():
        print(f"  {stage:10s} {seconds:7.1f} s  ({seconds / report['frames']:.2f} s/frame)")
    print(f"wall {wall:.1f} s (target <= 240 s: {wall / 240:.2f} of it), peak RSS {peak_mb:.0f} MB "
          f"(target <= 4096 MB: {peak_mb / 4096:.2f} of it)")


if __name__ == "__main__":
    main()
