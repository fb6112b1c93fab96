"""The GPU-augmentation data path: uint8 decoding in DataLoader workers, an optional decoded cache, and the
per-batch glue that turns a uint8 batch into the two normalised views on the training device.

Workers only decode and shrink (`DecodedImages`: RGB, longer side at most ``decode_size``, aspect kept, padded to a
``decode_size`` square by repeating the last row/column, the valid ``(height, width)`` returned beside it); the
augmentation runs batched on the device (`artstyle.gpu_augment.GPUTwoViewAugment`). For collections that fit in
memory, `build_decoded_cache` decodes once into a ``.npy`` beside the datasets cache, and `CachedDecodedImages`
serves it without any decoding (``run_pretrain.py --decoded_cache``, see ``with_decoded_cache`` there).

Wiring in ``run_pretrain.py`` (the script owner adds ``--augment_on {auto,cpu,gpu}`` and ``--decode_size``)::

    from artstyle.fast_data import (DecodedImages, augment_generator, collate_decoded, default_decode_size,
                                    make_two_view_batch)
    from artstyle.gpu_augment import GPUTwoViewAugment, resolve_augment_on

    # build_train_dataset(): keep the CPU path unless the GPU path was chosen
    if resolve_augment_on(data_args.augment_on, accelerator.device) == "gpu":
        size = data_args.decode_size or default_decode_size(config.image_size)
        dataset = SeededItems(DecodedImages(split, size, image_column=data_args.image_column), seed=seed)
        collate_fn = collate_decoded
        augment = GPUTwoViewAugment(data_args.augmentation, config.image_size, config.image_mean, config.image_std,
                                    **parse_json_option(data_args.augmentation_options, "augmentation_options"))
    else:
        ...  # today's StyleImageDataset + build_ssl_transform, collate_fn = collate_skip_bad, augment = None
    # build_dataloader(): collate_fn=collate_fn (everything else unchanged)

    # PretrainLoop.train_micro_batch(), first line (after count_skipped):
    if self.augment is not None:
        generator = augment_generator(self.train_args.seed, state.epoch, state.batches_in_epoch,
                                      accelerator.process_index)
        batch = make_two_view_batch(batch, self.augment, generator, accelerator.device)

``state.batches_in_epoch`` is already incremented for the current batch and restored on resume, so the views of
every batch are the same in an uninterrupted and a resumed run. (They depend on the process index: resuming with a
different number of processes keeps the data order but not the augmentation, unlike the CPU path.)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .data import BadImageError, default_cache_dir, open_image_rgb
from .training.data import item_seed

__all__ = [
    "CacheIndices",
    "CachedDecodedImages",
    "DecodedImages",
    "DeviceDecodedCache",
    "augment_generator",
    "build_decoded_cache",
    "collate_cache_indices",
    "collate_decoded",
    "decoded_cache_path",
    "decode_to_uint8",
    "default_decode_size",
    "make_two_view_batch",
]

logger = logging.getLogger(__name__)


def default_decode_size(image_size: int) -> int:
    """Twice the training size: crops of a quarter of the image or more are never upsampled."""
    return 2 * int(image_size)


def decode_to_uint8(image: Image.Image, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """RGB PIL image -> (uint8 ``[3, size, size]``, valid ``(height, width)``).

    Shrunk (PIL bilinear, antialiased) so that the longer side is at most ``size``, never enlarged, aspect kept;
    placed in the top-left corner; the rest repeats the last row and column (so that bilinear sampling at the
    border of the valid region reads the border, as a clamped resize would).
    """
    width, height = image.size
    scale = min(1.0, size / max(width, height))
    if scale < 1.0:
        width, height = max(1, round(width * scale)), max(1, round(height * scale))
        image = image.resize((width, height), Image.BILINEAR)
    array = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
    if (height, width) != (size, size):
        array = F.pad(array[None].float(), (0, size - width, 0, size - height), mode="replicate")[0].to(torch.uint8)
    return array.contiguous(), (height, width)


class DecodedImages(torch.utils.data.Dataset):
    """A ``datasets`` split decoded to uint8 squares (no augmentation): the worker side of the GPU path.

    Item ``i``: ``{"pixel_values_uint8": uint8 [3, size, size], "image_size": (height, width)}``, or ``None`` when
    the image cannot be decoded (a warning names it; `collate_decoded` drops and counts it).
    """

    def __init__(self, hf_split, size: int, image_column: str = "image", max_pixels: int | None = None):
        import datasets

        if size < 1:
            raise ValueError(f"decode size must be >= 1, got {size}")
        if image_column not in hf_split.column_names:
            raise ValueError(f"image_column={image_column!r} is not a column of the dataset "
                             f"(columns: {hf_split.column_names})")
        feature = hf_split.features[image_column]
        if isinstance(feature, datasets.Image) and feature.decode:
            hf_split = hf_split.cast_column(image_column, datasets.Image(decode=False))
        self.dataset = hf_split
        self.size = int(size)
        self.image_column = image_column
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        source = self.dataset[int(index)][self.image_column]
        try:
            image = open_image_rgb(source, max_pixels=self.max_pixels)
        except BadImageError as err:
            logger.warning("Skipping undecodable image (item %d): %s", index, err)
            return None
        pixels, valid = decode_to_uint8(image, self.size)
        return {"pixel_values_uint8": pixels, "image_size": valid}

    def fingerprint(self) -> str:
        """Identifies split + column + size (for `build_decoded_cache`)."""
        base = getattr(self.dataset, "_fingerprint", None) or f"{len(self.dataset)}"
        text = json.dumps([base, self.image_column, self.size, self.max_pixels])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def collate_decoded(batch: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Stack `DecodedImages` items, dropping ``None``: ``pixel_values_uint8`` ``[B, 3, S, S]``, ``image_sizes``
    int64 ``[B, 2]``, ``num_skipped``; ``None`` when every item was undecodable (as `collate_skip_bad`)."""
    good = [item for item in batch if item is not None]
    if not good:
        return None
    return {
        "pixel_values_uint8": torch.stack([item["pixel_values_uint8"] for item in good]),
        "image_sizes": torch.as_tensor([item["image_size"] for item in good], dtype=torch.long),
        "num_skipped": len(batch) - len(good),
    }


