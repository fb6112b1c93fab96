"""The procedural demo dataset: styles, counts, splits, determinism, cache."""

import datasets
import numpy as np
import pytest
from PIL import Image

import artstyle.data.demo as demo
from artstyle.data import DEMO_STYLES, load_style_dataset, render_demo_image

from datafixtures import *  # noqa: F403 (pytest fixtures shared by the data tests)


def _bytes(split):
    return [row["bytes"] for row in split.cast_column("image", datasets.Image(decode=False))["image"]]


def test_demo_counts_labels_and_splits(tmp_path):
    ds = load_style_dataset("demo", num_images=60, image_size=32, cache_dir=tmp_path)
    assert list(ds) == ["train", "validation", "test"]
    assert ds["train"].features["label"].names == DEMO_STYLES and len(DEMO_STYLES) >= 6
    for split, per_class in (("train", 6), ("validation", 2), ("test", 2)):
        counts = [ds[split]["label"].count(c) for c in range(6)]
        assert counts == [per_class] * 6, split  # 10 per style, stratified 70/15/15 (1.5 rounds to 2)
    image = ds["train"][0]["image"]
    assert image.size == (32, 32) and image.mode == "RGB"
    train, test = set(_bytes(ds["train"])), set(_bytes(ds["test"]))
    assert train.isdisjoint(test)


def test_demo_deterministic_and_cached(tmp_path, monkeypatch):
    a = load_style_dataset("demo", num_images=18, image_size=24, seed=5, cache_dir=tmp_path / "a")
    b = load_style_dataset("demo", num_images=18, image_size=24, seed=5, cache_dir=tmp_path / "b")
    assert _bytes(a["train"]) == _bytes(b["train"]) and a["train"]["label"] == b["train"]["label"]
    c = load_style_dataset("demo", num_images=18, image_size=24, seed=6, cache_dir=tmp_path / "a")
    assert _bytes(c["train"]) != _bytes(a["train"])

    def fail(*args, **kwargs):
        raise AssertionError("the cached demo dataset was regenerated")

    monkeypatch.setattr(demo, "render_demo_image", fail)
    again = load_style_dataset("demo", num_images=18, image_size=24, seed=5, cache_dir=tmp_path / "a")
    assert _bytes(again["test"]) == _bytes(a["test"])


def test_demo_class_is_the_style_not_the_content():
    # same (seed, index) -> same content; different styles must give clearly different images
    images = [np.asarray(render_demo_image(s, 0, 3, 48), dtype=np.float32) for s in DEMO_STYLES]
    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            assert np.abs(images[i] - images[j]).mean() > 10, (DEMO_STYLES[i], DEMO_STYLES[j])
    # simple style statistics separate the classes: mosaic has constant blocks, poster few colours
    mosaic = np.asarray(render_demo_image("pixel_mosaic", 0, 1, 64))
    poster = np.asarray(render_demo_image("flat_poster", 0, 1, 64))
    watercolour = np.asarray(render_demo_image("watercolour", 0, 1, 64))
    assert len(np.unique(poster.reshape(-1, 3), axis=0)) <= 6
    assert len(np.unique(watercolour.reshape(-1, 3), axis=0)) > 500
    assert len(np.unique(mosaic.reshape(-1, 3), axis=0)) < 200


def test_demo_bad_options(tmp_path):
    with pytest.raises(ValueError, match="num_images must be >= 18"):
        load_style_dataset("demo", num_images=12, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="image_size"):
        load_style_dataset("demo", image_size=8, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="test_size"):
        load_style_dataset("demo", test_size=1.5, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="data_dir must be None"):
        load_style_dataset("demo", data_dir=tmp_path)
    with pytest.raises(ValueError, match="Unknown demo style"):
        render_demo_image("cubism", 0, 0)


def test_demo_default_build_renders_each_image_once_and_reuses_the_cache(tmp_path, monkeypatch):
    calls = []

    def stub(style, seed, index, image_size=64):  # a cheap image that says which (index, style) it is
        calls.append((style, seed, index, image_size))
        pixels = np.zeros((image_size, image_size, 3), np.uint8)
        pixels[..., 0], pixels[..., 1], pixels[..., 2] = index // 256, index % 256, DEMO_STYLES.index(style)
        return Image.fromarray(pixels)

    monkeypatch.setattr(demo, "render_demo_image", stub)
    ds = load_style_dataset("demo", cache_dir=tmp_path)  # the defaults: 1,200 images at 64 px, seed 0
    assert {k: v.num_rows for k, v in ds.items()} == {"train": 840, "validation": 180, "test": 180}
    assert sorted(index for _, _, index, _ in calls) == list(range(1200))  # every image rendered exactly once
    assert {(seed, size) for _, seed, _, size in calls} == {(0, 64)}
    seen = []
    for split in ds.values():
        for row in split:
            first = np.asarray(row["image"])[0, 0]
            assert first[2] == row["label"]  # the row's label is the style it was rendered in
            seen.append(int(first[0]) * 256 + int(first[1]))
    assert sorted(seen) == list(range(1200))  # splits are disjoint and cover every image
    calls.clear()
    again = load_style_dataset("demo", cache_dir=tmp_path)
    assert calls == [] and again["test"]["label"] == ds["test"]["label"]  # the cache is reused, nothing re-rendered
