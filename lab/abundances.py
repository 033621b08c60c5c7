"""Abundances: how many images of each seen taxon a sample holds, corrected for prior shift, with 95 % intervals.
The QuaPy adapter, the bootstrap and results/abundances.csv's table, on arrays of probabilities; which images
calibrate the corrections, and reading them from the lab's artifacts, is lab/abundance_inputs.py's.

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
The settings' list of them is lab/config.py's ABUNDANCE_METHODS.

Uncertainty: a 95 % percentile interval over `draws` bootstrap resamples of the sample's images and, for the
methods that use calibration data (all but cc, pcc and emq), of the calibration images within each class (the
class sizes of a calibration set are fixed by design, and a class must not vanish from a draw).

Reads and writes nothing.
"""

import contextlib
import sys
import warnings
from typing import NamedTuple

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin

from lab.config import ABUNDANCE_METHODS

USES_CALIBRATION = ("acc", "pacc", "emq_bcts", "emq_nbvs")  # their estimate moves with the calibration images
# emq uses the calibration labels only for the training prior, which the within-class resampling keeps fixed
RECALIBRATION = {"emq_bcts": "bcts", "emq_nbvs": "nbvs"}  # QuaPy's names of the re-calibrations (abstention's)
LEVEL = 0.95
# What a fit on too few or too clean calibration images raises: a re-calibration whose optimiser finds no finite
# optimum (a class the head never confuses sends its scale to infinity) is a RuntimeError from QuaPy. Never
# AssertionError: QuaPy 0.2.3 asserts only on its arguments (ours: a bug), and turns its calibrators' failed asserts
# into RuntimeError, so an assert is a bug to see, not a fit to skip (tests/test_abundances.py)
FIT_ERRORS = (RuntimeError, ValueError, ArithmeticError, np.linalg.LinAlgError)
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
    + [f"proportion_{m}" for m in ABUNDANCE_METHODS]
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
        raise ValueError(f"unknown abundance method {method!r}; known: {ABUNDANCE_METHODS}")
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
            rng = np.random.default_rng([seed, ABUNDANCE_METHODS.index(method), 0])
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


def sample_rng(seed, method, key=()):
    """The sample's bootstrap stream of one method: the same seed gives the same interval, whatever the other
    methods computed before. key: more integers that name the sample within a cruise (lab/cruise_abundances.py),
    so that each sample draws its own stream, and the same one whatever other samples the cruise holds."""
    return np.random.default_rng([seed, ABUNDANCE_METHODS.index(method), 1, *key])


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


class Fits:
    """Every method's fit on the calibration images, made once: the point fits behind the proportion_<m> columns,
    and the asked-for method's Calibrated (its bootstrap fits), made when first needed (a sample with no image to
    quantify needs none, and warns of no fallback). A cruise's samples all share one Fits: the calibration is the
    run's, not the sample's. A method that cannot be fitted here has no point fit (None: its column stays empty)."""

    def __init__(self, calibration, method, draws, seed):
        self.calibration, self.method, self.draws, self.seed = calibration, method, draws, seed
        self.points = {}
        for m in ABUNDANCE_METHODS:
            self.points[m] = None
            with contextlib.suppress(*FIT_ERRORS):
                self.points[m] = fitted(m, *calibration[:3])
        self._calibrated = None

    @property
    def calibrated(self):
        if self._calibrated is None:
            self._calibrated = calibrated_or_fallback(self.method, self.calibration, self.draws, self.seed)
        return self._calibrated

    def point_estimate(self, method, probabilities):
        """The method's point estimate on these images, or NaN where it cannot be fitted or estimated here."""
        if self.points[method] is None or not len(probabilities):
            return np.nan
        with contextlib.suppress(*FIT_ERRORS):
            return estimate(self.points[method], probabilities)
        return np.nan


def abundance_frame(
    classes, sample_probabilities, possibly_new, calibration, method, draws, seed, fits=None, stream_key=()
):
    """results/abundances.csv's table: one row per seen class, then one row counting the images flagged
    possibly new. The proportions are shares of the images NOT flagged (they sum to 1 over the classes); the
    counts are those shares times the number of such images, so that every row's count together makes the whole
    sample. cc_count: images predicted as the class and not flagged; proportion and count: the `method`'s
    correction, with its 95 % bootstrap interval; proportion_<m>: every method's point estimate.
    fits: the Fits of (calibration, method, draws, seed) when the caller made them already (a cruise makes them
    once for all its samples); stream_key: sample_rng's key of this sample's bootstrap stream."""
    fits = fits or Fits(calibration, method, draws, seed)
    probabilities = np.asarray(sample_probabilities, np.float64)
    flagged = np.asarray(possibly_new, bool)
    kept = probabilities[~flagged]
    n, k = len(kept), len(classes)
    cc = np.bincount(kept.argmax(axis=1), minlength=k) if n else np.zeros(k, int)
    table = pd.DataFrame(
        {"class": list(classes), "possibly_new": False, "cc_count": cc, "cc_proportion": cc / n if n else np.nan}
    )
    for m in ABUNDANCE_METHODS:
        table[f"proportion_{m}"] = fits.point_estimate(m, kept)  # empty where the method cannot be fitted here
    point = low = high = np.full(k, np.nan)
    if n:
        calibrated = fits.calibrated
        method = calibrated.method
        point, low, high = calibrated.interval(kept, sample_rng(seed, method, stream_key))
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
