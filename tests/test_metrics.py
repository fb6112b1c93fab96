"""The shipped `evaluate` module against scikit-learn on fixed inputs, and offline loading."""

import socket

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, confusion_matrix, f1_score, precision_score, recall_score

from artstyle.metrics import STYLE_METRICS_PATH, load_style_metrics

SCORES = np.array(
    [
        [0.70, 0.20, 0.05, 0.05],
        [0.10, 0.60, 0.20, 0.10],
        [0.30, 0.40, 0.20, 0.10],
        [0.05, 0.05, 0.10, 0.80],
        [0.25, 0.25, 0.30, 0.20],
        [0.10, 0.20, 0.30, 0.40],
        [0.50, 0.10, 0.10, 0.30],
        [0.20, 0.50, 0.20, 0.10],
    ],
    dtype=np.float32,
)
LABELS = np.array([0, 1, 0, 3, 2, 2, 3, 1])


@pytest.fixture(scope="module")
def metrics():
    """Both configurations, loaded with every outgoing connection refused (proves offline loading)."""

    def refuse(*args, **kwargs):
        raise OSError("network access attempted while loading the metric")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", refuse)
        patch.setattr(socket, "create_connection", refuse)
        single = load_style_metrics(keep_in_memory=True)
        multi = load_style_metrics(multi_label=True, keep_in_memory=True)
    return single, multi


def test_module_file_is_inside_the_package():
    assert STYLE_METRICS_PATH.is_file()
    assert STYLE_METRICS_PATH.parent.parent.name == "metrics"


def test_single_label_matches_sklearn(metrics):
    result = metrics[0].compute(predictions=SCORES, references=LABELS)
    predicted = SCORES.argmax(axis=1)
    assert result["accuracy"] == pytest.approx((predicted == LABELS).mean())  # 5 of 8
    assert result["accuracy"] == pytest.approx(5 / 8)
    assert result["macro_f1"] == pytest.approx(f1_score(LABELS, predicted, average="macro"))
    assert result["precision"] == pytest.approx(precision_score(LABELS, predicted, average=None).tolist())
    assert result["recall"] == pytest.approx(recall_score(LABELS, predicted, average=None).tolist())
    assert result["confusion_matrix"] == confusion_matrix(LABELS, predicted).tolist()
    onehot = np.eye(4)[LABELS]
    expected_map = np.mean([average_precision_score(onehot[:, k], SCORES[:, k]) for k in range(4)])
    assert result["mean_average_precision"] == pytest.approx(expected_map)
    assert result["mean_average_precision"] == pytest.approx(average_precision_score(onehot, SCORES, average="macro"))
    assert result["num_examples"] == 8


def test_top5_is_top_k_with_k_capped_by_classes(metrics):
    scores = np.tile(np.linspace(1.0, 0.0, 7, dtype=np.float32), (3, 1))  # ranking 0,1,...,6
    result = metrics[0].compute(predictions=scores, references=[4, 5, 6])
    assert result["top5_accuracy"] == pytest.approx(1 / 3)  # only class 4 is within the top 5
    assert result["accuracy"] == 0.0
    # with 4 classes, "top-5" covers every class
    assert metrics[0].compute(predictions=SCORES, references=LABELS)["top5_accuracy"] == 1.0


def test_classes_without_examples_are_left_out_of_map(metrics):
    labels = np.array([0, 1, 0, 1, 0, 1, 0, 1])  # classes 2 and 3 never occur
    result = metrics[0].compute(predictions=SCORES, references=labels)
    expected = np.mean([average_precision_score(labels == k, SCORES[:, k]) for k in (0, 1)])
    assert result["mean_average_precision"] == pytest.approx(expected)
    assert len(result["confusion_matrix"]) == 4  # still K x K
    assert result["recall"][2] == 0.0


