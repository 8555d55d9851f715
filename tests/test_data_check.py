"""check_dataset: a summary for a good dataset, one DatasetError line for each kind of damage."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest

from sgstudy.data import check
from sgstudy.data.check import check_dataset
from sgstudy.data.dataset import SceneGraphDataset
from sgstudy.data.statistics import compute_statistics
from sgstudy.data.vg_format import DICTS_NAME, H5_NAME, IMAGE_DATA_NAME
from sgstudy.errors import DatasetError, UserError


@pytest.fixture
def copy(synthetic_root, tmp_path):
    """A private copy of the shared synthetic dataset, free to damage."""
    return shutil.copytree(synthetic_root, tmp_path / "copy")


def test_summary_of_a_good_dataset(synthetic_root):
    summary = check_dataset(synthetic_root)
    lines = summary.splitlines()
    assert "24 object classes, 19 predicate classes" in summary
    assert "120 images in the h5" in summary and "120 opened" in summary
    for split in ("train", "val", "test"):
        dataset = SceneGraphDataset(synthetic_root, split)
        a = dataset.annotations
        row = f"{split:6s} {len(dataset):8d} {int(a.box_count.sum()):9d} {len(a.relations):10d}"
        assert row in lines
    statistics = compute_statistics(SceneGraphDataset(synthetic_root, "train"))
    histogram = lines[lines.index("train predicate histogram (H head, B body, T tail):") + 1 :]
    assert len(histogram) == 19
    first = statistics.predicates_by_frequency()[0]
    assert histogram[0].split()[0] == "H"
    assert statistics.predicate_classes[first] in histogram[0]
    assert str(statistics.predicate_counts[first]) in histogram[0]
    assert statistics.fingerprint in lines[0]


def test_large_datasets_open_a_spread_sample(synthetic_root, monkeypatch):
    monkeypatch.setattr(check, "OPEN_ALL_LIMIT", 50)
    monkeypatch.setattr(check, "OPEN_SAMPLE", 7)
    assert "7 opened" in check_dataset(synthetic_root)


def expect_error(root, pattern, **kwargs):
    with pytest.raises(DatasetError, match=pattern) as caught:
        check_dataset(root, **kwargs)
    message = str(caught.value)
    assert "\n" not in message and isinstance(caught.value, UserError)
    return message


def test_missing_h5(copy):
    (copy / H5_NAME).unlink()
    expect_error(copy, f"missing dataset file .*{H5_NAME}")


def test_missing_dicts(copy):
    (copy / DICTS_NAME).unlink()
    expect_error(copy, f"missing dataset file .*{DICTS_NAME}")


def test_missing_root(tmp_path):
    expect_error(tmp_path / "nowhere", "nowhere is not a directory")


def test_truncated_h5(copy):
    path = copy / H5_NAME
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    expect_error(copy, f"{H5_NAME} is corrupt or truncated")


def test_missing_h5_field(copy):
    with h5py.File(copy / H5_NAME, "r+") as h5:
        del h5["predicates"]
    expect_error(copy, "lacks the field\\(s\\) predicates")


def test_image_data_length_mismatch(copy):
    entries = json.loads((copy / IMAGE_DATA_NAME).read_text())
    (copy / IMAGE_DATA_NAME).write_text(json.dumps(entries[:-1]))
    expect_error(copy, f"{IMAGE_DATA_NAME} lists 119 images but {H5_NAME} has 120")


def test_release_extra_corrupt_image_entries_are_skipped(copy):
    """The public image_data.json lists four images the h5 leaves out (e.g. id 1592)."""
    entries = json.loads((copy / IMAGE_DATA_NAME).read_text())
    entries.insert(5, {"image_id": 1592, "width": 800, "height": 600})
    (copy / IMAGE_DATA_NAME).write_text(json.dumps(entries))
    assert "120 images in the h5" in check_dataset(copy)


def test_invalid_json(copy):
    (copy / DICTS_NAME).write_text("{not json")
    expect_error(copy, f"{DICTS_NAME} is not valid JSON")


def test_missing_image(copy):
    (copy / "VG_100K" / "37.jpg").unlink()
    expect_error(copy, "missing image .*VG_100K/37.jpg")


def test_image_dir_option(copy):
    (copy / "VG_100K").rename(copy / "pictures")
    expect_error(copy, "image folder .*VG_100K does not exist")
    assert "all present in" in check_dataset(copy, image_dir="pictures")


def test_corrupt_jpg(copy):
    (copy / "VG_100K" / "12.jpg").write_bytes(b"\xff\xd8 this is not really a jpeg")
    expect_error(copy, "image .*VG_100K/12.jpg does not load")


def test_truncated_jpg(copy):
    path = copy / "VG_100K" / "40.jpg"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    expect_error(copy, "image .*VG_100K/40.jpg does not load")


def set_h5(root, name, row, value):
    with h5py.File(root / H5_NAME, "r+") as h5:
        h5[name][row] = value


def test_relation_box_index_beyond_all_boxes(copy):
    with h5py.File(copy / H5_NAME, "r") as h5:
        num_boxes = len(h5["labels"])
    set_h5(copy, "relationships", 0, [0, num_boxes + 5])
    expect_error(copy, f"relationships\\[0\\] = \\[0, {num_boxes + 5}\\] points beyond")


def test_relation_box_index_outside_its_image(copy):
    with h5py.File(copy / H5_NAME, "r") as h5:
        first_rel, last_box = h5["img_to_first_rel"][()], h5["img_to_last_box"][()]
        row = int(first_rel[first_rel >= 0][0])
        image = int(np.flatnonzero(first_rel == row)[0])
        subject = int(h5["relationships"][row][0])
    set_h5(copy, "relationships", row, [subject, last_box[image] + 1])
    expect_error(copy, f"relationships\\[{row}\\] .* outside the boxes .* of its image {image}")


def test_label_outside_the_dicts(copy):
    set_h5(copy, "labels", 3, [999])
    expect_error(copy, "labels\\[3\\] = 999 is outside the dicts' 1..24")


def test_predicate_outside_the_dicts(copy):
    set_h5(copy, "predicates", 0, [0])
    expect_error(copy, "predicates\\[0\\] = 0 is outside the dicts' 1..19")


def test_box_range_beyond_the_boxes(copy):
    with h5py.File(copy / H5_NAME, "r") as h5:
        num_boxes = len(h5["labels"])
    set_h5(copy, "img_to_last_box", 119, num_boxes)
    expect_error(copy, f"image 119 has img_to_first_box = .*img_to_last_box = {num_boxes}")
