"""The referring-relationship reader, checker and synth-rr on hand-made and synthetic files."""

from __future__ import annotations

import json
import shutil
from collections import defaultdict

import numpy as np
import pytest
import torch
from referring_data import (
    HEIGHT,
    IMAGE_1,
    OBJECTS,
    PREDICATES,
    SIMPLE,
    WIDTH,
    relation,
    write_dataset,
    write_hand_made,
)

from sgstudy.cli import main
from sgstudy.data.dataset import SceneGraphDataset
from sgstudy.data.referring import ReferringDataset, compute_referring_statistics
from sgstudy.data.referring_synth import derive_referring_dataset
from sgstudy.data.vg_format import BACKGROUND
from sgstudy.errors import UserError


@pytest.fixture(scope="module")
def hand_made(tmp_path_factory):
    return write_hand_made(tmp_path_factory.mktemp("rr") / "data")


def test_train_items_group_relations_into_queries(hand_made):
    """Image "1": the duplicate relation is dropped, the two people wearing the hat form one
    query with both as subjects, boxes turn from [ymin, ymax, xmin, xmax] into xyxy and ids
    from 0-based into 1-based."""
    train = ReferringDataset(hand_made, "train")
    assert train.object_classes == [BACKGROUND, *OBJECTS]
    assert train.predicate_classes == [BACKGROUND, *PREDICATES]
    # Keys sort as numbers: 1..9 train ("5" has no relation, so no query), 10 is val.
    assert train.annotations.keys == [str(i) for i in range(1, 10)]
    assert len(train) == 2 + 7
    image, wearing = train[0]
    assert image.shape == (3, HEIGHT, WIDTH) and image.dtype == torch.float32
    assert wearing.image_id == 1 and wearing.image_size == (HEIGHT, WIDTH)
    expected_boxes = [[4, 2, 20, 12], [22, 5, 38, 25], [0, 14, 10, 28], [0, 0, 40, 30]]
    assert wearing.boxes.tolist() == expected_boxes
    assert wearing.labels.tolist() == [1, 3, 1, 2]
    assert wearing.relations.tolist() == [[0, 1, 2], [1, 3, 3], [2, 1, 2]]
    assert wearing.query.tolist() == [1, 2, 3]  # person wearing hat
    assert wearing.subject_indices.tolist() == [0, 2]
    assert wearing.object_indices.tolist() == [1]
    _, near = train[1]
    assert near.query.tolist() == [3, 3, 2]  # hat near horse
    assert near.subject_indices.tolist() == [1] and near.object_indices.tolist() == [3]
    assert [train[i][1].image_id for i in range(2, 9)] == [2, 3, 4, 6, 7, 8, 9]


def test_val_is_the_last_tenth_of_the_sorted_train_keys_and_test_its_own_file(hand_made):
    val = ReferringDataset(hand_made, "val")
    assert val.annotations.keys == ["10"] and len(val) == 1
    assert val[0][1].query.tolist() == [2, 1, 1]
    test = ReferringDataset(hand_made, "test")
    assert test.annotations.keys == ["11"]
    assert test[0][1].boxes.tolist() == [[0, 0, 20, 30], [10, 10, 40, 30]]


def test_statistics_count_training_relations_and_queries(hand_made):
    statistics = compute_referring_statistics(ReferringDataset(hand_made, "train"))
    assert statistics.predicate_counts.tolist() == [0, 7, 2, 1]
    assert statistics.query_counts.tolist() == [0, 7, 1, 1]
    assert len(statistics.fingerprint) == 12


