"""The label audit (audit.py, lab/label_audit.py): an out-of-fold model (linear or head) never saw the images it
scores, planted label flips rank first, the cached splits pool without copies, the EcoTaxa table's layout, the
map's hover text, and the stage end to end on the tiny demo. Synthetic sets are small and in memory: these tests
are fast."""

import numpy as np
import pandas as pd
import pytest
import torch

import audit
import backbone
import lab
from lab import artifacts, cached_features, config, ecotaxa, interactive_map, label_audit, manifest

CLASSES = ["alpha", "beta", "gamma"]
IMAGE_SIZE = 32  # the trunk's output: 64 x 4 x 4


def cached_split(features, labels, split):
    """A CachedSplit of in-memory features, with split.csv-like rows (every image decoded)."""
    rows = pd.DataFrame(
        {
            "path": [f"{CLASSES[y]}/{split}_{i:03d}.png" for i, y in enumerate(labels)],
            "label": [CLASSES[y] for y in labels],
            "split": split,
        }
    )
    return cached_features.CachedSplit(features.astype(np.float16), np.ones(len(labels), bool), labels, rows)


def pooled(features, labels):
    """The images as train, val and test parts (60/20/20 %), pooled as audit.py pools them."""
    cut = np.cumsum([0, round(0.6 * len(labels)), round(0.2 * len(labels))])
    parts = [
        cached_split(features[a:b], labels[a:b], s)
        for s, a, b in zip(("train", "val", "test"), cut, [*cut[1:], len(labels)])
    ]
    return cached_features.PooledSplit(parts)


def separable_set(per_class, seed=0):
    """Features of three classes, each with its own block of raised channels, plus noise; shuffled."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(len(CLASSES)), per_class))
    features = rng.normal(0, 1, (len(labels), backbone.TRUNK_CHANNELS, 4, 4))
    for c in range(len(CLASSES)):
        features[labels == c, 20 * c : 20 * c + 20] += 2.5
    return features, labels


@pytest.fixture(autouse=True)
def one_thread():
    """The synthetic heads are tiny: one thread is fastest, and a busy machine cannot slow it down by contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model():
    return backbone.PlanktonNet(len(CLASSES), IMAGE_SIZE, None, 0, embedding_dim=16, dropout=0.0)


def training(epochs, lr=3e-3, batch_size=32):
    return label_audit.FoldTraining(
        epochs=epochs, lr=lr, batch_size=batch_size, class_weighting="none", head_dtype=None, seed=0
    )


def test_pooled_splits_batch_every_part_in_place_and_subsets_compose():
    features, labels = separable_set(10)
    data = pooled(features, labels)
    everything = torch.cat([x for x, _ in data.batches(7)])
    assert everything.shape == (30, 64, 4, 4)
    assert torch.equal(everything, torch.from_numpy(features.astype(np.float16).astype(np.float32)))
    assert list(data.rows["split"]) == ["train"] * 18 + ["val"] * 6 + ["test"] * 6
    inner = data.subset([29, 3, 17, 20]).subset([0, 2, 3])  # positions 29, 17, 20: test, train, val
    x, y = next(inner.batches(10))
    assert list(inner.positions) == [29, 17, 20] and torch.equal(y, torch.as_tensor(labels[[29, 17, 20]]))
    assert torch.equal(x, torch.from_numpy(features[[29, 17, 20]].astype(np.float16).astype(np.float32)))
    assert list(inner.rows["path"]) == [data.rows["path"][i] for i in (29, 17, 20)]


