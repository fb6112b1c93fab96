"""Model cards and Hub uploads for artstyle checkpoints.

`save_model_card` writes ``README.md`` into a checkpoint folder with `huggingface_hub.ModelCard`
(metadata: library, tags, datasets, base model and — for classifiers — a ``model-index`` with the
evaluation results). `push_to_hub` creates the repository and uploads the folder. Both scripts
(`run_pretrain.py`, `run_finetune.py`) call them; nothing here touches the network except
`push_to_hub`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData

__all__ = ["TASKS", "push_to_hub", "save_model_card"]

TASKS = ("pretraining", "image-classification")

# Config fields shown in the card's "Configuration" table (the full config is config.json).
_CARD_CONFIG_FIELDS = (
    "backbone",
    "backbone_depth",
    "image_size",
    "patch_size",
    "pooler",
    "fusion_layers",
    "gram_layer",
    "gram_dim",
    "style_dim",
    "projection_dim",
    "queue_size",
    "soft_alpha",
    "soft_mode",
    "weight_contrastive",
    "weight_layerwise",
    "weight_distill",
    "weight_gram",
    "momentum_base",
)

_TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

{{ description }}

## Training

- **Task:** {{ task }}
- **Dataset:** `{{ dataset_name }}`
{%- if base_model %}
- **Initialised from:** `{{ base_model }}`
{%- endif %}

| setting | value |
| --- | --- |
{%- for key, value in training_rows %}
| {{ key }} | {{ value }} |
{%- endfor %}
{% if metric_rows %}
## Results

| metric | value |
| --- | --- |
{%- for key, value in metric_rows %}
| {{ key }} | {{ value }} |
{%- endfor %}
{% endif %}
## Configuration

| field | value |
| --- | --- |
{%- for key, value in config_rows %}
| {{ key }} | {{ value }} |
{%- endfor %}

The full configuration is in `config.json`.

## Usage

```python
{{ usage }}
```

This checkpoint was produced by the `artstyle` package (self-supervised art-style
representations: attention-guided layer-wise fusion, multi-layer self-distillation, similarity-aware
soft contrast and a learnable Gram style module on a timm Vision Transformer).
"""


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        if math.isfinite(value) and value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.4e}"
        return f"{value:.6g}"
    if isinstance(value, (list, tuple, dict)):
        return "`" + json.dumps(value) + "`"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _config_dict(config: Any) -> dict:
    if config is None:
        return {}
    if isinstance(config, Mapping):
        return dict(config)
    if hasattr(config, "to_dict"):
        return config.to_dict()
    raise ValueError(f"config must be a PretrainedConfig or a dict, got {type(config).__name__}")


def _looks_like_hub_id(name: str) -> bool:
    if Path(name).exists() or name.startswith(("/", ".", "~")) or "\\" in name:
        return False
    return name.count("/") <= 1


def _usage(task: str, model_id: str) -> str:
    if task == "pretraining":
        return (
            "import artstyle  # registers the artstyle model type with the Auto classes\n"
            "from transformers import AutoImageProcessor, AutoModel\n"
            "from artstyle import ArtStyleForImageClassification\n\n"
            f'processor = AutoImageProcessor.from_pretrained("{model_id}")\n'
            f'model = AutoModel.from_pretrained("{model_id}")  # the student encoder\n'
            'inputs = processor(images=image, return_tensors="pt")\n'
            "embedding = model(**inputs).pooler_output\n\n"
            "# fine-tune on your styles:\n"
            f'classifier = ArtStyleForImageClassification.from_pretrained("{model_id}", num_labels=18)'
        )
    return (
        "import artstyle  # registers the artstyle model type with the Auto classes\n"
        "from transformers import pipeline\n\n"
        f'classifier = pipeline("image-classification", model="{model_id}")\n'
        'print(classifier("painting.jpg"))'
    )


