"""How well do the embeddings transfer to classes the network never saw? (mission task 8)

Reads embeddings/embeddings_unseen.pkl (embed.py). Writes
  results/transfer_learning.csv   every fit: classifier, training size, repeat, seed, accuracy, balanced accuracy
  figs/accuracy_SVC.png, figs/accuracy_Linear.png, figs/accuracy_kNN.png, figs/accuracy_all.png
  results/transfer_learning_manifest.json  written last (manifest.py): the files and the embeddings set
The unseen-class embeddings are split 70/30 (per class, seeded; transfer_test_fraction): every class has at
least one image on each side, however small, and identical embeddings (copies of one file) stay on one side
where the class has others. For a grid of
training sizes, from a few images per class up to the whole 70 %, class-stratified subsets are drawn
transfer_repeats times (each seeded), and an RBF SVC, a logistic-regression linear classifier (both on
standardised embeddings) and a kNN (k = knn_k, capped by the training size) are fitted and scored on the
fixed 30 %. (k is also capped by the smallest class of the subset, so that 1 image per class is 1-NN rather than a
majority vote.) Each side holds at most transfer_max_images images (a seeded sample of at most
transfer_max_images // classes per class), so that a large unseen set costs no more than that: an SVC's training
grows faster than its data. Curves show the mean and a +-1 sd band against the training size (log scale).
"""

import sys
import warnings

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, balanced_accuracy_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

import lab
from lab import artifacts, config, embedding_files, manifest, plotting, progress, runtime

