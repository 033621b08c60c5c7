"""One HTML page with every result of the pipeline, readable in a browser, offline, as one file.

Reads checkpoints/best.pth (train.py), the artifacts of all earlier scripts (results/*.csv, results/*.json,
figs/*.png) as the output sets their manifests prove whole (results/<set>_manifest.json, see lab/manifest.py),
and the images of the 2-D map's points for their thumbnails; the novelty results, predict.py's results
(abundances.csv too) and the label audit's (results/label_issues.csv, figs/label_issues.png: audit.py) when they
exist. Writes
results/report.html: one self-contained file (figures, thumbnails and the map's JavaScript inlined, no server, no
network), so it can be mailed or opened from a USB stick. Its interactive 2-D map shows each point's image, class,
split, file name and prediction on hover (see interactive_map.py).

One run, one story: the page describes the run of the checkpoint (its split, its classes, its data root), and
everything it shows or joins together is proven to come from that run by the digests the manifests record, never
by file names or the current settings (docs/provenance.md lists every join). A section of another model is refused
with the commands to run again; a split or a sample of another run is left out, with the command that brings it.
"""

import base64
import html
import shlex
import sys
from pathlib import Path, PurePath
from types import SimpleNamespace

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
    manifest,
    near_copies,
    runtime,
    splitting,
)

NOVELTY_FIGURES = (
    ("novelty_roc.png", "Novelty detection: ROC curves"),
    ("novelty_scores.png", "Novelty scores of seen and unseen images"),
)
# Free-text columns (class names, paths) of the optional tables, read back exactly as written.
PREDICTION_TEXT = ("path", "predicted", "class", "top1_class", "top2_class", "top3_class")
NOVELTY_TEXT = ("score", "unseen_class", "group", "class")
AUDIT_TEXT = ("path", "split", "label", "suggested_label", "corrected_label")
TABLE_ROWS = 30  # longer optional tables are cut in the page; the CSV holds them all
STYLE = (
    "body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}img{max-width:100%;max-height:560px}"
    "figure{display:inline-block;margin:.5em;vertical-align:top}figcaption{font-size:.85em;color:#555}"
    ".t td,.t th{padding:2px 8px;text-align:right}.warn{background:#fee;border:1px solid #c00;padding:.5em}"
    ".note{color:#555;font-size:.9em}"
)


def _table(frame, floats="{:.3f}"):
    return frame.to_html(index=False, border=0, classes="t", float_format=lambda v: floats.format(v))


def _figure(path, caption, made_by):
    """The PNG inlined as a data: URI, so the page needs no file beside it; a missing one names its script."""
    data = base64.b64encode(artifacts.require(path, made_by, "figure").read_bytes()).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _short_table(frame, name):
    if len(frame) <= TABLE_ROWS:
        return _table(frame)
    return (
        _table(frame.head(TABLE_ROWS)) + f'<p class="note">The first {TABLE_ROWS} of {len(frame)} rows; '
        f"all of them are in results/{html.escape(name)}.</p>"
    )


def _code(text):
    return f"<code>{html.escape(artifacts.printable(text))}</code>"


def distance_summary(table):
    within = table[table["class_a"] == table["class_b"]]
    between = table[table["class_a"] != table["class_b"]]
    return (
        f"mean Euclidean distance within classes {within['mean_euclidean'].mean():.3f}, between classes "
        f"{between['mean_euclidean'].mean():.3f}; angular within {within['mean_angular'].mean():.3f}, between "
        f"{between['mean_angular'].mean():.3f}"
    )


# --------------------------------------------------------------------------- what belongs together
# The sets each section shows, and which input of the checkpoint's run their manifest must record.
SECTION_INPUTS = {
    "train": "checkpoint",
    "evaluate": "checkpoint",
    "compute_average_distances": "embeddings",
    "dimensionality_reduction": "embeddings",
    "transfer_learning": "embeddings",
}


def audit_ran(cfg):
    return (
        manifest.manifest_path(cfg, "audit").exists() or artifacts.out_path(cfg, "results", "label_issues.csv").exists()
    )


