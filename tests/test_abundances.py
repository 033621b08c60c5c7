"""Abundances (lab/abundances.py, predict.py's results/abundances.csv): the corrections recover the true class
proportions of a synthetic classifier with a known confusion matrix, within their intervals, where classify and
count does not; the table adds up; the calibration reads the validation split and never a test image; a failed
run leaves the previous files; the report's chart; the benchmark's measurement on arrays."""

import numpy as np
import pandas as pd
import pytest

import lab
import predict
from lab import (
    abundance_inputs,
    abundances,
    artifacts,
    config,
    embedding_files,
    report_charts,
    report_optional,
    splitting,
)

# Column j: where the images of true class j go, P(predicted i | true j). Each row's largest entry is on the
# diagonal, so the calibrated posterior of a prediction i has its argmax at i (the head predicts what it says).
CONFUSION = np.array(
    [[0.80, 0.10, 0.05, 0.05], [0.10, 0.75, 0.10, 0.05], [0.05, 0.10, 0.75, 0.15], [0.05, 0.05, 0.10, 0.75]]
)
TRAINING_PRIOR = np.full(4, 0.25)
SAMPLE_PRIOR = np.array([0.60, 0.25, 0.10, 0.05])  # a bloom of class 0, the shift a field sample brings


def synthetic_head(labels, rng):
    """The probabilities of a classifier, for images of these true labels, whose only knowledge of an image is its
    predicted class i, drawn from CONFUSION's column of the true class; its probabilities are the exact posterior
    of i under the training prior (Bayes), so every method's assumptions hold and the truth is known."""
    predicted = np.array([rng.choice(4, p=CONFUSION[:, j]) for j in labels])
    posterior = CONFUSION * TRAINING_PRIOR
    posterior /= posterior.sum(axis=1, keepdims=True)
    return posterior[predicted]


@pytest.fixture(scope="module")
def synthetic():
    """(calibration: 2000 images of each class, as a stratified validation split; the probabilities of a sample of
    3000 images in SAMPLE_PRIOR's shares; those shares, the truth)."""
    rng = np.random.default_rng(7)
    labels = np.repeat(np.arange(4), 2000)
    calibration = abundances.Calibration(synthetic_head(labels, rng), labels, TRAINING_PRIOR)
    sample_labels = np.repeat(np.arange(4), (SAMPLE_PRIOR * 3000).astype(int))
    return calibration, synthetic_head(sample_labels, rng), SAMPLE_PRIOR


def test_the_head_as_quapy_sees_it_counts_and_averages_as_the_lab_does(synthetic):
    calibration, sample, _ = synthetic
    head = abundances.TrainedHead(4)
    assert (head.predict(sample) == sample.argmax(1)).all()
    np.testing.assert_array_equal(head.predict_proba(sample), sample)  # the rows are the probabilities
    with pytest.raises(ValueError, match="expected probability rows of 4 classes"):
        head.predict_proba(sample[:, :3])
    cc = abundances.estimate(abundances.fitted("cc", *calibration[:2]), sample)
    pcc = abundances.estimate(abundances.fitted("pcc", *calibration[:2]), sample)
    assert cc == pytest.approx(np.bincount(sample.argmax(1), minlength=4) / len(sample))
    assert pcc == pytest.approx(sample.mean(axis=0))
    with pytest.raises(RuntimeError, match="must not fit"):
        head.fit(*calibration[:2])
    with pytest.raises(ValueError, match="4 classes"):
        head.predict_proba(sample[:, :3])


def test_corrections_recover_the_true_proportions_within_their_intervals(synthetic):
    """One seeded draw of calibration and sample. Over 40 other seeds, each of these 95 % intervals held the truth
    92-100 % of the time and all twelve at once 82 % (the benchmark measures the rate on real images); the
    largest error was 0.03."""
    calibration, sample, truth = synthetic
    expected_cc = CONFUSION @ truth  # what classify and count converges to: the errors of class 0 flood the rest
    for method in ("acc", "pacc", "emq"):
        calibrated = abundances.Calibrated(method, calibration, draws=100, seed=0)
        point, low, high = calibrated.interval(sample, abundances.sample_rng(0, method))
        assert np.abs(point - truth).max() < 0.04, method
        assert ((low <= truth) & (truth <= high)).all(), (method, low, truth, high)
        assert (high - low).max() < 0.15 and point.sum() == pytest.approx(1)
    cc = abundances.Calibrated("cc", calibration, draws=100, seed=0)
    point, low, high = cc.interval(sample, abundances.sample_rng(0, "cc"))
    assert point == pytest.approx(expected_cc, abs=0.03)
    assert not ((low <= truth) & (truth <= high)).all()  # the plain count misses the truth: the correction matters


