"""The label audit: out-of-fold class probabilities of every labelled image, and its given labels ranked by how
likely they are wrong, with cleanlab (Confident Learning, Northcutt et al., JAIR 2021).

The images (the train, validation and test splits together, as a cached_features.PooledSplit) fall into `folds`
stratified folds, shuffled with the seed. For each fold a model is fitted on the cached trunk features of the other
folds' *training and validation* images, and it scores the fold's own images: their probabilities are their
out-of-fold probabilities. No trunk pass is run, and nothing is chosen on the images a model scores. Two models
(the `audit_model` setting):
  "linear" (the default)  a multinomial logistic regression (scikit-learn, L2, C = LINEAR_C, the main run's class
                          weighting) on the trunk features average-pooled to a POOL_GRID x POOL_GRID grid and
                          standardised: cleanlab's own recipe for images (a simple classifier on a pretrained
                          network's features, cross-validated).
  "head"                  a fresh lab head (each layer initialised anew, seeded) trained by the main run's rules
                          (`FoldTraining`: its learning rate, batch size, class weighting, head precision, epochs,
                          patience and stopping rule, its dihedral views too), stopped on an inner validation part of
                          its own training images (INNER_SHARE, stratified, seeded) as train.py stops on the
                          validation split, the weights its rule keeps kept (with stopping="averaged", the default,
                          the head's weights averaged over epochs): about audit_folds - 1 times the main run's
                          training. Its
                          out-of-fold outputs are the head's own, which the abundances' out-of-fold calibration
                          needs.
How many planted label errors each model finds, and at what cost, measured: docs/label-audit.md.
The test images are scored like the others (each by the model of its fold) but never train one: they set the
reported accuracy and the abundances' measurement, and the out-of-fold outputs of the training and validation
images calibrate the abundances (lab/abundances.py), which must never have touched a test image.
cleanlab then gives each given label its quality (`cleanlab.rank.get_label_quality_scores`, self-confidence: the
out-of-fold probability of the given label; lower = more likely wrong) and flags the likely label issues
(`cleanlab.filter.find_label_issues`, pruning by the noise rates it estimates from the confident joint).
Used by audit.py and bench/bench_audit.py; reads and writes nothing.
"""

import math
import warnings
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch
from scipy.special import softmax

import lab
from lab import cached_features, config, head_training, precision, progress, thread_choice

QUALITY_METHOD = "self_confidence"  # cleanlab's default score: the probability of the given label
AUDIT_MODELS = config.AUDIT_MODELS  # the choices of audit_model, defined once in config.py
# The linear model's features: the trunk's 64 channels averaged over a 2 x 2 grid (256 numbers per image), which
# keeps the particle's coarse layout; and its regularisation, strong because a class may have few images. Chosen on
# ndsb9 among 1 x 1 / 2 x 2 / 4 x 4 grids and C = 0.1 / 1 (four flip seeds): 2 x 2 at C = 0.1 ranked the most flips
# in the top 10 % on average; a nested cross-validation of C gave the same at 10x the cost (docs/label-audit.md).
POOL_GRID = 2
LINEAR_C = 0.1
LINEAR_MAX_ITER = 1000
HEAD_PARTS = ("head_conv", "embedding", "classifier")  # the trainable layers of backbone.PlanktonNet
# Settings of the main run: each fold's head is trained with them.
TRAINING_KEYS = ("lr", "batch_size", "class_weighting", "head_precision", "epochs", "patience", "stopping")
# A checkpoint of before the stopping setting was trained with the raw rule.
STOPPING_BEFORE_THE_SETTING = "raw"
# The share of a fold's training images set apart to stop its head on. Heads trained for the main run's best epoch
# count instead reached 0.58 to 0.92 on their held-out ndsb9 images (the random trunk's validation accuracy swings
# from epoch to epoch); stopped on this inner part, 0.89 to 0.94 (docs/label-audit.md).
INNER_SHARE = 0.1


@dataclass(frozen=True)
class FoldTraining:
    """How each fold's head is trained: the main run's rules. With patience, at most `epochs` epochs, stopped after
    `patience` epochs without a better loss on the inner validation part, its best epoch kept; without (None),
    exactly `epochs` epochs on all the fold's training images."""

    epochs: int
    lr: float
    batch_size: int
    class_weighting: str
    head_dtype: torch.dtype | None
    seed: int
    patience: int | None = None
    best_epoch: int | None = None  # the main run's: for a fold too small to set an inner part apart
    stopping: str = "raw"  # the main run's rule (head_training.STOPPING); the benchmarks' fold heads keep "raw"
    cpu_threads: str | int = "auto"  # the setting cpu_threads (a compute setting: the current config's)

    def with_epochs(self, epochs):
        """Exactly `epochs` epochs, no stopping (the benchmark's growth measurement)."""
        return replace(self, epochs=epochs, patience=None)