def novelty_ran(cfg):
    return manifest.manifest_path(cfg, "novelty").exists() or artifacts.out_path(cfg, "results", "novelty.csv").exists()


def check_results_belong_together(cfg, checkpoint_digest):
    """Every section must be a whole set made from the current checkpoint and its embeddings: never a page mixing
    two runs. Says at once everything that must be re-run, in order, and why. Returns the current inputs."""
    current = {"checkpoint": checkpoint_digest, "embeddings": None, "embeddings_meta": None}
    problems = {}
    try:
        current["embeddings_meta"] = embedding_files.embedding_set(cfg)  # itself checked against the checkpoint
        current["embeddings"] = current["embeddings_meta"]["set"]
    except lab.LabError:
        problems["embed"] = "made from another checkpoint, or not one whole set"
    sections = dict(
        SECTION_INPUTS,
        **({"novelty": "embeddings"} if novelty_ran(cfg) else {}),
        **({"audit": "checkpoint"} if audit_ran(cfg) else {}),
    )
    for script, needs in sections.items():
        published, problem = manifest.check(cfg, script)
        if published is None:
            problems[script] = problem
        elif current[needs] is None or published["inputs"].get(needs) != current[needs]:
            problems[script] = f"made from another {'checkpoint' if needs == 'checkpoint' else 'embeddings set'}"
    if problems:
        commands = "; ".join(f"python {manifest.made_by(script)}" for script in problems)
        reasons = "; ".join(f"{script}: {why}" for script, why in problems.items())
        raise lab.LabError(
            f"The results of {', '.join(problems)} cannot be shown with the current checkpoint (sha256 "
            f"{checkpoint_digest}) and its embeddings ({reasons}): a report of them would mix runs. "
            f"Re-run, in this order, with the settings of this model: {commands}; then report.py."
        )
    return current


def data_roots(trained, embeddings_meta, explicit_root):
    """(the data root the checkpoint was trained on, the root the map's images are read from). The second differs
    only for a root that holds the same files (the data moved: checkpoint.config_from_checkpoint checks that). A
    data_root given on the command line that does not hold them is refused: the report describes the model's run."""
    own = artifacts.resolve(trained.ckpt["config"]["data_root"])
    verified = artifacts.resolve(trained.cfg.data_root)
    if explicit_root is not None and artifacts.resolve(explicit_root) != verified:
        raise lab.LabError(
            f"--data_root={artifacts.printable(explicit_root)!r} does not hold the files that "
            f"checkpoints/best.pth was trained on (the same relative paths and sizes as in {own}): "
            f"the report describes that model's run and reads its images. Drop --data_root, or give a "
            f"folder holding the same files (the data moved or copied)."
        )
    return own, verified if verified != own else embedded_root(embeddings_meta, own)


def embedded_root(embeddings_meta, default):
    """The data root embed.py read the images from: the embeddings' absolute paths lie under it."""
    return artifacts.resolve(embeddings_meta.get("config", {}).get("data_root", default))


def split_command(ckpt, identity):
    """The command that draws the checkpoint's split again (it is seeded: the same settings and files give the same
    split), or None when only the files changed (then the model's split cannot be drawn again)."""
    wanted = {
        **splitting.split_identity(SimpleNamespace(**ckpt["config"])),
        "data_root": str(artifacts.resolve(ckpt["config"]["data_root"])),
    }
    overrides = []
    for name, value in wanted.items():
        if identity.get(name) != value:
            text = (
                f'"{value!r}"'
                if isinstance(value, list)
                else shlex.quote(value)
                if isinstance(value, str)
                else repr(value)
            )
            overrides.append(f"--{name}={text}")
    return " ".join(["python dataloader.py", *overrides]) if overrides else None


