"""``SceneGraphDataset``: one split of a VG150-format dataset as (image, SceneGraphTarget).

Split conventions (SPEC §1, as Scene-Graph-Benchmark reads VG150):
- test = images with ``split == 2``; of the others, in h5 order, the first
  ``num_val_images`` are val and the rest train. The val/train cut is made on the h5 order
  *before* any image is dropped, so that the relation filter (train only by default) can
  never move an image between val and train.
- Images without boxes are dropped from every split; images without relations are dropped
  when ``filter_empty_relations`` (default: train only, since relation training has nothing
  to learn from them; val/test keep them, the evaluator skips them).
- Train only: several predicates on the same ordered pair are reduced to one, picked at
  random but reproducibly from ``(seed, index)``; val/test keep them all.
- ``filter_non_overlap`` (train only, for SGDet): relations whose two boxes do not
  intersect are dropped (+1 pixel convention at BOX_SCALE, as Scene-Graph-Benchmark).

All annotation arrays are read once in ``__init__``; images are read lazily, from their
JPEG files or, with ``image_cache_dir``, from the node's decoded-image cache
(``sgstudy.data.image_cache``: the same tensors, without decoding).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from sgstudy.data.image_cache import (
    ImageCache,
    decode_pixels,
    open_or_build,
    pixels_to_tensor,
    split_key,
)
from sgstudy.data.vg_format import (
    BOX_SCALE,
    DICTS_NAME,
    H5_NAME,
    SPLIT_TEST,
    VGData,
    image_file,
    image_folder,
    ranges_to_index,
    read_meta,
    read_vg,
)
from sgstudy.errors import ConfigError
from sgstudy.structures import SceneGraphTarget

SPLITS = ("train", "val", "test")
DEFAULT_NUM_VAL_IMAGES = 5000


@dataclass(frozen=True)
class SplitAnnotations:
    """The annotations of one split as flat arrays. M images, B boxes, R relations.

    h5_rows:      (M,) int64, row of each image in the h5 / image_data.json
    image_ids:    (M,) int64
    widths:       (M,) int64, pixels (image_data.json)
    heights:      (M,) int64
    box_start:    (M,) int64, first row of each image in ``boxes``/``labels``
    box_count:    (M,) int64
    boxes:        (B, 4) float32, xyxy in the image's original pixels
    labels:       (B,) int64, 1-based
    rel_start:    (M,) int64, first row of each image in ``relations``
    rel_count:    (M,) int64
    relations:    (R, 3) int64 (subject, object, predicate); subject/object index the
                  image's own boxes (0..box_count-1); duplicates not yet reduced
    """

    h5_rows: np.ndarray
    image_ids: np.ndarray
    widths: np.ndarray
    heights: np.ndarray
    box_start: np.ndarray
    box_count: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    rel_start: np.ndarray
    rel_count: np.ndarray
    relations: np.ndarray


class SceneGraphDataset(Dataset):
    """One split of the VG150-format dataset under ``root``; see the module docstring.

    ``num_val_images`` None: the meta file's value, else 5,000 (VG150).
    ``filter_empty_relations`` None: True for train, False for val and test.
    ``image_cache_dir``: a cache root folder; the split's decoded images are read from (and
    on first use written to) ``<image_cache_dir>/<dataset fingerprint>/<split key>``.
    Item ``i``: (image (3, H, W) float32 in [0, 1], SceneGraphTarget with xyxy pixel boxes,
    1-based labels, relations (R, 3) local (subject, object, predicate)).
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        image_dir: str | None = None,
        num_val_images: int | None = None,
        filter_empty_relations: bool | None = None,
        filter_non_overlap: bool = False,
        seed: int = 0,
        image_cache_dir: str | Path | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        if filter_non_overlap and split != "train":
            raise ConfigError(f"filter_non_overlap applies to the train split only, not {split}")
        self.root = Path(root)
        self.split = split
        self.seed = seed
        self.image_folder = image_folder(self.root, image_dir)
        self.h5_path = self.root / H5_NAME
        self.dicts_path = self.root / DICTS_NAME
        data = read_vg(self.root)
        self.num_val_images = resolve_num_val_images(self.root, num_val_images)
        self.object_classes = data.object_classes
        self.predicate_classes = data.predicate_classes
        if filter_empty_relations is None:
            filter_empty_relations = split == "train"
        self.annotations = select_split(
            data, split, self.num_val_images, filter_empty_relations, filter_non_overlap
        )
        self.image_cache = (
            None if image_cache_dir is None else self._open_cache(Path(image_cache_dir))
        )

    def __len__(self) -> int:
        return len(self.annotations.h5_rows)

    def image_path(self, index: int) -> Path:
        return image_file(self.image_folder, int(self.annotations.image_ids[index]))

    def _open_cache(self, cache_root: Path) -> ImageCache:
        # statistics imports this module, so its fingerprint is imported here.
        from sgstudy.data.statistics import dataset_fingerprint

        fingerprint = dataset_fingerprint(self.h5_path, self.dicts_path)
        key = split_key(self.split, self.image_folder, self.annotations.image_ids)
        paths = [self.image_path(i) for i in range(len(self))]
        return open_or_build(cache_root / fingerprint / key, paths)

    def load_image(self, index: int) -> Tensor:
        """(3, H, W) float32 in [0, 1]: from the cache when there is one, else the JPEG."""
        if self.image_cache is not None:
            return self.image_cache.image(index)
        return load_image(self.image_path(index))

    def __getitem__(self, index: int) -> tuple[Tensor, SceneGraphTarget]:
        a = self.annotations
        image = self.load_image(index)
        height, width = image.shape[1:]
        boxes = a.boxes[a.box_start[index] : a.box_start[index] + a.box_count[index]]
        if (width, height) != (a.widths[index], a.heights[index]):
            # The annotation is relative to the image; follow the file's actual size.
            scale = np.array([width / a.widths[index], height / a.heights[index]] * 2)
            boxes = (boxes * scale).astype(np.float32)
        labels = a.labels[a.box_start[index] : a.box_start[index] + a.box_count[index]]
        relations = a.relations[a.rel_start[index] : a.rel_start[index] + a.rel_count[index]]
        if self.split == "train":
            relations = one_predicate_per_pair(relations, np.random.default_rng([self.seed, index]))
        target = SceneGraphTarget(
            image_id=int(a.image_ids[index]),
            image_size=(int(height), int(width)),
            boxes=torch.from_numpy(np.array(boxes, dtype=np.float32)),
            labels=torch.from_numpy(np.array(labels, dtype=np.int64)),
            relations=torch.from_numpy(np.array(relations, dtype=np.int64).reshape(-1, 3)),
        )
        return image, target


