"""Robust image decoding for training: bad files are skipped with a warning, never a crash.

`open_image_rgb` turns whatever a dataset holds (a path, raw bytes, or the ``{"path", "bytes"}``
dict of a ``datasets.Image(decode=False)`` column) into an RGB PIL image, applying the EXIF
orientation and converting CMYK, 16-bit, RGBA/LA, palette and grayscale images. Anything that cannot
be decoded (truncated, empty, not an image, larger than the pixel limit) raises `BadImageError`
naming the file.

`StyleImageDataset` wraps a ``datasets.Dataset`` split for a torch ``DataLoader``: an undecodable
image gives ``None``, which `collate_skip_bad` drops and counts in ``batch["num_skipped"]``;
`SkipCounter` sums those counts over a pass and reports them.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import datasets
import numpy as np
import torch
from PIL import Image, ImageOps

logger = logging.getLogger(__name__)

__all__ = [
    "BadImageError",
    "SkipCounter",
    "StyleImageDataset",
    "collate_skip_bad",
    "open_image_rgb",
]

_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


class BadImageError(ValueError):
    """An image file that cannot be decoded into RGB; the message names the file."""


def _source_name(source: Any) -> str:
    if isinstance(source, dict):
        return str(source.get("path") or "<in-memory bytes>")
    if isinstance(source, (bytes, bytearray)):
        return "<in-memory bytes>"
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return str(getattr(source, "name", "<file object>"))


def _open_source(source: Any):
    if isinstance(source, dict):
        if source.get("bytes") is not None:
            return io.BytesIO(source["bytes"])
        if source.get("path"):
            return source["path"]
        raise BadImageError("image entry has neither 'bytes' nor 'path'")
    if isinstance(source, (bytes, bytearray)):
        return io.BytesIO(source)
    return source


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB (16-bit scaled, alpha composited on white)."""
    if img.mode == "RGB":
        return img
    if img.mode in _SIXTEEN_BIT_MODES or img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        if img.mode == "F" and arr.size and np.nanmax(arr) <= 1.0:
            arr = arr * 255.0
        elif img.mode != "F" and (img.mode != "I" or (arr.size and arr.max() > 255)):
            arr = arr / 257.0  # 16-bit range -> 8-bit range
        arr = np.nan_to_num(np.clip(arr, 0, 255)).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode == "P" and "transparency" in img.info
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def open_image_rgb(source: Any, max_pixels: int | None = None) -> Image.Image:
    """Decode ``source`` into an RGB PIL image with the EXIF orientation applied.

    Args:
        source: a file path, raw bytes, a binary file object, or a ``{"path", "bytes"}`` dict (the
            undecoded form of a ``datasets.Image`` column).
        max_pixels: images with more pixels (width x height) are rejected before decoding, as
            decompression-bomb protection. ``None`` uses PIL's ``Image.MAX_IMAGE_PIXELS``.

    Raises:
        BadImageError: the file is missing, empty, truncated, not an image, or too large; the
            message names the file.
    """
    name = _source_name(source)
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(_open_source(source)) as img:
                width, height = img.size
                if limit is not None and width * height > limit:
                    raise BadImageError(
                        f"{name}: {width}x{height} = {width * height} pixels exceeds the limit of "
                        f"{limit} pixels (possible decompression bomb)"
                    )
                img.load()
                rgb = _to_rgb(ImageOps.exif_transpose(img))
                rgb.load()
                return rgb
    except BadImageError:
        raise
    except Exception as err:  # PIL raises many types (OSError, SyntaxError, ValueError, zlib.error...)
        raise BadImageError(f"cannot decode image {name}: {type(err).__name__}: {err}") from err


def _as_label(value: Any) -> int | torch.Tensor:
    if isinstance(value, (list, tuple, np.ndarray, torch.Tensor)):
        return torch.as_tensor(np.asarray(value), dtype=torch.float32)
    return int(value)


