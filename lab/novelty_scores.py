"""Novelty scores: how likely an image is of a taxon the classifier was never trained on.

Every score is oriented so that a HIGHER value means MORE LIKELY NEW. The four standard scores:
  msp             1 - maximum softmax probability (Hendrycks & Gimpel 2017)
  energy          -logsumexp(logits), the free energy at temperature 1 (Liu et al. 2020)
  knn             Euclidean distance to the k-th nearest training embedding, both L2-normalised (Sun et al. 2022);
                  the reference ("bank") holds at most novelty_bank_max training embeddings: every image of the
                  smaller classes and a seeded sample of the larger ones (bank_rows), so scoring an image costs
                  the same however large the training set is (Sun et al. sample their bank too)
  mahalanobis     Mahalanobis distance to the nearest class mean under one shared covariance, shrunk by
                  Ledoit-Wolf (Lee et al. 2018)
and one combination, the default (how each score tells new taxa, measured: docs/novelty.md):
  mahalanobis_knn mean of the mahalanobis and knn scores, each standardised by its mean and standard deviation
                  on the known validation images: the class-Gaussian view (global shape of each class) and the
                  nearest-neighbour view (local density, no shape assumed) err on different images
The logits are the last layer applied to the embedding, so every score needs only embeddings and that layer.

Evaluation, with "known" images (seen classes) and "new" images (unseen classes):
  auroc                   probability that a random new image scores above a random known one (ties count half)
  fpr_at_tpr              share of new images that pass as known when the threshold keeps 95 % of the known ones
  threshold_keeping       that threshold, chosen on known (validation) images only

Everything above is pure numpy / scikit-learn. The last section builds the scorer of a trained model from the
lab's artifacts (checkpoints/best.pth, embeddings/embeddings_{train,val}.pkl, results/novelty_thresholds.json)
for novelty.py and predict.py; it reads them and writes nothing.
"""

import hashlib
import sys

import numpy as np
from scipy.special import logsumexp, softmax
from scipy.stats import rankdata
from sklearn.covariance import LedoitWolf

import lab
from lab import artifacts, config, embedding_files

SCORES = config.NOVELTY_SCORES  # the choices of novelty_score, defined once in config.py
COMBINED_PARTS = {"mahalanobis_knn": ("mahalanobis", "knn")}
STANDARD_SCORES = tuple(name for name in SCORES if name not in COMBINED_PARTS)
KEEP_KNOWN = 0.95  # a threshold keeps 95 % of the known validation images, the usual operating point (FPR95)
BLOCK = 2048  # query rows per block: the kNN distance block is BLOCK x n_train floats, whatever the query count


# --------------------------------------------------------------------------- scores
def logits_from_embeddings(embeddings, weight, bias):
    """The classifier's last layer (weight: classes x dims, bias: classes) applied to embeddings (n x dims)."""
    return np.asarray(embeddings, np.float64) @ np.asarray(weight, np.float64).T + np.asarray(bias, np.float64)


def msp_score(logits):
    return 1.0 - softmax(np.asarray(logits, np.float64), axis=1).max(axis=1)


def energy_score(logits):
    return -logsumexp(np.asarray(logits, np.float64), axis=1)


