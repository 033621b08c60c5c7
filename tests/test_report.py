"""The report: its interactive map's points, thumbnails and tooltips, never one sample's points with another's
predictions, its optional sections, the checkpoint's split and data root, a missing figure naming the script that
makes it, and the page in a real browser."""

import base64
import io
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import CHROMIUM_FLAGS, class_images, sample
from PIL import Image

import dataloader
import dimensionality_reduction
import lab
import predict
import report
from lab import artifacts, config, embedding_files, interactive_map, manifest


def test_rows_join_on_the_exact_path_never_on_a_file_name():
    table = pd.DataFrame({"path": ["/data/a/x.jpg", "/data/b/x.jpg", "/data/y.jpg"]})
    paths = ["/data/b/x.jpg", "/data/a/x.jpg", "/data/y.jpg", "/other/a/x.jpg", "/data/c/y.jpg"]
    assert interactive_map.rows_by_path(paths, table) == [1, 0, 2, None, None]


def test_points_carry_thumbnails_predictions_and_the_predicted_colour(tiny_demo, tmp_path):
    seen, unseen = "darksphere", "Retaria"
    train, test = class_images(tiny_demo, seen, 3), class_images(tiny_demo, seen, 5)[3:]
    new_image = tmp_path / "new" / "sample_1.png"
    new_image.parent.mkdir()
    Image.open(train[0]).save(new_image)
    coords = pd.DataFrame(
        [{"split": "train", "label": seen, "path": str(p)} for p in train]
        + [{"split": "test", "label": seen, "path": str(p)} for p in test]
        + [
            {"split": "unseen", "label": unseen, "path": str(class_images(tiny_demo, unseen, 1)[0])},
            {"split": "predict", "label": None, "path": str(new_image)},
            {"split": "unseen", "label": unseen, "path": str(tmp_path / "gone.png")},
        ]
    )
    coords["x"], coords["y"] = range(len(coords)), 0.0
    test_predictions = pd.DataFrame(
        {"path": [str(p) for p in test], "label": seen, "predicted": [seen, "chainthin"], "probability": [0.91, 0.55]}
    )
    predictions = pd.DataFrame({"path": [str(new_image)], "predicted": ["Odontella"], "probability": [0.75]})

    points = interactive_map.map_points(coords, test_predictions, predictions).set_index("file")

    assert points.loc[test[0].name, "prediction"] == "predicted <b>darksphere</b>, p = 0.91 \u2713"
    assert points.loc[test[1].name, "prediction"] == "predicted <b>chainthin</b>, p = 0.55 \u2717"
    assert points.loc[train[0].name, "prediction"] == ""  # the classifier trained on it: no prediction shown
    new = points.loc["sample_1.png"]
    assert (new["colour_class"], new["label"], new["prediction"]) == (
        "Odontella",
        "no label",
        "predicted <b>Odontella</b>, p = 0.75",
    )
    assert points.loc["gone.png", "thumbnail"] == ""  # a file gone since the map: the point stays, without image
    for uri in points.drop(index="gone.png")["thumbnail"]:
        assert uri.startswith("data:image/jpeg;base64,")
        with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as thumb:
            assert thumb.format == "JPEG" and thumb.size == (64, 64)
    assert list(points["split"]) == ["train"] * 3 + ["test"] * 2 + ["unseen"] * 2 + ["predict"]  # test over train
    assert interactive_map.class_order(points.reset_index()) == [seen, unseen, "Odontella"]


# --------------------------------------------------------------------------- the report on a pipeline run
PREDICTED_IMAGES = 12


