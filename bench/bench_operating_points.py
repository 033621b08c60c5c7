"""Benchmark: do the certified operating points keep their promise on real images, and what do they cover?

Reads ../shared/data/ndsb9 (or --data_root=... with --seen_classes / --unseen_classes; --ndsb112=True takes
../shared/data/ndsb112 with its 100 largest classes seen and the next 10 unseen). Trains the lab's model once in a
scratch folder (train.py, embed.py, novelty.py), or takes the model already trained in --trained_dir=FOLDER. The
model then stays fixed: its probabilities and novelty flags of the validation, test and unseen images come from
the embeddings, as predict.py computes them. Then, --redraws times (seeded), the labelled validation + test images
are split in two random halves: the operating points are fitted on one (lab/operating_points.py, exactly as
evaluate.py fits them on the validation split) and measured on the other, never on an image they were fitted on:
  shortfall      per certified group (a class on its own bound, or the pooled classes together), the share of
                 redraws whose accepted precision on the evaluation half falls below accept_precision, beside the
                 share allowed: 1 - accept_confidence, plus the binomial noise of the evaluation half (what a group
                 whose true precision is exactly the target shows on that many accepted images; the test of the
                 promise is shortfall <= allowed)
  coverage       per class, the share of its evaluation images accepted under their right class
  prior shift    the same on --samples samples per redraw drawn from the evaluation half with class proportions
                 uniform on the simplex (QuaPy's UPP, as bench/bench_abundances.py draws them)
  unseen         the evaluation half with the unseen classes' images mixed in (--unseen_share of the images; an
                 accepted unseen image is an error; the possibly_new flag keeps most of them out, as in predict.py)
and two naive rules side by side, fitted on the same halves: a global threshold (probability >= accept_precision)
and per-class F1-optimal thresholds without a bound.
Writes results/operating_points_benchmark.json under the output folder and prints the table.

    python bench/bench_operating_points.py --trained_dir=/tmp/ndsb9 --backbone_weights=None
    python bench/bench_operating_points.py --ndsb112=True --epochs=5 --backbone_weights=None   # a short training
"""

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from scipy.stats import binom  # noqa: E402

import lab  # noqa: E402
from bench import common  # noqa: E402
from bench.bench_abundances import draw_samples, lab_argv, train_model  # noqa: E402
from lab import abundance_inputs, checkpoint, config, data_folders, embedding_files, runtime  # noqa: E402
from lab import novelty_scores as ns  # noqa: E402
from lab import operating_points as op  # noqa: E402

OWN_OPTIONS = {"--redraws": 200, "--samples": 10, "--sample_size": 300, "--unseen_share": 0.2, "--trained_dir": None}
NDSB112 = ROOT.parent / "shared" / "data" / "ndsb112"
RULES = ("certified", "global", "f1")


# --------------------------------------------------------------------------- the rules, on arrays
def global_rule(classes, predicted, probability, labels, target, confidence):
    """Accept every prediction whose probability reaches the target precision itself: no bound, no class."""
    return np.full(len(classes), target), np.array(["global"] * len(classes), dtype=object)


def f1_rule(classes, predicted, probability, labels, target, confidence):
    """Per class, the grid threshold with the best F1 of its accepted right predictions (SMHI's, iRfcb's): no bound."""
    thresholds = np.full(len(classes), np.nan)
    for i in range(len(classes)):
        mine = predicted == i
        accepted, right = op.accepted_counts(*op._sorted(probability[mine], labels[mine] == i))
        f1 = 2 * right / np.maximum(accepted + (labels == i).sum(), 1)  # 2 TP / (accepted + images of the class)
        thresholds[i] = op.THRESHOLDS[int(np.argmax(f1))] if accepted.max() else np.nan
    return thresholds, np.array(["f1"] * len(classes), dtype=object)


def certified_rule(classes, predicted, probability, labels, target, confidence):
    table = op.fit(classes, predicted, probability, predicted == labels, target, confidence)
    return table["threshold"].to_numpy(float), table["scope"].to_numpy(object)


FITS = {"certified": certified_rule, "global": global_rule, "f1": f1_rule}


def groups(scopes):
    """{group name: class indices} of the certified groups: each class on its own bound, the pooled ones together."""
    out = {str(i): [i] for i, s in enumerate(scopes) if s in ("class", "global", "f1")}
    pooled = [i for i, s in enumerate(scopes) if s == "pooled"]
    if pooled:
        out["pooled"] = pooled
    return out


def group_outcomes(thresholds, scopes, predicted, probability, labels, flagged):
    """Per group: (accepted, right among them) on images never fitted on; flagged images are never accepted."""
    accepted = op.accept(predicted, probability, thresholds) & ~flagged
    right = accepted & (predicted == labels)
    out = {}
    for name, members in groups(scopes).items():
        mine = np.isin(predicted, members)
        out[name] = (int((accepted & mine).sum()), int((right & mine).sum()))
    return out


