"""Image transforms: two-view SSL augmentation, fine-tuning and evaluation transforms.

Built from torchvision ``transforms.v2`` and timm's RandAugment. Normalisation statistics always
come from the caller (the model config or its image processor); nothing here assumes ImageNet.

SSL presets (every setting can be overridden by keyword; see `build_ssl_transform`):

- ``"moco_v3"``: the MoCo v3 recipe: RandomResizedCrop(scale 0.08-1), flip, colour jitter
  (0.4, 0.4, 0.2, 0.1) with p=0.8, grayscale p=0.2, Gaussian blur p=1.0 / 0.1 and solarize
  p=0.0 / 0.2 for view 1 / view 2.
- ``"style_preserving"``: colour and texture ARE the style, so milder colour jitter (0.2, 0.2,
  0.1, 0.02, p=0.5), no grayscale, no solarize, a larger minimum crop (0.3) and lighter blur
  (p=0.5 / 0.1, sigma 0.1-1.0).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torchvision.transforms.v2 as T
from PIL import Image

__all__ = [
    "SSL_PRESETS",
    "TwoViewTransform",
    "build_eval_transform",
    "build_ssl_transform",
    "build_ssl_view",
    "build_train_transform",
    "blur_kernel_size",
    "ssl_view_settings",
]

# Settings of one SSL view (the keyword arguments of `build_ssl_view`, except size/mean/std).
_VIEW_DEFAULTS: dict[str, Any] = {
    "crop_scale": (0.08, 1.0),
    "crop_ratio": (3 / 4, 4 / 3),
    "hflip_p": 0.5,
    "jitter_p": 0.8,
    "brightness": 0.4,
    "contrast": 0.4,
    "saturation": 0.2,
    "hue": 0.1,
    "grayscale_p": 0.2,
    "blur_p": 1.0,
    "blur_sigma": (0.1, 2.0),
    "solarize_p": 0.0,
    "solarize_threshold": 128,
}

# Shared by both views of "style_preserving"; only the blur probability differs between them.
_STYLE_PRESERVING_VIEW: dict[str, Any] = {
    "crop_scale": (0.3, 1.0),
    "jitter_p": 0.5,
    "brightness": 0.2,
    "contrast": 0.2,
    "saturation": 0.1,
    "hue": 0.02,
    "grayscale_p": 0.0,
    "blur_sigma": (0.1, 1.0),
    "solarize_p": 0.0,
}

SSL_PRESETS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "moco_v3": (
        {},
        {"blur_p": 0.1, "solarize_p": 0.2},
    ),
    "style_preserving": (
        {**_STYLE_PRESERVING_VIEW, "blur_p": 0.5},
        {**_STYLE_PRESERVING_VIEW, "blur_p": 0.1},
    ),
}


class TwoViewTransform:
    """Apply two (possibly different) transforms to one image; returns ``(view1, view2)``."""

    def __init__(self, view1: Callable, view2: Callable):
        self.view1 = view1
        self.view2 = view2

    def __call__(self, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        return self.view1(image), self.view2(image)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(\n  view1={self.view1},\n  view2={self.view2})"


def blur_kernel_size(image_size: int) -> int:
    """About 10% of the image side, odd, at least 3 (as in SimCLR / MoCo)."""
    k = max(3, int(0.1 * image_size))
    return k if k % 2 == 1 else k + 1


def _image_size_pair(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    height, width = image_size
    return int(height), int(width)


def _check_stats(mean, std) -> tuple[list[float], list[float]]:
    if mean is None or std is None:
        raise ValueError(
            "mean and std are required (take them from the model config or image processor, "
            "e.g. config.image_mean / config.image_std)"
        )
    mean, std = [float(m) for m in mean], [float(s) for s in std]
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std must have 3 values (RGB), got mean={mean}, std={std}")
    if any(s <= 0 for s in std):
        raise ValueError(f"std must be positive, got {std}")
    return mean, std


def _to_normalized_tensor(mean: Sequence[float], std: Sequence[float]) -> list:
    return [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(mean=mean, std=std)]


def build_ssl_view(
    image_size: int | Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    *,
    crop_scale: tuple[float, float] = (0.08, 1.0),
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip_p: float = 0.5,
    jitter_p: float = 0.8,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.2,
    hue: float = 0.1,
    grayscale_p: float = 0.2,
    blur_p: float = 1.0,
    blur_sigma: tuple[float, float] = (0.1, 2.0),
    solarize_p: float = 0.0,
    solarize_threshold: int = 128,
) -> T.Compose:
    """One SSL view: crop, flip, colour jitter, grayscale, blur, solarize, then normalise.

    Defaults are MoCo v3's first view. Operations with probability 0 are left out. Input: a PIL
    image (or uint8 tensor); output: float32 tensor ``[3, H, W]`` normalised with ``mean``/``std``.
    """
    mean, std = _check_stats(mean, std)
    size = _image_size_pair(image_size)
    for name, p in (("hflip_p", hflip_p), ("jitter_p", jitter_p), ("grayscale_p", grayscale_p),
                    ("blur_p", blur_p), ("solarize_p", solarize_p)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {p}")
    if not 0.0 < crop_scale[0] <= crop_scale[1] <= 1.0:
        raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {crop_scale}")
    ops: list = [
        T.ToImage(),  # uint8 tensor: the colour ops below are faster than on PIL
        T.RandomResizedCrop(size, scale=tuple(crop_scale), ratio=tuple(crop_ratio), antialias=True),
    ]
    if hflip_p > 0:
        ops.append(T.RandomHorizontalFlip(p=hflip_p))
    if jitter_p > 0:
        jitter = T.ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue)
        ops.append(T.RandomApply([jitter], p=jitter_p))
    if grayscale_p > 0:
        ops.append(T.RandomGrayscale(p=grayscale_p))
    if blur_p > 0:
        blur = T.GaussianBlur(kernel_size=blur_kernel_size(min(size)), sigma=tuple(blur_sigma))
        ops.append(T.RandomApply([blur], p=blur_p))
    if solarize_p > 0:
        ops.append(T.RandomSolarize(threshold=solarize_threshold, p=solarize_p))
    ops += [T.ToDtype(torch.float32, scale=True), T.Normalize(mean=mean, std=std)]
    return T.Compose(ops)


def ssl_view_settings(preset: str = "moco_v3", **overrides: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The settings of both views of ``preset`` after ``overrides`` (see `build_ssl_transform`).

    The one place the CPU transforms and `artstyle.gpu_augment.GPUTwoViewAugment` read their numbers from.
    Returns two dicts with every key of `build_ssl_view`'s settings (crop_scale, ..., solarize_threshold).
    """
    if preset not in SSL_PRESETS:
        raise ValueError(f"Unknown SSL preset {preset!r}; choose one of {sorted(SSL_PRESETS)}")
    views = [{**_VIEW_DEFAULTS, **copy.deepcopy(p)} for p in SSL_PRESETS[preset]]
    for key, value in overrides.items():
        targets, name = (0, 1), key
        if key.startswith(("view1_", "view2_")):
            targets, name = (int(key[4]) - 1,), key[len("view1_"):]
        if name not in _VIEW_DEFAULTS:
            raise ValueError(
                f"Unknown SSL transform setting {key!r}; valid settings: {sorted(_VIEW_DEFAULTS)} "
                "(optionally prefixed with view1_ or view2_)"
            )
        for t in targets:
            views[t][name] = value
    return views[0], views[1]