def data_section(cfg, ckpt):
    """1. Data: the scan and split of the checkpoint's run, or one line naming the command that brings them."""
    published = manifest.complete(cfg, "split")
    split_csv = artifacts.out_path(cfg, "results", "split.csv")
    if published and split_csv.is_file() and artifacts.file_digest(split_csv) == ckpt["split_digest"]:
        summary = artifacts.read_csv(artifacts.out_path(cfg, "results", "dataset_summary.csv"), ("group", "class"))
        return "<h2>1. Data</h2>" + labels_origin(artifacts.out_path(cfg, "results")) + _table(summary)
    command = split_command(ckpt, (published or {}).get("inputs", {}))
    fix = (
        f"{_code(command)} draws the model's split again (the same settings and files give the same split); then "
        f"<code>python report.py</code>"
        if command
        else "the files under the data root changed since the model "
        "was trained, so its split cannot be drawn again: retrain with <code>python train.py</code>"
    )
    return (
        '<h2>1. Data</h2><p class="warn">Left out: results/split.csv and its class counts are not the split '
        f"checkpoints/best.pth was trained on (dataloader.py ran since with other settings or files). {fix}.</p>"
    )


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
    per_class = pd.DataFrame([{"class": c, **m} for c, m in metrics["per_class"].items()])
    moved = f"; images read from {_code(run.image_root)} (same files)" if run.image_root != run.data_root else ""
    seen, unseen = ", ".join(ckpt["classes"]), ", ".join(ckpt["config"].get("unseen_classes", []))
    model = (
        f"Checkpoint <code>checkpoints/best.pth</code> sha256 {run.inputs['checkpoint']}, saved "
        f"{html.escape(str(metrics.get('checkpoint_saved_at')))} (epoch {metrics.get('checkpoint_epoch')}); "
        f"embeddings set {run.inputs['embeddings']}."
    )
    return [
        f"<h1>Plankton embedding lab: report</h1><p>Data root {_code(run.data_root)}{moved}; "
        f"trunk weights: {html.escape(weights)}.</p><p>Classes trained on: {html.escape(seen)}; unseen: "
        f"{html.escape(unseen)}.</p><p>{model}</p>{warn}",
        data_section(cfg, ckpt),
        f"<h2>2. Training</h2><p>Best validation loss {best['val_loss']:.4f} (accuracy {best['val_acc']:.3f}) "
        f"at epoch {int(best['epoch'])} of {len(history)}.</p>"
        + _figure(figs / "training_plot.png", "Loss and accuracy per epoch", "train.py"),
        f"<h2>3. Test set</h2><p>Accuracy {100 * metrics['accuracy']:.2f} %, balanced accuracy "
        f"{100 * metrics['balanced_accuracy']:.2f} %, macro F1 {metrics['macro_f1']:.3f} on "
        f"{metrics['n_test']} test images.</p>"
        + _near_copies_line(cfg, results)
        + _table(per_class)
        + _figure(figs / "confusion_matrix.png", "Confusion matrix", "evaluate.py"),
    ]


def _near_copies_line(cfg, results):
    """The test accuracy without the test images that have a near-copy in train (lab/near_copies.py)."""
    predictions = artifacts.read_csv(
        artifacts.require(results / "test_predictions.csv", "evaluate.py"), ("path", "label", "predicted")
    )
    return f"<p>{html.escape(near_copies.accuracy_without_copies(cfg, predictions))}</p>"


# --------------------------------------------------------------------------- the map
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
            f"{_code(run.predict['inputs']['predict_dir'])}, then <code>python report.py</code>"
            if run.predict
            else "they are not the predictions now in results/"
        )
        note = (
            f'<p class="note">The 2-D map held {int(on_map.sum())} images of an earlier run of predict.py (another '
            f"sample, or another run): left out of it. {where}.</p>"
        )
    coords = cap_per_split(coords, cfg.umap_samples_per_split, cfg.seed)
    embedded = embedded_root(run.inputs["embeddings_meta"], run.data_root)
    coords["image"] = read_from(coords["path"], embedded, run.image_root)
    test_predictions = artifacts.read_csv(results / "test_predictions.csv", ("path", "label", "predicted"))
    predictions = None
    if run.mapped:
        predictions = absolute(
            artifacts.read_csv(results / "predictions.csv", PREDICTION_TEXT), run.predict["inputs"]["predict_dir"]
        )
    issues = (
        absolute(artifacts.read_csv(results / "label_issues.csv", AUDIT_TEXT), embedded) if audit_ran(cfg) else None
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
        _figure(figs / "umap_embeddings.png", "Static map: train, test, unseen", "dimensionality_reduction.py"),
    )