def test_file_name_keys_legacy_metadata_image_dir_and_rescaled_images(tmp_path):
    """VRD's layout: file names as keys, train metadata in image_metadata.json, no class-name
    files (classes counted up to the largest id); images elsewhere and at half the size the
    metadata states, so the boxes follow the file."""
    root = write_dataset(
        tmp_path / "vrd",
        {"train": {"b_2.png": SIMPLE, "a_1.jpg": IMAGE_1}, "test": {"c.jpg": SIMPLE}},
        names=None,
        image_dir="pictures",
        train_metadata="image_metadata.json",
        disk_size=(HEIGHT // 2, WIDTH // 2),
    )
    train = ReferringDataset(root, "train", image_dir="pictures")
    assert train.object_classes == [BACKGROUND, "class_0", "class_1", "class_2"]
    assert train.predicate_classes == [BACKGROUND, "predicate_0", "predicate_1", "predicate_2"]
    # int(2 * 0.9) = 1 image stays in train: the first key in string order.
    assert train.annotations.keys == ["a_1.jpg"]
    assert ReferringDataset(root, "val", image_dir="pictures").annotations.keys == ["b_2.png"]
    image, target = train[0]
    assert image.shape == (3, HEIGHT // 2, WIDTH // 2)
    assert target.image_id == 0 and target.image_size == (HEIGHT // 2, WIDTH // 2)
    assert target.boxes[0].tolist() == [2, 1, 10, 6]


def test_synth_rr_derives_every_query_of_the_synthetic_scene_graphs(
    synthetic_root_factory, tmp_path
):
    """Every test image's queries are exactly its distinct (subject class, predicate, object
    class) triplets, with the boxes of all their subjects and objects."""
    source = synthetic_root_factory(40, 64, 0)
    out = tmp_path / "rr"
    counts = derive_referring_dataset(source, out)
    scene_graphs = SceneGraphDataset(source, "test")
    derived = ReferringDataset(out, "test")
    assert counts["test_images"] == len(derived.annotations.keys) > 0
    expected = {}
    for i in range(len(scene_graphs)):
        _, graph = scene_graphs[i]
        if len(graph.relations) == 0:
            continue
        queries = defaultdict(lambda: (set(), set()))
        for s, o, p in graph.relations.tolist():
            key = (graph.labels[s].item(), p, graph.labels[o].item())
            queries[key][0].add(tuple(graph.boxes[s].tolist()))
            queries[key][1].add(tuple(graph.boxes[o].tolist()))
        expected[graph.image_id] = dict(queries)
    found = defaultdict(dict)
    for i in range(len(derived)):
        _, target = derived[i]
        boxes = target.boxes.tolist()
        found[target.image_id][tuple(target.query.tolist())] = (
            {tuple(boxes[j]) for j in target.subject_indices.tolist()},
            {tuple(boxes[j]) for j in target.object_indices.tolist()},
        )
    assert dict(found) == expected
    names = json.loads((out / "objects.json").read_text())
    assert names == scene_graphs.object_classes[1:]
    with pytest.raises(UserError, match="not empty"):
        derive_referring_dataset(source, out)


def check_fails(capsys, root, needle: str) -> None:
    assert main(["data", "check", str(root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err


def test_check_summarises_a_valid_dataset(hand_made, capsys):
    assert main(["data", "check", str(hand_made)]) == 0
    out = capsys.readouterr().out
    assert "referring-relationship dataset" in out and "3 entity classes" in out
    assert "train         9         9" in out


DAMAGE = {
    "bbox order": (
        lambda d: d["train"]["2"].__setitem__(0, relation(1, [10, 0, 0, 10], 0, 0, [0, 1, 0, 1])),
        "bbox [10, 0, 0, 10] is not [ymin, ymax, xmin, xmax]",
    ),
    "category out of range": (
        lambda d: d["train"]["3"].__setitem__(0, relation(7, [0, 1, 0, 1], 0, 0, [0, 1, 0, 1])),
        "category 7 is outside the 3 classes",
    ),
    "predicate not an integer": (
        lambda d: d["test"]["11"][0].__setitem__("predicate", "riding"),
        "predicate must be an integer >= 0, got 'riding'",
    ),
    "relations not a list": (
        lambda d: d["train"].__setitem__("4", {"subject": None}),
        "image '4' must map to a list of relations",
    ),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_check_reports_bad_annotations_in_one_line(case, hand_made, tmp_path, capsys):
    root = tmp_path / "copy"
    shutil.copytree(hand_made, root)
    data = {s: json.loads((root / f"annotations_{s}.json").read_text()) for s in ("train", "test")}
    damage, needle = DAMAGE[case]
    damage(data)
    for split, payload in data.items():
        (root / f"annotations_{split}.json").write_text(json.dumps(payload))
    check_fails(capsys, root, needle)


def test_check_reports_missing_files_images_and_metadata(hand_made, tmp_path, capsys):
    root = tmp_path / "copy"
    shutil.copytree(hand_made, root)
    (root / "images" / "7.jpg").unlink()
    check_fails(capsys, root, f"missing image {root / 'images' / '7.jpg'}")
    shutil.copy(hand_made / "images" / "7.jpg", root / "images")
    meta_file = root / "train_image_metadata.json"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({k: v for k, v in meta.items() if k != "3"}))
    check_fails(capsys, root, "has no entry for image '3' of annotations_train.json")
    meta_file.write_text(json.dumps(meta))
    (root / "annotations_test.json").write_text("{not json")
    check_fails(capsys, root, "annotations_test.json is not valid JSON")
    (root / "annotations_test.json").unlink()
    check_fails(capsys, root, "missing dataset file")
    assert main(["data", "check", str(hand_made), "--num-val-images", "3"]) == 2
    assert "does not apply" in capsys.readouterr().err


def test_a_truncated_image_fails_the_check(hand_made, tmp_path, capsys):
    root = tmp_path / "copy"
    shutil.copytree(hand_made, root)
    image = root / "images" / "2.jpg"
    image.write_bytes(image.read_bytes()[:40])
    check_fails(capsys, root, f"image {image} does not load")


def test_synth_rr_command_writes_a_dataset_data_check_accepts(
    synthetic_root_factory, tmp_path, capsys
):
    out = tmp_path / "rr"
    assert main(["data", "synth-rr", "--from", str(synthetic_root_factory(40, 64, 0)),
                 "--out", str(out)]) == 0  # fmt: skip
    assert "referring-relationship dataset written" in capsys.readouterr().out
    assert main(["data", "check", str(out)]) == 0
    assert main(["data", "synth-rr", "--from", str(tmp_path / "none"), "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_items_batch_through_the_shared_collate(hand_made):
    from torch.utils.data import DataLoader

    from sgstudy.data.dataset import collate_scene_graphs

    loader = DataLoader(ReferringDataset(hand_made, "train"), batch_size=4,
                        collate_fn=collate_scene_graphs)  # fmt: skip
    images, targets = next(iter(loader))
    assert len(images) == len(targets) == 4
    assert np.array_equal(targets[0].subject_indices.numpy(), [0, 2])