def test_the_same_seed_gives_the_same_interval_and_the_calibration_resamples_keep_each_class(synthetic):
    calibration, sample, _ = synthetic
    first = abundances.Calibrated("pacc", calibration, 20, 3).interval(sample, abundances.sample_rng(3, "pacc"))
    again = abundances.Calibrated("pacc", calibration, 20, 3).interval(sample, abundances.sample_rng(3, "pacc"))
    assert all((a == b).all() for a, b in zip(first, again))
    labels = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3])
    rows = abundances.stratified_resample(labels, np.random.default_rng(0))
    assert (np.bincount(labels[rows], minlength=4) == np.bincount(labels, minlength=4)).all()
    assert len(np.unique(rows)) < len(rows)  # drawn with replacement


def test_the_table_adds_up_and_counts_the_possibly_new_apart(synthetic):
    calibration, sample, _ = synthetic
    flagged = np.zeros(len(sample), bool)
    flagged[::10] = True
    classes = ["a", "b", "c", "d"]
    table = abundances.abundance_frame(classes, sample[:400], flagged[:400], calibration, "pacc", 20, 0)
    assert list(table.columns) == abundances.COLUMNS and len(table) == 5
    seen, new = table[~table["possibly_new"]], table[table["possibly_new"]].iloc[0]
    assert list(seen["class"]) == classes and new["class"] == abundances.POSSIBLY_NEW and new["count"] == 40
    kept = sample[:400][~flagged[:400]]
    assert list(seen["cc_count"]) == list(np.bincount(kept.argmax(1), minlength=4))
    # the corrected counts are shares times 360 (their sum may differ from 360 in the last bit)
    assert seen["count"].sum() + new["count"] == pytest.approx(400) and seen["cc_count"].sum() + new["cc_count"] == 400
    assert seen["proportion"].sum() == pytest.approx(1) and seen["cc_proportion"].sum() == pytest.approx(1)
    assert (seen["proportion"] == seen["proportion_pacc"]).all() and (seen["method"] == "pacc").all()
    assert seen["cc_proportion"].to_numpy() == pytest.approx(seen["proportion_cc"].to_numpy())
    assert ((seen["proportion_low"] <= seen["proportion"]) & (seen["proportion"] <= seen["proportion_high"])).all()
    assert seen["count_high"].to_numpy() == pytest.approx(seen["proportion_high"].to_numpy() * 360)
    assert (table["calibration_images"] == 8000).all() and (table["bootstrap_draws"] == 20).all()
    assert (table["calibration"] == "validation").all()
    everything_new = abundances.abundance_frame(classes, sample[:5], np.ones(5, bool), calibration, "emq", 20, 0)
    assert everything_new["count"].tolist() == [0, 0, 0, 0, 5] and everything_new["proportion"].isna()[:4].all()


def test_abundance_settings_are_validated(make_cfg):
    assert make_cfg()[0].abundance_method in config.ABUNDANCE_METHODS
    for bad in ("--abundance_method=median", "--abundance_bootstrap=5"):
        with pytest.raises(lab.LabError, match=bad.split("=")[0][2:]):
            make_cfg(bad)


# --------------------------------------------------------------------------- with the lab's model


def test_a_method_that_cannot_be_fitted_falls_back_to_pacc_and_says_so(synthetic, monkeypatch, capsys):
    calibration, sample, _ = synthetic
    real = abundances.fitted

    def fitted(method, *args, **kwargs):
        if method == "emq_nbvs":
            raise RuntimeError("no finite optimum")
        return real(method, *args, **kwargs)

    monkeypatch.setattr(abundances, "fitted", fitted)
    table = abundances.abundance_frame(
        ["a", "b", "c", "d"], sample[:300], np.zeros(300, bool), calibration, "emq_nbvs", 20, 0
    )
    seen = table[~table["possibly_new"]]
    assert (seen["method"] == abundances.FALLBACK).all() and seen["proportion_emq_nbvs"].isna().all()
    assert (seen["proportion"] == seen["proportion_pacc"]).all()
    assert "abundance_method='emq_nbvs' could not be fitted" in capsys.readouterr().err


