"""Novelty scores against hand-computed values, their evaluation against scikit-learn's, and finite scores on
degenerate (identical or all-zero) training embeddings."""

import math

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from sklearn.covariance import LedoitWolf
from sklearn.metrics import roc_auc_score, roc_curve

from lab import novelty_scores as ns


def test_msp_and_energy_by_hand():
    logits = np.array([[0.0, 0.0], [math.log(3.0), 0.0], [100.0, 0.0]])
    assert ns.msp_score(logits) == pytest.approx([0.5, 0.25, 0.0], abs=1e-12)
    assert ns.energy_score(logits) == pytest.approx([-math.log(2.0), -math.log(4.0), -100.0], abs=1e-9)


def test_logits_are_the_last_layer_applied_to_the_embedding():
    weight, bias = np.array([[1.0, 2.0], [0.0, -1.0], [3.0, 0.5]]), np.array([0.5, 0.0, -1.0])
    expected = np.array([[2 * 1 + 1 * 2 + 0.5, 1 * -1 + 0.0, 2 * 3 + 1 * 0.5 - 1]])  # [[4.5, -1.0, 5.5]]
    assert ns.logits_from_embeddings(np.array([[2.0, 1.0]]), weight, bias) == pytest.approx(expected)


def test_knn_distance_after_normalisation_by_hand():
    bank = np.array([[3.0, 0.0], [0.0, 0.5], [-2.0, 0.0]])  # unit vectors east, north, west once normalised
    query = np.array([[2.0, 0.0], [0.0, 0.0]])
    for k, expected in ((1, 0.0), (2, math.sqrt(2.0)), (3, 2.0)):
        assert ns.knn_score(bank, query, k)[0] == pytest.approx(expected, abs=1e-7)
    assert ns.knn_score(bank, query, 2)[1] == pytest.approx(1.0)  # a zero embedding is 1 from every unit vector
    assert ns.knn_score(bank, query, 50)[0] == pytest.approx(2.0)  # k capped by the bank size


def test_knn_equals_brute_force_across_blocks(monkeypatch):
    monkeypatch.setattr(ns, "BLOCK", 7)
    rng = np.random.default_rng(0)
    bank, query = rng.normal(size=(60, 8)), rng.normal(size=(30, 8))
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    expected = np.sort(cdist(unit(query), unit(bank)), axis=1)[:, 4]
    assert ns.knn_score(bank, query, 5) == pytest.approx(expected, abs=1e-9)


def test_class_quota_keeps_small_classes_whole_and_cuts_large_ones_to_one_size():
    counts = np.array([5, 400, 30, 1000])
    kept = ns.class_quota(counts, 300)
    assert list(kept) == [5, 132, 30, 132] and kept.sum() <= 300  # 5 + 30 whole, 265 left: 132 each
    assert list(ns.class_quota(counts, 0)) == list(counts) and list(ns.class_quota(counts, 5000)) == list(counts)
    for total in range(4, 1500, 37):  # brute force: the largest quota whose kept images fit
        best = max(q for q in range(1, 1001) if np.minimum(counts, q).sum() <= total)
        assert list(ns.class_quota(counts, total)) == list(np.minimum(counts, best))


def test_knn_bank_is_a_seeded_per_class_sample_and_scores_equal_brute_force_on_it():
    rng = np.random.default_rng(3)
    labels = np.repeat([0, 1, 2], [4, 300, 120])
    train = np.abs(rng.normal(size=(len(labels), 6)) + labels[:, None])
    val, query = np.abs(rng.normal(size=(20, 6))), np.abs(rng.normal(size=(15, 6)) * 2)
    weight, bias = rng.normal(size=(3, 6)), rng.normal(size=3)
    rows = ns.bank_rows(labels, 100, seed=7)
    assert np.bincount(labels[rows]).tolist() == [4, 48, 48] and len(set(rows)) == len(rows)
    assert (rows == ns.bank_rows(labels, 100, seed=7)).all() and not (rows == ns.bank_rows(labels, 100, 8)).all()
    assert (ns.bank_rows(labels, 0, 7) == np.arange(len(labels))).all()
    scorer = ns.NoveltyScorer(train, labels, weight, bias, knn_k=3, val_embeddings=val, bank_max=100, seed=7)
    assert scorer.scores(query, ["knn"])["knn"] == pytest.approx(ns.knn_score(train[rows], query, 3), abs=1e-12)
    everything = ns.NoveltyScorer(train, labels, weight, bias, knn_k=3, val_embeddings=val)
    assert everything.scores(query, ["knn"])["knn"] == pytest.approx(ns.knn_score(train, query, 3), abs=1e-12)
    # the Gaussians use every training image whatever the bank holds
    assert scorer.scores(query, ["mahalanobis"])["mahalanobis"] == pytest.approx(
        everything.scores(query, ["mahalanobis"])["mahalanobis"]
    )


def test_mahalanobis_by_hand_where_shrinkage_changes_nothing():
    # residuals (+-1, 0), (0, +-1) around each mean: covariance 0.5 I, a multiple of I, which any shrinkage keeps
    pattern = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    train = np.vstack([pattern, pattern + [10.0, 0.0]])
    labels = np.repeat([0, 1], 4)
    gaussians = ns.Gaussians(train, labels)
    assert gaussians.precision == pytest.approx(2.0 * np.eye(2))
    distances = gaussians.mahalanobis(np.array([[3.0, 4.0], [10.0, 1.0]]))
    assert distances == pytest.approx([math.sqrt(25 / 0.5), math.sqrt(1 / 0.5)])


