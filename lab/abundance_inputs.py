"""Abundances from the lab's artifacts: the sample predict.py has just classified, and the calibration images of
the corrections (lab/abundances.py computes them), with the rule for which label audit may calibrate them.

Calibration data (abundance_calibration), never a test image (they are kept for the measurement,
bench/bench_abundances.py):
  validation   the default: the validation split's embeddings (embeddings_val.pkl) through the classifier's last
               layer, which never trained on them
  out_of_fold  the label audit's out-of-fold probabilities of the training and validation images (audit.py, of
               this checkpoint): each from a head trained, by the main run's rules, on nine tenths of the other
               folds' training and validation images only and stopped on the rest; about 16 times as many
               (QuaPy's val_split=k does the same). Measured worse on ndsb9: the fold heads are not the model,
               and their confusions were not its confusions
The table's calibration column names the one used.
Images flagged possibly new are left out of both the sample's and the calibration's images, so that the
correction is measured on the population it is applied to; the sample's flagged images are counted apart.

Reads (sample_abundances) results/predictions.csv (its p_<class> and possibly_new columns),
embeddings/embeddings_val.pkl, and for out_of_fold results/label_issues.csv (audit.py's, of this checkpoint) and
embeddings/embeddings_train.pkl; writes nothing: predict.py saves the table as results/abundances.csv.
"""

import numpy as np
import pandas as pd
from scipy.special import softmax

import lab
from lab import abundances, artifacts, embedding_files, manifest, splitting


# --------------------------------------------------------------------------- from the lab's artifacts
def probabilities_from_embeddings(scorer, embeddings):
    """The head's class probabilities of embeddings: softmax of the last layer's logits."""
    return softmax(scorer.logits(embeddings), axis=1)


def training_prior(cfg, labels, n_classes):
    """The class shares the head's probabilities assume: the training set's, which the stratified validation split
    repeats (all its images, before the novelty flag), or equal shares where class_weighting="balanced" weighted
    the loss so that every class counts alike."""
    if cfg.class_weighting == "balanced":
        return np.full(n_classes, 1.0 / n_classes)
    return np.bincount(labels, minlength=n_classes) / max(len(labels), 1)


def novelty_kept(cfg, scorer, threshold, split):
    """{path: whether the novelty flag keeps it} of one split's embedded images, and its frame."""
    frame, vectors = embedding_files.load_embeddings(cfg, split)
    if set(frame["split"]) - {split}:
        raise lab.LabError(f"embeddings/embeddings_{split}.pkl holds rows of other splits. Re-run `python embed.py`.")
    kept = scorer.scores(vectors, (cfg.novelty_score,))[cfg.novelty_score] <= threshold
    return dict(zip(frame["path"], kept)), frame, vectors, kept


def out_of_fold_audit(cfg, checkpoint_digest):
    """The audit manifest whose out-of-fold outputs may calibrate this model's abundances: audit.py's, of this
    checkpoint, by the lab's head, never trained on a test image. Otherwise a LabError naming the command; predict.py
    asks before its trunk pass, so that a refusal costs no wait."""
    audit, problem = manifest.check(cfg, "audit")
    if audit is not None and audit["inputs"].get("checkpoint") != checkpoint_digest:
        audit, problem = None, "it was made from another checkpoint"
    elif audit is not None and audit["inputs"].get("test_images_trained_on") is not False:
        audit, problem = None, "it was made by an older audit.py, whose fold heads trained on the test images"
    elif audit is not None and audit["inputs"].get("audit_model", "head") != "head":
        audit, problem = (
            None,
            (
                f"its out-of-fold model was audit_model={audit['inputs']['audit_model']!r}, not "
                f"the lab's head, whose confusions these abundances correct"
            ),
        )
    if audit is None:
        raise lab.LabError(
            f"abundance_calibration='out_of_fold' takes audit.py's out-of-fold outputs of this model "
            f"by its head, and the audit in results/ cannot serve ({problem}). Run `python audit.py "
            f"--audit_model=head` with this model first, or use --abundance_calibration=validation "
            f"(the default)."
        )
    return audit


