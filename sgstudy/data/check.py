"""``check_dataset``: validate a VG150-format dataset and summarise it for a human.

What is checked, each failure one ``DatasetError`` line:
- the three annotation files exist and parse (h5 not truncated, all fields present);
- image_data.json matches the h5 in length; every index lies in range (boxes of each
  image, relation box indices inside their image's boxes, label and predicate ids inside
  the dicts) — all by ``vg_format.read_vg``;
- every image listed in image_data.json exists as ``<image folder>/<image_id>.jpg``;
- images decode fully: all of them when there are at most ``OPEN_ALL_LIMIT``, otherwise
  ``OPEN_SAMPLE`` images spread evenly over the h5 order (opening all 108k of VG150 takes
  minutes; a missing file is still caught for every image).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from sgstudy.data.dataset import SPLITS, SceneGraphDataset
from sgstudy.data.referring_format import is_referring_dataset
from sgstudy.data.statistics import DatasetStatistics, compute_statistics
from sgstudy.data.vg_format import VGData, image_file, image_folder, read_vg
from sgstudy.errors import ConfigError, DatasetError

OPEN_ALL_LIMIT = 5000
OPEN_SAMPLE = 500
HISTOGRAM_WIDTH = 40


def check_dataset(
    root: str | Path, image_dir: str | None = None, num_val_images: int | None = None
) -> str:
    """Validate the dataset under ``root`` (see the module docstring); return a summary.

    A referring-relationship dataset (``annotations_train.json`` under ``root``) is checked by
    ``sgstudy.data.referring_check`` instead.
    """
    root = Path(root)
    if is_referring_dataset(root):
        from sgstudy.data.referring_check import check_referring_dataset

        if num_val_images is not None:
            raise ConfigError(
                "--num-val-images does not apply to a referring-relationship dataset: its val "
                "split is the last 10% of the sorted train images"
            )
        return check_referring_dataset(root, image_dir)
    data = read_vg(root)
    folder = image_folder(root, image_dir)
    opened = check_images(data, folder)
    splits = {
        split: SceneGraphDataset(root, split, image_dir=image_dir, num_val_images=num_val_images)
        for split in SPLITS
    }
    statistics = compute_statistics(splits["train"])
    lines = [
        f"dataset {root} (fingerprint {statistics.fingerprint})",
        f"{len(data.object_classes) - 1} object classes, "
        f"{len(data.predicate_classes) - 1} predicate classes",
        f"{data.num_images} images in the h5, all present in {folder}; {opened} opened and decoded",
        f"val = first {splits['val'].num_val_images} non-test images; train keeps only images "
        "with relations",
        "",
        f"{'split':6s} {'images':>8s} {'objects':>9s} {'relations':>10s}",
    ]
    for split, dataset in splits.items():
        a = dataset.annotations
        lines.append(
            f"{split:6s} {len(dataset):8d} {int(a.box_count.sum()):9d} {len(a.relations):10d}"
        )
    lines += ["", *predicate_histogram(statistics)]
    return "\n".join(lines)


def check_images(data: VGData, folder: Path) -> int:
    """Every listed image exists; open and decode all or a spread sample. Returns how many
    were opened."""
    if not folder.is_dir():
        raise DatasetError(f"image folder {folder} does not exist")
    # One directory listing instead of 100k stat calls.
    present = set(os.listdir(folder))
    for info in data.images:
        if f"{info.image_id}.jpg" not in present:
            raise DatasetError(f"missing image {image_file(folder, info.image_id)}")
    count = data.num_images
    if count <= OPEN_ALL_LIMIT:
        rows = np.arange(count)
    else:
        rows = np.unique(np.linspace(0, count - 1, OPEN_SAMPLE).round().astype(np.int64))
    for row in rows:
        decode_image(image_file(folder, data.images[row].image_id))
    return len(rows)


def decode_image(path: Path) -> None:
    """Decode every pixel (a truncated file fails only then); DatasetError naming the file."""
    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, ValueError, SyntaxError) as exc:
        raise DatasetError(f"image {path} does not load ({exc})") from exc


def predicate_histogram(statistics: DatasetStatistics) -> list[str]:
    """One line per predicate, by descending training count, marked H/B/T by its group."""
    group_of = {
        i: name[0].upper() for name, ids in statistics.predicate_groups.items() for i in ids
    }
    counts = statistics.predicate_counts
    total = max(int(counts.sum()), 1)
    peak = max(int(counts.max()), 1)
    width = max(len(name) for name in statistics.predicate_classes)
    lines = ["train predicate histogram (H head, B body, T tail):"]
    for i in statistics.predicates_by_frequency():
        bar = "#" * int(round(HISTOGRAM_WIDTH * counts[i] / peak))
        lines.append(
            f"  {group_of.get(i, '?')} {statistics.predicate_classes[i]:{width}s} "
            f"{int(counts[i]):8d} {100 * counts[i] / total:5.1f}% {bar}"
        )
    return lines
