"""Read and write the VG150 files exactly as the public releases lay them out.

Files under a dataset root (SPEC §1):

- ``VG-SGG-with-attri.h5``: per image ``split`` (0 train, 2 test), ``img_to_first_box``,
  ``img_to_last_box``, ``img_to_first_rel``, ``img_to_last_rel`` (inclusive, −1 when the
  image has none); per box ``labels`` (N, 1) 1-based and ``boxes_1024`` (N, 4) as
  (cx, cy, w, h) on the image rescaled so that its longest side is ``BOX_SCALE``; per
  relation ``relationships`` (R, 2) *global* box indices and ``predicates`` (R, 1) 1-based;
  optionally ``attributes`` (N, A).
- ``VG-SGG-dicts-with-attri.json``: ``label_to_idx``, ``idx_to_label``, ``predicate_to_idx``,
  ``idx_to_predicate`` (JSON keys of ``idx_to_*`` are strings), ``predicate_count``,
  ``object_count``.
- ``image_data.json``: ``[{image_id, width, height, url?}, ...]`` in h5 order.
- ``VG_100K/<image_id>.jpg``: the images (another folder may be named).
- ``sgstudy_meta.json`` (optional, written by the synthetic generator): ``num_val_images``,
  ``predicate_groups`` (head/body/tail predicate names) and how the data was generated.

The public ``image_data.json`` lists 108,077 images while the h5 holds 108,073: four
images (ids 1592, 1722, 4616, 4617) are corrupt and were left out of the h5. The reader
drops exactly those ids when the lengths differ, as every SGG codebase does.

Everything wrong with the files raises one ``DatasetError`` line naming the file and the
field or index at fault.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from sgstudy.errors import DatasetError

H5_NAME = "VG-SGG-with-attri.h5"
DICTS_NAME = "VG-SGG-dicts-with-attri.json"
IMAGE_DATA_NAME = "image_data.json"
META_NAME = "sgstudy_meta.json"
IMAGE_FOLDER = "VG_100K"
BOX_SCALE = 1024
BACKGROUND = "__background__"
SPLIT_TRAIN = 0
SPLIT_TEST = 2
# Listed in image_data.json of the public release but absent from its h5.
VG_CORRUPT_IMAGE_IDS = frozenset({1592, 1722, 4616, 4617})

_PER_IMAGE_FIELDS = (
    "split",
    "img_to_first_box",
    "img_to_last_box",
    "img_to_first_rel",
    "img_to_last_rel",
)
_REQUIRED_FIELDS = (*_PER_IMAGE_FIELDS, "labels", "boxes_1024", "relationships", "predicates")


@dataclass(frozen=True)
class ImageInfo:
    image_id: int
    width: int
    height: int
    url: str | None = None


@dataclass(frozen=True)
class VGData:
    """The whole content of one VG150-format dataset, in h5 order.

    I images, N boxes, R relations.

    split:            (I,) int64, 0 train (incl. val), 2 test
    img_to_first_box: (I,) int64, first global box index of each image, -1 when it has none
    img_to_last_box:  (I,) int64, last global box index (inclusive), -1 when none
    img_to_first_rel: (I,) int64, first relation row of each image, -1 when none
    img_to_last_rel:  (I,) int64, last relation row (inclusive), -1 when none
    labels:           (N,) int64, 1-based object classes
    boxes_1024:       (N, 4) int64, (cx, cy, w, h) at BOX_SCALE on the longest image side
    relationships:    (R, 2) int64, (subject, object) global box indices
    predicates:       (R,) int64, 1-based predicate classes
    object_classes:   K + 1 names, index 0 is BACKGROUND
    predicate_classes: C + 1 names, index 0 is BACKGROUND
    images:           I entries of image_data.json
    attributes:       (N, A) int64 or None
    """

    split: np.ndarray
    img_to_first_box: np.ndarray
    img_to_last_box: np.ndarray
    img_to_first_rel: np.ndarray
    img_to_last_rel: np.ndarray
    labels: np.ndarray
    boxes_1024: np.ndarray
    relationships: np.ndarray
    predicates: np.ndarray
    object_classes: list[str]
    predicate_classes: list[str]
    images: list[ImageInfo]
    attributes: np.ndarray | None = None

    @property
    def num_images(self) -> int:
        return len(self.split)


# ---------------------------------------------------------------- paths
def require_file(path: Path) -> Path:
    if not path.is_file():
        raise DatasetError(f"missing dataset file {path}")
    return path


def image_folder(root: str | Path, image_dir: str | Path | None = None) -> Path:
    """``image_dir`` when given (relative paths are taken from ``root``), else ``root/VG_100K``."""
    if image_dir is None:
        return Path(root) / IMAGE_FOLDER
    return Path(root) / image_dir


def image_file(folder: Path, image_id: int) -> Path:
    return folder / f"{image_id}.jpg"


# ---------------------------------------------------------------- reading
def read_vg(root: str | Path) -> VGData:
    """Read and validate the h5, the dicts json and image_data.json under ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} is not a directory")
    object_classes, predicate_classes = read_dicts(root / DICTS_NAME)
    arrays = read_h5(root / H5_NAME)
    images = _match_images(
        read_image_data(root / IMAGE_DATA_NAME), len(arrays["split"]), root / IMAGE_DATA_NAME
    )
    data = VGData(
        **arrays,
        object_classes=object_classes,
        predicate_classes=predicate_classes,
        images=images,
    )
    validate(data, root / H5_NAME)
    return data


