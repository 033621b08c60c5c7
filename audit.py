"""Which labels look wrong? A label audit of every labelled seen image, with out-of-fold probabilities and
Confident Learning (cleanlab), beyond the mission.

Every image of the train, validation and test splits is scored by a model that never saw it: audit_folds
stratified, seeded folds, a model fitted on the cached trunk features of the other folds for each (no trunk pass).
The model is the `audit_model` setting: by default a logistic regression on the pooled trunk features (seconds), or
the lab's head retrained by the main run's rules (learning rate, batch size, class weighting, epochs and patience,
stopped on a tenth of its own training images); see lab/label_audit.py. The test images are scored but never
trained on, so the out-of-fold outputs of the training and validation images may also calibrate predict.py's
abundances (abundance_calibration="out_of_fold", with audit_model="head") without touching a test image.
Reads checkpoints/best.pth (train.py), results/split.csv and the cached trunk features of the three splits (made by
train.py and evaluate.py: no trunk pass is run when they are there). Writes
  results/label_issues.csv          every audited image, the most suspect first: rank, path (relative to
                                    data_root), split, label (the given one), suggested_label (the most probable
                                    class out of fold), label_quality (cleanlab's self-confidence: the out-of-fold
                                    probability of the given label; lower = more likely wrong), flagged (cleanlab's
                                    find_label_issues), corrected_label (empty: for a taxonomist's answer),
                                    suggested_probability, fold, p_<class> (the out-of-fold probabilities)
  results/label_issues_ecotaxa.tsv  the flagged images in EcoTaxa's import layout (lab/ecotaxa.py), status
                                    'dubious', category = the given label, to review them in EcoTaxa
                                    (img_file_name is relative to data_root: put the file at its top)
  figs/label_issues.png             the most suspect images, each with its given and suggested label
  results/audit_manifest.json       the checkpoint and split they were computed from, the folds and the model
"""

import sys

import pandas as pd

from lab import (
    artifacts,
    cached_features,
    checkpoint,
    config,
    ecotaxa,
    image_io,
    label_audit,
    manifest,
    plotting,
    progress,
    runtime,
    splitting,
    trunk_cache,
)

SPLITS = ("train", "val", "test")
FIGURE_IMAGES = 20  # the top suspects drawn in figs/label_issues.png
FIGURE_COLUMNS = 5


def audited_images(trained):
    """The labelled images of the three splits as one PooledSplit (from the trunk cache), with their rows."""
    data = trunk_cache.prepare(
        trained.cfg,
        trained.device,
        trained.split,
        trained.model,
        trained.ckpt["weights"],
        trained.trunk_dtype,
        names=SPLITS,
    )
    return cached_features.PooledSplit([data[name] for name in SPLITS])


def ecotaxa_frame(issues, classes):
    """The flagged images in EcoTaxa's import columns: the given label as category, status 'dubious', then the
    suggested category and the audit's numbers."""
    flagged = issues[issues["flagged"]]
    frame = pd.DataFrame(
        {
            "img_file_name": flagged["path"].values,
            "object_id": ecotaxa.object_ids(flagged["path"], set()),
            "object_annotation_category": flagged["label"].values,
            "object_annotation_status": "dubious",
            "object_suggested_category": flagged["suggested_label"].values,
            "object_split": flagged["split"].values,
            "object_label_quality": flagged["label_quality"].values.astype(float),
            "object_suggested_probability": flagged["suggested_probability"].values.astype(float),
            "object_audit_rank": flagged["rank"].values.astype(int),
        }
    )
    names = ecotaxa.probability_columns(classes)  # at once: 100+ columns added one by one fragment the frame
    probabilities = pd.DataFrame({name: flagged[f"p_{c}"].values.astype(float) for c, name in names.items()})
    return pd.concat([frame, probabilities], axis=1)


