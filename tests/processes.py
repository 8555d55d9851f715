"""The process table as the tests see it, read from /proc: which processes a test left alive."""

from __future__ import annotations

from pathlib import Path


def process_table() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, process group, state), read from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # it exited while we looked
            continue
        # The command name (field 2) may hold spaces and parentheses: split after its ")".
        state, ppid, pgid = stat[stat.rindex(")") + 2 :].split()[:3]
        table[int(entry.name)] = (int(ppid), int(pgid), state)
    return table


def group_members(pgid: int) -> set[int]:
    """Live (not zombie) processes of the process group ``pgid``."""
    return {
        pid for pid, (_, group, state) in process_table().items() if group == pgid and state != "Z"
    }
