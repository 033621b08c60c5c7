"""Abundances: how many images of each seen taxon a sample holds, corrected for prior shift, with 95 % intervals.

Counting the predicted classes ("classify and count", prediction_counts.csv) is biased whenever the sample's
class proportions differ from the training set's: the classifier's errors flow from the common classes into the
rare ones. The quantification literature corrects for this (Forman 2008; Bella et al. 2010; Saerens et al. 2002;
for plankton González et al. 2019). The methods, all QuaPy's (Moreo et al.), none re-derived here:
  cc    classify and count: the share of images predicted as each class (the biased baseline)
  acc   adjusted CC: solves q = M p for p, with M[i, j] = P(predicted i | true j) measured on calibration images
  pcc   probabilistic CC: the mean probability vector of the sample's images
  pacc  probabilistic ACC: PCC adjusted by each true class's mean probability vector on calibration images
  emq   the EM re-calibration of Saerens, Latinne & Decaestecker (2002), also called SLD: re-weights every image's
        probabilities for a new prior until that prior equals their mean; it needs only the training prior
  emq_bcts, emq_nbvs   emq on probabilities first re-calibrated on the calibration images (Alexandari et al.
        2020): bias-corrected temperature scaling, or vector scaling without bias; EM trusts the probabilities,
        and a head trained to fit its training images is over-confident on others
Calibration data (abundance_calibration), never a test image (they are kept for the measurement,
bench/bench_abundances.py):
  validation   the default: the validation split's embeddings (embeddings_val.pkl) through the classifier's last
               layer, which never trained on them
  out_of_fold  the label audit's out-of-fold probabilities of the training and validation images (audit.py, of
               this checkpoint): each from a head trained, by the main run's rules, on nine tenths of the other
               folds' training and validation images only and stopped on the rest; about 16 times as many
               (QuaPy's val_split=k does the same). Measured worse on ndsb9: the fold heads are not the model,
               and their confusions were not its confusions
The table's calibration column names the one used.
Images flagged possibly new are left out of both the sample's and the calibration's images, so that the
correction is measured on the population it is applied to; the sample's flagged images are counted apart.

Uncertainty: a 95 % percentile interval over `draws` bootstrap resamples of the sample's images and, for the
methods that use calibration data (all but cc, pcc and emq), of the calibration images within each class (the
class sizes of a calibration set are fixed by design, and a class must not vanish from a draw).

Reads (sample_abundances) results/predictions.csv (its p_<class> and possibly_new columns),
embeddings/embeddings_val.pkl, and for out_of_fold results/label_issues.csv (audit.py's, of this checkpoint) and
embeddings/embeddings_train.pkl; writes nothing: predict.py saves the table as results/abundances.csv.
"""

import contextlib
import sys
import warnings
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy.special import softmax
from sklearn.base import BaseEstimator, ClassifierMixin

import lab
from lab import artifacts, embedding_files, manifest, splitting

METHODS = ("cc", "acc", "pcc", "pacc", "emq", "emq_bcts", "emq_nbvs")
USES_CALIBRATION = ("acc", "pacc", "emq_bcts", "emq_nbvs")  # their estimate moves with the calibration images
# emq uses the calibration labels only for the training prior, which the within-class resampling keeps fixed
RECALIBRATION = {"emq_bcts": "bcts", "emq_nbvs": "nbvs"}  # QuaPy's names of the re-calibrations (abstention's)
LEVEL = 0.95
# What a fit on too few or too clean calibration images raises: a re-calibration whose optimiser finds no finite
# optimum (a class the head never confuses sends its scale to infinity) is a RuntimeError from QuaPy.
FIT_ERRORS = (RuntimeError, ValueError, ArithmeticError, AssertionError, np.linalg.LinAlgError)
FALLBACK = "pacc"  # fits on any calibration set (a least-squares solve): used where abundance_method cannot be
POSSIBLY_NEW = "possibly new"  # the class column of the row that counts the images flagged possibly new
COLUMNS = (
    [
        "class",
        "possibly_new",
        "cc_count",
        "cc_proportion",
        "method",
        "proportion",
        "proportion_low",
        "proportion_high",
        "count",
        "count_low",
        "count_high",
    ]
    + [f"proportion_{m}" for m in METHODS]
    + ["calibration", "calibration_images", "bootstrap_draws"]
)