def fabricate_predict_results(cfg, incoming):
    """What predict.py writes, made up from the tiny run's unseen images, as its output set (manifest.py)."""
    unseen = pd.read_pickle(artifacts.out_path(cfg, "embeddings", "embeddings_unseen.pkl"))
    unseen = unseen.iloc[:PREDICTED_IMAGES].copy()
    incoming.mkdir()
    names = []
    for i, path in enumerate(unseen["path"]):
        names.append(f"haul_{i:02d}.png")
        shutil.copy(path, incoming / names[-1])
    columns = [c for c in unseen.columns if c.startswith("emb_")]
    rng = np.random.default_rng(0)  # near their unseen twins in the map, not on top of them
    unseen[columns] = unseen[columns] + rng.normal(0, 0.05, (len(unseen), len(columns))).astype(np.float32)
    unseen = unseen.assign(label=None, label_idx=-1, split="predict", path=[str(incoming / n) for n in names])
    meta = embedding_files.embedding_set(cfg)
    predicted = [cfg.seen_classes[i % 2] for i in range(len(names))]
    with manifest.OutputSet(cfg, "predict") as out:
        embedding_files.save_embedding_set(cfg, {"predict": unseen}, meta, embedding_files.PREDICT_META, out=out)
        out.save_csv(
            "results",
            "predictions.csv",
            pd.DataFrame({"path": names, "predicted": predicted, "probability": np.linspace(0.4, 0.95, len(names))}),
        )
        out.save_csv(
            "results",
            "prediction_counts.csv",
            pd.Series(predicted).value_counts().rename_axis("class").reset_index(name="images"),
        )
        out.publish(checkpoint=meta["checkpoint_sha256"], embeddings=meta["set"], predict_dir=str(incoming))


@pytest.fixture(scope="module")
def report_with_predictions(tiny_pipeline, tmp_path_factory):
    """The tiny pipeline's output (novelty included) plus predicted images; map and report made again."""
    cfg, argv, _ = tiny_pipeline
    out = tmp_path_factory.mktemp("with-predictions") / "out"
    shutil.copytree(artifacts.resolve(cfg.output_dir), out)
    argv = [a for a in argv if not a.startswith("--output_dir=")] + [f"--output_dir={str(out)!r}"]
    cfg = config.load_config(argv)
    fabricate_predict_results(cfg, out.parent / "incoming")
    dimensionality_reduction.main(argv + ["--reduction_method=pca"])  # PCA: fast, and the map is not under test
    report.main(argv)
    return cfg, argv


def report_page(cfg):
    return artifacts.out_path(cfg, "results", "report.html").read_text()


def headings(page):
    return re.findall(r"<h2>([^<]+)</h2>", page)


@pytest.mark.slow
def test_report_without_novelty_or_predictions_leaves_those_sections_out(tiny_pipeline, tmp_path):
    cfg, argv, _ = tiny_pipeline
    out = tmp_path / "out"
    shutil.copytree(artifacts.resolve(cfg.output_dir), out)
    for name in ("novelty.csv", "novelty_scores.csv", "novelty_thresholds.json", "novelty_manifest.json"):
        (out / "results" / name).unlink()  # as before novelty.py ran
    cfg = config.load_config([a for a in argv if not a.startswith("--output_dir=")] + [f"--output_dir={str(out)!r}"])
    report.main([a for a in argv if not a.startswith("--output_dir=")] + [f"--output_dir={str(out)!r}"])
    coords = pd.read_csv(artifacts.out_path(cfg, "results", "umap_coordinates.csv"))
    page = report_page(cfg)
    assert not any("Novelty" in h or "Predict" in h for h in headings(page)), headings(page)
    assert page.count("data:image/jpeg;base64,") == len(coords)  # one thumbnail per mapped point
    assert (coords["split"].value_counts() <= cfg.umap_samples_per_split).all()


@pytest.mark.slow
def test_report_prints_its_size_and_caps_thumbnails_per_split(tiny_pipeline, tmp_path, capsys):
    cfg, argv, _ = tiny_pipeline
    out = tmp_path / "out"
    shutil.copytree(artifacts.resolve(cfg.output_dir), out)
    path = report.main(
        [a for a in argv if not a.startswith("--output_dir=")]
        + [f"--output_dir={str(out)!r}", "--umap_samples_per_split=10"]
    )
    size_mb = path.stat().st_size / 1e6
    assert f"({size_mb:.1f} MB" in capsys.readouterr().out
    splits = pd.read_csv(out / "results" / "umap_coordinates.csv")["split"].nunique()
    assert path.read_text().count("data:image/jpeg;base64,") == 10 * splits