def save_model_card(
    output_dir: str | Path,
    *,
    task: str,
    dataset_name: str,
    config: Any,
    training_summary: Mapping[str, Any],
    metrics: Mapping[str, float] | None = None,
    base_model: str | None = None,
    model_id: str | None = None,
) -> Path:
    """Write ``output_dir/README.md`` describing a checkpoint.

    Args:
        output_dir: existing checkpoint folder.
        task: ``"pretraining"`` or ``"image-classification"``.
        dataset_name: dataset the model was trained on (shown in the card and its metadata).
        config: the model's `ArtStyleConfig` (or its dict); selected fields go in a table.
        training_summary: settings and results of training (steps, batch size, final losses ...).
        metrics: evaluation metrics; for ``image-classification`` they also go into the
            ``model-index`` metadata as eval results.
        base_model: checkpoint the model was initialised from (a Hub id or a local path).
        model_id: Hub id used in the usage snippet (defaults to the folder name).

    Returns:
        The path of the written ``README.md``.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise FileNotFoundError(f"output_dir {str(output_dir)!r} is not an existing folder")
    if not dataset_name:
        raise ValueError("dataset_name must be a non-empty string")
    metrics = dict(metrics or {})
    model_id = model_id or output_dir.resolve().name
    config_dict = _config_dict(config)

    eval_results = None
    if task == "image-classification" and metrics:
        eval_results = [
            EvalResult(
                task_type="image-classification",
                dataset_type=dataset_name,
                dataset_name=dataset_name,
                metric_type=name,
                metric_value=float(value),
            )
            for name, value in metrics.items()
            if isinstance(value, (int, float)) and math.isfinite(float(value))
        ] or None
    # base_model metadata must be a Hub id: a local folder is shown in the text only.
    hub_base_model = base_model if base_model and _looks_like_hub_id(base_model) else None
    card_data = ModelCardData(
        library_name="transformers",
        tags=["artstyle", "art-style", "vision-transformer", "self-supervised"]
        + (["image-classification"] if task == "image-classification" else ["pretraining"]),
        datasets=[dataset_name] if "/" in dataset_name else None,
        base_model=hub_base_model,
        pipeline_tag="image-classification" if task == "image-classification" else "image-feature-extraction",
        model_name=model_id,
        eval_results=eval_results,
    )
    if task == "pretraining":
        title = f"{model_id}: self-supervised art-style encoder"
        description = (
            "A Vision Transformer pretrained without labels (`ArtStyleForPretraining`) to embed the "
            "*style* of an image. Load it with `AutoModel` for embeddings or fine-tune it with "
            "`ArtStyleForImageClassification`."
        )
    else:
        title = f"{model_id}: art-style classifier"
        description = "An `ArtStyleForImageClassification` model that predicts the style of an image."
    card = ModelCard.from_template(
        card_data,
        template_str=_TEMPLATE,
        title=title,
        description=description,
        task=task,
        dataset_name=dataset_name,
        base_model=base_model,
        training_rows=[(k, _format_value(v)) for k, v in training_summary.items()],
        metric_rows=[(k, _format_value(v)) for k, v in metrics.items()],
        config_rows=[(k, _format_value(config_dict[k])) for k in _CARD_CONFIG_FIELDS if k in config_dict],
        usage=_usage(task, model_id),
    )
    path = output_dir / "README.md"
    card.save(path)
    return path


def push_to_hub(
    output_dir: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    commit_message: str = "Upload artstyle checkpoint",
) -> str:
    """Create ``repo_id`` (if needed) and upload ``output_dir`` to it; returns the repo URL."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise FileNotFoundError(f"output_dir {str(output_dir)!r} is not an existing folder")
    if not repo_id:
        raise ValueError("repo_id (--hub_model_id) must be a non-empty Hub id such as 'user/model'")
    api = HfApi(token=token)
    url = api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(
        repo_id=str(getattr(url, "repo_id", repo_id)),
        folder_path=str(output_dir),
        commit_message=commit_message,
        # training checkpoints and the fine-tune's last epoch stay local
        ignore_patterns=["checkpoints/*", "last_epoch/*", "step_*/*", "epoch_*/*", ".tmp-*"],
    )
    return str(url)
