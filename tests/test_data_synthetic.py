"""The synthetic generator: deterministic, long-tailed, true in the picture, learnable."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from sgstudy.data.dataset import SceneGraphDataset
from sgstudy.data.predicate_groups import partition_by_frequency
from sgstudy.data.statistics import compute_statistics
from sgstudy.data.synthetic import generate_synthetic_dataset
from sgstudy.data.synthetic_rules import COLOURS, OBJECT_CLASSES, PREDICATES, SHAPES
from sgstudy.data.synthetic_scene import PALETTE
from sgstudy.data.vg_format import H5_NAME, IMAGE_DATA_NAME, META_NAME, SPLIT_TEST, read_vg
from sgstudy.errors import ConfigError

TOLERANCE = 0.02  # the generator's "touching" tolerance, as a share of the longest side


@pytest.fixture(scope="module")
def medium_root(synthetic_root_factory):
    """300 images: enough annotations for frequency and learnability checks."""
    return synthetic_root_factory(300, 64, 0)


def h5_arrays(root):
    with h5py.File(root / H5_NAME, "r") as h5:
        return {name: h5[name][()] for name in h5}


def image_bytes(root):
    return {p.name: p.read_bytes() for p in sorted((root / "VG_100K").glob("*.jpg"))}


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    first = generate_synthetic_dataset(tmp_path / "a", 12, 48, seed=3, progress=False)
    again = generate_synthetic_dataset(tmp_path / "b", 12, 48, seed=3, progress=False)
    other = generate_synthetic_dataset(tmp_path / "c", 12, 48, seed=4, progress=False)
    arrays, arrays_again, arrays_other = h5_arrays(first), h5_arrays(again), h5_arrays(other)
    assert arrays.keys() == arrays_again.keys()
    for name in arrays:
        np.testing.assert_array_equal(arrays[name], arrays_again[name])
    assert image_bytes(first) == image_bytes(again)
    assert len(image_bytes(first)) == 12
    for name in (IMAGE_DATA_NAME, META_NAME):
        assert (first / name).read_text() == (again / name).read_text()
    assert not np.array_equal(arrays["boxes_1024"][:20], arrays_other["boxes_1024"][:20])
    assert image_bytes(first)["1.jpg"] != image_bytes(other)["1.jpg"]


def test_image_files_match_image_data(synthetic_root):
    data = read_vg(synthetic_root)
    assert [info.image_id for info in data.images] == list(range(1, data.num_images + 1))
    for info in data.images[:20]:
        with Image.open(synthetic_root / "VG_100K" / f"{info.image_id}.jpg") as image:
            assert image.size == (info.width, info.height)
            assert max(image.size) == 64 and min(image.size) >= 48
    boxes_per_image = data.img_to_last_box - data.img_to_first_box + 1
    assert boxes_per_image.min() >= 2 and boxes_per_image.max() <= 8
    assert data.object_classes[1:] == list(OBJECT_CLASSES)
    assert data.predicate_classes[1:] == list(PREDICATES)


def test_split_and_meta(synthetic_root):
    data = read_vg(synthetic_root)
    meta = json.loads((synthetic_root / META_NAME).read_text())
    num_test = int((data.split == 2).sum())
    assert num_test == 36 and set(np.unique(data.split)) == {0, 2}
    assert meta["num_val_images"] == round(0.15 * (120 - num_test))
    assert len(SceneGraphDataset(synthetic_root, "val")) <= meta["num_val_images"]
    assert meta["generator"]["seed"] == 0 and meta["generator"]["image_size"] == 64


def test_predicates_are_long_tailed(medium_root):
    counts = compute_statistics(SceneGraphDataset(medium_root, "train")).predicate_counts[1:]
    share = np.sort(counts)[::-1] / counts.sum()
    assert share[:3].sum() > 0.5
    assert (share < 0.02).sum() >= 5
    assert (counts > 0).all()


def test_meta_groups_follow_the_documented_rule(medium_root):
    statistics = compute_statistics(SceneGraphDataset(medium_root, "train"))
    assert statistics.predicate_groups == partition_by_frequency(statistics.predicate_counts)
    counts, total = statistics.predicate_counts, statistics.predicate_counts.sum()
    head, tail = statistics.predicate_groups["head"], statistics.predicate_groups["tail"]
    assert counts[head].sum() >= 0.5 * total > counts[head[:-1]].sum()
    assert counts[tail].sum() <= 0.1 * total
    assert min(counts[head]) >= max(counts[statistics.predicate_groups["body"]])


def shape(label):
    return SHAPES[(int(label) - 1) // len(COLOURS)]


def within(a, b):
    return (a[:2] >= b[:2]).all() and (a[2:] <= b[2:]).all()


def rests_on(a, b, tol):
    """a's bottom edge touches b's top edge, a above."""
    return abs(a[3] - b[1]) <= tol and a[1] < b[1]


def geometry_holds(name, s, o, side, s_label, o_label):
    """An independent reading of each predicate's meaning on two xyxy pixel boxes."""
    tol = TOLERANCE * side
    centre_s, centre_o = (s[:2] + s[2:]) / 2, (o[:2] + o[2:]) / 2
    area_s, area_o = np.prod(s[2:] - s[:2]), np.prod(o[2:] - o[:2])
    intersect = (np.minimum(s[2:], o[2:]) > np.maximum(s[:2], o[:2])).all()
    distance = np.linalg.norm(centre_s - centre_o)
    checks = {
        "left of": s[2] < o[0],
        "right of": s[0] > o[2],
        "above": s[3] < o[1],
        "below": s[1] > o[3],
        "inside": within(s, o),
        "contains": within(o, s),
        "surrounding": within(o, s) and shape(s_label) == "ring",
        "on": rests_on(s, o, tol),
        "riding": rests_on(s, o, tol) and shape(o_label) == "square",
        "under": rests_on(o, s, tol),
        "wearing": shape(o_label) == "triangle" and o[1] < s[1] < o[3] and area_o < area_s,
        "holding": shape(s_label) == "cross" and area_o < area_s,
        "pointing at": shape(s_label) == "triangle" and o[3] < s[1],
        "overlapping": intersect,
        "next to": abs(max(o[0] - s[2], s[0] - o[2])) <= tol,
        "bigger than": area_s >= 3 * area_o,
        "smaller than": 3 * area_s <= area_o,
        "near": distance < 0.3 * side,
        "far from": distance > 0.6 * side,
    }
    return checks[name]