class StyleImageDataset(torch.utils.data.Dataset):
    """A torch ``Dataset`` over one ``datasets`` split that decodes images robustly.

    Args:
        hf_split: a ``datasets.Dataset`` with an image column (``datasets.Image``, paths or bytes).
        transform: called on the RGB PIL image; may return one tensor or a pair of views (e.g.
            `artstyle.transforms.TwoViewTransform`). ``None`` converts to a float tensor in [0, 1].
        image_column: name of the image column.
        label_column: name of the label column (a ``ClassLabel`` int or a multi-hot list); if the
            column is absent, items carry no ``"labels"``.
        max_pixels: decompression-bomb limit forwarded to `open_image_rgb`.

    Item ``i`` is ``None`` when the image cannot be decoded (a warning names the file), otherwise
    ``{"pixel_values": T}`` or ``{"pixel_values": T1, "pixel_values_2": T2}``, plus ``"labels"``
    (int for single-label, float multi-hot tensor for a list column).
    """

    def __init__(
        self,
        hf_split: datasets.Dataset,
        transform: Callable | None,
        image_column: str = "image",
        label_column: str | None = "label",
        max_pixels: int | None = None,
    ):
        if image_column not in hf_split.column_names:
            raise ValueError(
                f"image_column={image_column!r} is not a column of the dataset "
                f"(columns: {hf_split.column_names})"
            )
        feature = hf_split.features[image_column]
        if isinstance(feature, datasets.Image) and feature.decode:
            hf_split = hf_split.cast_column(image_column, datasets.Image(decode=False))
        self.dataset = hf_split
        self.transform = transform if transform is not None else _default_to_tensor
        self.image_column = image_column
        self.label_column = label_column if label_column in hf_split.column_names else None
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        row = self.dataset[int(index)]
        try:
            image = open_image_rgb(row[self.image_column], max_pixels=self.max_pixels)
        except BadImageError as err:
            logger.warning("Skipping undecodable image (item %d): %s", index, err)
            return None
        views = self.transform(image)
        if isinstance(views, (tuple, list)):
            if len(views) != 2:
                raise ValueError(f"transform returned {len(views)} views; expected 1 or 2")
            item = {"pixel_values": views[0], "pixel_values_2": views[1]}
        else:
            item = {"pixel_values": views}
        if self.label_column is not None:
            item["labels"] = _as_label(row[self.label_column])
        return item


def _default_to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def collate_skip_bad(batch: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Collate the items of `StyleImageDataset`, dropping ``None`` (undecodable) items.

    Returns a dict of stacked tensors (``"labels"`` as int64 for ints, float32 for multi-hot) plus
    ``"num_skipped"`` (int), or ``None`` when every item of the batch was undecodable.
    """
    good = [item for item in batch if item is not None]
    if not good:
        return None
    out: dict[str, Any] = {}
    for key in good[0]:
        values = [item[key] for item in good]
        if isinstance(values[0], torch.Tensor):
            out[key] = torch.stack(values)
        else:
            out[key] = torch.as_tensor(values, dtype=torch.long if isinstance(values[0], int) else None)
    out["num_skipped"] = len(batch) - len(good)
    return out


class SkipCounter:
    """Sums the images skipped over one pass of a DataLoader and reports them.

    Use ``counter.update(batch)`` on every batch from `collate_skip_bad` (pass ``batch_size`` so
    that an all-bad batch, which collates to ``None``, is counted too), then ``counter.report()``.
    """

    def __init__(self, description: str = "pass"):
        self.description = description
        self.reset()

    def reset(self) -> None:
        self.num_kept = 0
        self.num_skipped = 0

    def update(self, batch: dict[str, Any] | None, batch_size: int | None = None) -> dict[str, Any] | None:
        """Count one collated batch; returns the batch unchanged (``None`` stays ``None``)."""
        if batch is None:
            if batch_size is not None:
                self.num_skipped += int(batch_size)
            else:
                logger.warning("An all-undecodable batch was skipped; its size is unknown to SkipCounter")
            return None
        self.num_skipped += int(batch.get("num_skipped", 0))
        self.num_kept += int(batch["pixel_values"].shape[0])
        return batch

    @property
    def num_seen(self) -> int:
        return self.num_kept + self.num_skipped

    def report(self) -> str:
        """Log (warning if anything was skipped, else info) and return a one-line summary."""
        message = (
            f"{self.description}: skipped {self.num_skipped} undecodable image(s) of {self.num_seen}"
        )
        if self.num_skipped:
            logger.warning(message)
        else:
            logger.info(message)
        return message

    def as_dict(self) -> dict[str, int]:
        return {"num_kept": self.num_kept, "num_skipped": self.num_skipped}
