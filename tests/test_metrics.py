import numpy as np

from edgekd.metrics import classification_report, confusion_matrix


def test_confusion_and_macro_f1_by_hand() -> None:
    y = np.array([0, 0, 1, 1, 2])
    p = np.array([0, 1, 1, 1, 0])
    cm = confusion_matrix(y, p, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    rep = classification_report(y, p, 3)
    # class 0: tp 1, support 2, predicted 2 -> f1 = 2/4 = 0.5
    # class 1: tp 2, support 2, predicted 3 -> f1 = 4/5 = 0.8
    # class 2: tp 0, support 1, predicted 0 -> f1 = 0
    assert rep["accuracy"] == 3 / 5
    assert np.isclose(rep["macro_f1"], (0.5 + 0.8 + 0.0) / 3)


def test_absent_class_is_not_averaged() -> None:
    rep = classification_report(np.array([0, 1]), np.array([0, 1]), 4)
    assert rep["macro_f1"] == 1.0