def test_annotated_relations_are_true_in_the_picture(medium_root):
    dataset = SceneGraphDataset(medium_root, "test")
    a = dataset.annotations
    seen = set()
    for m in range(len(dataset)):
        boxes = a.boxes[a.box_start[m] : a.box_start[m] + a.box_count[m]].astype(np.float64)
        labels = a.labels[a.box_start[m] : a.box_start[m] + a.box_count[m]]
        side = max(a.widths[m], a.heights[m])
        for s, o, p in a.relations[a.rel_start[m] : a.rel_start[m] + a.rel_count[m]]:
            name = dataset.predicate_classes[p]
            assert s != o
            assert geometry_holds(name, boxes[s], boxes[o], side, labels[s], labels[o]), name
            seen.add(name)
    assert len(seen) >= 15  # the checks above were not vacuous


def test_object_class_is_visible(synthetic_root):
    """Centre pixel of every filled, unoccluded object has its class's colour."""
    dataset = SceneGraphDataset(synthetic_root, "test")
    palette = np.array([PALETTE[c] for c in COLOURS], dtype=np.float64)
    checked = 0
    for index in range(len(dataset)):
        image, target = dataset[index]
        boxes = target.boxes.numpy()
        for k, (box, label) in enumerate(zip(boxes, target.labels.tolist())):
            others = np.delete(boxes, k, axis=0)
            touches = np.minimum(box[2:], others[:, 2:]) >= np.maximum(box[:2], others[:, :2])
            if shape(label) == "ring" or touches.all(axis=1).any():
                continue
            cx, cy = int((box[0] + box[2]) / 2), int((box[1] + box[3]) / 2)
            pixel = image[:, cy, cx].numpy() * 255
            nearest = np.argmin(np.linalg.norm(palette - pixel, axis=1))
            assert COLOURS[nearest] == OBJECT_CLASSES[label - 1].split()[0]
            checked += 1
    assert checked > 50