def test_folds_are_stratified_seeded_and_refused_beyond_the_largest_class(own_defaults):
    own_defaults({"audit_folds = 5": "audit_folds = 4"})  # the default the message quotes is the defaults file's
    labels = np.repeat([0, 1, 2], [20, 10, 5])
    folds = label_audit.assign_folds(labels, 5, seed=3)
    assert np.array_equal(folds, label_audit.assign_folds(labels, 5, seed=3))
    assert not np.array_equal(folds, label_audit.assign_folds(labels, 5, seed=4))
    for c, per_fold in ((0, 4), (1, 2), (2, 1)):
        assert np.bincount(folds[labels == c], minlength=5).tolist() == [per_fold] * 5
    with pytest.raises(lab.LabError, match=r"audit_folds=21 .*Lower audit_folds \(the default is 4\)"):
        label_audit.assign_folds(labels, 21, seed=0)


def test_an_out_of_fold_head_never_saw_the_images_it_scores_nor_any_test_image(model, monkeypatch):
    """What each fold's head was trained on (every run_epoch: always with an optimizer) and what it scored. The test
    images are scored, each once, but never trained on: the abundances calibrate on these heads' outputs."""
    features, labels = separable_set(12)
    data = pooled(features, labels)
    calls = []
    real_epoch, real_outputs = label_audit.head_training.run_epoch, label_audit.cached_features.head_outputs

    def epoch(model, part, device, batch_size, optimizer=None, *args, **kwargs):
        calls.append(("train" if optimizer is not None else "loss", set(part.positions.tolist())))
        return real_epoch(model, part, device, batch_size, optimizer, *args, **kwargs)

    def outputs(model, part, *args, **kwargs):
        calls.append(("score", set(part.positions.tolist())))
        return real_outputs(model, part, *args, **kwargs)

    monkeypatch.setattr(label_audit.head_training, "run_epoch", epoch)
    monkeypatch.setattr(label_audit.cached_features, "head_outputs", outputs)
    folds, epochs = 4, 2
    issues = label_audit.audit_labels(
        model, data, CLASSES, training(epochs), folds, torch.device("cpu"), log=lambda _: None, audit_model="head"
    )

    assert [kind for kind, _ in calls] == (["train"] * epochs + ["score"]) * folds  # no loss on held-out images
    everything, scored_so_far = set(range(len(data))), set()
    test_images = set(np.flatnonzero(data.rows["split"] == "test").tolist())
    assert len(test_images) == len(data) // 5
    fold_of_path = dict(zip(issues["path"], issues["fold"]))
    for k in range(folds):
        block = calls[k * (epochs + 1) : (k + 1) * (epochs + 1)]
        trained_on, scored = block[0][1], block[-1][1]
        assert all(positions == trained_on for _, positions in block[:-1])
        assert not trained_on & scored and not trained_on & test_images
        assert trained_on | scored | test_images == everything
        assert not scored & scored_so_far
        scored_so_far |= scored
        assert {data.rows["path"][i] for i in scored} == {p for p, f in fold_of_path.items() if f == k + 1}
    assert scored_so_far == everything


