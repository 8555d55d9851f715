"""``ReferringDataset``: one split of a referring-relationship dataset as (image, ReferringTarget).

The files are those of ``sgstudy.data.referring_format`` (the public CLEVR / VRD / Visual
Genome referring-relationship layout). Split conventions (SPEC §6, as Krishna et al.'s code):

- ``test`` is ``annotations_test.json``;
- ``val`` is the last 10% of the sorted training image keys (``int(n * 0.9)`` stay in
  ``train``), ``train`` the rest;
- one item per (image, query): a query is a distinct <subject class, predicate, object
  class> among the image's relations, and its targets are every subject and every object
  of the relations that share it. Queries of an image are in (subject, predicate, object)
  order; images without relations yield no item.

All annotations are read once in ``__init__``; images are read lazily.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from sgstudy.data.dataset import SPLITS, load_image
from sgstudy.data.referring_format import (
    ReferringFile,
    dataset_files,
    image_file_name,
    read_class_names,
    read_split_file,
    referring_image_folder,
)
from sgstudy.data.statistics import FINGERPRINT_LENGTH
from sgstudy.data.vg_format import ranges_to_index
from sgstudy.errors import ConfigError
from sgstudy.structures import ReferringTarget, SceneGraphTarget

VAL_FRACTION = 0.1


@dataclass(frozen=True)
class QueryIndex:
    """The queries of a split, Q of them, as flat arrays.

    image:         (Q,) int64, row of each query's image in the split's ``ReferringFile``
    queries:       (Q, 3) int64 (subject class, predicate, object class), 1-based
    subject_start: (Q,) int64, first row of each query in ``subjects``
    subject_count: (Q,) int64
    subjects:      (sum S,) int64 local box indices of the queries' subjects
    object_start, object_count, objects: the same for the objects
    """

    image: np.ndarray
    queries: np.ndarray
    subject_start: np.ndarray
    subject_count: np.ndarray
    subjects: np.ndarray
    object_start: np.ndarray
    object_count: np.ndarray
    objects: np.ndarray


class ReferringDataset(Dataset):
    """One split (train / val / test) of the referring-relationship dataset under ``root``.

    Item ``i``: (image (3, H, W) float32 in [0, 1], ReferringTarget of query ``i``) with
    xyxy pixel boxes of every annotated entity of the image, 1-based classes, all the image's
    relations and the query's subject and object indices.
    """

    def __init__(self, root: str | Path, split: str, image_dir: str | None = None) -> None:
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        self.root = Path(root)
        self.split = split
        self.image_folder = referring_image_folder(self.root, image_dir)
        self.object_classes, self.predicate_classes = read_class_names(self.root)
        parsed = read_split_file(
            self.root,
            "test" if split == "test" else "train",
            len(self.object_classes) - 1,
            len(self.predicate_classes) - 1,
        )
        self.annotations = select_images(parsed, split_image_rows(len(parsed.keys), split))
        self.queries = index_queries(self.annotations)

    def __len__(self) -> int:
        return len(self.queries.image)

    def image_path(self, row: int) -> Path:
        return self.image_folder / image_file_name(self.annotations.keys[row])

    def __getitem__(self, index: int) -> tuple[Tensor, ReferringTarget]:
        q = self.queries
        image, graph = self.scene_graph(int(q.image[index]))
        target = ReferringTarget(
            image_id=graph.image_id,
            image_size=graph.image_size,
            boxes=graph.boxes,
            labels=graph.labels,
            relations=graph.relations,
            query=torch.from_numpy(q.queries[index].copy()),
            subject_indices=_members(q.subjects, q.subject_start, q.subject_count, index),
            object_indices=_members(q.objects, q.object_start, q.object_count, index),
        )
        return image, target

    def scene_graph(self, row: int) -> tuple[Tensor, SceneGraphTarget]:
        """Image ``row`` of the split and all its annotations as a scene graph."""
        a = self.annotations
        image = load_image(self.image_path(row))
        height, width = image.shape[1:]
        entities = slice(a.box_start[row], a.box_start[row] + a.box_count[row])
        boxes = a.boxes[entities]
        if (width, height) != (a.widths[row], a.heights[row]):
            # The annotation is relative to the image; follow the file's actual size.
            boxes = boxes * np.array([width / a.widths[row], height / a.heights[row]] * 2)
        relations = a.relations[a.rel_start[row] : a.rel_start[row] + a.rel_count[row]]
        return image, SceneGraphTarget(
            image_id=int(a.image_ids[row]),
            image_size=(int(height), int(width)),
            boxes=torch.from_numpy(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)),
            labels=torch.from_numpy(a.labels[entities].copy()),
            relations=torch.from_numpy(relations.copy()),
        )


class ReferringImages(Dataset):
    """The annotated images of a referring-relationship split, one item per image with
    relations: (image, SceneGraphTarget). What ``sgstudy train-detector`` trains the class-only
    heuristic's detector on, so that it never sees the val or test images."""

    def __init__(self, root: str | Path, split: str, image_dir: str | None = None) -> None:
        self.queries = ReferringDataset(root, split, image_dir)
        self.object_classes = self.queries.object_classes
        self.predicate_classes = self.queries.predicate_classes
        self.rows = np.flatnonzero(self.queries.annotations.rel_count > 0)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[Tensor, SceneGraphTarget]:
        return self.queries.scene_graph(int(self.rows[index]))


