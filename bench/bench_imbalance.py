"""Benchmark: does class_weighting="balanced" rescue the rare classes of an imbalanced real data set?

Reads ../shared/data/ndsb9 (or --data_root=... with --seen_classes / --unseen_classes) and builds, in a scratch
folder, an imbalanced subset of it made of symbolic links (the images are read in place, never copied): the
seen classes keep 800, 400, 200, 100, 50 and 25 images (a 32-fold span, as FlowCamNet's classes span orders of
magnitude), two unseen classes 20 each. Trains and evaluates once with class_weighting="none" and once with
"balanced" on the same split, prints per-class recall and balanced accuracy, and writes
results/imbalance.json under output_dir. With --repeats=N it does so for N seeds (seed, seed + 1, ...: each
draws its own subset, split and initialisation; a random trunk is the same for all), since five test images of
the rarest class make a single run's recall move in steps of 0.2.

    python bench/bench_imbalance.py                         # ndsb9 at 128 px, about 3 minutes on 2 cores
    python bench/bench_imbalance.py --repeats=3 --image_size=64   # and any setting of configfile.py
"""

import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

import evaluate  # noqa: E402
import lab  # noqa: E402
import train  # noqa: E402
from bench.bench_pipeline import NDSB9, NDSB9_SEEN, NDSB9_UNSEEN  # noqa: E402
from lab import artifacts, config, data_folders, runtime  # noqa: E402

SEEN_COUNTS = (800, 400, 200, 100, 50, 25)  # images per seen class, most common first
UNSEEN_COUNT = 20


def build_imbalanced_root(source, dest, seen, unseen, counts=SEEN_COUNTS, unseen_count=UNSEEN_COUNT, seed=0):
    """dest/<class>/ of symbolic links to a seeded sample of source's images: counts[i] images for the i-th largest
    seen class, unseen_count for each unseen class. Returns {class: images}."""
    rng = np.random.default_rng(seed)
    available = {c: data_folders.list_class_files(Path(source) / c)[0] for c in seen + unseen}
    by_size = sorted(seen, key=lambda c: -len(available[c]))
    wanted = {**dict(zip(by_size, counts)), **{c: unseen_count for c in unseen}}
    for c, n in wanted.items():
        if len(available[c]) < n:
            raise lab.LabError(
                f"The class {c!r} of {source} has {len(available[c])} images; the imbalanced subset "
                f"needs {n}. Give larger classes with --seen_classes."
            )
        (Path(dest) / c).mkdir(parents=True, exist_ok=True)
        for name in sorted(rng.choice(available[c], n, replace=False)):
            os.symlink(Path(source) / c / name, Path(dest) / c / name)
    return wanted


def train_and_evaluate(argv, weighting):
    train.main(argv + [f"--class_weighting={weighting!r}"])
    return evaluate.main(argv)


def run(argv):
    repeats = [int(a.split("=", 1)[1]) for a in argv if a.startswith("--repeats=")] or [1]
    argv = [a for a in argv if not a.startswith("--repeats=")]
    base = config.load_config(argv)
    results = [run_once(argv + [f"--seed={base.seed + i}"]) for i in range(repeats[0])]
    summary = {
        "repeats": results,
        "mean_balanced_accuracy": {
            w: float(np.mean([r["balanced_accuracy"][w] for r in results])) for w in ("none", "balanced")
        },
        "sd_balanced_accuracy": {
            w: float(np.std([r["balanced_accuracy"][w] for r in results])) for w in ("none", "balanced")
        },
    }
    artifacts.ensure_output_dirs(base, ("results",))
    path = artifacts.save_json(artifacts.out_path(base, "results", "imbalance.json"), summary)
    for result in results:
        print_table(result)
    print(
        f"\nbalanced accuracy over {len(results)} seed(s), mean (sd): "
        + ", ".join(
            f"{w} {summary['mean_balanced_accuracy'][w]:.3f} ({summary['sd_balanced_accuracy'][w]:.3f})"
            for w in ("none", "balanced")
        )
    )
    print(f"written to {path}")
    return summary


def run_once(argv):
    names = {a.split("=", 1)[0] for a in argv}
    base = config.load_config(argv)
    source = artifacts.resolve(base.data_root) if "--data_root" in names else NDSB9
    seen, unseen = (base.seen_classes, base.unseen_classes) if "--seen_classes" in names else (NDSB9_SEEN, NDSB9_UNSEEN)
    if not source.is_dir():
        raise lab.LabError(
            f"The benchmark data {source} is absent. Pass --data_root=... with --seen_classes=[...] "
            f"(six classes of at least 800 to 25 images) and --unseen_classes=[...]."
        )
    scratch = Path(tempfile.mkdtemp(prefix="plankton-imbalance-"))
    try:
        counts = build_imbalanced_root(source, scratch / "data", seen, unseen[:2], seed=base.seed)
        run_argv = [
            a
            for a in argv
            if a.split("=", 1)[0]
            not in ("--data_root", "--seen_classes", "--unseen_classes", "--output_dir", "--class_weighting")
        ]
        run_argv += [
            f"--data_root={str(scratch / 'data')!r}",
            f"--output_dir={str(scratch / 'out')!r}",
            f"--seen_classes={seen!r}",
            f"--unseen_classes={unseen[:2]!r}",
        ]
        metrics = {w: train_and_evaluate(run_argv, w) for w in ("none", "balanced")}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {
        "source": str(source),
        "seed": base.seed,
        "seen": seen,
        "images_per_class": counts,
        "argv": argv,
        "balanced_accuracy": {w: m["balanced_accuracy"] for w, m in metrics.items()},
        "accuracy": {w: m["accuracy"] for w, m in metrics.items()},
        "recall": {w: {c: m["per_class"][c]["recall"] for c in seen} for w, m in metrics.items()},
        "test_support": {c: metrics["none"]["per_class"][c]["support"] for c in seen},
    }


def print_table(result):
    print(
        f"\nseed {result['seed']}\n{'class':<28} {'images':>7} {'test':>5}  {'recall none':>11}  "
        f"{'recall balanced':>15}"
    )
    for c in sorted(result["seen"], key=lambda c: -result["images_per_class"][c]):
        print(
            f"{c:<28} {result['images_per_class'][c]:>7} {result['test_support'][c]:>5}  "
            f"{result['recall']['none'][c]:>11.3f}  {result['recall']['balanced'][c]:>15.3f}"
        )
    print(
        f"{'balanced accuracy':<42}  {result['balanced_accuracy']['none']:>11.3f}  "
        f"{result['balanced_accuracy']['balanced']:>15.3f}"
    )
    print(f"{'accuracy':<42}  {result['accuracy']['none']:>11.3f}  {result['accuracy']['balanced']:>15.3f}")


def main(argv=None):
    return run(sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":
    runtime.run_main(main)