def test_an_early_stopped_head_stops_on_its_own_training_images_and_keeps_its_best_epoch(model, monkeypatch):
    """With patience (audit.py's rules), each fold's head trains on part of its training images and is stopped on
    the rest (INNER_SHARE of them, every class there): never a loss on its held-out images or a test image. The
    inner losses are scripted (best at epoch 3): it stops `patience` epochs later and ends with epoch 3's weights."""
    features, labels = separable_set(20)
    data = pooled(features, labels)
    calls, snapshots, real_epoch = [], [], label_audit.head_training.run_epoch
    scripted = iter([0.9, 0.5, 0.2, 0.3, 0.4, 0.6, 0.1, 0.1])  # a later 0.1 must never be reached

    def epoch(model, part, device, batch_size, optimizer=None, *args, **kwargs):
        result = real_epoch(model, part, device, batch_size, optimizer, *args, **kwargs)
        calls.append(("train" if optimizer is not None else "loss", set(part.positions.tolist())))
        if optimizer is None:
            snapshots.append(model.classifier.weight.detach().clone())
            return next(scripted), result[1]
        return result

    monkeypatch.setattr(label_audit.head_training, "run_epoch", epoch)
    rules = label_audit.FoldTraining(
        epochs=12, lr=3e-3, batch_size=16, class_weighting="none", head_dtype=None, seed=0, patience=3
    )
    folds = label_audit.assign_folds(labels, 3, seed=0)
    test_images = set(np.flatnonzero(data.rows["split"] == "test").tolist())
    trains = ~np.isin(np.arange(len(data)), list(test_images))
    trained_on = set(np.flatnonzero((folds != 0) & trains).tolist())
    kept, trained, inner_count = label_audit.train_fold(
        model, data.subset(sorted(trained_on)), rules, torch.device("cpu"), 0, 3
    )
    part, inner = calls[0][1], calls[1][1]  # positions among all the images
    assert [kind for kind, _ in calls] == ["train", "loss"] * 6  # epochs 1-3, then 3 without a better inner loss
    assert all(p == part for kind, p in calls if kind == "train") and all(
        p == inner for kind, p in calls if kind == "loss"
    )
    assert not part & inner and part | inner == trained_on and len(inner) == round(0.1 * len(trained_on))
    assert (trained, inner_count) == (len(part), len(inner)) and set(labels[list(inner)]) == {0, 1, 2}
    assert kept == 3 and not torch.equal(snapshots[2], snapshots[-1])
    assert torch.equal(model.classifier.weight, snapshots[2])  # epoch 3's weights restored, not the last ones


def test_the_inner_part_keeps_a_lone_image_of_its_class_for_training_and_handles_any_seed():
    labels = np.array([0] * 30 + [1])
    for seed in range(50):
        part, inner = label_audit.inner_split(labels, seed)
        assert 30 in part and len(inner) == 3 and not set(part) & set(inner)
    part, inner = label_audit.inner_split(np.array([0, 0, 1]), 2**40)  # a seed beyond numpy's 2**32
    assert 2 in part and set(part) | set(inner) == {0, 1, 2}
    part, inner = label_audit.inner_split(np.array([0, 1, 2]), 0)  # nothing to set apart: no inner part
    assert list(part) == [0, 1, 2] and len(inner) == 0


def test_an_out_of_fold_linear_model_never_saw_the_images_it_scores_nor_any_test_image(model, monkeypatch):
    """What each fold's linear model was fitted on and what it scored, told apart by the images' (unique, random)
    pooled features: disjoint, the test images never fitted on, every image scored once, by its fold's model."""
    features, labels = separable_set(12)
    data = pooled(features, labels)
    pooled_rows = {row.tobytes(): i for i, row in enumerate(label_audit.pooled_features(data))}
    assert len(pooled_rows) == len(data)
    fitted, scored = [], []
    real_fit = label_audit.fit_linear

    def fit(x, y, weighting):
        fitted.append({pooled_rows[row.tobytes()] for row in x})
        assert np.array_equal(y, labels[sorted(fitted[-1])]) and weighting == "none"
        fold_model = real_fit(x, y, weighting)
        real_proba = fold_model.predict_proba
        fold_model.predict_proba = lambda z: scored.append({pooled_rows[row.tobytes()] for row in z}) or real_proba(z)
        return fold_model

    monkeypatch.setattr(label_audit, "fit_linear", fit)
    folds = 4
    issues = label_audit.audit_labels(model, data, CLASSES, training(1), folds, torch.device("cpu"), log=lambda _: None)
    everything = set(range(len(data)))
    test_images = set(np.flatnonzero(data.rows["split"] == "test").tolist())
    fold_of_path = dict(zip(issues["path"], issues["fold"]))
    assert len(fitted) == len(scored) == folds
    for k, (trained_on, held_out) in enumerate(zip(fitted, scored)):
        assert not trained_on & held_out and not trained_on & test_images
        assert trained_on | held_out | test_images == everything
        assert {data.rows["path"][i] for i in held_out} == {p for p, f in fold_of_path.items() if f == k + 1}
    assert sorted(i for part in scored for i in part) == sorted(everything)


