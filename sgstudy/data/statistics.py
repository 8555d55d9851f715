"""Training-split statistics that models and evaluation need: class names, predicate and
(subject, object, predicate) counts, seen triplets, the head/body/tail partition, and a
fingerprint of the dataset files for tracking.

Counts are taken over the training annotations as the dataset holds them (after the
optional non-overlap filter, *before* duplicate predicates on a pair are reduced), as in
Scene-Graph-Benchmark's frequency statistics. One difference, on purpose: column 0 of
``pair_predicate_counts`` counts the ordered object pairs (i != j) of training images that
carry *no* relation, so that row (s, o) is a distribution over background and predicates;
Scene-Graph-Benchmark counts every overlapping pair there.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sgstudy.data.dataset import SceneGraphDataset, SplitAnnotations
from sgstudy.data.predicate_groups import (
    GROUP_NAMES,
    ids_from_names,
    partition_by_frequency,
    vg150_partition,
)
from sgstudy.data.vg_format import read_meta

FINGERPRINT_LENGTH = 12
PAIR_CHUNK_IMAGES = 4096


@dataclass
class DatasetStatistics:
    """O object classes, C predicate classes (index 0 of both is background).

    object_classes:        O + 1 names
    predicate_classes:     C + 1 names
    predicate_counts:      (C + 1,) int64 training annotations per predicate; [0] = 0
    pair_predicate_counts: (O + 1, O + 1, C + 1) int64; [s, o, p] training annotations of
                           predicate p between subject label s and object label o; [s, o, 0]
                           ordered pairs of those labels with no relation
    train_triplets:        (T, 3) int64 unique (subject label, predicate, object label)
    predicate_groups:      "head"/"body"/"tail" -> predicate ids
    fingerprint:           short sha256 of the h5 and dicts json bytes
    """

    object_classes: list[str]
    predicate_classes: list[str]
    predicate_counts: np.ndarray
    pair_predicate_counts: np.ndarray
    train_triplets: np.ndarray
    predicate_groups: dict[str, list[int]]
    fingerprint: str

    def predicates_by_frequency(self) -> list[int]:
        """Predicate ids 1..C by descending training count (ties: lower id first)."""
        ids = np.arange(1, len(self.predicate_counts))
        return ids[np.lexsort((ids, -self.predicate_counts[1:]))].tolist()

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types; ``pair_predicate_counts`` as its shape and nonzero entries."""
        nonzero = np.argwhere(self.pair_predicate_counts)
        values = self.pair_predicate_counts[tuple(nonzero.T)]
        return {
            "object_classes": list(self.object_classes),
            "predicate_classes": list(self.predicate_classes),
            "predicate_counts": self.predicate_counts.tolist(),
            "pair_predicate_counts": {
                "shape": list(self.pair_predicate_counts.shape),
                "nonzero": np.concatenate([nonzero, values[:, None]], axis=1).tolist(),
            },
            "train_triplets": self.train_triplets.tolist(),
            "predicate_groups": {k: list(v) for k, v in self.predicate_groups.items()},
            "fingerprint": self.fingerprint,
        }

    @staticmethod
    def from_json(d: dict[str, Any]) -> DatasetStatistics:
        pairs = d["pair_predicate_counts"]
        counts = np.zeros(pairs["shape"], dtype=np.int64)
        entries = np.asarray(pairs["nonzero"], dtype=np.int64).reshape(-1, 4)
        counts[tuple(entries[:, :3].T)] = entries[:, 3]
        return DatasetStatistics(
            object_classes=list(d["object_classes"]),
            predicate_classes=list(d["predicate_classes"]),
            predicate_counts=np.asarray(d["predicate_counts"], dtype=np.int64),
            pair_predicate_counts=counts,
            train_triplets=np.asarray(d["train_triplets"], dtype=np.int64).reshape(-1, 3),
            predicate_groups={k: [int(i) for i in v] for k, v in d["predicate_groups"].items()},
            fingerprint=str(d["fingerprint"]),
        )


def compute_statistics(train_dataset: SceneGraphDataset) -> DatasetStatistics:
    """Statistics of ``train_dataset`` from its annotation arrays (no image is read)."""
    predicate_counts, pair_counts, triplets = count_relations(
        train_dataset.annotations,
        len(train_dataset.object_classes),
        len(train_dataset.predicate_classes),
    )
    return DatasetStatistics(
        object_classes=list(train_dataset.object_classes),
        predicate_classes=list(train_dataset.predicate_classes),
        predicate_counts=predicate_counts,
        pair_predicate_counts=pair_counts,
        train_triplets=triplets,
        predicate_groups=resolve_predicate_groups(
            train_dataset.root, train_dataset.predicate_classes, predicate_counts
        ),
        fingerprint=dataset_fingerprint(train_dataset.h5_path, train_dataset.dicts_path),
    )


