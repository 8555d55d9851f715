"""``check_referring_dataset``: validate a referring-relationship dataset and summarise it.

What is checked, each failure one ``DatasetError`` line (``sgstudy data check`` prints it
and exits with status 2):
- ``annotations_{train,test}.json`` and their metadata parse, every image of an annotation
  file has metadata, every relation has integer category / predicate ids inside the class
  lists and a bbox ``[ymin, ymax, xmin, xmax]`` with ``0 <= min <= max``
  (``referring_format.read_split_file``);
- every annotated image exists in the image folder (one listing of it);
- images decode: all when there are at most ``OPEN_ALL_LIMIT``, else a spread sample.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sgstudy.data.check import OPEN_ALL_LIMIT, OPEN_SAMPLE, decode_image
from sgstudy.data.dataset import SPLITS
from sgstudy.data.referring import ReferringDataset, compute_referring_statistics
from sgstudy.data.referring_format import annotations_path, image_file_name, referring_image_folder
from sgstudy.errors import DatasetError


def check_referring_dataset(root: str | Path, image_dir: str | None = None) -> str:
    """Validate the dataset under ``root`` (see the module docstring); return a summary."""
    root = Path(root)
    if not annotations_path(root, "test").is_file():
        raise DatasetError(f"missing dataset file {annotations_path(root, 'test')}")
    splits = {split: ReferringDataset(root, split, image_dir) for split in SPLITS}
    folder = referring_image_folder(root, image_dir)
    keys = [key for dataset in splits.values() for key in dataset.annotations.keys]
    opened = check_images([image_file_name(key) for key in keys], folder)
    statistics = compute_referring_statistics(splits["train"])
    lines = [
        f"referring-relationship dataset {root} (fingerprint {statistics.fingerprint})",
        f"{len(statistics.object_classes) - 1} entity classes, "
        f"{len(statistics.predicate_classes) - 1} predicate classes",
        f"{len(keys)} annotated images, all present in {folder}; {opened} opened and decoded",
        "val = last 10% of the sorted train image keys",
        "",
        f"{'split':6s} {'images':>8s} {'queries':>9s} {'entities':>9s} {'relations':>10s}",
    ]
    for split, dataset in splits.items():
        a = dataset.annotations
        lines.append(
            f"{split:6s} {len(a.keys):8d} {len(dataset):9d} {len(a.labels):9d} "
            f"{len(a.relations):10d}"
        )
    lines += ["", *query_histogram(statistics.predicate_classes, statistics.query_counts)]
    return "\n".join(lines)


def check_images(names: list[str], folder: Path) -> int:
    """Every named image exists in ``folder``; decode all or a spread sample. Returns how many
    were opened."""
    if not folder.is_dir():
        raise DatasetError(f"image folder {folder} does not exist")
    present = set(os.listdir(folder))
    for name in names:
        if name not in present:
            raise DatasetError(f"missing image {folder / name}")
    rows = np.arange(len(names))
    if len(names) > OPEN_ALL_LIMIT:
        rows = np.unique(np.linspace(0, len(names) - 1, OPEN_SAMPLE).round().astype(np.int64))
    for row in rows:
        decode_image(folder / names[row])
    return len(rows)


def query_histogram(predicate_classes: list[str], query_counts: np.ndarray) -> list[str]:
    """One line per predicate with training queries, by descending count."""
    total = max(int(query_counts.sum()), 1)
    width = max(len(name) for name in predicate_classes)
    order = np.argsort(-query_counts[1:], kind="stable") + 1
    lines = ["train queries per predicate:"]
    for i in order:
        if query_counts[i]:
            lines.append(
                f"  {predicate_classes[i]:{width}s} {int(query_counts[i]):8d} "
                f"{100 * query_counts[i] / total:5.1f}%"
            )
    return lines