@pytest.mark.slow
def test_report_gains_novelty_and_prediction_sections_and_maps_predicted_images(report_with_predictions):
    cfg, _ = report_with_predictions
    coords = pd.read_csv(artifacts.out_path(cfg, "results", "umap_coordinates.csv"))
    assert (coords["split"] == "predict").sum() == PREDICTED_IMAGES
    page = report_page(cfg)
    titles = headings(page)
    assert any("Novelty" in t for t in titles) and any("Predict" in t for t in titles), titles
    assert "mahalanobis_knn" in page and f"predict ({PREDICTED_IMAGES})" in page
    assert page.count("data:image/jpeg;base64,") == len(coords)
    figures = len(re.findall(r'<img src="data:image/png;base64,', page))
    assert figures >= 11 + len(cfg.seen_classes + cfg.unseen_classes) + 2  # the two novelty figures too


# --------------------------------------------------------------------------- the report in a real browser
MAP_READY = """() => window.Bokeh !== undefined && Bokeh.documents.length > 0
    && [...Bokeh.index].length > 0 && [...Bokeh.index].every((view) => view.is_idle)"""
# Screen position of the first point of a split that can be hovered, from the plot's own scales.
POINT_ON_SCREEN = """(split) => {
    const plot = Bokeh.documents[0].get_model_by_name("embedding_map")
    const layer = plot.renderers.find((r) => r.name === "hover_layer")
    const view = Bokeh.index.find_one(plot)
    view.canvas_view.el.scrollIntoView({block: "center"})
    const box = view.canvas_view.el.getBoundingClientRect()
    const data = layer.data_source.data
    const i = data.split.findIndex((s, i) => s === split && layer.view.filter.booleans[i])
    return i < 0 ? null : {x: box.left + view.frame.x_scale.compute(data.x[i]),
                           y: box.top + view.frame.y_scale.compute(data.y[i]), file: data.file[i]}
}"""
# Points per split that are drawn (split button on, class not hidden) and that can be hovered.
SHOWN_PER_SPLIT = """() => {
    const plot = Bokeh.documents[0].get_model_by_name("embedding_map")
    const count = (renderers) => {
        const shown = {}
        for (const r of renderers.filter((r) => r.visible)) {
            const {split} = r.data_source.data
            for (const i of r.view.indices.ones()) shown[split[i]] = (shown[split[i]] ?? 0) + 1
        }
        return shown
    }
    const classes = plot.renderers.filter((r) => r.name && r.name !== "hover_layer")
    return {drawn: count(classes), hoverable: count([plot.renderers.find((r) => r.name === "hover_layer")])}
}"""


def hover_tooltip(page, split):
    """Move the mouse onto the first point of `split`; the tooltip's text and image sources, and the file."""
    point = page.evaluate(POINT_ON_SCREEN, split)
    assert point is not None, f"no {split} point in the map"
    page.mouse.move(point["x"], point["y"])
    tooltip = page.locator(".bk-tooltip-content")
    tooltip.first.wait_for(state="visible", timeout=5000)
    images = page.locator(".bk-tooltip-content img").evaluate_all("elements => elements.map((e) => e.src)")
    return tooltip.all_inner_texts(), images, point["file"]


