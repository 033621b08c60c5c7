"""Operating points with a guaranteed precision: per class, the probability above which a prediction is accepted
without a look, certified on the validation split so that the accepted predictions have at least accept_precision
precision with accept_confidence confidence (docs/operating-points.md).

The certificate is Learn-then-Test (Angelopoulos et al. 2021) with fixed-sequence testing. The thresholds are a
fixed grid (THRESHOLDS), tested from the top down; at each threshold the accepted calibration images (predicted
as the group's classes, with a probability at or above it) give a one-sided Clopper-Pearson lower bound on their
precision, and the threshold passes when that bound reaches the target. The first threshold that fails stops the
sequence; the certified threshold is the lowest one that passed before it. The sequence starts at the first
threshold that accepts `start_images` calibration images: thresholds that accept fewer than `min_images` (45 at
0.95 and 0.9) cannot pass even with every image right, and a start that needs every one of the top 45 right
fails on one error (the reference code of Angelopoulos & Bates's "Gentle introduction" also starts at a count).
The start allows as many errors as half of the group's images can certify (e.g. 1 error in 77 images for 200),
so it depends on how many images the group has, never on which of them are right: each test stays exact.

Scopes, the default design (a per-class bound alone would accept almost nothing at val_fraction 0.05):
  class   a class with at least min_images validation images predicted as it, whose own images certify a threshold
  pooled  the other classes (too few images, or their own bound certified nothing) are pooled: one threshold, one
          bound, for their accepted predictions together (a class that failed alone joins the pool: on ndsb9, 53
          images of a 98 %-accurate class failed on one error among its top 45, while the pool certified)
  none    nothing certified: no prediction of the class is accepted
Each class's bound, and the pooled bound, holds with accept_confidence on its own (per class), not for every
class at once: the chance that all of them hold together can be lower (Bonferroni: at least 1 - groups x delta).

The bound is scipy.stats.beta.ppf(delta, k, n - k + 1), the closed form of the exact (Clopper-Pearson) interval,
the number that binomtest(k, n).proportion_ci(method="exact") gives (tested); beta.ppf takes arrays, so every
threshold of the grid, and the benchmark's hundreds of redraws, are one call each instead of a loop of binomtest.

Reads (load) results/operating_points.csv, written by evaluate.py; writes nothing itself.
"""

import math

import numpy as np
import pandas as pd
from scipy.stats import beta

from lab import artifacts

# The fixed sequence of thresholds, from the top down: 1 - 10^-x for x from 6 to 0 in steps of 0.025 (241 values,
# fine near 1, where a trained model's probabilities crowd; 0 last, which accepts every prediction).
THRESHOLDS = 1.0 - 10.0 ** -np.round(np.arange(6.0, -0.0125, -0.025), 3)
COLUMNS = (
    "class",
    "scope",
    "threshold",
    "calibration_images",
    "accepted_calibration",
    "precision_lower_bound",
    "test_precision",
    "test_coverage",
    "accept_precision",
    "accept_confidence",
    "checkpoint_sha256",
)
FILE = "operating_points.csv"
START_SHARE = 0.5  # the sequence starts where it may accept up to this share of the group (start_images)
MADE_BY = "evaluate.py"


