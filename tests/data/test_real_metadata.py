"""The AVA style and Flickr Style builders on the REAL published metadata files (read from the shared data
folder next to the repository, copied into tmp_path) with generated tiny images for a seeded sample of ids.

Set ARTSTYLE_REAL_METADATA to use another copy of the folder (see its SOURCES.md)."""

from __future__ import annotations

import csv
import gzip
import io
import logging
import os
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import average_precision_score

from artstyle.data import AVA_STYLE_NAMES, FLICKR_STYLE_NAMES, load_style_dataset, single_label_view


def _real_metadata_dir() -> Path:
    """``$ARTSTYLE_REAL_METADATA``, else ``shared/data/real-metadata`` next to the repository (or next to the
    folder holding it, for a git worktree one level down)."""
    if os.environ.get("ARTSTYLE_REAL_METADATA"):
        return Path(os.environ["ARTSTYLE_REAL_METADATA"])
    repo = Path(__file__).resolve().parents[2]
    candidates = [up / "shared" / "data" / "real-metadata" for up in (repo / "..", repo / ".." / "..")]
    return next((c for c in candidates if c.is_dir()), candidates[0])


REAL = _real_metadata_dir()
AVA_LISTS = REAL / "ava" / "style_image_lists"
FLICKR_CSV = REAL / "flickr" / "flickr_style.csv.gz"
FLICKR_NAMES = REAL / "flickr" / "style_names.txt"

pytestmark = pytest.mark.skipif(
    not (AVA_LISTS.is_dir() and FLICKR_CSV.is_file()),
    reason=f"real metadata folder absent ({REAL}); it holds the published AVA / Flickr Style lists (SOURCES.md)",
)

NUM_TRAIN_SAMPLE = 300
NUM_FLICKR_SAMPLE = 400


def _jpeg_bytes(seed: int = 0, size: int = 8) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(arr).save(buffer, format="JPEG")
    return buffer.getvalue()


def _lines(path: Path) -> list[str]:
    return path.read_text().split("\n")[:-1]  # the files end with "\n", no blank lines


def _paths(split: datasets.Dataset) -> list[str]:
    return [row["path"] for row in split.cast_column("image", datasets.Image(decode=False))["image"]]


def _raw_flickr_rows() -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(gzip.decompress(FLICKR_CSV.read_bytes()).decode("utf-8"))))


# ------------------------------------------------------------------------------------------------
# AVA style
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ava_real(tmp_path_factory):
    """The real style_image_lists + images for every test id and a seeded sample of train ids."""
    root = tmp_path_factory.mktemp("ava_real") / "AVA"
    shutil.copytree(AVA_LISTS, root / "style_image_lists")
    train_ids = _lines(AVA_LISTS / "train.jpgl")
    test_ids = _lines(AVA_LISTS / "test.jpgl")
    sample = sorted(np.random.default_rng(0).choice(len(train_ids), NUM_TRAIN_SAMPLE, replace=False).tolist())
    sampled_ids = [train_ids[i] for i in sample]
    if "615485" not in sampled_ids:  # the first listed train id, checked by name below
        sampled_ids[0] = "615485"
    images = root / "images"
    images.mkdir()
    payload = _jpeg_bytes()
    for image_id in sampled_ids + test_ids:
        (images / f"{image_id}.jpg").write_bytes(payload)
    logger = logging.getLogger("artstyle.data.ava")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        ds = load_style_dataset("ava", data_dir=root, cache_dir=root.parent / "cache")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return {"ds": ds, "sampled": set(sampled_ids), "train_ids": train_ids, "test_ids": test_ids,
            "log": "\n".join(r.getMessage() for r in records)}


def test_ava_real_files_are_what_the_builder_expects():
    styles = _lines(AVA_LISTS / "styles.txt")
    assert len(styles) == 14 and styles[0] == "1 Complementary_Colors" and styles[-1] == "14 Vanishing_Point"
    assert len(_lines(AVA_LISTS / "train.jpgl")) == len(_lines(AVA_LISTS / "train.lab")) == 11270
    rows = _lines(AVA_LISTS / "test.multilab")
    assert len(_lines(AVA_LISTS / "test.jpgl")) == len(rows) == 2809
    assert sum(set(r.split()) == {"0"} for r in rows) == 236