@pytest.mark.slow
def test_report_opens_offline_in_chromium_renders_the_map_and_hovering_shows_the_image(
    chromium, report_with_predictions, tmp_path
):
    from playwright.sync_api import sync_playwright

    cfg, _ = report_with_predictions
    coords = pd.read_csv(artifacts.out_path(cfg, "results", "umap_coordinates.csv"))
    screenshots = tmp_path
    requests, errors = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 1000}, offline=True)
            page = context.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)

            def only_the_file(route):  # the network is off: anything but the file itself is an error
                if route.request.url.startswith("file:"):
                    route.continue_()
                else:
                    requests.append(route.request.url)
                    route.abort()

            page.route("**/*", only_the_file)
            page.goto(artifacts.out_path(cfg, "results", "report.html").as_uri())
            page.wait_for_function(MAP_READY, timeout=60_000)
            canvas = page.locator("canvas").first.bounding_box()
            assert canvas and canvas["width"] > 300 and canvas["height"] > 300, canvas
            per_split = coords["split"].value_counts().to_dict()
            assert page.evaluate(SHOWN_PER_SPLIT) == {"drawn": per_split, "hoverable": per_split}

            # One tooltip, of the point under the pointer (test points lie over train points of their class).
            texts, images, file = hover_tooltip(page, "test")
            assert len(texts) == 1 and len(images) == 1 and images[0].startswith("data:image/jpeg;base64,"), texts
            assert file in texts[0] and "test" in texts[0] and "predicted" in texts[0] and "p = " in texts[0], texts
            page.screenshot(path=screenshots / "map-tooltip.png")
            page.screenshot(path=screenshots / "report.png", full_page=True)
            texts, images, file = hover_tooltip(page, "predict")
            assert len(images) == 1 and file in texts[0] and "predict" in texts[0] and "p = " in texts[0], texts

            page.get_by_role("button", name="train").click()  # show the splits apart
            page.get_by_role("button", name="test").click()
            apart = {s: per_split[s] for s in ("unseen", "predict")}
            assert page.evaluate(SHOWN_PER_SPLIT) == {"drawn": apart, "hoverable": apart}
            page.get_by_role("button", name="train").click()
            page.get_by_role("button", name="test").click()
            hidden_class = cfg.unseen_classes[0]
            page.locator(".bk-label", has_text=f"{hidden_class} (unseen").click()  # its legend entry hides it
            hidden = page.evaluate("""() => Bokeh.documents[0].get_model_by_name("embedding_map").renderers
                .filter((r) => !r.visible).map((r) => r.name)""")
            assert hidden == [hidden_class]
            left = dict(per_split, unseen=per_split["unseen"] - int((coords["label"] == hidden_class).sum()))
            assert page.evaluate(SHOWN_PER_SPLIT) == {"drawn": left, "hoverable": left}
        finally:
            browser.close()
    print(f"screenshots of the map with a tooltip and of the whole report: {screenshots}/map-tooltip.png, report.png")
    assert not errors, errors
    assert not requests, f"the report asked the network for {requests}"


def pipeline_copy(tiny_pipeline, tmp_path):
    """(cfg, argv) of a copy of the tiny pipeline's output folder, which the test may change."""
    cfg, argv, _ = tiny_pipeline
    out = tmp_path / "out"
    shutil.copytree(artifacts.resolve(cfg.output_dir), out)
    argv = [a for a in argv if not a.startswith("--output_dir=")] + [f"--output_dir={str(out)!r}"]
    return config.load_config(argv), argv


def captured_map_points(monkeypatch):
    """The points report.py hands to the interactive map, captured as it builds the page."""
    captured, build_map = [], interactive_map.build_map
    monkeypatch.setattr(
        interactive_map, "build_map", lambda points, *a, **k: (captured.append(points), build_map(points, *a, **k))[1]
    )
    return captured


def section(page, number):
    return page.split(f"<h2>{number}. ")[1].split("<h2>")[0]


@pytest.mark.slow
def test_the_map_never_shows_one_samples_points_with_anothers_predictions(
    tiny_pipeline, tiny_demo, tmp_path, monkeypatch
):
    cfg, argv = pipeline_copy(tiny_pipeline, tmp_path)
    a = sample(tmp_path / "A", class_images(tiny_demo, "Retaria", 12))
    b = sample(tmp_path / "B", class_images(tiny_demo, "chainthin", 12))  # the same file names, other images
    predict.main(argv + [f"--predict_dir={str(a)!r}"])
    dimensionality_reduction.main(argv + ["--reduction_method=pca"])
    predict.main(argv + [f"--predict_dir={str(b)!r}"])
    captured = captured_map_points(monkeypatch)
    page = report.main(argv).read_text()
    points = captured[-1]
    assert (points["split"] == "predict").sum() == 0, points[points["split"] == "predict"][["file", "prediction"]]
    assert "python dimensionality_reduction.py" in page and str(b) in page  # the line naming the command
    dimensionality_reduction.main(argv + ["--reduction_method=pca"])
    report.main(argv)
    mapped = captured[-1][captured[-1]["split"] == "predict"].set_index("file")
    rows = artifacts.read_csv(artifacts.out_path(cfg, "results", "predictions.csv"), ("path", "predicted"))
    assert len(mapped) == len(rows) == 12
    for _, row in rows.iterrows():  # every point carries the prediction of its own file of B
        assert f"<b>{row['predicted']}</b>" in mapped.loc[row["path"], "prediction"]
        assert mapped.loc[row["path"], "colour_class"] == row["predicted"]


