"""One HTML page with every result of the pipeline, readable in a browser, offline, as one file.

Reads the artifacts of all earlier scripts (results/*.csv, results/*.json, figs/*.png), and the images of the
2-D map's points for their thumbnails; the novelty results (results/novelty.csv, figs/novelty_*.png) and
predict.py's results (results/predictions.csv, results/prediction_counts.csv, results/abundances.csv) when they
exist.
Writes results/report.html: one self-contained file (figures, thumbnails and the map's JavaScript inlined, no
server, no network), so it can be mailed or opened from a USB stick. Its interactive 2-D map shows each point's
image, class, split, file name and prediction on hover (see interactive_map.py).
"""
import base64
import html
import json
import sys

import numpy as np
import pandas as pd

import lab
from lab import (
    abundances,
    artifacts,
    checkpoint,
    config,
    embedding_files,
    interactive_map,
    output_lock,
    provenance,
    runtime,
)

NOVELTY_FIGURES = (("novelty_roc.png", "Novelty detection: ROC curves"),
                   ("novelty_scores.png", "Novelty scores of seen and unseen images"))
# Free-text columns (class names, paths) of the optional tables, read back exactly as written.
PREDICTION_TEXT = ("path", "predicted", "class", "top1_class", "top2_class", "top3_class")
NOVELTY_TEXT = ("score", "unseen_class", "group", "class")
TABLE_ROWS = 30  # longer optional tables are cut in the page; the CSV holds them all
STYLE = ("body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}img{max-width:100%;max-height:560px}"
         "figure{display:inline-block;margin:.5em;vertical-align:top}figcaption{font-size:.85em;color:#555}"
         ".t td,.t th{padding:2px 8px;text-align:right}.warn{background:#fee;border:1px solid #c00;padding:.5em}"
         ".note{color:#555;font-size:.9em}")


def _table(frame, floats="{:.3f}"):
    return frame.to_html(index=False, border=0, classes="t", float_format=lambda v: floats.format(v))


def _figure(path, caption, made_by="run_pipeline.py"):
    """The PNG inlined as a data: URI, so the page needs no file beside it."""
    data = base64.b64encode(artifacts.require(path, made_by, "figure").read_bytes()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
            f'<figcaption>{html.escape(caption)}</figcaption></figure>')


def _short_table(frame, name):
    if len(frame) <= TABLE_ROWS:
        return _table(frame)
    return (_table(frame.head(TABLE_ROWS)) + f'<p class="note">The first {TABLE_ROWS} of {len(frame)} rows; '
            f'all of them are in results/{html.escape(name)}.</p>')


def distance_summary(table):
    within = table[table["class_a"] == table["class_b"]]
    between = table[table["class_a"] != table["class_b"]]
    return (f"mean Euclidean distance within classes {within['mean_euclidean'].mean():.3f}, between classes "
            f"{between['mean_euclidean'].mean():.3f}; angular within {within['mean_angular'].mean():.3f}, between "
            f"{between['mean_angular'].mean():.3f}")


# Which inputs each section's script records (results/provenance_<script>.json) and must share with the others.
SECTION_INPUTS = {"train": "checkpoint", "evaluate": "checkpoint", "compute_average_distances": "embeddings",
                  "dimensionality_reduction": "embeddings", "transfer_learning": "embeddings"}


def check_results_belong_together(cfg):
    """Every section must come from the current checkpoint and embeddings: never a page mixing two runs. Says
    at once everything that must be re-run, in order."""
    artifacts.require(artifacts.out_path(cfg, "checkpoints", "best.pth"), "train.py", "checkpoint")
    current = {"checkpoint": provenance.artifact_digest(cfg, "checkpoints", "best.pth"), "embeddings": None}
    stale = []
    try:
        current["embeddings"] = embedding_files.embedding_set(cfg)["set"]  # itself checked against the checkpoint
    except lab.LabError:
        stale.append("embed")
    sections = dict(SECTION_INPUTS)
    if artifacts.out_path(cfg, "results", "novelty.csv").exists():
        sections["novelty"] = "embeddings"
    stale += [script for script, needs in sections.items()
              if current[needs] is None or (provenance.recorded_inputs(cfg, script) or {}).get(needs) != current[needs]]
    if stale:
        commands = "; ".join(f"python {script}.py" for script in stale)
        raise lab.LabError(f"The results of {', '.join(stale)} were not computed from the current checkpoint "
                           f"(sha256 {current['checkpoint']}) and its embeddings: a report of them would mix runs. "
                           f"Re-run, in this order, with the settings of this model: {commands}; then report.py.")
    return current


def cap_per_split(coords, limit, seed):
    """At most `limit` points of each split (the map script already samples; a smaller limit here samples again)."""
    rng = np.random.default_rng(seed)
    keep = [np.sort(rng.choice(idx, size=limit, replace=False)) if len(idx) > limit else idx
            for idx in coords.groupby("split", sort=False).indices.values()]
    return coords.iloc[np.sort(np.concatenate(keep))].reset_index(drop=True)


