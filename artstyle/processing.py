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


__all__ = ["BACKENDS", "build_image_processor", "preprocess_on_device"]
