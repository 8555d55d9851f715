"""VG150 files -> SceneGraphDataset and DatasetStatistics, checked exactly on a hand-made
dataset written with the format's own writer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from sgstudy.data.dataset import SceneGraphDataset, collate_scene_graphs, one_predicate_per_pair
from sgstudy.data.predicate_groups import VG150_BODY, partition_by_frequency, vg150_partition
from sgstudy.data.statistics import DatasetStatistics, compute_statistics
from sgstudy.data.vg_format import (
    BACKGROUND,
    META_NAME,
    ImageInfo,
    VGData,
    ranges_to_index,
    read_vg,
    write_vg,
)
from sgstudy.errors import ConfigError, DatasetError

CAT, DOG, BALL = 1, 2, 3
ON, NEAR, HAS = 1, 2, 3

# (image_id, width, height, split, boxes as (label, cx, cy, w, h) at 1024,
#  relations as (subject, object, predicate) with indices local to the image)
IMAGES = [
    (10, 64, 128, 0, [(DOG, 300, 300, 200, 200), (BALL, 700, 700, 100, 100)], []),
    (11, 100, 300, 2, [(BALL, 512, 512, 100, 100), (DOG, 200, 200, 64, 64),
                       (CAT, 800, 800, 128, 128)],
     [(0, 1, NEAR), (0, 1, ON), (2, 0, HAS)]),
    (12, 50, 50, 0, [], []),
    (13, 200, 100, 0, [(CAT, 512, 256, 200, 100), (DOG, 850, 700, 100, 100)],
     [(0, 1, ON), (0, 1, NEAR), (1, 0, HAS)]),
    (14, 120, 80, 0, [(CAT, 256, 256, 256, 128), (BALL, 700, 300, 100, 100),
                      (DOG, 300, 300, 100, 100)],
     [(2, 0, ON)]),
    (15, 300, 200, 2, [(BALL, 100, 100, 50, 50)], []),
    (16, 90, 90, 0, [(CAT, 300, 300, 100, 100), (DOG, 600, 600, 100, 100)], []),
]  # fmt: skip


def hand_made_data(images=IMAGES) -> VGData:
    """VGData of ``images``: box indices turned global, first/last ranges inclusive."""
    labels, boxes, relationships, predicates = [], [], [], []
    first_box, last_box, first_rel, last_rel = [], [], [], []
    for _, _, _, _, image_boxes, relations in images:
        offset = len(labels)
        first_box.append(offset if image_boxes else -1)
        last_box.append(offset + len(image_boxes) - 1 if image_boxes else -1)
        first_rel.append(len(predicates) if relations else -1)
        last_rel.append(len(predicates) + len(relations) - 1 if relations else -1)
        labels += [b[0] for b in image_boxes]
        boxes += [b[1:] for b in image_boxes]
        relationships += [(s + offset, o + offset) for s, o, _ in relations]
        predicates += [p for _, _, p in relations]
    return VGData(
        split=np.array([im[3] for im in images]),
        img_to_first_box=np.array(first_box),
        img_to_last_box=np.array(last_box),
        img_to_first_rel=np.array(first_rel),
        img_to_last_rel=np.array(last_rel),
        labels=np.array(labels),
        boxes_1024=np.array(boxes).reshape(-1, 4),
        relationships=np.array(relationships).reshape(-1, 2),
        predicates=np.array(predicates),
        object_classes=[BACKGROUND, "cat", "dog", "ball"],
        predicate_classes=[BACKGROUND, "on", "near", "has"],
        images=[ImageInfo(im[0], im[1], im[2]) for im in images],
    )


def write_hand_made(root, meta=None, disk_scale=1):
    """The dataset plus one flat-grey jpg per image (``disk_scale`` times the listed size)."""
    write_vg(root, hand_made_data(), meta=meta)
    (root / "VG_100K").mkdir()
    for image_id, width, height, *_ in IMAGES:
        size = (width * disk_scale, height * disk_scale)
        Image.new("RGB", size, (128, 64, 32)).save(root / "VG_100K" / f"{image_id}.jpg")
    return root


@pytest.fixture
def root(tmp_path):
    return write_hand_made(tmp_path / "vg")


def image_ids(dataset):
    return dataset.annotations.image_ids.tolist()


def test_writer_then_reader_round_trip(root):
    data, original = read_vg(root), hand_made_data()
    for name in (
        "split",
        "labels",
        "boxes_1024",
        "relationships",
        "predicates",
        "img_to_first_box",
        "img_to_last_box",
        "img_to_first_rel",
        "img_to_last_rel",
    ):
        np.testing.assert_array_equal(getattr(data, name), getattr(original, name))  # fmt: skip
    assert data.object_classes == ["__background__", "cat", "dog", "ball"]
    assert data.images[3] == ImageInfo(13, 200, 100)
    dicts = json.loads((root / "VG-SGG-dicts-with-attri.json").read_text())
    assert dicts["idx_to_label"] == {"1": "cat", "2": "dog", "3": "ball"}
    assert dicts["predicate_to_idx"] == {"on": 1, "near": 2, "has": 3}
    assert dicts["predicate_count"] == {"on": 3, "near": 2, "has": 2}
    assert dicts["object_count"] == {"cat": 4, "dog": 5, "ball": 4}


def test_splits_by_num_val_images_and_filters(root):
    """Non-test h5 rows 0, 2, 3, 4, 6: val = the first num_val of them; row 2 has no boxes,
    row 6 no relations (dropped from train only); test rows 1 and 5 keep everything."""
    assert image_ids(SceneGraphDataset(root, "val", num_val_images=1)) == [10]
    assert image_ids(SceneGraphDataset(root, "train", num_val_images=1)) == [13, 14]
    assert image_ids(SceneGraphDataset(root, "val", num_val_images=3)) == [10, 13]
    assert image_ids(SceneGraphDataset(root, "train", num_val_images=3)) == [14]
    assert image_ids(SceneGraphDataset(root, "test")) == [11, 15]
    unfiltered = SceneGraphDataset(root, "train", num_val_images=1, filter_empty_relations=False)
    assert image_ids(unfiltered) == [13, 14, 16]
    assert image_ids(SceneGraphDataset(root, "val", num_val_images=1,
                                       filter_empty_relations=True)) == []  # fmt: skip
    # No meta file: VG150's 5,000 val images take every non-test image.
    assert image_ids(SceneGraphDataset(root, "val")) == [10, 13, 14, 16]
    assert len(SceneGraphDataset(root, "train")) == 0


def test_num_val_images_from_the_meta_file(tmp_path):
    root = write_hand_made(tmp_path / "vg", meta={"num_val_images": 3})
    assert SceneGraphDataset(root, "train").num_val_images == 3
    assert image_ids(SceneGraphDataset(root, "train")) == [14]
    assert image_ids(SceneGraphDataset(root, "train", num_val_images=1)) == [13, 14]


def test_item_boxes_labels_and_local_relations(root):
    image, target = SceneGraphDataset(root, "train", num_val_images=3)[0]  # image 14, 120x80
    assert image.shape == (3, 80, 120) and image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert target.image_id == 14 and target.image_size == (80, 120)
    # (cx, cy, w, h) at 1024 -> xyxy at 1024 -> x 120 / 1024.
    expected = torch.tensor([[15.0, 22.5, 45.0, 37.5],
                             [76.171875, 29.296875, 87.890625, 41.015625],
                             [29.296875, 29.296875, 41.015625, 41.015625]])  # fmt: skip
    assert torch.equal(target.boxes, expected)
    assert target.labels.tolist() == [CAT, BALL, DOG]
    assert target.relations.tolist() == [[2, 0, ON]]
    assert target.boxes.dtype == torch.float32 and target.relations.dtype == torch.int64


def test_test_split_keeps_duplicate_predicates(root):
    dataset = SceneGraphDataset(root, "test")
    _, target = dataset[0]  # image 11, boxes 1..3 of the h5 re-indexed to 0..2
    assert target.relations.tolist() == [[0, 1, NEAR], [0, 1, ON], [2, 0, HAS]]
    assert target.boxes[1].tolist() == [49.21875, 49.21875, 67.96875, 67.96875]
    _, lonely = dataset[1]
    assert lonely.relations.shape == (0, 3) and lonely.labels.tolist() == [BALL]


def test_train_keeps_one_predicate_per_pair_reproducibly(root):
    picks = set()
    for seed in range(40):
        dataset = SceneGraphDataset(root, "train", num_val_images=1, seed=seed)
        relations = dataset[0][1].relations.tolist()  # image 13
        assert relations == dataset[0][1].relations.tolist()
        rebuilt = SceneGraphDataset(root, "train", num_val_images=1, seed=seed)
        assert rebuilt[0][1].relations.tolist() == relations
        assert len(relations) == 2 and relations[1] == [1, 0, HAS]
        assert relations[0][:2] == [0, 1] and relations[0][2] in (ON, NEAR)
        picks.add(relations[0][2])
    assert picks == {ON, NEAR}
    val_item = SceneGraphDataset(root, "val", num_val_images=3)[1][1]  # image 13 in val
    assert val_item.relations.tolist() == [[0, 1, ON], [0, 1, NEAR], [1, 0, HAS]]


def test_one_predicate_per_pair_keeps_first_seen_pair_order():
    relations = np.array([[3, 1, 5], [0, 2, 1], [3, 1, 6], [0, 2, 1], [2, 2, 4]])
    kept = one_predicate_per_pair(relations, np.random.default_rng(0))
    assert kept[:, :2].tolist() == [[3, 1], [0, 2], [2, 2]]
    assert kept[0, 2] in (5, 6) and kept[1, 2] == 1 and kept[2, 2] == 4


def test_non_overlap_filter_drops_relations_of_disjoint_boxes(root):
    dataset = SceneGraphDataset(root, "train", num_val_images=1, filter_non_overlap=True)
    assert image_ids(dataset) == [14]  # image 13's cat and dog do not overlap
    assert dataset[0][1].relations.tolist() == [[2, 0, ON]]
    with pytest.raises(ConfigError, match="filter_non_overlap"):
        SceneGraphDataset(root, "test", filter_non_overlap=True)


def test_boxes_follow_an_image_whose_file_size_differs(tmp_path):
    root = write_hand_made(tmp_path / "vg", disk_scale=2)
    image, target = SceneGraphDataset(root, "train", num_val_images=3)[0]
    assert image.shape == (3, 160, 240) and target.image_size == (160, 240)
    assert target.boxes[0].tolist() == [30.0, 45.0, 90.0, 75.0]


def test_collate_and_class_names(root):
    dataset = SceneGraphDataset(root, "train", num_val_images=1)
    images, targets = collate_scene_graphs([dataset[0], dataset[1]])
    assert [t.image_id for t in targets] == [13, 14]
    assert [tuple(i.shape) for i in images] == [(3, 100, 200), (3, 80, 120)]
    assert dataset.object_classes == ["__background__", "cat", "dog", "ball"]
    assert dataset.predicate_classes == ["__background__", "on", "near", "has"]


def test_image_that_does_not_load_names_the_file(root):
    dataset = SceneGraphDataset(root, "test")
    (root / "VG_100K" / "11.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match="11.jpg"):
        dataset[0]
    (root / "VG_100K" / "15.jpg").unlink()
    with pytest.raises(DatasetError, match="15.jpg"):
        dataset[1]


def test_unknown_split_is_a_config_error(root):
    with pytest.raises(ConfigError, match="split 'dev'"):
        SceneGraphDataset(root, "dev")


def test_statistics_exact(root):
    """Train = images 13 and 14 (num_val_images=1)."""
    statistics = compute_statistics(SceneGraphDataset(root, "train", num_val_images=1))
    assert statistics.predicate_counts.tolist() == [0, 2, 1, 1]
    expected = np.zeros((4, 4, 4), dtype=np.int64)
    expected[CAT, DOG, ON] = expected[CAT, DOG, NEAR] = 1  # image 13, not yet deduplicated
    expected[DOG, CAT, HAS] = expected[DOG, CAT, ON] = 1  # image 13 and image 14
    # Ordered pairs with no relation: only in image 14 (cat, ball, dog; dog -> cat related).
    for s, o in [(CAT, BALL), (CAT, DOG), (BALL, CAT), (BALL, DOG), (DOG, BALL)]:
        expected[s, o, 0] = 1
    np.testing.assert_array_equal(statistics.pair_predicate_counts, expected)
    assert statistics.train_triplets.tolist() == [
        [CAT, ON, DOG], [CAT, NEAR, DOG], [DOG, ON, CAT], [DOG, HAS, CAT],
    ]  # fmt: skip
    assert statistics.predicates_by_frequency() == [ON, NEAR, HAS]
    assert statistics.predicate_groups == {"head": [ON], "body": [NEAR, HAS], "tail": []}
    assert len(statistics.fingerprint) == 12
    int(statistics.fingerprint, 16)


def test_statistics_of_an_empty_train_split(root):
    statistics = compute_statistics(SceneGraphDataset(root, "train"))  # 5,000 val take all
    assert statistics.pair_predicate_counts.shape == (4, 4, 4)
    assert statistics.pair_predicate_counts.sum() == 0 and statistics.train_triplets.shape == (0, 3)
    assert statistics.predicate_groups == {"head": [], "body": [], "tail": [1, 2, 3]}


def test_statistics_json_round_trip(root):
    statistics = compute_statistics(SceneGraphDataset(root, "train", num_val_images=1))
    again = DatasetStatistics.from_json(json.loads(json.dumps(statistics.to_json())))
    np.testing.assert_array_equal(again.pair_predicate_counts, statistics.pair_predicate_counts)
    np.testing.assert_array_equal(again.train_triplets, statistics.train_triplets)
    np.testing.assert_array_equal(again.predicate_counts, statistics.predicate_counts)
    assert again.predicate_groups == statistics.predicate_groups
    assert (again.object_classes, again.fingerprint) == (
        statistics.object_classes, statistics.fingerprint,
    )  # fmt: skip


def test_fingerprint_follows_the_files(tmp_path):
    first = write_hand_made(tmp_path / "a")
    same = write_hand_made(tmp_path / "b")
    fingerprint = compute_statistics(SceneGraphDataset(first, "test")).fingerprint
    assert compute_statistics(SceneGraphDataset(same, "test")).fingerprint == fingerprint
    changed = hand_made_data()
    changed.boxes_1024[0, 0] += 1
    write_vg(same, changed)
    assert compute_statistics(SceneGraphDataset(same, "test")).fingerprint != fingerprint


def test_meta_partition_is_used_by_name(tmp_path):
    groups = {"head": ["has"], "body": ["on"], "tail": ["near"]}
    root = write_hand_made(tmp_path / "vg", meta={"predicate_groups": groups})
    statistics = compute_statistics(SceneGraphDataset(root, "train", num_val_images=1))
    assert statistics.predicate_groups == {"head": [HAS], "body": [ON], "tail": [NEAR]}
    (root / META_NAME).write_text(json.dumps({"predicate_groups": {"head": ["flies"]}}))
    with pytest.raises(DatasetError, match="flies"):
        compute_statistics(SceneGraphDataset(root, "train", num_val_images=1))


def test_vg150_partition_by_name():
    head = ["on", "has", "in", "of", "wearing", "near", "behind"]
    others = [f"predicate {i}" for i in range(43)]
    names = [BACKGROUND, *others[:22], *reversed(head), *VG150_BODY]
    groups = vg150_partition(names)
    assert [names[i] for i in groups["head"]] == head
    assert [names[i] for i in groups["body"]] == list(VG150_BODY)
    assert sorted(names[i] for i in groups["tail"]) == sorted(others[:22])
    assert vg150_partition(names[:-1]) is None


def test_partition_by_frequency_rule():
    counts = np.array([0, 10, 50, 20, 5, 0, 15])  # total 100
    # Sorted: 2 (50), 3 (20), 6 (15), 1 (10), 4 (5), 5 (0). 2 alone holds 50%; the suffix
    # 4, 5 holds 5%, one more (1, 4, 5) would hold 15%.
    assert partition_by_frequency(counts) == {"head": [2], "body": [3, 6, 1], "tail": [4, 5]}
    assert partition_by_frequency(np.array([0, 0, 0])) == {
        "head": [], "body": [], "tail": [1, 2],
    }  # fmt: skip


def test_ranges_to_index():
    index = ranges_to_index(np.array([5, 0, 9]), np.array([2, 0, 3]))
    assert index.tolist() == [5, 6, 9, 10, 11]
    assert ranges_to_index(np.array([], dtype=np.int64), np.array([], dtype=np.int64)).size == 0
