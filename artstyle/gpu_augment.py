"""Batched two-view SSL augmentation on any device (the GPU path of the data pipeline).

`GPUTwoViewAugment` applies, to a whole uint8 batch at once and with parameters drawn per sample, the operations of
`artstyle.transforms.build_ssl_view` in the same order and with the same numbers (both read
`artstyle.transforms.ssl_view_settings`): random resized crop, horizontal flip, colour jitter (brightness, contrast,
saturation, hue in a random order per sample, like torchvision's ``ColorJitter``), grayscale, Gaussian blur,
solarize, then normalisation.

Randomness: every parameter is drawn from the ``torch.Generator`` passed to ``__call__`` (a CPU generator: a few
hundred numbers per batch), in a fixed order, so the same seed gives the same views on every device and an exactly
resumed run repeats them. The caller seeds one generator per batch (`artstyle.fast_data.augment_generator`).

How it differs from the CPU path (by design, tested for statistics, not bits): the crop is taken from the image
decoded to at most ``decode_size`` px on its longer side (`artstyle.fast_data.DecodedImages`), not from the full
resolution; the crop is resampled by ``torchvision.ops.roi_align`` (bilinear, ``ceil(crop/out)`` samples averaged per
output pixel, i.e. box-antialiased when shrinking) instead of antialiased bilinear resize; the colour operations run
in float32 instead of rounding to uint8 after each one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import kornia
import torch
from torchvision.ops import roi_align

from .transforms import _check_stats, _image_size_pair, blur_kernel_size, ssl_view_settings

__all__ = ["GPUTwoViewAugment", "resolve_augment_on"]

_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale


def resolve_augment_on(value: str, device: str | torch.device) -> str:
    """``"auto"`` -> ``"gpu"`` when ``device`` is a CUDA device, else ``"cpu"``; ``"cpu"``/``"gpu"`` unchanged.

    ``"gpu"`` means: augment on ``device`` with `GPUTwoViewAugment` (it also runs on CPU tensors, for tests).
    """
    if value not in ("auto", "cpu", "gpu"):
        raise ValueError(f"augment_on must be 'auto', 'cpu' or 'gpu', got {value!r}")
    if value == "auto":
        return "gpu" if torch.device(device).type == "cuda" else "cpu"
    return value


def _uniform(generator: torch.Generator, shape: Sequence[int], low: float, high: float) -> torch.Tensor:
    return torch.rand(*shape, generator=generator, dtype=torch.float64) * (high - low) + low


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    return (_GRAY_WEIGHTS[0] * r + _GRAY_WEIGHTS[1] * g + _GRAY_WEIGHTS[2] * b).unsqueeze(1)


def _blend(image: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's ``_blend`` for float images, ``factor`` per sample ``[N]``."""
    factor = factor.view(-1, 1, 1, 1)
    return (factor * image + (1.0 - factor) * other).clamp_(0.0, 1.0)


def _brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, torch.zeros_like(x), factor)


def _contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, _grayscale(x).mean(dim=(-3, -2, -1), keepdim=True), factor)


def _saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, _grayscale(x), factor)