def map_section(cfg, results, figs):
    """The interactive map (a bokeh layout) and the static figure below it."""
    coords = artifacts.read_csv(artifacts.require(results / "umap_coordinates.csv", "dimensionality_reduction.py"),
                                ("split", "label", "path", "method"))
    coords = cap_per_split(coords, cfg.umap_samples_per_split, cfg.seed)
    test_predictions = artifacts.read_csv(artifacts.require(results / "test_predictions.csv", "evaluate.py"),
                                          ("path", "label", "predicted"))
    predictions = (artifacts.read_csv(results / "predictions.csv", PREDICTION_TEXT)
                   if (results / "predictions.csv").exists() else None)
    points = interactive_map.map_points(coords, test_predictions, predictions)
    method = str(coords["method"].iloc[0]) if "method" in coords and len(coords) else cfg.reduction_method
    layout = interactive_map.build_map(points, method)
    splits = ", ".join(f"{s} {n}" for s, n in points["split"].value_counts(sort=False).items())
    intro = (f"<h2>5. 2-D map of the embeddings</h2><p>{len(points)} images ({splits}), one fit of "
             f"{html.escape(method.upper())} on all of them. Hover a point for its image, class, split, file and, "
             "for images the classifier saw, its prediction; click a class in the legend to hide or show it; the "
             "buttons show the splits together or apart.</p>")
    return intro, layout, _figure(figs / "umap_embeddings.png", "Static map: train, test, unseen")


def optional_sections(cfg, results, figs):
    """Novelty and prediction results, each only when its script has run (predictions: with this model)."""
    parts = []
    if (results / "novelty.csv").exists():
        figures = "".join(_figure(figs / name, caption) for name, caption in NOVELTY_FIGURES if (figs / name).exists())
        parts.append("<h2>Novelty: telling unseen classes from seen ones</h2>"
                     + _short_table(artifacts.read_csv(results / "novelty.csv", NOVELTY_TEXT), "novelty.csv") + figures)
    predict_set = embedding_files.current_predict_set(cfg)
    if (results / "prediction_counts.csv").exists() and predict_set:
        counts = artifacts.read_csv(results / "prediction_counts.csv", PREDICTION_TEXT)
        text = ""
        if (results / "predictions.csv").exists():
            predictions = artifacts.read_csv(results / "predictions.csv", PREDICTION_TEXT)
            mean = (f" (mean probability of the predicted class {predictions['probability'].mean():.2f})"
                    if "probability" in predictions else "")
            mapped = ((provenance.recorded_inputs(cfg, "dimensionality_reduction") or {}).get("predict")
                      == predict_set["set"])
            where = ("they are in the 2-D map as the split \u201cpredict\u201d, coloured by their predicted class"
                     if mapped else "run <code>python dimensionality_reduction.py</code> to add them to the 2-D map")
            text = (f"<p>{len(predictions)} new images of <code>{html.escape(str(predict_set.get('predict_dir')))}"
                    f"</code> classified{mean}; {where}.</p>")
        parts.append("<h2>Predictions for new images</h2>" + text + _short_table(counts, "prediction_counts.csv"))
        if (results / "abundances.csv").exists():
            parts.append(abundances_section(artifacts.read_csv(results / "abundances.csv", ("class", "method"))))
    return parts


def abundances_section(table):
    """The sample's abundances (predict.py's results/abundances.csv): classify-and-count beside the correction
    for the sample's class proportions, with 95 % intervals, as a chart and a table."""
    data = base64.b64encode(abundances.abundance_chart(table)).decode("ascii")
    new = table[table["possibly_new"].astype(bool)]
    seen = table[~table["possibly_new"].astype(bool)]
    flagged = int(new["count"].iloc[0]) if len(new) else 0
    columns = ["class", "cc_count", "cc_proportion", "proportion", "proportion_low", "proportion_high", "count"]
    return (f"<h2>Abundances in the sample</h2><p>Each taxon's share of the {int(seen['cc_count'].sum())} images not "
            f"flagged possibly new, corrected for the sample's class proportions by "
            f"{html.escape(str(seen['method'].iloc[0]))} (calibrated on {int(table['calibration_images'].iloc[0])} "
            f"validation images; 95 % bootstrap intervals of {int(table['bootstrap_draws'].iloc[0])} draws), beside "
            f"the plain count of predicted classes. {flagged} images possibly of a taxon never seen are counted "
            f"apart. Cite <code>results/abundances.csv</code> (docs/abundances.md).</p>"
            f'<figure><img src="data:image/png;base64,{data}" alt="abundances"><figcaption>Classify and count '
            f"(grey) and corrected (blue) shares, with 95 % intervals</figcaption></figure>" + _table(seen[columns]))


