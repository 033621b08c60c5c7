"""Test accuracy of the trained model, per class and in total (mission task 3).

Reads checkpoints/best.pth (train.py), results/split.csv and the cached trunk features of the test split.
Writes:
  results/test_metrics.json    accuracy, balanced accuracy, macro F1, per-class accuracy / precision / recall / F1;
                               by_round when the split grew: the first draw's test images and each round's new
                               ones apart, so models before and after the growth compare on the same old images
                               without_catch_all: the same headline metrics over the taxa alone, when some
                               classes are catch-alls (artifacts, detritus, unknown, ...: CATCH_ALL)
  results/test_predictions.csv path, label, predicted, probability (softmax of the predicted class), correct
  results/per_class_metrics.csv  class, precision, recall, f1, support, top_confusion, top_confusion_count
  results/top_confusions.csv   true, predicted, count, share_of_true: every confusion, most frequent first
  results/confusion_matrix.csv counts, true classes as rows, predicted as columns
  figs/confusion_matrix.png    up to 20 classes: counts and row-normalised, a number in each cell; past that the
                               row-normalised matrix, similar classes together (lab/class_matrices.py), bounded size
  results/operating_points.csv per class, the probability above which a prediction is accepted with at least
                               accept_precision precision (accept_confidence), fitted on the VALIDATION split
                               only (lab/operating_points.py) and measured on the test split; with the
                               checkpoint's sha256, read by predict.py. Not written when accept_precision=None
  results/evaluate_manifest.json  the digests of these files and of the checkpoint and split (manifest.py)
"""

import re
import sys

import numpy as np
import pandas as pd
from scipy.special import softmax

from lab import artifacts, cached_features, checkpoint, class_matrices, config, manifest, plotting, runtime, trunk_cache
from lab import operating_points as op

MIN_SUPPORT_TO_RANK = class_matrices.MIN_SUPPORT_TO_RANK
WORST_SHOWN = 10  # classes printed past class_matrices.NUMBERED_UP_TO classes
CATCH_ALL = re.compile(r"(^|[^a-z])(artifacts?|artefacts?|detritus|unknown|junk|bubbles?|badfocus|blurry)([^a-z]|$)")


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
    """Up to class_matrices.NUMBERED_UP_TO classes: counts and row-normalised side by side, a number in each cell, in
    the classes' order. Past it: the row-normalised matrix alone, similar classes together, no numbers (they are in
    results/confusion_matrix.csv), within the size bound."""
    plt = plotting.pyplot()
    normalised = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    n = len(classes)
    if class_matrices.numbered(n):
        size = class_matrices.matrix_inches(n)
        fig, axes = plt.subplots(1, 2, figsize=(2 * size + 3, size), layout="constrained")
        panels = ((axes[0], matrix, "counts", "d"), (axes[1], normalised, "row-normalised (recall)", ".2f"))
    else:
        order = class_matrices.confusion_order(matrix)
        size = class_matrices.matrix_inches(n)
        fig, ax = plt.subplots(figsize=(size + 1.5, size), layout="constrained")
        classes = [classes[i] for i in order]
        title = "row-normalised (recall), similar classes together; counts in results/confusion_matrix.csv"
        panels = ((ax, normalised[np.ix_(order, order)], title, ".2f"),)
    for ax, values, title, fmt in panels:
        image = class_matrices.draw(ax, values, classes, fmt, "Blues")
        ax.set(xlabel="predicted class", ylabel="true class", title=f"Test confusion matrix, {title}")
        fig.colorbar(image, ax=ax, fraction=0.046)
    plotting.save_figure(path, fig)


def per_class_table(matrix, classes, metrics):
    """results/per_class_metrics.csv: each class's precision, recall, F1 and support, and the class it is most
    often taken for (top_confusion, with its count; empty when it never is)."""
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    rows = []
    for i, c in enumerate(classes):
        m = metrics["per_class"][c]
        j = int(off[i].argmax())
        confused = off[i, j] > 0
        rows.append(
            {
                "class": c,
                "precision": m["precision"],
                "recall": m["recall"],
                "f1": m["f1"],
                "support": m["support"],
                "top_confusion": classes[j] if confused else "",
                "top_confusion_count": int(off[i, j]),
            }
        )
    return pd.DataFrame(rows)


def top_confusions(matrix, classes):
    """results/top_confusions.csv: every (true, predicted) pair of distinct classes that occurred, most frequent
    first, with its share of the true class's test images."""
    support = matrix.sum(1)
    true, predicted = np.nonzero(matrix * (1 - np.eye(len(classes), dtype=matrix.dtype)))
    frame = pd.DataFrame(
        {
            "true": [classes[i] for i in true],
            "predicted": [classes[j] for j in predicted],
            "count": matrix[true, predicted],
            "share_of_true": matrix[true, predicted] / support[true],
        }
    )
    return frame.sort_values(["count", "true", "predicted"], ascending=[False, True, True], ignore_index=True)


