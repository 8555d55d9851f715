"""Head / body / tail partitions of the predicate classes (SPEC §1).

VG150 uses the partition of BGNN (Li et al., CVPR 2021), matched by predicate name.
Every other dataset derives one from its training annotation counts with
``partition_by_frequency`` (the synthetic generator stores the result in its meta file).
"""

from __future__ import annotations

import numpy as np

from sgstudy.data.vg_format import META_NAME
from sgstudy.errors import DatasetError

GROUP_NAMES = ("head", "body", "tail")
HEAD_SHARE = 0.5
TAIL_SHARE = 0.1

VG150_HEAD = ("on", "has", "in", "of", "wearing", "near", "behind")
VG150_BODY = (
    "with", "above", "holding", "under", "sitting on", "wears", "standing on", "in front of",
    "attached to", "at", "hanging from", "over", "for", "riding", "carrying", "walking on",
    "watching", "and", "belonging to", "looking at", "parked on",
)  # fmt: skip
VG150_NUM_PREDICATES = 50


def partition_by_frequency(counts: np.ndarray) -> dict[str, list[int]]:
    """Split predicate ids 1..C into head/body/tail by their training annotation counts.

    counts: (C + 1,) annotation count per predicate id; index 0 (background) is ignored.

    Rule: sort the predicates by count, descending (ties: lower id first).
    head = the shortest prefix that holds >= 50% of all annotations;
    tail = the longest suffix, disjoint from head, that holds <= 10% of them
    (predicates never annotated always fall in it); body = the rest.
    Each list is in descending-count order.
    """
    counts = np.asarray(counts, dtype=np.int64)
    ids = np.arange(1, len(counts))
    order = ids[np.lexsort((ids, -counts[1:]))]
    total = int(counts[1:].sum())
    if total == 0:
        return {"head": [], "body": [], "tail": order.tolist()}
    cumulative = np.cumsum(counts[order])
    num_head = int(np.searchsorted(cumulative, HEAD_SHARE * total, side="left")) + 1
    # Share held by each suffix order[k:]; the tail starts at the first k whose suffix is small.
    suffix = total - np.concatenate(([0], cumulative[:-1]))
    small = np.flatnonzero(suffix <= TAIL_SHARE * total)
    tail_start = max(int(small[0]) if small.size else len(order), num_head)
    return {
        "head": order[:num_head].tolist(),
        "body": order[num_head:tail_start].tolist(),
        "tail": order[tail_start:].tolist(),
    }


def vg150_partition(predicate_classes: list[str]) -> dict[str, list[int]] | None:
    """BGNN's partition as ids of ``predicate_classes`` (index 0 background), or None when
    the classes are not VG150's (50 predicates including all head and body names)."""
    index = {name: i for i, name in enumerate(predicate_classes) if i > 0}
    if len(index) != VG150_NUM_PREDICATES or not set(VG150_HEAD + VG150_BODY) <= set(index):
        return None
    named = set(VG150_HEAD + VG150_BODY)
    return {
        "head": [index[name] for name in VG150_HEAD],
        "body": [index[name] for name in VG150_BODY],
        "tail": [i for name, i in index.items() if name not in named],
    }


def ids_from_names(
    groups: dict[str, list[str]], predicate_classes: list[str]
) -> dict[str, list[int]]:
    """A partition stored by name (the meta file) as predicate ids; unknown names raise
    DatasetError."""
    index = {name: i for i, name in enumerate(predicate_classes) if i > 0}
    unknown = [n for names in groups.values() for n in names if n not in index]
    if unknown or set(groups) - set(GROUP_NAMES):
        bad = unknown or sorted(set(groups) - set(GROUP_NAMES))
        raise DatasetError(f"{META_NAME}: predicate_groups has unknown entries {bad}")
    return {group: [index[n] for n in groups.get(group, [])] for group in GROUP_NAMES}
