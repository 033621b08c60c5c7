"""lab/operating_points.py: the Clopper-Pearson bound against scipy's binomtest, the certified precision on synthetic
scores with known class-conditional distributions, the scopes (a class with too few calibration images never
certified on its own), and evaluate.py fitting on the validation split alone."""

import shutil

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest

import evaluate
import predict
from lab import artifacts, checkpoint
from lab import operating_points as op

TARGET, CONFIDENCE = 0.95, 0.9


def test_the_bound_is_scipys_exact_interval_and_45_correct_images_are_the_fewest():
    for correct, accepted in ((45, 45), (44, 45), (90, 95), (3, 10), (1, 1)):
        # the one-sided bound at 1 - delta is the lower end of the two-sided exact interval at 1 - 2 delta
        exact = binomtest(correct, accepted).proportion_ci(confidence_level=1 - 2 * (1 - CONFIDENCE), method="exact")
        assert op.lower_bound(correct, accepted, CONFIDENCE) == pytest.approx(exact.low, abs=1e-12)
    assert op.lower_bound(0, 10, CONFIDENCE) == 0 and op.lower_bound(0, 0, CONFIDENCE) == 0
    assert op.min_images(TARGET, CONFIDENCE) == 45
    assert op.lower_bound(45, 45, CONFIDENCE) >= TARGET > op.lower_bound(44, 44, CONFIDENCE)
    assert op.lower_bound(53, 54, CONFIDENCE) < TARGET  # 45 are the fewest only when all are right


# Synthetic predictions of one class: right with probability RIGHT; the predicted class's probability is
# Beta(A_RIGHT, 1) when right and Beta(A_WRONG, 1) when wrong, so the true precision above a threshold t is known:
# RIGHT (1 - t^A_RIGHT) / (RIGHT (1 - t^A_RIGHT) + (1 - RIGHT) (1 - t^A_WRONG)). It falls through 0.95 near t = 0.85.
RIGHT, A_RIGHT, A_WRONG = 0.85, 30.0, 2.0


def true_precision(threshold):
    right = RIGHT * (1 - threshold**A_RIGHT)
    return right / (right + (1 - RIGHT) * (1 - threshold**A_WRONG))


def synthetic(rng, n):
    correct = rng.uniform(size=n) < RIGHT
    probability = np.where(correct, rng.beta(A_RIGHT, 1, n), rng.beta(A_WRONG, 1, n))
    return probability, correct


def naive_threshold(probability, correct):
    """The same fixed sequence, stopped where the plain share of right predictions falls below the target: no
    bound, as a threshold fitted on a few validation images usually is."""
    accepted, right = op.accepted_counts(*op._sorted(probability, correct))
    share = np.where(accepted > 0, right / np.maximum(accepted, 1), 1.0)
    failed = np.flatnonzero(share < TARGET)
    return op.THRESHOLDS[failed[0] - 1] if len(failed) and failed[0] > 0 else None


def test_the_certified_precision_meets_the_target_in_the_promised_share_of_draws():
    rng = np.random.default_rng(7)
    draws, shortfalls, naive_shortfalls, certified = 400, 0, 0, 0
    for _ in range(draws):
        probability, correct = synthetic(rng, 400)
        found = op.certify(probability, correct, TARGET, CONFIDENCE)
        if found:
            certified += 1
            shortfalls += true_precision(found[0]) < TARGET
        naive = naive_threshold(probability, correct)
        naive_shortfalls += naive is not None and true_precision(naive) < TARGET
    # at most 1 - confidence of the draws fall short, up to three binomial standard errors of 400 draws
    assert shortfalls / draws <= (1 - CONFIDENCE) + 3 * np.sqrt(0.1 * 0.9 / draws)
    assert certified / draws > 0.9  # it does certify: the bound is not met by accepting nothing
    assert naive_shortfalls / draws > 0.3  # without the bound the target is missed often: this test can fail


