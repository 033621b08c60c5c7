"""The report's sections shown when their script has run: novelty (novelty.py), predictions and abundances
(predict.py's output set, shown only when it is of this run) and the label audit (audit.py). Each returns HTML,
or one line naming the commands that bring what is left out.

Reads results/novelty.csv, figs/novelty_*.png, predict.py's results (predictions.csv, prediction_counts.csv,
abundances.csv; a cruise's sample tables through lab/report_cruise.py), results/label_issues.csv and
figs/label_issues.png; writes nothing.
"""

import html

from lab import artifacts, embedding_files, manifest, report_charts, report_cruise, report_run, report_tables

NOVELTY_FIGURES = (
    ("novelty_roc.png", "Novelty detection: ROC curves"),
    ("novelty_scores.png", "Novelty scores of seen and unseen images"),
)


def optional_sections(cfg, results, figs, run):
    """Novelty and prediction results, each only when its script has run (novelty: checked with the others)."""
    parts = []
    if report_run.novelty_ran(cfg):
        figures = "".join(report_tables.figure(figs / name, caption, "novelty.py") for name, caption in NOVELTY_FIGURES)
        parts.append(
            "<h2>Novelty: telling unseen classes from seen ones</h2>"
            + report_tables.short_table(
                artifacts.read_csv(results / "novelty.csv", report_tables.NOVELTY_TEXT), "novelty.csv"
            )
            + figures
        )
    predicted = predictions_section(cfg, results, run)
    abundance = abundances_part(cfg, results, run) if predicted else []
    cruise = [report_cruise.cruise_html(results)] if predicted and abundance and is_cruise(run) else []
    audit = [audit_section(cfg, results, figs)] if report_run.audit_ran(cfg) else []
    return parts + ([predicted] if predicted else []) + abundance + cruise + audit


def is_cruise(run):
    """Whether the run's predict set is a cruise's (samples set): its manifest lists the per-sample tables."""
    return "results/sample_abundances.csv" in run.predict.get("outputs", {})


def predictions_section(cfg, results, run):
    """predict.py's counts when its set is whole and made with this model; else one line naming the command."""
    if run.predict is None:
        body = manifest.read(cfg, "predict")
        if body is None and not artifacts.out_path(cfg, "embeddings", embedding_files.PREDICT_META).exists():
            return None
        folder = (body or {}).get("inputs", {}).get("predict_dir")
        command = (
            report_tables.code(embedding_files.predict_command(folder))
            if folder
            else "<code>python predict.py --predict_dir=...</code>"
        )
        return (
            '<h2>Predictions for new images</h2><p class="warn">Left out: the predictions in results/ were made '
            f"with another model or embeddings, or are not one whole set. {command} makes them again with this "
            "one.</p>"
        )
    counts = artifacts.read_csv(results / "prediction_counts.csv", report_tables.PREDICTION_TEXT)
    predictions = artifacts.read_csv(results / "predictions.csv", report_tables.PREDICTION_TEXT)
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
        f"{report_tables.code(run.predict['inputs']['predict_dir'])} classified{mean}; {where}.</p>"
        + report_tables.short_table(counts, "prediction_counts.csv")
    )


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
            command = report_tables.code(
                embedding_files.predict_command(inputs["predict_dir"]) + " --abundance_calibration=out_of_fold"
            )
            return [
                '<h2>Abundances in the sample</h2><p class="warn">Left out: results/abundances.csv was '
                f"calibrated on the label audit's out-of-fold outputs, and {now}. <code>python audit.py "
                "--audit_model=head</code>, then " + command + " make them again; or run predict.py with "
                "<code>--abundance_calibration=validation</code>.</p>"
            ]
    return [abundances_section(artifacts.read_csv(results / "abundances.csv", ("class", "method")))]


CALIBRATION_WORDS = {
    "out_of_fold": "out-of-fold training and validation images (audit.py)",
    "validation": "validation images",
}


def abundances_section(table):
    """The sample's abundances (predict.py's results/abundances.csv): classify-and-count beside the correction
    for the sample's class proportions, with 95 % intervals, as a chart and a table."""
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
        + report_tables.png_figure(
            report_charts.abundance_chart(table),
            "abundances",
            "Classify and count (grey) and corrected (blue) shares, with 95 % intervals",
        )
        + report_tables.table(seen[columns])
    )


AUDIT_MODEL_WORDS = {"linear": "a logistic regression on the pooled trunk features", "head": "the lab's head retrained"}


def audit_section(cfg, results, figs):
    """The label audit: how many labels cleanlab flags, per split, the flagged ones and the top suspects."""
    issues = artifacts.read_csv(results / "label_issues.csv", report_tables.AUDIT_TEXT)
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
        + report_tables.short_table(
            flagged[["rank", "path", "split", "label", "suggested_label", "label_quality"]], "label_issues.csv"
        )
        + report_tables.figure(figs / "label_issues.png", "The most suspect labels", "audit.py")
    )