def test_a_bug_stops_the_table_instead_of_passing_for_a_method_that_cannot_be_fitted(synthetic, monkeypatch):
    """An AssertionError is a broken invariant, not a refusal of QuaPy's: never an empty column or the fallback."""
    calibration, sample, _ = synthetic
    real = abundances.fitted

    def fitted(method, *args, **kwargs):
        if method == "emq_nbvs":
            raise AssertionError("a broken invariant")
        return real(method, *args, **kwargs)

    monkeypatch.setattr(abundances, "fitted", fitted)
    for method in ("pacc", "emq_nbvs"):  # the column of every method, and the method asked for
        with pytest.raises(AssertionError, match="broken invariant"):
            abundances.abundance_frame(
                ["a", "b", "c", "d"], sample[:300], np.zeros(300, bool), calibration, method, 20, 0
            )


def test_quapy_refuses_calibration_sets_it_cannot_fit_by_the_errors_fit_errors_names():
    """No image, one image, one class only: where QuaPy refuses to fit or estimate, it says so by one of FIT_ERRORS
    (which the table turns into an empty column or the fallback), never by an assert, which it lets through."""
    probabilities = np.random.default_rng(0).dirichlet(np.ones(4), 12)
    prior = np.full(4, 0.25)
    refused = set()
    for method in config.ABUNDANCE_METHODS:
        for rows, labels in ((slice(0, 0), []), (slice(0, 1), [2]), (slice(0, 12), [1] * 12)):
            try:
                quantifier = abundances.fitted(method, probabilities[rows], np.array(labels, int), prior)
                assert abundances.estimate(quantifier, probabilities).shape == (4,)
            except abundances.FIT_ERRORS:
                refused.add(method)
    assert {"acc", "emq_bcts", "emq_nbvs"} <= refused  # the refusals happen, and are of the kind caught


def test_predict_writes_abundances_that_agree_with_its_counts(novelty_ready_copy, tiny_demo, capsys):
    """The validation images calibrate the table (the default abundance_calibration)."""
    cfg, argv = novelty_ready_copy
    sample = tiny_demo / "chainthin"
    counts = predict.main(argv + [f"--predict_dir={str(sample)!r}", "--abundance_bootstrap=20"])
    table = artifacts.read_csv(artifacts.out_path(cfg, "results", "abundances.csv"), ("class", "method"))
    predictions = pd.read_csv(artifacts.out_path(cfg, "results", "predictions.csv"))
    seen, new = table[~table["possibly_new"]], table[table["possibly_new"]]
    err = capsys.readouterr().err
    assert (table["calibration"] == "validation").all()
    # the tiny demo keeps 2 validation images per class: the default's re-calibration may not fit on them
    fell_back = f"abundance_method='{cfg.abundance_method}' could not be" in err
    assert (seen["method"] == (abundances.FALLBACK if fell_back else cfg.abundance_method)).all()
    assert list(seen["class"]) == cfg.seen_classes
    assert list(seen["cc_count"]) == list(counts["images"] - counts["possibly_new"])
    assert int(new["count"].iloc[0]) == predictions["possibly_new"].sum()
    assert seen["count"].sum() + new["count"].sum() == pytest.approx(len(predictions))
    assert (seen["bootstrap_draws"] == 20).all()


def calibration_inputs(cfg):
    import json

    from lab import checkpoint
    from lab import novelty_scores as ns

    trained = checkpoint.load_trained(cfg, model=False)
    scorer = ns.scorer_from_artifacts(trained.cfg, trained.ckpt, trained.digest)
    threshold = json.loads(artifacts.out_path(cfg, "results", "novelty_thresholds.json").read_text())["thresholds"][
        cfg.novelty_score
    ]
    return trained, (trained.cfg, scorer, threshold, trained.digest, trained.ckpt["classes"])


def scrambled_test_embeddings(monkeypatch):
    """The test embeddings' values, permuted in memory: a calibration that never reads them stays the same."""
    real = embedding_files.load_embeddings

    def scrambled(c, name):
        frame, x = real(c, name)
        return (frame, np.random.default_rng(0).permutation(x)) if name == "test" else (frame, x)

    monkeypatch.setattr(embedding_files, "load_embeddings", scrambled)