def augment_generator(seed: int, epoch: int, batch_index: int, process_index: int = 0) -> torch.Generator:
    """The CPU generator for the augmentation of one batch, a pure function of its arguments (exact resume)."""
    mixed = item_seed(int(seed), int(epoch), int(batch_index) * 4099 + int(process_index))
    return torch.Generator().manual_seed(mixed)


def make_two_view_batch(batch: dict[str, Any], augment, generator: torch.Generator,
                        device: str | torch.device, cache: DeviceDecodedCache | None = None) -> dict[str, Any]:
    """A `collate_decoded` (or `collate_cache_indices`) batch -> the batch `ArtStyleForPretraining` takes
    (``pixel_values``, ``pixel_values_2``, float32 on ``device``, plus ``num_skipped``). The uint8 pixels travel to
    ``device`` (4x fewer bytes than float) before augmenting there; with a `DeviceDecodedCache` they are gathered
    there from the cache by index (no pixels cross the bus)."""
    if "cache_indices" in batch:
        if cache is None:
            raise ValueError("the batch holds cache_indices (collate_cache_indices) but no DeviceDecodedCache was "
                             "given to gather its pixels from")
        pixels, sizes = cache.gather(batch["cache_indices"])
    else:
        pixels, sizes = batch["pixel_values_uint8"].to(device, non_blocking=True), batch["image_sizes"]
    view1, view2 = augment(pixels, generator, image_sizes=sizes)
    return {"pixel_values": view1, "pixel_values_2": view2, "num_skipped": batch.get("num_skipped", 0)}