def collate_scene_graphs(
    batch: list[tuple[Tensor, SceneGraphTarget]],
) -> tuple[list[Tensor], list[SceneGraphTarget]]:
    """Images keep their own sizes, so a batch is two lists."""
    return [image for image, _ in batch], [target for _, target in batch]


def load_image(path: Path) -> Tensor:
    """(3, H, W) float32 in [0, 1]; DatasetError naming the file when it does not load."""
    return pixels_to_tensor(decode_pixels(path))


def loader_workers(requested: int | None, cpus: int | None = None) -> int:
    """DataLoader worker processes: ``requested``, else the trial's CPUs minus one (the
    training process keeps one for itself).

    ``cpus`` None: ``OMP_NUM_THREADS`` when set (Ray sets it to the CPUs a task or actor
    holds, so a trial sees its own share), else the CPUs this process may run on.
    """
    if requested is not None:
        return int(requested)
    if cpus is None:
        threads = os.environ.get("OMP_NUM_THREADS", "")
        cpus = int(threads) if threads.isdigit() else len(os.sched_getaffinity(0))
    return max(int(cpus) - 1, 0)


def resolve_num_val_images(root: Path, num_val_images: int | None) -> int:
    if num_val_images is not None:
        if num_val_images < 0:
            raise ConfigError(f"num_val_images must be >= 0, got {num_val_images}")
        return int(num_val_images)
    meta = read_meta(root)
    if meta is not None and "num_val_images" in meta:
        return int(meta["num_val_images"])
    return DEFAULT_NUM_VAL_IMAGES