def read_h5(path: Path) -> dict[str, Any]:
    """The h5 arrays as int64 numpy (labels and predicates flattened to 1-D)."""
    require_file(path)
    try:
        with h5py.File(path, "r") as h5:
            missing = [name for name in _REQUIRED_FIELDS if name not in h5]
            if missing:
                raise DatasetError(f"{path} lacks the field(s) {', '.join(missing)}")
            arrays = {name: np.asarray(h5[name][()], dtype=np.int64) for name in _REQUIRED_FIELDS}
            attributes = None
            if "attributes" in h5:
                attributes = np.asarray(h5["attributes"][()], dtype=np.int64)
    except OSError as exc:
        raise DatasetError(f"{path} is corrupt or truncated ({_first_line(exc)})") from exc
    for name in _PER_IMAGE_FIELDS:
        arrays[name] = arrays[name].reshape(-1)
    for name in ("labels", "predicates"):
        arrays[name] = _column(arrays[name], name, path)
    _check_shape(arrays["boxes_1024"], (-1, 4), "boxes_1024", path)
    _check_shape(arrays["relationships"], (-1, 2), "relationships", path)
    arrays["boxes_1024"] = arrays["boxes_1024"].reshape(-1, 4)
    arrays["relationships"] = arrays["relationships"].reshape(-1, 2)
    arrays["attributes"] = attributes
    return arrays


def read_dicts(path: Path) -> tuple[list[str], list[str]]:
    """(object classes, predicate classes), each with BACKGROUND at index 0."""
    dicts = _read_json(path)
    if not isinstance(dicts, dict):
        raise DatasetError(f"{path}: expected a JSON object")
    return _class_names(dicts, "idx_to_label", path), _class_names(dicts, "idx_to_predicate", path)


