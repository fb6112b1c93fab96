"""Style-classification metrics as an `evaluate` module.

Computes, from per-class **scores** (logits, probabilities or kNN votes; shape ``[N, K]``):

- ``accuracy``: top-1 accuracy (arg-max of the scores).
- ``top5_accuracy``: top-k accuracy with ``k = min(5, K)``.
- ``macro_f1``: sklearn ``f1_score(average="macro")`` of the top-1 predictions (single-label: over the
  classes present in references or predictions, sklearn's convention; multi-label: over all classes of
  the thresholded scores).
- ``precision`` / ``recall``: per-class lists (sklearn, ``zero_division=0``).
- ``mean_average_precision``: the Flickr Style / AVA protocol (Karayev et al. 2014): the mean over
  classes of sklearn ``average_precision_score`` on the scores, one class against the rest, over all
  rows: a multi-label row without any positive (236 of the 2,809 AVA style test images) is a negative of
  every class. Classes without a single positive reference are left out of the mean (their AP is
  undefined).
- ``average_precision``: the per-class APs behind the mean (``None`` for a class without a positive).
- ``confusion_matrix``: ``K x K`` list of lists, rows = true class, columns = predicted class
  (single-label configuration only).

Configurations:

- ``"default"``: single-label; ``references`` are class ids.
- ``"multilabel"``: ``references`` are multi-hot lists (e.g. the AVA style test split). A top-1 hit
  counts when the highest-scored class is one of the true classes (never on a row without a positive);
  F1/precision/recall threshold the scores at ``threshold`` (default 0.5, i.e. sigmoid probabilities).
"""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
)

_DESCRIPTION = __doc__

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): scores of shape [N, K], higher = more likely.
    references (`list` of `int`, or multi-hot `list` of `list` of `int` for "multilabel"): true classes.
    threshold (`float`, default 0.5): multi-label decision threshold on the scores.
Returns:
    dict with accuracy, top5_accuracy, macro_f1, precision, recall, mean_average_precision,
    average_precision (per class, None where a class has no positive), confusion_matrix (None for
    "multilabel"), num_examples.
Examples:
    >>> metric = artstyle.metrics.load_style_metrics()
    >>> metric.compute(predictions=[[0.9, 0.1], [0.2, 0.8]], references=[0, 0])["accuracy"]
    0.5
"""

_CITATION = """\
@inproceedings{karayev2014recognizing,
  title={Recognizing Image Style},
  author={Karayev, Sergey and Trentacoste, Matthew and Han, Helen and Agarwala, Aseem and
          Darrell, Trevor and Hertzmann, Aaron and Winnemoeller, Holger},
  booktitle={BMVC},
  year={2014}
}
"""


def _average_precisions(targets: np.ndarray, scores: np.ndarray) -> list[float | None]:
    """Per-class sklearn average precision, one class against the rest, over ALL rows (a row without
    any positive, e.g. the 236 AVA style test images without a style, is a negative of every class);
    ``None`` for a class without a single positive reference (its AP is undefined)."""
    return [
        float(average_precision_score(targets[:, k], scores[:, k])) if targets[:, k].any() else None
        for k in range(targets.shape[1])
    ]


def _mean_average_precision(average_precisions: list[float | None]) -> float:
    """Mean over the classes with at least one positive."""
    defined = [ap for ap in average_precisions if ap is not None]
    return float(np.mean(defined)) if defined else float("nan")


class StyleMetrics(evaluate.Metric):
    def _info(self):
        if self.config_name == "multilabel":
            references = datasets.Sequence(datasets.Value("int32"))
        elif self.config_name == "default":
            references = datasets.Value("int64")
        else:
            raise ValueError(f"config_name must be 'default' or 'multilabel', got {self.config_name!r}")
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float32")), "references": references}
            ),
            reference_urls=["https://sergeykarayev.com/files/1311.3715v3.pdf"],
        )

    def _compute(self, predictions, references, threshold: float = 0.5):
        scores = np.asarray([np.asarray(p, dtype=np.float64) for p in predictions])
        if scores.ndim != 2 or len(scores) == 0:
            raise ValueError(f"predictions must be a non-empty [N, K] array of class scores, got shape {scores.shape}")
        num_examples, num_classes = scores.shape
        top_k = min(5, num_classes)
        top_indices = np.argsort(-scores, axis=1, kind="stable")[:, :top_k]
        predicted = top_indices[:, 0]

        if self.config_name == "multilabel":
            targets = np.asarray([np.asarray(r) for r in references]).astype(np.int64)
            if targets.shape != scores.shape:
                raise ValueError(f"multilabel references must have shape {scores.shape}, got {targets.shape}")
            rows = np.arange(num_examples)
            accuracy = float(targets[rows, predicted].astype(bool).mean())
            top5 = float(np.take_along_axis(targets, top_indices, axis=1).any(axis=1).mean())
            decisions = (scores >= threshold).astype(np.int64)
            matrix = None
            macro_f1 = f1_score(targets, decisions, average="macro", zero_division=0)
            precision = precision_score(targets, decisions, average=None, zero_division=0)
            recall = recall_score(targets, decisions, average=None, zero_division=0)
        else:
            labels = np.asarray(references).astype(np.int64).reshape(-1)
            if len(labels) != num_examples:
                raise ValueError(f"got {num_examples} predictions but {len(labels)} references")
            if labels.min() < 0 or labels.max() >= num_classes:
                raise ValueError(
                    f"references must be class ids in [0, {num_classes}), got {labels.min()}..{labels.max()}"
                )
            targets = np.eye(num_classes, dtype=np.int64)[labels]
            accuracy = float((predicted == labels).mean())
            top5 = float((top_indices == labels[:, None]).any(axis=1).mean())
            class_ids = list(range(num_classes))
            matrix = confusion_matrix(labels, predicted, labels=class_ids).tolist()
            # sklearn's own multiclass convention: macro over the classes present in either input
            macro_f1 = f1_score(labels, predicted, average="macro", zero_division=0)
            precision = precision_score(labels, predicted, labels=class_ids, average=None, zero_division=0)
            recall = recall_score(labels, predicted, labels=class_ids, average=None, zero_division=0)

        average_precisions = _average_precisions(targets, scores)
        return {
            "accuracy": accuracy,
            "top5_accuracy": top5,
            "macro_f1": float(macro_f1),
            "precision": precision.tolist(),
            "recall": recall.tolist(),
            "mean_average_precision": _mean_average_precision(average_precisions),
            "average_precision": average_precisions,
            "confusion_matrix": matrix,
            "num_examples": int(num_examples),
        }
