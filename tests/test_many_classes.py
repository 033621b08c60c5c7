"""What must hold at a research group's size (100+ classes, a long tail): the metrics a taxonomist cites, against
scikit-learn; the clustered order of the matrix figures; figures within their size bound."""

import numpy as np
import pandas as pd
import pytest
from conftest import CHROMIUM_FLAGS
from PIL import Image
from sklearn.metrics import classification_report

import compute_average_distances as distances
import evaluate
from lab import class_matrices


def long_tail_predictions(n_classes=120, seed=0):
    """Labels with a long tail (2 to 200 test images a class) and predictions right about 70 % of the time, the
    errors falling mostly on a 'sister' class (c + 1), so that the confusions have structure."""
    rng = np.random.default_rng(seed)
    support = np.maximum(2, (200 * rng.pareto(1.2, n_classes) / 10).astype(int)).clip(max=200)
    y_true = np.repeat(np.arange(n_classes), support)
    y_pred = y_true.copy()
    wrong = rng.random(len(y_true)) < 0.3
    sister = rng.random(len(y_true)) < 0.7
    y_pred[wrong & sister] = (y_true[wrong & sister] + 1) % n_classes
    y_pred[wrong & ~sister] = rng.integers(0, n_classes, (wrong & ~sister).sum())
    return y_true, y_pred


def test_per_class_and_headline_metrics_equal_scikit_learns_classification_report():
    y_true, y_pred = long_tail_predictions()
    classes = [f"taxon_{i:03d}" for i in range(120)]
    matrix = evaluate.confusion_matrix(y_true, y_pred, len(classes))
    metrics = evaluate.metrics_from_confusion(matrix, classes)
    report = classification_report(
        y_true, y_pred, labels=range(len(classes)), target_names=classes, output_dict=True, zero_division=0
    )
    table = evaluate.per_class_table(matrix, classes, metrics)
    for row in table.to_dict("records"):
        theirs = report[row["class"]]
        assert row["precision"] == pytest.approx(theirs["precision"])
        assert row["recall"] == pytest.approx(theirs["recall"])
        assert row["f1"] == pytest.approx(theirs["f1-score"])
        assert row["support"] == theirs["support"]
    assert metrics["accuracy"] == pytest.approx(report["accuracy"])
    assert metrics["macro_f1"] == pytest.approx(report["macro avg"]["f1-score"])
    assert metrics["balanced_accuracy"] == pytest.approx(report["macro avg"]["recall"])


def test_top_confusions_count_every_error_once_most_frequent_first():
    y_true, y_pred = long_tail_predictions(30, seed=1)
    classes = [f"c{i}" for i in range(30)]
    matrix = evaluate.confusion_matrix(y_true, y_pred, 30)
    confusions = evaluate.top_confusions(matrix, classes)
    assert confusions["count"].sum() == (y_true != y_pred).sum()
    assert confusions["count"].is_monotonic_decreasing and (confusions["true"] != confusions["predicted"]).all()
    first = confusions.iloc[0]
    i, j = classes.index(first["true"]), classes.index(first["predicted"])
    assert first["share_of_true"] == pytest.approx(((y_true == i) & (y_pred == j)).sum() / (y_true == i).sum())
    table = evaluate.per_class_table(matrix, classes, evaluate.metrics_from_confusion(matrix, classes))
    top = table.set_index("class").loc[first["true"]]  # the most frequent confusion is its class's top one
    assert top["top_confusion_count"] == first["count"]


def test_catch_all_classes_are_reported_apart():
    classes = ["copepod", "artifacts_edge", "detritus_blob", "diatom_chain", "unknown_sticks", "chaetognath_other"]
    assert evaluate.catch_all_classes(classes) == ["artifacts_edge", "detritus_blob", "unknown_sticks"]
    y_true = np.array([0, 0, 1, 2, 3, 3, 4, 5])
    y_pred = np.array([0, 1, 1, 0, 3, 3, 4, 5])
    matrix = evaluate.confusion_matrix(y_true, y_pred, 6)
    taxa = evaluate.without_catch_all(matrix, classes, evaluate.metrics_from_confusion(matrix, classes))
    assert taxa["n_test"] == 5 and taxa["accuracy"] == pytest.approx(4 / 5)  # copepod 1 of 2, the others right
    assert taxa["balanced_accuracy"] == pytest.approx((0.5 + 1 + 1) / 3)
    assert evaluate.without_catch_all(matrix[:1, :1], classes[:1], {}) is None


