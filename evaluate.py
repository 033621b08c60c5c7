"""Test accuracy of the trained model, per class and in total (mission task 3).

Reads checkpoints/best.pth (train.py), results/split.csv and the cached trunk features of the test split.
Writes:
  results/test_metrics.json    accuracy, balanced accuracy, macro F1, per-class accuracy / precision / recall / F1;
                               by_round when the split grew: the first draw's test images and each round's new
                               ones apart, so models before and after the growth compare on the same old images
  results/test_predictions.csv path, label, predicted, probability (softmax of the predicted class), correct
  figs/confusion_matrix.png    counts and row-normalised, class names on both axes
  results/operating_points.csv per class, the probability above which a prediction is accepted with at least
                               accept_precision precision (accept_confidence), fitted on the VALIDATION split
                               only (lab/operating_points.py) and measured on the test split; with the
                               checkpoint's sha256, read by predict.py. Not written when accept_precision=None
  results/evaluate_manifest.json  the digests of these files and of the checkpoint and split (manifest.py)
"""

import sys

import numpy as np
import pandas as pd
from scipy.special import softmax

from lab import artifacts, cached_features, checkpoint, config, manifest, plotting, runtime, trunk_cache
from lab import operating_points as op


def confusion_matrix(y_true, y_pred, n_classes):
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix


def metrics_from_confusion(matrix, classes):
    """Accuracy, balanced accuracy (mean recall) and macro F1, as scikit-learn defines them."""
    tp = np.diag(matrix).astype(float)
    support, predicted = matrix.sum(1), matrix.sum(0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=precision + recall > 0)
    present = support > 0
    per_class = {}
    for i, c in enumerate(classes):
        per_class[c] = {
            "accuracy": float(recall[i]),
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
    return {
        "accuracy": float(tp.sum() / max(matrix.sum(), 1)),
        "balanced_accuracy": float(recall[present].mean()),
        "macro_f1": float(f1[present | (predicted > 0)].mean()),  # sklearn: classes true or predicted
        "n_test": int(matrix.sum()),
        "per_class": per_class,
    }


def accuracy_by_round(rows, correct):
    """{round: test images, accuracy} when the split grew (round 0: the first draw's test images), else None."""
    rounds = pd.to_numeric(rows["round"]) if "round" in rows else pd.Series(0, index=rows.index)
    if rounds.max() == 0:
        return None
    return {
        str(r): {"n_test": int((rounds == r).sum()), "accuracy": float(correct[(rounds == r).to_numpy()].mean())}
        for r in sorted(rounds.unique())
    }


def plot_confusion(matrix, classes, path):
    plt = plotting.pyplot()
    normalised = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    size = 3 + 0.7 * len(classes)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 3, size), layout="constrained")
    panels = ((axes[0], matrix, "counts", "d"), (axes[1], normalised, "row-normalised (recall)", ".2f"))
    for ax, values, title, fmt in panels:
        image = ax.imshow(values, cmap="Blues")
        ax.set(
            xticks=range(len(classes)),
            yticks=range(len(classes)),
            xlabel="predicted class",
            ylabel="true class",
            title=f"Test confusion matrix, {title}",
        )
        ax.set_xticklabels(plotting.drawable_names(classes), rotation=45, ha="right")
        ax.set_yticklabels(plotting.drawable_names(classes))
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(
                    j,
                    i,
                    format(values[i, j], fmt),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if values[i, j] > values.max() / 2 else "black",
                )
        fig.colorbar(image, ax=ax, fraction=0.046)
    plotting.save_figure(path, fig)


def fitted_operating_points(cfg, model, device, classes, val, test, digest):
    """operating_points.csv's table: thresholds fitted on the validation split alone (never a test image), measured
    on the test split, given as (predicted class index, probabilities, true class index)."""
    logits = cached_features.head_outputs(model, val, device, cfg.batch_size)[0]
    probabilities = softmax(logits.astype(np.float64), axis=1)
    predicted, labels = probabilities.argmax(1), val.labels.numpy()
    test_predicted, test_probabilities, test_labels = test
    return op.operating_points(
        classes,
        (predicted, probabilities.max(1), labels),
        (test_predicted, test_probabilities.max(1), test_labels),
        cfg.accept_precision,
        cfg.accept_confidence,
        digest,
    )


def main(argv=None):
    cfg = config.load_config(argv, __doc__)
    config.print_settings(cfg)
    artifacts.ensure_output_dirs(cfg, ("results", "figs", "cache"))
    trained = checkpoint.load_trained(cfg, made_for="test accuracies")
    cfg, ckpt, model, device = trained.cfg, trained.ckpt, trained.model, trained.device
    prepared = trunk_cache.prepare(
        cfg, device, trained.split, model, ckpt["weights"], trained.trunk_dtype, names=("val", "test")
    )
    test = prepared["test"]
    classes = ckpt["classes"]
    logits = cached_features.head_outputs(model, test, device, cfg.batch_size)[0]
    probabilities = softmax(logits.astype(np.float64), axis=1)
    y_pred = probabilities.argmax(1)
    y_true = test.labels.numpy()
    matrix = confusion_matrix(y_true, y_pred, len(classes))
    metrics = metrics_from_confusion(matrix, classes)
    metrics.update(
        {
            "checkpoint_epoch": ckpt["epoch"],
            "checkpoint_saved_at": ckpt.get("saved_at"),
            "checkpoint_sha256": trained.digest,
            "trunk_weights": ckpt["weights"],
            "random_trunk": trained.random_trunk,
            "confusion_matrix": matrix.tolist(),
        }
    )
    rows = test.rows
    by_round = accuracy_by_round(rows, y_pred == y_true)
    if by_round:
        metrics["by_round"] = by_round
    with manifest.OutputSet(cfg, "evaluate") as out:
        out.save_csv(
            "results",
            "test_predictions.csv",
            pd.DataFrame(
                {
                    "path": rows["path"].values,
                    "label": rows["label"].values,
                    "predicted": [classes[i] for i in y_pred],
                    "probability": probabilities[np.arange(len(y_pred)), y_pred],
                    "correct": y_pred == y_true,
                }
            ),
        )
        out.save_json("results", "test_metrics.json", metrics)
        if cfg.accept_precision is not None:
            test_outputs = (y_pred, probabilities, y_true)
            points = fitted_operating_points(cfg, model, device, classes, prepared["val"], test_outputs, trained.digest)
            out.save_csv("results", op.FILE, points)
        plot_confusion(matrix, classes, out.file("figs", "confusion_matrix.png"))
        out.publish(checkpoint=trained.digest, split=ckpt["split_digest"])
    print("\nTest accuracy per class:")
    for c, m in metrics["per_class"].items():
        print(f"  Accuracy of {c:<30}: {100 * m['accuracy']:6.2f} %  ({m['support']} images)")
    print(f"Accuracy of the network on the {metrics['n_test']} test images: {100 * metrics['accuracy']:.2f} %")
    print(f"Balanced accuracy {100 * metrics['balanced_accuracy']:.2f} %, macro F1 {metrics['macro_f1']:.4f}")
    for r, m in (by_round or {}).items():
        print(
            f"  {'the first draw' if r == '0' else f'added in round {r}'}: {m['n_test']} test images, accuracy "
            f"{100 * m['accuracy']:.2f} %"
        )
    return metrics


if __name__ == "__main__":
    runtime.run_main(lambda: main(sys.argv[1:]))
