"""How well do the embeddings tell a new taxon from known ones? (beyond the mission)

The unseen classes are a ready benchmark: known = the seen classes' test images, new = the unseen images.
Reads checkpoints/best.pth (train.py; its last layer turns an embedding into logits) and
embeddings/embeddings_{train,val,test,unseen}.pkl (embed.py). Writes
  results/novelty.csv              per score (novelty_scores.py), over all unseen images and per unseen class:
                                   AUROC, FPR at 95 % TPR, the validation threshold, and the shares of test
                                   images and of unseen images flagged as possibly new at it
  results/novelty_scores.csv       every validation, test and unseen image: path, split, label, predicted class,
                                   one column per score (higher = more likely new)
  results/novelty_thresholds.json  per score, the threshold that keeps 95 % of the known VALIDATION images (the
                                   test and unseen images never choose it), with the checkpoint's sha256; read
                                   by predict.py for its possibly_new flag
  figs/novelty_roc.png             ROC curve of every score, with its operating point at the threshold
  figs/novelty_scores.png          known vs new score distributions, one panel per score
  results/novelty_manifest.json    written last (manifest.py): the files above and the embeddings set
Training images are the scores' reference (class means, nearest neighbours), so they are not scored themselves.
"""

import sys

import numpy as np
import pandas as pd

import lab
from lab import artifacts, checkpoint, config, embedding_files, manifest, plotting, runtime
from lab import novelty_scores as ns

SPLITS = ("val", "test", "unseen")


def load_inputs(cfg):
    """(config of the checkpoint, checkpoint, its sha256, the scorer, {split: path, split, label, predicted},
    {split: {score name: values}})."""
    trained = checkpoint.load_trained(cfg, model=False, split=False, made_for="novelty scores")
    cfg, ckpt, digest = trained.cfg, trained.ckpt, trained.digest
    scorer = ns.scorer_from_artifacts(cfg, ckpt, digest)
    frames, scores = {}, {}
    for split in SPLITS:
        frame, x = embedding_files.load_embeddings(cfg, split)
        scores[split] = scorer.scores(x)
        predicted = [ckpt["classes"][i] for i in scorer.logits(x).argmax(1)]
        frames[split] = frame[["path", "split", "label"]].assign(predicted=predicted)
    return cfg, ckpt, digest, scorer, frames, scores


def check_enough(frames):
    for split, role in (
        ("val", "choose the thresholds"),
        ("test", "be the known images"),
        ("unseen", "be the new images"),
    ):
        if len(frames[split]) == 0:
            raise lab.LabError(
                f"The {split} split has no embedded images, so nothing can {role}. Check "
                f"results/split.csv and run embed.py again."
            )


def evaluate_scores(scores, unseen_labels, thresholds):
    """One row per score and group (all unseen images, then each unseen class)."""
    rows = []
    groups = [("all", np.ones(len(unseen_labels), bool))] + [(c, unseen_labels == c) for c in np.unique(unseen_labels)]
    for name in ns.SCORES:
        known, threshold = scores["test"][name], thresholds[name]
        for group, chosen in groups:
            new = scores["unseen"][name][chosen]
            rows.append(
                {
                    "score": name,
                    "kind": "standard" if name in ns.STANDARD_SCORES else "combined",
                    "unseen_class": group,
                    "n_known": len(known),
                    "n_new": len(new),
                    "auroc": ns.auroc(known, new),
                    "fpr_at_95_tpr": ns.fpr_at_tpr(known, new),
                    "threshold": threshold,
                    "flagged_test": ns.flagged_share(known, threshold),
                    "flagged_unseen": ns.flagged_share(new, threshold),
                }
            )
    return pd.DataFrame(rows)


def score_table(frames, scores):
    parts = []
    for split in SPLITS:
        frame = frames[split][["path", "split", "label", "predicted"]].reset_index(drop=True)
        parts.append(pd.concat([frame, pd.DataFrame(scores[split])], axis=1))
    return pd.concat(parts, ignore_index=True)