# --------------------------------------------------------------------------------------------- decoded cache
def _cache_paths(dataset: DecodedImages, cache_dir: str | os.PathLike | None) -> tuple[Path, Path]:
    files = getattr(dataset.dataset, "cache_files", None) or []
    if cache_dir is None:
        cache_dir = Path(files[0]["filename"]).parent if files else Path(default_cache_dir()) / "decoded"
    stem = Path(cache_dir) / f"decoded_{dataset.fingerprint()}_{dataset.size}"
    return stem.with_suffix(".npy"), stem.with_name(stem.name + "_sizes.npy")


def decoded_cache_path(dataset: DecodedImages, cache_dir: str | os.PathLike | None = None) -> Path:
    """The ``.npy`` path where `build_decoded_cache` writes (and finds) the cache of ``dataset``."""
    return _cache_paths(dataset, cache_dir)[0]


class _Indexed(torch.utils.data.Dataset):
    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return index, self.dataset[index]


def build_decoded_cache(dataset: DecodedImages, cache_dir: str | os.PathLike | None = None,
                        num_workers: int = 0, batch_size: int = 64) -> Path:
    """Decode every image of ``dataset`` once into ``decoded_<fingerprint>_<size>.npy`` (uint8 ``[N, 3, S, S]``)
    and ``..._sizes.npy`` (int32 ``[N, 2]``, ``(-1, -1)`` for undecodable images) beside the datasets cache
    (``cache_dir``: default, the split's own cache folder, else ``default_cache_dir()/decoded``).

    A finished cache with the same fingerprint is reused; a file lock keeps concurrent builders apart, and the
    files appear atomically (written under a temporary name, then renamed). Returns the ``.npy`` path.
    """
    from filelock import FileLock

    pixels_path, sizes_path = _cache_paths(dataset, cache_dir)
    pixels_path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(pixels_path) + ".lock"):
        if pixels_path.is_file() and sizes_path.is_file():
            return pixels_path
        count, size = len(dataset), dataset.size
        tmp_pixels = pixels_path.with_name(pixels_path.name + ".tmp.npy")
        tmp_sizes = sizes_path.with_name(sizes_path.name + ".tmp.npy")
        pixels = np.lib.format.open_memmap(tmp_pixels, mode="w+", dtype=np.uint8, shape=(count, 3, size, size))
        sizes = np.full((count, 2), -1, dtype=np.int32)
        # own generator: iterating a DataLoader draws its base seed, which must not move the global RNG
        # (a run that builds the cache then initialises its model exactly as one that reuses it, or has none)
        loader = torch.utils.data.DataLoader(_Indexed(dataset), batch_size=batch_size, num_workers=num_workers,
                                             collate_fn=list, generator=torch.Generator())
        for chunk in loader:
            for index, item in chunk:
                if item is not None:
                    pixels[index] = item["pixel_values_uint8"].numpy()
                    sizes[index] = item["image_size"]
        pixels.flush()
        del pixels
        np.save(tmp_sizes, sizes)
        os.replace(tmp_sizes, sizes_path)
        os.replace(tmp_pixels, pixels_path)
        logger.info("Decoded cache of %d images (%d undecodable) written to %s", count, int((sizes[:, 0] < 0).sum()),
                    pixels_path)
    return pixels_path