CLASSIFIERS = ("SVC", "Linear", "kNN")
PER_CLASS_GRID = (1, 2, 3, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


def knn_neighbours(cfg, y_subset):
    """k = knn_k, capped by the smallest class in the training subset: with k above it, the vote of a small
    training set is the majority class whatever the query (1 image per class gives 1-NN, not chance)."""
    return int(min(cfg.knn_k, np.bincount(y_subset).min()))


def make_classifier(name, k, cfg, seed):
    if name == "SVC":
        return make_pipeline(StandardScaler(), SVC(kernel="rbf", random_state=seed))
    if name == "Linear":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    return KNeighborsClassifier(n_neighbors=k)


def per_class_sizes(train_counts):
    """Images per class for each grid step: the grid below the smallest class, then 'all'."""
    smallest = min(train_counts)
    return [n for n in PER_CLASS_GRID if n < smallest] + [None]  # None: the whole training part


def stratified_subset(y, per_class, rng):
    if per_class is None:
        return np.arange(len(y))
    return np.sort(
        np.concatenate([rng.choice(np.flatnonzero(y == c), size=per_class, replace=False) for c in np.unique(y)])
    )


def held_out_split(x, y, fraction, seed):
    """(train indices, held-out indices): per class round(n x fraction) images held out, but at least one and
    never all, so a class of 2 images still has one on each side (scikit-learn's stratified split refuses
    when the held-out part is smaller than the number of classes). Copies with identical embeddings are
    held out or kept together, as long as the class has another distinct image for the other side."""
    rng = np.random.default_rng(seed)
    copies = np.unique(x, axis=0, return_inverse=True)[1].reshape(-1)
    held_out = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        wanted = min(max(1, round(len(members) * fraction)), len(members) - 1)
        units = copy_units(members, copies[members])
        if len(units) < 2:  # one image and its copies: split the copies, there is nothing else to hold out
            units = [np.array([i]) for i in members]
        taken = []
        for u in (units[i] for i in rng.permutation(len(units))):
            if len(taken) >= wanted or len(taken) + len(u) > len(members) - 1:
                continue
            taken.extend(u)
        held_out.extend(taken or [units[0][0]])
    held_out = np.sort(np.array(held_out, dtype=int))
    return np.setdiff1d(np.arange(len(y)), held_out), held_out


def copy_units(members, copy_ids):
    """members grouped by copy id, in the order of the ids, each group in the members' order (one sort: a
    class of thousands of images is grouped in milliseconds, not a pass over the class per group)."""
    order = np.argsort(copy_ids, kind="stable")
    return np.split(members[order], np.flatnonzero(np.diff(copy_ids[order])) + 1)


def capped(indices, y, per_class, rng):
    """indices, with at most per_class of each class (a seeded sample where a class has more), sorted."""
    kept = [
        part if len(part) <= per_class else rng.choice(part, size=per_class, replace=False)
        for part in (indices[y[indices] == c] for c in np.unique(y[indices]))
    ]
    return np.sort(np.concatenate(kept))


def transfer_curves(x, y, cfg):
    """All fits as a DataFrame; x, y are the unseen embeddings and integer labels."""
    train_idx, test_idx = held_out_split(x, y, cfg.transfer_test_fraction, cfg.seed)
    per_class = max(1, cfg.transfer_max_images // len(np.unique(y)))
    rng = np.random.default_rng(cfg.seed)
    train_idx, test_idx = capped(train_idx, y, per_class, rng), capped(test_idx, y, per_class, rng)
    x_train, x_test, y_train, y_test = x[train_idx], x[test_idx], y[train_idx], y[test_idx]
    rows = []
    sizes = per_class_sizes(np.bincount(y_train))
    for per_class in progress.progress(sizes, len(sizes), "transfer", unit="training sizes"):
        repeats = 1 if per_class is None else cfg.transfer_repeats  # the whole set: every repeat is the same
        for repeat in range(repeats):
            seed = cfg.seed + 1000 * repeat + (per_class or 0)
            chosen = stratified_subset(y_train, per_class, np.random.default_rng(seed))
            k = knn_neighbours(cfg, y_train[chosen])
            for name in CLASSIFIERS:
                model = make_classifier(name, k, cfg, seed)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # convergence chatter on 1-2 images per class
                    model.fit(x_train[chosen], y_train[chosen])
                predicted = model.predict(x_test)
                rows.append(
                    {
                        "classifier": name,
                        "train_size": len(chosen),
                        "per_class": per_class if per_class else "all",
                        "repeat": repeat,
                        "seed": seed,
                        "k": k if name == "kNN" else None,
                        "accuracy": accuracy_score(y_test, predicted),
                        "balanced_accuracy": balanced_accuracy_score(y_test, predicted),
                        "n_test": len(y_test),
                    }
                )
    return pd.DataFrame(rows)


def plot_curves(table, names, path, chance):
    plt = plotting.pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in names:
        stats = table[table["classifier"] == name].groupby("train_size")["balanced_accuracy"].agg(["mean", "std"])
        stats["std"] = stats["std"].fillna(0.0)
        ax.plot(stats.index, stats["mean"], "-o", ms=4, label=name)
        ax.fill_between(stats.index, stats["mean"] - stats["std"], stats["mean"] + stats["std"], alpha=0.2)
    ax.axhline(chance, color="grey", ls=":", label=f"chance ({chance:.2f})")
    ax.set_xscale("log")
    ax.set(
        xlabel="training images (all unseen classes together, log scale)",
        ylabel="balanced accuracy on the held-out 30 %",
        ylim=(0, 1.02),
        title="Transfer to unseen classes: " + ", ".join(names) + " (mean +- 1 sd)",
    )
    ax.legend()
    ax.grid(alpha=0.3)
    plotting.save_figure(path, fig)


def main(argv=None):
    cfg = config.load_config(argv, __doc__)
    config.print_settings(cfg)
    artifacts.ensure_output_dirs(cfg, ("results", "figs"))
    runtime.seed_everything(cfg.seed)
    frame, x = embedding_files.load_embeddings(cfg, "unseen")
    classes, y = np.unique(frame["label"].to_numpy(), return_inverse=True)
    counts = np.bincount(y)
    if counts.min() < 2:
        raise lab.LabError(
            f"The unseen class {classes[counts.argmin()]!r} has {counts.min()} embedded image(s); "
            f"transfer learning needs at least 2 per class (one to train, one to score). Add images "
            f"to it, or remove it from unseen_classes; min_images_per_class (at least 3) refuses "
            f"such classes at the scan unless their images fail to decode later."
        )
    table = transfer_curves(x, y, cfg)
    chance = 1.0 / len(classes)
    with manifest.OutputSet(cfg, "transfer_learning") as out:
        out.save_csv("results", "transfer_learning.csv", table)
        for name in CLASSIFIERS:
            plot_curves(table, [name], out.file("figs", f"accuracy_{name}.png"), chance)
        plot_curves(table, CLASSIFIERS, out.file("figs", "accuracy_all.png"), chance)
        out.publish(**embedding_files.embedding_inputs(cfg))
    final = table[table["per_class"] == "all"].set_index("classifier")["balanced_accuracy"]
    print(
        f"[transfer] {len(table)} fits on {len(classes)} unseen classes; balanced accuracy with the whole "
        f"training part: " + ", ".join(f"{k} {v:.3f}" for k, v in final.items())
    )
    return table


if __name__ == "__main__":
    runtime.run_main(lambda: main(sys.argv[1:]))
