"""Hand-made datasets in the public referring-relationship format, for the tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

OBJECTS = ["person", "horse", "hat"]
PREDICATES = ["riding", "wearing", "near"]
HEIGHT, WIDTH = 30, 40


def relation(s_cat: int, s_box: list[float], pred: int, o_cat: int, o_box: list[float]) -> dict:
    """One relation of the public layout; boxes are [ymin, ymax, xmin, xmax], ids 0-based."""
    return {
        "subject": {"category": s_cat, "bbox": s_box},
        "predicate": pred,
        "object": {"category": o_cat, "bbox": o_box},
    }


# Image "1": two people (category 0) wearing one hat (2), the hat near a horse (1); the first
# relation is written twice. Images "2".."10" hold one relation each, "5" none.
IMAGE_1 = [
    relation(0, [2, 12, 4, 20], 1, 2, [5, 25, 22, 38]),
    relation(0, [14, 28, 0, 10], 1, 2, [5, 25, 22, 38]),
    relation(2, [5, 25, 22, 38], 2, 1, [0, 30, 0, 40]),
    relation(0, [2, 12, 4, 20], 1, 2, [5, 25, 22, 38]),
]
SIMPLE = [relation(1, [0, 10, 0, 10], 0, 0, [10, 20, 10, 20])]


def hand_made_train() -> dict[str, list[dict]]:
    train = {str(i): SIMPLE for i in range(2, 11)}
    train["1"] = IMAGE_1
    train["5"] = []
    return train


def hand_made_test() -> dict[str, list[dict]]:
    return {"11": [relation(0, [0, 30, 0, 20], 0, 1, [10, 30, 10, 40])]}


def write_dataset(
    root: Path,
    splits: dict[str, dict[str, list[dict]]],
    names: tuple[list[str], list[str]] | None = (OBJECTS, PREDICATES),
    image_dir: str = "images",
    train_metadata: str = "train_image_metadata.json",
    disk_size: tuple[int, int] = (HEIGHT, WIDTH),
) -> Path:
    """Writes ``splits`` (split -> key -> relations) with metadata saying HEIGHT x WIDTH and
    images of ``disk_size`` (height, width) named ``<key>.jpg`` for ids, else ``<key>``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / image_dir).mkdir(parents=True, exist_ok=True)
    for split, relations in splits.items():
        write_json(root / f"annotations_{split}.json", relations)
        meta_name = train_metadata if split == "train" else f"{split}_image_metadata.json"
        write_json(root / meta_name, {k: {"width": WIDTH, "height": HEIGHT} for k in relations})
        for key in relations:
            name = f"{key}.jpg" if key.isdigit() else key
            pixels = np.full((*disk_size, 3), 128, dtype=np.uint8)
            Image.fromarray(pixels).save(root / image_dir / name, format="JPEG")
    if names is not None:
        write_json(root / "objects.json", names[0])
        write_json(root / "predicates.json", names[1])
    return root


def write_hand_made(root: Path, **kwargs: Any) -> Path:
    return write_dataset(root, {"train": hand_made_train(), "test": hand_made_test()}, **kwargs)


def write_json(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload))