def shortfall_summary(outcomes, target, confidence):
    """outcomes: (accepted, right) of every group and draw with something accepted. The share below the target,
    the share allowed (1 - confidence, plus the chance that binomial noise alone puts a group of true precision
    exactly the target below it on that many images), and the mean precision."""
    outcomes = [(n, k) for n, k in outcomes if n > 0]
    if not outcomes:
        return {"groups_with_acceptances": 0}
    n, k = np.array(outcomes).T
    below = k / n < target
    noise = binom.cdf(np.ceil(target * n) - 1, n, target)  # P(share < target) when the true precision is the target
    return {
        "groups_with_acceptances": len(outcomes),
        "shortfall": float(below.mean()),
        "noise_at_target": float(noise.mean()),
        "allowed": float((1 - confidence) + confidence * noise.mean()),
        "mean_precision": float((k / n).mean()),
        "pooled_precision": float(k.sum() / n.sum()),
    }


# --------------------------------------------------------------------------- the measurement
def shifted_samples(labels, samples, sample_size, seed):
    """UPP samples (bench_abundances.draw_samples) over the classes the evaluation half holds: at 100+ classes a rare
    class can have no image in a half, and QuaPy cannot draw a prevalence of a class without images."""
    present, compact = np.unique(labels, return_inverse=True)
    return draw_samples(compact, len(present), samples, sample_size, seed)