def test_out_of_fold_linear_probabilities_do_not_remember_labels_that_a_fitted_model_memorises():
    """Random labels on random features: the linear model scoring its own training images recalls their labels, an
    out-of-fold one cannot (chance is 1/3)."""
    rng = np.random.default_rng(1)
    features, labels = rng.normal(0, 1, (36, 64, 4, 4)), rng.permutation(np.repeat([0, 1, 2], 12))
    vectors = label_audit.pooled_features(pooled(features, labels))
    assert vectors.shape == (36, 64 * label_audit.POOL_GRID**2)
    folds = label_audit.assign_folds(labels, 3, seed=0)
    out_of_fold = label_audit.linear_out_of_fold_probabilities(vectors, labels, folds, "none", 3, log=lambda _: None)
    in_sample = label_audit.fit_linear(vectors, labels, "none").predict_proba(vectors)
    assert (in_sample.argmax(1) == labels).mean() >= 0.9
    assert (out_of_fold.argmax(1) == labels).mean() <= 0.6
    assert out_of_fold.sum(1) == pytest.approx(np.ones(36))


def test_a_class_missing_from_a_folds_training_images_gets_no_probability_there():
    """Class 1 (the middle one) has one image, in fold 0: fold 0's model never saw the class, and its other classes'
    probabilities land in their own columns (brute force: the same model fitted directly)."""
    labels = np.array([0] * 8 + [2] * 8 + [1])
    vectors = np.random.default_rng(0).normal(size=(17, 8)) + labels[:, None]
    fold = np.where(labels == 1, 0, np.arange(17) % 2)
    probabilities = label_audit.linear_out_of_fold_probabilities(
        vectors, labels, fold, "balanced", 3, log=lambda _: None
    )
    held_out, fitted_on = fold == 0, fold == 1
    assert (probabilities[held_out, 1] == 0).all() and (probabilities[fitted_on, 1] > 0).all()
    direct = label_audit.fit_linear(vectors[fitted_on], labels[fitted_on], "balanced")
    np.testing.assert_allclose(probabilities[held_out][:, [0, 2]], direct.predict_proba(vectors[held_out]))
    assert probabilities.sum(1) == pytest.approx(np.ones(17))


def test_a_fold_that_saw_one_class_is_certain_of_it_and_weighting_reaches_the_fit():
    labels = np.array([0, 0, 0, 0, 1])
    fold = np.array([0, 1, 0, 1, 0])  # fold 0 is fitted on images 1 and 3: class 0 only
    vectors = np.arange(10.0).reshape(5, 2)
    probabilities = label_audit.linear_out_of_fold_probabilities(vectors, labels, fold, "none", 2, log=lambda _: None)
    assert (probabilities[fold == 0] == [1.0, 0.0]).all()
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1], [90, 10])
    vectors = rng.normal(size=(100, 4)) + 0.5 * labels[:, None]
    balanced, plain = (label_audit.fit_linear(vectors, labels, w) for w in ("balanced", "none"))
    assert balanced[-1].class_weight == "balanced" and plain[-1].class_weight is None
    assert balanced.predict_proba(vectors)[:, 1].mean() > plain.predict_proba(vectors)[:, 1].mean()


def test_out_of_fold_probabilities_do_not_remember_labels_that_a_trained_head_memorises(model):
    """Random labels on random features: a head scoring its own training images recalls their labels, an
    out-of-fold head cannot (chance is 1/3)."""
    rng = np.random.default_rng(1)
    features, labels = rng.normal(0, 1, (36, 64, 4, 4)), rng.permutation(np.repeat([0, 1, 2], 12))
    data, rules, cpu = pooled(features, labels), training(epochs=30, lr=5e-3, batch_size=36), torch.device("cpu")
    folds = label_audit.assign_folds(labels, 3, seed=0)
    out_of_fold = label_audit.out_of_fold_probabilities(model, data, folds, rules, cpu, 3, log=lambda _: None)
    label_audit.train_fold(model, data, rules, cpu, 0, 3)
    in_sample = cached_features.head_outputs(model, data, cpu, 36)[0]
    assert (in_sample.argmax(1) == labels).mean() >= 0.9
    assert (out_of_fold.argmax(1) == labels).mean() <= 0.6