def fold_training(ckpt, cfg, device):
    """The main run's rules from its checkpoint: the learning rate, batch size, class weighting, head precision,
    epochs and patience it was trained with (the current config's, for a checkpoint that lacks one), the head
    precision resolved on this device as train.py resolves it."""
    trained_with = {key: ckpt.get("config", {}).get(key, getattr(cfg, key)) for key in TRAINING_KEYS}
    trained_with["stopping"] = ckpt.get("config", {}).get("stopping", STOPPING_BEFORE_THE_SETTING)
    return FoldTraining(
        epochs=int(trained_with["epochs"]),
        lr=float(trained_with["lr"]),
        batch_size=int(trained_with["batch_size"]),
        class_weighting=trained_with["class_weighting"],
        head_dtype=precision.head_dtype(trained_with["head_precision"], device),
        seed=cfg.seed,
        patience=int(trained_with["patience"]),
        best_epoch=int(ckpt["epoch"]),
        stopping=trained_with["stopping"],
        cpu_threads=cfg.cpu_threads,
    )


def assign_folds(labels, folds, seed):
    """The fold (0 .. folds-1) of each image: stratified by label, shuffled with the seed. A class with fewer
    images than folds is missing from some folds' held-out part, never from a training part."""
    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray(labels)
    largest = np.bincount(labels).max() if len(labels) else 0
    if folds > largest:
        raise lab.LabError(
            f"audit_folds={folds} is more than the images of the largest class ({largest}): a fold "
            f"needs at least one image of it. Lower audit_folds (the default is {config.default_of('audit_folds')!r})."
        )
    fold = np.empty(len(labels), dtype=np.int64)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        for k, (_, held_out) in enumerate(splitter.split(np.zeros((len(labels), 1)), labels)):
            fold[held_out] = k
    return fold


def reset_head(model, seed):
    """A fresh head, as a newly built model has: every layer's own initialisation, seeded (dropout's draws too).
    The frozen trunk is left as it is: the folds train on its cached output and never run it."""
    torch.manual_seed(seed)
    for part in HEAD_PARTS:
        for layer in getattr(model, part).modules():
            if hasattr(layer, "reset_parameters"):
                layer.reset_parameters()  # BatchNorm: its running statistics too


