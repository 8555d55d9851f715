"""The node-local decoded-image cache and the data path's defaults.

A cached read gives exactly the tensors a JPEG read gives; two processes building the same
cache at once both get it whole; DataLoader workers default to the CPUs minus one.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from sgstudy.cli import main
from sgstudy.config import RunConfig
from sgstudy.data.dataset import SceneGraphDataset, loader_workers
from sgstudy.data.image_cache import INDEX_NAME
from sgstudy.errors import ConfigError, DatasetError
from sgstudy.training import load_split, make_loader


@pytest.fixture(scope="module")
def mixed_sizes(synthetic_root_factory, tmp_path_factory) -> Path:
    """The 120-image synthetic set with a few train and val images re-saved at other sizes,
    so that the cache holds images of several shapes back to back."""
    root = tmp_path_factory.mktemp("mixed") / "synthetic"
    shutil.copytree(synthetic_root_factory(120, 64, 0), root)
    for split, sizes in (("train", [(80, 48), (33, 71)]), ("val", [(96, 96)])):
        dataset = SceneGraphDataset(root, split)
        for index, size in enumerate(sizes):
            path = dataset.image_path(index)
            with Image.open(path) as image:
                image.convert("RGB").resize(size).save(path)
    return root


def assert_same_items(cached: SceneGraphDataset, decoded: SceneGraphDataset) -> None:
    assert len(cached) == len(decoded) > 0
    for index in range(len(decoded)):
        (image_a, target_a), (image_b, target_b) = cached[index], decoded[index]
        assert image_a.dtype == image_b.dtype == torch.float32
        assert torch.equal(image_a, image_b), index
        assert target_a.image_size == target_b.image_size
        for name in ("boxes", "labels", "relations"):
            assert torch.equal(getattr(target_a, name), getattr(target_b, name))


@pytest.mark.parametrize("split", ["train", "val"])
def test_cached_reads_give_exactly_the_jpeg_tensors(mixed_sizes, tmp_path, split):
    decoded = SceneGraphDataset(mixed_sizes, split)
    first = SceneGraphDataset(mixed_sizes, split, image_cache_dir=tmp_path)  # builds
    again = SceneGraphDataset(mixed_sizes, split, image_cache_dir=tmp_path)  # opens
    assert first.image_cache.folder == again.image_cache.folder
    assert first.image_cache.folder.parent.parent == tmp_path  # <root>/<fingerprint>/<split>
    assert {image.shape[1:] for image, _ in (first[0], first[1])} != {(64, 64)}
    assert_same_items(first, decoded)
    assert_same_items(again, decoded)


def test_the_run_config_switch_reads_through_the_cache(mixed_sizes, tmp_path):
    config = RunConfig.from_flat(
        {"data_root": str(mixed_sizes), "image_cache": True, "image_cache_dir": str(tmp_path)}
    )
    dataset = load_split(config, "val")
    assert dataset.image_cache is not None and dataset.image_cache.folder.is_relative_to(tmp_path)
    assert load_split(config.replace(image_cache=False), "val").image_cache is None


def checksum(dataset: SceneGraphDataset) -> float:
    return float(sum(dataset[i][0].double().sum() for i in range(len(dataset))))


def build_and_checksum(root: Path, cache: Path, start, results) -> None:
    start.wait()  # both processes ask for the missing cache at the same moment
    results.put(checksum(SceneGraphDataset(root, "train", image_cache_dir=cache)))


def test_two_processes_building_at_once_get_one_whole_cache(mixed_sizes, tmp_path):
    expected = checksum(SceneGraphDataset(mixed_sizes, "train"))
    context = multiprocessing.get_context("fork")
    start, results = context.Barrier(2), context.Queue()
    workers = [
        context.Process(target=build_and_checksum, args=(mixed_sizes, tmp_path, start, results))
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    sums = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
        assert worker.exitcode == 0
    assert sums == [expected, expected]
    (fingerprint,) = tmp_path.iterdir()
    entries = sorted(path.name for path in fingerprint.iterdir())
    assert len(entries) == 2 and entries[1] == entries[0] + ".lock"  # no half-built folder
    assert (fingerprint / entries[0] / INDEX_NAME).is_file()


def test_a_failed_build_leaves_nothing_behind(mixed_sizes, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(mixed_sizes, broken)
    SceneGraphDataset(broken, "val").image_path(1).write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match="does not load"):
        SceneGraphDataset(broken, "val", image_cache_dir=tmp_path / "cache")
    leftovers = [p.name for p in (tmp_path / "cache").rglob("*") if not p.name.endswith(".lock")]
    assert leftovers == [next((tmp_path / "cache").iterdir()).name]  # only the fingerprint


def test_workers_default_to_the_cpus_minus_one(monkeypatch, synthetic_root):
    assert loader_workers(3) == 3 and loader_workers(0) == 0
    assert loader_workers(None, cpus=4) == 3 and loader_workers(None, cpus=1) == 0
    monkeypatch.setenv("OMP_NUM_THREADS", "6")  # what Ray sets for a trial holding 6 CPUs
    assert loader_workers(None) == 5
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert loader_workers(None) == max(len(os.sched_getaffinity(0)) - 1, 0)
    config = RunConfig.from_flat({"data_root": str(synthetic_root), "device": "cpu"})
    assert config.data.num_workers is None
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    loader = make_loader(load_split(config, "val"), config)
    assert (loader.num_workers, loader.pin_memory) == (2, False)  # pinned on CUDA only
    with pytest.raises(ConfigError, match="num_workers"):
        RunConfig.from_flat({"num_workers": -1})


def test_a_negative_worker_count_is_one_error_line(capsys, tmp_path, synthetic_root):
    out = tmp_path / "run"
    argv = ["train", "--data", str(synthetic_root), "--out", str(out), "--num-workers", "-1"]
    code = main(argv)
    assert code == 2 and not out.exists()
    assert capsys.readouterr().err == "error: num_workers must be >= 0, got -1\n"