def catch_all_classes(classes):
    """The classes whose names say they are no taxon (artifacts, detritus, unknown, bubbles, bad focus, ...): the
    ESSD 2026 benchmark reports its headline metrics with them and without them, and so does the lab."""
    return [c for c in classes if CATCH_ALL.search(c.lower())]


def without_catch_all(matrix, classes, metrics):
    """The headline metrics over the taxa alone: accuracy on the images of the other classes, balanced accuracy and
    macro F1 averaged over the other classes (their per-class numbers computed on all predictions); None when no
    class is a catch-all or every class is."""
    catch_all = catch_all_classes(classes)
    kept = [i for i, c in enumerate(classes) if c not in catch_all]
    if not catch_all or not kept:
        return None
    per_class = [metrics["per_class"][classes[i]] for i in kept]
    present = [m for m in per_class if m["support"] > 0]
    images = matrix[kept].sum()
    return {
        "catch_all_classes": catch_all,
        "accuracy": float(matrix[kept, kept].sum() / max(images, 1)),
        "balanced_accuracy": float(np.mean([m["recall"] for m in present])) if present else float("nan"),
        "macro_f1": float(np.mean([m["f1"] for m in per_class if m["support"] > 0 or m["precision"] > 0])),
        "n_test": int(images),
    }


def print_per_class(metrics, table):
    """Every class up to class_matrices.NUMBERED_UP_TO classes; past that, the worst few with enough test images to
    rank (MIN_SUPPORT_TO_RANK), and the file that holds them all."""
    if class_matrices.numbered(len(table)):
        print("\nTest accuracy per class:")
        for c, m in metrics["per_class"].items():
            print(f"  Accuracy of {c:<30}: {100 * m['accuracy']:6.2f} %  ({m['support']} images)")
        return
    ranked = table[table["support"] >= MIN_SUPPORT_TO_RANK].sort_values(["f1", "class"]).head(WORST_SHOWN)
    print(
        f"\n{len(table)} classes: every class's precision, recall, F1 and support are in results/per_class_metrics.csv."
        f"\nThe {len(ranked)} lowest F1 among classes with at least {MIN_SUPPORT_TO_RANK} test images:"
    )
    for row in ranked.to_dict("records"):
        confused = f", most often taken for {row['top_confusion']}" if row["top_confusion"] else ""
        print(
            f"  {row['class']:<40} F1 {row['f1']:.3f}, recall {row['recall']:.3f} ({row['support']} images){confused}"
        )


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
    taxa_only = without_catch_all(matrix, classes, metrics)
    if taxa_only:
        metrics["without_catch_all"] = taxa_only
    table = per_class_table(matrix, classes, metrics)
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
        out.save_csv("results", "per_class_metrics.csv", table)
        out.save_csv("results", "top_confusions.csv", top_confusions(matrix, classes))
        counts = pd.DataFrame(matrix, index=pd.Index(classes, name="true"), columns=classes).reset_index()
        out.save_csv("results", "confusion_matrix.csv", counts)
        if cfg.accept_precision is not None:
            test_outputs = (y_pred, probabilities, y_true)
            points = fitted_operating_points(cfg, model, device, classes, prepared["val"], test_outputs, trained.digest)
            out.save_csv("results", op.FILE, points)
        plot_confusion(matrix, classes, out.file("figs", "confusion_matrix.png"))
        out.publish(checkpoint=trained.digest, split=ckpt["split_digest"])
    print_per_class(metrics, table)
    if cfg.accept_precision is not None:
        print(
            op.summary(points, (y_pred, probabilities.max(1), y_true))
            + f" ({artifacts.out_path(cfg, 'results', op.FILE)})"
        )
    print(f"Accuracy of the network on the {metrics['n_test']} test images: {100 * metrics['accuracy']:.2f} %")
    print(f"Balanced accuracy {100 * metrics['balanced_accuracy']:.2f} %, macro F1 {metrics['macro_f1']:.4f}")
    if taxa_only:
        catch_all = taxa_only["catch_all_classes"]
        named = ", ".join(catch_all[:4]) + (" ..." if len(catch_all) > 4 else "")
        print(
            f"Without the {len(catch_all)} catch-all class(es) ({named}): "
            f"accuracy {100 * taxa_only['accuracy']:.2f} %, "
            f"balanced accuracy {100 * taxa_only['balanced_accuracy']:.2f} %, macro F1 {taxa_only['macro_f1']:.4f}"
        )
    for r, m in (by_round or {}).items():
        print(
            f"  {'the first draw' if r == '0' else f'added in round {r}'}: {m['n_test']} test images, accuracy "
            f"{100 * m['accuracy']:.2f} %"
        )
    return metrics


if __name__ == "__main__":
    runtime.run_main(lambda: main(sys.argv[1:]))