def inner_split(labels, seed):
    """(training part, inner validation part): positions of a fold's training images, INNER_SHARE of them (at least
    one) set apart, stratified where the inner part can hold every class, seeded. An image alone in its class always
    stays in the training part (else the head would never learn its class); the inner part is empty when nothing
    else is left to set apart."""
    from sklearn.model_selection import train_test_split

    positions = np.arange(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    alone = np.isin(labels, classes[counts < 2])
    rest = positions[~alone]
    size = max(1, round(INNER_SHARE * len(labels)))
    if len(rest) <= size:
        return positions, np.zeros(0, dtype=np.int64)
    rest_classes = np.unique(labels[rest])
    stratify = labels[rest] if 1 < len(rest_classes) <= size else None  # else a plain seeded draw
    part, inner = train_test_split(rest, test_size=size, stratify=stratify, random_state=seed % 2**32)
    return np.sort(np.concatenate([part, positions[alone]])), np.sort(inner)


def head_state(model):
    """A copy of the head's weights and BatchNorm statistics (the frozen trunk is never trained: not copied)."""
    return {name: value.clone() for name, value in model.state_dict().items() if name.split(".", 1)[0] in HEAD_PARTS}


def train_fold(model, data, training, device, fold, n_classes):
    """Train a fresh head on data (the other folds' images), each epoch in its seeded order (each image in a random
    one of its cached views, as train.py draws them): stopped on an inner validation part of data by the main run's
    rule (training.stopping, training.patience) and the weights it keeps kept (with "averaged", the weights averaged
    over epochs), or for exactly training.epochs epochs on all of data (patience None; also for a fold too small to
    set an inner part apart, then for the main run's best epoch count; with "averaged", the average at the end is
    kept). Returns (the epoch kept, the images trained on, the inner images). On the setting cpu_threads, as
    train.py trains the head (thread_choice.chosen)."""
    with thread_choice.chosen(training.cpu_threads):
        return _train_fold(model, data, training, device, fold, n_classes)


def _train_fold(model, data, training, device, fold, n_classes):
    reset_head(model, training.seed * 1009 + fold)
    optimizer = head_training.adam(model, training.lr)
    epochs, inner = training.epochs, np.zeros(0, dtype=np.int64)
    if training.patience is not None:
        part, inner = inner_split(data.labels.numpy(), training.seed * 7919 + fold)
        if len(inner):
            data, inner_data = data.subset(part), data.subset(inner)
        else:
            epochs = training.best_epoch or training.epochs
    stopping = len(inner) > 0
    weights = head_training.class_weights(data.labels.numpy(), n_classes, training.class_weighting)
    rule, averaged = head_training.STOPPING[training.stopping]
    early = head_training.EarlyStopping(rule, training.patience or 1)
    average = head_training.weight_average(model) if averaged else None
    scored = average.module if average is not None else model  # the weights validated and kept
    best_epoch, best_state = epochs, None
    for epoch in range(1, epochs + 1):
        shuffle = torch.Generator().manual_seed(training.seed * 100003 + 1000 * (fold + 1) + epoch)
        order = torch.randperm(len(data), generator=shuffle)
        loss, _ = head_training.run_epoch(
            model,
            data,
            device,
            training.batch_size,
            optimizer,
            order,
            desc=f"audit fold {fold + 1} epoch {epoch}/{epochs}",
            weights=weights,
            dtype=training.head_dtype,
            views=cached_features.draw_views(data, shuffle),
        )
        if average is not None:
            average.update_parameters(model)
        if stopping:
            inner_loss, _ = head_training.run_epoch(
                scored, inner_data, device, training.batch_size, weights=weights, dtype=training.head_dtype
            )
            loss = loss + inner_loss  # either one non-finite: diverged
        if not math.isfinite(loss):
            raise lab.LabError(
                f"The label audit's head diverged in fold {fold + 1}, epoch {epoch} (the loss became "
                f"NaN or infinite at lr={training.lr}, the main run's). Retrain with a lower learning "
                f"rate (`python train.py --lr=...`), then run audit.py again."
            )
        if not stopping:
            continue
        if early.step(inner_loss):
            best_epoch, best_state = epoch, head_state(scored)
        if early.stop:
            break
    if best_state is None and average is not None:  # no inner part to stop on: the average at the end
        best_state = head_state(average.module)
    if best_state is not None:
        model.load_state_dict(best_state, strict=False)
    return best_epoch, len(data), len(inner)


def fold_parts(fold, trains=None):
    """(k, folds, held-out positions, positions trained on) of each fold k: its own images held out, the other
    folds' images that `trains` allows (default all) trained on."""
    trains = np.ones(len(fold), dtype=bool) if trains is None else np.asarray(trains, dtype=bool)
    folds = int(fold.max()) + 1 if len(fold) else 0
    for k in range(folds):
        yield k, folds, np.flatnonzero(fold == k), np.flatnonzero((fold != k) & trains)


def out_of_fold_probabilities(model, data, fold, training, device, n_classes, log=print, trains=None):
    """(images x classes) softmax probabilities, each image's from the head trained without its fold. trains: which
    images may train a head (default all); the others are scored by their fold's head and never trained on."""
    probabilities = np.zeros((len(data), n_classes))
    for k, folds, held_out, trained_on in fold_parts(fold, trains):
        kept, trained, inner = train_fold(model, data.subset(trained_on), training, device, k, n_classes)
        logits = cached_features.head_outputs(model, data.subset(held_out), device, training.batch_size)[0]
        probabilities[held_out] = softmax(logits.astype(np.float64), axis=1)
        stopped = f", stopped on {inner} more (epoch {kept} kept)" if inner else ""
        log(f"[audit] fold {k + 1}/{folds}: trained on {trained} images{stopped}, scored {len(held_out)}")
    return probabilities


def rank_labels(labels, probabilities):
    """(label quality, cleanlab's flag, rank) of each given label: rank 1 is the most suspect (the lowest quality;
    equal qualities in image order)."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    labels = np.asarray(labels)
    quality = get_label_quality_scores(labels, probabilities, method=QUALITY_METHOD)
    with warnings.catch_warnings():  # a class of very few images: cleanlab warns that it may miss some there
        warnings.filterwarnings("ignore", message="May not flag all label issues", category=UserWarning)
        flagged = find_label_issues(labels, probabilities, filter_by="prune_by_noise_rate", n_jobs=1)
    rank = np.empty(len(labels), dtype=np.int64)
    rank[np.argsort(quality, kind="stable")] = np.arange(1, len(labels) + 1)
    return quality, np.asarray(flagged, dtype=bool), rank


def issue_table(rows, classes, probabilities, quality, flagged, rank, fold):
    """One row per image, the most suspect first: rank, path, split, label (given), suggested_label (the most
    probable class out of fold), label_quality, flagged, corrected_label (empty: for the taxonomist's answer),
    suggested_probability, fold (1..K) and p_<class> for every class."""
    names = np.asarray(classes, dtype=object)
    suggested = probabilities.argmax(1) if len(probabilities) else np.zeros(0, dtype=np.int64)
    frame = pd.DataFrame(
        {
            "rank": rank,
            "path": rows["path"].values,
            "split": rows["split"].values,
            "label": rows["label"].values,
            "suggested_label": names[suggested],
            "label_quality": quality,
            "flagged": flagged,
            "corrected_label": "",
            "suggested_probability": probabilities[np.arange(len(suggested)), suggested],
            "fold": fold + 1,
        }
    )
    columns = pd.DataFrame(probabilities, columns=[f"p_{c}" for c in classes])  # at once: 100+ columns one by one
    frame = pd.concat([frame, columns], axis=1)  # fragment the frame (pandas warns)
    return frame.sort_values("rank", kind="stable").reset_index(drop=True)


def pooled_features(data, batch_size=1024):
    """(images x channels * POOL_GRID**2) float32: each image's cached trunk features averaged over a POOL_GRID x
    POOL_GRID grid, read from the cache in batches (never the whole cache in memory). The images as they are (the
    first view), whatever trunk_views: the linear model was chosen and measured on them (docs/label-audit.md)."""
    batches = progress.progress(data.batches(batch_size), -(-len(data) // batch_size), "audit features", "batches")
    parts = [torch.nn.functional.adaptive_avg_pool2d(x, POOL_GRID).flatten(1).numpy() for x, _ in batches]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def fit_linear(features, labels, class_weighting):
    """The linear fold model on (features, labels): standardised features, L2 multinomial logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    weight = "balanced" if class_weighting == "balanced" else None
    return make_pipeline(
        StandardScaler(), LogisticRegression(C=LINEAR_C, max_iter=LINEAR_MAX_ITER, class_weight=weight)
    ).fit(features, labels)


def one_blas_thread():
    """The linear folds' products are small (thousands x 256): a second BLAS thread costs them more time than it
    saves (measured: docs/label-audit.md), so they run on one."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def linear_out_of_fold_probabilities(features, labels, fold, class_weighting, n_classes, log=print, trains=None):
    """(images x classes) probabilities, each image's from the linear model fitted without its fold (fit_linear on
    the other folds' images that `trains` allows; default all). A class missing from a fold's training images gets
    probability 0 there."""
    probabilities = np.zeros((len(labels), n_classes))
    for k, folds, held_out, trained_on in fold_parts(fold, trains):
        present = np.unique(labels[trained_on])
        if len(present) == 1:  # nothing to tell apart: certain of the one class it saw
            probabilities[np.ix_(held_out, present)] = 1.0
        else:
            with one_blas_thread(), progress.heartbeat(f"audit fold {k + 1}/{folds}: fitting on {len(trained_on)}"):
                model = fit_linear(features[trained_on], labels[trained_on], class_weighting)
                probabilities[np.ix_(held_out, model.classes_)] = model.predict_proba(features[held_out])
        log(f"[audit] fold {k + 1}/{folds}: fitted on {len(trained_on)} images, scored {len(held_out)}")
    return probabilities


def audit_labels(model, data, classes, training, folds, device, log=print, audit_model="linear"):
    """The audit of every image of data (a PooledSplit of CachedSplits with their rows), as issue_table, by the
    linear model or the lab's head (AUDIT_MODELS)."""
    labels, rows = data.labels.numpy(), data.rows
    fold = assign_folds(labels, folds, training.seed)
    trains = (rows["split"] != "test").to_numpy() if "split" in rows else None  # the test images: scored only
    if audit_model == "linear":
        probabilities = linear_out_of_fold_probabilities(
            pooled_features(data), labels, fold, training.class_weighting, len(classes), log, trains
        )
    elif audit_model == "head":
        probabilities = out_of_fold_probabilities(model, data, fold, training, device, len(classes), log, trains)
    else:
        raise ValueError(f"audit_model={audit_model!r} is not one of {AUDIT_MODELS}")
    with progress.heartbeat("audit: cleanlab ranking the labels"):
        quality, flagged, rank = rank_labels(labels, probabilities)
    return issue_table(rows, classes, probabilities, quality, flagged, rank, fold)