def test_the_calibration_reads_the_validation_split_and_never_a_test_image(novelty_ready_copy, monkeypatch):
    cfg, _ = novelty_ready_copy
    trained, inputs = calibration_inputs(cfg)
    read = []
    original = embedding_files.load_embeddings
    monkeypatch.setattr(embedding_files, "load_embeddings", lambda c, name: read.append(name) or original(c, name))
    calibration = abundance_inputs.calibration_from_artifacts(*inputs)
    probabilities, labels, prior, paths, source = calibration
    assert read == ["val"] and source == "validation"
    split = splitting.read_or_draw_split(trained.cfg)
    by_split = {
        name: set(splitting.absolute_paths(trained.cfg, split[split["split"] == name]["path"]))
        for name in ("val", "test", "train")
    }
    assert set(paths) <= by_split["val"] and not set(paths) & (by_split["test"] | by_split["train"])
    assert len(paths) >= 0.8 * len(by_split["val"])  # the flag leaves out about 5 % of the known images
    assert probabilities.shape == (len(paths), len(cfg.seen_classes)) and len(labels) == len(paths)
    val_labels = split[split["split"] == "val"]["label"]
    assert prior == pytest.approx(val_labels.value_counts(normalize=True)[cfg.seen_classes].to_numpy())
    scrambled_test_embeddings(monkeypatch)
    again = abundance_inputs.calibration_from_artifacts(*inputs)
    assert (again.probabilities == probabilities).all() and again.paths == paths


def test_the_out_of_fold_calibration_is_the_audits_training_and_validation_outputs(novelty_ready_copy, monkeypatch):
    """abundance_calibration="out_of_fold": audit.py's heads (audit_model="head") never trained on a test image
    (tests/test_audit.py); the calibration takes their outputs of the training and validation images only, as the
    audit wrote them. No audit, a stale one or the linear model's names audit.py: never a silent fallback."""
    import audit

    cfg, argv = novelty_ready_copy
    trained, inputs = calibration_inputs(cfg)
    with pytest.raises(lab.LabError, match="Run `python audit.py --audit_model=head`"):
        abundance_inputs.calibration_from_artifacts(*inputs, "out_of_fold")
    audit.main(argv)  # the default linear model: not the head whose confusions the abundances correct
    with pytest.raises(lab.LabError, match="audit_model='linear'"):
        abundance_inputs.calibration_from_artifacts(*inputs, "out_of_fold")
    audit.main(argv + ["--audit_model=head"])
    calibration = abundance_inputs.calibration_from_artifacts(*inputs, "out_of_fold")
    assert calibration.source == "out_of_fold"
    issues = artifacts.read_csv(artifacts.out_path(cfg, "results", "label_issues.csv"), ("path", "split", "label"))
    issues.index = splitting.absolute_paths(trained.cfg, issues["path"])  # the calibration's paths are absolute
    split_of = issues["split"].to_dict()
    assert {split_of[p] for p in calibration.paths} == {"train", "val"}
    assert len(calibration.paths) >= 0.8 * sum(s in ("train", "val") for s in split_of.values())
    rows = issues.loc[list(calibration.paths)]
    columns = [f"p_{c}" for c in trained.ckpt["classes"]]
    np.testing.assert_allclose(calibration.probabilities, rows[columns].to_numpy(), rtol=1e-6)
    assert list(calibration.labels) == [trained.ckpt["classes"].index(label) for label in rows["label"]]
    read = []
    original = embedding_files.load_embeddings
    monkeypatch.setattr(embedding_files, "load_embeddings", lambda c, name: read.append(name) or original(c, name))
    again = abundance_inputs.calibration_from_artifacts(*inputs, "out_of_fold")
    assert (again.probabilities == calibration.probabilities).all() and again.paths == calibration.paths
    assert sorted(set(read)) == ["train", "val"]  # for the novelty flag; never the test embeddings
    with pytest.raises(lab.LabError, match="another checkpoint"):
        abundance_inputs.calibration_from_artifacts(*inputs[:3], "0" * 64, inputs[4], "out_of_fold")
    # an audit written before its fold heads left the test images alone is refused
    import json

    from lab import manifest

    path = manifest.manifest_path(cfg, "audit")
    body = json.loads(path.read_text())
    del body["inputs"]["test_images_trained_on"]
    path.write_text(json.dumps(body))
    with pytest.raises(lab.LabError, match="older audit.py"):
        abundance_inputs.calibration_from_artifacts(*inputs, "out_of_fold")


