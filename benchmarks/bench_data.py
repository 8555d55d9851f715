"""Data-loader throughput per worker, from JPEGs and from the decoded-image cache, beside the
model's training step rate: how many loader workers keep one trial's accelerator busy.

For the ``tiny`` image size (the embedded dataset's 128 px) and the ``paper`` one (VG150's
JPEGs, about 800 px on the long side) it renders a small synthetic dataset in a temporary
folder, then times the train split's DataLoader (the trial's own ``make_loader``):

- images/s of one worker decoding JPEGs, and reading the cache (built first, timed too);
  with ``--workers 1`` the work runs in a worker process, so the transfer to the training
  process is included; with 0 it is the decode alone, in this process;
- the model's step rate at that preset (``bench_train.time_steps``, PredCls Motifs), in
  images/s on this machine's device;
- workers needed = ceil(model images/s / one worker's images/s), JPEG and cache.

    python benchmarks/bench_data.py [--images 120] [--batch-size 2] [--model-steps 2]
                                    [--workers 1] [--sizes tiny,paper]

Without a GPU the model's rate is a CPU rate (said in the output): the workers a GPU needs
follow by putting its measured step rate in the same ratio.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import tempfile
import time
from pathlib import Path

import torch

from sgstudy.config import RunConfig
from sgstudy.data.synthetic import generate_synthetic_dataset
from sgstudy.engine import resolve_device
from sgstudy.training import load_split, make_loader

IMAGE_SIDE = {"tiny": 128, "paper": 800}


def load_bench_train():
    path = Path(__file__).with_name("bench_train.py")
    spec = importlib.util.spec_from_file_location("bench_train", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def loader_rate(config: RunConfig, passes: int = 3) -> float:
    """Images/s of the train loader, best of ``passes`` full passes (workers already up)."""
    loader = make_loader(load_split(config, "train"), config)
    best = math.inf
    for attempt in range(passes + 1):  # pass 0 starts the workers and warms the page cache
        started = time.perf_counter()
        images = sum(len(batch_images) for batch_images, _ in loader)
        if attempt:
            best = min(best, time.perf_counter() - started)
    return images / best


def measure(preset: str, args: argparse.Namespace, root: Path, device: str) -> dict:
    generate_synthetic_dataset(root, args.images, IMAGE_SIDE[preset], seed=0, progress=False)
    flat = {
        "data_root": str(root), "preset": preset, "batch_size": args.batch_size,
        "num_workers": args.workers, "device": device, "warmup_iters": 0,
        "image_cache_dir": str(root.parent / f"cache-{preset}"),
    }  # fmt: skip
    config = RunConfig.from_flat(flat)
    jpeg = loader_rate(config)
    started = time.perf_counter()
    load_split(config.replace(image_cache=True), "train")  # builds the cache once
    build_seconds = time.perf_counter() - started
    cached = loader_rate(config.replace(image_cache=True))
    seconds_per_step, _ = load_bench_train().time_steps(config, args.model_steps, 1)
    return {
        "preset": preset,
        "jpeg": jpeg,
        "cache": cached,
        "build": build_seconds,
        "model": args.batch_size / seconds_per_step,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=120, help="images per synthetic dataset")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--model-steps", type=int, default=2, help="timed training steps")
    parser.add_argument("--workers", type=int, default=1, help="loader workers timed (0 or 1)")
    parser.add_argument("--sizes", default="tiny,paper")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    if args.workers not in (0, 1):
        parser.error("--workers: 0 (decode in this process) or 1 (one worker process)")
    device = resolve_device(args.device)
    torch.set_num_threads(1)  # one core for the model, as a loader worker would leave it
    if device.type != "cuda":
        print(f"no GPU here: the model's step rate below is measured on the {device.type} "
              "with 1 thread, so 'workers needed' keeps this CPU busy, not a GPU")  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        for preset in args.sizes.split(","):
            rows.append(measure(preset, args, Path(tmp) / preset / "data", str(device)))
    where = "in this process" if args.workers == 0 else "one worker process"
    print(f"\nloader images/s per worker ({where}), train split of {args.images} images")
    header = (
        f"{'size':6s} {'side px':>7s} {'jpeg/s':>8s} {'cache/s':>8s} {'cache÷jpeg':>10s} "
        f"{'build s':>8s} {'model img/s':>11s} {'workers (jpeg)':>14s} {'workers (cache)':>15s}"
    )
    print(header)
    for row in rows:
        print(
            f"{row['preset']:6s} {IMAGE_SIDE[row['preset']]:>7d} {row['jpeg']:8.1f} "
            f"{row['cache']:8.1f} {row['cache'] / row['jpeg']:9.2f}x {row['build']:8.2f} "
            f"{row['model']:11.2f} {math.ceil(row['model'] / row['jpeg']):>14d} "
            f"{math.ceil(row['model'] / row['cache']):>15d}"
        )
    print(f"\nworkers needed = ceil(model images/s on {device.type} / one worker's images/s); "
          "a trial's default is its CPUs minus one")  # fmt: skip


if __name__ == "__main__":
    main()