def out_of_fold_calibration(cfg, classes, scorer, threshold, checkpoint_digest, prior, val_kept):
    """The Calibration of audit.py's out-of-fold probabilities of the training and validation images, those the
    novelty flag keeps (val_kept: novelty_kept's map of the validation images, already scored). An audit that
    cannot serve (out_of_fold_audit) names audit.py."""
    out_of_fold_audit(cfg, checkpoint_digest)
    columns = [f"p_{c}" for c in classes]
    issues = artifacts.read_csv(artifacts.out_path(cfg, "results", "label_issues.csv"), ("path", "split", "label"))
    issues = issues[issues["split"].isin(["train", "val"])]
    kept = {**val_kept, **novelty_kept(cfg, scorer, threshold, "train")[0]}
    index = {str(c): i for i, c in enumerate(classes)}
    paths = np.asarray(splitting.absolute_paths(cfg, issues["path"]), dtype=object)  # as the embeddings name them
    keep = np.array([bool(kept.get(p, False)) for p in paths], dtype=bool) & issues["label"].isin(index).to_numpy()
    probabilities = issues[columns].to_numpy(np.float64)[keep]
    return abundances.Calibration(
        probabilities / probabilities.sum(axis=1, keepdims=True),
        issues["label"][keep].map(index).to_numpy(np.int64),
        prior,
        tuple(paths[keep]),
        "out_of_fold",
    )


def calibration_from_artifacts(cfg, scorer, threshold, checkpoint_digest, classes, source="validation"):
    """The Calibration of the corrections, never a test image: the validation images, or (source "out_of_fold")
    audit.py's out-of-fold outputs of the training and validation images of this checkpoint (checkpoint_digest);
    in both, only the images the novelty flag keeps."""
    by_path, frame, vectors, keep = novelty_kept(cfg, scorer, threshold, "val")
    labels = frame["label_idx"].to_numpy()
    prior = training_prior(cfg, labels, len(scorer.weight))
    if source == "out_of_fold":
        return out_of_fold_calibration(cfg, classes, scorer, threshold, checkpoint_digest, prior, by_path)
    return abundances.Calibration(
        probabilities_from_embeddings(scorer, vectors[keep]),
        labels[keep],
        prior,
        tuple(frame["path"].to_numpy()[keep]),
        "validation",
    )


def sample_probabilities(predictions_path, classes):
    """(probabilities, possibly_new) of every image in predict.py's predictions.csv, read a block at a time."""
    columns = [f"p_{c}" for c in classes] + ["possibly_new"]
    blocks = list(
        pd.read_csv(
            artifacts.require(predictions_path, "predict.py", "predictions file"), usecols=columns, chunksize=100_000
        )
    )
    frame = pd.concat(blocks, ignore_index=True) if blocks else pd.DataFrame(columns=columns)
    probabilities = frame[[f"p_{c}" for c in classes]].to_numpy(np.float64)
    return probabilities / probabilities.sum(axis=1, keepdims=True), frame["possibly_new"].to_numpy(bool)


def abundance_fits(cfg, classes, scorer, threshold, checkpoint_digest):
    """The run's abundances.Fits: cfg.abundance_method (and every other method's point fit) on the calibration
    images, with cfg.abundance_bootstrap draws seeded by cfg.seed; fitted once, whatever the number of samples."""
    calibration = calibration_from_artifacts(
        cfg, scorer, threshold, checkpoint_digest, classes, cfg.abundance_calibration
    )
    return abundances.Fits(calibration, cfg.abundance_method, cfg.abundance_bootstrap, cfg.seed)


def sample_abundances(cfg, classes, predictions_path, fits):
    """The abundances table of every image predict.py has just classified (predictions_path: its predictions.csv),
    as one sample (a cruise's pooled), corrected by the run's fits (abundance_fits)."""
    probabilities, possibly_new = sample_probabilities(predictions_path, classes)
    return abundances.abundance_frame(
        classes, probabilities, possibly_new, fits.calibration, fits.method, fits.draws, cfg.seed, fits=fits
    )