def _members(flat: np.ndarray, start: np.ndarray, count: np.ndarray, index: int) -> Tensor:
    return torch.from_numpy(flat[start[index] : start[index] + count[index]].copy())


def split_image_rows(num_images: int, split: str) -> np.ndarray:
    """Rows of the sorted keys a split keeps: val is the last 10% of train, train the rest."""
    rows = np.arange(num_images)
    if split == "test":
        return rows
    # As Krishna et al.'s code: the first int(n * (1 - 0.1)) sorted keys stay in train.
    cut = int(num_images * (1.0 - VAL_FRACTION))
    return rows[cut:] if split == "val" else rows[:cut]


def select_images(parsed: ReferringFile, rows: np.ndarray) -> ReferringFile:
    """The images ``rows`` of a parsed file, with their boxes and relations."""
    box_rows = ranges_to_index(parsed.box_start[rows], parsed.box_count[rows])
    rel_rows = ranges_to_index(parsed.rel_start[rows], parsed.rel_count[rows])
    box_count, rel_count = parsed.box_count[rows], parsed.rel_count[rows]
    return ReferringFile(
        keys=[parsed.keys[r] for r in rows],
        image_ids=parsed.image_ids[rows],
        widths=parsed.widths[rows],
        heights=parsed.heights[rows],
        box_start=np.cumsum(box_count) - box_count,
        box_count=box_count,
        boxes=parsed.boxes[box_rows].reshape(-1, 4),
        labels=parsed.labels[box_rows],
        rel_start=np.cumsum(rel_count) - rel_count,
        rel_count=rel_count,
        relations=parsed.relations[rel_rows].reshape(-1, 3),
    )


def index_queries(a: ReferringFile) -> QueryIndex:
    """Groups every image's relations by <subject class, predicate, object class>."""
    image_of_rel = np.repeat(np.arange(len(a.keys)), a.rel_count)
    rows = a.box_start[image_of_rel][:, None] + a.relations[:, :2]  # (R, 2) rows of labels
    triplets = np.stack([a.labels[rows[:, 0]], a.relations[:, 2], a.labels[rows[:, 1]]], axis=1)
    # One query per distinct (image, triplet); np.unique sorts by image, then triplet.
    keyed = np.concatenate([image_of_rel[:, None], triplets], axis=1)
    unique, query_of_rel = np.unique(keyed, axis=0, return_inverse=True)
    query_of_rel = query_of_rel.reshape(-1)
    subjects = _distinct_members(query_of_rel, a.relations[:, 0], len(unique))
    objects = _distinct_members(query_of_rel, a.relations[:, 1], len(unique))
    return QueryIndex(unique[:, 0], unique[:, 1:].copy(), *subjects, *objects)


def _distinct_members(
    query_of_rel: np.ndarray, boxes: np.ndarray, num_queries: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(start (Q,), count (Q,), flat box indices): the distinct boxes of each query, sorted."""
    pairs = np.unique(np.stack([query_of_rel, boxes], axis=1).reshape(-1, 2), axis=0)
    count = np.bincount(pairs[:, 0], minlength=num_queries).astype(np.int64)
    return np.cumsum(count) - count, count, pairs[:, 1].astype(np.int64)


# ---------------------------------------------------------------- statistics
@dataclass
class ReferringStatistics:
    """What models and tracking need of a referring-relationship training split.

    O entity classes, C predicates (index 0 of both is background).

    object_classes:    O + 1 names
    predicate_classes: C + 1 names
    predicate_counts:  (C + 1,) int64 training relations per predicate; [0] = 0
    query_counts:      (C + 1,) int64 training queries per predicate; [0] = 0
    fingerprint:       short sha256 of the annotation, metadata and class-name files
    """

    object_classes: list[str]
    predicate_classes: list[str]
    predicate_counts: np.ndarray
    query_counts: np.ndarray
    fingerprint: str

    def to_json(self) -> dict[str, Any]:
        return {
            "object_classes": list(self.object_classes),
            "predicate_classes": list(self.predicate_classes),
            "predicate_counts": self.predicate_counts.tolist(),
            "query_counts": self.query_counts.tolist(),
            "fingerprint": self.fingerprint,
        }


def compute_referring_statistics(train_set: ReferringDataset) -> ReferringStatistics:
    """Statistics of ``train_set`` from its annotation arrays (no image is read)."""
    size = len(train_set.predicate_classes)
    predicate_counts = np.bincount(train_set.annotations.relations[:, 2], minlength=size)
    query_counts = np.bincount(train_set.queries.queries[:, 1], minlength=size)
    predicate_counts[0] = query_counts[0] = 0
    digest = hashlib.sha256()
    for path in dataset_files(train_set.root):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return ReferringStatistics(
        object_classes=list(train_set.object_classes),
        predicate_classes=list(train_set.predicate_classes),
        predicate_counts=predicate_counts.astype(np.int64),
        query_counts=query_counts.astype(np.int64),
        fingerprint=digest.hexdigest()[:FINGERPRINT_LENGTH],
    )
