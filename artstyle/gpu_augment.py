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

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from .transforms import _check_stats, _image_size_pair, blur_kernel_size, ssl_view_settings

__all__ = ["GPUTwoViewAugment", "resolve_augment_on"]

logger = logging.getLogger(__name__)

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


_CONSTANTS: dict = {}


def _constant(values: tuple[float, ...], like: torch.Tensor) -> torch.Tensor:
    """``values`` as a ``[1, len, 1, 1]`` tensor of ``like``'s dtype on its device, made once per device (a copy to
    a device per call would be one more launch)."""
    key = (values, like.dtype, like.device)
    if key not in _CONSTANTS:
        _CONSTANTS[key] = torch.tensor(values, dtype=like.dtype).view(1, -1, 1, 1).to(like.device)
    return _CONSTANTS[key]


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    """torchvision's ``rgb_to_grayscale`` weights, ``[B, 3, H, W]`` -> ``[B, 1, H, W]``."""
    return (x * _constant(_GRAY_WEIGHTS, x)).sum(dim=1, keepdim=True)


def _blend(image: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's ``_blend`` (``factor·image + (1 - factor)·other``, clamped) for float images, ``factor`` per
    sample ``[N]``; as one ``lerp``, so that ``factor`` 1 returns ``image`` exactly."""
    return torch.lerp(other.expand_as(image), image, factor.view(-1, 1, 1, 1)).clamp_(0.0, 1.0)


def _brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (x * factor.view(-1, 1, 1, 1)).clamp_(0.0, 1.0)  # blend with black


def _contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, _grayscale(x).mean(dim=(-3, -2, -1), keepdim=True), factor)


def _saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, _grayscale(x), factor)


def _hue(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's ``adjust_hue`` (RGB -> HSV, hue + ``factor`` mod 1, back), in a closed form of about 30
    batched operations (kornia's round trip takes 85): the hue from the channel differences of the largest channel
    (ties resolved red, green, blue, as torchvision), and back through ``c = v - (v - min)·clamp(min(k, 4 - k), 0, 1)``
    with ``k = (n + 6·hue) mod 6``, ``n`` = 5, 3, 1 for red, green, blue (value and saturation are unchanged)."""
    value, largest = x.max(dim=1, keepdim=True)  # the first maximum on ties: red before green before blue
    chroma = value - x.amin(dim=1, keepdim=True)
    scaled = (value - x) / torch.where(chroma == 0, torch.ones_like(chroma), chroma)
    # hue·6 candidates if channel c is the largest: 2c + scaled[c + 2] - scaled[c + 1] (indices mod 3)
    candidates = _constant((0.0, 2.0, 4.0), x) + scaled.roll(1, dims=1) - scaled.roll(-1, dims=1)
    hue = torch.fmod(candidates.gather(1, largest) / 6.0 + 1.0, 1.0)
    hue = torch.remainder(hue + factor.view(-1, 1, 1, 1), 1.0)
    k = torch.remainder(_constant((5.0, 3.0, 1.0), x) + 6.0 * hue, 6.0)
    return (value - chroma * torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)).clamp_(0.0, 1.0)


def _gaussian_blur(x: torch.Tensor, kernel_size: int, sigma: torch.Tensor) -> torch.Tensor:
    """torchvision's ``gaussian_blur`` (reflect padding, kernel ``exp(-t²/2σ²)`` normalised) with ``sigma`` per
    sample ``[N]``: two depthwise convolutions (the kernel is separable), one group per sample and channel."""
    count, channels, height, width = x.shape
    half = (kernel_size - 1) / 2
    t = _constant(tuple(i - half for i in range(kernel_size)), x).view(1, kernel_size)
    kernel = torch.exp(-0.5 * (t / sigma.view(-1, 1)) ** 2)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(channels, dim=0)  # [N·C, K]
    pad = kernel_size // 2
    y = F.pad(x, (pad, pad, pad, pad), mode="reflect").reshape(1, count * channels, height + 2 * pad, width + 2 * pad)
    y = F.conv2d(y, kernel.view(-1, 1, 1, kernel_size), groups=count * channels)
    y = F.conv2d(y, kernel.view(-1, 1, kernel_size, 1), groups=count * channels)
    return y.view(count, channels, height, width)


