"""The image processor saved with every artstyle checkpoint (used by ``pipeline(...)`` and the scripts).

Since transformers 5, ``ViTImageProcessor`` IS the fast processor: its ``TorchvisionBackend`` converts and resizes
with torchvision, batches images of equal size, and can run on the model's device (``processor(images,
device="cuda")``). ``AutoImageProcessor`` and ``pipeline(...)`` pick that backend by default for a saved folder
(``"image_processor_type": "ViTImageProcessor"``), so folders saved before keep loading, fast. The PIL backend
(``ViTImageProcessorPil``, the former "slow" processor) stays available with ``backend="pil"``; both give the same
pixels within a few uint8 steps of resampling difference (tested).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import ViTImageProcessor

from .configuration_artstyle import ArtStyleConfig

BACKENDS = ("torchvision", "pil")


def build_image_processor(config: ArtStyleConfig, backend: str = "torchvision"):
    """A ViT image processor resizing to ``config.image_size`` and normalising with ``config.image_mean/std``.

    ``backend="torchvision"`` (default): ``ViTImageProcessor`` (fast, batched, any device);
    ``"pil"``: ``ViTImageProcessorPil``. Saved next to the weights
    (``build_image_processor(model.config).save_pretrained(folder)``) so that ``AutoImageProcessor`` and
    ``pipeline("image-classification" | "image-feature-extraction", model=folder)`` work.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "pil":
        from transformers import ViTImageProcessorPil as processor_class
    else:
        processor_class = ViTImageProcessor
    size = config.image_size
    return processor_class(
        do_resize=True,
        size={"height": size, "width": size},
        do_rescale=True,
        do_normalize=True,
        image_mean=list(config.image_mean),
        image_std=list(config.image_std),
    )


def preprocess_on_device(image_processor, images: Sequence, device: str | torch.device | None = None) -> torch.Tensor:
    """``pixel_values`` of a batch of PIL images / uint8 tensors, resized and normalised on ``device`` at once.

    With the torchvision backend the images travel to ``device`` as uint8 before resizing (4x fewer bytes than float,
    and the resize runs there); the PIL backend ignores ``device`` and the result is moved afterwards.
    """
    if isinstance(image_processor, ViTImageProcessor):
        return image_processor(list(images), return_tensors="pt", device=device)["pixel_values"]
    pixel_values = image_processor(list(images), return_tensors="pt")["pixel_values"]
    return pixel_values if device is None else pixel_values.to(device)


def keeps_uint8(image_processor) -> bool:
    """True when ``image_processor`` is a torchvision-backend processor, whose steps `resize_uint8` and
    `normalize_batch` split: resize (and crop) the uint8 image where it is decoded, rescale and normalise the batch on
    the model's device (4x fewer bytes to move than float32, and one batched normalisation)."""
    from transformers.image_processing_backends import TorchvisionBackend

    return isinstance(image_processor, TorchvisionBackend)


def resize_uint8(image_processor, image) -> torch.Tensor:
    """uint8 ``[3, H, W]``: an RGB PIL image resized (and centre-cropped, if configured) by the processor's own
    ``resize`` / ``center_crop`` (the first steps of its ``__call__``, without its per-call validation), not yet
    rescaled or normalised. Safe in DataLoader workers; `normalize_batch` finishes a stack of these."""
    from torchvision.transforms.functional import pil_to_tensor

    pixels = pil_to_tensor(image).unsqueeze(0)
    if image_processor.do_resize:
        pixels = image_processor.resize(pixels, size=image_processor.size, resample=image_processor.resample)
    if image_processor.do_center_crop:
        pixels = image_processor.center_crop(pixels, image_processor.crop_size)
    return pixels[0]


def normalize_batch(image_processor, pixels: torch.Tensor, device: str | torch.device | None = None) -> torch.Tensor:
    """float32 ``pixel_values`` of a uint8 batch ``[B, 3, H, W]`` from `resize_uint8`, rescaled and normalised on
    ``device`` with the processor's own ``rescale_and_normalize`` (the same float32 arithmetic as its ``__call__``)."""
    if device is not None:
        pixels = pixels.to(device, non_blocking=True)
    mean, std = (None if value is None else tuple(value)
                 for value in (image_processor.image_mean, image_processor.image_std))
    return image_processor.rescale_and_normalize(pixels, image_processor.do_rescale, image_processor.rescale_factor,
                                                 image_processor.do_normalize, mean, std)


__all__ = ["BACKENDS", "build_image_processor", "keeps_uint8", "normalize_batch", "preprocess_on_device",
           "resize_uint8"]
