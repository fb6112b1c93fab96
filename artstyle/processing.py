"""The image processor saved with every artstyle checkpoint (used by ``pipeline(...)`` and the scripts)."""

from __future__ import annotations

from transformers import ViTImageProcessor

from .configuration_artstyle import ArtStyleConfig


def build_image_processor(config: ArtStyleConfig) -> ViTImageProcessor:
    """A ``ViTImageProcessor`` resizing to ``config.image_size`` and normalising with ``config.image_mean/std``.

    Saved next to the weights (``build_image_processor(model.config).save_pretrained(folder)``) so that
    ``AutoImageProcessor`` and ``pipeline("image-classification" | "image-feature-extraction", model=folder)`` work.
    """
    size = config.image_size
    return ViTImageProcessor(
        do_resize=True,
        size={"height": size, "width": size},
        do_rescale=True,
        do_normalize=True,
        image_mean=list(config.image_mean),
        image_std=list(config.image_std),
    )


__all__ = ["build_image_processor"]