def test_a_class_with_too_few_calibration_images_is_never_accepted_on_its_own_bound():
    needed = op.min_images(TARGET, CONFIDENCE)
    classes = ["few", "enough"]
    # "few": 44 images, every one right at probability 1: its own bound cannot reach 0.95; "enough": 45 of them
    predicted = np.r_[np.zeros(needed - 1, int), np.ones(needed, int)]
    table = op.fit(classes, predicted, np.ones(len(predicted)), np.ones(len(predicted), bool), TARGET, CONFIDENCE)
    rows = table.set_index("class")
    assert rows.loc["few", "scope"] == "none" and np.isnan(rows.loc["few", "threshold"])
    assert rows.loc["few", "accepted_calibration"] == 0 and rows.loc["few", "calibration_images"] == needed - 1
    assert rows.loc["enough", "scope"] == "class" and rows.loc["enough", "accepted_calibration"] == needed
    assert rows.loc["enough", "precision_lower_bound"] >= TARGET


def test_small_classes_share_the_pooled_threshold_and_its_bound():
    rng = np.random.default_rng(3)
    classes = [f"c{i}" for i in range(8)]
    predicted = np.repeat(np.arange(8), 30)  # 30 each: none has enough alone, 240 together
    probability, correct = synthetic(rng, len(predicted))
    table = op.fit(classes, predicted, probability, correct, TARGET, CONFIDENCE)
    pooled = op.certify(probability, correct, TARGET, CONFIDENCE)
    assert pooled is not None and (table["scope"] == "pooled").all()
    assert (table["threshold"] == pooled[0]).all() and (table["precision_lower_bound"] == pooled[2]).all()
    assert table["accepted_calibration"].sum() == pooled[1] == (probability >= pooled[0]).sum()
    # predictions above the pooled threshold are accepted, whichever small class they are of
    assert (op.accept(predicted, probability, table["threshold"]) == (probability >= pooled[0])).all()


def test_the_test_columns_are_measured_and_never_fitted():
    rng = np.random.default_rng(5)
    classes = ["a", "b", "c"]

    def images(n):
        labels = rng.integers(0, 3, n)
        probability, correct = synthetic(rng, n)
        predicted = np.where(correct, labels, (labels + 1) % 3)
        return predicted, probability, labels

    calibration = images(600)
    one = op.operating_points(classes, calibration, images(300), TARGET, CONFIDENCE, "abc")
    other_test = images(300)
    two = op.operating_points(classes, calibration, other_test, TARGET, CONFIDENCE, "abc")
    fitted = ["scope", "threshold", "calibration_images", "accepted_calibration", "precision_lower_bound"]
    assert one[fitted].equals(two[fitted]) and not one["test_coverage"].equals(two["test_coverage"])
    predicted, probability, labels = other_test
    for i, row in two.iterrows():  # brute force, image by image
        accepted = [p == i and q >= row["threshold"] for p, q in zip(predicted, probability)]
        right = [a and p == t for a, p, t in zip(accepted, predicted, labels)]
        if sum(accepted) == 0:
            assert np.isnan(row["test_precision"])
        else:
            assert row["test_precision"] == pytest.approx(sum(right) / sum(accepted))
        assert row["test_coverage"] == pytest.approx(sum(right) / sum(labels == i))
    # evaluate.py's summary line: the scopes counted, and the whole test split's coverage and precision, image by image
    accepted = [q >= two["threshold"].iloc[p] for p, q in zip(predicted, probability)]
    right = [a and p == t for a, p, t in zip(accepted, predicted, labels)]
    line = op.summary(two, other_test)
    scopes = two["scope"].value_counts()
    assert f"{scopes.get('class', 0)} classes on their own bound, {scopes.get('pooled', 0)} pooled" in line
    assert f"{sum(right)} of 300 images accepted under their right class (coverage {sum(right) / 300:.3f})" in line
    assert line.endswith(f"precision of the accepted {sum(right) / sum(accepted):.3f}")


def own_copy(novelty_ready, tmp_path):
    """(config, argv) of a copy of the shared trained model's output folder, for a test to change."""
    cfg, argv = novelty_ready
    out = tmp_path / "out"
    shutil.copytree(cfg.output_dir, out)
    argv = [a for a in argv if not a.startswith("--output_dir=")] + [f"--output_dir={str(out)!r}"]
    return evaluate.config.load_config(argv), argv