def test_mahalanobis_equals_a_ledoit_wolf_reference_on_random_embeddings():
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1, 2], [40, 25, 30])
    means = rng.normal(scale=4, size=(3, 6))
    train = means[labels] + rng.normal(size=(len(labels), 6)) @ rng.normal(size=(6, 6))
    train[:, 5] = 0.0  # a dimension that never fires: shrinkage must keep the precision finite
    query = rng.normal(scale=4, size=(20, 6))
    residuals = train - np.stack([train[labels == c].mean(0) for c in range(3)])[labels]
    inverse = np.linalg.inv(LedoitWolf(assume_centered=True).fit(residuals).covariance_)
    class_means = [train[labels == c].mean(0) for c in range(3)]
    expected = cdist(query, np.array(class_means), metric="mahalanobis", VI=inverse).min(axis=1)
    assert ns.Gaussians(train, labels).mahalanobis(query) == pytest.approx(expected, rel=1e-7)


def test_combined_score_is_the_mean_of_its_parts_standardised_on_validation():
    rng = np.random.default_rng(2)
    labels = np.repeat([0, 1], 50)
    train = np.abs(rng.normal(size=(100, 5)) + 3 * labels[:, None])
    val, query = np.abs(rng.normal(size=(30, 5)) + 1), np.abs(rng.normal(size=(10, 5)) * 3)
    weight, bias = rng.normal(size=(2, 5)), rng.normal(size=2)
    scorer = ns.NoveltyScorer(train, labels, weight, bias, knn_k=3, val_embeddings=val)
    on_val, on_query = scorer.scores(val), scorer.scores(query)
    assert set(on_query) == set(ns.SCORES) and all(len(v) == 10 for v in on_query.values())
    z = [(on_query[p] - on_val[p].mean()) / on_val[p].std() for p in ("mahalanobis", "knn")]
    assert on_query["mahalanobis_knn"] == pytest.approx((z[0] + z[1]) / 2)
    assert on_val["mahalanobis_knn"].mean() == pytest.approx(0.0, abs=1e-12)
    assert on_query["knn"] == pytest.approx(ns.knn_score(train, query, 3))
    assert on_query["energy"] == pytest.approx(ns.energy_score(query @ weight.T + bias))


def tied_scores(seed, n_known=200, n_new=90):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 12, n_known).astype(float), rng.integers(3, 15, n_new).astype(float)


@pytest.mark.parametrize("seed", range(5))
def test_auroc_and_roc_points_equal_sklearns_with_ties(seed):
    known, new = tied_scores(seed)
    is_new = np.r_[np.zeros(len(known)), np.ones(len(new))]
    scores = np.r_[known, new]
    assert ns.auroc(known, new) == pytest.approx(roc_auc_score(is_new, scores), abs=1e-12)
    fpr, tpr, _ = roc_curve(is_new, scores, drop_intermediate=False)
    ours = ns.roc_points(known, new)
    assert ours[0] == pytest.approx(fpr) and ours[1] == pytest.approx(tpr)


@pytest.mark.parametrize("seed", range(5))
def test_fpr_at_95_equals_sklearns_roc_curve(seed):
    known, new = tied_scores(seed)
    is_known = np.r_[np.ones(len(known)), np.zeros(len(new))]
    fpr, tpr, _ = roc_curve(is_known, -np.r_[known, new], drop_intermediate=False)  # known positive, low score
    assert ns.fpr_at_tpr(known, new) == pytest.approx(fpr[np.argmax(tpr >= 0.95)], abs=1e-12)


def test_threshold_keeps_95_percent_of_the_known_images_by_hand():
    known = np.arange(1.0, 21.0)  # 1 .. 20
    assert ns.threshold_keeping(known) == 19.0  # 19 of 20 at or below it
    assert ns.flagged_share(known, 19.0) == 0.05
    assert ns.fpr_at_tpr(known, np.array([0.0, 19.0, 19.5, 30.0])) == 0.5
    assert ns.auroc(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 1.0


def test_perfectly_separated_and_reversed_scores():
    assert ns.auroc(np.zeros(5), np.ones(3)) == 1.0 and ns.fpr_at_tpr(np.zeros(5), np.ones(3)) == 0.0
    assert ns.auroc(np.ones(5), np.zeros(3)) == 0.0 and ns.fpr_at_tpr(np.ones(5), np.zeros(3)) == 1.0
    with pytest.raises(ValueError):
        ns.auroc(np.zeros(0), np.ones(3))


@pytest.mark.parametrize("value", [0.0, 0.7])
def test_identical_or_all_zero_training_embeddings_give_finite_novelty_scores(value):
    train = np.full((30, 8), value)
    labels = np.repeat([0, 1, 2], 10)
    gaussians = ns.Gaussians(train, labels)
    assert gaussians.degenerate
    queries = np.random.default_rng(0).normal(size=(5, 8))
    expected = np.sqrt(((queries - value) ** 2).sum(1))  # no spread: the Euclidean distance to the (one) mean
    assert gaussians.mahalanobis(queries) == pytest.approx(expected)
    scorer = ns.NoveltyScorer(train, labels, np.ones((3, 8)), np.zeros(3), 5, np.full((4, 8), value))
    scores = scorer.scores(queries)
    assert all(np.isfinite(v).all() for v in scores.values())
    assert not ns.Gaussians(np.random.default_rng(1).normal(size=(30, 8)), labels).degenerate
