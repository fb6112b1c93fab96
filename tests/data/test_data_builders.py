"""Builders over tiny fake trees mimicking each official layout."""

import logging

import datasets
import pytest

from artstyle.data import AVAStyle, build_dataset, load_style_dataset, single_label_view, stratified_split

from datafixtures import *  # noqa: F403 (pytest fixtures shared by the data tests)

AVA_STYLES_FIRST = ["Complementary_Colors", "Duotones", "HDR"]


def _paths(split):
    return [row["path"] for row in split.cast_column("image", datasets.Image(decode=False))["image"]]


def test_ava_official_layout(ava_tree, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        ds = load_style_dataset("ava", data_dir=ava_tree["root"], cache_dir=tmp_path / "cache")
    assert list(ds) == ["train", "test"]
    names = ds["train"].features["label"].names
    assert len(names) == 14 and names[:3] == AVA_STYLES_FIRST and names[-1] == "Vanishing_Point"
    assert ds["train"].num_rows == 27  # 28 listed, one missing on disk
    assert ds["train"]["label"] == ava_tree["train_labels"]
    assert "labels" not in ds["train"].column_names
    assert "1 listed image(s) not found" in caplog.text and "100027" in caplog.text
    assert ds.num_missing_images == 1
    test = ds["test"]
    assert test.num_rows == 6  # the all-zero row is kept: a negative of every style in the mean AP
    assert test["labels"] == ava_tree["multilab"]
    assert test["label"] == [0, 1, 12, 3, 5, -1]  # first positive style, -1 where there is none
    assert ds.num_unlabeled_test_images == 1
    assert _paths(test)[1].endswith("200001.jpg")
    with caplog.at_level(logging.WARNING):
        view = single_label_view(test)
    assert view["label"] == [0, 1, 12, 3, 5] and "dropped 1 of 6 rows" in caplog.text
    assert ds["train"][0]["image"].size == (24, 24)


def test_ava_validation_carved_and_builder_class(ava_tree, tmp_path):
    builder = AVAStyle(data_dir=ava_tree["root"], cache_dir=tmp_path / "c", validation_size=0.5, seed=3)
    ds = build_dataset(builder)
    assert list(ds) == ["train", "validation", "test"]
    assert ds["train"].num_rows + ds["validation"].num_rows == 27
    # builder keeps one-hot `labels` outside the official test split
    row = ds["validation"][0]
    assert sum(row["labels"]) == 1 and row["labels"][row["label"]] == 1


def test_ava_class_folder_layout(tmp_path, make_image):
    root = tmp_path / "ava_folders"
    for split, n in (("train", 3), ("valid", 1), ("test", 2)):
        for style in AVA_STYLES_FIRST:
            for k in range(n):
                make_image(root / split / style / f"{split}_{k}.jpg", seed=k)
    ds = load_style_dataset("ava", data_dir=root, cache_dir=tmp_path / "cache")
    assert {k: v.num_rows for k, v in ds.items()} == {"train": 9, "validation": 3, "test": 6}
    assert ds["train"].features["label"].names == sorted(AVA_STYLES_FIRST)
    assert ds["test"]["labels"][0] == [1, 0, 0]


def test_ava_bad_layouts(tmp_path, ava_tree):
    with pytest.raises(FileNotFoundError, match="style_image_lists/styles.txt"):
        load_style_dataset("ava", data_dir=tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="data_dir is required"):
        load_style_dataset("ava")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="Expected layout"):
        load_style_dataset("ava", data_dir=tmp_path / "empty", cache_dir=tmp_path / "c")
    lab = ava_tree["root"] / "style_image_lists" / "train.lab"
    lab.write_text(lab.read_text().replace("14\n", "15\n", 1))
    with pytest.raises(ValueError, match="train.lab line 14"):
        load_style_dataset("ava", data_dir=ava_tree["root"], cache_dir=tmp_path / "c")
    (ava_tree["root"] / "style_image_lists" / "test.multilab").unlink()
    with pytest.raises(FileNotFoundError, match="test.multilab"):
        load_style_dataset("ava", data_dir=ava_tree["root"], cache_dir=tmp_path / "c")