def measure(outputs, n_classes, target, confidence, redraws, samples, sample_size, unseen_share, seed):
    """outputs: {split: (probabilities, labels, flagged)} of val, test and unseen. Returns per rule the summaries."""
    labelled = [np.concatenate([outputs[s][j] for s in ("val", "test")]) for j in range(3)]
    probabilities, labels, flagged = labelled
    predicted, top = probabilities.argmax(1), probabilities.max(1)
    unseen_p, _, unseen_flagged = outputs["unseen"]
    classes = [str(i) for i in range(n_classes)]
    found = {r: {"plain": [], "shift": [], "unseen": [], "coverage": [], "scopes": []} for r in RULES}
    rng = np.random.default_rng(seed)
    for draw in range(redraws):
        order = rng.permutation(len(labels))
        fit_rows, eval_rows = order[: len(order) // 2], order[len(order) // 2 :]
        n_unseen = min(len(unseen_p), int(round(unseen_share / (1 - unseen_share) * len(eval_rows))))
        unseen_rows = rng.choice(len(unseen_p), n_unseen, replace=False)
        shifted = shifted_samples(labels[eval_rows], samples, sample_size, [seed, draw]) if samples else []
        for rule in RULES:
            cal = (predicted[fit_rows], top[fit_rows], labels[fit_rows])
            thresholds, scopes = FITS[rule](classes, *cal, target, confidence)
            e = eval_rows
            found[rule]["scopes"].append(list(scopes))
            found[rule]["plain"] += group_outcomes(
                thresholds, scopes, predicted[e], top[e], labels[e], flagged[e]
            ).values()
            found[rule]["coverage"].append(op.measured(classes, predicted[e], top[e], labels[e], thresholds)[1])
            for rows in shifted:
                s = e[rows]
                found[rule]["shift"] += group_outcomes(
                    thresholds, scopes, predicted[s], top[s], labels[s], flagged[s]
                ).values()
            mixed_predicted = np.r_[predicted[e], unseen_p[unseen_rows].argmax(1)]
            mixed_top = np.r_[top[e], unseen_p[unseen_rows].max(1)]
            mixed_labels = np.r_[labels[e], np.full(n_unseen, -1)]  # never right
            mixed_flagged = np.r_[flagged[e], unseen_flagged[unseen_rows]]
            found[rule]["unseen"] += group_outcomes(
                thresholds, scopes, mixed_predicted, mixed_top, mixed_labels, mixed_flagged
            ).values()
    summary = {}
    for rule, f in found.items():
        coverage = np.nanmean(np.array(f["coverage"]), axis=0)
        scopes = np.array(f["scopes"])
        summary[rule] = {
            "plain": shortfall_summary(f["plain"], target, confidence),
            "prior_shift": shortfall_summary(f["shift"], target, confidence),
            "unseen_mixed_in": shortfall_summary(f["unseen"], target, confidence),
            "coverage_per_class": coverage.tolist(),
            "coverage_mean": float(np.nanmean(coverage)),
            "scope_shares": {str(s): float((scopes == s).mean()) for s in np.unique(scopes)},
        }
    return summary


# --------------------------------------------------------------------------- the lab's model
def model_outputs(argv):
    """(cfg, {split: (probabilities, labels, flagged possibly new)}) of val, test and unseen, from the embeddings
    through the checkpoint's last layer, as predict.py computes them."""
    cfg = config.load_config(argv)
    trained = checkpoint.load_trained(cfg, split=False, made_for="operating points")
    scorer = ns.scorer_from_artifacts(trained.cfg, trained.ckpt, trained.digest)
    name = trained.cfg.novelty_score
    threshold = ns.load_thresholds(trained.cfg, trained.digest, scorer)["thresholds"][name]
    out = {}
    for split in ("val", "test", "unseen"):
        frame, vectors = embedding_files.load_embeddings(trained.cfg, split)
        flagged = scorer.scores(vectors, (name,))[name] > threshold
        labels = frame["label_idx"].to_numpy() if split != "unseen" else np.full(len(frame), -1)
        out[split] = (abundance_inputs.probabilities_from_embeddings(scorer, vectors), labels, flagged)
    return trained.cfg, out


def ndsb112_classes():
    """The 100 largest classes of ndsb112 seen, the next 10 unseen (until seen_classes="all" exists)."""
    if not NDSB112.is_dir():
        raise lab.LabError(f"--ndsb112=True needs {NDSB112}, which is absent. Pass --data_root=... and the classes.")
    sizes = {d.name: len(data_folders.list_class_files(d)[0]) for d in NDSB112.iterdir() if d.is_dir()}
    ranked = sorted(sizes, key=lambda c: (-sizes[c], c))
    return [
        f"--data_root={str(NDSB112)!r}",
        f"--seen_classes={ranked[:100]!r}",
        f"--unseen_classes={ranked[100:110]!r}",
    ]


def own_options(argv):
    own, rest = dict(OWN_OPTIONS), []
    for arg in argv:
        name, _, value = arg.partition("=")
        if name == "--ndsb112":
            rest += ndsb112_classes() if value == "True" else []
        elif name in own:
            own[name] = value if name == "--trained_dir" else float(value) if "." in value else int(value)
        else:
            rest.append(arg)
    return own, rest


# --------------------------------------------------------------------------- main
def print_table(result):
    print(
        f"\n{result['redraws']} redraws of {result['labelled_images']} labelled images (val + test) into halves; "
        f"target precision {result['target']} at confidence {result['confidence']}"
    )
    print(f"{'rule':<10} {'setting':<16} {'groups':>7} {'shortfall':>10} {'allowed':>8} {'precision':>10}")
    for rule, s in result["summary"].items():
        for setting in ("plain", "prior_shift", "unseen_mixed_in"):
            r = s[setting]
            if not r.get("groups_with_acceptances"):
                print(f"{rule:<10} {setting:<16} {0:>7}   nothing accepted")
                continue
            print(
                f"{rule:<10} {setting:<16} {r['groups_with_acceptances']:>7} {r['shortfall']:>10.3f} "
                f"{r['allowed']:>8.3f} {r['pooled_precision']:>10.3f}"
            )
        print(
            f"{rule:<10} coverage per class {np.round(s['coverage_per_class'], 3).tolist()}; scopes {s['scope_shares']}"
        )


def run(argv):
    own, argv = own_options(argv)
    base = config.load_config(argv)
    trained = common.trained_model(
        own["--trained_dir"], argv, lab_argv, "plankton-operating-points-", lambda a: train_model(a, "validation")
    )
    with trained as run_argv:
        start = time.perf_counter()
        cfg, outputs = model_outputs(run_argv)
        if cfg.accept_precision is None:
            raise lab.LabError("accept_precision=None: there is nothing to measure; give a target precision.")
        n_classes = len(cfg.seen_classes)
        summary = measure(
            outputs,
            n_classes,
            cfg.accept_precision,
            cfg.accept_confidence,
            int(own["--redraws"]),
            int(own["--samples"]),
            int(own["--sample_size"]),
            float(own["--unseen_share"]),
            cfg.seed,
        )
        result = {
            "redraws": int(own["--redraws"]),
            "target": cfg.accept_precision,
            "confidence": cfg.accept_confidence,
            "classes": list(cfg.seen_classes),
            "labelled_images": int(len(outputs["val"][1]) + len(outputs["test"][1])),
            "unseen_images": int(len(outputs["unseen"][1])),
            "accuracy": float(
                np.concatenate([p.argmax(1) == y for p, y, _ in (outputs["val"], outputs["test"])]).mean()
            ),
            "summary": summary,
            "seconds": time.perf_counter() - start,
            "machine": common.machine(),
            "argv": argv,
            "own_options": own,
        }
    return common.save_result(base, "operating_points_benchmark.json", result, print_table)


def main(argv=None):
    return run(sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":
    runtime.run_main(main)
