"""One HTML page with every result of the pipeline, readable in a browser.

Reads the artifacts of all earlier scripts (results/*.csv, results/*.json, figs/*.png, checkpoints/best.pth).
Writes results/report.html: self-contained (no external CSS or scripts), figures referenced relatively
(../figs/...), so keep results/ and figs/ side by side when you copy it.
"""
import html
import json
import sys

import pandas as pd

import dataloader
import lab


def _table(frame, floats="{:.3f}"):
    return frame.to_html(index=False, border=0, classes="t", float_format=lambda v: floats.format(v))


def _figure(name, caption):
    return f'<figure><img src="../figs/{html.escape(name)}" alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}</figcaption></figure>'


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
    """Every section must come from the current checkpoint and embeddings: never a page mixing two runs."""
    lab.require(lab.out_path(cfg, "checkpoints", "best.pth"), "train.py", "checkpoint")
    current = {"checkpoint": lab.artifact_digest(cfg, "checkpoints", "best.pth")}
    current["embeddings"] = dataloader.embedding_set(cfg)["set"]  # itself checked against the checkpoint
    stale = [script for script, needs in SECTION_INPUTS.items()
             if (lab.recorded_inputs(cfg, script) or {}).get(needs) != current[needs]]
    if stale:
        commands = "; ".join(f"python {script}.py" for script in stale)
        raise lab.LabError(f"The results of {', '.join(stale)} were not computed from the current checkpoint "
                           f"(sha256 {current['checkpoint']}) and its embeddings: a report of them would mix runs. "
                           f"Re-run, in this order: {commands} (or the whole `python run_pipeline.py`), then "
                           f"report.py.")
    return current


def build(cfg):
    provenance = check_results_belong_together(cfg)
    results, figs = lab.out_path(cfg, "results"), lab.out_path(cfg, "figs")
    need = lambda name, script: lab.require(results / name, script)  # noqa: E731
    summary = lab.read_csv(need("dataset_summary.csv", "dataloader.py"), ("group", "class"))
    history = pd.read_csv(need("train_history.csv", "train.py"))
    metrics = json.loads(need("test_metrics.json", "evaluate.py").read_text())
    transfer = lab.read_csv(need("transfer_learning.csv", "transfer_learning.py"), ("classifier", "per_class"))
    best = history.loc[history["val_loss"].idxmin()]
    weights = metrics.get("trunk_weights", "")
    warn = ('<p class="warn">The trunk was NOT ImageNet-pretrained (backbone_weights=None): these results only show '
            'that the code works.</p>' if weights.startswith("RANDOM") else "")
    per_class = pd.DataFrame([{"class": c, **m} for c, m in metrics["per_class"].items()])
    final = transfer[transfer["per_class"] == "all"][["classifier", "train_size", "accuracy", "balanced_accuracy"]]
    model = (f"Checkpoint <code>checkpoints/best.pth</code> sha256 {provenance['checkpoint']}, saved "
             f"{html.escape(str(metrics.get('checkpoint_saved_at')))} (epoch {metrics.get('checkpoint_epoch')}); "
             f"embeddings set {provenance['embeddings']}.")
    parts = [f"<h1>Plankton embedding lab: report</h1><p>Data root <code>{html.escape(str(lab.resolve(cfg.data_root)))}</code>; "
             f"trunk weights: {html.escape(weights)}.</p><p>{model}</p>{warn}",
             "<h2>1. Data</h2>" + _table(summary),
             f"<h2>2. Training</h2><p>Best validation loss {best['val_loss']:.4f} (accuracy {best['val_acc']:.3f}) at "
             f"epoch {int(best['epoch'])} of {len(history)}.</p>" + _figure("training_plot.png", "Loss and accuracy per epoch"),
             f"<h2>3. Test set</h2><p>Accuracy {100 * metrics['accuracy']:.2f} %, balanced accuracy "
             f"{100 * metrics['balanced_accuracy']:.2f} %, macro F1 {metrics['macro_f1']:.3f} on {metrics['n_test']} "
             f"test images.</p>" + _table(per_class) + _figure("confusion_matrix.png", "Confusion matrix")]
    section = "<h2>4. Average distances between classes</h2>"
    for s in ("test", "unseen"):
        table = lab.read_csv(need(f"average_distances_{s}.csv", "compute_average_distances.py"), ("class_a", "class_b"))
        section += (f"<h3>{s} set</h3><p>{distance_summary(table)}.</p>"
                    + _figure(f"average_euclidean_distances_{s}.png", f"Euclidean, {s}")
                    + _figure(f"average_angular_distances_{s}.png", f"Angular, {s}"))
    parts.append(section)
    galleries = lab.read_csv(need("galleries.csv", "dimensionality_reduction.py"),
                             ("set", "class", "figure", "row", "path", "label"))
    gallery_figures = galleries[["class", "set", "figure"]].drop_duplicates()
    parts.append("<h2>5. 2-D map of the embeddings</h2>" + _figure("umap_embeddings.png", "2-D map: train, test, unseen")
                 + "<h2>6. Galleries</h2><p>Per class: closest to the class centre, furthest, closest of other "
                   "classes (128-d embedding space).</p>"
                 + "".join(_figure(figure, f"{c} ({s})") for c, s, figure in gallery_figures.itertuples(index=False)))
    classifiers = list(dict.fromkeys(transfer["classifier"]))  # the names transfer_learning.py gave its figures
    parts.append("<h2>7. Transfer learning to unseen classes</h2><p>Balanced accuracy with the whole training part:</p>"
                 + _table(final) + _figure("accuracy_all.png", "All classifiers")
                 + "".join(_figure(f"accuracy_{n}.png", n) for n in classifiers))
    for name in ("training_plot.png", "confusion_matrix.png", "umap_embeddings.png", "accuracy_all.png"):
        lab.require(figs / name, "run_pipeline.py", "figure")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}img{max-width:100%;max-height:560px}"
             "figure{display:inline-block;margin:.5em;vertical-align:top}figcaption{font-size:.85em;color:#555}"
             ".t td,.t th{padding:2px 8px;text-align:right}.warn{background:#fee;border:1px solid #c00;padding:.5em}")
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>Plankton embedding lab</title><style>{style}</style></head><body>{''.join(parts)}</body></html>"
    return lab.save_text(results / "report.html", page)


def main(argv=None):
    cfg = lab.load_config(argv, __doc__)
    lab.ensure_output_dirs(cfg, ("results",))
    path = build(cfg)
    print(f"[report] {path}")
    return path


if __name__ == "__main__":
    lab.run_main(lambda: main(sys.argv[1:]))