def test_multilabel_matches_sklearn(metrics):
    targets = np.array(
        [[1, 0, 0, 1], [0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0], [0, 1, 1, 0], [0, 0, 0, 1], [1, 0, 1, 0]]
    )
    result = metrics[1].compute(predictions=SCORES, references=targets)
    assert result["mean_average_precision"] == pytest.approx(average_precision_score(targets, SCORES, average="macro"))
    top1 = SCORES.argmax(axis=1)
    assert result["accuracy"] == pytest.approx(targets[np.arange(8), top1].mean())
    decisions = (SCORES >= 0.5).astype(int)
    assert result["macro_f1"] == pytest.approx(f1_score(targets, decisions, average="macro", zero_division=0))
    assert result["confusion_matrix"] is None


def test_bad_inputs_raise_clear_errors(metrics):
    with pytest.raises(ValueError, match="class ids in"):
        metrics[0].compute(predictions=SCORES, references=[0, 1, 2, 3, 4, 0, 0, 0])
    with pytest.raises(ValueError, match="multilabel references must have shape"):
        metrics[1].compute(predictions=SCORES, references=[[1, 0]] * 8)


def test_plots_per_class_accuracy_and_files(tmp_path):
    from PIL import Image

    from artstyle.plots import per_class_accuracy, plot_confusion_matrix, plot_per_class_accuracy

    confusion = [[3, 1, 0], [0, 0, 0], [1, 1, 2]]
    accuracy = per_class_accuracy(confusion)
    assert accuracy[0] == pytest.approx(0.75) and np.isnan(accuracy[1]) and accuracy[2] == pytest.approx(0.5)
    names = ["a", "b", "c"]
    for plot, name in ((plot_confusion_matrix, "cm.png"), (plot_per_class_accuracy, "acc.png")):
        path = plot(confusion, names, tmp_path / "sub" / name)
        assert Image.open(path).size[0] > 100
    with pytest.raises(ValueError, match="class_names has 2 names"):
        plot_confusion_matrix(confusion, ["a", "b"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="must be square"):
        plot_per_class_accuracy([[1, 2]], ["a"], tmp_path / "x.png")


def test_multilabel_map_by_hand_with_an_all_zero_row(metrics):
    """3 classes, 5 rows; row 4 has no positive (like 236 AVA style test images): a negative of every class.

    class 0: positives rows 0, 2; ranking by score 0:.9 1:.8 2:.7 4:.6 3:.1 -> hits at ranks 1, 3 -> AP = (1 + 2/3)/2
    class 1: positive row 1;     ranking 4:.9 1:.5 0:.4 ...                 -> hit at rank 2     -> AP = 1/2
    class 2: positives 1, 3;     ranking 3:.8 4:.7 1:.6 ...                 -> hits at ranks 1, 3 -> AP = (1 + 2/3)/2
    Dropping row 4 would give APs (1 + 2/3)/2, 1, 1: a different, not comparable, mean.
    """
    targets = [[1, 0, 0], [0, 1, 1], [1, 0, 0], [0, 0, 1], [0, 0, 0]]
    scores = [[0.9, 0.4, 0.2], [0.8, 0.5, 0.6], [0.7, 0.1, 0.3], [0.1, 0.2, 0.8], [0.6, 0.9, 0.7]]
    result = metrics[1].compute(predictions=scores, references=targets)
    expected = [(1 + 2 / 3) / 2, 1 / 2, (1 + 2 / 3) / 2]
    assert result["average_precision"] == pytest.approx(expected)
    assert result["mean_average_precision"] == pytest.approx(np.mean(expected))  # 0.7222...
    assert result["num_examples"] == 5
    assert result["accuracy"] == pytest.approx(3 / 5)  # the all-zero row is never a top-1 hit
    without = metrics[1].compute(predictions=scores[:4], references=targets[:4])
    assert without["average_precision"] == pytest.approx([(1 + 2 / 3) / 2, 1.0, 1.0])


def test_per_class_ap_is_none_for_a_class_without_positives(metrics):
    labels = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    result = metrics[0].compute(predictions=SCORES, references=labels)
    aps = result["average_precision"]
    assert aps[2] is None and aps[3] is None
    assert aps[:2] == pytest.approx([average_precision_score(labels == k, SCORES[:, k]) for k in (0, 1)])
    assert result["mean_average_precision"] == pytest.approx(np.mean(aps[:2]))