@pytest.mark.slow  # three audits (one of them the head's) and a prediction: 6 s, kept out of make test-fast
def test_an_out_of_fold_calibration_needs_the_heads_audit_and_the_report_drops_it_once_replaced(
    novelty_ready_copy, tiny_demo, monkeypatch
):
    """predict.py refuses abundance_calibration='out_of_fold' with a linear audit before its trunk pass (nothing to
    wait for); with the head's audit it calibrates on it; once audit.py has run again with another model, the
    report leaves those abundances out and names the commands: never abundances beside an audit that did not make
    them."""
    from types import SimpleNamespace

    import audit

    cfg, argv = novelty_ready_copy
    sample = argv + [
        f"--predict_dir={str(tiny_demo / 'chainthin')!r}",
        "--abundance_bootstrap=20",
        "--abundance_calibration=out_of_fold",
    ]
    audit.main(argv)
    real_chunks = predict.run_chunks
    monkeypatch.setattr(predict, "run_chunks", lambda *a, **k: pytest.fail("the trunk pass ran before the refusal"))
    with pytest.raises(lab.LabError, match="audit_model='linear'.*python audit.py --audit_model=head"):
        predict.main(sample)
    monkeypatch.setattr(predict, "run_chunks", real_chunks)
    audit.main(argv + ["--audit_model=head"])
    predict.main(sample)
    results = artifacts.out_path(cfg, "results")
    run = SimpleNamespace(predict=embedding_files.current_predict_set(cfg))
    assert run.predict["inputs"]["audit"] is not None
    shown = report_optional.abundances_part(cfg, results, run)
    assert len(shown) == 1 and "out-of-fold training and validation images" in shown[0] and "Left out" not in shown[0]
    audit.main(argv)  # the pipeline's default audit replaces the head's
    left_out = report_optional.abundances_part(cfg, results, run)
    assert len(left_out) == 1 and "Left out" in left_out[0] and "--audit_model=head" in left_out[0]
    assert "Classify and count" not in left_out[0]
    from lab import manifest

    manifest.manifest_path(cfg, "audit").unlink()  # no complete audit at all: left out too, and said so
    assert "no complete audit" in report_optional.abundances_part(cfg, results, run)[0]


def test_a_failed_run_leaves_the_previous_abundances_and_counts(novelty_ready_copy, tiny_demo, monkeypatch):
    cfg, argv = novelty_ready_copy
    predict.main(argv + [f"--predict_dir={str(tiny_demo / 'chainthin')!r}", "--abundance_bootstrap=20"])
    kept = {
        name: artifacts.out_path(cfg, "results", name).read_bytes()
        for name in ("abundances.csv", "prediction_counts.csv")
    }

    def broken(*args, **kwargs):
        raise lab.LabError("the calibration failed")

    monkeypatch.setattr(abundance_inputs, "sample_abundances", broken)
    with pytest.raises(lab.LabError, match="calibration failed"):
        predict.main(argv + [f"--predict_dir={str(tiny_demo / 'Retaria')!r}", "--abundance_bootstrap=20"])
    for name, content in kept.items():
        assert artifacts.out_path(cfg, "results", name).read_bytes() == content, name
    assert not list(artifacts.out_path(cfg, "results").glob(".abundances*"))


def test_the_report_section_shows_the_chart_and_the_table(synthetic):
    calibration, sample, _ = synthetic
    table = abundances.abundance_frame(
        ["a", "b", "c", "d"], sample[:200], np.zeros(200, bool), calibration, "emq", 20, 0
    )
    png = report_charts.abundance_chart(table)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    section = report_optional.abundances_section(table)
    assert "data:image/png;base64," in section and section.count("</tr>") == 5 and "emq" in section


def test_the_benchmark_measures_every_method_on_shifted_samples(synthetic):
    from bench import bench_abundances

    calibration, _, _ = synthetic
    rng = np.random.default_rng(1)
    test_labels = np.repeat(np.arange(4), 150)
    flagged = np.zeros(600, bool)
    test = (synthetic_head(test_labels, rng), test_labels, flagged)
    summary, per_sample = bench_abundances.measure(
        calibration, test, samples=4, sample_size=300, draws=20, seed=0, methods=("cc", "emq")
    )
    assert len(per_sample) == 4 and set(summary) == {"cc", "emq"}
    assert all(np.sum(s["truth"]) == pytest.approx(1) for s in per_sample)
    assert summary["emq"]["mae"] < summary["cc"]["mae"]
    assert summary["cc"]["coverage"] < summary["emq"]["coverage"]