# --------------------------------------------------------------------------- optional sections
def predictions_section(cfg, results, run):
    """predict.py's counts when its set is whole and made with this model; else one line naming the command."""
    if run.predict is None:
        body = manifest.read(cfg, "predict")
        if body is None and not artifacts.out_path(cfg, "embeddings", embedding_files.PREDICT_META).exists():
            return None
        folder = (body or {}).get("inputs", {}).get("predict_dir")
        command = (
            _code(embedding_files.predict_command(folder))
            if folder
            else "<code>python predict.py --predict_dir=...</code>"
        )
        return (
            '<h2>Predictions for new images</h2><p class="warn">Left out: the predictions in results/ were made '
            f"with another model or embeddings, or are not one whole set. {command} makes them again with this "
            "one.</p>"
        )
    counts = artifacts.read_csv(results / "prediction_counts.csv", PREDICTION_TEXT)
    predictions = artifacts.read_csv(results / "predictions.csv", PREDICTION_TEXT)
    mean = (
        f" (mean probability of the predicted class {predictions['probability'].mean():.2f})"
        if "probability" in predictions and len(predictions)
        else ""
    )
    where = (
        "they are in the 2-D map as the split \u201cpredict\u201d, coloured by their predicted class"
        if run.mapped
        else "they are not on the 2-D map yet: <code>python dimensionality_reduction.py</code> puts them there, "
        "then <code>python report.py</code>"
    )
    return (
        f"<h2>Predictions for new images</h2><p>{len(predictions)} new images of "
        f"{_code(run.predict['inputs']['predict_dir'])} classified{mean}; {where}.</p>"
        + _short_table(counts, "prediction_counts.csv")
    )


def optional_sections(cfg, results, figs, run):
    """Novelty and prediction results, each only when its script has run (novelty: checked with the others)."""
    parts = []
    if novelty_ran(cfg):
        figures = "".join(_figure(figs / name, caption, "novelty.py") for name, caption in NOVELTY_FIGURES)
        parts.append(
            "<h2>Novelty: telling unseen classes from seen ones</h2>"
            + _short_table(artifacts.read_csv(results / "novelty.csv", NOVELTY_TEXT), "novelty.csv")
            + figures
        )
    predicted = predictions_section(cfg, results, run)
    abundance = abundances_part(cfg, results, run) if predicted else []
    audit = [audit_section(cfg, results, figs)] if audit_ran(cfg) else []
    return parts + ([predicted] if predicted else []) + abundance + audit


def abundances_part(cfg, results, run):
    """abundances.csv is a file of predict.py's set: shown with its predictions, never with another sample's. One
    calibrated on the label audit's out-of-fold outputs is shown only while that audit is the one in results/
    (audit.py may have run since, with another model): else one line naming the commands."""
    if not (run.predict and (results / "abundances.csv").exists()):
        return []
    inputs = run.predict["inputs"]
    if inputs.get("abundance_calibration") == "out_of_fold":
        audit = manifest.complete(cfg, "audit")
        if inputs.get("audit") is None or audit is None or inputs["audit"] != audit["id"]:
            now = (
                "there is no complete audit in results/ now"
                if audit is None
                else "audit.py has run again since (results/ holds another audit)"
            )
            command = _code(
                embedding_files.predict_command(inputs["predict_dir"]) + " --abundance_calibration=out_of_fold"
            )
            return [
                '<h2>Abundances in the sample</h2><p class="warn">Left out: results/abundances.csv was '
                f"calibrated on the label audit's out-of-fold outputs, and {now}. <code>python audit.py "
                "--audit_model=head</code>, then " + command + " make them again; or run predict.py with "
                "<code>--abundance_calibration=validation</code>.</p>"
            ]
    return [abundances_section(artifacts.read_csv(results / "abundances.csv", ("class", "method")))]


