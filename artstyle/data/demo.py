"""Built-in demo dataset: procedurally rendered images whose class is the rendering STYLE.

Each image draws random content (a palette, a gradient background, shaded ellipses, rotated
rectangles and bands at random places) and renders it in one of six styles: pointillist dots, flat
poster colours, brush strokes, pixel mosaic, line sketch, watercolour. The content is independent
of the class, so a classifier has to recognise the style. Offline, numpy/PIL only, deterministic
by ``seed`` (image ``i`` depends only on ``(seed, i)``), and cached on disk after the first build.
"""

from __future__ import annotations

import colorsys
import functools
import io
import logging
import time
from dataclasses import dataclass

import datasets
import numpy as np
from PIL import Image, ImageFilter

from .common import default_cache_dir, split_fractions, stratified_split

logger = logging.getLogger(__name__)

DEMO_STYLES = ["pointillist", "flat_poster", "brush_strokes", "pixel_mosaic", "line_sketch", "watercolour"]


# ----------------------------------------------------------------------------------------------
# content
# ----------------------------------------------------------------------------------------------
def _palette(rng: np.random.Generator, k: int) -> np.ndarray:
    base = rng.random()
    scheme = rng.integers(3)  # 0: analogous, 1: complementary, 2: random hues
    colours = []
    for j in range(k):
        if scheme == 0:
            hue = base + rng.uniform(-0.12, 0.12)
        elif scheme == 1:
            hue = base + 0.5 * (j % 2) + rng.uniform(-0.05, 0.05)
        else:
            hue = rng.random()
        colours.append(colorsys.hsv_to_rgb(hue % 1.0, rng.uniform(0.35, 1.0), rng.uniform(0.35, 1.0)))
    return np.asarray(colours, dtype=np.float32)


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    yy.flags.writeable = False
    xx.flags.writeable = False
    return yy, xx


def render_content(rng: np.random.Generator, size: int) -> np.ndarray:
    """Random content: float32 ``[size, size, 3]`` in [0, 1].

    A gradient background between two palette colours, then 3-7 ellipses, rotated rectangles and
    bands, each a palette colour shaded by its own linear ramp. Shapes are painted into a layer-index
    map first and coloured in one vectorised pass.
    """
    yy, xx = _grid(size)
    pal = _palette(rng, int(rng.integers(3, 7)))
    n_shapes = int(rng.integers(3, 8))
    layer = np.zeros((size, size), np.int64)  # 0 = background, k = shape k
    for k in range(1, n_shapes + 1):
        kind = rng.integers(3)
        cy, cx = rng.uniform(0, 1, 2)
        a, b = rng.uniform(0.08, 0.35, 2)
        theta = rng.uniform(0, np.pi)
        c, s = np.float32(np.cos(theta)), np.float32(np.sin(theta))
        v = c * (yy - cy) - s * (xx - cx)
        if kind == 2:  # band across the image
            mask = np.abs(v) < b * 0.4
        else:
            u = c * (xx - cx) + s * (yy - cy)
            mask = (u / a) ** 2 + (v / b) ** 2 < 1 if kind == 0 else (np.abs(u) < a) & (np.abs(v) < b)
        layer[mask] = k
    angles = rng.uniform(0, 2 * np.pi, n_shapes + 1)
    cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    low = np.minimum(cos, 0) + np.minimum(sin, 0)
    ramp = (cos[layer] * xx + sin[layer] * yy - low[layer]) / (np.abs(cos) + np.abs(sin))[layer]
    colours = pal[rng.integers(len(pal), size=n_shapes + 1)]
    c0, c1 = pal[rng.choice(len(pal), 2, replace=False)]
    background = (1 - ramp[..., None]) * c0 + ramp[..., None] * c1
    shaded = np.clip(colours[layer] * (0.75 + 0.5 * ramp)[..., None], 0, 1)
    return np.where((layer > 0)[..., None], shaded, background).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# styles: each maps content [H, W, 3] in [0, 1] to a rendered image in [0, 1]
# ----------------------------------------------------------------------------------------------
def _paper(rng: np.random.Generator, size: int) -> np.ndarray:
    tint = np.array([0.96, 0.93, 0.86], np.float32) + rng.uniform(-0.04, 0.04, 3).astype(np.float32)
    grain = rng.normal(0, 0.015, (size, size, 1)).astype(np.float32)
    return np.clip(tint + grain, 0, 1)


def _low_freq_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    coarse = Image.fromarray((rng.random((cells, cells)) * 255).astype(np.uint8))
    return np.asarray(coarse.resize((size, size), Image.BICUBIC), np.float32) / 255.0