@pytest.mark.parametrize("kind", ["confusion", "distance"])
def test_the_cluster_order_is_a_permutation_that_keeps_every_value(kind):
    y_true, y_pred = long_tail_predictions(60, seed=2)
    if kind == "confusion":
        matrix = evaluate.confusion_matrix(y_true, y_pred, 60).astype(float)
        order = class_matrices.confusion_order(matrix)
    else:
        points = np.random.default_rng(3).normal(size=(60, 8))
        matrix = np.linalg.norm(points[:, None] - points[None], axis=2)
        order = class_matrices.distance_order(matrix)
    assert sorted(order) == list(range(60))
    reordered = matrix[np.ix_(order, order)]
    back = np.empty_like(order)
    back[order] = np.arange(60)
    np.testing.assert_array_equal(reordered[np.ix_(back, back)], matrix)
    assert sorted(reordered.ravel()) == sorted(matrix.ravel())
    assert list(class_matrices.confusion_order(matrix[:6, :6])) == list(range(6))  # 6 classes: their own order


def test_the_cluster_order_puts_confused_classes_side_by_side():
    rng = np.random.default_rng(4)
    n = 40
    twins = rng.permutation(n).reshape(-1, 2)  # each class confused with one twin, never with the others
    matrix = np.diag(np.full(n, 50.0))
    for a, b in twins:
        matrix[a, b] = matrix[b, a] = 20
    position = np.argsort(class_matrices.confusion_order(matrix))
    assert all(abs(position[a] - position[b]) == 1 for a, b in twins)


def png_size(path):
    with Image.open(path) as image:
        return image.size


def test_a_120_class_confusion_matrix_and_heatmap_are_drawn_within_the_size_bound(tmp_path):
    y_true, y_pred = long_tail_predictions(120, seed=5)
    classes = [f"hydromedusae_{'very_long_name_' * (i % 4)}{i:03d}" for i in range(120)]
    matrix = evaluate.confusion_matrix(y_true, y_pred, 120)
    evaluate.plot_confusion(matrix, classes, tmp_path / "confusion.png")
    points = np.random.default_rng(6).normal(size=(120, 8))
    distance = np.linalg.norm(points[:, None] - points[None], axis=2)
    distances.plot_heatmap(distance, classes, "Average distance", "note", tmp_path / "heatmap.png")
    for name in ("confusion.png", "heatmap.png"):
        width, height = png_size(tmp_path / name)
        assert max(width, height) <= class_matrices.MAX_SIDE_PX, (name, width, height)
        assert min(width, height) >= 1500, (name, width, height)  # 120 rows of names, still readable


def test_six_classes_keep_two_numbered_panels(tmp_path):
    y_true, y_pred = long_tail_predictions(6, seed=7)
    evaluate.plot_confusion(evaluate.confusion_matrix(y_true, y_pred, 6), list("abcdef"), tmp_path / "c.png")
    width, height = png_size(tmp_path / "c.png")
    assert width > 1.8 * height  # counts and row-normalised side by side


def test_a_long_class_name_is_shortened_on_a_large_matrix_only():
    name = "a" * 30 + "_middle_" + "z" * 30
    assert class_matrices.axis_names([name] * 6) == [name] * 6
    short = class_matrices.axis_names([name] * 30)[0]
    assert len(short) <= class_matrices.LONG_NAME and short.startswith("aaaa") and short.endswith("zzzz")
    assert pd.Series(class_matrices.axis_names([f"{name}{i}" for i in range(30)])).is_unique


def test_a_110_class_map_has_distinct_colours_and_stays_within_the_size_bound(tmp_path):
    from types import SimpleNamespace

    import dimensionality_reduction as reduction

    rng = np.random.default_rng(8)
    names = [f"taxon_{i:03d}_{'a_long_group_name' if i % 3 else 'x'}" for i in range(110)]
    rows = []
    for i, name in enumerate(names):
        centre = rng.normal(size=2) * 10
        for split in ("train", "test") if i < 100 else ("unseen",):
            for x, y in centre + rng.normal(size=(20, 2)) * 0.5:
                rows.append({"x": x, "y": y, "split": split, "label": name})
    coords = pd.DataFrame(rows)
    colours = reduction.class_colours(names[:100], names[100:])
    assert len(set(colours.values())) == 110
    few = list(reduction.class_colours(names[:6], names[6:9]).values())  # tab10 for 9 classes, as always
    np.testing.assert_allclose(few[:6], list(colours.values())[:6], atol=0.01)  # Glasbey's first ten are tab10's
    reduction.plot_map(coords, SimpleNamespace(reduction_method="umap"), tmp_path / "map.png")
    assert max(png_size(tmp_path / "map.png")) <= class_matrices.MAX_SIDE_PX


