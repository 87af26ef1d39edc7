"""Many bird videos through ``adapt.run``: ``python -m adapt.batch LIST_OR_FOLDER --out DIR [--config/--set ...]
[--device D] [--no-adapt] [--resize-mask] [--overwrite] [--threads N]``.

LIST_OR_FOLDER is a folder of videos (video files and subfolders of frames; masks are then guessed) or a list file
(one video per line, optionally ``--mask PATH`` or ``--box x0,y0,x1,y1``: ``adapt/batch_inputs.py``). Each video
runs the ``adapt.run`` pipeline in this process into DIR/<name>/ (written atomically, as ``adapt.run`` does); a
video whose DIR/<name>/report.json exists is skipped unless ``--overwrite``, so an interrupted batch resumes by
running the same command again. A video that fails (missing or unreadable file, bad mask, ...) is recorded with its
one-line error and the batch goes on. At the end DIR/summary.csv and DIR/summary.json (per video: status
ok/skipped/failed, frames, seconds per stage, error; sorted by name) are written atomically.

Many processes: ``torchrun --nproc_per_node=N -m adapt.batch ...``; rank r takes videos r, r + N, ... of the
name-sorted list, one at a time, and rank 0 gathers the results (gloo) and writes the summary. Each process uses
``--threads`` threads, by default max(1, cores // N) (torchrun's OMP_NUM_THREADS=1 is overridden).
Exit codes: 0 all videos ok or skipped; 1 some video failed; 2 bad batch input (one-line error, nothing run).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import time
import traceback
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from birdmesh.config import add_config_arguments, format_config, load_config, save_config
from birdmesh.errors import UserError, cli_entry
from birdmesh.outdir import atomic_output_dir, check_folder
from birdmesh.training import cleanup_distributed, setup_distributed

from . import run as single
from .batch_inputs import BatchItem, batch_items
from .config import AdaptConfig

STAGES = ("read", "propagate", "predict", "adapt", "refine", "export")  # adapt.run's report timings, in order
EXIT_SOME_FAILED = 1
# ranks meet only once all their videos are done: one rank may wait hours for the slowest (gloo's default: 30 min)
GATHER_TIMEOUT = timedelta(days=7)


def video_arguments(item: BatchItem, args: argparse.Namespace) -> argparse.Namespace:
    """``adapt.run``'s arguments for one video (its own parser, so new options keep their defaults)."""
    argv = [str(item.video)]
    if item.mask:
        argv += ["--mask", str(item.mask)]
    if item.box:
        argv.append(f"--box={item.box}")  # '=': a box starting with '-' is not an option
    argv += ["--resize-mask"] * args.resize_mask + ["--no-adapt"] * args.no_adapt
    return single.parse_args(argv)


def run_video(video_args: argparse.Namespace, cfg: AdaptConfig, out: Path, overwrite: bool) -> dict:
    """``adapt.run``'s checks and pipeline for one video into ``out`` (atomically); returns its report."""
    if not Path(video_args.input).exists():
        raise UserError(f"{video_args.input}: no such file or folder")
    inputs = {"the input": video_args.input, "--mask": video_args.mask,
              "predictor.checkpoint": cfg.predictor.checkpoint,
              "correspondence.checkpoint": cfg.correspondence.checkpoint}
    with atomic_output_dir(out, overwrite, inputs) as tmp:
        save_config(cfg, tmp)
        return single.run(video_args, cfg, tmp)


def summary_row(item: BatchItem, status: str, report: dict | None = None, error: str = "") -> dict:
    """One video's summary entry: name, input, status, frames, seconds per stage (from its report), error."""
    report = report or {}
    return {"name": item.name, "input": str(item.video), "status": status, "frames": report.get("frames"),
            "seconds": dict(report.get("timings_s", {})), "error": error}


def one_line(err: BaseException) -> str:
    """An error as one summary line; our ``UserError`` as is, anything else prefixed with its type."""
    text = " ".join(str(err).split())
    return text if isinstance(err, UserError) else f"{type(err).__name__}: {text}"


def process_video(item: BatchItem, args: argparse.Namespace, cfg: AdaptConfig, out_root: Path) -> dict:
    """Skip (finished before), run or record the failure of one video; returns its summary row.

    A ``UserError`` is the video's fault; any other exception is recorded too (its traceback on stderr), so
    one odd file cannot stop hundreds of others. Ctrl-C and SIGTERM still end the batch.
    """
    out = out_root / item.name
    if (out / "report.json").is_file() and not args.overwrite:
        try:
            return summary_row(item, "skipped", json.loads((out / "report.json").read_text()))
        except (OSError, ValueError) as err:
            return summary_row(item, "failed", error=f"{out / 'report.json'}: unreadable ({one_line(err)}); "
                                                     "pass --overwrite to redo it")
    try:
        return summary_row(item, "ok", run_video(video_arguments(item, args), cfg, out, args.overwrite))
    except Exception as err:  # noqa: BLE001 - recorded per video; the batch goes on
        if not isinstance(err, UserError):
            traceback.print_exc()
        return summary_row(item, "failed", error=one_line(err))