@pytest.mark.slow
def test_the_report_describes_the_checkpoints_split_and_data_root(tiny_pipeline, tiny_demo, tmp_path):
    cfg, argv = pipeline_copy(tiny_pipeline, tmp_path)
    dataloader.main(argv + ["--seen_classes=['chainthin', 'darksphere', 'Odontella']", "--max_images_per_class=20"])
    page = report.main(argv).read_text()
    data = section(page, 1)
    assert "Left out" in data and "python dataloader.py" in data and "--max_images_per_class=0" in data, data
    assert "<table" not in data and "Rhabdonellidae" in section(page, 3)  # the 6-class model's test set
    dataloader.main(argv)  # the command's settings: the model's split again, byte for byte
    assert "Rhabdonellidae" in section(report.main(argv).read_text(), 1)
    other = shutil.copytree(tiny_demo, tmp_path / "other")
    (other / "Odontella" / "Odontella_0003.png").unlink()  # another folder: not the files the model saw
    with pytest.raises(lab.LabError, match=r"does not hold the files that checkpoints/best.pth was trained on"):
        report.main(argv + [f"--data_root={str(other)!r}"])
    moved = shutil.copytree(tiny_demo, tmp_path / "moved")
    page = report.main(argv + [f"--data_root={str(moved)!r}"]).read_text()
    assert f"Data root <code>{tiny_demo}</code>; images read from <code>{moved}</code> (same files)" in page


@pytest.mark.slow
@pytest.mark.parametrize(
    "figure, message",
    [
        ("novelty_roc.png", r"novelty: figs/novelty_roc.png is missing.*python novelty.py"),
        ("gallery_Odontella.png", r"gallery_Odontella.png is missing.*python dimensionality_reduction.py"),
    ],
)
def test_a_missing_figure_stops_the_report_naming_the_script_that_makes_it(tiny_pipeline, tmp_path, figure, message):
    cfg, argv = pipeline_copy(tiny_pipeline, tmp_path)
    artifacts.out_path(cfg, "figs", figure).unlink()
    with pytest.raises(lab.LabError, match=message):
        report.main(argv)


def test_the_tooltip_of_a_predicted_image_shows_its_novelty_score_and_flag(tiny_demo, tmp_path):
    new = sample(tmp_path / "new", class_images(tiny_demo, "Retaria", 2))
    paths = [str(new / "img_0000.png"), str(new / "img_0001.png")]
    coords = pd.DataFrame({"split": "predict", "label": None, "path": paths, "x": [0.0, 1.0], "y": 0.0})
    predictions = pd.DataFrame(
        {
            "path": paths,
            "predicted": ["Odontella", "chainthin"],
            "probability": [0.8, 0.6],
            "novelty_mahalanobis_knn": [2.5, -0.25],
            "possibly_new": [True, False],
        }
    )
    points = interactive_map.map_points(coords, None, predictions).set_index("file")
    assert "<b>possibly new</b>: novelty mahalanobis_knn = 2.5" in points.loc["img_0000.png", "prediction"]
    assert "not flagged as new: novelty mahalanobis_knn = -0.25" in points.loc["img_0001.png", "prediction"]


def test_a_grey_thumbnail_is_stored_grey_and_a_colour_one_in_colour(tmp_path):
    """Grey images (most plankton cameras) lose nothing stored as one channel; a colour image keeps its colours."""
    rng = np.random.default_rng(2)
    grey = np.add.outer(np.arange(80) * 3, np.arange(50) * 2).astype(np.uint8)  # smooth, as a particle's shading
    Image.fromarray(grey).convert("RGB").save(tmp_path / "grey.png")
    Image.fromarray(rng.integers(0, 256, (80, 50, 3), dtype=np.uint8)).save(tmp_path / "colour.png")
    decoded = {}
    for name in ("grey", "colour"):
        uri = interactive_map.thumbnail_uri(tmp_path / f"{name}.png")
        with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as thumb:
            decoded[name] = (thumb.mode, thumb.size, np.asarray(thumb.convert("RGB"), dtype=float))
    assert decoded["grey"][:2] == ("L", (64, 64)) and decoded["colour"][:2] == ("RGB", (64, 64))
    reference = np.asarray(lab.image_io.letterbox(lab.image_io.load_rgb(tmp_path / "grey.png"), 64), dtype=float)
    assert np.abs(decoded["grey"][2] - reference).mean() < 3  # the picture itself, up to JPEG's loss
