"""Command line of ``python -m mesh_recon.synth``: synthetic images, videos, the flight benchmark or the demo clip.

Every command prints its config, writes into a temporary folder renamed into place on success, and saves
``config.yaml`` beside the outputs. Same arguments and seed give byte-identical data files.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from birdmesh.config import format_config, save_config
from birdmesh.errors import UserError, cli_entry
from birdmesh.outdir import atomic_output_dir

from .bird_motion import MOTIONS
from .synth import SynthSettings, batch_to_arrays, generate_batch, write_shard
from .synth_background import davis_sequences
from .synth_flight import generate_flight_clip
from .synth_flight_plan import FlightSettings, plan_clip
from .synth_video import VideoSettings, generate_video, save_npz, write_mask_png

CHUNK = 64  # samples rendered together (memory ~ CHUNK * S^2 * 30 floats)


@dataclass(frozen=True)
class ImagesJob:
    n: int = 1000  # number of images
    size: int = 128  # image side in pixels
    out: str = ""  # output folder
    seed: int = 0  # dataset seed: sample i depends only on (seed, i)
    shard_size: int = 1000  # samples per shard folder
    workers: int = 1  # processes rendering shards in parallel
    data: str = ""  # shared data folder ("" = BIRDMESH_DATA or ../shared/data)
    overwrite: bool = False  # replace an existing output folder (only once the new one is complete)
    settings: SynthSettings = field(default_factory=SynthSettings)


@dataclass(frozen=True)
class VideosJob:
    n: int = 4  # number of videos
    frames: int = 48  # frames per video
    out: str = ""
    seed: int = 0
    motions: str = ",".join(MOTIONS)  # motions cycled over the videos
    data: str = ""
    crf: int = 18  # x264 quality of the mp4 files
    overwrite: bool = False
    video: VideoSettings = field(default_factory=VideoSettings)


@dataclass(frozen=True)
class FlightJob:
    n: int = 12  # number of clips (clip i follows PROFILES[i % 12] of synth_flight_plan)
    out: str = ""
    seed: int = 0  # clip i depends only on (seed, i)
    data: str = ""
    crf: int = 18
    overwrite: bool = False
    flight: FlightSettings = field(default_factory=FlightSettings)


def _limit_threads() -> None:
    """One thread per process: on 2 cores, threads fighting inside the rasterizer cost more than they give."""
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def _write_one_shard(args: tuple) -> int:
    job, k, folder = args
    _limit_threads()
    start, stop = k * job.shard_size, min(job.n, (k + 1) * job.shard_size)
    parts = []
    for first in range(start, stop, CHUNK):
        batch = generate_batch(min(CHUNK, stop - first), job.size, job.seed, first, job.settings, job.data or None)
        parts.append(batch_to_arrays(batch))
    write_shard(Path(folder) / f"shard_{k:05d}", {f: np.concatenate([p[f] for p in parts]) for f in parts[0]})
    return stop - start


def run_images(job: ImagesJob) -> None:
    """Render ``job.n`` images into shard folders plus ``index.json`` and ``config.yaml``."""
    if job.n < 1 or job.size < 8 or job.shard_size < 1 or job.workers < 1:
        raise UserError("--n, --size, --shard-size, --workers: expected n >= 1, size >= 8, others >= 1")
    generate_batch(1, 8, job.seed, 0, job.settings, job.data or None)  # fail early on missing data, in one line
    num_shards = -(-job.n // job.shard_size)
    with atomic_output_dir(job.out, overwrite=job.overwrite) as tmp:
        save_config(job, tmp)
        tasks = [(job, k, str(tmp)) for k in range(num_shards)]
        with tqdm(total=job.n, unit="img", desc="synth images") as bar:
            if job.workers == 1:
                for task in tasks:
                    bar.update(_write_one_shard(task))
            else:
                with multiprocessing.get_context("spawn").Pool(job.workers) as pool:
                    for count in pool.imap_unordered(_write_one_shard, tasks):
                        bar.update(count)
        counts = [min(job.shard_size, job.n - k * job.shard_size) for k in range(num_shards)]
        index = {"version": 1, "size": job.size, "seed": job.seed, "count": job.n,
                 "shards": [[f"shard_{k:05d}", c] for k, c in enumerate(counts)]}
        (tmp / "index.json").write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")


def write_video_outputs(root: Path, name: str, clip, fps: float, crf: int) -> None:
    """One clip in DAVIS layout: JPEG frames, 0/255 PNG masks, mp4 and ground-truth npz."""
    from birdmesh.video import write_frames, write_video

    write_frames(root / "JPEGImages" / "480p" / name, clip.frames, "%05d.jpg", quality=92)
    for k, mask in enumerate(clip.masks):
        write_mask_png(root / "Annotations" / "480p" / name / f"{k:05d}.png", mask)
    write_video(root / "videos" / f"{name}.mp4", clip.frames, fps, crf=crf)
    (root / "gt").mkdir(exist_ok=True)
    save_npz(root / "gt" / f"{name}.npz", clip.gt)


def run_videos(job: VideosJob) -> None:
    """Render ``job.n`` clips with cycled motions into a DAVIS-style folder."""
    motions = [m.strip() for m in job.motions.split(",") if m.strip()]
    unknown = [m for m in motions if m not in MOTIONS]
    if unknown or not motions:
        raise UserError(f"--motions: expected names from {','.join(MOTIONS)}, got {job.motions!r}")
    if job.n < 1 or job.frames < 2:
        raise UserError(f"--n, --frames: expected n >= 1 and frames >= 2, got {job.n}, {job.frames}")
    _limit_threads()
    with atomic_output_dir(job.out, overwrite=job.overwrite) as tmp:
        save_config(job, tmp)
        names = []
        for i in tqdm(range(job.n), unit="video", desc="synth videos"):
            kind = motions[i % len(motions)]
            name = f"synth-{kind}-{i:03d}"
            clip = generate_video(i, job.seed, job.frames, kind, job.video, job.data or None)
            write_video_outputs(tmp, name, clip, job.video.fps, job.crf)
            names.append(name)
        (tmp / "ImageSets").mkdir()
        (tmp / "ImageSets" / "synth.txt").write_text("\n".join(names) + "\n")


def run_flight(job: FlightJob) -> None:
    """Render the flight benchmark: DAVIS layout, ``gt/``, ``ImageSets/flight.txt`` (and the same list as
    ``synth.txt``, the list ``adapt.evaluate --synthetic`` reads) and ``clips.json`` (plans and measured stats)."""
    st = job.flight
    if job.n < 1 or (st.frames and st.frames < 2) or st.width < 32 or st.height < 32:
        raise UserError(f"--n, --frames, --width, --height: expected n >= 1, frames 0 (48-80 per clip) or >= 2 "
                        f"and a frame of at least 32x32, got {job.n}, {st.frames}, {st.width}x{st.height}")
    _limit_threads()
    backgrounds = sorted(davis_sequences(job.data or None))
    with atomic_output_dir(job.out, overwrite=job.overwrite) as tmp:
        save_config(job, tmp)
        clips = []
        for i in tqdm(range(job.n), unit="clip", desc="synth flight"):
            plan = plan_clip(i, job.seed, st, backgrounds)
            clip = generate_flight_clip(plan, st, job.data or None)
            write_video_outputs(tmp, plan.name, clip, st.fps, job.crf)
            clips.append({**dataclasses.asdict(plan), "measured": clip.stats})
        (tmp / "ImageSets").mkdir()
        names = "\n".join(c["name"] for c in clips) + "\n"
        for list_name in ("flight.txt", "synth.txt"):
            (tmp / "ImageSets" / list_name).write_text(names)
        head = {"version": 1, "seed": job.seed, "width": st.width, "height": st.height, "fps": st.fps,
                "units": "speed, pan: frame widths per frame; size: bounding-sphere diameter in frame heights; "
                         "times: frames; measured sizes and speeds: pixels"}
        lines = ",\n".join(json.dumps(c) for c in clips)  # one clip a line: the file reads as a table
        (tmp / "clips.json").write_text(json.dumps(head)[:-1] + ', "clips": [\n' + lines + "\n]}\n")


def run_demo(out: str, seed: int, frames: int, width: int, height: int, motion: str, background: str,
             data: str, overwrite: bool = False) -> None:
    """The bundled demo: ``demo_bird.mp4`` and its first-frame mask ``demo_bird_mask.png`` (plus the full
    DAVIS-layout clip with ground truth under ``full/``)."""
    settings = VideoSettings(width=width, height=height, fill_min=0.6, fill_max=0.7, noise=1.0, centre_y=0.6,
                             background=background)
    job = VideosJob(n=1, frames=frames, out=out, seed=seed, motions=motion, data=data, crf=23, overwrite=overwrite,
                    video=settings)
    print(format_config(job), end="")
    _limit_threads()
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        save_config(job, tmp)
        clip = generate_video(0, seed, frames, motion, settings, data or None)
        write_video_outputs(tmp / "full", "demo_bird", clip, settings.fps, job.crf)
        shutil.copy(tmp / "full" / "videos" / "demo_bird.mp4", tmp / "demo_bird.mp4")
        write_mask_png(tmp / "demo_bird_mask.png", clip.masks[0])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mesh_recon.synth", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    images = sub.add_parser("images", help="training images in shards (SynthBirdImages)")
    images.add_argument("--n", type=int, default=1000)
    images.add_argument("--size", type=int, default=128)
    images.add_argument("--shard-size", type=int, default=1000)
    images.add_argument("--workers", type=int, default=1)
    videos = sub.add_parser("videos", help="videos with 3-D ground truth in DAVIS layout")
    videos.add_argument("--n", type=int, default=4)
    videos.add_argument("--frames", type=int, default=48)
    videos.add_argument("--width", type=int, default=854)
    videos.add_argument("--height", type=int, default=480)
    videos.add_argument("--fps", type=float, default=24.0)
    videos.add_argument("--motions", default=",".join(MOTIONS))
    flight = sub.add_parser("flight", help="flight benchmark: fast, panned, blurred clips with distractors")
    flight.add_argument("--n", type=int, default=12)
    flight.add_argument("--frames", type=int, default=0, help="frames per clip (0 = 48-80, drawn per clip)")
    flight.add_argument("--width", type=int, default=854)
    flight.add_argument("--height", type=int, default=480)
    demo = sub.add_parser("demo", help="the bundled demo clip (demo_bird.mp4 + first-frame mask)")
    demo.add_argument("--frames", type=int, default=48)
    demo.add_argument("--width", type=int, default=480)
    demo.add_argument("--height", type=int, default=270)
    demo.add_argument("--motion", default="peck", choices=MOTIONS)
    demo.add_argument("--background", default="soccerball", help="DAVIS train sequence behind the bird")
    for p in (images, videos, flight, demo):
        p.add_argument("--out", required=True, help="output folder (must not exist)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--data", default="", help="shared data folder (default: $BIRDMESH_DATA or ../shared/data)")
        p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "images":
        job = ImagesJob(n=args.n, size=args.size, out=args.out, seed=args.seed, shard_size=args.shard_size,
                        workers=args.workers, data=args.data, overwrite=args.overwrite)
        print(format_config(job), end="")
        run_images(job)
    elif args.command == "videos":
        video = dataclasses.replace(VideoSettings(), width=args.width, height=args.height, fps=args.fps)
        job = VideosJob(n=args.n, frames=args.frames, out=args.out, seed=args.seed, motions=args.motions,
                        data=args.data, overwrite=args.overwrite, video=video)
        print(format_config(job), end="")
        run_videos(job)
    elif args.command == "flight":
        settings = dataclasses.replace(FlightSettings(), width=args.width, height=args.height, frames=args.frames)
        job = FlightJob(n=args.n, out=args.out, seed=args.seed, data=args.data, overwrite=args.overwrite,
                        flight=settings)
        print(format_config(job), end="")
        run_flight(job)
    else:
        run_demo(args.out, args.seed, args.frames, args.width, args.height, args.motion, args.background, args.data,
                 args.overwrite)
    print(f"wrote {args.out}")
