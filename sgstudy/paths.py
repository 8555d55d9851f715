"""Up-front checks of the folders a command will write to, made before it writes anything.

Running as root, ``os.access`` says yes to nearly everything, while ``/proc`` or a read-only
mount still refuse a new file; so the check creates and removes a probe file in the nearest
folder that exists, which leaves the file system as it was.
"""

from __future__ import annotations

import fcntl
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sgstudy.errors import UserError

# A launch or run name: letters, digits, '.', '_' and '-', starting with a letter or digit.
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_plain_name(name: str, what: str) -> str:
    """``name`` if it is a plain name (no path separators, no ``..``); else ``UserError``."""
    if not PLAIN_NAME.fullmatch(name) or ".." in name:
        raise UserError(
            f"{what} {name!r} is not a plain name: use letters, digits, '.', '_' and '-' "
            "(no '/', no '..', at most 128 characters)"
        )
    return name


def check_writable_folder(path: Path, what: str) -> Path:
    """``path`` absolute, after checking that it is (or can be created as) a writable folder."""
    path = Path(path).expanduser().absolute()
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{what} {path}: {existing} is a file, not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".sgstudy-probe-"):
            pass
    except OSError as exc:
        raise UserError(f"{what} {path}: cannot write in {existing} ({exc.strerror})") from None
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path}: cannot write in {existing} (permission denied)")
    return path


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Holds an exclusive ``flock`` on ``path`` (created if missing) for the ``with`` body.

    Launches started at the same moment on one machine or one shared file system take turns
    through it, e.g. to create a SQLite store's schema once.
    """
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