def relation_features(dataset):
    """Per annotated relation: normalised boxes and their differences, one-hot labels."""
    a = dataset.annotations
    image = np.repeat(np.arange(len(dataset)), a.rel_count)
    rows_s = a.box_start[image] + a.relations[:, 0]
    rows_o = a.box_start[image] + a.relations[:, 1]
    side = np.maximum(a.widths, a.heights)[image][:, None]
    s, o = a.boxes[rows_s] / side, a.boxes[rows_o] / side
    onehot = np.eye(len(dataset.object_classes), dtype=np.float32)
    geometry = np.concatenate([s, o, s - o], axis=1).astype(np.float32)
    features = np.concatenate([geometry, onehot[a.labels[rows_s]], onehot[a.labels[rows_o]]], 1)
    return features, a.labels[rows_s], a.labels[rows_o], a.relations[:, 2]


def test_geometry_beats_the_label_pair_frequency_baseline(medium_root):
    """Predicate accuracy on test relations: a small MLP on boxes + labels versus the most
    frequent training predicate of the (subject label, object label) pair."""
    torch.set_num_threads(1)
    train = SceneGraphDataset(medium_root, "train")
    test = SceneGraphDataset(medium_root, "test")
    counts = compute_statistics(train).pair_predicate_counts[:, :, 1:]
    x, _, _, y = relation_features(train)
    x_test, subjects, objects, y_test = relation_features(test)
    frequency_accuracy = np.mean(counts[subjects, objects].argmax(axis=1) + 1 == y_test)

    torch.manual_seed(0)
    mlp = torch.nn.Sequential(
        torch.nn.Linear(x.shape[1], 128), torch.nn.ReLU(), torch.nn.Linear(128, len(PREDICATES) + 1)
    )
    optimizer = torch.optim.Adam(mlp.parameters(), lr=1e-2)
    inputs, targets = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(300):
        loss = torch.nn.functional.cross_entropy(mlp(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        predicted = mlp(torch.from_numpy(x_test)).argmax(dim=1).numpy()
    mlp_accuracy = np.mean(predicted == y_test)
    assert mlp_accuracy > frequency_accuracy + 0.3, (mlp_accuracy, frequency_accuracy)


@pytest.mark.parametrize(("num_images", "image_size"), [(1, 64), (10, 16)])
def test_bad_arguments_are_config_errors(tmp_path, num_images, image_size):
    with pytest.raises(ConfigError, match="num_images|image_size"):
        generate_synthetic_dataset(tmp_path, num_images, image_size, progress=False)


def test_split_fractions_size_test_and_val_and_keep_every_image(tmp_path):
    default = generate_synthetic_dataset(tmp_path / "a", 40, 48, progress=False)
    wider = generate_synthetic_dataset(
        tmp_path / "b", 40, 48, progress=False, test_fraction=0.5, val_fraction=0.4
    )
    split, wider_split = h5_arrays(default)["split"], h5_arrays(wider)["split"]
    assert (split == SPLIT_TEST).sum() == 12 and (wider_split == SPLIT_TEST).sum() == 20
    # One permutation of the ids: the larger test split holds the smaller one.
    assert set(np.flatnonzero(split == SPLIT_TEST)) < set(np.flatnonzero(wider_split == SPLIT_TEST))
    assert image_bytes(default) == image_bytes(wider)
    meta = json.loads((wider / META_NAME).read_text())
    assert meta["num_val_images"] == 8  # 40% of the 20 non-test images
    assert meta["generator"]["test_fraction"] == 0.5 and meta["generator"]["val_fraction"] == 0.4


@pytest.mark.parametrize("fractions", [{"test_fraction": 0.0}, {"val_fraction": 1.0}])
def test_split_fractions_outside_0_1_are_config_errors(tmp_path, fractions):
    with pytest.raises(ConfigError, match="fraction must be between 0 and 1"):
        generate_synthetic_dataset(tmp_path / "x", 10, 48, progress=False, **fractions)
    assert not (tmp_path / "x").exists()
