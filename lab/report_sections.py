"""The report's sections of the pipeline's results, in the page's order: the run and the data (1), training (2), the
test set (3, with the accuracy without the test images that have a near-copy in train), average distances (4),
the 2-D map (5: the interactive map is lab/interactive_map.py's), the galleries (6) and transfer learning (7).
Each returns HTML.

Reads the pipeline's artifacts (results/*.csv, results/*.json, figs/*.png) of the run lab/report_run.py has
proven whole; writes nothing.
"""

import html
from pathlib import Path, PurePath

import numpy as np
import pandas as pd

from lab import artifacts, checkpoint, interactive_map, manifest, near_copies, report_many, report_run, report_tables


# --------------------------------------------------------------------------- 1. data, 2. training, 3. test set
def data_section(cfg, ckpt):
    """1. Data: the scan and split of the checkpoint's run, or one line naming the command that brings them."""
    published = manifest.complete(cfg, "split")
    split_csv = artifacts.out_path(cfg, "results", "split.csv")
    if published and split_csv.is_file() and artifacts.file_digest(split_csv) == ckpt["split_digest"]:
        summary = artifacts.read_csv(artifacts.out_path(cfg, "results", "dataset_summary.csv"), ("group", "class"))
        return "<h2>1. Data</h2>" + labels_origin(artifacts.out_path(cfg, "results")) + report_tables.table(summary)
    command = report_run.split_command(ckpt, (published or {}).get("inputs", {}))
    fix = (
        f"{report_tables.code(command)} draws the model's split again (the same settings and files give the same "
        f"split); then <code>python report.py</code>"
        if command
        else "the files under the data root changed since the model "
        "was trained, so its split cannot be drawn again: retrain with <code>python train.py</code>"
    )
    return (
        '<h2>1. Data</h2><p class="warn">Left out: results/split.csv and its class counts are not the split '
        f"checkpoints/best.pth was trained on (dataloader.py ran since with other settings or files). {fix}.</p>"
    )


def labels_origin(results):
    """Where the labels came from (results/label_sources.csv): the class folders, each table with its sha256."""
    path = results / "label_sources.csv"
    if not path.exists():  # a split made before the lab wrote the file: class folders only
        return "<p>Labels: the names of the class folders.</p>"
    return "<p>Labels from:</p>" + report_tables.table(artifacts.read_csv(path, ("source", "kind", "sha256", "status")))


def first_sections(cfg, results, figs, run):
    """Title, what run this is, 1. data, 2. training, 3. test set."""
    history = pd.read_csv(artifacts.require(results / "train_history.csv", "train.py"))
    metrics = artifacts.read_json(results / "test_metrics.json", "evaluate.py", "test metrics")
    ckpt = run.trained.ckpt
    best = history.loc[history["val_loss"].idxmin()]
    weights = metrics.get("trunk_weights", "")
    warn = (
        '<p class="warn">The trunk was NOT ImageNet-pretrained (backbone_weights=None): these results only show '
        "that the code works.</p>"
        if metrics.get("random_trunk", checkpoint.random_trunk({"weights": weights}))
        else ""
    )
    moved = (
        f"; images read from {report_tables.code(run.image_root)} (same files)"
        if run.image_root != run.data_root
        else ""
    )
    seen, unseen = (
        report_many.names_html(ckpt["classes"]),
        report_many.names_html(ckpt["config"].get("unseen_classes", [])),
    )
    model = (
        f"Checkpoint <code>checkpoints/best.pth</code> sha256 {run.inputs['checkpoint']}, saved "
        f"{html.escape(str(metrics.get('checkpoint_saved_at')))} (epoch {metrics.get('checkpoint_epoch')}); "
        f"embeddings set {run.inputs['embeddings']}."
    )
    return [
        f"<h1>Plankton embedding lab: report</h1><p>Data root {report_tables.code(run.data_root)}{moved}; "
        f"trunk weights: {html.escape(weights)}.</p><p>Classes trained on: {seen}; unseen: {unseen}.</p>"
        f"<p>{model}</p>{warn}",
        data_section(cfg, ckpt),
        f"<h2>2. Training</h2><p>Best validation loss {best['val_loss']:.4f} (accuracy {best['val_acc']:.3f}) "
        f"at epoch {int(best['epoch'])} of {len(history)}.</p>"
        + report_tables.figure(figs / "training_plot.png", "Loss and accuracy per epoch", "train.py"),
        "<h2>3. Test set</h2>"
        + report_many.headline_html(metrics)
        + near_copies_line(cfg, results)
        + report_many.per_class_html(results, metrics)
        + report_tables.figure(figs / "confusion_matrix.png", "Confusion matrix", "evaluate.py"),
    ]