def test_pandora_stratified_deterministic_split(pandora_tree, tmp_path, caplog):
    root = pandora_tree["root"]
    with caplog.at_level(logging.WARNING):
        ds = load_style_dataset("pandora18k", data_dir=root, cache_dir=tmp_path / "c1")
    assert "found 3 classes (expected 18)" in caplog.text
    assert list(ds) == ["train", "test"]
    assert ds["train"].features["label"].names == pandora_tree["movements"]
    for split, n in (("train", 8), ("test", 2)):
        counts = [ds[split]["label"].count(c) for c in range(3)]
        assert counts == [n, n, n], split  # stratified 80/20 per movement
    again = load_style_dataset("pandora18k", data_dir=root, cache_dir=tmp_path / "c2")
    assert _paths(again["test"]) == _paths(ds["test"])  # deterministic across fresh builds
    other = load_style_dataset("pandora18k", data_dir=root, cache_dir=tmp_path / "c1", seed=1)
    assert _paths(other["test"]) != _paths(ds["test"])
    assert set(_paths(ds["train"])).isdisjoint(_paths(ds["test"]))
    assert all("/artist_" in p for p in _paths(ds["train"]))  # found recursively
    with_val = load_style_dataset("pandora18k", data_dir=root, cache_dir=tmp_path / "c1", validation_size=0.1)
    assert {k: v.num_rows for k, v in with_val.items()} == {"train": 21, "validation": 3, "test": 6}
    assert _paths(with_val["test"]) == _paths(ds["test"])  # validation is carved from train only


def test_pandora_presplit_and_errors(tmp_path, make_image):
    root = tmp_path / "presplit"
    for split, n in (("train", 4), ("test", 2)):
        for movement in ("Baroque", "Rococo"):
            for k in range(n):
                make_image(root / split / movement / "someone" / f"{k}.png", seed=k)
    ds = load_style_dataset("pandora18k", data_dir=root, cache_dir=tmp_path / "c")
    assert {k: v.num_rows for k, v in ds.items()} == {"train": 8, "test": 4}
    (tmp_path / "flat").mkdir()
    make_image(tmp_path / "flat" / "loose.jpg", seed=0)
    with pytest.raises(ValueError, match="one folder per art movement"):
        load_style_dataset("pandora18k", data_dir=tmp_path / "flat", cache_dir=tmp_path / "c")


