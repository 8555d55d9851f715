"""Read, validate and write the public referring-relationship format (Krishna et al., CVPR 2018).

The CLEVR, VRD and Visual Genome referring-relationship splits share one layout (SPEC §6)::

    <root>/annotations_{split}.json       {image key: [relation, ...]}
    <root>/{split}_image_metadata.json     {image key: {"width": int, "height": int}}
    <root>/objects.json, predicates.json   optional: class names, a JSON list each
    <root>/images/<image key>              the images (``image_dir`` names another folder)

A relation is ``{"subject": {"category": int, "bbox": [ymin, ymax, xmin, xmax]},
"predicate": int, "object": {...}}`` with 0-based categories and predicates and boxes in
pixels of the image. Splits are ``train`` and ``test``; validation is carved from train by
the dataset. Choices where the public files vary:

- image keys are file names (VRD: ``"3845770407_1a8cd41230_b.jpg"``) or ids (VG: ``"107899"``);
  an id's file is ``<id>.jpg``;
- the VRD release names its train metadata ``image_metadata.json``; it is read when
  ``train_image_metadata.json`` is absent;
- without ``objects.json`` / ``predicates.json`` the classes are named by index and counted
  up to the largest category the annotation files use.

In memory everything becomes 1-based with 0 as background (as VG150): entity class
``category + 1``, predicate ``predicate + 1``. Entities are the distinct (category, box)
pairs of an image, in order of first mention. Boxes become xyxy and are clipped to the
image; a box with ``ymin > ymax`` or ``xmin > xmax`` or a negative coordinate is an error.
Every problem with the files raises one ``DatasetError`` line naming the file and entry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sgstudy.data.vg_format import BACKGROUND
from sgstudy.errors import DatasetError

FILE_SPLITS = ("train", "test")
IMAGE_FOLDER = "images"
OBJECTS_NAME = "objects.json"
PREDICATES_NAME = "predicates.json"
# The VRD release's name for the train split's metadata.
LEGACY_TRAIN_METADATA = "image_metadata.json"
DEFAULT_IMAGE_SUFFIX = ".jpg"


@dataclass(frozen=True)
class ReferringFile:
    """One split file, parsed. M images, B entities, R relations.

    keys:       M image keys as written in the file, sorted (numerically when all are ids)
    image_ids:  (M,) int64: the key when it is an id, else its position in ``keys``
    widths:     (M,) int64 pixels, from the metadata file
    heights:    (M,) int64
    box_start:  (M,) int64 first row of each image in ``boxes`` / ``labels``
    box_count:  (M,) int64
    boxes:      (B, 4) float32 xyxy pixels, clipped to the image
    labels:     (B,) int64 1-based entity classes
    rel_start:  (M,) int64 first row of each image in ``relations``
    rel_count:  (M,) int64
    relations:  (R, 3) int64 (subject, object, predicate), indices local to the image,
                predicates 1-based, exact duplicates removed
    """

    keys: list[str]
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


# ---------------------------------------------------------------- paths
def annotations_path(root: Path, split: str) -> Path:
    return Path(root) / f"annotations_{split}.json"


def metadata_path(root: Path, split: str) -> Path:
    path = Path(root) / f"{split}_image_metadata.json"
    legacy = Path(root) / LEGACY_TRAIN_METADATA
    if split == "train" and not path.is_file() and legacy.is_file():
        return legacy
    return path


def is_referring_dataset(root: str | Path) -> bool:
    """True when ``root`` holds the referring-relationship format (its train annotations)."""
    return annotations_path(Path(root), "train").is_file()


def referring_image_folder(root: str | Path, image_dir: str | None = None) -> Path:
    """``image_dir`` (relative paths from ``root``) or ``root/images``."""
    return Path(root) / (image_dir if image_dir is not None else IMAGE_FOLDER)


def image_file_name(key: str) -> str:
    """The file of an image key: ``<key>.jpg`` for an id, else the key itself (a file name)."""
    if key.isdigit():
        return f"{key}{DEFAULT_IMAGE_SUFFIX}"
    return key


def dataset_files(root: Path) -> list[Path]:
    """The annotation, metadata and vocabulary files that exist, in a fixed order."""
    names = [annotations_path(root, s) for s in FILE_SPLITS]
    names += [metadata_path(root, s) for s in FILE_SPLITS]
    names += [root / OBJECTS_NAME, root / PREDICATES_NAME]
    return [path for path in names if path.is_file()]


# ---------------------------------------------------------------- reading
def read_class_names(root: Path) -> tuple[list[str], list[str]]:
    """(entity classes, predicate classes), each with BACKGROUND at index 0.

    From ``objects.json`` / ``predicates.json`` when present, else ``class_<i>`` and
    ``predicate_<i>`` up to the largest index used in the annotation files.
    """
    root = Path(root)
    named = [_read_names(root / name) for name in (OBJECTS_NAME, PREDICATES_NAME)]
    if all(names is not None for names in named):
        return [BACKGROUND, *named[0]], [BACKGROUND, *named[1]]
    largest = np.zeros(2, dtype=np.int64)
    for split in FILE_SPLITS:
        if annotations_path(root, split).is_file():
            raw = _read_annotations(annotations_path(root, split))
            largest = np.maximum(largest, _largest_ids(raw, annotations_path(root, split)))
    defaults = [
        [f"{stem}_{i}" for i in range(n + 1)] for stem, n in zip(("class", "predicate"), largest)
    ]
    objects, predicates = (
        names if names is not None else default for names, default in zip(named, defaults)
    )
    return [BACKGROUND, *objects], [BACKGROUND, *predicates]


def read_split_file(root: Path, split: str, num_objects: int, num_predicates: int) -> ReferringFile:
    """Parse and validate ``annotations_{split}.json`` against its metadata; class counts
    exclude background."""
    path = annotations_path(root, split)
    raw = _read_annotations(path)
    meta_path = metadata_path(root, split)
    metadata = _read_json(meta_path)
    if not isinstance(metadata, dict):
        raise DatasetError(f"{meta_path}: expected a JSON object of image keys")
    keys = sorted_keys(list(raw))
    sizes = np.array([_image_size(metadata, key, meta_path, path) for key in keys], dtype=np.int64)
    per_image = [
        _parse_image(raw[key], key, path, num_objects, num_predicates, sizes[i])
        for i, key in enumerate(keys)
    ]
    return _stack(keys, sizes, per_image)


def sorted_keys(keys: list[str]) -> list[str]:
    """Numerically when every key is an id (VG), else as strings (VRD file names)."""
    if keys and all(key.isdigit() for key in keys):
        return sorted(keys, key=int)
    return sorted(keys)


def _read_annotations(path: Path) -> dict[str, Any]:
    raw = _read_json(path)
    if not isinstance(raw, dict):
        raise DatasetError(f"{path}: expected a JSON object mapping image keys to relation lists")
    for key, relations in raw.items():
        if not isinstance(relations, list):
            raise DatasetError(f"{path}: image {key!r} must map to a list of relations")
    return raw


def _largest_ids(raw: dict[str, Any], path: Path) -> np.ndarray:
    """(largest entity category, largest predicate) used in a parsed annotation file."""
    largest = np.zeros(2, dtype=np.int64)
    for key, relations in raw.items():
        for position, relation in enumerate(relations):
            where = f"{path}: image {key!r} relation {position}"
            categories = [_int_field(_entity(relation, role, where), "category", where)
                          for role in ("subject", "object")]  # fmt: skip
            predicate = _int_field(relation, "predicate", where)
            largest = np.maximum(largest, [max(categories), predicate])
    return largest


def _image_size(
    metadata: dict[str, Any], key: str, meta_path: Path, annotations: Path
) -> tuple[int, int]:
    """(height, width) of an image from the metadata file."""
    entry = metadata.get(key)
    if entry is None:
        raise DatasetError(f"{meta_path} has no entry for image {key!r} of {annotations.name}")
    try:
        width, height = int(entry["width"]), int(entry["height"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DatasetError(
            f"{meta_path}: image {key!r} needs integer width and height ({exc!r})"
        ) from exc
    if width <= 0 or height <= 0:
        raise DatasetError(f"{meta_path}: image {key!r} has a non-positive width or height")
    return height, width


def _parse_image(
    relations: list[Any], key: str, path: Path, num_objects: int, num_predicates: int,
    size: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """(boxes (B, 4) xyxy, labels (B,) 1-based, relations (R, 3) local, 1-based predicates)."""
    entity_index: dict[tuple[float, ...], int] = {}
    rows = []
    for position, relation in enumerate(relations):
        where = f"{path}: image {key!r} relation {position}"
        ends = []
        for role in ("subject", "object"):
            entity = _entity(relation, role, where)
            category = _checked_id(entity, "category", num_objects, where)
            box = _checked_box(entity, f"{where} {role}")
            ends.append(entity_index.setdefault((category, *box), len(entity_index)))
        rows.append((*ends, _checked_id(relation, "predicate", num_predicates, where) + 1))
    entities = np.array(list(entity_index), dtype=np.float64).reshape(-1, 5)
    ymin, ymax, xmin, xmax = entities[:, 1:].T
    height, width = size
    boxes = np.stack([xmin, ymin, xmax, ymax], axis=1)
    boxes = np.minimum(boxes, [width, height, width, height]).astype(np.float32)
    labels = entities[:, 0].astype(np.int64) + 1
    local = np.unique(np.array(rows, dtype=np.int64).reshape(-1, 3), axis=0)
    return boxes.reshape(-1, 4), labels, local


def _entity(relation: Any, role: str, where: str) -> dict[str, Any]:
    entity = relation.get(role) if isinstance(relation, dict) else None
    if not isinstance(entity, dict):
        raise DatasetError(f"{where}: needs a {role!r} object with category and bbox")
    return entity


def _int_field(record: dict[str, Any], name: str, where: str) -> int:
    value = record.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DatasetError(f"{where}: {name} must be an integer >= 0, got {value!r}")
    return value


def _checked_id(record: dict[str, Any], name: str, count: int, where: str) -> int:
    value = _int_field(record, name, where)
    if value >= count:
        raise DatasetError(f"{where}: {name} {value} is outside the {count} classes 0..{count - 1}")
    return value


def _checked_box(entity: dict[str, Any], where: str) -> tuple[float, float, float, float]:
    bbox = entity.get("bbox")
    if (
        not isinstance(bbox, list)
        or len(bbox) != 4
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox)
    ):
        raise DatasetError(
            f"{where}: bbox must be 4 numbers [ymin, ymax, xmin, xmax], got {bbox!r}"
        )
    ymin, ymax, xmin, xmax = (float(v) for v in bbox)
    if min(bbox) < 0 or ymin > ymax or xmin > xmax:
        raise DatasetError(
            f"{where}: bbox {bbox} is not [ymin, ymax, xmin, xmax] with 0 <= min <= max"
        )
    return ymin, ymax, xmin, xmax


def _stack(
    keys: list[str], sizes: np.ndarray, per_image: list[tuple[np.ndarray, ...]]
) -> ReferringFile:
    box_count = np.array([len(labels) for _, labels, _ in per_image], dtype=np.int64)
    rel_count = np.array([len(rels) for _, _, rels in per_image], dtype=np.int64)
    ids = [int(key) if key.isdigit() else position for position, key in enumerate(keys)]

    def joined(index: int, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        parts = [parts[index] for parts in per_image]
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(shape, dtype=dtype)

    return ReferringFile(
        keys=keys,
        image_ids=np.array(ids, dtype=np.int64),
        widths=sizes[:, 1].copy() if len(sizes) else np.zeros(0, dtype=np.int64),
        heights=sizes[:, 0].copy() if len(sizes) else np.zeros(0, dtype=np.int64),
        box_start=np.cumsum(box_count) - box_count,
        box_count=box_count,
        boxes=joined(0, (0, 4), np.float32).reshape(-1, 4),
        labels=joined(1, (0,), np.int64),
        rel_start=np.cumsum(rel_count) - rel_count,
        rel_count=rel_count,
        relations=joined(2, (0, 3), np.int64).reshape(-1, 3),
    )


def _read_names(path: Path) -> list[str] | None:
    if not path.is_file():
        return None
    names = _read_json(path)
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise DatasetError(f"{path}: expected a non-empty JSON list of class names")
    return names


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise DatasetError(f"missing dataset file {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path} is not valid JSON ({exc})") from exc


# ---------------------------------------------------------------- writing
def write_split_file(
    root: Path, split: str, relations: dict[str, list[dict[str, Any]]],
    sizes: dict[str, tuple[int, int]],
) -> None:  # fmt: skip
    """Writes ``annotations_{split}.json`` and ``{split}_image_metadata.json``.

    relations: image key -> relations in the public layout; sizes: image key -> (height, width).
    """
    _write_json(annotations_path(root, split), relations)
    metadata = {key: {"width": int(w), "height": int(h)} for key, (h, w) in sizes.items()}
    _write_json(Path(root) / f"{split}_image_metadata.json", metadata)


def write_class_names(root: Path, objects: list[str], predicates: list[str]) -> None:
    """``objects.json`` and ``predicates.json`` (names without background, 0-based order)."""
    _write_json(Path(root) / OBJECTS_NAME, list(objects))
    _write_json(Path(root) / PREDICATES_NAME, list(predicates))


def public_relation(
    subject: tuple[int, np.ndarray], predicate: int, obj: tuple[int, np.ndarray]
) -> dict[str, Any]:
    """One relation in the public layout from 1-based classes and xyxy pixel boxes."""

    def entity(label: int, box: np.ndarray) -> dict[str, Any]:
        x1, y1, x2, y2 = (round(float(v), 3) for v in box)
        return {"category": int(label) - 1, "bbox": [y1, y2, x1, x2]}

    return {"subject": entity(*subject), "predicate": int(predicate) - 1, "object": entity(*obj)}


def _write_json(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload) + "\n", encoding="utf-8")