@pytest.mark.parametrize("audit_model", label_audit.AUDIT_MODELS)
def test_planted_label_flips_rank_first_and_are_flagged(model, audit_model):
    features, labels = separable_set(40)
    flipped = np.random.default_rng(7).choice(len(labels), 6, replace=False)  # 5 %
    noisy = labels.copy()
    noisy[flipped] = (labels[flipped] + 1 + np.arange(6) % 2) % 3
    data = pooled(features, noisy)
    issues = label_audit.audit_labels(
        model, data, CLASSES, training(8), 5, torch.device("cpu"), log=lambda _: None, audit_model=audit_model
    )
    planted = {data.rows["path"][i] for i in flipped}
    assert set(issues["path"].head(6)) == planted  # ranks 1..6
    assert planted <= set(issues.loc[issues["flagged"], "path"])
    top = issues.head(6)
    assert list(top["suggested_label"]) == [CLASSES[labels[data.rows["path"].tolist().index(p)]] for p in top["path"]]
    assert list(issues["rank"]) == list(range(1, len(issues) + 1)) and (issues["corrected_label"] == "").all()


def test_label_quality_is_the_probability_of_the_given_label_and_ranks_ascending():
    rng = np.random.default_rng(0)
    truth = np.repeat([0, 1, 2], 10)
    probabilities = rng.dirichlet([1, 1, 1], 30) * 0.3
    probabilities[np.arange(30), truth] += 0.7  # confident, right predictions
    labels = truth.copy()
    labels[[4, 15, 26]] = [1, 2, 0]  # three wrong labels
    quality, flagged, rank = label_audit.rank_labels(labels, probabilities)
    assert quality == pytest.approx(probabilities[np.arange(30), labels])  # brute force: self-confidence
    assert rank.tolist() == (np.argsort(np.argsort(quality, kind="stable"), kind="stable") + 1).tolist()
    assert set(np.flatnonzero(rank <= 3)) == {4, 15, 26}
    assert flagged.dtype == bool and 2 <= flagged.sum() and set(np.flatnonzero(flagged)) <= {4, 15, 26}


def issues_frame():
    rows = pd.DataFrame(
        {
            "path": ["alpha/a.png", "beta/sub/b.png", "beta/b.png", "gamma/c.jpg"],
            "split": ["train", "test", "val", "train"],
            "label": ["alpha", "beta", "beta", "gamma"],
        }
    )
    probabilities = np.array([[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.1, 0.1, 0.8], [0.1, 0.1, 0.8]])
    return label_audit.issue_table(
        rows,
        CLASSES,
        probabilities,
        probabilities[np.arange(4), [0, 1, 1, 2]],
        np.array([False, True, True, False]),
        np.array([3, 1, 2, 4]),
        np.arange(4) % 2,
    )


def test_ecotaxa_table_of_the_flagged_labels(tmp_path):
    path = ecotaxa.write_table(tmp_path / "label_issues_ecotaxa.tsv", [audit.ecotaxa_frame(issues_frame(), CLASSES)])
    lines = path.read_text().splitlines()
    header, types = lines[0].split("\t"), lines[1].split("\t")
    assert header[:4] == ["img_file_name", "object_id", "object_annotation_category", "object_annotation_status"]
    assert all(h == h.lower() and h.split("_", 1)[0] in ("img", "object") for h in header)
    text = {
        "img_file_name",
        "object_id",
        "object_annotation_category",
        "object_annotation_status",
        "object_suggested_category",
        "object_split",
    }
    assert types == ["[t]" if h in text else "[f]" for h in header]
    table = pd.read_csv(path, sep="\t", skiprows=[1], dtype=str)
    assert list(table["img_file_name"]) == ["beta/sub/b.png", "beta/b.png"]  # flagged only, most suspect first
    assert list(table["object_id"]) == ["beta__sub__b", "beta__b"]
    assert list(table["object_annotation_category"]) == ["beta", "beta"]  # the given label, under review
    assert list(table["object_suggested_category"]) == ["alpha", "gamma"]
    assert set(table["object_annotation_status"]) == {"dubious"}
    assert [h for h in header if h.startswith("object_p_")] == [f"object_p_{c}" for c in CLASSES]