def labels_origin(results):
    """Where the labels came from (results/label_sources.csv): the class folders, each table with its sha256."""
    path = results / "label_sources.csv"
    if not path.exists():  # a split made before the lab wrote the file: class folders only
        return "<p>Labels: the names of the class folders.</p>"
    return "<p>Labels from:</p>" + _table(artifacts.read_csv(path, ("source", "kind", "sha256", "status")))


AUDIT_MODEL_WORDS = {"linear": "a logistic regression on the pooled trunk features", "head": "the lab's head retrained"}


def audit_section(cfg, results, figs):
    """The label audit: how many labels cleanlab flags, per split, the flagged ones and the top suspects."""
    issues = artifacts.read_csv(results / "label_issues.csv", AUDIT_TEXT)
    flagged = issues[issues["flagged"]]
    by_split = ", ".join(
        f"{s} {int((flagged['split'] == s).sum())} of {int((issues['split'] == s).sum())}"
        for s in ("train", "val", "test")
    )
    audit_model = manifest.require(cfg, "audit")["inputs"].get("audit_model", "head")  # older audits: the head
    return (
        f"<h2>Label audit: which labels look wrong?</h2><p>Each of the {len(issues)} labelled images was scored "
        f"by a model fitted without it ({AUDIT_MODEL_WORDS.get(audit_model, audit_model)}, "
        f"{int(issues['fold'].max())} folds); cleanlab (Confident Learning) flags "
        f"{len(flagged)} labels as likely wrong ({by_split}). Label quality is the out-of-fold probability of "
        f"the given label. All images, most suspect first, are in results/label_issues.csv; the flagged ones "
        f"in results/label_issues_ecotaxa.tsv, to review in EcoTaxa.</p>"
        + _short_table(
            flagged[["rank", "path", "split", "label", "suggested_label", "label_quality"]], "label_issues.csv"
        )
        + _figure(figs / "label_issues.png", "The most suspect labels", "audit.py")
    )


CALIBRATION_WORDS = {
    "out_of_fold": "out-of-fold training and validation images (audit.py)",
    "validation": "validation images",
}


def abundances_section(table):
    """The sample's abundances (predict.py's results/abundances.csv): classify-and-count beside the correction
    for the sample's class proportions, with 95 % intervals, as a chart and a table."""
    data = base64.b64encode(abundances.abundance_chart(table)).decode("ascii")
    new = table[table["possibly_new"].astype(bool)]
    seen = table[~table["possibly_new"].astype(bool)]
    flagged = int(new["count"].iloc[0]) if len(new) else 0
    calibration = table["calibration"].iloc[0] if "calibration" in table else "validation"
    columns = ["class", "cc_count", "cc_proportion", "proportion", "proportion_low", "proportion_high", "count"]
    return (
        f"<h2>Abundances in the sample</h2><p>Each taxon's share of the {int(seen['cc_count'].sum())} images not "
        f"flagged possibly new, corrected for the sample's class proportions by "
        f"{html.escape(str(seen['method'].iloc[0]))} (calibrated on {int(table['calibration_images'].iloc[0])} "
        f"{CALIBRATION_WORDS.get(str(calibration), 'validation images')}; 95 % bootstrap intervals of "
        f"{int(table['bootstrap_draws'].iloc[0])} draws), beside "
        f"the plain count of predicted classes. {flagged} images possibly of a taxon never seen are counted "
        f"apart. Cite <code>results/abundances.csv</code> (docs/abundances.md).</p>"
        f'<figure><img src="data:image/png;base64,{data}" alt="abundances"><figcaption>Classify and count '
        f"(grey) and corrected (blue) shares, with 95 % intervals</figcaption></figure>" + _table(seen[columns])
    )


