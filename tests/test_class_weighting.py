"""class_weighting: inverse-frequency weights as scikit-learn's, recorded in the checkpoint, and the rare classes
of an imbalanced real subset of ndsb9 (symbolic links into ../shared, never copies) recalled better."""

import numpy as np
import pytest
from conftest import FAST, NDSB9_SEEN, NDSB9_UNSEEN, shared_dataset
from sklearn.utils.class_weight import compute_class_weight

import evaluate
import lab
import train
from bench.bench_imbalance import build_imbalanced_root
from lab import artifacts, checkpoint, config, head_training


def test_balanced_weights_equal_sklearns_and_none_means_plain_cross_entropy():
    labels = np.repeat([0, 1, 2, 3], [50, 5, 20, 1])
    weights = head_training.class_weights(labels, 4, "balanced")
    assert weights.numpy() == pytest.approx(compute_class_weight("balanced", classes=np.arange(4), y=labels))
    assert float((weights.numpy()[labels]).mean()) == pytest.approx(1.0)  # the loss keeps its scale
    assert head_training.class_weights(labels, 4, "none") is None


def test_a_class_missing_from_the_labels_weighs_0_and_the_others_keep_their_weights():
    """An audit fold can lack a rare class, which compute_class_weight refuses: it weighs 0, and every other class
    n / (classes x n_class) with all 5 classes counted, brute force."""
    labels = np.repeat([0, 1, 3], [50, 5, 20])  # classes 2 and 4 have no image
    weights = head_training.class_weights(labels, 5, "balanced").numpy()
    expected = np.array([75 / (5 * 50), 75 / (5 * 5), 0.0, 75 / (5 * 20), 0.0], np.float32)
    assert weights.tolist() == expected.tolist()
    with pytest.raises(ValueError):  # why class_weights does not hand it every class
        compute_class_weight("balanced", classes=np.arange(5), y=labels)


def test_an_unknown_weighting_is_refused_before_work():
    with pytest.raises(lab.LabError, match="class_weighting='inverse' must be one of 'none', 'balanced'"):
        config.load_config(["--class_weighting=inverse"])


@pytest.mark.slow
def test_balanced_weighting_raises_the_rare_classes_recall_on_imbalanced_real_plankton(tmp_path):
    source = shared_dataset("ndsb9")
    seen, unseen = NDSB9_SEEN, NDSB9_UNSEEN[:2]
    counts = build_imbalanced_root(
        source, tmp_path / "data", seen, unseen, counts=(400, 200, 100, 50, 25, 25), unseen_count=10
    )
    rare = [c for c in seen if counts[c] <= 50]
    argv = [
        f"--data_root={str(tmp_path / 'data')!r}",
        f"--output_dir={str(tmp_path / 'out')!r}",
        f"--seen_classes={seen!r}",
        f"--unseen_classes={unseen!r}",
        *FAST,
        # the weighting's own effect, measured with the early-stopping rule it was measured with: averaged weights
        # (the default) lift the unweighted model's rare classes too (docs/training-recipe.md)
        "--stopping=raw",
    ]
    recall = {}
    for weighting in ("none", "balanced"):
        train.main(argv + [f"--class_weighting={weighting!r}"])
        ckpt = checkpoint.load(artifacts.out_path(config.load_config(argv), "checkpoints", "best.pth"))
        assert ckpt["config"]["class_weighting"] == weighting
        metrics = evaluate.main(argv)
        recall[weighting] = np.mean([metrics["per_class"][c]["recall"] for c in rare])
    assert recall["balanced"] > recall["none"] + 0.1, recall
    assert not list((tmp_path / "out").rglob("*.jpg")), "the images are read in place, never copied"
