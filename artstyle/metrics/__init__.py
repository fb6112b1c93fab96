"""Evaluation metrics shipped with the package, loadable offline through `evaluate`."""

from pathlib import Path

STYLE_METRICS_PATH = Path(__file__).resolve().parent / "style_metrics" / "style_metrics.py"


def load_style_metrics(multi_label: bool = False, **kwargs):
    """Load the package's ``style_metrics`` evaluate module from its file (no network access).

    Args:
        multi_label: use the ``"multilabel"`` configuration (multi-hot references).
        **kwargs: forwarded to `evaluate.load` (e.g. ``num_process``, ``process_id``, ``experiment_id``).
    """
    import evaluate

    return evaluate.load(str(STYLE_METRICS_PATH), config_name="multilabel" if multi_label else "default", **kwargs)


__all__ = ["STYLE_METRICS_PATH", "load_style_metrics"]
