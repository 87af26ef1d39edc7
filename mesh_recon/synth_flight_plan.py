"""What each clip of the synthetic flight benchmark tests: a fixed cycle of profiles, randomised within ranges.

Clip ``i`` follows ``PROFILES[i % 12]`` (speed tier, takeoff or flight, approach / leave / steady size, camera pan,
exits, distractor birds); its numbers are drawn from ``(seed, i)`` only, so adding clips never changes earlier ones.
Units: speeds and pans in fractions of the frame width per frame, sizes in fractions of the frame height (the
diameter of the bird's bounding sphere: its larger projected side is about 0.6-0.9 of it), times in frames.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SPEED_TIERS = {"slow": (0.005, 0.015), "medium": (0.02, 0.04), "fast": (0.05, 0.09), "vfast": (0.10, 0.15)}


@dataclass(frozen=True)
class Profile:
    """One row of the cycle: speed tier, motion ("takeoff" | "flap"), size change ("approach" | "leave" |
    "steady"), camera pan, number of exits, number of distractor birds."""

    speed: str
    motion: str
    scale: str
    pan: bool
    exits: int
    distractors: int


PROFILES = (
    Profile("slow", "takeoff", "leave", False, 0, 0),
    Profile("medium", "flap", "approach", True, 0, 1),
    Profile("fast", "flap", "steady", True, 1, 0),
    Profile("vfast", "flap", "approach", False, 0, 2),
    Profile("medium", "takeoff", "steady", True, 1, 0),
    Profile("slow", "flap", "approach", True, 0, 3),
    Profile("vfast", "flap", "leave", True, 1, 1),
    Profile("fast", "takeoff", "approach", False, 0, 0),
    Profile("medium", "flap", "leave", False, 1, 2),
    Profile("fast", "flap", "approach", True, 0, 1),
    Profile("vfast", "takeoff", "leave", True, 2, 0),
    Profile("slow", "flap", "leave", True, 0, 2),
)


@dataclass(frozen=True)
class FlightSettings:
    """Frame size, clip lengths and image formation of the flight benchmark."""

    width: int = 854
    height: int = 480
    fps: float = 24.0
    frames: int = 0  # frames per clip (0 = drawn per clip in min_frames..max_frames)
    min_frames: int = 48
    max_frames: int = 80
    noise: float = 2.0  # sensor noise sigma, grey levels
    jitter_strength: float = 0.4  # colour jitter of the whole clip (one draw per clip)
    blur_step_px: float = 8.0  # sub-frame renders at most this far apart along the fastest motion
    max_subframes: int = 9


@dataclass(frozen=True)
class ClipPlan:
    """The parameters of one clip (all JSON-serialisable; see the module docstring for units).

    exits: ((t_requested, frames_out), ...): the bounce nearest t_requested sends the bird out of the left or
    right border for about frames_out frames. start: anchor at frame 0 as fractions of the inner box; signs: first
    directions (+1 right / down); heading_deg: angle of travel from the horizontal; pan: peak camera velocity (x, y)
    per frame, swinging as pan * cos(2 pi t / pan_period + pan_phase) like a camera following a bird back and
    forth (the background moves the other way; pan_period 0 = constant velocity); shutter: exposure as a fraction
    of the frame interval.
    """

    name: str
    index: int
    seed: int
    num_frames: int
    motion: str
    takeoff_frames: int
    speed: float
    heading_deg: float
    start: tuple
    signs: tuple
    size_start: float
    size_end: float
    exits: tuple
    distractors: int
    pan: tuple
    pan_period: float
    pan_phase: float
    shutter: float
    elevation_deg: float
    background: str
    profile: str


def _sizes(scale: str, rng: np.random.Generator) -> tuple[float, float]:
    """(start, end) sizes: approaching and leaving birds change 2-3x, steady ones at most 1.25x."""
    if scale == "approach":
        start = rng.uniform(0.14, 0.2)
        return start, start * rng.uniform(2.0, 3.0)
    if scale == "leave":
        start = rng.uniform(0.35, 0.5)
        return start, start / rng.uniform(2.0, 3.0)
    start = rng.uniform(0.2, 0.4)
    return start, start * rng.uniform(0.8, 1.25)


def _exits(count: int, num_frames: int, rng: np.random.Generator) -> tuple:
    """``count`` exits spread over the middle of the clip, each 3-7 frames out (bounds make it up to ~10)."""
    if count == 0:
        return ()
    centres = np.linspace(0.3, 0.65, count) if count > 1 else [rng.uniform(0.35, 0.5)]
    return tuple((float(round(c * num_frames, 1)), int(rng.integers(3, 8))) for c in centres)


def plan_clip(index: int, seed: int, settings: FlightSettings, backgrounds: list[str]) -> ClipPlan:
    """The plan of clip ``index`` of benchmark ``seed`` (deterministic; depends on nothing else but the settings)."""
    if index < 0:
        raise ValueError(f"index: expected >= 0, got {index}")
    rng = np.random.default_rng([int(seed), int(index), 11])
    profile = PROFILES[index % len(PROFILES)]
    frames = settings.frames or int(rng.integers(settings.min_frames, settings.max_frames + 1))
    takeoff = profile.motion == "takeoff"
    size_start, size_end = _sizes(profile.scale, rng)
    pan, period, phase = (0.0, 0.0), 0.0, 0.0
    if profile.pan:  # swings keep the window inside one background frame (a constant pan would need tiling)
        angle, speed = np.radians(rng.uniform(-15, 15)), rng.uniform(0.01, 0.03)
        pan = (float(speed * np.cos(angle)), float(speed * np.sin(angle)))
        period, phase = rng.uniform(30, 60), rng.uniform(0, 2 * np.pi)
    start = (float(rng.uniform(0.1, 0.9)), float(rng.uniform(0.85, 1.0) if takeoff else rng.uniform(0.2, 0.8)))
    signs = (float(rng.choice([-1, 1])), -1.0 if takeoff else float(rng.choice([-1, 1])))
    summary = (f"{profile.speed} {profile.motion}, {profile.scale}, {'pan' if profile.pan else 'still camera'}, "
               f"{profile.exits} exit(s), {profile.distractors} distractor(s)")
    r = lambda x: round(float(x), 4)  # noqa: E731  (the plan is the record: keep its numbers readable)
    return ClipPlan(
        name=f"flight-{index:03d}-{profile.speed}", index=index, seed=seed, num_frames=frames, motion=profile.motion,
        takeoff_frames=int(rng.integers(18, 31)) if takeoff else 0, speed=r(rng.uniform(*SPEED_TIERS[profile.speed])),
        heading_deg=r(rng.uniform(15, 30) if takeoff else rng.uniform(0, 25)), start=(r(start[0]), r(start[1])),
        signs=signs, size_start=r(size_start), size_end=r(size_end), exits=_exits(profile.exits, frames, rng),
        distractors=profile.distractors, pan=(r(pan[0]), r(pan[1])), pan_period=r(period),
        pan_phase=r(phase), shutter=r(rng.uniform(0.2, 0.5)),
        elevation_deg=r(rng.uniform(-10, 35)), background=backgrounds[rng.integers(len(backgrounds))],
        profile=summary)