@pytest.mark.slow
def test_the_interactive_map_finds_one_class_among_110_in_chromium(chromium, tmp_path):
    """The report's parts for many classes, in one page as report.py puts them: the map's class filter, the gallery
    picker (one class's gallery shown at a time) and the per-class table sorted by a click."""
    from PIL import Image
    from playwright.sync_api import sync_playwright

    from lab import interactive_map, report_many

    rng = np.random.default_rng(9)
    names = [f"taxon_{i:03d}" for i in range(110)]
    empty = dict.fromkeys(("prediction", "audit", "thumbnail"), "")
    rows = [
        {
            "x": rng.normal(),
            "y": rng.normal(),
            "split": "train",
            "label": n,
            "colour_class": n,
            "file": f"{n}.png",
            **empty,
        }
        for n in names
        for _ in range(3)
    ]
    layout = interactive_map.build_map(pd.DataFrame(rows))
    tiles = []
    for i, n in enumerate(names):
        Image.new("RGB", (40, 30), (i, 255 - i, 128)).save(tmp_path / f"gallery_{n}.png")
        tiles.append((n, "test", f"gallery_{n}.png"))
    per_class = pd.DataFrame({"class": names, "f1": rng.uniform(size=110), "support": rng.integers(5, 50, 110)})
    after = report_many.gallery_picker(tmp_path, tiles) + report_many.sortable_table(per_class, "per class")
    after += report_many.SORT_SCRIPT
    page_html = interactive_map.standalone_page(layout, "map", report_many.STYLE, "", after)
    (tmp_path / "map.html").write_text(page_html, encoding="utf-8")
    visible = """() => Bokeh.documents[0].get_model_by_name("embedding_map").renderers
        .filter((r) => r.name && r.name !== "hover_layer" && r.visible).map((r) => r.name)"""
    errors = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 1000}, offline=True).new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto((tmp_path / "map.html").as_uri())
            page.wait_for_function("() => window.Bokeh && Bokeh.documents.length > 0", timeout=60_000)
            assert len(page.evaluate(visible)) == 110
            box = page.get_by_placeholder("e.g. copepod")
            box.fill("TAXON_10")  # any case: taxon_100 .. taxon_109
            page.wait_for_function(f"() => ({visible})().length === 10", timeout=10_000)
            assert page.evaluate(visible) == [f"taxon_{i}" for i in range(100, 110)]
            box.fill("")
            page.wait_for_function(f"() => ({visible})().length === 110", timeout=10_000)
            shown = """() => [...document.querySelectorAll(".gallery")].filter((g) => g.style.display !== "none")
                .map((g) => g.querySelector("figcaption").innerText)"""
            assert page.evaluate(shown) == ["taxon_000 (test)"]  # the first class's gallery, alone
            page.select_option("select[onchange]", label="taxon_057 (test)")
            assert page.evaluate(shown) == ["taxon_057 (test)"]
            page.click("th:has-text('f1')")
            first = page.evaluate("() => parseFloat(document.querySelector('tbody tr').cells[1].innerText)")
            assert first == pytest.approx(per_class["f1"].min(), abs=1e-3)  # sorted by F1, lowest first
        finally:
            browser.close()
    assert not errors, errors


def test_no_printed_line_spells_out_110_class_names():
    import train
    from lab import config

    few = ["Odontella", "chainthin"]
    assert config.names_text(few) == repr(few) and config.setting_text("seen_classes", few) == f"seen_classes={few!r}"
    many = [f"taxon_{i:03d}" for i in range(110)]
    text = config.setting_text("seen_classes", many)
    assert text.startswith("seen_classes=[110 classes: 'taxon_000', 'taxon_001', 'taxon_002', ...")
    assert "results/split.json" in text and "taxon_003" not in text
    weights = [1.0 + i / 100 for i in range(110)]
    line = train.weights_text(many, weights)
    assert "0.99" not in line and "1.00 (taxon_000)" in line and "2.09 (taxon_109)" in line and "taxon_050" not in line
    assert train.weights_text(few, [0.5, 2.0]) == "Odontella 0.50, chainthin 2.00"


def test_the_reports_per_class_table_ranks_worst_first_and_never_a_class_with_under_5_test_images():
    from lab import report_many

    per_class = pd.DataFrame(
        {
            "class": ["rare", "good", "bad", "middling", "rare_good"],
            "precision": [0.0, 0.9, 0.2, 0.6, 1.0],
            "recall": [0.0, 0.9, 0.2, 0.6, 1.0],
            "f1": [0.0, 0.9, 0.2, 0.6, 1.0],
            "support": [2, 40, 30, 5, 4],
        }
    )
    assert list(report_many.ranked(per_class)["class"]) == ["bad", "middling", "good", "rare", "rare_good"]
    page = report_many.sortable_table(report_many.ranked(per_class), "caption")
    assert page.count("<tr>") == 6 and page.count('onclick="sortTable(this)"') == 5 and "0.200" in page