def test_object_ids_stay_unique_across_extensions_and_blocks():
    used = set()
    assert ecotaxa.object_ids(["a/x.jpg", "a/x.png"], used) + ecotaxa.object_ids(["a/x.tif"], used) == [
        "a__x",
        "a__x_2",
        "a__x_3",
    ]


def test_hovering_a_labelled_point_shows_its_label_quality(tmp_path):
    issues = issues_frame()
    issues["path"] = "/data/" + issues["path"]  # made absolute by report.py, as every table the map joins on paths
    coords = pd.DataFrame(
        {
            "split": ["train", "test", "unseen", "train"],
            "label": ["alpha", "beta", "x", "alpha"],
            "path": [f"/data/{p}" for p in ("alpha/a.png", "beta/sub/b.png", "x/a.png", "alpha/z.png")],
            "x": [0.0, 1, 2, 3],
            "y": 0.0,
        }
    )
    points = interactive_map.map_points(coords, issues=issues).set_index("path")
    assert points.loc["/data/alpha/a.png", "audit"] == "label quality 0.90"
    assert (
        points.loc["/data/beta/sub/b.png", "audit"]
        == "label quality 0.10 &middot; <b>label suspect</b>: looks like alpha"
    )
    assert points.loc["/data/x/a.png", "audit"] == "" and points.loc["/data/alpha/z.png", "audit"] == ""
    assert (interactive_map.map_points(coords)["audit"] == "").all()  # before audit.py ran


def test_audit_folds_and_model_are_settings_of_the_tests_frozen_configuration():
    assert config.config_defaults()["audit_folds"] == 5 and config.config_defaults()["audit_model"] == "linear"
    with pytest.raises(lab.LabError, match="audit_folds=1 must be at least 2"):
        config.load_config(["--audit_folds=1"])
    with pytest.raises(lab.LabError, match="audit_model='heads' must be one of"):
        config.load_config(["--audit_model=heads"])


@pytest.mark.slow
def test_audit_script_on_the_tiny_demo_writes_its_tables_figure_and_provenance(novelty_ready):
    cfg, argv = novelty_ready
    issues = audit.main(argv)
    split = pd.read_csv(artifacts.out_path(cfg, "results", "split.csv"))
    labelled = split[split["split"].isin(["train", "val", "test"])]
    table = artifacts.read_csv(
        artifacts.out_path(cfg, "results", "label_issues.csv"), ("path", "label", "corrected_label")
    )
    assert sorted(table["path"]) == sorted(labelled["path"]) and len(table) == len(issues)
    assert dict(zip(table["path"], table["label"])) == dict(zip(labelled["path"], labelled["label"]))
    p_columns = [f"p_{c}" for c in cfg.seen_classes]
    given = table[p_columns].to_numpy()[np.arange(len(table)), [cfg.seen_classes.index(c) for c in table["label"]]]
    assert table["label_quality"].to_numpy() == pytest.approx(given)  # the out-of-fold probability of the label
    assert table["label_quality"].is_monotonic_increasing and (table["corrected_label"] == "").all()
    assert set(table["fold"]) == set(range(1, cfg.audit_folds + 1))
    tsv = pd.read_csv(artifacts.out_path(cfg, "results", "label_issues_ecotaxa.tsv"), sep="\t", skiprows=[1])
    assert len(tsv) == table["flagged"].sum()
    assert all((artifacts.resolve(cfg.data_root) / p).is_file() for p in tsv["img_file_name"])
    assert artifacts.out_path(cfg, "figs", "label_issues.png").stat().st_size > 10_000
    recorded = manifest.recorded_inputs(cfg, "audit")
    assert recorded["checkpoint"] == manifest.artifact_digest(cfg, "checkpoints", "best.pth")
    assert recorded["audit_model"] == "linear" and recorded["epochs"] is None