def distances_section(results, figs):
    section = "<h2>4. Average distances between classes</h2>"
    for s in ("test", "unseen"):
        csv = artifacts.require(results / f"average_distances_{s}.csv", "compute_average_distances.py")
        table = artifacts.read_csv(csv, ("class_a", "class_b"))
        section += (
            f"<h3>{s} set</h3><p>{distance_summary(table)}.</p>"
            + _figure(figs / f"average_euclidean_distances_{s}.png", f"Euclidean, {s}", "compute_average_distances.py")
            + _figure(figs / f"average_angular_distances_{s}.png", f"Angular, {s}", "compute_average_distances.py")
        )
    return section


def galleries_section(results, figs):
    galleries = artifacts.read_csv(
        artifacts.require(results / "galleries.csv", "dimensionality_reduction.py"),
        ("set", "class", "figure", "row", "path", "label"),
    )
    tiles = galleries[["class", "set", "figure"]].drop_duplicates().itertuples(index=False)
    return (
        "<h2>6. Galleries</h2><p>Per class: closest to the class centre, furthest, closest of other classes "
        "(128-d embedding space).</p>"
        + "".join(_figure(figs / figure, f"{c} ({s})", "dimensionality_reduction.py") for c, s, figure in tiles)
    )


def transfer_section(results, figs):
    transfer = artifacts.read_csv(
        artifacts.require(results / "transfer_learning.csv", "transfer_learning.py"), ("classifier", "per_class")
    )
    final = transfer[transfer["per_class"] == "all"][["classifier", "train_size", "accuracy", "balanced_accuracy"]]
    classifiers = list(dict.fromkeys(transfer["classifier"]))  # the names transfer_learning.py gave its figures
    return (
        "<h2>7. Transfer learning to unseen classes</h2><p>Balanced accuracy with the whole training part:</p>"
        + _table(final)
        + _figure(figs / "accuracy_all.png", "All classifiers", "transfer_learning.py")
        + "".join(_figure(figs / f"accuracy_{n}.png", n, "transfer_learning.py") for n in classifiers)
    )


# --------------------------------------------------------------------------- the page
def the_run(cfg, explicit_root=None):
    """What the page describes: the checkpoint's run, the inputs every section must share, its data roots, and
    predict.py's set when it belongs to this run (and whether the map's "predict" points are that very sample)."""
    trained = checkpoint.load_trained(cfg, model=False, split=False, made_for="results")
    inputs = check_results_belong_together(cfg, trained.digest)
    data_root, image_root = data_roots(trained, inputs["embeddings_meta"], explicit_root)
    predict = embedding_files.current_predict_set(cfg)
    mapped = (
        predict is not None
        and (manifest.recorded_inputs(cfg, "dimensionality_reduction") or {}).get("predict") == predict["id"]
    )
    return SimpleNamespace(
        trained=trained, inputs=inputs, data_root=data_root, image_root=image_root, predict=predict, mapped=mapped
    )


def build(cfg, explicit_root=None):
    run = the_run(cfg, explicit_root)
    results, figs = artifacts.out_path(cfg, "results"), artifacts.out_path(cfg, "figs")
    before = first_sections(cfg, results, figs, run) + [distances_section(results, figs)]
    intro, layout, static_map = map_section(cfg, results, figs, run)
    after = [static_map, galleries_section(results, figs), transfer_section(results, figs)]
    extra = optional_sections(cfg, results, figs, run)
    after += [part.replace("<h2>", f"<h2>{8 + i}. ", 1) for i, part in enumerate(extra)]
    page = interactive_map.standalone_page(
        layout, "Plankton embedding lab", STYLE, "".join(before + [intro]), "".join(after)
    )
    return artifacts.save_text(results / "report.html", page)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    cfg = config.load_config(argv, __doc__)
    config.print_settings(cfg)
    artifacts.ensure_output_dirs(cfg, ("results",))
    given = any(a.startswith("--data_root=") for a in argv)  # asked for on the command line: refused if not the same
    path = build(cfg, cfg.data_root if given else None)
    print(f"[report] {path} ({path.stat().st_size / 1e6:.1f} MB, one file: open it in any browser, offline)")
    return path


if __name__ == "__main__":
    runtime.run_main(lambda: main(sys.argv[1:]))