def plot_roc(scores, table, default, path):
    plt = plotting.pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 6))
    overall = table[table["unseen_class"] == "all"].set_index("score")
    for name in ns.SCORES:
        fpr, tpr = ns.roc_points(scores["test"][name], scores["unseen"][name])
        row = overall.loc[name]
        (line,) = ax.plot(
            fpr,
            tpr,
            lw=2.5 if name == default else 1.3,
            label=f"{name}{' (default)' if name == default else ''}: AUROC {row['auroc']:.3f}, "
            f"FPR95 {row['fpr_at_95_tpr']:.2f}",
        )
        ax.plot(row["flagged_test"], row["flagged_unseen"], "o", color=line.get_color(), ms=6)
    ax.plot([0, 1], [0, 1], ":", color="grey", label="chance")
    ax.set(
        xlabel="known test images flagged (false-positive rate)",
        ylabel="unseen images flagged (true-positive rate)",
        xlim=(0, 1),
        ylim=(0, 1.01),
        title="Telling new taxa from known ones\n(dot: the validation threshold)",
    )
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    plotting.save_figure(path, fig)


def plot_distributions(scores, thresholds, default, path):
    plt = plotting.pyplot()
    columns = 3
    rows = -(-len(ns.SCORES) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.3 * columns, 3.3 * rows), layout="constrained")
    for ax, name in zip(axes.flat, ns.SCORES):
        known, new = scores["test"][name], scores["unseen"][name]
        bins = np.histogram_bin_edges(np.concatenate([known, new]), bins=40)
        ax.hist(known, bins=bins, density=True, alpha=0.55, label=f"known: seen-class test ({len(known)})")
        ax.hist(new, bins=bins, density=True, alpha=0.55, label=f"new: unseen classes ({len(new)})")
        ax.axvline(thresholds[name], color="black", ls="--", lw=1, label="validation threshold")
        ax.set(
            title=name + (" (default)" if name == default else ""),
            xlabel="score (higher = more likely new)",
            ylabel="density",
        )
    axes.flat[0].legend(fontsize=7)
    for ax in list(axes.flat)[len(ns.SCORES) :]:
        ax.set_visible(False)
    plotting.save_figure(path, fig)


def main(argv=None):
    cfg = config.load_config(argv, __doc__)
    config.print_settings(cfg)
    artifacts.ensure_output_dirs(cfg, ("results", "figs"))
    cfg, ckpt, digest, scorer, frames, scores = load_inputs(cfg)
    check_enough(frames)
    thresholds = {name: ns.threshold_keeping(scores["val"][name]) for name in ns.SCORES}
    table = evaluate_scores(scores, frames["unseen"]["label"].to_numpy(), thresholds)
    table["default"] = table["score"] == cfg.novelty_score
    with manifest.OutputSet(cfg, "novelty") as out:
        out.save_csv("results", "novelty.csv", table)
        out.save_csv("results", "novelty_scores.csv", score_table(frames, scores))
        out.save_json(
            "results",
            "novelty_thresholds.json",
            {
                "checkpoint": str(artifacts.out_path(cfg, "checkpoints", "best.pth")),
                "checkpoint_sha256": digest,
                "keep_known": ns.KEEP_KNOWN,
                "n_validation": len(frames["val"]),
                **ns.score_settings(cfg, scorer),
                "default_score": cfg.novelty_score,
                "thresholds": thresholds,
            },
        )
        plot_roc(scores, table, cfg.novelty_score, out.file("figs", "novelty_roc.png"))
        plot_distributions(scores, thresholds, cfg.novelty_score, out.file("figs", "novelty_scores.png"))
        out.publish(**embedding_files.embedding_inputs(cfg))
    print_summary(table, frames)
    return table


def print_summary(table, frames):
    print(
        f"\n[novelty] known: {len(frames['test'])} seen-class test images; new: {len(frames['unseen'])} unseen "
        f"images; thresholds from {len(frames['val'])} validation images"
    )
    print(f"{'score':<18} {'AUROC':>6} {'FPR95':>6}  {'flagged test':>12} {'flagged unseen':>14}")
    for _, r in table[table["unseen_class"] == "all"].iterrows():
        print(
            f"{r['score']:<18} {r['auroc']:6.3f} {r['fpr_at_95_tpr']:6.3f}  {r['flagged_test']:12.3f} "
            f"{r['flagged_unseen']:14.3f}{'   <- default (novelty_score)' if r['default'] else ''}"
        )


if __name__ == "__main__":
    runtime.run_main(lambda: main(sys.argv[1:]))