def near_copies_line(cfg, results):
    """The test accuracy without the test images that have a near-copy in train (lab/near_copies.py finds them)."""
    predictions = artifacts.read_csv(
        artifacts.require(results / "test_predictions.csv", "evaluate.py"), ("path", "label", "predicted")
    )
    return f"<p>{html.escape(accuracy_without_copies(cfg, predictions))}</p>"


def accuracy_without_copies(cfg, test_predictions):
    """One sentence: the test accuracy with the test images that have a near-copy in train left out."""
    pairs = near_copies.current_report(cfg)
    if pairs is None:
        return (
            "Near-copies: not searched for this split (it was drawn before the search existed); a new split "
            "(`python dataloader.py --rebuild_split=True`, then retrain) searches them."
        )
    root = artifacts.resolve(cfg.data_root)
    leaks = near_copies.test_images_with_train_copies(pairs)
    leaks |= {str(root / p) for p in leaks}  # the predictions' paths may be absolute
    kept = test_predictions[~test_predictions["path"].astype(str).isin(leaks)]
    left_out = len(test_predictions) - len(kept)
    if not left_out:
        return f"Near-copies: no test image has a near-copy in train ({len(pairs)} near-copy pairs in all)."
    correct = kept["label"].astype(str) == kept["predicted"].astype(str)
    return (
        f"Without the {left_out} test image(s) that have a near-copy in train, the test accuracy is "
        f"{100 * correct.mean():.2f} % on {len(kept)} images (results/near_copies.csv)."
    )


# --------------------------------------------------------------------------- 4. distances
def distance_summary(table):
    within = table[table["class_a"] == table["class_b"]]
    between = table[table["class_a"] != table["class_b"]]
    return (
        f"mean Euclidean distance within classes {within['mean_euclidean'].mean():.3f}, between classes "
        f"{between['mean_euclidean'].mean():.3f}; angular within {within['mean_angular'].mean():.3f}, between "
        f"{between['mean_angular'].mean():.3f}"
    )


def distances_section(results, figs):
    section = "<h2>4. Average distances between classes</h2>"
    for s in ("test", "unseen"):
        csv = artifacts.require(results / f"average_distances_{s}.csv", "compute_average_distances.py")
        table = artifacts.read_csv(csv, ("class_a", "class_b"))
        section += (
            f"<h3>{s} set</h3><p>{distance_summary(table)}.</p>"
            + report_tables.figure(
                figs / f"average_euclidean_distances_{s}.png", f"Euclidean, {s}", "compute_average_distances.py"
            )
            + report_tables.figure(
                figs / f"average_angular_distances_{s}.png", f"Angular, {s}", "compute_average_distances.py"
            )
        )
    return section


# --------------------------------------------------------------------------- 5. the map
def cap_per_split(coords, limit, seed):
    """At most `limit` points of each split (the map script already samples; a smaller limit here samples again)."""
    rng = np.random.default_rng(seed)
    keep = [
        np.sort(rng.choice(idx, size=limit, replace=False)) if len(idx) > limit else idx
        for idx in coords.groupby("split", sort=False).indices.values()
    ]
    return coords.iloc[np.sort(np.concatenate(keep))].reset_index(drop=True)


def absolute(table, root):
    """A table whose paths are relative to root, with the absolute paths the embeddings files hold."""
    return None if table is None else table.assign(path=[str(Path(root) / p) for p in table["path"]])


def read_from(paths, embedded_root, image_root):
    """Where to read each image: under image_root (the same files, moved) instead of where it was embedded."""
    if image_root == embedded_root:
        return list(paths)
    moved = []
    for p in paths:
        try:
            moved.append(str(image_root / PurePath(p).relative_to(embedded_root)))
        except ValueError:  # predict.py's images: not under the data root
            moved.append(p)
    return moved