@pytest.mark.slow
def test_the_pipeline_reports_the_audit_and_its_map_shows_label_quality(tiny_pipeline):
    cfg, _, timings = tiny_pipeline
    assert "audit" in list(timings["stage"])
    page = artifacts.out_path(cfg, "results", "report.html").read_text()
    assert "Label audit: which labels look wrong?" in page
    assert page.count("label quality ") >= cfg.umap_samples_per_split // 2  # train and test points of the map


# --------------------------------------------------------------------------- the benchmark (bench/bench_audit.py)
def test_the_benchmark_flips_a_seeded_share_of_the_seen_labels_in_a_scratch_root_only(make_cfg, tmp_path):
    from bench import bench_audit

    cfg, _ = make_cfg()
    source = artifacts.resolve(cfg.data_root)
    before = sorted(str(p.relative_to(source)) for p in source.rglob("*") if p.is_file())
    root, flipped = bench_audit.flipped_root(cfg, 0.05, 3, tmp_path / "a")
    seen = sum(1 for c in cfg.seen_classes for _ in (source / c).iterdir())
    assert len(flipped) == round(0.05 * seen)
    for relative in flipped:  # linked under another seen class, to an image of the class it names
        target, name = relative.split("/", 1)
        origin = name.split("__", 1)[0].removeprefix("flipped_from_")
        assert target in cfg.seen_classes and origin in cfg.seen_classes and origin != target
        assert (root / relative).resolve().parent.name == origin
    links = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_symlink())
    assert len(links) == sum(1 for c in cfg.seen_classes + cfg.unseen_classes for _ in (source / c).iterdir())
    assert sorted(str(p.relative_to(source)) for p in source.rglob("*") if p.is_file()) == before  # untouched
    assert bench_audit.flipped_root(cfg, 0.05, 3, tmp_path / "b")[1] == flipped  # seeded


def test_the_benchmark_counts_flips_in_the_top_shares_and_the_flags_precision():
    from bench import bench_audit

    issues = pd.DataFrame({"path": [f"{i}.png" for i in range(40)], "flagged": [True] * 3 + [False] * 37})
    found = bench_audit.found_shares(issues, {"0.png", "1.png", "3.png", "30.png"})
    assert (found["top_5"], found["top_10"]) == (0.5, 0.75)  # top 2 and top 4 of 40
    assert found["precision"] == pytest.approx(2 / 3) and found["recall"] == 0.5 and found["flips"] == 4


@pytest.mark.slow
def test_audit_benchmark_quick_run_reports_every_row(tmp_path):
    import json

    from conftest import shared_dataset

    from bench import bench_audit

    shared_dataset("ndsb9")
    raw = bench_audit.main(["--quick", f"--output_dir={str(tmp_path)!r}"])
    saved = json.loads((tmp_path / "results" / "audit_benchmark.json").read_text())
    rows = {r["what"]: r for r in saved["rows"]}
    assert set(rows) == {
        "audit: flips found",
        "audit: cleanlab's flags",
        "audit: wall time",
        "audit: growth",
        "audit: demo share",
    }
    assert all(r["reason"] for r in rows.values() if r["status"] in ("MISSED", "n/a"))
    assert raw["found"]["flips"] == round(0.05 * raw["found"]["images"]) and raw["found"]["seconds"] > 0
    assert raw["growth"]["large"]["images"] == bench_audit.GROWTH_FACTOR * raw["growth"]["small"]["images"]