def test_flickr_csv_splits_and_missing(flickr_tree, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        ds = load_style_dataset("flickr", data_dir=flickr_tree["root"], cache_dir=tmp_path / "c")
    assert "2 of 60 images" in caplog.text and "58 available" in caplog.text
    assert ds.num_missing_images == 2
    names = ds["train"].features["label"].names
    assert len(names) == 20 and names[0] == "Detailed" and names[-1] == "Romantic"
    assert ds["test"].num_rows == 19 and ds["train"].num_rows == 39  # row 30 is a test row
    assert sorted(set(ds["test"]["label"])) == [c for c in range(20) if c != 10]
    files = {p.rsplit("/", 1)[1] for p in _paths(ds["train"]) + _paths(ds["test"])}
    assert not files & {u.rsplit("/", 1)[1] for u in flickr_tree["missing"]}


def test_flickr_without_split_column_uses_60_20_20(flickr_tree, tmp_path):
    import gzip
    root = flickr_tree["root"]
    lines = gzip.decompress((root / "flickr_style.csv.gz").read_bytes()).decode().splitlines()
    (root / "flickr_style.csv.gz").unlink()
    (root / "flickr_style.csv").write_text("\n".join(",".join(line.split(",")[1:3]) for line in lines) + "\n")
    (root / "images" / "1_abc.jpg").write_bytes(b"")  # present on disk, undecodable: stored, not fatal
    ds = load_style_dataset("flickr", data_dir=root, cache_dir=tmp_path / "c")
    assert list(ds) == ["train", "validation", "test"]
    sizes = {k: v.num_rows for k, v in ds.items()}
    # per class of 3 images: 1 validation + 1 test; the class with 2 images (one missing) keeps both in train
    assert sizes == {"train": 21, "validation": 19, "test": 19}
    assert sorted(ds["test"]["label"]) == [c for c in range(20) if c != 10]


def test_flickr_style_names_file(flickr_tree, tmp_path):
    names = [f"style{k:02d}" for k in range(20)]
    (flickr_tree["root"] / "style_names.txt").write_text("\n".join(names) + "\n")
    ds = load_style_dataset("flickr", data_dir=flickr_tree["root"], cache_dir=tmp_path / "c")
    assert ds["train"].features["label"].names == names


def test_flickr_errors(tmp_path, flickr_tree):
    with pytest.raises(FileNotFoundError, match="image_url, label"):
        load_style_dataset("flickr", data_dir=tmp_path / "missing")
    (tmp_path / "no_csv").mkdir()
    with pytest.raises(FileNotFoundError, match="CSV not found"):
        load_style_dataset("flickr", data_dir=tmp_path / "no_csv", cache_dir=tmp_path / "c")


def test_imagefolder_and_local_path(pandora_tree, tmp_path):
    ds = load_style_dataset("imagefolder", data_dir=pandora_tree["root"], cache_dir=tmp_path / "c", test_size=0.3)
    assert [ds[s]["label"].count(0) for s in ("train", "test")] == [7, 3]
    by_path = load_style_dataset(str(pandora_tree["root"]), cache_dir=tmp_path / "c", test_size=0.3)
    assert _paths(by_path["test"]) == _paths(ds["test"])


def test_stratified_split_reference():
    labels = [0] * 10 + [1] * 5 + [2] * 2
    parts = stratified_split(labels, {"train": 0.6, "validation": 0.2, "test": 0.2}, seed=0)
    assert sorted(parts["train"] + parts["validation"] + parts["test"]) == list(range(17))
    per_class = {s: [sum(labels[i] == c for i in idx) for c in range(3)] for s, idx in parts.items()}
    # a class with fewer items than splits stays in train
    assert per_class == {"train": [6, 3, 2], "validation": [2, 1, 0], "test": [2, 1, 0]}
    assert parts == stratified_split(labels, {"train": 0.6, "validation": 0.2, "test": 0.2}, seed=0)
    with pytest.raises(ValueError, match="sum to 1"):
        stratified_split(labels, {"train": 0.6, "test": 0.2})


def test_generic_local_data_files_renamed_and_encoded(tmp_path):
    import io

    import numpy as np
    from PIL import Image

    images = []
    for i in range(20):
        buffer = io.BytesIO()
        Image.fromarray(np.full((8, 8, 3), i * 10, np.uint8)).save(buffer, format="PNG")
        images.append({"bytes": buffer.getvalue(), "path": None})
    features = datasets.Features({"img": datasets.Image(), "style": datasets.Value("string")})
    table = datasets.Dataset.from_dict({"img": images, "style": ["ukiyo-e", "baroque"] * 10}, features=features)
    (tmp_path / "hubcopy" / "data").mkdir(parents=True)
    table.to_parquet(str(tmp_path / "hubcopy" / "data" / "train-00000.parquet"))
    ds = load_style_dataset(str(tmp_path / "hubcopy"), image_column="img", label_column="style",
                            cache_dir=tmp_path / "cache", test_size=0.25)
    assert list(ds) == ["train", "test"]
    assert ds["train"].column_names == ["image", "label"]
    assert ds["train"].features["label"].names == ["baroque", "ukiyo-e"]
    assert [ds[s]["label"].count(0) for s in ("train", "test")] == [8, 2]  # stratified
    assert ds["test"][0]["image"].size == (8, 8)
    with pytest.raises(ValueError, match="label_column='genre'"):
        load_style_dataset(str(tmp_path / "hubcopy"), image_column="img", label_column="genre",
                           cache_dir=tmp_path / "cache")


def test_unknown_dataset_offline_is_file_not_found(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    with pytest.raises(FileNotFoundError, match="neither a built-in dataset"):
        load_style_dataset("nobody/no-such-style-dataset", cache_dir=tmp_path)