class Calibration(NamedTuple):
    """The calibration images of the corrections: the head's probabilities and their true class indices, their
    paths (for the record), and the class prior the head's probabilities assume (emq's starting point)."""

    probabilities: np.ndarray
    labels: np.ndarray
    prior: np.ndarray
    paths: tuple = ()
    source: str = "validation"  # or "out_of_fold" (audit.py's outputs of the training and validation images)


# --------------------------------------------------------------------------- the trained head, as QuaPy sees it
class TrainedHead(BaseEstimator, ClassifierMixin):
    """The lab's trained classifier in scikit-learn's shape, for QuaPy's methods built with fit_classifier=False:
    its input rows ARE the head's probability vectors (softmax of the logits), so predict_proba hands them back
    and predict takes their argmax, as evaluate.py and predict.py do. It is never fitted: the head was trained by
    train.py, and QuaPy fits only its aggregation on the calibration images."""

    def __init__(self, n_classes=2):
        self.n_classes = n_classes

    @property
    def classes_(self):
        return np.arange(self.n_classes)

    def __sklearn_is_fitted__(self):
        return True

    def fit(self, X, y=None):
        raise RuntimeError("TrainedHead is the already trained head: QuaPy must not fit it (fit_classifier=False)")

    def predict_proba(self, X):
        X = np.asarray(X, np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_classes:
            raise ValueError(f"expected probability rows of {self.n_classes} classes, got shape {X.shape}")
        return X

    def predict(self, X):
        return self.predict_proba(X).argmax(axis=1)


def quapy_method(method, probabilities, labels):
    """A QuaPy quantifier of the named method around the trained head, with nothing left to train but its
    aggregation (val_split=None: the data given to fit() is the calibration data itself; the re-calibrated emq
    takes it as an explicit (X, y) pair, QuaPy's way to say so there)."""
    from quapy.method import aggregative as qa

    head = TrainedHead(probabilities.shape[1])
    makers = {
        "cc": lambda: qa.CC(head, fit_classifier=False),
        "acc": lambda: qa.ACC(head, fit_classifier=False, val_split=None),
        "pcc": lambda: qa.PCC(head, fit_classifier=False),
        "pacc": lambda: qa.PACC(head, fit_classifier=False, val_split=None),
        "emq": lambda: qa.EMQ(head, fit_classifier=False, val_split=None),
    }
    makers.update(
        {
            name: lambda calib=calib: qa.EMQ(head, fit_classifier=False, val_split=(probabilities, labels), calib=calib)
            for name, calib in RECALIBRATION.items()
        }
    )
    if method not in makers:
        raise ValueError(f"unknown abundance method {method!r}; known: {METHODS}")
    return makers[method]()


def fitted(method, probabilities, labels, prior=None):
    """The method's quantifier, its aggregation fitted on calibration probabilities and true label indices. prior:
    the class shares the head's probabilities assume, which emq divides them by; QuaPy takes the calibration
    labels' shares, which the novelty flag (and a calibration set drawn otherwise) can bend away from them."""
    probabilities, labels = np.asarray(probabilities, np.float64), np.asarray(labels, int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # QuaPy's notes on val_split, which we set on purpose
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="abstention")  # scipy.misc: SciPy < 2
        quantifier = quapy_method(method, probabilities, labels).fit(probabilities, labels)
    if method.startswith("emq") and prior is not None:
        quantifier.train_prevalence = np.asarray(prior, np.float64)
    return quantifier


def estimate(quantifier, probabilities):
    """The class proportions the fitted quantifier estimates for a sample (probability rows), summing to 1."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*maximum number of iterations.*")  # EMQ's 1000 steps: kept
        return np.asarray(quantifier.predict(np.asarray(probabilities, np.float64)), np.float64)


# --------------------------------------------------------------------------- a method with its bootstrap
def stratified_resample(labels, rng):
    """Row indices of a bootstrap resample that keeps each class's number of rows (rows drawn within classes)."""
    labels = np.asarray(labels)
    return np.concatenate(
        [rng.choice(rows, size=len(rows)) for rows in (np.flatnonzero(labels == c) for c in np.unique(labels))]
    )


class Calibrated:
    """One method fitted on the calibration images, and (for the methods that use them) on `draws` stratified
    bootstrap resamples of them, fitted once: every sample quantified later shares these fits, as it shares
    the calibration set. A resample the method cannot be fitted on is left out and counted (failed); the fit on
    the whole calibration set raises."""

    def __init__(self, method, calibration, draws, seed):
        self.method, self.draws = method, draws
        probabilities, labels = np.asarray(calibration.probabilities, np.float64), np.asarray(calibration.labels)
        self.point = fitted(method, probabilities, labels, calibration.prior)
        self.resampled = [self.point] * draws
        if method in USES_CALIBRATION:
            rng = np.random.default_rng([seed, METHODS.index(method), 0])
            self.resampled = []
            for rows in (stratified_resample(labels, rng) for _ in range(draws)):
                with contextlib.suppress(*FIT_ERRORS):
                    self.resampled.append(fitted(method, probabilities[rows], labels[rows], calibration.prior))
        self.failed = draws - len(self.resampled)
        if self.failed > draws / 2:
            raise RuntimeError(
                f"{self.failed} of its {draws} fits on bootstrap resamples of the calibration images failed"
            )

    def estimate(self, probabilities):
        return estimate(self.point, probabilities)

    def bootstrap(self, probabilities, rng):
        """(draws, classes): the estimate on each bootstrap resample of the sample, each paired with one
        resample of the calibration images."""
        n = len(probabilities)
        return np.stack([estimate(q, probabilities[rng.integers(0, n, n)]) for q in self.resampled])

    def interval(self, probabilities, rng, level=LEVEL):
        """(point estimate, low, high): the percentile interval of the bootstrap estimates."""
        draws = self.bootstrap(probabilities, rng)
        tail = 100 * (1 - level) / 2
        low, high = np.percentile(draws, tail, axis=0), np.percentile(draws, 100 - tail, axis=0)
        return self.estimate(probabilities), low, high


def sample_rng(seed, method):
    """The sample's bootstrap stream of one method: the same seed gives the same interval, whatever the other
    methods computed before."""
    return np.random.default_rng([seed, METHODS.index(method), 1])


# --------------------------------------------------------------------------- the table
def calibrated_or_fallback(method, calibration, draws, seed):
    """Calibrated(method), or FALLBACK's with a warning where the method cannot be fitted on this calibration set
    (a few validation images per class); the table's method column names the one used."""
    try:
        calibrated = Calibrated(method, calibration, draws, seed)
    except FIT_ERRORS as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(
            f"warning: abundance_method={method!r} could not be fitted on the {len(calibration.labels)} "
            f"calibration images ({reason}); results/abundances.csv gives {FALLBACK!r} instead (its method "
            f"column says so). More validation images (val_fraction) or another abundance_method avoid this.",
            file=sys.stderr,
        )
        return Calibrated(FALLBACK, calibration, draws, seed)
    if calibrated.failed:
        print(
            f"note: {calibrated.failed} of the {draws} bootstrap fits of {method} failed on a resample of the "
            f"calibration images and were left out of its interval",
            file=sys.stderr,
        )
    return calibrated


def abundance_frame(classes, sample_probabilities, possibly_new, calibration, method, draws, seed):
    """results/abundances.csv's table: one row per seen class, then one row counting the images flagged
    possibly new. The proportions are shares of the images NOT flagged (they sum to 1 over the classes); the
    counts are those shares times the number of such images, so that every row's count together makes the whole
    sample. cc_count: images predicted as the class and not flagged; proportion and count: the `method`'s
    correction, with its 95 % bootstrap interval; proportion_<m>: every method's point estimate."""
    probabilities = np.asarray(sample_probabilities, np.float64)
    flagged = np.asarray(possibly_new, bool)
    kept = probabilities[~flagged]
    n, k = len(kept), len(classes)
    cc = np.bincount(kept.argmax(axis=1), minlength=k) if n else np.zeros(k, int)
    table = pd.DataFrame(
        {"class": list(classes), "possibly_new": False, "cc_count": cc, "cc_proportion": cc / n if n else np.nan}
    )
    for m in METHODS:
        table[f"proportion_{m}"] = np.nan
        with contextlib.suppress(*FIT_ERRORS):  # a method that cannot be fitted here has no estimate: left empty
            table[f"proportion_{m}"] = estimate(fitted(m, *calibration[:3]), kept) if n else np.nan
    point = low = high = np.full(k, np.nan)
    if n:
        calibrated = calibrated_or_fallback(method, calibration, draws, seed)
        method = calibrated.method
        point, low, high = calibrated.interval(kept, sample_rng(seed, method))
    table["method"] = method
    table["proportion"], table["proportion_low"], table["proportion_high"] = point, low, high
    # no image left to quantify: every class counts 0 images, and no share of nothing can be given
    table["count"], table["count_low"], table["count_high"] = (x * n if n else np.zeros(k) for x in (point, low, high))
    table["calibration"] = calibration.source
    table["calibration_images"], table["bootstrap_draws"] = len(calibration.labels), draws
    flagged_count = int(flagged.sum())
    new_row = {
        "class": POSSIBLY_NEW,
        "possibly_new": True,
        "cc_count": flagged_count,
        "method": "novelty flag",
        "count": flagged_count,
        "count_low": flagged_count,
        "count_high": flagged_count,
        "calibration": calibration.source,
        "calibration_images": len(calibration.labels),
        "bootstrap_draws": draws,
    }
    return pd.concat([table, pd.DataFrame([new_row])], ignore_index=True)[COLUMNS]


# --------------------------------------------------------------------------- from the lab's artifacts
def probabilities_from_embeddings(scorer, embeddings):
    """The head's class probabilities of embeddings: softmax of the last layer's logits."""
    return softmax(scorer.logits(embeddings), axis=1)


def training_prior(cfg, labels, n_classes):
    """The class shares the head's probabilities assume: the training set's, which the stratified validation split
    repeats (all its images, before the novelty flag), or equal shares where class_weighting="balanced" weighted
    the loss so that every class counts alike."""
    if cfg.class_weighting == "balanced":
        return np.full(n_classes, 1.0 / n_classes)
    return np.bincount(labels, minlength=n_classes) / max(len(labels), 1)


def novelty_kept(cfg, scorer, threshold, split):
    """{path: whether the novelty flag keeps it} of one split's embedded images, and its frame."""
    frame, vectors = embedding_files.load_embeddings(cfg, split)
    if set(frame["split"]) - {split}:
        raise lab.LabError(f"embeddings/embeddings_{split}.pkl holds rows of other splits. Re-run `python embed.py`.")
    kept = scorer.scores(vectors, (cfg.novelty_score,))[cfg.novelty_score] <= threshold
    return dict(zip(frame["path"], kept)), frame, vectors, kept


def out_of_fold_audit(cfg, checkpoint_digest):
    """The audit manifest whose out-of-fold outputs may calibrate this model's abundances: audit.py's, of this
    checkpoint, by the lab's head, never trained on a test image. Otherwise a LabError naming the command; predict.py
    asks before its trunk pass, so that a refusal costs no wait."""
    audit, problem = manifest.check(cfg, "audit")
    if audit is not None and audit["inputs"].get("checkpoint") != checkpoint_digest:
        audit, problem = None, "it was made from another checkpoint"
    elif audit is not None and audit["inputs"].get("test_images_trained_on") is not False:
        audit, problem = None, "it was made by an older audit.py, whose fold heads trained on the test images"
    elif audit is not None and audit["inputs"].get("audit_model", "head") != "head":
        audit, problem = (
            None,
            (
                f"its out-of-fold model was audit_model={audit['inputs']['audit_model']!r}, not "
                f"the lab's head, whose confusions these abundances correct"
            ),
        )
    if audit is None:
        raise lab.LabError(
            f"abundance_calibration='out_of_fold' takes audit.py's out-of-fold outputs of this model "
            f"by its head, and the audit in results/ cannot serve ({problem}). Run `python audit.py "
            f"--audit_model=head` with this model first, or use --abundance_calibration=validation "
            f"(the default)."
        )
    return audit


def out_of_fold_calibration(cfg, classes, scorer, threshold, checkpoint_digest, prior, val_kept):
    """The Calibration of audit.py's out-of-fold probabilities of the training and validation images, those the
    novelty flag keeps (val_kept: novelty_kept's map of the validation images, already scored). An audit that
    cannot serve (out_of_fold_audit) names audit.py."""
    out_of_fold_audit(cfg, checkpoint_digest)
    columns = [f"p_{c}" for c in classes]
    issues = artifacts.read_csv(artifacts.out_path(cfg, "results", "label_issues.csv"), ("path", "split", "label"))
    issues = issues[issues["split"].isin(["train", "val"])]
    kept = {**val_kept, **novelty_kept(cfg, scorer, threshold, "train")[0]}
    index = {str(c): i for i, c in enumerate(classes)}
    paths = np.asarray(splitting.absolute_paths(cfg, issues["path"]), dtype=object)  # as the embeddings name them
    keep = np.array([bool(kept.get(p, False)) for p in paths], dtype=bool) & issues["label"].isin(index).to_numpy()
    probabilities = issues[columns].to_numpy(np.float64)[keep]
    return Calibration(
        probabilities / probabilities.sum(axis=1, keepdims=True),
        issues["label"][keep].map(index).to_numpy(np.int64),
        prior,
        tuple(paths[keep]),
        "out_of_fold",
    )


def calibration_from_artifacts(cfg, scorer, threshold, checkpoint_digest, classes, source="validation"):
    """The Calibration of the corrections, never a test image: the validation images, or (source "out_of_fold")
    audit.py's out-of-fold outputs of the training and validation images of this checkpoint (checkpoint_digest);
    in both, only the images the novelty flag keeps."""
    by_path, frame, vectors, keep = novelty_kept(cfg, scorer, threshold, "val")
    labels = frame["label_idx"].to_numpy()
    prior = training_prior(cfg, labels, len(scorer.weight))
    if source == "out_of_fold":
        return out_of_fold_calibration(cfg, classes, scorer, threshold, checkpoint_digest, prior, by_path)
    return Calibration(
        probabilities_from_embeddings(scorer, vectors[keep]),
        labels[keep],
        prior,
        tuple(frame["path"].to_numpy()[keep]),
        "validation",
    )


def sample_probabilities(predictions_path, classes):
    """(probabilities, possibly_new) of every image in predict.py's predictions.csv, read a block at a time."""
    columns = [f"p_{c}" for c in classes] + ["possibly_new"]
    blocks = list(
        pd.read_csv(
            artifacts.require(predictions_path, "predict.py", "predictions file"), usecols=columns, chunksize=100_000
        )
    )
    frame = pd.concat(blocks, ignore_index=True) if blocks else pd.DataFrame(columns=columns)
    probabilities = frame[[f"p_{c}" for c in classes]].to_numpy(np.float64)
    return probabilities / probabilities.sum(axis=1, keepdims=True), frame["possibly_new"].to_numpy(bool)


def sample_abundances(cfg, classes, scorer, threshold, predictions_path, checkpoint_digest):
    """The abundances table of the sample predict.py has just classified (predictions_path: its
    predictions.csv), corrected by cfg.abundance_method with cfg.abundance_bootstrap draws, seeded by cfg.seed."""
    calibration = calibration_from_artifacts(
        cfg, scorer, threshold, checkpoint_digest, classes, cfg.abundance_calibration
    )
    probabilities, possibly_new = sample_probabilities(predictions_path, classes)
    return abundance_frame(
        classes, probabilities, possibly_new, calibration, cfg.abundance_method, cfg.abundance_bootstrap, cfg.seed
    )


# --------------------------------------------------------------------------- the report's chart
def abundance_chart(table):
    """PNG bytes of a bar chart: each seen class's share of the sample's images not flagged, as classify-and-count
    gives it beside the correction with its 95 % interval (the report's section; nothing is written)."""
    import io

    from lab import plotting

    plt = plotting.pyplot()
    rows = table[~table["possibly_new"].astype(bool)]
    names = plotting.drawable_names([str(c) for c in rows["class"]])
    y = np.arange(len(rows))
    corrected = rows["proportion"].to_numpy(np.float64)
    errors = np.clip(
        [
            corrected - rows["proportion_low"].to_numpy(np.float64),
            rows["proportion_high"].to_numpy(np.float64) - corrected,
        ],
        0,
        None,
    )
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(rows) + 1.4))
    ax.barh(y - 0.2, rows["cc_proportion"], height=0.4, color="#bbbbbb", label="classify and count")
    ax.barh(
        y + 0.2,
        corrected,
        height=0.4,
        xerr=errors,
        color="#2a7ab0",
        capsize=3,
        label=f"corrected ({rows['method'].iloc[0] if len(rows) else ''}), 95 % interval",
    )
    ax.set_yticks(y)
    ax.set_yticklabels(names)
    ax.invert_yaxis()
    ax.set_xlabel("share of the images not flagged possibly new")
    ax.legend(loc="lower right", fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()