def l2_normalise(x):
    """Rows scaled to unit length; an all-zero row (every ReLU off) has no direction and stays zero."""
    x = np.asarray(x, np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def kth_neighbour_distance(bank, queries, k):
    """Euclidean distance from each query to its k-th nearest row of bank, computed in blocks of queries."""
    bank, queries = np.asarray(bank, np.float64), np.asarray(queries, np.float64)
    k = min(k, len(bank))
    bank_sq = (bank**2).sum(1)
    out = np.empty(len(queries))
    for start in range(0, len(queries), BLOCK):
        q = queries[start : start + BLOCK]
        squared = (q**2).sum(1)[:, None] + bank_sq[None, :] - 2.0 * q @ bank.T
        out[start : start + BLOCK] = np.partition(np.maximum(squared, 0.0), k - 1, axis=1)[:, k - 1]
    return np.sqrt(out)


def class_quota(counts, total):
    """Images kept per class so that at most `total` are kept: every image of a class up to one quota, the largest
    quota that fits (water-filling), so small classes stay whole and large ones are cut to the same size. The quota
    is at least one image, so a total below the number of classes keeps one of each (the lab refuses such totals:
    novelty_bank_max must leave novelty_knn_k images per class)."""
    counts = np.asarray(counts, int)
    if not total or counts.sum() <= total:
        return counts.copy()
    low, high = 0, int(counts.max())  # the largest quota q with sum(min(counts, q)) <= total
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if np.minimum(counts, middle).sum() <= total else (low, middle - 1)
    return np.minimum(counts, max(low, 1))


def bank_rows(labels, bank_max, seed):
    """Row indices (sorted) of the kNN bank: all rows when bank_max is 0 or not exceeded, else class_quota's
    share of each class, a seeded sample where a class has more."""
    labels = np.asarray(labels)
    if not bank_max or len(labels) <= bank_max:
        return np.arange(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    rng = np.random.default_rng(seed)
    kept = [
        rows if len(rows) <= quota else rng.choice(rows, size=quota, replace=False)
        for rows, quota in zip((np.flatnonzero(labels == c) for c in classes), class_quota(counts, bank_max))
    ]
    return np.sort(np.concatenate(kept))


def knn_score(train_embeddings, embeddings, k):
    return kth_neighbour_distance(l2_normalise(train_embeddings), l2_normalise(embeddings), k)


class Gaussians:
    """Class means and one shared Ledoit-Wolf-shrunk covariance of the training embeddings (Lee et al. 2018).

    Shrinkage keeps the precision matrix finite when some embedding dimensions never fire (dead ReLUs) or
    when a class has fewer images than dimensions. When no dimension varies at all (every training embedding
    equals its class mean, up to rounding: identical or all-zero embeddings, a collapsed model), the precision is
    the identity (the score is then the Euclidean distance to the nearest class mean), and a covariance that is
    not quite positive definite gets a ridge of a millionth of its spread; `degenerate` says so, instead of a
    crash."""

    def __init__(self, embeddings, labels):
        x, labels = np.asarray(embeddings, np.float64), np.asarray(labels)
        self.classes = np.unique(labels)
        self.means = np.stack([x[labels == c].mean(0) for c in self.classes])
        residuals = x - self.means[np.searchsorted(self.classes, labels)]
        fitted = LedoitWolf(assume_centered=True).fit(residuals)
        covariance = fitted.covariance_
        spread = np.trace(covariance) / len(covariance)
        self.degenerate = spread <= 1e-12 * max(float(np.mean(x**2)), np.finfo(float).tiny)  # rounding error only
        self.precision = np.eye(len(covariance)) if self.degenerate else fitted.precision_
        # precision = L L', so (x - m)' precision (x - m) = |L'x - L'm|^2: a Euclidean distance after one linear map,
        # which costs one matrix product per block of images instead of one per class
        try:
            self.whiten = np.linalg.cholesky(self.precision)
        except np.linalg.LinAlgError:  # not quite positive definite in floating point: a ridge of a millionth
            self.precision = np.linalg.inv(covariance + 1e-6 * spread * np.eye(len(covariance)))
            self.whiten, self.degenerate = np.linalg.cholesky(self.precision), True
        self.white_means = self.means @ self.whiten
        self.white_means_sq = (self.white_means**2).sum(1)

    def mahalanobis(self, embeddings):
        """Distance to the nearest class mean: min over classes of sqrt((x - mean)' precision (x - mean))."""
        out = np.empty(len(embeddings))
        for start in range(0, len(embeddings), BLOCK):
            z = np.asarray(embeddings[start : start + BLOCK], np.float64) @ self.whiten
            squared = (z**2).sum(1)[:, None] + self.white_means_sq[None, :] - 2.0 * z @ self.white_means.T
            out[start : start + BLOCK] = squared.min(axis=1)
        return np.sqrt(np.maximum(out, 0.0))


class NoveltyScorer:
    """Everything the scores need, fitted once: class Gaussians on every training embedding, the kNN bank on at
    most bank_max of them (0: all), the standardisation of the combined score on the known validation embeddings.
    Scores any number of images, each at a cost that does not grow with the training set beyond bank_max."""

    def __init__(self, train_embeddings, train_labels, weight, bias, knn_k, val_embeddings, bank_max=0, seed=0):
        train_embeddings = np.asarray(train_embeddings, np.float64)
        rows = bank_rows(train_labels, bank_max, seed)
        self.bank = l2_normalise(train_embeddings[rows])
        # which training rows the kNN score is measured against: thresholds are valid for this reference only
        self.bank_id = {
            "knn_bank_size": len(rows),
            "knn_bank_digest": hashlib.sha256(np.asarray(rows, np.int64).tobytes()).hexdigest()[:16],
        }
        self.weight, self.bias, self.knn_k = np.asarray(weight), np.asarray(bias), knn_k
        self.gaussians = Gaussians(train_embeddings, train_labels)
        self.standardise = {}
        parts = sorted({p for ps in COMBINED_PARTS.values() for p in ps})
        for name, values in self.scores(val_embeddings, parts).items():
            self.standardise[name] = (float(values.mean()), float(values.std()) or 1.0)

    def logits(self, embeddings):
        return logits_from_embeddings(embeddings, self.weight, self.bias)

    def _single(self, name, embeddings, logits):
        if name == "msp":
            return msp_score(logits)
        if name == "energy":
            return energy_score(logits)
        if name == "knn":
            return kth_neighbour_distance(self.bank, l2_normalise(embeddings), self.knn_k)
        if name == "mahalanobis":
            return self.gaussians.mahalanobis(embeddings)
        raise ValueError(f"unknown novelty score {name!r}; known: {SCORES}")

    def scores(self, embeddings, names=SCORES):
        """{score name: array (n,)} for embeddings (n x dims); a combined score reuses its parts."""
        embeddings = np.asarray(embeddings, np.float64)
        logits, done = self.logits(embeddings), {}

        def get(name):
            if name not in done:
                if name in COMBINED_PARTS:
                    done[name] = np.mean(
                        [standardised(get(part), *self.standardise[part]) for part in COMBINED_PARTS[name]], axis=0
                    )
                else:
                    done[name] = self._single(name, embeddings, logits)
            return done[name]

        return {name: get(name) for name in names}


def standardised(values, mean, sd):
    return (np.asarray(values, np.float64) - mean) / sd


# --------------------------------------------------------------------------- evaluation
def _check(known, new):
    known, new = np.asarray(known, np.float64), np.asarray(new, np.float64)
    if len(known) == 0 or len(new) == 0:
        raise ValueError("AUROC and FPR need at least one known and one new image")
    return known, new


def auroc(known, new):
    """Area under the ROC curve with 'new' as the positive class (Mann-Whitney U / (n_known n_new))."""
    known, new = _check(known, new)
    ranks = rankdata(np.concatenate([known, new]))  # ties get their average rank: a tie counts one half
    u = ranks[len(known) :].sum() - len(new) * (len(new) + 1) / 2.0
    return float(u / (len(known) * len(new)))


def threshold_keeping(known, keep=KEEP_KNOWN):
    """The smallest score t with at least `keep` of the known images at or below it (they pass as known);
    an image scoring above t is flagged as possibly new."""
    known = np.sort(np.asarray(known, np.float64))
    if len(known) == 0:
        raise ValueError("a threshold needs at least one known image")
    return float(known[int(np.ceil(keep * len(known))) - 1])


def fpr_at_tpr(known, new, tpr=KEEP_KNOWN):
    """Share of new images scoring at or below the threshold that keeps `tpr` of the known ones: the new
    images that would pass as known (the FPR95 of Liu et al. 2020 and Sun et al. 2022; lower is better)."""
    known, new = _check(known, new)
    return float(np.mean(new <= threshold_keeping(known, tpr)))


def flagged_share(scores, threshold):
    """Share of images flagged as possibly new (score above the threshold)."""
    scores = np.asarray(scores, np.float64)
    return float(np.mean(scores > threshold)) if len(scores) else float("nan")


def roc_points(known, new):
    """(false-positive rate, true-positive rate) of flagging 'new' at every distinct threshold, from (0, 0)."""
    known, new = _check(known, new)
    values = np.concatenate([known, new])
    is_new = np.concatenate([np.zeros(len(known)), np.ones(len(new))])
    order = np.argsort(-values, kind="mergesort")
    values, is_new = values[order], is_new[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(values)), len(values) - 1]
    tp = np.cumsum(is_new)[last_of_tie]
    fp = (last_of_tie + 1) - tp
    return np.r_[0.0, fp / len(known)], np.r_[0.0, tp / len(new)]


# --------------------------------------------------------------------------- from the lab's artifacts
def classifier_layer(ckpt):
    """(weight, bias) of the checkpoint's last layer, the one that turns an embedding into logits."""
    state = ckpt["model_state"]
    return state["classifier.weight"].double().numpy(), state["classifier.bias"].double().numpy()


def scorer_from_artifacts(cfg, ckpt, checkpoint_digest):
    """The NoveltyScorer of a trained model: its last layer, its training embeddings (the reference of the
    Mahalanobis and kNN scores) and its validation embeddings (the standardisation of the combined score)."""
    train, x_train = embedding_files.load_embeddings(cfg, "train")  # refused if made from another checkpoint
    _, x_val = embedding_files.load_embeddings(cfg, "val")
    weight, bias = classifier_layer(ckpt)
    scorer = NoveltyScorer(
        x_train, train["label_idx"].to_numpy(), weight, bias, cfg.novelty_knn_k, x_val, cfg.novelty_bank_max, cfg.seed
    )
    if scorer.gaussians.degenerate:
        print(
            "note: the training embeddings do not vary around their class means (identical or all-zero "
            "embeddings: the model collapsed?), so the mahalanobis score is the Euclidean distance to the nearest "
            "class mean; retraining (e.g. with a lower lr) gives scores worth reading",
            file=sys.stderr,
        )
    return scorer


def score_settings(cfg, scorer):
    """What the scores depend on beyond the checkpoint and its embeddings: k and the kNN reference actually used
    (its size and which rows: another novelty_bank_max or seed that keeps the same rows changes nothing)."""
    return {"novelty_knn_k": cfg.novelty_knn_k, "novelty_bank_max": cfg.novelty_bank_max, **scorer.bank_id}


def load_thresholds(cfg, checkpoint_digest, scorer):
    """results/novelty_thresholds.json, refused when made for another checkpoint, another k or another kNN
    reference than `scorer` (the current settings') uses."""
    path = artifacts.require(
        artifacts.out_path(cfg, "results", "novelty_thresholds.json"), "novelty.py", "thresholds file"
    )
    saved = artifacts.read_json(path, "novelty.py", "thresholds file")  # a damaged file names novelty.py
    thresholds = saved.get("thresholds")
    if not (isinstance(thresholds, dict) and all(isinstance(thresholds.get(n), (int, float)) for n in SCORES)):
        raise lab.LabError(
            f"The thresholds file {path} is damaged (it lacks a threshold per score): it was cut short "
            f"or edited. It is made by `python novelty.py`: run that again, then this script."
        )
    now = score_settings(cfg, scorer)
    if saved.get("checkpoint_sha256") != checkpoint_digest:
        which = "another checkpoint than checkpoints/best.pth now holds"
    elif "knn_bank_digest" not in saved:
        which = "an earlier version of the lab, which did not record its kNN reference"
    elif saved.get("novelty_knn_k") != now["novelty_knn_k"]:
        which = f"novelty_knn_k={saved.get('novelty_knn_k')} (the config says {now['novelty_knn_k']})"
    elif saved["knn_bank_digest"] != now["knn_bank_digest"]:
        which = (
            f"a kNN reference of {saved.get('knn_bank_size')} training embeddings (novelty_bank_max="
            f"{saved.get('novelty_bank_max')}), not the {now['knn_bank_size']} that novelty_bank_max="
            f"{now['novelty_bank_max']} keeps (pass --novelty_bank_max={saved.get('novelty_bank_max')} to use "
            f"them)"
        )
    else:
        return saved
    raise lab.LabError(
        f"{path} was made for {which}. Run `python novelty.py` again with the current checkpoint and "
        f"settings, then this script."
    )