def _pointillist(content, rng):
    size = content.shape[0]
    out = _paper(rng, size)
    cell = max(3, size // 14)
    yy, xx = np.mgrid[0:size, 0:size]
    for offset in (0, cell // 2):
        gy, gx = (yy + offset) // cell, (xx + offset) // cell
        n = size // cell + 2
        radius = cell * rng.uniform(0.38, 0.5)
        jitter = rng.uniform(-0.15, 0.15, (n, n, 2)) * cell
        centre_y = gy * cell - offset + cell / 2 + jitter[gy, gx, 0]
        centre_x = gx * cell - offset + cell / 2 + jitter[gy, gx, 1]
        inside = (yy - centre_y) ** 2 + (xx - centre_x) ** 2 < radius ** 2
        sample_y = np.clip(centre_y.astype(int), 0, size - 1)
        sample_x = np.clip(centre_x.astype(int), 0, size - 1)
        dot_colour = content[sample_y, sample_x] + rng.uniform(-0.12, 0.12, (n, n, 3))[gy, gx]
        dot_colour = 0.5 + 1.3 * (dot_colour - 0.5)  # vivid, as with unmixed pigments
        out = np.where(inside[..., None], dot_colour, out)
    return out


def _flat_poster(content, rng):
    k = int(rng.integers(3, 6))
    img = Image.fromarray((content * 255).astype(np.uint8))
    quantized = img.quantize(colors=k, method=Image.Quantize.MEDIANCUT)  # dominant flat colours
    labels = np.asarray(quantized)
    centres = np.asarray(quantized.getpalette()[: 3 * k], np.float32).reshape(-1, 3) / 255.0
    grey = centres.mean(1, keepdims=True)
    centres = np.clip(grey + 1.6 * (centres - grey), 0, 1)  # saturated poster inks
    out = centres[np.minimum(labels, len(centres) - 1)]
    edge = np.zeros(labels.shape, bool)
    edge[:-1] |= labels[:-1] != labels[1:]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    if content.shape[0] >= 96:  # thicker outlines on larger images
        edge[1:] |= edge[:-1]
        edge[:, 1:] |= edge[:, :-1]
    return np.where(edge[..., None], 0.05, out)


def _brush_strokes(content, rng):
    size = content.shape[0]
    yy, xx = (g * size for g in _grid(size))
    cells = 4
    base = rng.uniform(0, np.pi)
    angles = base + rng.uniform(-0.6, 0.6, (cells, cells))
    angle = angles[(yy * cells / size).astype(int), (xx * cells / size).astype(int)]
    dy, dx = np.sin(angle), np.cos(angle)
    length = max(2.0, size / 12)
    streak = rng.random((size, size)).astype(np.float32)
    acc = np.zeros_like(content)
    acc_streak = np.zeros((size, size), np.float32)
    steps = np.linspace(-length, length, 9)
    for t in steps:
        sy = np.clip((yy + t * dy).astype(int), 0, size - 1)
        sx = np.clip((xx + t * dx).astype(int), 0, size - 1)
        acc += content[sy, sx]
        acc_streak += streak[sy, sx]
    smeared = acc / len(steps)
    acc_streak /= len(steps)
    texture = (acc_streak - acc_streak.mean()) / (acc_streak.std() + 1e-6)
    return smeared * (1.0 + 0.12 * texture[..., None]) + 0.04 * texture[..., None]


def _pixel_mosaic(content, rng):
    size = content.shape[0]
    block = max(2, size // int(rng.choice([6, 8, 10])))
    n = -(-size // block)
    img = Image.fromarray((content * 255).astype(np.uint8))
    small = np.asarray(img.resize((n, n), Image.BOX), np.float32) / 255.0
    small = small + rng.uniform(-0.06, 0.06, (n, n, 1))
    out = small.repeat(block, 0).repeat(block, 1)[:size, :size]
    yy, xx = np.mgrid[0:size, 0:size]
    grout = (yy % block == 0) | (xx % block == 0)
    return np.where(grout[..., None], out * 0.55, out)


def _line_sketch(content, rng):
    size = content.shape[0]
    lum = content @ np.array([0.299, 0.587, 0.114], np.float32)
    gy = np.zeros_like(lum)
    gx = np.zeros_like(lum)
    gy[1:-1] = lum[2:] - lum[:-2]
    gx[:, 1:-1] = lum[:, 2:] - lum[:, :-2]
    edges = np.clip(np.hypot(gx, gy) * 4.0, 0, 1)
    yy, xx = np.mgrid[0:size, 0:size]
    period = int(rng.integers(3, 6))
    direction = rng.choice([-1, 1])
    hatch = ((xx + direction * yy) % period == 0) & (lum < rng.uniform(0.4, 0.6))
    cross = ((xx - direction * yy) % period == 0) & (lum < 0.3)
    ink = np.clip(edges + 0.6 * hatch + 0.5 * cross + rng.normal(0, 0.03, lum.shape), 0, 1)
    ink_colour = np.array([0.1, 0.1, 0.12], np.float32) + rng.uniform(0, 0.15, 3).astype(np.float32)
    paper = _paper(rng, size)
    return paper * (1 - ink[..., None]) + ink_colour * ink[..., None]


def _watercolour(content, rng):
    size = content.shape[0]
    img = Image.fromarray((content * 255).astype(np.uint8))
    soft = np.asarray(img.filter(ImageFilter.GaussianBlur(radius=size / 28)), np.float32) / 255.0
    softer = np.asarray(img.filter(ImageFilter.GaussianBlur(radius=size / 12)), np.float32) / 255.0
    pooling = np.clip(softer - soft, -0.2, 0.2).mean(-1, keepdims=True)  # pigment gathers at edges
    granulation = _low_freq_noise(rng, size, max(4, size // 6))[..., None] - 0.5
    wash = 0.55 + rng.uniform(-0.1, 0.1)
    paper = _paper(rng, size)
    out = paper * (1 - wash) + soft * wash
    return out - 0.6 * pooling + 0.08 * granulation


_RENDERERS = {
    "pointillist": _pointillist,
    "flat_poster": _flat_poster,
    "brush_strokes": _brush_strokes,
    "pixel_mosaic": _pixel_mosaic,
    "line_sketch": _line_sketch,
    "watercolour": _watercolour,
}


def render_demo_image(style: str, seed: int, index: int, image_size: int = 64) -> Image.Image:
    """Render image ``index`` of the demo set with ``seed`` in ``style`` (one of `DEMO_STYLES`)."""
    if style not in _RENDERERS:
        raise ValueError(f"Unknown demo style {style!r}; choose from {DEMO_STYLES}")
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    rng = np.random.default_rng([seed, index])
    rendered = _RENDERERS[style](render_content(rng, image_size), rng)
    return Image.fromarray((np.clip(rendered, 0, 1) * 255 + 0.5).astype(np.uint8), mode="RGB")


def demo_labels(num_images: int, num_styles: int = len(DEMO_STYLES)) -> list[int]:
    """Balanced style labels of the demo images (image ``i`` has style ``i % num_styles``)."""
    return [i % num_styles for i in range(num_images)]


# ----------------------------------------------------------------------------------------------
# builder
# ----------------------------------------------------------------------------------------------
@dataclass
class DemoStyleConfig(datasets.BuilderConfig):
    """Options of the demo dataset.

    Attributes:
        num_images: total number of images (balanced over the styles).
        image_size: side of the square images in pixels (>= 16).
        seed: seed of the content, the rendering and the split.
        validation_size / test_size: stratified split fractions (train gets the rest).
    """

    num_images: int = 1200
    image_size: int = 64
    seed: int = 0
    validation_size: float = 0.15
    test_size: float = 0.15


class DemoStyle(datasets.GeneratorBasedBuilder):
    """Procedurally generated style dataset (6 rendering styles), offline and deterministic."""

    BUILDER_CONFIG_CLASS = DemoStyleConfig
    VERSION = datasets.Version("1.0.0")

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("cache_dir", default_cache_dir())
        kwargs.setdefault("dataset_name", "artstyle_demo")
        super().__init__(*args, **kwargs)
        cfg = self.config
        fractions = split_fractions(cfg.test_size, cfg.validation_size)
        minimum = len(DEMO_STYLES) * len(fractions)
        if cfg.num_images < minimum:
            raise ValueError(
                f"num_images must be >= {minimum} (one image per style and split), got {cfg.num_images}"
            )
        if cfg.image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {cfg.image_size}")

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(
            description=self.__doc__,
            features=datasets.Features(
                {"image": datasets.Image(), "label": datasets.ClassLabel(names=DEMO_STYLES)}
            ),
        )

    def _split_generators(self, dl_manager):
        cfg = self.config
        labels = demo_labels(cfg.num_images)
        parts = stratified_split(labels, split_fractions(cfg.test_size, cfg.validation_size), seed=cfg.seed)
        return [
            datasets.SplitGenerator(name=name, gen_kwargs={"indices": idx, "labels": labels})
            for name, idx in parts.items()
        ]

    def _generate_examples(self, indices: list[int], labels: list[int]):
        cfg = self.config
        start = time.perf_counter()
        for i in indices:
            image = render_demo_image(DEMO_STYLES[labels[i]], cfg.seed, i, cfg.image_size)
            buffer = io.BytesIO()
            image.save(buffer, format="PNG", compress_level=1)
            yield i, {"image": {"bytes": buffer.getvalue(), "path": None}, "label": labels[i]}
        logger.info("Rendered %d demo images in %.1f s", len(indices), time.perf_counter() - start)