def one_predicate_per_pair(relations: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Keep one random row per ordered (subject, object) pair, in first-seen pair order.

    relations: (R, 3) (subject, object, predicate) -> (R', 3). A pair's predicate is drawn
    uniformly over its rows, so a predicate annotated twice is twice as likely (as KT).
    """
    if len(relations) < 2:
        return relations
    _, first, pair_of_row = np.unique(
        relations[:, :2], axis=0, return_index=True, return_inverse=True
    )
    pair_of_row = pair_of_row.reshape(-1)
    if len(first) == len(relations):
        return relations
    # A random key per row; the row with the smallest key in each pair wins.
    keys = rng.random(len(relations))
    order = np.lexsort((keys, pair_of_row))
    winners = order[np.concatenate(([0], np.flatnonzero(np.diff(pair_of_row[order])) + 1))]
    return relations[winners[np.argsort(first)]]


def select_split(
    data: VGData,
    split: str,
    num_val_images: int,
    filter_empty_relations: bool,
    filter_non_overlap: bool,
) -> SplitAnnotations:
    """Pick the split's images and gather their boxes and relations into flat arrays."""
    rows = split_rows(data.split, split, num_val_images)
    rows = rows[data.img_to_first_box[rows] >= 0]
    rel_keep = np.ones(len(data.relationships), dtype=bool)
    if filter_non_overlap:
        rel_keep = boxes_overlap(data.boxes_1024, data.relationships)
    rel_index = _relation_rows(data, rows, rel_keep)
    if filter_empty_relations:
        rows = rows[np.array([len(r) > 0 for r in rel_index], dtype=bool)]
        rel_index = [r for r in rel_index if len(r) > 0]
    return _gather(data, rows, rel_index)


def split_rows(split_field: np.ndarray, split: str, num_val_images: int) -> np.ndarray:
    """h5 rows of the split before any filtering: test by the split field, val/train by order."""
    if split == "test":
        return np.flatnonzero(split_field == SPLIT_TEST)
    others = np.flatnonzero(split_field != SPLIT_TEST)
    return others[:num_val_images] if split == "val" else others[num_val_images:]


def boxes_overlap(boxes_1024: np.ndarray, relationships: np.ndarray) -> np.ndarray:
    """(R,) bool: the subject and object boxes intersect (+1 pixel convention)."""
    xyxy = cxcywh_to_xyxy(boxes_1024.astype(np.float64))
    s, o = xyxy[relationships[:, 0]], xyxy[relationships[:, 1]]
    width = np.minimum(s[:, 2], o[:, 2]) - np.maximum(s[:, 0], o[:, 0]) + 1
    height = np.minimum(s[:, 3], o[:, 3]) - np.maximum(s[:, 1], o[:, 1]) + 1
    return (width > 0) & (height > 0)


def cxcywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) (cx, cy, w, h) -> (N, 4) (x1, y1, x2, y2), as KT: x1 = cx - w/2, x2 = x1 + w."""
    top_left = boxes[:, :2] - boxes[:, 2:] / 2
    return np.concatenate([top_left, top_left + boxes[:, 2:]], axis=1)


def _relation_rows(data: VGData, rows: np.ndarray, keep: np.ndarray) -> list[np.ndarray]:
    """For each image row, the indices of its relations that pass ``keep``."""
    first, last = data.img_to_first_rel[rows], data.img_to_last_rel[rows]
    counts = np.where(first >= 0, last - first + 1, 0)
    flat = ranges_to_index(np.maximum(first, 0), counts)
    pieces = np.split(flat, np.cumsum(counts)[:-1]) if len(rows) else []
    return [piece[keep[piece]] for piece in pieces]


def _gather(data: VGData, rows: np.ndarray, rel_index: list[np.ndarray]) -> SplitAnnotations:
    first_box = data.img_to_first_box[rows]
    box_count = data.img_to_last_box[rows] - first_box + 1
    box_rows = ranges_to_index(first_box, box_count)
    widths = np.array([data.images[r].width for r in rows], dtype=np.int64)
    heights = np.array([data.images[r].height for r in rows], dtype=np.int64)
    # BOX_SCALE is the longest side of each image; repeat each image's scale over its boxes.
    scale = np.repeat(np.maximum(widths, heights) / BOX_SCALE, box_count)[:, None]
    boxes = cxcywh_to_xyxy(data.boxes_1024[box_rows].astype(np.float64)) * scale
    rel_count = np.array([len(r) for r in rel_index], dtype=np.int64)
    flat_rels = np.concatenate(rel_index) if rel_index else np.zeros(0, dtype=np.int64)
    local = data.relationships[flat_rels] - np.repeat(first_box, rel_count)[:, None]
    relations = np.concatenate([local, data.predicates[flat_rels][:, None]], axis=1)
    return SplitAnnotations(
        h5_rows=rows,
        image_ids=np.array([data.images[r].image_id for r in rows], dtype=np.int64),
        widths=widths,
        heights=heights,
        box_start=np.cumsum(box_count) - box_count,
        box_count=box_count,
        boxes=boxes.astype(np.float32),
        labels=data.labels[box_rows],
        rel_start=np.cumsum(rel_count) - rel_count,
        rel_count=rel_count,
        relations=relations.astype(np.int64).reshape(-1, 3),
    )
