"""A node-local cache of decoded images: one uint8 memory map per split, shared by every
process on the node.

Decoding JPEGs is most of a data loader's work and every trial of a study decodes the same
images again. The first process that needs a split decodes it once into
``<cache_root>/<dataset fingerprint>/<split key>/`` (``pixels.npy``: all images' RGB bytes,
H x W x 3 each, back to back; ``index.npy``: (M, 3) int64 rows of offset, height, width);
every later read is a slice of a memory map, which the operating system's page cache shares
between processes.

Building is safe when several processes ask at once: an exclusive ``flock`` on
``<split key>.lock`` lets one build while the others wait, and the build is written in a
temporary folder renamed into place in one step, so a reader never sees half a cache. The
key covers the annotation files (the fingerprint), the image folder and the split's image
ids; remove the folder when image files change under an unchanged annotation set.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from sgstudy.errors import DatasetError

PIXELS_NAME = "pixels.npy"
INDEX_NAME = "index.npy"
# Where a node keeps its cache unless the config names a folder.
CACHE_ENV = "SGSTUDY_IMAGE_CACHE"


def default_cache_root() -> Path:
    """``$SGSTUDY_IMAGE_CACHE``, else ``sgstudy-image-cache`` in the node's temp folder."""
    return Path(os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "sgstudy-image-cache")


def decode_pixels(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB; DatasetError naming the file when it does not load."""
    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as exc:
        raise DatasetError(f"image {path} does not load ({exc})") from exc


def pixels_to_tensor(pixels: np.ndarray) -> Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [0, 1], the dataset's image type."""
    return torch.from_numpy(pixels).permute(2, 0, 1).float().div_(255.0)


class ImageCache:
    """The decoded images of one split, read through a memory map opened lazily per process
    (so a DataLoader worker opens its own map instead of inheriting a pickled one)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.index = np.load(self.folder / INDEX_NAME)  # (M, 3) offset, height, width
        self._pixels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self) -> dict:
        return {"folder": self.folder, "index": self.index, "_pixels": None}

    def pixels(self, position: int) -> np.ndarray:
        """(H, W, 3) uint8 view of image ``position`` (in the split's order)."""
        if self._pixels is None:
            self._pixels = np.load(self.folder / PIXELS_NAME, mmap_mode="r")
        offset, height, width = (int(v) for v in self.index[position])
        return self._pixels[offset : offset + height * width * 3].reshape(height, width, 3)

    def image(self, position: int) -> Tensor:
        """(3, H, W) float32 in [0, 1], exactly what decoding the JPEG gives."""
        return pixels_to_tensor(np.array(self.pixels(position)))


def split_key(split: str, image_folder: Path, image_ids: np.ndarray) -> str:
    """The split's name and a short hash of the image folder and the split's image ids."""
    digest = hashlib.sha256(str(Path(image_folder).resolve()).encode())
    digest.update(np.ascontiguousarray(image_ids, dtype=np.int64).tobytes())
    return f"{split}-{digest.hexdigest()[:16]}"


def open_or_build(folder: Path, paths: list[Path]) -> ImageCache:
    """The cache at ``folder``, decoding ``paths`` (in order) into it first if absent."""
    folder = Path(folder)
    if not (folder / INDEX_NAME).is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        with open(folder.parent / f"{folder.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building it right now
            if not (folder / INDEX_NAME).is_file():
                _build(folder, paths)
    return ImageCache(folder)


def _build(folder: Path, paths: list[Path]) -> None:
    """Decodes every image into a temporary folder, then renames it to ``folder``."""
    sizes = np.array([_size(path) for path in paths], dtype=np.int64).reshape(-1, 2)  # (M, 2)
    lengths = sizes[:, 0] * sizes[:, 1] * 3
    index = np.column_stack([np.cumsum(lengths) - lengths, sizes[:, 1], sizes[:, 0]])
    partial = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        pixels = np.lib.format.open_memmap(
            partial / PIXELS_NAME, mode="w+", dtype=np.uint8, shape=(int(lengths.sum()),)
        )
        for (offset, height, width), path in zip(index, paths):
            decoded = decode_pixels(path)
            if decoded.shape != (height, width, 3):
                raise DatasetError(f"image {path} changed size while the cache was built")
            pixels[offset : offset + decoded.size] = decoded.reshape(-1)
        pixels.flush()
        del pixels
        np.save(partial / INDEX_NAME, index)
        os.rename(partial, folder)  # atomic: readers see no cache or a whole one
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def _size(path: Path) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding it."""
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, ValueError, SyntaxError) as exc:
        raise DatasetError(f"image {path} does not load ({exc})") from exc