class CachedDecodedImages(torch.utils.data.Dataset):
    """Items of a `build_decoded_cache` file, same format as `DecodedImages` (memory-mapped, no decoding)."""

    def __init__(self, path: str | os.PathLike):
        self.path, self.pixels, self.sizes = _load_cache_arrays(path)

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers started by spawn/forkserver get the dataset pickled: send the path, not the pixels
        # (a pickled memmap is a full in-memory copy), and map the file again on arrival
        return {key: value for key, value in self.__dict__.items() if key != "pixels"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.pixels = np.load(self.path, mmap_mode="r")

    def __len__(self) -> int:
        return self.pixels.shape[0]

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        height, width = (int(v) for v in self.sizes[index])
        if height < 0:
            return None
        return {"pixel_values_uint8": torch.from_numpy(np.array(self.pixels[index])), "image_size": (height, width)}


# --------------------------------------------------------------------------------------- decoded cache on the device
def _load_cache_arrays(path: str | os.PathLike) -> tuple[Path, np.ndarray, np.ndarray]:
    path = Path(path)
    sizes_path = path.with_name(path.stem + "_sizes.npy")
    for file in (path, sizes_path):
        if not file.is_file():
            raise FileNotFoundError(f"decoded cache file {file} not found (build it with build_decoded_cache)")
    pixels, sizes = np.load(path, mmap_mode="r"), np.load(sizes_path)
    if pixels.shape[0] != sizes.shape[0]:
        raise ValueError(f"decoded cache {path}: {pixels.shape[0]} images but {sizes.shape[0]} sizes")
    return path, pixels, sizes


class DeviceDecodedCache:
    """A `build_decoded_cache` file held in memory on the training device (a tiny collection at 128 px: 3,600
    images = 177 MB): batches are gathered there by index, so the DataLoader only yields indices
    (`CacheIndices` + `collate_cache_indices`) and no pixels are read, pickled or copied per step.

    ``gather(indices) -> (uint8 [B, 3, S, S] on the device, int64 [B, 2] valid sizes on the host)``. The indices
    travel as a host array (accelerate leaves it where it is), so the sizes the augmentation draws its crops from
    never make a round trip through the device (which would be a synchronisation per step).
    """

    def __init__(self, path: str | os.PathLike, device: str | torch.device, chunk: int = 512):
        self.path, pixels, sizes = _load_cache_arrays(path)
        self.device = torch.device(device)
        self.pixels = torch.empty(pixels.shape, dtype=torch.uint8, device=self.device)
        for start in range(0, pixels.shape[0], chunk):  # bounded host memory whatever the collection's size
            self.pixels[start:start + chunk].copy_(torch.from_numpy(np.array(pixels[start:start + chunk])))
        self.sizes = torch.from_numpy(sizes.astype(np.int64))

    @property
    def nbytes(self) -> int:
        return self.pixels.numel()

    def __len__(self) -> int:
        return self.pixels.shape[0]

    def dataset(self) -> CacheIndices:
        """The map-style dataset of this cache's items (indices; ``None`` for undecodable images)."""
        return CacheIndices(self.sizes.numpy())

    def gather(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        if index.dim() != 1 or (index.numel() and (int(index.min()) < 0 or int(index.max()) >= len(self))):
            raise ValueError(f"cache indices must be a 1-d array within [0, {len(self)}), got shape "
                             f"{tuple(index.shape)}")
        on_device = index.pin_memory() if self.device.type == "cuda" else index
        pixels = self.pixels.index_select(0, on_device.to(self.device, non_blocking=True))
        return pixels, self.sizes.index_select(0, index)


class CacheIndices(torch.utils.data.Dataset):
    """Item ``i``: ``{"cache_index": i}``, or ``None`` for an image the cache could not decode (dropped and counted
    by `collate_cache_indices`, as `collate_decoded` does). Nothing random: `SeededItems` does not seed it."""

    uses_rng = False

    def __init__(self, sizes: np.ndarray):
        self.valid = np.asarray(sizes)[:, 0] >= 0

    def __len__(self) -> int:
        return len(self.valid)

    def __getitem__(self, index: int) -> dict[str, int] | None:
        return {"cache_index": int(index)} if self.valid[int(index)] else None


def collate_cache_indices(batch: Sequence[dict[str, int] | None]) -> dict[str, Any] | None:
    """`CacheIndices` items -> ``{"cache_indices": int64 numpy array, "num_skipped": int}`` (``None`` when every item
    was undecodable). A numpy array, not a tensor: accelerate moves tensors to the device and leaves it on the host."""
    good = [item["cache_index"] for item in batch if item is not None]
    if not good:
        return None
    return {"cache_indices": np.asarray(good, dtype=np.int64), "num_skipped": len(batch) - len(good)}
