"""artstyle-predict on a saved tiny classifier: JSON output, table, bad files reported not fatal."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from artstyle import ArtStyleForImageClassification, build_image_processor
from artstyle.cli import expand_inputs, format_predictions_table, predict_main

from conftest import tiny_config

NAMES = ["impressionism", "cubism", "pop_art"]


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("classifier")
    config = tiny_config(num_labels=3, id2label=dict(enumerate(NAMES)), label2id={n: i for i, n in enumerate(NAMES)})
    model = ArtStyleForImageClassification(config).eval()
    model.save_pretrained(folder)
    build_image_processor(config).save_pretrained(folder)
    return folder


@pytest.fixture()
def images(tmp_path):
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a.png", "sub/b.jpg", "c.png"):
        Image.fromarray(rng.integers(0, 256, (24, 36, 3), dtype=np.uint8)).save(folder / name)
    (folder / "broken.png").write_bytes(b"\x89PNG truncated")
    return folder


def test_predict_json(classifier_dir, images, capsys):
    code = predict_main([str(images), str(images / "missing.png"), "--model", str(classifier_dir), "--top_k", "2",
                         "--json", "--batch_size", "2", "--device", "cpu"])
    assert code == 1  # some inputs failed, the others were still predicted
    output = json.loads(capsys.readouterr().out)
    paths = [r["path"] for r in output["results"]]
    assert [p.split("imgs/")[-1] for p in paths] == ["a.png", "c.png", "sub/b.jpg"]
    for result in output["results"]:
        assert len(result["predictions"]) == 2
        assert {p["label"] for p in result["predictions"]} <= set(NAMES)
        scores = [p["score"] for p in result["predictions"]]
        assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-6
    failed = sorted(e["path"].split("/")[-1] for e in output["errors"])
    assert failed == ["broken.png", "missing.png"]


def test_predict_scores_match_the_model(classifier_dir, images, capsys):
    assert predict_main([str(images / "a.png"), "--model", str(classifier_dir), "--top_k", "3", "--json",
                         "--device", "cpu"]) == 0
    predictions = json.loads(capsys.readouterr().out)["results"][0]["predictions"]
    model = ArtStyleForImageClassification.from_pretrained(classifier_dir).eval()
    pixel_values = build_image_processor(model.config)(images=Image.open(images / "a.png"),
                                                       return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        probs = model(pixel_values=pixel_values).logits.softmax(-1)[0]
    expected = {NAMES[i]: float(probs[i]) for i in range(3)}
    for prediction in predictions:
        assert prediction["score"] == pytest.approx(expected[prediction["label"]], abs=1e-5)


def test_predict_table_and_errors(classifier_dir, images, capsys):
    assert predict_main([str(images / "a.png"), "--model", str(classifier_dir), "--top_k", "1",
                         "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["path", "rank", "style", "score"]
    assert lines[1].split()[0].endswith("a.png") and lines[1].split()[2] in NAMES
    assert predict_main([str(images / "a.png"), "--model", str(images / "nomodel")]) == 2
    assert "config.json" in capsys.readouterr().err
    assert predict_main([str(images / "a.png"), "--model", str(classifier_dir), "--top_k", "0"]) == 2


def test_expand_inputs_and_table_format(images):
    sources, errors = expand_inputs([str(images), "https://example.com/x.jpg", str(images / "nope")])
    assert sources[-1] == "https://example.com/x.jpg"
    assert len(sources) == 5  # 3 images + broken.png (decoded later) + the URL
    assert errors == [{"path": str(images / "nope"), "error": "no such file or folder"}]
    table = format_predictions_table([{"path": "x.png", "predictions": [{"label": "cubism", "score": 0.5}]}])
    assert table.splitlines()[1].split() == ["x.png", "1", "cubism", "0.5000"]


def test_predict_matches_the_pipeline_with_workers(classifier_dir, images):
    """The DataLoader / fast-processor path gives the scores of ``pipeline("image-classification")``."""
    from transformers import pipeline

    from artstyle.cli import predict

    sources = [str(images / name) for name in ("a.png", "c.png", "sub/b.jpg", "broken.png")]
    results, errors = predict(sources, str(classifier_dir), top_k=3, batch_size=2, device="cpu", num_workers=2)
    assert [e["path"] for e in errors] == [sources[3]]
    assert [r["path"] for r in results] == sources[:3]
    classifier = pipeline("image-classification", model=str(classifier_dir), device="cpu")
    expected = classifier([Image.open(s).convert("RGB") for s in sources[:3]], top_k=3)
    for result, reference in zip(results, expected):
        assert [p["label"] for p in result["predictions"]] == [p["label"] for p in reference]
        assert [p["score"] for p in result["predictions"]] == pytest.approx([p["score"] for p in reference], abs=1e-5)


def test_predict_in_bfloat16_runs_the_classifier_in_that_dtype_and_stays_close(classifier_dir, images):
    from artstyle.cli import _to_device, predict

    sources = [str(images / name) for name in ("a.png", "c.png", "sub/b.jpg")]
    full, _ = predict(sources, str(classifier_dir), top_k=3, batch_size=3, device="cpu", num_workers=0)
    half, _ = predict(sources, str(classifier_dir), top_k=3, batch_size=3, device="cpu", num_workers=0,
                      dtype="bfloat16")
    scores = [[p["score"] for p in r["predictions"]] for r in full]
    half_scores = [[p["score"] for p in r["predictions"]] for r in half]
    assert half_scores != scores  # bfloat16 arithmetic really ran
    for result, reference in zip(half, full):
        by_label = {p["label"]: p["score"] for p in reference["predictions"]}
        for prediction in result["predictions"]:
            if prediction["label"] in by_label:
                assert prediction["score"] == pytest.approx(by_label[prediction["label"]], abs=0.03)
    with pytest.raises(ValueError, match="--dtype must be one of"):
        predict(sources, str(classifier_dir), device="cpu", dtype="float64")
    # same-shape images travel as one stack; mixed shapes one by one; both give the images back unchanged
    same = [torch.full((3, 4, 5), v, dtype=torch.uint8) for v in (1, 2)]
    mixed = [*same, torch.zeros(3, 2, 2, dtype=torch.uint8)]
    for batch in (same, mixed):
        moved = _to_device(batch, torch.device("cpu"))
        assert len(moved) == len(batch) and all(torch.equal(a, b) for a, b in zip(moved, batch))


def test_auto_workers_decode_in_this_process_for_few_images_and_in_parallel_for_many(monkeypatch):
    from artstyle import search

    monkeypatch.setattr(search.os, "cpu_count", lambda: 16)
    assert search.resolve_num_workers("auto", 32, 16) == 0  # two batches: starting workers costs more
    assert search.resolve_num_workers(None, 33, 16) == 8  # capped at 8
    monkeypatch.setattr(search.os, "cpu_count", lambda: 4)
    assert search.resolve_num_workers("auto", 2000, 128) == 3  # one core left to the main process
    monkeypatch.setattr(search.os, "cpu_count", lambda: None)
    assert search.resolve_num_workers("auto", 2000, 128) == 1
    assert search.resolve_num_workers(5, 10, 16) == 5 and search.resolve_num_workers("0", 2000, 1) == 0
    for bad in (-1, "x", 1.5j):
        with pytest.raises(ValueError, match="num_workers must be"):
            search.resolve_num_workers(bad, 10, 2)


def test_predict_defaults_to_auto_workers(classifier_dir, images, monkeypatch):
    """Without --dataloader_num_workers, enough images are decoded by workers (the default is ``auto``)."""
    import artstyle.cli as cli

    created = []
    real_loader = cli.DataLoader

    def spy(*args, **kwargs):
        created.append(kwargs["num_workers"])
        return real_loader(*args, **kwargs)

    monkeypatch.setattr(cli, "DataLoader", spy)
    monkeypatch.setattr(cli.resolve_num_workers.__globals__["os"], "cpu_count", lambda: 3)
    sources = [str(images / name) for name in ("a.png", "c.png", "sub/b.jpg")]
    assert cli.build_predict_parser().parse_args(sources).dataloader_num_workers == "auto"
    results, _ = cli.predict(sources, str(classifier_dir), top_k=1, batch_size=1, device="cpu")
    assert created == [2] and len(results) == 3  # 3 images > 2 batches of 1: min(8, 3 - 1) workers
    cli.predict(sources, str(classifier_dir), top_k=1, batch_size=2, device="cpu")
    assert created[-1] == 0  # 3 images fit in two batches of 2: decoded here


def test_predict_batches_stacked_mixed_and_all_broken_keep_order_and_scores(classifier_dir, images):
    """Worker-stacked batches, a batch of mixed sizes (a list) and one with only broken files: every image keeps its
    place and the pipeline's scores, the broken ones are reported."""
    from transformers import pipeline

    from artstyle.cli import _collate_decoded, _to_device, predict

    Image.fromarray(np.random.default_rng(1).integers(0, 256, (50, 20, 3), dtype=np.uint8)).save(images / "d.png")
    (images / "broken2.jpg").write_bytes(b"not a jpeg")
    names = ["a.png", "broken.png", "broken2.jpg", "c.png", "d.png", "sub/b.jpg"]
    sources = [str(images / name) for name in names]
    results, errors = predict(sources, str(classifier_dir), top_k=3, batch_size=2, device="cpu", num_workers=2)
    assert [e["path"] for e in errors] == [sources[1], sources[2]]  # batch 2: nothing to classify
    good = [sources[i] for i in (0, 3, 4, 5)]  # batch 3 mixes 24x36 and 50x20 images
    assert [r["path"] for r in results] == good
    classifier = pipeline("image-classification", model=str(classifier_dir), device="cpu")
    for result, reference in zip(results, classifier([Image.open(s).convert("RGB") for s in good], top_k=3)):
        assert [p["label"] for p in result["predictions"]] == [p["label"] for p in reference]
        assert [p["score"] for p in result["predictions"]] == pytest.approx([p["score"] for p in reference], abs=1e-5)
    # the workers' collation: one stacked tensor for same-size images, a list otherwise, errors kept with their index
    same = [(0, torch.zeros(3, 4, 5, dtype=torch.uint8), None), (1, None, "bad"),
            (2, torch.ones(3, 4, 5, dtype=torch.uint8), None)]
    batch = _collate_decoded(same)
    assert batch.indices == [0, 2] and batch.errors == [(1, "bad")]
    assert isinstance(batch.images, torch.Tensor) and batch.images.shape == (2, 3, 4, 5)
    mixed = _collate_decoded([*same, (3, torch.zeros(3, 2, 2, dtype=torch.uint8), None)])
    assert isinstance(mixed.images, list) and [tuple(i.shape) for i in mixed.images] == [(3, 4, 5)] * 2 + [(3, 2, 2)]
    assert _collate_decoded([(0, None, "bad")]) == ([], [], [(0, "bad")])
    moved = _to_device(batch.images, torch.device("cpu"))
    assert len(moved) == 2 and torch.equal(moved[1], same[2][1])
