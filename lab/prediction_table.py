"""predict.py's results/predictions.csv: its columns and its rows, one per image, with the TOP most probable classes.
The report reads the file back by the same names (TEXT_COLUMNS). Reads and writes nothing.
"""

import numpy as np
import pandas as pd
from scipy.special import softmax

from lab import operating_points

TOP = 3  # the most probable classes each row names (top1_class, top1_probability, ...), fewer for fewer classes
# the free-text columns (a path, class names), read back exactly as written (artifacts.read_csv)
TEXT_COLUMNS = ("path", "sample", "predicted", *(f"top{k + 1}_class" for k in range(TOP)))


def prediction_columns(classes, score_name, samples=False):
    """The columns of predictions.csv; samples: a cruise's (the `samples` setting), whose rows name their sample."""
    tops = [f"top{k + 1}_{what}" for k in range(min(TOP, len(classes))) for what in ("class", "probability")]
    return (
        ["path", *(["sample"] if samples else []), "predicted", "probability"]
        + tops
        + [f"p_{c}" for c in classes]
        + [f"novelty_{score_name}", "possibly_new", "accepted", "accept_threshold"]
    )


def prediction_rows(rel_paths, logits, novelty, threshold, classes, score_name, accept_thresholds=None, sample=None):
    """One row per image: the predicted class (the logits' argmax, as evaluate.py), its probability, the top
    classes, the full probability vector, the novelty score with its flag, and whether the prediction is accepted
    (accept_thresholds: per class index, from operating_points.csv; None: accepted is left empty); sample: each
    image's sample, in a cruise (None: no sample column)."""
    probabilities = softmax(np.asarray(logits, np.float64), axis=1)
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :TOP]
    rows = np.arange(len(probabilities))
    names = np.asarray(classes, dtype=object)
    frame = {"path": rel_paths, "predicted": names[order[:, 0]], "probability": probabilities[rows, order[:, 0]]}
    if sample is not None:
        frame["sample"] = list(sample)
    for k in range(order.shape[1]):
        frame[f"top{k + 1}_class"] = names[order[:, k]]
        frame[f"top{k + 1}_probability"] = probabilities[rows, order[:, k]]
    for i, c in enumerate(classes):
        frame[f"p_{c}"] = probabilities[:, i]
    frame[f"novelty_{score_name}"] = novelty
    frame["possibly_new"] = novelty > threshold
    if accept_thresholds is None:
        frame["accepted"], frame["accept_threshold"] = None, np.nan
    else:
        frame["accept_threshold"] = np.asarray(accept_thresholds, float)[order[:, 0]]
        accepted = operating_points.accept(order[:, 0], frame["probability"], accept_thresholds)
        frame["accepted"] = accepted & ~frame["possibly_new"]  # a possibly new taxon is never accepted unseen
    return pd.DataFrame(frame, columns=prediction_columns(classes, score_name, sample is not None))
