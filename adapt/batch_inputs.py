"""The videos of one ``adapt.batch`` job: a folder of videos or a list file, each with its output folder name.

List file format (UTF-8 text, one video per line; paths relative to the list file's folder; quote a path holding
spaces, shell style):

    # blank lines and comments are skipped: '#' starting a word, outside quotes (clip#2.mp4 is a name)
    clips/robin.mp4
    clips/heron.mov --mask masks/heron.png
    "clips/gull 2.mp4" --box 120,40,380,300
    frames/wren                                  # a folder of frames is a video too
    clips/tern.mp4 --box=-5,0,200,150            # '=' form for negative coordinates

Each line is a video file or frame folder, optionally followed by ``--mask PATH`` (first-frame mask) or
``--box x0,y0,x1,y1`` (first-frame box, original pixels), not both; without either the mask is guessed.
A line that cannot be read (bad quoting, unknown option, a missing value, a malformed box) stops the whole job
before any work with ``LIST:LINE: problem``; a listed file that is missing or unreadable fails only its video.

Output names: the video's stem (file name without extension, or folder name). Videos sharing a stem are ordered by
their full path and the later ones get ``-2``, ``-3``, ... (skipping any name another video has as its plain stem),
so the same inputs always give the same names.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from birdmesh.errors import UserError
from birdmesh.video import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

from .inputs import box_numbers


@dataclass(frozen=True)
class BatchItem:
    """One video of a batch.

    Fields:
        name: output folder name under the batch's ``--out`` (unique within the batch);
        video: absolute path of the video file or frame folder;
        mask: absolute path of its first-frame mask, or None; box: ``"x0,y0,x1,y1"`` or None.
    """

    name: str
    video: Path
    mask: Path | None = None
    box: str | None = None


def _is_frame_folder(folder: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not p.name.startswith(".")
               for p in folder.iterdir())


def find_videos(folder: Path, exclude: Path | None = None) -> list[Path]:
    """Video files (``VIDEO_EXTENSIONS``, any case) and subfolders holding images (frame folders) directly in
    ``folder``, hidden entries and ``exclude`` (the batch's output folder) left out; sorted by path."""
    found = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or (exclude is not None and entry.resolve() == exclude):
            continue
        if entry.is_file() and entry.suffix.lower() in VIDEO_EXTENSIONS:
            found.append(entry.resolve())
        elif entry.is_dir() and _is_frame_folder(entry):
            found.append(entry.resolve())
    if not found:
        hint = " (it holds frames: run python -m adapt.run on it)" if _is_frame_folder(folder) else ""
        raise UserError(f"{folder}: no videos ({'/'.join(e[1:] for e in VIDEO_EXTENSIONS)} files or subfolders "
                        f"of frames){hint}")
    return found


def _split_line(line: str, where: str) -> list[str]:
    """Shell-style words of ``line`` before its comment: a '#' at the start of a word and outside quotes (the first
    such cut whose text before it parses; a '#' inside a word, as in ``clip#2.mp4``, is part of the word)."""
    cuts = [m.start() for m in re.finditer(r"(?:^|(?<=\s))#", line)] + [len(line)]
    for cut in cuts:
        try:
            return shlex.split(line[:cut])
        except ValueError as err:  # unbalanced quotes: this '#' is inside a quoted path, or the line is bad
            problem = err
    raise UserError(f"{where}: cannot read the line ({problem})")


def parse_list_line(line: str, base: Path, where: str) -> tuple[Path, Path | None, str | None] | None:
    """One list-file line -> (video, mask or None, box or None) with paths resolved against ``base``; None for a
    blank or comment line. ``where`` (``"list.txt:3"``) starts the ``UserError`` of an unreadable line."""
    tokens = _split_line(line, where)
    if not tokens:
        return None
    video, options = tokens[0], {}
    rest = [part for token in tokens[1:] for part in (token.split("=", 1) if token.startswith("--") else [token])]
    while rest:
        option = rest.pop(0)
        if option not in ("--mask", "--box"):
            raise UserError(f"{where}: unexpected '{option}' (a line is: VIDEO [--mask PATH | --box x0,y0,x1,y1])")
        if not rest:
            raise UserError(f"{where}: {option} needs a value")
        if options:
            raise UserError(f"{where}: give one of --mask and --box, once")
        options[option] = rest.pop(0)
    if video.startswith("-"):
        raise UserError(f"{where}: the line must start with the video's path, not '{video}'")
    if "--box" in options:
        try:
            box_numbers(options["--box"])
        except UserError as err:
            raise UserError(f"{where}: {err}") from None
    mask = options.get("--mask")
    resolve = lambda p: (base / Path(p).expanduser()).resolve()  # noqa: E731 - absolute paths pass unchanged
    return resolve(video), resolve(mask) if mask else None, options.get("--box")


def read_video_list(path: Path) -> list[tuple[Path, Path | None, str | None]]:
    """The (video, mask, box) of every line of a list file (module docstring), in file order."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file (a list of videos, one per line)") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read the list ({err.strerror})") from None
    entries = [parse_list_line(line, path.parent, f"{path}:{number}") for number, line in enumerate(lines, 1)]
    entries = [entry for entry in entries if entry is not None]
    if not entries:
        raise UserError(f"{path}: no videos listed (one video path per line)")
    return entries


def assign_names(entries: list[tuple[Path, Path | None, str | None]]) -> list[BatchItem]:
    """Unique output names (module docstring) for (video, mask, box) entries; returns the items sorted by name."""
    entries = sorted(entries, key=lambda e: (str(e[0]), str(e[1]), str(e[2])))
    stems = {_stem(video) for video, _, _ in entries}
    taken, items = set(), []
    for video, mask, box in entries:
        name, n = _stem(video), 1
        while name in taken or (n > 1 and name in stems):
            n += 1
            name = f"{_stem(video)}-{n}"
        taken.add(name)
        items.append(BatchItem(name, video, mask, box))
    return sorted(items, key=lambda item: item.name)


def _stem(video: Path) -> str:
    return video.name if video.is_dir() else video.stem


def batch_items(source: str | Path, out: Path) -> list[BatchItem]:
    """The batch's videos, sorted by output name, from a folder (``find_videos``) or a list file.

    Raises:
        UserError: ``source`` missing, a video file given instead of a list, an empty folder or list, an
            unreadable list line, or ``out`` being the folder itself (its outputs would be found as videos).
    """
    source = Path(source).expanduser()
    if not source.exists():
        raise UserError(f"{source}: no such list file or folder")
    if source.is_dir():
        if source.resolve() == out:
            raise UserError(f"--out {out}: is the folder of videos itself; choose another output folder")
        return assign_names([(video, None, None) for video in find_videos(source, exclude=out)])
    if source.suffix.lower() in VIDEO_EXTENSIONS + IMAGE_EXTENSIONS:
        raise UserError(f"{source}: one video; give a folder of videos or a list file (or use python -m adapt.run)")
    return assign_names(read_video_list(source))