def _hue(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    hsv = kornia.color.rgb_to_hsv(x)  # hue in radians [0, 2 pi)
    hue = torch.remainder(hsv[:, :1] + factor.view(-1, 1, 1, 1) * (2 * math.pi), 2 * math.pi)
    return kornia.color.hsv_to_rgb(torch.cat([hue, hsv[:, 1:]], dim=1)).clamp_(0.0, 1.0)


_JITTER_OPS = (_brightness, _contrast, _saturation, _hue)  # torchvision's fn_idx numbering


def _to(tensor: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A small parameter tensor from the CPU to ``device`` without waiting for the device's queued work
    (``non_blocking`` from pageable memory is staged by the driver at once; a blocking copy would synchronise)."""
    return tensor.to(device=device, dtype=dtype, non_blocking=True)


class GPUTwoViewAugment:
    """Two augmented views of a uint8 batch, per-sample parameters, on the batch's device.

    Args:
        preset: ``"moco_v3"`` or ``"style_preserving"`` (as `artstyle.transforms.build_ssl_transform`).
        image_size: output side (or ``(height, width)``).
        mean, std: normalisation (from the model config), three values each.
        **overrides: the same setting overrides as `build_ssl_transform` (``crop_scale=...``,
            ``view2_solarize_p=...``).

    ``augment(images, generator, image_sizes=None) -> (view1, view2)``: ``images`` uint8 ``[B, 3, H, W]``;
    ``image_sizes`` int ``[B, 2]`` gives the valid ``(height, width)`` of each image in its top-left corner
    (`artstyle.fast_data.DecodedImages` pads to a square; ``None`` = the whole ``H x W``); ``generator`` a CPU
    ``torch.Generator``. Views: float32 ``[B, 3, h, w]``, normalised with ``mean``/``std``.
    """

    def __init__(self, preset: str, image_size: int | Sequence[int], mean: Sequence[float], std: Sequence[float],
                 **overrides: Any):
        mean, std = _check_stats(mean, std)
        self.preset = preset
        self.size = _image_size_pair(image_size)
        self.views = ssl_view_settings(preset, **overrides)
        for view in self.views:
            for name in ("hflip_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p"):
                if not 0.0 <= view[name] <= 1.0:
                    raise ValueError(f"{name} must be in [0, 1], got {view[name]}")
            if not 0.0 < view["crop_scale"][0] <= view["crop_scale"][1] <= 1.0:
                raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {view['crop_scale']}")
        self.kernel_size = blur_kernel_size(min(self.size))
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(preset={self.preset!r}, size={self.size}, views={self.views})"

    # ------------------------------------------------------------------------------------------ parameters
    @staticmethod
    def sample_crops(sizes: torch.Tensor, scale: Sequence[float], ratio: Sequence[float],
                     generator: torch.Generator) -> torch.Tensor:
        """torchvision ``RandomResizedCrop.make_params`` for every sample at once: ``[B, 4]`` (top, left, h, w).

        Ten tries per sample (the first valid one wins), then the same central-crop fallback.
        """
        height, width = sizes[:, 0].double(), sizes[:, 1].double()
        count = sizes.shape[0]
        area = (height * width)[:, None]
        target = area * _uniform(generator, (count, 10), scale[0], scale[1])
        aspect = torch.exp(_uniform(generator, (count, 10), math.log(ratio[0]), math.log(ratio[1])))
        w = torch.round(torch.sqrt(target * aspect))
        h = torch.round(torch.sqrt(target / aspect))
        valid = (w > 0) & (w <= width[:, None]) & (h > 0) & (h <= height[:, None])
        first = valid.double().argmax(dim=1, keepdim=True)
        w, h = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]
        found = valid.any(dim=1)
        # fallback: central crop clamped to the ratio range
        in_ratio = width / height
        fw = torch.where(in_ratio < min(ratio), width, torch.where(in_ratio > max(ratio),
                         torch.round(height * max(ratio)), width))
        fh = torch.where(in_ratio < min(ratio), torch.round(width / min(ratio)), height)
        w, h = torch.where(found, w, fw), torch.where(found, h, fh)
        u_top, u_left = torch.rand(2, count, generator=generator, dtype=torch.float64)
        top = torch.where(found, torch.floor(u_top * (height - h + 1)), torch.div(height - h, 2, rounding_mode="floor"))
        left = torch.where(found, torch.floor(u_left * (width - w + 1)), torch.div(width - w, 2, rounding_mode="floor"))
        return torch.stack([top, left, h, w], dim=1)

    def sample_params(self, sizes: torch.Tensor, view: dict[str, Any], generator: torch.Generator) -> dict:
        """Every random number of one view for ``B`` samples, drawn in a fixed order from ``generator``."""
        count = sizes.shape[0]
        params = {"crops": self.sample_crops(sizes, view["crop_scale"], view["crop_ratio"], generator)}
        params["flip"] = torch.rand(count, generator=generator) < view["hflip_p"]
        params["jitter"] = torch.rand(count, generator=generator) < view["jitter_p"]
        params["jitter_order"] = torch.rand(count, 4, generator=generator).argsort(dim=1)  # a permutation per sample
        factors = []
        for name in ("brightness", "contrast", "saturation"):
            amount = float(view[name])
            factors.append(_uniform(generator, (count,), max(0.0, 1.0 - amount), 1.0 + amount))
        factors.append(_uniform(generator, (count,), -float(view["hue"]), float(view["hue"])))
        params["jitter_factors"] = torch.stack(factors, dim=1).float()  # [B, 4]
        params["gray"] = torch.rand(count, generator=generator) < view["grayscale_p"]
        params["blur"] = torch.rand(count, generator=generator) < view["blur_p"]
        params["sigma"] = _uniform(generator, (count,), *view["blur_sigma"]).float()
        params["solarize"] = torch.rand(count, generator=generator) < view["solarize_p"]
        return params

    # ------------------------------------------------------------------------------------------ applying
    def apply(self, pixels: torch.Tensor, params: dict, view: dict[str, Any]) -> torch.Tensor:
        """One view of float ``pixels`` in [0, 1] ``[B, 3, H, W]`` with the given parameters (normalised)."""
        device = pixels.device
        count = pixels.shape[0]
        top, left, h, w = params["crops"].unbind(1)
        boxes = torch.stack([torch.arange(count, dtype=torch.float64), left, top, left + w, top + h], dim=1)
        x = roi_align(pixels, _to(boxes, device, pixels.dtype), output_size=self.size,
                      spatial_scale=1.0, sampling_ratio=-1, aligned=True)
        x = torch.where(_to(params["flip"], device).view(-1, 1, 1, 1), x.flip(-1), x)
        if view["jitter_p"] > 0:
            x = self._jitter(x, params)
        if view["grayscale_p"] > 0:
            x = torch.where(_to(params["gray"], device).view(-1, 1, 1, 1), _grayscale(x).expand_as(x), x)
        if view["blur_p"] > 0 and params["blur"].any():
            index = params["blur"].nonzero()[:, 0]
            sigma = _to(params["sigma"][index].view(-1, 1).expand(-1, 2).contiguous(), device)
            index = _to(index, device)
            blurred = kornia.filters.gaussian_blur2d(x.index_select(0, index), self.kernel_size, sigma,
                                                     border_type="reflect")
            x = x.index_copy(0, index, blurred)
        if view["solarize_p"] > 0:
            threshold = view["solarize_threshold"] / 255.0
            mask = _to(params["solarize"], device).view(-1, 1, 1, 1) & (x >= threshold)
            x = torch.where(mask, 1.0 - x, x)
        return (x - _to(self.mean, device)) / _to(self.std, device)

    def _jitter(self, x: torch.Tensor, params: dict) -> torch.Tensor:
        """Colour jitter on the samples drawn for it, the four operations in each sample's own order."""
        device = x.device
        for position in range(4):
            for op_index, op in enumerate(_JITTER_OPS):
                chosen = params["jitter"] & (params["jitter_order"][:, position] == op_index)
                if not chosen.any():
                    continue
                index = chosen.nonzero()[:, 0]
                factor = _to(params["jitter_factors"][index, op_index], device)
                index = _to(index, device)
                x = x.index_copy(0, index, op(x.index_select(0, index), factor))
        return x

    def __call__(self, images: torch.Tensor, generator: torch.Generator,
                 image_sizes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be uint8 [B, 3, H, W], got {images.dtype} {tuple(images.shape)}")
        if generator.device.type != "cpu":
            raise ValueError(f"generator must be a CPU torch.Generator (parameters are drawn on the CPU), "
                             f"got one on {generator.device}")
        count, _, height, width = images.shape
        if image_sizes is None:
            sizes = torch.tensor([[height, width]], dtype=torch.long).expand(count, 2)
        else:
            sizes = image_sizes.detach().to("cpu", torch.long)
            if sizes.shape != (count, 2) or (sizes < 1).any() or (sizes[:, 0] > height).any() \
                    or (sizes[:, 1] > width).any():
                raise ValueError(f"image_sizes must be [B, 2] with 1 <= (h, w) <= ({height}, {width}), got "
                                 f"{tuple(sizes.shape)}")
        pixels = images.float().div_(255.0)
        params = [self.sample_params(sizes, view, generator) for view in self.views]
        view1, view2 = (self.apply(pixels, p, view) for p, view in zip(params, self.views))
        return view1, view2