def stage_names(rows: list[dict]) -> list[str]:
    """The stages timed in any row: ``STAGES`` first, then others (a newer pipeline) alphabetically."""
    seen = {stage for row in rows for stage in row["seconds"]}
    return [s for s in STAGES if s in seen] + sorted(seen - set(STAGES))


def _replace_text(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path`` (never half-written)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8", newline="")
    os.replace(tmp, path)


def summary_counts(rows: list[dict]) -> dict[str, int]:
    """How many rows are ok, skipped and failed."""
    return {status: sum(row["status"] == status for row in rows) for status in ("ok", "skipped", "failed")}


def write_summary(out_root: Path, rows: list[dict]) -> Path:
    """DIR/summary.json ({"counts", "videos"}) and DIR/summary.csv (columns name, input, status, frames,
    seconds_<stage>..., error), rows sorted by name, each written atomically; returns the CSV's path."""
    rows = sorted(rows, key=lambda row: row["name"])
    out_root.mkdir(parents=True, exist_ok=True)
    _replace_text(out_root / "summary.json", json.dumps({"counts": summary_counts(rows), "videos": rows}, indent=1))
    stages = stage_names(rows)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["name", "input", "status", "frames",
                                              *(f"seconds_{s}" for s in stages), "error"])
    writer.writeheader()
    for row in rows:
        seconds = row["seconds"]
        writer.writerow({**{k: v for k, v in row.items() if k != "seconds"},
                         **{f"seconds_{s}": seconds.get(s, "") for s in stages}})
    _replace_text(out_root / "summary.csv", text.getvalue())
    return out_root / "summary.csv"


def gather_rows(rows: list[dict], rank: int, world: int) -> list[dict] | None:
    """Every rank's rows on rank 0 (gloo object gathering); None on the other ranks."""
    if world == 1:
        return rows
    gathered = [None] * world if rank == 0 else None
    dist.gather_object(rows, gathered, dst=0)
    return [row for part in gathered for row in part] if rank == 0 else None


def thread_count(requested: int, world: int) -> int:
    """``requested`` if > 0, else this machine's cores (those this process may use) shared by ``world`` ranks."""
    if requested > 0:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // world)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", metavar="LIST_OR_FOLDER",
                        help="folder of videos / frame folders, or a text file listing one video per line")
    parser.add_argument("--out", required=True, help="output folder: one subfolder per video plus summary.csv/json")
    parser.add_argument("--no-adapt", action="store_true", help="frame-wise predictor only (the baseline)")
    parser.add_argument("--resize-mask", action="store_true", help="resize masks of another size to the frames")
    parser.add_argument("--device", default=None, help="auto | cpu | cuda (overrides the config)")
    parser.add_argument("--overwrite", action="store_true", help="redo videos whose output folder exists")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per process (0: cores // processes)")
    add_config_arguments(parser, str(single.DEFAULT_CONFIG) if single.DEFAULT_CONFIG.is_file() else None)
    args = parser.parse_args(argv)
    if args.threads < 0:
        parser.error(f"--threads {args.threads}: must be >= 0")
    return args


def process_share(items: list[BatchItem], args: argparse.Namespace, cfg: AdaptConfig, out_root: Path, rank: int,
                  world: int) -> list[dict]:
    """This rank's videos, one at a time; a progress bar on rank 0 and one line per video finished."""
    rows = []
    for item in tqdm(items, desc="videos", unit="video", disable=rank != 0):
        tic = time.time()
        row = process_video(item, args, cfg, out_root)
        rows.append(row)
        prefix = f"[rank {rank}] " if world > 1 else ""
        detail = f": {row['error']}" if row["error"] else ""
        detail = f" ({time.time() - tic:.1f} s)" if row["status"] == "ok" else detail
        line = f"{prefix}{item.name}: {row['status']}{detail}"
        tqdm.write(line, file=sys.stderr if row["status"] == "failed" else sys.stdout)
    return rows


@cli_entry
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    overrides = list(args.overrides) + ([f"device={args.device}"] if args.device else [])
    cfg = load_config(AdaptConfig, args.config, overrides)
    out_root = check_folder(args.out, f"--out {args.out}")
    items = batch_items(args.source, out_root)  # every rank reads the same inputs: the same errors, the same order
    rank, world, _ = setup_distributed(cfg.device, timeout=GATHER_TIMEOUT)
    threads = thread_count(args.threads, world)
    torch.set_num_threads(threads)
    if rank == 0:
        print(format_config(cfg), flush=True)
        print(f"batch: {len(items)} videos from {args.source} into {out_root}; {world} process(es), "
              f"{threads} thread(s) each{', overwriting' if args.overwrite else ''}", flush=True)
    rows = gather_rows(process_share(items[rank::world], args, cfg, out_root, rank, world), rank, world)
    failed = 0
    if rank == 0:
        csv_path = write_summary(out_root, rows)
        counts = summary_counts(rows)
        failed = counts["failed"]
        print(f"{counts['ok']} ok, {counts['skipped']} skipped, {failed} failed: {csv_path}", flush=True)
    cleanup_distributed(world)
    if failed:
        print(f"error: {failed} of {len(items)} videos failed (their errors: {csv_path})", file=sys.stderr)
        sys.exit(EXIT_SOME_FAILED)


if __name__ == "__main__":
    main()