def test_ava_real_class_names_and_order(ava_real):
    names_in_file = [line.split(" ", 1)[1] for line in _lines(AVA_LISTS / "styles.txt")]
    for split in ("train", "test"):
        assert ava_real["ds"][split].features["label"].names == names_in_file == AVA_STYLE_NAMES


def test_ava_real_train_labels_and_missing_images(ava_real):
    ds, sampled = ava_real["ds"], ava_real["sampled"]
    train = ds["train"]
    assert train.num_rows == NUM_TRAIN_SAMPLE
    lab = dict(zip(ava_real["train_ids"], _lines(AVA_LISTS / "train.lab")))
    ids = [Path(p).stem for p in _paths(train)]
    assert ids == [i for i in ava_real["train_ids"] if i in sampled]  # file order kept
    assert train["label"] == [int(lab[i]) - 1 for i in ids]  # 1-based in train.lab
    # a specific id, against the raw file: the first train line is 615485 with label 1
    assert _lines(AVA_LISTS / "train.jpgl")[0] == "615485" and _lines(AVA_LISTS / "train.lab")[0] == "1"
    row = ids.index("615485")
    assert train.features["label"].int2str(train[row]["label"]) == "Complementary_Colors"
    # every unsampled train id is reported missing, in list order; no test id is missing
    missing = [i for i in ava_real["train_ids"] if i not in sampled]
    assert ds.num_missing_images == 11270 - NUM_TRAIN_SAMPLE == len(missing)
    assert ds.missing_images == missing
    assert f"{len(missing)} listed image(s) not found" in ava_real["log"] and missing[0] in ava_real["log"]


def test_ava_real_test_split_keeps_every_row_as_published(ava_real):
    test = ava_real["ds"]["test"]
    raw = {i: [int(v) for v in r.split()] for i, r in zip(ava_real["test_ids"], _lines(AVA_LISTS / "test.multilab"))}
    assert test.num_rows == 2809
    ids = [Path(p).stem for p in _paths(test)]
    assert ids == ava_real["test_ids"]
    assert test["labels"] == [raw[i] for i in ids]
    empty = [n for n, row in enumerate(test["labels"]) if not any(row)]
    assert len(empty) == 236 == ava_real["ds"].num_unlabeled_test_images
    assert "236 of 2809 test images have no positive style" in ava_real["log"]
    labels = test["label"]
    assert all(labels[n] == -1 for n in empty)
    assert all(labels[n] == row.index(1) for n, row in enumerate(test["labels"]) if any(row))
    # a specific id against the raw file: the first test id, four styles
    assert ids[0] == "615561" and _lines(AVA_LISTS / "test.multilab")[0] == "1 0 0 0 0 0 0 0 0 1 0 1 1 0"
    assert [AVA_STYLE_NAMES[k] for k, v in enumerate(test[0]["labels"]) if v] == [
        "Complementary_Colors", "Rule_of_Thirds", "Silhouettes", "Soft_Focus"
    ]


def test_ava_real_single_label_view_says_what_it_dropped(ava_real, caplog):
    test = ava_real["ds"]["test"]
    with caplog.at_level(logging.WARNING, logger="artstyle.data.loading"):
        view = single_label_view(test)
    assert view.num_rows == 2809 - 236
    assert min(view["label"]) == 0
    assert "dropped 236 of 2809 rows" in caplog.text
    assert "236 of 2809 rows without a class dropped" in view.info.description
    assert test.num_rows == 2809 and "dropped" not in (test.info.description or "")
    assert single_label_view(ava_real["ds"]["train"]) is ava_real["ds"]["train"]  # nothing to drop
    with pytest.raises(ValueError, match="label_column='style'"):
        single_label_view(test, label_column="style")


def test_ava_real_map_uses_all_rows(ava_real):
    """The metric of the package on the builder's test split equals sklearn's mean AP over all 2,809 raw
    rows (236 all-zero rows included as negatives), and differs from the mean AP without them."""
    from artstyle.metrics import load_style_metrics

    test = ava_real["ds"]["test"]
    targets = np.array([[int(v) for v in r.split()] for r in _lines(AVA_LISTS / "test.multilab")])
    rng = np.random.default_rng(0)
    scores = (rng.random(targets.shape) + 0.6 * targets).astype(np.float32)
    result = load_style_metrics(multi_label=True, keep_in_memory=True).compute(
        predictions=scores, references=test["labels"]
    )
    per_class = average_precision_score(targets, scores, average=None)
    assert result["num_examples"] == 2809
    assert result["average_precision"] == pytest.approx(per_class.tolist(), abs=1e-6)
    assert result["mean_average_precision"] == pytest.approx(per_class.mean(), abs=1e-6)
    keep = targets.any(axis=1)
    without_empty = average_precision_score(targets[keep], scores[keep], average="macro")
    assert abs(result["mean_average_precision"] - without_empty) > 1e-3