def count_relations(
    a: SplitAnnotations, num_objects: int, num_predicates: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(predicate_counts (C+1,), pair_predicate_counts (O+1, O+1, C+1), train_triplets (T, 3))
    of a split's annotations; ``num_objects`` and ``num_predicates`` include background."""
    image_of_rel = np.repeat(np.arange(len(a.h5_rows)), a.rel_count)
    related = a.box_start[image_of_rel][:, None] + a.relations[:, :2]  # (R, 2) rows of labels
    subjects, objects = a.labels[related[:, 0]], a.labels[related[:, 1]]
    predicates = a.relations[:, 2]
    predicate_counts = np.bincount(predicates, minlength=num_predicates).astype(np.int64)
    predicate_counts[0] = 0
    flat = (subjects * num_objects + objects) * num_predicates + predicates
    pair_counts = np.bincount(flat, minlength=num_objects * num_objects * num_predicates)
    pair_counts = pair_counts.reshape(num_objects, num_objects, num_predicates).astype(np.int64)
    pair_counts[:, :, 0] = _all_ordered_pairs(a, num_objects) - _related_pairs(
        a.labels, related, num_objects
    )
    # np.unique on one int64 key per row is much faster than on rows (axis=0).
    keys = np.unique((subjects * num_predicates + predicates) * num_objects + objects)
    triplets = np.stack(
        [keys // (num_predicates * num_objects), keys // num_objects % num_predicates,
         keys % num_objects],
        axis=1,
    )  # fmt: skip
    return predicate_counts, pair_counts, triplets.astype(np.int64).reshape(-1, 3)


def _all_ordered_pairs(a: SplitAnnotations, num_objects: int) -> np.ndarray:
    """(O + 1, O + 1) ordered box pairs i != j within an image, per (label_i, label_j)."""
    image_of_box = np.repeat(np.arange(len(a.h5_rows)), a.box_count)
    total = np.zeros((num_objects, num_objects), dtype=np.int64)
    # h[m, c] = boxes of class c in image m; pairs = sum_m h h^T minus the i == j diagonal.
    # Chunks keep h small on VG150 sizes; float64 products are exact at these magnitudes.
    for start in range(0, len(a.h5_rows), PAIR_CHUNK_IMAGES):
        lo, hi = np.searchsorted(image_of_box, [start, start + PAIR_CHUNK_IMAGES])
        index = (image_of_box[lo:hi] - start) * num_objects + a.labels[lo:hi]
        h = np.bincount(index, minlength=PAIR_CHUNK_IMAGES * num_objects).astype(np.float64)
        h = h.reshape(PAIR_CHUNK_IMAGES, num_objects)
        total += np.rint(h.T @ h).astype(np.int64)
    return total - np.diag(np.bincount(a.labels, minlength=num_objects))


def _related_pairs(labels: np.ndarray, related: np.ndarray, num_objects: int) -> np.ndarray:
    """(O + 1, O + 1) distinct ordered box pairs i != j that carry at least one relation."""
    related = related[related[:, 0] != related[:, 1]]
    keys = np.unique(related[:, 0] * len(labels) + related[:, 1])
    flat = labels[keys // len(labels)] * num_objects + labels[keys % len(labels)]
    return np.bincount(flat, minlength=num_objects * num_objects).reshape(num_objects, -1)


def resolve_predicate_groups(
    root: Path, predicate_classes: list[str], predicate_counts: np.ndarray
) -> dict[str, list[int]]:
    """VG150's BGNN partition when the predicates are VG150's, else the meta file's,
    else ``partition_by_frequency`` of the training counts."""
    vg150 = vg150_partition(predicate_classes)
    if vg150 is not None:
        return vg150
    meta = read_meta(root)
    if meta is not None and meta.get("predicate_groups") is not None:
        return ids_from_names(meta["predicate_groups"], predicate_classes)
    groups = partition_by_frequency(predicate_counts)
    return {name: groups[name] for name in GROUP_NAMES}


def dataset_fingerprint(*paths: Path) -> str:
    """First FINGERPRINT_LENGTH hex digits of sha256 over the files' bytes, in order."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()[:FINGERPRINT_LENGTH]
