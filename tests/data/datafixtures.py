"""Fixtures of the data tests (tiny fake dataset trees in tmp_path mimicking the official layouts).

Imported by the test modules with `from datafixtures import *`: a conftest.py here would shadow the
`from conftest import ...` of the top-level tests (same module name "conftest")."""

from __future__ import annotations

import csv
import gzip
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

__all__ = ["ava_tree", "bad_image_corpus", "flickr_tree", "make_image", "pandora_tree"]


def write_image(path: Path, seed: int, size: int = 24, fmt: str | None = None) -> Path:
    """A small random RGB image (JPEG/PNG from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format=fmt)
    return path


AVA_STYLES = [
    "Complementary_Colors", "Duotones", "HDR", "Image_Grain", "Light_On_White", "Long_Exposure",
    "Macro", "Motion_Blur", "Negative_Image", "Rule_of_Thirds", "Shallow_DOF", "Silhouettes",
    "Soft_Focus", "Vanishing_Point",
]


@pytest.fixture
def ava_tree(tmp_path):
    """Official AVA layout: 28 train images (2 per style, 1 listed but missing) and 6 test images (1 all-zero)."""
    root = tmp_path / "AVA"
    lists = root / "style_image_lists"
    lists.mkdir(parents=True)
    (lists / "styles.txt").write_text("".join(f"{i} {n}\n" for i, n in enumerate(AVA_STYLES, 1)))
    train_ids, train_labels = [], []
    for k in range(28):
        image_id = str(100000 + k)
        train_ids.append(image_id)
        train_labels.append(str(k % 14 + 1))
        if k != 27:  # the last listed train image is missing on disk
            write_image(root / "images" / f"{image_id}.jpg", seed=k)
    test_ids = [str(200000 + k) for k in range(6)]
    multilab = [
        [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1],
        [0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 1, 0, 1, 0, 1, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],  # no positive style (236 such rows in the real list)
    ]
    for k, image_id in enumerate(test_ids):
        write_image(root / "images" / f"{image_id}.jpg", seed=100 + k)
    (lists / "train.jpgl").write_text("\n".join(train_ids) + "\n")
    (lists / "train.lab").write_text("\n".join(train_labels) + "\n")
    (lists / "test.jpgl").write_text("\n".join(test_ids) + "\n")
    (lists / "test.multilab").write_text("\n".join(" ".join(map(str, row)) for row in multilab) + "\n")
    return {"root": root, "multilab": multilab, "train_labels": [int(x) - 1 for x in train_labels[:27]]}


@pytest.fixture
def pandora_tree(tmp_path):
    """Pandora18k layout: 3 movements x 2 artists, 10 images per movement (nested artist folders)."""
    root = tmp_path / "pandora"
    movements = ["Baroque", "Cubism", "Impressionism"]
    seed = 0
    for movement in movements:
        for k in range(10):
            artist = f"artist_{k % 2}"
            write_image(root / movement / artist / f"{movement.lower()}_{k}.jpg", seed=seed)
            seed += 1
    return {"root": root, "movements": movements}


FLICKR_NAMES = [
    "Detailed", "Pastel", "Melancholy", "Noir", "HDR", "Vintage", "Long Exposure", "Horror", "Sunny",
    "Bright", "Hazy", "Bokeh", "Serene", "Texture", "Ethereal", "Macro", "Depth of Field",
    "Geometric Composition", "Minimal", "Romantic",
]


def _flickr_rows(n_per_class: int = 3):
    rows = []
    for label in range(20):
        for k in range(n_per_class):
            idx = label * n_per_class + k
            split = "test" if k == 0 else "train"
            rows.append({"image_url": f"http://farm1.staticflickr.com/1/{idx}_abc.jpg", "label": str(label),
                         "_split": split})
    return rows


@pytest.fixture
def flickr_tree(tmp_path):
    """Flickr Style layout: gzipped CSV (index, image_url, label, _split) + images/, 2 images missing."""
    root = tmp_path / "flickr"
    rows = _flickr_rows()
    missing = {rows[1]["image_url"], rows[30]["image_url"]}
    for k, row in enumerate(rows):
        if row["image_url"] not in missing:
            write_image(root / "images" / row["image_url"].rsplit("/", 1)[1], seed=k, size=16)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["", "image_url", "label", "_split"])
    writer.writeheader()
    for k, row in enumerate(rows):
        writer.writerow({"": k, **row})
    (root / "flickr_style.csv.gz").write_bytes(gzip.compress(buffer.getvalue().encode()))
    return {"root": root, "rows": rows, "missing": missing}


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_bomb_png(path: Path, width: int = 30000, height: int = 30000) -> Path:
    """A PNG whose header claims width x height pixels (9e8 > PIL's limit) but is tiny on disk."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grayscale
    rows = zlib.compress(b"\x00" * (width // 8 + 1) * 16)  # a few rows only: never decoded
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", rows)
                     + _png_chunk(b"IEND", b""))
    return path


@pytest.fixture
def bad_image_corpus(tmp_path):
    """Every awkward image kind: returns (paths, expected_ok) with expected_ok[i] = decodable."""
    root = tmp_path / "corpus"
    root.mkdir()
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    entries: list[tuple[Path, bool]] = []

    good = root / "good.jpg"
    Image.fromarray(rgb).save(good, quality=90)
    entries.append((good, True))

    truncated = root / "truncated.jpg"
    data = good.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    entries.append((truncated, False))

    empty = root / "empty.jpg"
    empty.write_bytes(b"")
    entries.append((empty, False))

    text = root / "text.jpg"
    text.write_text("this is not an image\n")
    entries.append((text, False))

    cmyk = root / "cmyk.jpg"
    Image.fromarray(rgb).convert("CMYK").save(cmyk)
    entries.append((cmyk, True))

    png16 = root / "gray16.png"
    Image.fromarray((rng.integers(0, 65536, (20, 20))).astype(np.uint16)).save(png16)
    entries.append((png16, True))

    rgba = root / "rgba.png"
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)]), mode="RGBA").save(rgba)
    entries.append((rgba, True))

    palette = root / "palette.png"
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(palette)
    entries.append((palette, True))

    gif = root / "anim.gif"
    frames = [Image.fromarray(rgb).convert("P"), Image.fromarray(255 - rgb).convert("P")]
    frames[0].save(gif, save_all=True, append_images=frames[1:], transparency=0)
    entries.append((gif, True))

    gray = root / "gray.jpg"
    Image.fromarray(rgb[..., 0]).save(gray)
    entries.append((gray, True))

    tiny = root / "one_pixel.png"
    Image.new("RGB", (1, 1), (200, 10, 10)).save(tiny)
    entries.append((tiny, True))

    entries.append((write_bomb_png(root / "bomb.png"), False))

    exif = root / "exif_rotated.jpg"
    img = Image.fromarray(rgb)  # 30 wide x 40 high; orientation 6 = rotate 90 CW on display
    exif_data = img.getexif()
    exif_data[0x0112] = 6
    img.save(exif, exif=exif_data.tobytes())
    entries.append((exif, True))

    return [p for p, _ in entries], [ok for _, ok in entries]


@pytest.fixture
def make_image():
    """``make_image(path, seed, size=24)`` writes a small random image (format from the suffix)."""
    return write_image
