"""``derive_referring_dataset``: the referring-relationship version of a VG150-format dataset.

``sgstudy data synth-rr --from DIR --out DIR`` writes the public referring-relationship
layout (``sgstudy.data.referring_format``) from the synthetic scene graphs (SPEC §1): every
annotated relation becomes one relation of the public file, so the reader's queries collect
every relation that shares its <subject class, predicate, object class>, and a query's
targets are all those subjects and all those objects.

Splits: the VG150 test images (``split == 2``) form ``annotations_test.json``, every other
image ``annotations_train.json`` (the reader carves val from it). Images without relations
are left out (they hold no query). Keys are the image ids; images are hard-linked (copied
across file systems) into ``images/<id>.jpg``. Class names go to ``objects.json`` and
``predicates.json`` in the dicts' order, so a detector trained on the source dataset with
``sgstudy train-detector`` has exactly the classes of the derived one.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from sgstudy.data.dataset import cxcywh_to_xyxy
from sgstudy.data.referring_format import (
    IMAGE_FOLDER,
    public_relation,
    write_class_names,
    write_split_file,
)
from sgstudy.data.vg_format import (
    BOX_SCALE,
    SPLIT_TEST,
    VGData,
    image_file,
    image_folder,
    read_vg,
)
from sgstudy.errors import UserError


def derive_referring_dataset(
    source: str | Path, out: str | Path, image_dir: str | None = None
) -> dict[str, int]:
    """Writes the referring-relationship version of the VG150 dataset ``source`` into ``out``.

    Returns ``{"train_images", "test_images", "relations"}``. Refuses an ``out`` that
    already holds files, before writing anything.
    """
    source, out = Path(source), Path(out)
    data = read_vg(source)
    folder = image_folder(source, image_dir)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} is not empty; name a new folder for the derived dataset")
    per_image = image_relations(data)
    missing = [i for i in per_image if not image_file(folder, data.images[i].image_id).is_file()]
    if missing:
        raise UserError(f"missing image {image_file(folder, data.images[missing[0]].image_id)}")
    (out / IMAGE_FOLDER).mkdir(parents=True, exist_ok=True)
    counts = {"train_images": 0, "test_images": 0, "relations": 0}
    for split, test in (("train", False), ("test", True)):
        rows = [i for i in per_image if (data.split[i] == SPLIT_TEST) == test]
        relations = {str(data.images[i].image_id): per_image[i] for i in rows}
        sizes = {str(data.images[i].image_id): (data.images[i].height, data.images[i].width)
                 for i in rows}  # fmt: skip
        write_split_file(out, split, relations, sizes)
        counts[f"{split}_images"] = len(rows)
        counts["relations"] += sum(len(r) for r in relations.values())
    for i in per_image:
        link_or_copy(image_file(folder, data.images[i].image_id), out / IMAGE_FOLDER)
    write_class_names(out, data.object_classes[1:], data.predicate_classes[1:])
    return counts


def image_relations(data: VGData) -> dict[int, list[dict[str, Any]]]:
    """h5 row -> the image's relations in the public layout, for images that have any."""
    relations: dict[int, list[dict[str, Any]]] = {}
    for row in np.flatnonzero(data.img_to_first_rel >= 0):
        info = data.images[row]
        scale = max(info.width, info.height) / BOX_SCALE
        first, last = data.img_to_first_rel[row], data.img_to_last_rel[row]
        pairs = data.relationships[first : last + 1]
        boxes = cxcywh_to_xyxy(data.boxes_1024[pairs.reshape(-1)].astype(np.float64)) * scale
        # Rounding at BOX_SCALE may push an edge box a fraction of a pixel outside the image.
        boxes = np.maximum(boxes, 0.0).reshape(-1, 2, 4)
        labels = data.labels[pairs]
        relations[int(row)] = [
            public_relation((labels[k, 0], boxes[k, 0]), data.predicates[first + k],
                            (labels[k, 1], boxes[k, 1]))
            for k in range(len(pairs))
        ]  # fmt: skip
    return relations


def link_or_copy(path: Path, folder: Path) -> None:
    target = folder / path.name
    try:
        os.link(path, target)
    except OSError:
        shutil.copy2(path, target)