def test_evaluate_fits_on_the_validation_split_only(novelty_ready, tmp_path, monkeypatch, capsys):
    cfg, argv = own_copy(novelty_ready, tmp_path)
    out = tmp_path / "out"
    seen = {}
    real_fit = op.fit

    def recording_fit(classes, predicted, *rest):
        seen["calibration_images"] = len(predicted)
        return real_fit(classes, predicted, *rest)

    monkeypatch.setattr(op, "fit", recording_fit)
    evaluate.main(argv)
    split = pd.read_csv(out / "results" / "split.csv")
    seen_split = split[split["label"].isin(cfg.seen_classes)]
    assert seen["calibration_images"] == (seen_split["split"] == "val").sum() > 0
    table = pd.read_csv(out / "results" / "operating_points.csv")
    assert list(table.columns) == list(op.COLUMNS) and list(table["class"]) == cfg.seen_classes
    digest = checkpoint.load_trained(evaluate.config.load_config(argv), model=False, split=False).digest
    assert (table["checkpoint_sha256"] == digest).all()
    assert table["calibration_images"].sum() == seen["calibration_images"]
    # the tiny demo has a handful of validation images: nothing can be certified, which the table says
    assert (table["scope"] == "none").all() and table["threshold"].isna().all()
    assert f"0 classes on their own bound, 0 pooled, {len(cfg.seen_classes)} never accepted" in capsys.readouterr().out
    assert (
        "results/operating_points.csv"
        in artifacts.read_json(out / "results" / "evaluate_manifest.json", "x")["outputs"]
    )
    evaluate.main(argv + ["--accept_precision=None"])  # off: the file goes with the rest of the old set
    assert not (out / "results" / "operating_points.csv").exists()


def test_predict_fills_accepted_only_with_operating_points_of_its_checkpoint(novelty_ready, tmp_path, capsys):
    cfg, argv = own_copy(novelty_ready, tmp_path)
    argv = argv + [f"--predict_dir={str(cfg.data_root + '/Retaria')!r}", "--ecotaxa=True"]
    results = tmp_path / "out" / "results"
    (results / "operating_points.csv").unlink(missing_ok=True)

    def predicted():
        return pd.read_csv(results / "predictions.csv"), pd.read_csv(results / "prediction_counts.csv")

    predict.main(argv)  # none: it predicts all the same, and says what makes the file
    rows, counts = predicted()
    assert len(rows) == 36 and rows["accepted"].isna().all() and counts["accepted"].isna().all()
    assert "`python evaluate.py --output_dir=" in capsys.readouterr().err

    evaluate.main(argv)
    table = pd.read_csv(results / "operating_points.csv")
    everything = table.assign(scope="class", threshold=0.5)  # as if certified: every prediction from 0.5 up
    everything.to_csv(results / "operating_points.csv", index=False)
    predict.main(argv)
    rows, counts = predicted()
    expected = (rows["probability"] >= 0.5) & ~rows["possibly_new"]  # a possibly new image is never accepted
    assert (rows["accepted"] == expected).all() and (rows["accept_threshold"] == 0.5).all()
    assert 0 < expected.sum() and (~rows["accepted"]).sum() > 0  # both kinds, or the test proves little
    per_class = rows[rows["accepted"]]["predicted"].value_counts().reindex(counts["class"], fill_value=0)
    assert list(counts["accepted"]) == list(per_class)
    assert list(counts["to_review"]) == list(counts["images"] - counts["accepted"])
    assert (counts["accepted_share"] + counts["to_review_share"]).sum() == pytest.approx(1.0)
    ecotaxa = pd.read_csv(results / "ecotaxa_predictions.tsv", sep="\t", skiprows=[1])
    assert (ecotaxa["object_annotation_status"] == "predicted").all()  # every prediction stays `predicted`
    assert list(ecotaxa["object_accepted"]) == list(expected.astype(int))

    everything.assign(checkpoint_sha256="0" * 64).to_csv(results / "operating_points.csv", index=False)
    capsys.readouterr()
    predict.main(argv)  # another checkpoint's: refused, predicted all the same
    rows, counts = predicted()
    assert len(rows) == 36 and rows["accepted"].isna().all()
    message = capsys.readouterr().err
    assert "another checkpoint" in message and "python evaluate.py" in message