def build_ssl_transform(
    preset: str = "moco_v3",
    image_size: int | Sequence[int] = 224,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **overrides: Any,
) -> TwoViewTransform:
    """The two-view SSL augmentation of ``preset`` (``"moco_v3"`` or ``"style_preserving"``).

    ``mean`` and ``std`` are required (from the model config / image processor). Any setting of
    `build_ssl_view` can be overridden: ``name=value`` sets it for both views,
    ``view1_name=value`` / ``view2_name=value`` for one view only, e.g.
    ``build_ssl_transform("moco_v3", 64, mean, std, crop_scale=(0.2, 1.0), view2_solarize_p=0.0)``.
    """
    views = ssl_view_settings(preset, **overrides)
    return TwoViewTransform(
        build_ssl_view(image_size, mean, std, **views[0]),
        build_ssl_view(image_size, mean, std, **views[1]),
    )


def _processor_size(image_processor) -> tuple[int, int]:
    size = image_processor.size
    get = size.get if isinstance(size, dict) else (lambda k, d=None: getattr(size, k, d))
    height, width = get("height"), get("width")
    if height is None or width is None:
        edge = get("shortest_edge")
        if edge is None:
            raise ValueError(
                f"image processor size {size!r} has neither height/width nor shortest_edge"
            )
        height = width = edge
    return int(height), int(width)


def _processor_stats(image_processor) -> tuple[list[float], list[float]]:
    mean = getattr(image_processor, "image_mean", None)
    std = getattr(image_processor, "image_std", None)
    if mean is None or std is None:
        raise ValueError("image processor must define image_mean and image_std")
    return _check_stats(mean, std)


def build_eval_transform(image_processor) -> T.Compose:
    """Deterministic eval transform matching ``image_processor`` (resize to its size, normalise).

    Like ``ViTImageProcessor``: a direct resize to ``size["height"] x size["width"]`` (bilinear,
    antialiased), then ``image_mean`` / ``image_std`` normalisation. Returns float32 ``[3, H, W]``.
    """
    size = _processor_size(image_processor)
    mean, std = _processor_stats(image_processor)
    return T.Compose([T.ToImage(), T.Resize(size, antialias=True), *_to_normalized_tensor(mean, std)[1:]])


def build_train_transform(
    image_processor,
    rand_augment: str | None = None,
    crop_scale: tuple[float, float] = (0.08, 1.0),
    hflip_p: float = 0.5,
) -> T.Compose:
    """Fine-tuning transform: RandomResizedCrop + flip + optional RandAugment, then normalise.

    Input: a PIL image (timm's RandAugment works on PIL); output: float32 ``[3, H, W]``.

    Args:
        image_processor: gives the output size (``size``) and ``image_mean`` / ``image_std``.
        rand_augment: a timm RandAugment config string such as ``"rand-m9-mstd0.5-inc1"``
            (`timm.data.rand_augment_transform`), or ``None`` for no RandAugment.
        crop_scale: RandomResizedCrop area range.
        hflip_p: horizontal flip probability.
    """
    size = _processor_size(image_processor)
    mean, std = _processor_stats(image_processor)
    if not 0.0 < crop_scale[0] <= crop_scale[1] <= 1.0:
        raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {crop_scale}")
    ops: list = [T.RandomResizedCrop(size, scale=tuple(crop_scale), antialias=True)]
    if hflip_p > 0:
        ops.append(T.RandomHorizontalFlip(p=hflip_p))
    if rand_augment:
        from timm.data import rand_augment_transform

        if not rand_augment.startswith("rand"):
            raise ValueError(
                f"rand_augment must be a timm RandAugment string like 'rand-m9-mstd0.5', got {rand_augment!r}"
            )
        hparams = {"img_mean": tuple(round(255 * m) for m in mean), "translate_const": int(min(size) * 0.45)}
        ops.append(rand_augment_transform(rand_augment, hparams))
    ops += _to_normalized_tensor(mean, std)
    return T.Compose(ops)