def plot_suspects(cfg, issues, path):
    """The FIGURE_IMAGES most suspect images, each titled with its rank, split, given and suggested label."""
    plt = plotting.pyplot()
    top = issues.head(FIGURE_IMAGES)
    rows = max(1, -(-len(top) // FIGURE_COLUMNS))
    fig, axes = plt.subplots(
        rows, FIGURE_COLUMNS, figsize=(2.9 * FIGURE_COLUMNS, 3.4 * rows), squeeze=False, layout="constrained"
    )
    given = plotting.drawable_names(list(top["label"]))
    suggested = plotting.drawable_names(list(top["suggested_label"]))
    for ax in axes.flat:
        ax.axis("off")
    for ax, row, label, guess in zip(axes.flat, top.itertuples(index=False), given, suggested):
        try:
            ax.imshow(image_io.letterbox(image_io.load_rgb(splitting.absolute_paths(cfg, [row.path])[0]), 128))
        except Exception:  # a file moved or damaged since the split: its row stays, without its picture
            pass
        flag = " (flagged)" if row.flagged else ""
        ax.set_title(
            f"#{row.rank} {row.split}{flag}\ngiven: {label}\nsuggested: {guess}\nquality {row.label_quality:.3f}",
            fontsize=8,
            color="#b00" if row.flagged else "black",
        )
    fig.suptitle("Label audit: the most suspect labels (lowest out-of-fold probability of the given label)")
    return plotting.save_figure(path, fig)


def describe_model(audit_model, training):
    """One line on the model fitted per fold, for the log."""
    if audit_model == "head":
        return (
            f"each a head trained at lr {training.lr:g}, batches of {training.batch_size}, for up to "
            f"{training.epochs} epochs, stopped on {label_audit.INNER_SHARE:.0%} of its training images "
            f"(patience {training.patience}), as train.py"
        )
    return (
        f"each a logistic regression on the trunk features pooled to {label_audit.POOL_GRID} x "
        f"{label_audit.POOL_GRID} (C={label_audit.LINEAR_C:g}, class weighting {training.class_weighting!r})"
    )


def print_summary(issues, folds, paths):
    flagged = issues[issues["flagged"]]
    by_split = ", ".join(
        f"{s} {int((flagged['split'] == s).sum())} of {int((issues['split'] == s).sum())}" for s in SPLITS
    )
    print(
        f"\n[audit] {len(issues)} labelled images scored out of fold ({folds} folds); cleanlab flags {len(flagged)} "
        f"({100 * len(flagged) / max(len(issues), 1):.1f} %) as likely mislabelled: {by_split}"
    )
    for row in issues.head(10).itertuples(index=False):
        print(
            f"  #{row.rank:<4} {row.path:<50} given {row.label!s:<24} suggested {row.suggested_label!s:<24} "
            f"quality {row.label_quality:.3f}{'  flagged' if row.flagged else ''}"
        )
    print("[audit] " + ", ".join(str(p) for p in paths))


def main(argv=None):
    cfg = config.load_config(argv, __doc__)
    artifacts.ensure_output_dirs(cfg, ("results", "figs", "cache"))
    trained = checkpoint.load_trained(cfg, made_for="label-quality scores")
    cfg, ckpt = trained.cfg, trained.ckpt
    runtime.seed_everything(cfg.seed)
    data = audited_images(trained)
    training = label_audit.fold_training(ckpt, cfg, trained.device)
    print(f"[audit] {len(data)} images, {cfg.audit_folds} folds, {describe_model(cfg.audit_model, training)}")
    issues = label_audit.audit_labels(
        trained.model, data, ckpt["classes"], training, cfg.audit_folds, trained.device, audit_model=cfg.audit_model
    )
    print(f"[audit] writing label_issues.csv ({len(issues)} rows x {issues.shape[1]} columns), the EcoTaxa table")
    with manifest.OutputSet(cfg, "audit") as out, progress.heartbeat("audit: writing"):  # the three files, or none
        out.save_csv("results", "label_issues.csv", issues)
        out.write(
            "results",
            "label_issues_ecotaxa.tsv",
            lambda tmp: ecotaxa.write_table(tmp, [ecotaxa_frame(issues, ckpt["classes"])]),
        )
        plot_suspects(cfg, issues, out.file("figs", "label_issues.png"))
        out.publish(
            checkpoint=trained.digest,
            split=splitting.split_digest(cfg),
            folds=cfg.audit_folds,
            audit_model=cfg.audit_model,
            epochs=training.epochs if cfg.audit_model == "head" else None,
            patience=training.patience if cfg.audit_model == "head" else None,
            test_images_trained_on=False,
        )  # abundances' out-of-fold calibration
    paths = [
        artifacts.out_path(cfg, kind, name)
        for kind, name in (
            ("results", "label_issues.csv"),
            ("results", "label_issues_ecotaxa.tsv"),
            ("figs", "label_issues.png"),
        )
    ]
    print_summary(issues, cfg.audit_folds, paths)
    return issues


if __name__ == "__main__":
    runtime.run_main(lambda: main(sys.argv[1:]))