def map_section(cfg, results, figs, run):
    """The interactive map (a bokeh layout), its note on predict.py's images, and the static figure below it."""
    coords = artifacts.read_csv(
        artifacts.require(results / "umap_coordinates.csv", "dimensionality_reduction.py"),
        ("split", "label", "path", "method"),
    )
    note, on_map = "", coords["split"] == "predict"
    if on_map.any() and not run.mapped:  # of another sample, or of an earlier run: never joined to these predictions
        coords = coords[~on_map].reset_index(drop=True)
        where = (
            f"<code>python dimensionality_reduction.py</code> maps the current predictions of "
            f"{report_tables.code(run.predict['inputs']['predict_dir'])}, then <code>python report.py</code>"
            if run.predict
            else "they are not the predictions now in results/"
        )
        note = (
            f'<p class="note">The 2-D map held {int(on_map.sum())} images of an earlier run of predict.py (another '
            f"sample, or another run): left out of it. {where}.</p>"
        )
    coords = cap_per_split(coords, cfg.umap_samples_per_split, cfg.seed)
    embedded = report_run.embedded_root(run.inputs["embeddings_meta"], run.data_root)
    coords["image"] = read_from(coords["path"], embedded, run.image_root)
    test_predictions = artifacts.read_csv(results / "test_predictions.csv", ("path", "label", "predicted"))
    predictions = None
    if run.mapped:
        predictions = absolute(
            artifacts.read_csv(results / "predictions.csv", report_tables.PREDICTION_TEXT),
            run.predict["inputs"]["predict_dir"],
        )
    issues = (
        absolute(artifacts.read_csv(results / "label_issues.csv", report_tables.AUDIT_TEXT), embedded)
        if report_run.audit_ran(cfg)
        else None
    )
    points = interactive_map.map_points(coords, absolute(test_predictions, embedded), predictions, issues)
    method = str(coords["method"].iloc[0]) if "method" in coords and len(coords) else cfg.reduction_method
    layout = interactive_map.build_map(points, method)
    splits = ", ".join(f"{s} {n}" for s, n in points["split"].value_counts(sort=False).items())
    intro = (
        f"<h2>5. 2-D map of the embeddings</h2><p>{len(points)} images ({splits}), one fit of "
        f"{html.escape(method.upper())} on all of them. Hover a point for its image, class, split, file and, "
        "for images the classifier saw, its prediction; click a class in the legend to hide or show it; the "
        f"buttons show the splits together or apart.</p>{note}"
    )
    return (
        intro,
        layout,
        report_tables.figure(
            figs / "umap_embeddings.png", "Static map: train, test, unseen", "dimensionality_reduction.py"
        ),
    )


# --------------------------------------------------------------------------- 6. galleries, 7. transfer
def galleries_section(results, figs):
    galleries = artifacts.read_csv(
        artifacts.require(results / "galleries.csv", "dimensionality_reduction.py"),
        ("set", "class", "figure", "row", "path", "label"),
    )
    tiles = list(galleries[["class", "set", "figure"]].drop_duplicates().itertuples(index=False))
    intro = (
        "<h2>6. Galleries</h2><p>Per class: closest to the class centre, furthest, closest of other classes "
        "(128-d embedding space).</p>"
    )
    if report_many.many(galleries["class"].nunique()):
        return intro + report_many.gallery_picker(figs, tiles)
    return intro + "".join(
        report_tables.figure(figs / figure, f"{c} ({s})", "dimensionality_reduction.py") for c, s, figure in tiles
    )


def transfer_section(results, figs):
    transfer = artifacts.read_csv(
        artifacts.require(results / "transfer_learning.csv", "transfer_learning.py"), ("classifier", "per_class")
    )
    final = transfer[transfer["per_class"] == "all"][["classifier", "train_size", "accuracy", "balanced_accuracy"]]
    classifiers = list(dict.fromkeys(transfer["classifier"]))  # the names transfer_learning.py gave its figures
    return (
        "<h2>7. Transfer learning to unseen classes</h2><p>Balanced accuracy with the whole training part:</p>"
        + report_tables.table(final)
        + report_tables.figure(figs / "accuracy_all.png", "All classifiers", "transfer_learning.py")
        + "".join(report_tables.figure(figs / f"accuracy_{n}.png", n, "transfer_learning.py") for n in classifiers)
    )
