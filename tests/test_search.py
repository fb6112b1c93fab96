"""Style index: round trip on disk, incremental updates, nearest neighbour, the artstyle-similar CLI."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from artstyle import ArtStyleModel, build_image_processor
from artstyle.cli import similar_main
from artstyle.search import StyleEmbedder, StyleIndex, list_images, update_index

from conftest import tiny_config


def _write_image(path, seed, size=40):
    rng = np.random.default_rng(seed)
    # distinct "styles": smooth gradients vs noise vs stripes, so embeddings differ clearly
    kind = seed % 3
    if kind == 0:
        pixels = rng.integers(0, 256, (size, size, 3))
    elif kind == 1:
        ramp = np.linspace(0, 255, size)
        pixels = np.stack([np.tile(ramp, (size, 1)) * rng.random() for _ in range(3)], axis=-1)
    else:
        pixels = np.zeros((size, size, 3)) + rng.integers(0, 256, 3)
        pixels[::4] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("style_model")
    model = ArtStyleModel(tiny_config()).eval()
    model.save_pretrained(folder)
    build_image_processor(model.config).save_pretrained(folder)
    return folder


@pytest.fixture()
def collection(tmp_path):
    root = tmp_path / "works"
    for i in range(5):
        _write_image(root / f"w{i}.png", i)
    _write_image(root / "nested" / "n0.jpg", 7)
    return root


class CountingEmbedder(StyleEmbedder):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.embedded = 0

    def embed_pixels(self, pixel_values):
        self.embedded += len(pixel_values)
        return super().embed_pixels(pixel_values)


def test_round_trip_and_nearest_neighbour_is_itself(model_dir, collection, tmp_path):
    embedder = CountingEmbedder(str(model_dir), batch_size=4, device="cpu")
    index, report = update_index(collection, embedder)
    assert (report.added, report.updated, report.removed, report.unchanged) == (6, 0, 0, 0)
    assert embedder.embedded == 6
    assert sorted(index.paths) == ["nested/n0.jpg", "w0.png", "w1.png", "w2.png", "w3.png", "w4.png"]
    np.testing.assert_allclose(np.linalg.norm(index.embeddings, axis=1), 1.0, rtol=1e-5)

    index.save(tmp_path / "idx")
    loaded = StyleIndex.load(tmp_path / "idx")
    assert loaded.paths == index.paths and loaded.stats == index.stats
    assert loaded.model_fingerprint == embedder.fingerprint
    np.testing.assert_array_equal(loaded.embeddings, index.embeddings)

    for name in ("w3.png", "nested/n0.jpg"):
        query = embedder.embed([Image.open(collection / name).convert("RGB")])[0]
        (best, score), *_ = loaded.search(query, k=3)
        assert best == name
        assert score == pytest.approx(1.0, abs=1e-4)
        assert loaded.search(query, k=2, exclude=[name])[0][0] != name


def test_incremental_update_embeds_only_new_and_changed(model_dir, collection):
    embedder = CountingEmbedder(str(model_dir), batch_size=4, device="cpu")
    index, _ = update_index(collection, embedder)
    before = dict(zip(index.paths, index.embeddings))

    _write_image(collection / "new.png", 11)  # new
    _write_image(collection / "w1.png", 10)  # changed content
    stat = os.stat(collection / "w1.png")
    os.utime(collection / "w1.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    (collection / "w2.png").unlink()  # removed
    (collection / "broken.png").write_bytes(b"not an image")

    embedder.embedded = 0
    index, report = update_index(collection, embedder, index)
    assert (report.added, report.updated, report.removed, report.unchanged) == (1, 1, 1, 4)
    assert [path for path, _ in report.failed] == ["broken.png"]
    assert embedder.embedded == 2
    assert "w2.png" not in index.paths and "broken.png" not in index.paths
    after = dict(zip(index.paths, index.embeddings))
    np.testing.assert_array_equal(after["w0.png"], before["w0.png"])  # reused, not recomputed
    assert not np.allclose(after["w1.png"], before["w1.png"])

    # nothing changed: nothing embedded, the bad file is remembered and not retried
    embedder.embedded = 0
    index, report = update_index(collection, embedder, index)
    assert embedder.embedded == 0 and report.unchanged == 6 and len(report.failed) == 1


def test_other_model_rebuilds_the_index(model_dir, collection, tmp_path):
    index, _ = update_index(collection, StyleEmbedder(str(model_dir), device="cpu"))
    other = ArtStyleModel(tiny_config()).eval()  # different random weights
    index, report = update_index(collection, StyleEmbedder(other, device="cpu"), index)
    assert report.rebuilt and report.added == 6 and report.unchanged == 0


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="index.json"):
        StyleIndex.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        list_images(tmp_path / "missing")


def test_similar_cli_json_and_contact_sheet(model_dir, collection, tmp_path, capsys):
    sheet = tmp_path / "sheet.png"
    argv = ["--index", str(collection), "--query", str(collection / "w0.png"), "--model", str(model_dir),
            "--k", "3", "--json", "--contact_sheet", str(sheet), "--device", "cpu"]
    assert similar_main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["index_size"] == 6 and result["update"]["added"] == 6
    assert [n["rank"] for n in result["neighbours"]] == [1, 2, 3]
    assert result["neighbours"][0]["path"].endswith("w0.png")
    assert Image.open(sheet).size[0] > 0
    assert (collection / ".artstyle-index" / "index.json").is_file()

    # second run reuses the stored index; --exclude_query drops the query itself
    assert similar_main(argv[:-4] + ["--exclude_query", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["update"]["unchanged"] == 6 and result["update"]["added"] == 0
    assert all(not n["path"].endswith("w0.png") for n in result["neighbours"])


def test_similar_cli_reports_user_errors(model_dir, collection, tmp_path, capsys):
    assert similar_main(["--index", str(tmp_path / "nope"), "--query", "x.png", "--model", str(model_dir)]) == 2
    assert "not a folder of images" in capsys.readouterr().err
    code = similar_main(["--index", str(collection), "--query", str(tmp_path / "q.png"), "--model", str(model_dir)])
    assert code == 2 and "image not found" in capsys.readouterr().err
    code = similar_main(["--index", str(collection), "--query", str(collection / "w0.png"),
                         "--model", str(tmp_path / "no_model")])
    assert code == 2 and "config.json" in capsys.readouterr().err


def test_progress_wrapper_sees_every_image(model_dir, collection):
    # artstyle-similar --verbose passes a function wrapping an iterable (a tqdm bar); it is advanced per image
    seen = []

    def progress(items):
        for item in items:
            seen.append(item)
            yield item

    (collection / "broken.png").write_bytes(b"not an image")
    update_index(collection, StyleEmbedder(str(model_dir), batch_size=4, device="cpu"), progress=progress)
    assert seen == list(range(7))


def test_similar_cli_rebuilds_a_damaged_index(model_dir, collection, capsys, caplog):
    argv = ["--index", str(collection), "--query", str(collection / "w0.png"), "--model", str(model_dir),
            "--json", "--device", "cpu"]
    assert similar_main(argv) == 0
    capsys.readouterr()
    meta = json.loads((collection / ".artstyle-index" / "index.json").read_text())
    damaged = collection / ".artstyle-index" / meta["files"][0]["file"]
    damaged.write_bytes(b"garbage")
    assert similar_main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["update"]["rebuilt"] and result["update"]["added"] == 6
    assert str(damaged) in caplog.text


def test_index_workers_ship_uint8_and_the_device_side_normalisation_gives_the_processor_embeddings(
        model_dir, collection):
    # the torchvision processor's steps are split: workers resize to uint8, embed_pixels normalises the batch on the
    # model's device; the result must be the processor's own (embed() runs it whole on PIL images)
    from artstyle.search import _ImageFiles

    embedder = StyleEmbedder(str(model_dir), batch_size=4, device="cpu")
    names = ["w0.png", "nested/n0.jpg"]
    files = _ImageFiles(collection, names, embedder.image_processor)
    _, pixels, error = files[0]
    assert error is None and str(pixels.dtype) == "torch.uint8"
    assert tuple(pixels.shape) == (3, 32, 32)  # resized to the model's image size, not yet normalised
    index, _ = update_index(collection, embedder, num_workers=2)
    reference = embedder.embed([Image.open(collection / name).convert("RGB") for name in index.paths])
    np.testing.assert_allclose(index.embeddings, reference, atol=1e-5)
    # a PIL-backend processor has no split steps: its workers still run the whole processor (float32)
    pil_files = _ImageFiles(collection, names, build_image_processor(embedder.model.config, backend="pil"))
    assert str(pil_files[0][1].dtype) == "torch.float32"
