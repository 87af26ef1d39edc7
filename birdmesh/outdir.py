"""Write a job's outputs into a temporary folder and rename it into place only when the job succeeded.

Output folders are checked before any work (``check_output_dir``): a job that would fail at its end, or replace the
user's own files, is refused while nothing has been computed or written yet.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Mapping

from .errors import UserError


def _creatable_folder(path: Path, label: str) -> None:
    """UserError unless ``path`` (resolved) is a folder, or could be made one: its nearest existing ancestor is a
    writable folder."""
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{label}: is a file, not a folder (choose another name)")
        return
    ancestor = next(p for p in path.parents if p.exists())
    if not ancestor.is_dir():
        raise UserError(f"{label}: cannot create the folder, {ancestor} is a file")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"{label}: cannot create the folder, {ancestor} is not writable")


def check_folder(path: str | Path, label: str) -> Path:
    """``path`` resolved, checked to be a folder or creatable as one (e.g. a cache); ``label`` starts the error
    message, e.g. ``"--cache runs/cache"``."""
    resolved = Path(path).expanduser().resolve()
    _creatable_folder(resolved, label)
    return resolved


def check_output_dir(final: str | Path, overwrite: bool = False,
                     inputs: Mapping[str, str | Path | None] | None = None) -> Path:
    """The resolved output folder of a job, or a ``UserError`` naming it and the problem.

    Refused: an existing file (the output is a folder); the current folder, a folder holding it, the home folder
    or the root (replacing them would destroy far more than a previous output); a folder that is or holds one of
    ``inputs`` (``{"--mask": path, ...}``; None values skipped); a folder that cannot be created; an existing folder
    unless ``overwrite``. ``inputs`` keys name the inputs in the message (``"the input"``, ``"--mask"``).
    """
    label = str(final)
    path = Path(final).expanduser().resolve()
    cwd = Path.cwd().resolve()
    protected = {Path(path.anchor): "it is the root", Path.home().resolve(): "it is the home folder",
                 cwd: "it is the current folder"}  # later entries win where folders coincide
    problem = protected.get(path) or ("it holds the current folder" if path in cwd.parents else None)
    for name, given in (inputs or {}).items():
        if problem is None and given:
            source = Path(given).expanduser().resolve()
            if source == path or path in source.parents:
                problem = f"it {'is' if source == path else 'holds'} {name} {given}"
    if problem:
        raise UserError(f"{label}: refusing to use {path} as the output folder: {problem}")
    _creatable_folder(path, label)
    if path.exists() and not overwrite:
        raise UserError(f"{label}: output folder exists (pass --overwrite to replace it)")
    return path


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output_dir(final: str | Path, overwrite: bool = False,
                      inputs: Mapping[str, str | Path | None] | None = None) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``final``; on success it becomes ``final``.

    ``final`` is first checked by ``check_output_dir`` (with ``inputs``). On any exception (also Ctrl-C and, under
    ``cli_entry``, SIGTERM) the temporary folder is removed, so a failed job leaves nothing behind. An existing
    ``final`` is replaced only at the end. The folder gets the permissions a plain ``mkdir`` would give (mkdtemp's
    are 0700 whatever the umask).
    """
    final = check_output_dir(final, overwrite, inputs)
    missing = [p for p in final.parents if not p.exists()]  # created here, removed again on failure
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        tmp.chmod(0o777 & ~_umask())
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in missing:  # deepest first; only if still empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)
