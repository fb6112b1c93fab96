import json
from unittest import mock

import pytest
from huggingface_hub import HfApi, ModelCard

from artstyle.hub import push_to_hub, save_model_card

CONFIG = {"model_type": "artstyle", "image_size": 32, "patch_size": 8, "queue_size": 64, "weight_gram": 0.5,
          "fusion_layers": [0, 1]}


def test_pretraining_card_has_metadata_tables_and_usage(tmp_path):
    path = save_model_card(
        tmp_path, task="pretraining", dataset_name="demo", config=CONFIG,
        training_summary={"steps": 12, "final_loss": 4.25, "loss_gram": 1.5e-5}, model_id="me/artstyle-demo",
    )
    assert path == tmp_path / "README.md"
    card = ModelCard.load(path)
    assert card.data.library_name == "transformers"
    assert "artstyle" in card.data.tags and "pretraining" in card.data.tags
    assert card.data.pipeline_tag == "image-feature-extraction"
    text = card.text
    assert "| steps | 12 |" in text
    assert "| final_loss | 4.25 |" in text
    assert "| loss_gram | 1.5000e-05 |" in text
    assert "| queue_size | 64 |" in text and "| fusion_layers | `[0, 1]` |" in text
    assert 'AutoModel.from_pretrained("me/artstyle-demo")' in text
    assert "`demo`" in text


def test_classification_card_has_model_index(tmp_path):
    base = tmp_path / "pretrain"
    base.mkdir()
    save_model_card(
        tmp_path, task="image-classification", dataset_name="pandora18k", config=CONFIG,
        training_summary={"epochs": 3}, metrics={"accuracy": 0.5, "macro_f1": 0.25}, base_model=str(base),
    )
    card = ModelCard.load(tmp_path / "README.md")
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results == {"accuracy": 0.5, "macro_f1": 0.25}
    assert card.data.eval_results[0].dataset_name == "pandora18k"
    assert card.data.base_model is None  # a local path is not a Hub id: text only
    assert f"`{base}`" in card.text and 'pipeline("image-classification"' in card.text


def test_card_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="task"):
        save_model_card(tmp_path, task="detection", dataset_name="d", config=CONFIG, training_summary={})
    with pytest.raises(FileNotFoundError, match="missing"):
        save_model_card(tmp_path / "missing", task="pretraining", dataset_name="d", config=CONFIG,
                        training_summary={})


def test_push_to_hub_creates_repo_and_uploads_folder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    with mock.patch.object(HfApi, "create_repo", return_value="https://hf.co/me/m") as create, \
            mock.patch.object(HfApi, "upload_folder") as upload:
        url = push_to_hub(tmp_path, "me/m", private=True)
    assert url == "https://hf.co/me/m"
    create.assert_called_once_with("me/m", private=True, exist_ok=True)
    assert upload.call_args.kwargs["folder_path"] == str(tmp_path)
    assert upload.call_args.kwargs["repo_id"] == "me/m"
    with pytest.raises(ValueError, match="hub_model_id"):
        push_to_hub(tmp_path, "")


def test_hub_id_base_model_goes_to_metadata(tmp_path):
    save_model_card(tmp_path, task="image-classification", dataset_name="me/styles", config=CONFIG,
                    training_summary={}, base_model="me/artstyle-demo")
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.base_model == "me/artstyle-demo"
    assert card.data.datasets == ["me/styles"]