def first_sections(cfg, results, figs, inputs_by_script):
    """Title, 1. data, 2. training, 3. test set."""
    need = lambda name, script: artifacts.require(results / name, script)  # noqa: E731
    summary = artifacts.read_csv(need("dataset_summary.csv", "dataloader.py"), ("group", "class"))
    history = pd.read_csv(need("train_history.csv", "train.py"))
    metrics = json.loads(need("test_metrics.json", "evaluate.py").read_text())
    best = history.loc[history["val_loss"].idxmin()]
    weights = metrics.get("trunk_weights", "")
    warn = ('<p class="warn">The trunk was NOT ImageNet-pretrained (backbone_weights=None): these results only show '
            'that the code works.</p>' if metrics.get("random_trunk", checkpoint.random_trunk({"weights": weights}))
            else "")
    per_class = pd.DataFrame([{"class": c, **m} for c, m in metrics["per_class"].items()])
    data_root = html.escape(str(artifacts.resolve(cfg.data_root)))
    model = (f"Checkpoint <code>checkpoints/best.pth</code> sha256 {inputs_by_script['checkpoint']}, saved "
             f"{html.escape(str(metrics.get('checkpoint_saved_at')))} (epoch {metrics.get('checkpoint_epoch')}); "
             f"embeddings set {inputs_by_script['embeddings']}.")
    return [f"<h1>Plankton embedding lab: report</h1><p>Data root <code>{data_root}</code>; "
            f"trunk weights: {html.escape(weights)}.</p><p>{model}</p>{warn}",
            "<h2>1. Data</h2>" + _table(summary),
            f"<h2>2. Training</h2><p>Best validation loss {best['val_loss']:.4f} (accuracy {best['val_acc']:.3f}) "
            f"at epoch {int(best['epoch'])} of {len(history)}.</p>"
            + _figure(figs / "training_plot.png", "Loss and accuracy per epoch"),
            f"<h2>3. Test set</h2><p>Accuracy {100 * metrics['accuracy']:.2f} %, balanced accuracy "
            f"{100 * metrics['balanced_accuracy']:.2f} %, macro F1 {metrics['macro_f1']:.3f} on "
            f"{metrics['n_test']} test images.</p>" + _table(per_class)
            + _figure(figs / "confusion_matrix.png", "Confusion matrix")]


def distances_section(results, figs):
    section = "<h2>4. Average distances between classes</h2>"
    for s in ("test", "unseen"):
        csv = artifacts.require(results / f"average_distances_{s}.csv", "compute_average_distances.py")
        table = artifacts.read_csv(csv, ("class_a", "class_b"))
        section += (f"<h3>{s} set</h3><p>{distance_summary(table)}.</p>"
                    + _figure(figs / f"average_euclidean_distances_{s}.png", f"Euclidean, {s}")
                    + _figure(figs / f"average_angular_distances_{s}.png", f"Angular, {s}"))
    return section


def galleries_section(results, figs):
    galleries = artifacts.read_csv(artifacts.require(results / "galleries.csv", "dimensionality_reduction.py"),
                                   ("set", "class", "figure", "row", "path", "label"))
    tiles = galleries[["class", "set", "figure"]].drop_duplicates().itertuples(index=False)
    return ("<h2>6. Galleries</h2><p>Per class: closest to the class centre, furthest, closest of other classes "
            "(128-d embedding space).</p>" + "".join(_figure(figs / figure, f"{c} ({s})") for c, s, figure in tiles))


def transfer_section(results, figs):
    transfer = artifacts.read_csv(artifacts.require(results / "transfer_learning.csv", "transfer_learning.py"),
                                  ("classifier", "per_class"))
    final = transfer[transfer["per_class"] == "all"][["classifier", "train_size", "accuracy", "balanced_accuracy"]]
    classifiers = list(dict.fromkeys(transfer["classifier"]))  # the names transfer_learning.py gave its figures
    return ("<h2>7. Transfer learning to unseen classes</h2><p>Balanced accuracy with the whole training part:</p>"
            + _table(final) + _figure(figs / "accuracy_all.png", "All classifiers")
            + "".join(_figure(figs / f"accuracy_{n}.png", n) for n in classifiers))


def build(cfg):
    inputs_by_script = check_results_belong_together(cfg)
    results, figs = artifacts.out_path(cfg, "results"), artifacts.out_path(cfg, "figs")
    before = first_sections(cfg, results, figs, inputs_by_script) + [distances_section(results, figs)]
    intro, layout, static_map = map_section(cfg, results, figs)
    after = [static_map, galleries_section(results, figs), transfer_section(results, figs)]
    extra = optional_sections(cfg, results, figs)
    after += [part.replace("<h2>", f"<h2>{8 + i}. ", 1) for i, part in enumerate(extra)]
    page = interactive_map.standalone_page(layout, "Plankton embedding lab", STYLE, "".join(before + [intro]),
                                           "".join(after))
    return artifacts.save_text(results / "report.html", page)


def main(argv=None):
    cfg = config.load_config(argv, __doc__)
    config.print_settings(cfg)
    output_lock.ensure_output_dirs(cfg, ("results",))
    path = build(cfg)
    print(f"[report] {path} ({path.stat().st_size / 1e6:.1f} MB, one file: open it in any browser, offline)")
    return path


if __name__ == "__main__":
    runtime.run_main(lambda: main(sys.argv[1:]))