# ------------------------------------------------------------------------------------------------
# Flickr Style
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def flickr_real(tmp_path_factory):
    root = tmp_path_factory.mktemp("flickr_real") / "flickr"
    root.mkdir()
    shutil.copy(FLICKR_CSV, root)
    shutil.copy(FLICKR_NAMES, root)
    rows = _raw_flickr_rows()
    sample = set(np.random.default_rng(1).choice(len(rows), NUM_FLICKR_SAMPLE, replace=False).tolist())
    sample.discard(0)
    sample = sorted(sample | {0})[:NUM_FLICKR_SAMPLE]  # row 0 (id 5159730964) is checked by name below
    payload = _jpeg_bytes(1)
    for n in sample:
        name = rows[n]["image_url"].rsplit("/", 1)[1]
        (root / "images").mkdir(exist_ok=True)
        (root / "images" / name).write_bytes(payload)
    ds = load_style_dataset("flickr", data_dir=root, cache_dir=root.parent / "cache")
    return {"ds": ds, "rows": rows, "sample": sample, "root": root}


def test_flickr_real_file_is_what_the_builder_expects():
    raw = gzip.decompress(FLICKR_CSV.read_bytes()).decode("utf-8")
    assert raw.split("\n", 1)[0] == ",image_url,page_url,label,_split"  # unnamed id column first
    rows = _raw_flickr_rows()
    assert len(rows) == 80000
    counts = {}
    for row in rows:
        counts[(int(row["label"]), row["_split"])] = counts.get((int(row["label"]), row["_split"]), 0) + 1
    assert counts == {(k, s): (3200 if s == "train" else 800) for k in range(20) for s in ("train", "test")}


def test_flickr_real_class_names_and_order(flickr_real):
    names = _lines(FLICKR_NAMES)
    assert len(names) == 20
    assert flickr_real["ds"]["train"].features["label"].names == names == FLICKR_STYLE_NAMES


def test_flickr_real_labels_splits_and_missing(flickr_real):
    ds, rows, sample = flickr_real["ds"], flickr_real["rows"], flickr_real["sample"]
    by_name = {row["image_url"].rsplit("/", 1)[1]: row for row in rows}
    sampled_rows = [rows[n] for n in sample]
    for split in ("train", "test"):
        paths = _paths(ds[split])
        expected = [r for r in sampled_rows if r["_split"] == split]
        assert [os.path.basename(p) for p in paths] == [r["image_url"].rsplit("/", 1)[1] for r in expected]
        assert ds[split]["label"] == [int(by_name[os.path.basename(p)]["label"]) for p in paths]
    assert ds["train"].num_rows + ds["test"].num_rows == len(sample)
    assert ds.num_missing_images == 80000 - len(sample)
    assert len(ds.missing_images) == 80000 - len(sample)
    assert ds.missing_images[0] == rows[1]["image_url"].rsplit("/", 1)[1]  # row 0 is present, row 1 is not
    # a specific id against the raw file: the first row is photo 5159730964, label 0 = "Detailed", train
    first = rows[0]
    assert (first[""], first["label"], first["_split"]) == ("5159730964", "0", "train")
    train = ds["train"]
    row = [os.path.basename(p) for p in _paths(train)].index("5159730964_124c1e63d8.jpg")
    assert train.features["label"].int2str(train[row]["label"]) == "Detailed"


def test_flickr_real_validation_is_carved_from_train_only(flickr_real, tmp_path):
    root = tmp_path / "flickr"
    shutil.copytree(flickr_real["root"], root)
    ds = load_style_dataset("flickr", data_dir=root, cache_dir=tmp_path / "cache", validation_size=0.25, seed=0)
    assert list(ds) == ["train", "validation", "test"]
    assert ds["test"].num_rows == flickr_real["ds"]["test"].num_rows
    assert ds["train"].num_rows + ds["validation"].num_rows == flickr_real["ds"]["train"].num_rows
    assert not set(_paths(ds["validation"])) & set(_paths(ds["test"]))
