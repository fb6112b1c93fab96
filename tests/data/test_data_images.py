"""Robust decoding: every awkward file is converted to RGB or skipped with a counted warning."""

import logging

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from artstyle.data import BadImageError, SkipCounter, StyleImageDataset, collate_skip_bad, open_image_rgb
from artstyle.transforms import build_ssl_transform

from datafixtures import *  # noqa: F403 (pytest fixtures shared by the data tests)

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def test_open_image_rgb_converts_or_raises(bad_image_corpus):
    paths, expected_ok = bad_image_corpus
    for path, ok in zip(paths, expected_ok):
        if ok:
            img = open_image_rgb(path)
            assert img.mode == "RGB", path.name
        else:
            with pytest.raises(BadImageError, match=path.name):
                open_image_rgb(path)


def test_conversions_keep_content(bad_image_corpus):
    paths, _ = bad_image_corpus
    by_name = {p.name: p for p in paths}
    # EXIF orientation 6: stored 30x40, displayed rotated -> 40x30
    assert open_image_rgb(by_name["exif_rotated.jpg"]).size == (40, 30)
    assert open_image_rgb(by_name["one_pixel.png"]).getpixel((0, 0)) == (200, 10, 10)
    # 16-bit values are scaled to 8 bits, not clipped to white
    raw16 = np.asarray(Image.open(by_name["gray16.png"]), dtype=np.float64)
    got = np.asarray(open_image_rgb(by_name["gray16.png"]))[..., 0].astype(np.float64)
    assert np.abs(got - raw16 / 257.0).max() <= 1.0
    # half-transparent RGBA is composited on white: brighter than the colour, never black
    rgba = np.asarray(Image.open(by_name["rgba.png"]))
    got = np.asarray(open_image_rgb(by_name["rgba.png"])).astype(int)
    expected = (rgba[..., :3].astype(int) * 128 + 255 * 127) / 255
    assert np.abs(got - expected).max() <= 2
    # grayscale -> 3 equal channels
    gray = np.asarray(open_image_rgb(by_name["gray.jpg"]))
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()


def test_max_pixels_parameter_and_sources(bad_image_corpus):
    paths, _ = bad_image_corpus
    good = paths[0]  # 30x40 = 1200 pixels
    with pytest.raises(BadImageError, match="exceeds the limit of 1000 pixels"):
        open_image_rgb(good, max_pixels=1000)
    assert open_image_rgb(good, max_pixels=1200).size == (30, 40)
    data = good.read_bytes()
    assert open_image_rgb(data).size == (30, 40)
    assert open_image_rgb({"bytes": data, "path": "x.jpg"}).size == (30, 40)
    assert open_image_rgb({"bytes": None, "path": str(good)}).size == (30, 40)
    with pytest.raises(BadImageError, match="missing.jpg"):
        open_image_rgb(good.parent / "missing.jpg")


def _corpus_dataset(paths, labels=None):
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    labels = labels if labels is not None else [i % 2 for i in range(len(paths))]
    return datasets.Dataset.from_dict({"image": [str(p) for p in paths], "label": labels}, features=features)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_dataloader_skips_exactly_the_bad_files(bad_image_corpus, num_workers, caplog):
    paths, expected_ok = bad_image_corpus
    labels = list(range(len(paths)))  # label = file index, to identify what was kept
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    hf = datasets.Dataset.from_dict({"image": [str(p) for p in paths], "label": labels}, features=features)
    transform = build_ssl_transform("moco_v3", image_size=32, mean=MEAN, std=STD)
    dataset = StyleImageDataset(hf, transform)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=5, num_workers=num_workers, collate_fn=collate_skip_bad
    )
    counter = SkipCounter("test pass")
    kept = []
    with caplog.at_level(logging.WARNING, logger="artstyle.data.images"):
        for batch in loader:
            counter.update(batch, batch_size=5)
            if batch is None:
                continue
            assert batch["pixel_values"].shape[1:] == (3, 32, 32)
            assert batch["pixel_values_2"].shape == batch["pixel_values"].shape
            assert batch["pixel_values"].dtype == torch.float32
            assert torch.isfinite(batch["pixel_values"]).all()
            kept.extend(batch["labels"].tolist())
        message = counter.report()
    assert kept == [i for i, ok in enumerate(expected_ok) if ok]
    assert counter.num_skipped == expected_ok.count(False) == 4
    assert counter.num_kept == expected_ok.count(True)
    assert message == f"test pass: skipped 4 undecodable image(s) of {len(paths)}"
    if num_workers == 0:  # worker-process log records do not reach caplog
        for path, ok in zip(paths, expected_ok):
            if not ok:
                assert any(path.name in r.getMessage() for r in caplog.records), path.name


def test_collate_all_bad_and_multi_hot():
    assert collate_skip_bad([None, None]) is None
    counter = SkipCounter()
    assert counter.update(None, batch_size=2) is None
    assert counter.num_skipped == 2
    items = [
        {"pixel_values": torch.zeros(3, 4, 4), "labels": torch.tensor([1.0, 0.0, 1.0])},
        None,
        {"pixel_values": torch.ones(3, 4, 4), "labels": torch.tensor([0.0, 1.0, 0.0])},
    ]
    batch = collate_skip_bad(items)
    assert batch["num_skipped"] == 1
    assert batch["pixel_values"].shape == (2, 3, 4, 4)
    assert batch["labels"].dtype == torch.float32
    assert batch["labels"].tolist() == [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]
    single = collate_skip_bad([{"pixel_values": torch.zeros(3, 2, 2), "labels": 3}])
    assert single["labels"].dtype == torch.long and single["labels"].tolist() == [3]
    assert single["num_skipped"] == 0


def test_style_image_dataset_single_view_multi_hot_and_errors(bad_image_corpus):
    paths, _ = bad_image_corpus
    features = datasets.Features(
        {"image": datasets.Image(), "labels": datasets.Sequence(datasets.Value("int8"), length=3)}
    )
    hf = datasets.Dataset.from_dict({"image": [str(paths[0])], "labels": [[0, 1, 1]]}, features=features)
    item = StyleImageDataset(hf, transform=None, label_column="labels")[0]
    assert item["pixel_values"].shape == (3, 40, 30) and item["pixel_values"].dtype == torch.float32
    assert item["labels"].tolist() == [0.0, 1.0, 1.0]
    no_label = StyleImageDataset(hf, transform=None, label_column="label")[0]
    assert set(no_label) == {"pixel_values"}
    with pytest.raises(ValueError, match="image_column='img'"):
        StyleImageDataset(hf, transform=None, image_column="img")


def test_lower_pixel_limit_skips_large_images(bad_image_corpus):
    paths, _ = bad_image_corpus
    hf = _corpus_dataset([paths[0], paths[-3]])  # 30x40 JPEG and the 1x1 PNG
    dataset = StyleImageDataset(hf, transform=None, max_pixels=100)
    assert dataset[0] is None
    assert dataset[1]["pixel_values"].shape == (3, 1, 1)
