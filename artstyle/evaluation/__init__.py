"""Evaluation of style representations.

- `extract_features` runs a (frozen) encoder over a dataloader and returns ``pooler_output`` features.
- `knn_classify` is the weighted k-nearest-neighbour classifier of DINO (Caron et al. 2021): cosine
  similarity, the ``k`` nearest training features vote for their class with weight
  ``exp(similarity / temperature)``; `knn_accuracy` scores an encoder with it (online monitor).
- `train_linear_probe` fits a linear classifier on frozen features and folds the feature
  standardisation into its weights, so the result can be copied into the classification head.
- `predict_scores`, `compute_metrics`, `scalar_metrics`: scoring a classifier and its metrics;
  `load_labelled_splits`: which split selects the model and which label column scores each split.
- `layer_decay_param_groups` lives in `artstyle.training.optim` (an optimizer concern); it is re-exported here.
"""

from ..training.optim import layer_decay_param_groups
from .classification import SCALAR_METRICS, compute_metrics, predict_scores, scalar_metrics, scores_from_logits
from .features import extract_features, get_encoder
from .knn import knn_accuracy, knn_classify, knn_scores
from .probe import fit_linear_probe, train_linear_probe
from .splits import StyleData, build_dataloaders, load_labelled_splits

__all__ = [
    "SCALAR_METRICS",
    "StyleData",
    "build_dataloaders",
    "compute_metrics",
    "extract_features",
    "fit_linear_probe",
    "get_encoder",
    "knn_accuracy",
    "knn_classify",
    "knn_scores",
    "layer_decay_param_groups",
    "load_labelled_splits",
    "predict_scores",
    "scalar_metrics",
    "scores_from_logits",
    "train_linear_probe",
]