def test_the_report_lists_many_classes_under_their_count_and_picks_one_gallery_at_a_time(tmp_path):
    from lab import report_many

    few, many = [f"c{i}" for i in range(9)], [f"c{i}" for i in range(110)]
    assert report_many.names_html(few) == ", ".join(few)
    assert report_many.names_html(many).startswith("<details") and "110 classes" in report_many.names_html(many)
    for i in range(3):
        Image.new("RGB", (40, 30), (i * 80, 0, 0)).save(tmp_path / f"gallery_c{i}.png")
    tiles = [(f"c{i}", "test", f"gallery_c{i}.png") for i in range(3)]
    page = report_many.gallery_picker(tmp_path, tiles)
    assert page.count("<option") == 3 and page.count("data:image/jpeg;base64,") == 3
    assert page.count('style="display:none"') == 2  # the first gallery shown, the others hidden until picked


def test_seen_classes_all_takes_every_class_folder_leaves_out_the_small_ones_and_redraws_for_a_new_one(
    tmp_path, capsys
):
    import shutil

    from conftest import FAST

    import dataloader
    from lab import artifacts, config, demo_data, splitting

    counts = {c: 30 for c in demo_data.CLASSES}
    small = list(demo_data.CLASSES)[0]
    counts[small] = 5  # under min_images_per_class=8
    root = demo_data.generate(tmp_path / "data", counts=counts)
    unseen = list(demo_data.CLASSES)[-1]
    argv = [f"--data_root={str(root)!r}", f"--output_dir={str(tmp_path / 'out')!r}", *FAST, "--seen_classes=all"]
    argv += [f"--unseen_classes={[unseen, list(demo_data.CLASSES)[-2]]!r}", "--min_images_per_class=8"]
    cfg = config.load_config(argv)
    assert cfg.seen_classes == "all"
    dataloader.main(argv)
    out = capsys.readouterr().out
    expected = sorted(set(demo_data.CLASSES) - {unseen, list(demo_data.CLASSES)[-2], small})
    identity = artifacts.read_json(tmp_path / "out" / "results" / "split.json", "dataloader.py")
    assert identity["seen_classes"] == expected and identity["left_out"] == {small: 5}
    assert identity["seen_classes_setting"] == "all" and small in identity["all_candidates"]
    summary = pd.read_csv(tmp_path / "out" / "results" / "dataset_summary.csv", keep_default_na=False)
    left = summary[summary["group"] == "left out"]
    assert list(left["class"]) == [small] and "min_images_per_class=8" in left["note"].iloc[0]
    seen_total = summary.loc[summary["group"] == "seen total", "images"].iloc[0]
    assert seen_total == 30 * len(expected)  # the left-out class is not counted among the seen
    assert "left out of seen_classes='all'" in out
    split = pd.read_csv(tmp_path / "out" / "results" / "split.csv")
    assert small not in set(split["label"]) and set(split.loc[split["split"] == "train", "label"]) == set(expected)

    again = config.load_config(argv)  # unchanged folders: the persisted split, and "all" is its list
    splitting.read_or_draw_split(again)
    assert again.seen_classes == expected and "drawing the split anew" not in capsys.readouterr().out

    more = demo_data.generate(tmp_path / "more", counts={list(demo_data.CLASSES)[1]: 30}, seed=5)
    shutil.copytree(more / list(demo_data.CLASSES)[1], root / "newcomer")  # a class folder added later
    grown = config.load_config(argv)
    splitting.read_or_draw_split(grown)
    assert "new: ['newcomer']" in capsys.readouterr().out and "newcomer" in grown.seen_classes


def test_a_named_class_under_the_minimum_stays_an_error(tmp_path):
    from conftest import FAST

    import lab
    from lab import config, demo_data, splitting

    counts = {c: 30 for c in demo_data.CLASSES}
    counts[list(demo_data.CLASSES)[0]] = 5
    root = demo_data.generate(tmp_path / "data", counts=counts)
    argv = [f"--data_root={str(root)!r}", f"--output_dir={str(tmp_path / 'out')!r}", *FAST, "--min_images_per_class=8"]
    argv += [f"--seen_classes={list(demo_data.CLASSES)[:4]!r}", f"--unseen_classes={list(demo_data.CLASSES)[4:6]!r}"]
    with pytest.raises(lab.LabError, match="fewer than min_images_per_class=8"):
        splitting.read_or_draw_split(config.load_config(argv))