_JITTER_OPS = (_brightness, _contrast, _saturation, _hue)  # torchvision's fn_idx numbering


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
    @staticmethod
    def pack_params(params: dict) -> torch.Tensor:
        """Every per-sample number ``apply`` needs as ONE float32 CPU tensor ``[B, 25]`` (one transfer per view):

        columns 0-3 the crop box (x1, y1, x2, y2), 4 flip, 5-20 the jitter factor of op ``k`` at position ``p``
        (column ``5 + 4p + k``; the op's identity — 1, 1, 1, 0 — where that sample does not run ``k`` at ``p``), 21
        grayscale, 22 blur, 23 sigma, 24 solarize. Masks are 0/1.
        """
        top, left, h, w = params["crops"].unbind(1)
        count = top.shape[0]
        identity = torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64)
        chosen = params["jitter"][:, None, None] & (
            params["jitter_order"][:, :, None] == torch.arange(4)[None, None, :])  # [B, position, op]
        jitter = torch.where(chosen, params["jitter_factors"].double()[:, None, :], identity)
        return torch.cat([
            torch.stack([left, top, left + w, top + h], dim=1),
            params["flip"].double()[:, None],
            jitter.reshape(count, 16),
            torch.stack([params["gray"].double(), params["blur"].double(), params["sigma"].double(),
                         params["solarize"].double()], dim=1),
        ], dim=1).float()

    def apply(self, pixels: torch.Tensor, params: dict, view: dict[str, Any]) -> torch.Tensor:
        """One view of float ``pixels`` in [0, 1] ``[B, 3, H, W]`` with the given parameters (normalised).

        Branch-free: every operation runs on the whole batch and a per-sample mask or identity factor decides whom it
        changes, so the launches per view are a fixed few hundred, with no index tensor built per operation (what
        bounds a small model's step on a GPU is the number of launches, not their arithmetic).
        """
        packed = self._to_device(self.pack_params(params), pixels.device)
        mean, std = self._stats(pixels.device)
        return self._view(pixels, packed, view, mean, std)

    @staticmethod
    def _to_device(packed: torch.Tensor, device: torch.device) -> torch.Tensor:
        if device.type == "cuda":
            packed = packed.pin_memory()  # a truly asynchronous copy
        return packed.to(device, non_blocking=True)

    def _view(self, pixels: torch.Tensor, packed: torch.Tensor, view: dict[str, Any], mean: torch.Tensor,
              std: torch.Tensor) -> torch.Tensor:
        """The device part of `apply`: tensors in, tensors out, no host reads (what `compile` compiles)."""
        device = pixels.device
        count = pixels.shape[0]

        def mask(column: int) -> torch.Tensor:
            return (packed[:, column] > 0.5).view(-1, 1, 1, 1)

        boxes = torch.cat([torch.arange(count, device=device, dtype=pixels.dtype)[:, None],
                           packed[:, 0:4].to(pixels.dtype)], dim=1)
        x = roi_align(pixels, boxes, output_size=self.size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)
        x = torch.where(mask(4), x.flip(-1), x)
        if view["jitter_p"] > 0:
            factors = packed[:, 5:21].view(count, 4, 4)
            for position in range(4):
                x = _brightness(x, factors[:, position, 0])
                x = _contrast(x, factors[:, position, 1])
                x = _saturation(x, factors[:, position, 2])
                if view["hue"] == 0:
                    continue
                shift = factors[:, position, 3]
                x = torch.where((shift != 0).view(-1, 1, 1, 1), _hue(x, shift), x)  # exact identity elsewhere
        if view["grayscale_p"] > 0:
            x = torch.where(mask(21), _grayscale(x).expand_as(x), x)
        if view["blur_p"] > 0:
            blurred = _gaussian_blur(x, self.kernel_size, packed[:, 23])
            x = torch.where(mask(22), blurred, x)
        if view["solarize_p"] > 0:
            threshold = view["solarize_threshold"] / 255.0
            x = torch.where(mask(24) & (x >= threshold), 1.0 - x, x)
        return (x - mean) / std

    def _views(self, images: torch.Tensor, packed: torch.Tensor, mean: torch.Tensor,
               std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both views of a uint8 batch from ``packed`` ``[2, B, 25]`` (the device part of ``__call__``)."""
        pixels = images.float().div_(255.0)
        return tuple(self._view(pixels, packed[index], view, mean, std) for index, view in enumerate(self.views))

    def compile(self, **compile_kwargs: Any) -> GPUTwoViewAugment:
        """``torch.compile`` the device part of every call (``compile_kwargs`` go to `torch.compile`); returns self.

        The parameter draws and their single copy stay eager on the host; the few hundred batched operations of the
        two views become one graph (inductor fuses the element-wise chains), which is what bounds a small model's
        step on a GPU once the model itself is compiled. Same parameters, same views (up to float rounding).
        ``mode="reduce-overhead"`` (CUDA graphs) is not advised here: its outputs are overwritten by the next call.
        """
        self._compiled_views = torch.compile(self._views, **compile_kwargs)
        self._compiled_checked = False  # the first call compiles; a failure there falls back to eager (a warning)
        return self

    def _run_views(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        compiled = getattr(self, "_compiled_views", None)
        if compiled is None:
            return self._views(*inputs)
        if self._compiled_checked:
            return compiled(*inputs)
        try:
            views = compiled(*inputs)
        except Exception as err:  # any compiler failure: the augmentation is an optimisation, training goes on
            cause = getattr(err, "inner_exception", None) or err.__cause__ or err  # dynamo wraps the backend's error
            logger.warning("torch.compile of the GPU augmentation failed (%s: %s: %s); it runs eagerly from now on",
                           type(err).__name__, type(cause).__name__, cause)
            del self._compiled_views
            return self._views(*inputs)
        self._compiled_checked = True
        return views

    def _stats(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``mean``/``std`` on ``device``, copied there once."""
        if self.mean.device != device:
            self.mean, self.std = self.mean.to(device), self.std.to(device)
        return self.mean, self.std

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
        # every number of both views, drawn in a fixed order, then ONE copy to the device
        packed = torch.stack([self.pack_params(self.sample_params(sizes, view, generator)) for view in self.views])
        packed = self._to_device(packed, images.device)
        mean, std = self._stats(images.device)
        view1, view2 = self._run_views(images, packed, mean, std)
        return view1, view2
