"""A launch's processes, read from /proc (Linux): which processes a study driver started.

Ray's trial workers run in process groups of their own under the raylet, so a driver's own
process group misses them; ``group_tree`` adds every descendant while the tree is intact. The
chaos benchmark finds the workers to kill this way (never by a global name match, which would
hit other people's trainings on a shared node), and the tests check what a launch left alive.
"""

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


def group_tree(pgids: set[int]) -> set[int]:
    """Every live process in the groups ``pgids`` and all their descendants."""
    table = process_table()
    found = {pid for pid, (_, pgid, state) in table.items() if pgid in pgids and state != "Z"}
    grew = True
    while grew:
        children = {
            pid
            for pid, (ppid, _, state) in table.items()
            if ppid in found and pid not in found and state != "Z"
        }
        found |= children
        grew = bool(children)
    return found


def command_line(pid: int) -> str:
    """The process's command line with spaces between arguments ("" once it has exited)."""
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