def read_image_data(path: Path) -> list[ImageInfo]:
    entries = _read_json(path)
    if not isinstance(entries, list):
        raise DatasetError(f"{path}: expected a JSON list of images")
    images = []
    for position, entry in enumerate(entries):
        try:
            images.append(
                ImageInfo(
                    int(entry["image_id"]),
                    int(entry["width"]),
                    int(entry["height"]),
                    entry.get("url"),
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(
                f"{path}: entry {position} needs integer image_id, width and height ({exc!r})"
            ) from exc
        if images[-1].width <= 0 or images[-1].height <= 0:
            raise DatasetError(f"{path}: entry {position} has a non-positive width or height")
    return images


def read_meta(root: str | Path) -> dict[str, Any] | None:
    """The optional ``sgstudy_meta.json`` of ``root``, or None when there is none."""
    path = Path(root) / META_NAME
    if not path.is_file():
        return None
    meta = _read_json(path)
    if not isinstance(meta, dict):
        raise DatasetError(f"{path}: expected a JSON object")
    if "num_val_images" in meta and not (
        isinstance(meta["num_val_images"], int) and meta["num_val_images"] >= 0
    ):
        raise DatasetError(f"{path}: num_val_images must be an integer >= 0")
    groups = meta.get("predicate_groups")
    if groups is not None and not (
        isinstance(groups, dict) and all(isinstance(v, list) for v in groups.values())
    ):
        raise DatasetError(f"{path}: predicate_groups must map group names to name lists")
    return meta


def _match_images(images: list[ImageInfo], num_h5_images: int, path: Path) -> list[ImageInfo]:
    if len(images) != num_h5_images:
        # The public release: image_data.json still lists the four corrupt images.
        kept = [info for info in images if info.image_id not in VG_CORRUPT_IMAGE_IDS]
        if len(kept) != num_h5_images:
            raise DatasetError(
                f"{path} lists {len(images)} images but {H5_NAME} has {num_h5_images}"
            )
        images = kept
    return images


# ---------------------------------------------------------------- validation
def validate(data: VGData, h5_path: Path) -> None:
    """Index ranges and class ids; raises DatasetError naming the field and the first bad row."""
    num_boxes = len(data.labels)
    _check_ids(data.labels, len(data.object_classes) - 1, "labels", h5_path)
    _check_ids(data.predicates, len(data.predicate_classes) - 1, "predicates", h5_path)
    if len(data.predicates) != len(data.relationships):
        raise DatasetError(
            f"{h5_path}: {len(data.relationships)} relationships but {len(data.predicates)} "
            "predicates"
        )
    if len(data.boxes_1024) != num_boxes:
        raise DatasetError(f"{h5_path}: {num_boxes} labels but {len(data.boxes_1024)} boxes_1024")
    if data.attributes is not None and len(data.attributes) != num_boxes:
        raise DatasetError(f"{h5_path}: {num_boxes} labels but {len(data.attributes)} attributes")
    for name in _PER_IMAGE_FIELDS[1:]:
        rows = len(getattr(data, name))
        if rows != data.num_images:
            raise DatasetError(f"{h5_path}: {name} has {rows} rows, split has {data.num_images}")
    _check_ranges(data.img_to_first_box, data.img_to_last_box, num_boxes, "box", h5_path)
    _check_ranges(
        data.img_to_first_rel, data.img_to_last_rel, len(data.relationships), "rel", h5_path
    )
    _check_relation_boxes(data, h5_path)
    bad = np.flatnonzero(data.boxes_1024[:, 2:] < 0)
    if bad.size:
        raise DatasetError(f"{h5_path}: boxes_1024 row {bad[0] // 2} has a negative size")


def _check_ids(ids: np.ndarray, num_classes: int, name: str, path: Path) -> None:
    bad = np.flatnonzero((ids < 1) | (ids > num_classes))
    if bad.size:
        raise DatasetError(
            f"{path}: {name}[{bad[0]}] = {ids[bad[0]]} is outside the dicts' 1..{num_classes}"
        )


def _check_ranges(first: np.ndarray, last: np.ndarray, count: int, kind: str, path: Path) -> None:
    """first/last inclusive, both -1 or 0 <= first <= last < count."""
    empty = first < 0
    bad = np.flatnonzero(
        (empty != (last < 0)) | (~empty & ((first > last) | (last >= count) | (first < 0)))
    )
    if bad.size:
        i = bad[0]
        raise DatasetError(
            f"{path}: image {i} has img_to_first_{kind} = {first[i]}, img_to_last_{kind} = "
            f"{last[i]}, outside 0..{count - 1}"
        )


def _check_relation_boxes(data: VGData, path: Path) -> None:
    """Every relation lies in some image's rows, and its boxes in that image's box range."""
    has_rels = data.img_to_first_rel >= 0
    counts = np.where(has_rels, data.img_to_last_rel - data.img_to_first_rel + 1, 0)
    owner = np.full(len(data.relationships), -1, dtype=np.int64)
    owner[ranges_to_index(data.img_to_first_rel[has_rels], counts[has_rels])] = np.repeat(
        np.flatnonzero(has_rels), counts[has_rels]
    )
    rels = data.relationships
    outside = (rels < 0) | (rels >= len(data.labels))
    if outside.any():
        row = np.flatnonzero(outside.any(axis=1))[0]
        raise DatasetError(
            f"{path}: relationships[{row}] = {rels[row].tolist()} points beyond the "
            f"{len(data.labels)} boxes"
        )
    first = data.img_to_first_box[np.maximum(owner, 0)][:, None]
    last = data.img_to_last_box[np.maximum(owner, 0)][:, None]
    wrong = (owner >= 0) & ((rels < first) | (rels > last)).any(axis=1)
    if wrong.any():
        row = np.flatnonzero(wrong)[0]
        raise DatasetError(
            f"{path}: relationships[{row}] = {rels[row].tolist()} lies outside the boxes "
            f"{first[row, 0]}..{last[row, 0]} of its image {owner[row]}"
        )


def ranges_to_index(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + c)`` for each (s, c), vectorised. (sum(counts),)"""
    starts = np.asarray(starts, dtype=np.int64)
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    # Offset of each output element from the start of its own range.
    ends = np.cumsum(counts)
    within = np.arange(total, dtype=np.int64) - np.repeat(ends - counts, counts)
    return np.repeat(starts, counts) + within


# ---------------------------------------------------------------- writing
def write_vg(root: str | Path, data: VGData, meta: dict[str, Any] | None = None) -> Path:
    """Write the h5, the dicts json, image_data.json (and ``meta`` as sgstudy_meta.json).

    Images are not written here. Returns ``root``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    _write_h5(root / H5_NAME, data)
    _write_json(root / DICTS_NAME, _dicts_of(data))
    image_data = [
        {"image_id": i.image_id, "width": i.width, "height": i.height}
        | ({"url": i.url} if i.url is not None else {})
        for i in data.images
    ]
    _write_json(root / IMAGE_DATA_NAME, image_data)
    if meta is not None:
        _write_json(root / META_NAME, meta)
    return root


def _write_h5(path: Path, data: VGData) -> None:
    with h5py.File(path, "w") as h5:
        for name in _PER_IMAGE_FIELDS:
            h5.create_dataset(name, data=np.asarray(getattr(data, name), dtype=np.int64))
        h5.create_dataset("labels", data=np.asarray(data.labels, dtype=np.int64).reshape(-1, 1))
        h5.create_dataset("boxes_1024", data=np.asarray(data.boxes_1024, dtype=np.int32))
        h5.create_dataset(
            "relationships", data=np.asarray(data.relationships, dtype=np.int64).reshape(-1, 2)
        )
        h5.create_dataset(
            "predicates", data=np.asarray(data.predicates, dtype=np.int64).reshape(-1, 1)
        )
        if data.attributes is not None:
            h5.create_dataset("attributes", data=np.asarray(data.attributes, dtype=np.int64))


def _dicts_of(data: VGData) -> dict[str, Any]:
    objects, predicates = data.object_classes, data.predicate_classes
    object_count = np.bincount(data.labels, minlength=len(objects))
    predicate_count = np.bincount(data.predicates, minlength=len(predicates))
    return {
        "label_to_idx": {name: i for i, name in enumerate(objects) if i > 0},
        "idx_to_label": {str(i): name for i, name in enumerate(objects) if i > 0},
        "predicate_to_idx": {name: i for i, name in enumerate(predicates) if i > 0},
        "idx_to_predicate": {str(i): name for i, name in enumerate(predicates) if i > 0},
        "predicate_count": {
            name: int(predicate_count[i]) for i, name in enumerate(predicates) if i > 0
        },
        "object_count": {name: int(object_count[i]) for i, name in enumerate(objects) if i > 0},
    }


# ---------------------------------------------------------------- small helpers
def _read_json(path: Path) -> Any:
    require_file(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path} is not valid JSON ({exc})") from exc


def _write_json(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")


def _class_names(dicts: dict[str, Any], key: str, path: Path) -> list[str]:
    """Names by index from an ``idx_to_*`` mapping whose keys must be exactly "1".."K"."""
    mapping = dicts.get(key)
    if not isinstance(mapping, dict) or not mapping:
        raise DatasetError(f"{path} lacks a non-empty {key}")
    try:
        by_index = {int(k): str(v) for k, v in mapping.items()}
    except ValueError as exc:
        raise DatasetError(f"{path}: {key} has a non-integer key ({exc})") from exc
    if sorted(by_index) != list(range(1, len(by_index) + 1)):
        raise DatasetError(f"{path}: the keys of {key} must be exactly 1..{len(by_index)}")
    return [BACKGROUND] + [by_index[i] for i in range(1, len(by_index) + 1)]


def _column(array: np.ndarray, name: str, path: Path) -> np.ndarray:
    if array.ndim > 2 or (array.ndim == 2 and array.shape[1] != 1):
        raise DatasetError(f"{path}: {name} must have shape (n, 1), got {array.shape}")
    return array.reshape(-1)


def _check_shape(array: np.ndarray, shape: tuple[int, int], name: str, path: Path) -> None:
    if array.size == 0:
        return
    if array.ndim != 2 or array.shape[1] != shape[1]:
        raise DatasetError(f"{path}: {name} must have shape (n, {shape[1]}), got {array.shape}")


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
