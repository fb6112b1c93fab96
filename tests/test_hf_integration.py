"""Hugging Face integration: save/load, Auto classes, trust_remote_code without the package, pipelines."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel, AutoModelForImageClassification, pipeline

from artstyle import ArtStyleForImageClassification, ArtStyleForPretraining, ArtStyleModel, build_image_processor

from conftest import tiny_config


@pytest.fixture(scope="module")
def pretrain_dir(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("pretrain")
    model = ArtStyleForPretraining(tiny_config(pooler="fused_style"))
    model.save_pretrained(folder)
    build_image_processor(model.config).save_pretrained(folder)
    return folder, model


def test_saved_folder_is_safetensors_with_code_and_auto_map(pretrain_dir):
    folder, _ = pretrain_dir
    names = {p.name for p in folder.iterdir()}
    assert "model.safetensors" in names and not any(n.endswith((".bin", ".pt", ".pth")) for n in names)
    assert {"modeling_artstyle.py", "configuration_artstyle.py", "heads.py", "losses.py", "layer_fusion.py",
            "distillation.py", "soft_contrast.py", "gram.py"} <= names  # the modeling file and its relative imports
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert set(auto_map) == {"AutoConfig", "AutoModel", "AutoModelForPreTraining", "AutoModelForImageClassification"}
    with pytest.raises(ValueError, match="safetensors"):
        ArtStyleModel(tiny_config()).save_pretrained(folder / "x", safe_serialization=False)


def test_pretraining_roundtrip_keeps_teacher_and_queue(pretrain_dir):
    folder, model = pretrain_dir
    loaded = ArtStyleForPretraining.from_pretrained(folder)
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_pretraining_checkpoint_loads_into_classifier(pretrain_dir):
    folder, model = pretrain_dir
    classifier = ArtStyleForImageClassification.from_pretrained(folder, num_labels=4)
    student = model.artstyle.state_dict()
    for name, tensor in classifier.artstyle.state_dict().items():
        assert torch.equal(tensor, student[name]), name  # backbone, fusion, Gram all kept
    assert classifier.classifier.weight.shape == (4, 192)
    base = AutoModel.from_pretrained(folder)
    assert type(base).__name__ == "ArtStyleModel"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(base.eval()(x).pooler_output, model.artstyle.eval()(x).pooler_output)


def test_trust_remote_code_without_the_package(pretrain_dir, tmp_path):
    folder, model = pretrain_dir
    classifier = ArtStyleForImageClassification.from_pretrained(folder, num_labels=3).eval()
    classifier.save_pretrained(tmp_path / "clf")
    x = torch.randn(2, 3, 32, 32)
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        expected = classifier(x).logits
        expected_loss = model.eval()(x, x.flip(-1)).loss
    script = textwrap.dedent(f"""
        import sys
        sys.modules["artstyle"] = None  # `import artstyle` now raises ImportError
        try:
            import artstyle  # noqa
            raise SystemExit("artstyle is importable")
        except ImportError:
            pass
        import torch
        from transformers import AutoModelForImageClassification, AutoModelForPreTraining
        model = AutoModelForImageClassification.from_pretrained({str(tmp_path / 'clf')!r}, trust_remote_code=True)
        assert "artstyle" not in type(model).__module__.split(".")[0], type(model).__module__
        x = torch.load({str(tmp_path / 'x.pt')!r})
        with torch.no_grad():
            torch.save(model.eval()(x).logits, {str(tmp_path / 'logits.pt')!r})
        print(type(model).__module__)
        # the pretraining model wires every component module (layer_fusion, distillation, soft_contrast, gram)
        pretraining = AutoModelForPreTraining.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        with torch.no_grad():
            torch.save(pretraining(x, x.flip(-1)).loss, {str(tmp_path / 'loss.pt')!r})
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                            env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HF_HOME": str(tmp_path / "hf")})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "transformers_modules" in result.stdout
    assert torch.equal(torch.load(tmp_path / "logits.pt"), expected)
    torch.testing.assert_close(torch.load(tmp_path / "loss.pt"), expected_loss, rtol=1e-5, atol=0)