# --------------------------------------------------------------------------- the statistics
def lower_bound(correct, accepted, confidence):
    """One-sided Clopper-Pearson lower bound on a precision from `correct` of `accepted` images (arrays or
    numbers): the true precision is at least this with `confidence`. 0 where nothing is correct or accepted."""
    correct, accepted = np.asarray(correct, float), np.asarray(accepted, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        bound = beta.ppf(1.0 - confidence, np.maximum(correct, 1e-300), accepted - correct + 1.0)
    return np.where((correct > 0) & (accepted > 0), bound, 0.0)


def min_images(target, confidence):
    """The fewest accepted images that can certify `target` at `confidence`, all of them correct: the smallest n
    with target^n <= 1 - confidence (45 for 0.95 at 0.9)."""
    n = math.ceil(math.log(1.0 - confidence) / math.log(target))
    return n if lower_bound(n, n, confidence) >= target else n + 1  # a rounding at the edge errs on the safe side


def start_images(total, target, confidence):
    """Where the fixed sequence starts, in accepted images: the most that can certify `target` with e errors (e as
    large as keeps them at most half of the group's `total` images; 0 errors at least: min_images)."""
    start, errors = min_images(target, confidence), 0
    while True:
        errors += 1
        n = start + 1
        while lower_bound(n - errors, n, confidence) < target:
            n += 1
        if n > total * START_SHARE:
            return start
        start = n


def certify(probability, correct, target, confidence, thresholds=THRESHOLDS):
    """Fixed-sequence test of the grid on one group's calibration images (the predicted class's probability, and
    whether the prediction was right). Returns (threshold, accepted, lower bound) of the lowest certified threshold,
    or None when none is certified."""
    return _certify_sorted(*_sorted(probability, correct), target, confidence, thresholds)


def _sorted(probability, correct):
    order = np.argsort(np.asarray(probability, float), kind="stable")
    return np.asarray(probability, float)[order], np.asarray(correct, bool)[order]


def accepted_counts(sorted_probability, sorted_correct, thresholds=THRESHOLDS):
    """(accepted, correct among them) at every threshold, for probabilities sorted ascending."""
    first = np.searchsorted(sorted_probability, thresholds, side="left")
    correct_above = np.r_[np.cumsum(sorted_correct[::-1])[::-1], 0]
    return len(sorted_probability) - first, correct_above[first]


def _certify_sorted(sorted_probability, sorted_correct, target, confidence, thresholds):
    accepted, correct = accepted_counts(sorted_probability, sorted_correct, thresholds)
    testable = np.flatnonzero(accepted >= start_images(len(sorted_probability), target, confidence))
    if not len(testable):
        return None
    bounds = lower_bound(correct, accepted, confidence)
    steps = np.arange(testable[0], len(thresholds))
    failed = steps[bounds[steps] < target]
    last = (failed[0] if len(failed) else len(thresholds)) - 1
    if last < testable[0]:
        return None
    return float(thresholds[last]), int(accepted[last]), float(bounds[last])


# --------------------------------------------------------------------------- the table
def fit(classes, predicted, probability, correct, target, confidence):
    """The operating points from calibration images (predicted class index, its probability, right or wrong): one
    row per class with its scope, threshold, calibration_images (images predicted as it), accepted_calibration and
    precision_lower_bound (its own, or the pooled group's)."""
    predicted, probability, correct = np.asarray(predicted), np.asarray(probability, float), np.asarray(correct, bool)
    needed = min_images(target, confidence)
    counts = np.bincount(predicted, minlength=len(classes))
    rows = []
    for i, c in enumerate(classes):
        row = {"class": c, "scope": "none", "threshold": np.nan, "calibration_images": int(counts[i])}
        if counts[i] >= needed:
            mine = predicted == i
            found = certify(probability[mine], correct[mine], target, confidence)
            if found:
                row.update(scope="class", threshold=found[0], precision_lower_bound=found[2])
        rows.append(row)
    small = np.array([row["scope"] != "class" for row in rows])
    pooled = certify(probability[small[predicted]], correct[small[predicted]], target, confidence)
    for i, row in enumerate(rows):
        if small[i] and pooled:
            row.update(scope="pooled", threshold=pooled[0], precision_lower_bound=pooled[2])
        threshold = row["threshold"]
        row["accepted_calibration"] = int(((predicted == i) & (probability >= threshold)).sum())
    table = pd.DataFrame(rows)
    if "precision_lower_bound" not in table:
        table["precision_lower_bound"] = np.nan
    return table


def accept(predicted, probability, thresholds):
    """Which predictions are accepted: probability at or above the threshold of the predicted class (an index into
    `thresholds`; NaN: no threshold, never accepted)."""
    limit = np.asarray(thresholds, float)[np.asarray(predicted)]
    return np.nan_to_num(limit, nan=np.inf) <= np.asarray(probability, float)


def measured(classes, predicted, probability, labels, thresholds):
    """Per class, on labelled images the thresholds never saw: precision of the accepted predictions of it (NaN
    when none is accepted) and coverage, the share of its images accepted under their right class."""
    predicted, labels = np.asarray(predicted), np.asarray(labels)
    accepted = accept(predicted, probability, thresholds)
    right = predicted == labels
    n = len(classes)
    accepted_as = np.bincount(predicted[accepted], minlength=n)
    correct_as = np.bincount(predicted[accepted & right], minlength=n)
    images = np.bincount(labels, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(accepted_as > 0, correct_as / np.maximum(accepted_as, 1), np.nan)
        coverage = np.where(images > 0, correct_as / np.maximum(images, 1), np.nan)
    return precision, coverage


def operating_points(classes, calibration, test, target, confidence, checkpoint_digest):
    """operating_points.csv's table: fitted on `calibration` only, measured on `test`; each is (predicted class
    index, its probability, true class index)."""
    cal_predicted, cal_probability, cal_labels = (np.asarray(a) for a in calibration)
    table = fit(classes, cal_predicted, cal_probability, cal_predicted == cal_labels, target, confidence)
    table["test_precision"], table["test_coverage"] = measured(classes, *test, table["threshold"].to_numpy())
    table["accept_precision"], table["accept_confidence"] = target, confidence
    table["checkpoint_sha256"] = checkpoint_digest
    return table[list(COLUMNS)]


def summary(table, test):
    """One line for evaluate.py's print-out: how many classes are accepted on their own bound, pooled or not at all,
    and on the test split (predicted class index, its probability, true class index) the share of its images
    accepted under their right class (coverage) and the precision of everything accepted."""
    predicted, probability, labels = (np.asarray(a) for a in test)
    accepted = accept(predicted, probability, table["threshold"].to_numpy(float))
    right = accepted & (predicted == labels)
    scopes = table["scope"].value_counts()
    precision = f"{right.sum() / accepted.sum():.3f}" if accepted.any() else "none accepted"
    target, confidence = float(table["accept_precision"].iloc[0]), float(table["accept_confidence"].iloc[0])
    return (
        f"[operating points] precision >= {target:g} at confidence {confidence:g}: {int(scopes.get('class', 0))} "
        f"classes on their own bound, {int(scopes.get('pooled', 0))} pooled, {int(scopes.get('none', 0))} never "
        f"accepted; on the test split {right.sum()} of {len(labels)} images accepted under their right class "
        f"(coverage {right.sum() / max(len(labels), 1):.3f}), precision of the accepted {precision}"
    )


# --------------------------------------------------------------------------- predict.py's side
def command(cfg):
    return f"python {MADE_BY}" + (f" --output_dir={cfg.output_dir}" if str(cfg.output_dir) != "." else "")


def load(cfg, classes, checkpoint_digest):
    """(thresholds per class index, None) from results/operating_points.csv when it was made for this checkpoint,
    these classes and the current accept_precision / accept_confidence; else (None, why not, with the command that
    makes it). accept_precision=None: (None, that it is off)."""
    if cfg.accept_precision is None:
        return None, "accept_precision=None turns accepting off"
    path = artifacts.out_path(cfg, "results", FILE)
    fix = f"`{command(cfg)}` makes it for the current checkpoint and settings"
    if not path.is_file():
        return None, f"{path} does not exist: {fix}"
    try:
        table = pd.read_csv(path, dtype={"class": str, "checkpoint_sha256": str}, keep_default_na=False)
        table["threshold"] = pd.to_numeric(table["threshold"].replace("", np.nan))
        target, confidence = float(table["accept_precision"].iloc[0]), float(table["accept_confidence"].iloc[0])
        made_for = table["checkpoint_sha256"].iloc[0]
    except (OSError, ValueError, KeyError, IndexError, pd.errors.ParserError):
        return None, f"{path} is damaged or of an earlier version of the lab: {fix}"
    if made_for != checkpoint_digest or list(table["class"]) != list(classes):
        return None, f"{path} was made for another checkpoint than checkpoints/best.pth now holds: {fix}"
    if not (math.isclose(target, cfg.accept_precision) and math.isclose(confidence, cfg.accept_confidence)):
        return None, (
            f"{path} was made for accept_precision={target:g}, accept_confidence={confidence:g} (the settings say "
            f"{cfg.accept_precision:g}, {cfg.accept_confidence:g}): {fix}"
        )
    return table["threshold"].to_numpy(float), None
