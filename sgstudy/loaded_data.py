"""The dataset splits and training statistics this process loaded, kept for its next session.

A Ray Tune worker runs trial after trial (actor reuse, ``trainables.study``), mostly on one
dataset: its annotations are parsed, and its statistics counted, once per process instead of
once per trial. An entry is keyed by everything it is built from, and by the size and
modification time of every file directly under the dataset root (the annotation files; the
images are read per item anyway), so an edited dataset is read again. Only the entries of one
dataset state are kept: a session on another dataset, or on the same one edited, drops them.

The objects are shared between sessions, so they must not be changed by one: datasets and
statistics are read-only to training (a model copies what it takes from the statistics).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

FileState = tuple[str, tuple[tuple[str, int, int], ...]]


def dataset_state(root: str | Path) -> FileState | None:
    """``(resolved root, ((name, size, mtime_ns), ...))`` of the files directly under
    ``root``; ``None`` when it is no readable folder (the loader then says what is wrong)."""
    try:
        with os.scandir(root) as entries:
            files = [
                (entry.name, entry.stat().st_size, entry.stat().st_mtime_ns)
                for entry in entries
                if entry.is_file()
            ]
    except OSError:
        return None
    return str(Path(root).resolve()), tuple(sorted(files))


class LoadedData:
    """Values built from one dataset state, each built once (see the module docstring)."""

    def __init__(self) -> None:
        self.state: FileState | None = None
        self.values: dict[Hashable, Any] = {}

    def get(self, root: str | Path, key: Hashable, build: Callable[[], T]) -> T:
        """The value of ``key`` for the dataset at ``root``; ``build()`` makes it when this
        process holds none for the dataset as its files are now."""
        state = dataset_state(root)
        if state is None:
            return build()
        if state != self.state:
            self.values.clear()
            self.state = state
        if key not in self.values:
            self.values[key] = build()
        return self.values[key]


# The process's one store: every session of the process reads through it.
LOADED = LoadedData()