def test_pipelines_on_a_saved_folder(pretrain_dir, tmp_path):
    folder, _ = pretrain_dir
    labels = {0: "impressionism", 1: "cubism", 2: "ukiyo_e"}
    classifier = ArtStyleForImageClassification.from_pretrained(
        folder, num_labels=3, id2label=labels, label2id={v: k for k, v in labels.items()})
    classifier.save_pretrained(tmp_path / "clf")
    build_image_processor(classifier.config).save_pretrained(tmp_path / "clf")
    processor = AutoImageProcessor.from_pretrained(tmp_path / "clf")
    assert processor.size == {"height": 32, "width": 32}
    image = Image.fromarray((np.random.default_rng(0).random((40, 57, 3)) * 255).astype("uint8"))
    predictions = pipeline("image-classification", model=str(tmp_path / "clf"))(image, top_k=3)
    assert {p["label"] for p in predictions} == set(labels.values())
    assert sum(p["score"] for p in predictions) == pytest.approx(1.0, rel=1e-4)
    model = AutoModelForImageClassification.from_pretrained(tmp_path / "clf").eval()
    with torch.no_grad():
        logits = model(**processor(image, return_tensors="pt")).logits
    assert predictions[0]["label"] == labels[int(logits.argmax())]
    features = pipeline("image-feature-extraction", model=str(folder))(image, pool=True)
    assert np.asarray(features).shape == (1, 192)


def test_artstyle_pipeline_class_gives_the_stock_pipeline_predictions(pretrain_dir, tmp_path):
    """``pipeline(..., pipeline_class=ArtStyleImageClassificationPipeline)``: uint8 until the model, same answers."""
    from artstyle.pipelines import ArtStyleImageClassificationPipeline

    folder, _ = pretrain_dir
    classifier = ArtStyleForImageClassification.from_pretrained(folder, num_labels=5)
    classifier.save_pretrained(tmp_path / "clf")
    processor = build_image_processor(classifier.config)
    processor.save_pretrained(tmp_path / "clf")
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (40 + 3 * i, 57 - i, 3), dtype=np.uint8)) for i in range(5)]
    images.append(Image.fromarray(rng.integers(0, 256, (30, 30), dtype=np.uint8)))  # grey: load_image makes RGB
    stock = pipeline("image-classification", model=str(tmp_path / "clf"))
    fast = pipeline("image-classification", model=str(tmp_path / "clf"),
                    pipeline_class=ArtStyleImageClassificationPipeline)
    assert type(stock).__name__ == "ImageClassificationPipeline"  # the plain call keeps the stock class
    assert isinstance(fast, ArtStyleImageClassificationPipeline)
    # the worker's output: the processor's resize, still uint8
    pixels = fast.preprocess(images[0])["pixel_values"]
    assert pixels.dtype == torch.uint8
    assert torch.equal(pixels, processor(images[0], do_rescale=False, do_normalize=False,
                                         return_tensors="pt")["pixel_values"])
    array = np.array(images[1])
    assert torch.equal(fast.preprocess(array)["pixel_values"], fast.preprocess(images[1])["pixel_values"])
    for kwargs in ({"top_k": 3}, {"top_k": 9, "function_to_apply": "sigmoid"}, {"function_to_apply": "none"}):
        expected = stock(images, batch_size=4, **kwargs)
        got = fast(images, batch_size=4, num_workers=2, **kwargs)
        assert len(got) == len(images)
        for row, reference in zip(got, expected):
            assert [p["label"] for p in row] == [p["label"] for p in reference]
            assert [p["score"] for p in row] == pytest.approx([p["score"] for p in reference], abs=1e-5)
    single = fast(images[0])  # one image, no batching
    assert [p["label"] for p in single] == [p["label"] for p in stock(images[0])]
    bf16 = pipeline("image-classification", model=str(tmp_path / "clf"), dtype=torch.bfloat16,
                    pipeline_class=ArtStyleImageClassificationPipeline)
    assert bf16.model.dtype == torch.bfloat16
    scores = [p["score"] for p in bf16(images[0], top_k=5)]
    assert scores == sorted(scores, reverse=True) and sum(scores) == pytest.approx(1.0, abs=0.02)
    with pytest.raises(ValueError, match="torchvision-backend"):
        pipeline("image-classification", model=str(tmp_path / "clf"),
                 image_processor=build_image_processor(classifier.config, backend="pil"),
                 pipeline_class=ArtStyleImageClassificationPipeline)
