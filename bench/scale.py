"""The benchmark's scale section: the lab's stages at FlowCamNet size (301,247 images in 93 classes), on
synthetic data, each stage in a fresh process so that its peak resident memory is its own.

Writes small PNG files (32 x 32, random content, one folder per class) and the scan's outputs into the scratch
folder it is given, and deletes nothing else. Measures, at a small and a ten times larger size:
  scan and split       dataloader.py on 5,000 and 50,000 image files
  distances            the average distances (compute_average_distances) over every class
  map sample           the 2-D map's seeded sample of each split and its standardisation (the fit itself is on
                       at most 3 x umap_samples_per_split points, whatever the data size)
  galleries            the 128-d nearest and furthest images of every class (dimensionality_reduction.gallery)
  transfer             transfer learning (transfer_learning.transfer_curves) with all 93 classes unseen
  novelty              novelty.py's scorer (novelty_scores.NoveltyScorer: class Gaussians, the kNN bank of at most
                       novelty_bank_max embeddings, the validation standardisation) fitted on 70 % of the
                       embeddings as the training set and 5 % as validation, then every score of the other 25 %
on 30,000 and 300,000 synthetic 128-d embeddings in 93 classes (sizes from 1 to 10 x, as real classes are uneven).
Returns seconds and peak resident memory per stage and size, and how each grows. The children run on one thread
and growth is judged on CPU seconds (the stage's own and its workers'): the work a stage does, which the other load
of a shared machine cannot distort as it distorts wall time; wall seconds are reported beside them.

    python -m bench.scale [--quick]    # alone; bench/bench_pipeline.py runs it as its last section
"""

import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common
from bench.targets import TARGETS
from lab import config, output_lock

FLOWCAMNET_IMAGES = 301_247
FULL = {"files": (5_000, 50_000), "embeddings": (30_000, 300_000), "classes": 93, "overrides": []}
QUICK = {"files": (90, 180), "embeddings": (900, 1_800), "classes": 9, "overrides": ["--transfer_repeats=1"]}
EMBEDDING_STAGES = ("distances", "map sample", "galleries", "transfer", "novelty")
REASONS = {"novelty": "every image meets every training embedding: is novelty_bank_max 0 (no bound)?"}
GROWTH_SLACK = 1.15  # a growth exponent up to 1.15 counts as linear: caches and allocators wobble
FAST_ENOUGH_S = 1.0  # a stage under a second at the larger size is fast whatever its exponent


# --------------------------------------------------------------------------- synthetic data
def class_sizes(n, classes, seed=0):
    """n split over `classes` classes of sizes from 1 to 10 x (a geometric spread, shuffled)."""
    weights = np.random.default_rng(seed).permutation(np.geomspace(1, 10, classes))
    sizes = np.maximum(3, np.floor(n * weights / weights.sum())).astype(int)
    sizes[np.argmax(sizes)] += n - sizes.sum()
    return sizes


def synthetic_embeddings(n, classes, seed=0, dims=128):
    """(float32 n x dims non-negative embeddings, int labels): one cloud per class, after a ReLU as the lab's."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), class_sizes(n, classes, seed))
    centres = rng.normal(0, 1, (classes, dims)).astype(np.float32)
    x = centres[labels] + rng.normal(0, 1.5, (n, dims)).astype(np.float32)
    return np.maximum(x, 0, out=x), labels


def class_name(c):
    return f"class_{c:02d}"


def write_image_files(folder, n, classes, seed=0):
    """n distinct 32 x 32 PNG files (random pixels: no two are byte-identical) in `classes` class folders."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c, size in enumerate(class_sizes(n, classes, seed)):
        target = Path(folder) / class_name(c)
        target.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (size, 32, 32, 3), dtype=np.uint8)
        for i in range(size):
            Image.fromarray(pixels[i]).save(target / f"{i:05d}.png", compress_level=1)


# --------------------------------------------------------------------------- the stages
def scan_and_split(folder, output_dir, num_workers, classes):
    import dataloader

    names = [class_name(c) for c in range(classes)]
    dataloader.main(
        [
            f"--data_root={str(folder)!r}",
            f"--output_dir={str(output_dir)!r}",
            f"--seen_classes={names[:-3]!r}",
            f"--unseen_classes={names[-3:]!r}",
            "--min_images_per_class=3",
            f"--num_workers={num_workers}",
        ]
    )


def distances(x, y, cfg):
    import compute_average_distances

    groups = [x[y == c].astype(np.float64) for c in np.unique(y)]
    compute_average_distances.average_distances(
        compute_average_distances.sampled_groups(groups, cfg.distance_max_per_class, cfg.seed)
    )


def map_sample(x, y, cfg):
    from sklearn.preprocessing import StandardScaler

    import dimensionality_reduction

    rng = np.random.default_rng(cfg.seed)
    parts = np.array_split(np.arange(len(x)), 3)  # as train, test and unseen
    kept = [part[dimensionality_reduction.sample_rows(part, cfg.umap_samples_per_split, rng)] for part in parts]
    StandardScaler().fit_transform(x[np.concatenate(kept)])


def galleries(x, y, cfg):
    import dimensionality_reduction

    for c in np.unique(y):
        dimensionality_reduction.gallery(x, y, c, cfg.gallery_size)


def transfer(x, y, cfg):
    import transfer_learning

    transfer_learning.transfer_curves(x, y, cfg)


def novelty(x, y, cfg):
    from lab import novelty_scores

    part = np.random.default_rng(cfg.seed).random(len(x))
    train, val, scored = part < 0.70, (part >= 0.70) & (part < 0.75), part >= 0.75
    weight = np.random.default_rng(cfg.seed).normal(size=(len(np.unique(y)), x.shape[1]))
    scorer = novelty_scores.NoveltyScorer(
        x[train], y[train], weight, np.zeros(len(weight)), cfg.novelty_knn_k, x[val], cfg.novelty_bank_max, cfg.seed
    )
    scorer.scores(x[scored])


STAGE_FUNCTIONS = {
    "distances": distances,
    "map sample": map_sample,
    "galleries": galleries,
    "transfer": transfer,
    "novelty": novelty,
}


# --------------------------------------------------------------------------- children: one process, its stages
def cpu_seconds():
    """CPU seconds of this process and of its finished children (decoding workers)."""
    import resource

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def measured(fn, *args):
    """Wall and CPU seconds of fn(*args), the peak resident MB of this process during it, and of its workers."""
    common.reset_peak_rss()
    start, cpu = time.perf_counter(), cpu_seconds()
    fn(*args)
    return {
        "seconds": time.perf_counter() - start,
        "cpu_seconds": cpu_seconds() - cpu,
        "peak_rss_mb": common.rss_mb("VmHWM"),
        "workers_peak_mb": common.children_peak_mb(),
    }


def import_stages():
    """Import what the stages use before any is timed: an import is a process's cost, not a stage's, and would
    flatter the growth of a stage by inflating its small size."""
    import importlib

    for module in (
        "compute_average_distances",
        "dataloader",
        "dimensionality_reduction",
        "transfer_learning",
        "sklearn.linear_model",
        "sklearn.neighbors",
        "sklearn.preprocessing",
        "sklearn.svm",
    ):
        importlib.import_module(module)


def embedding_stages(n, classes, stages, overrides):
    cfg = config.load_config(overrides)
    x, y = synthetic_embeddings(n, classes)
    return {stage: measured(STAGE_FUNCTIONS[stage], x, y, cfg) for stage in stages}


def embeddings_child(n, classes, stages, overrides):
    """In a fresh process: the embedding stages on n synthetic embeddings; prints {stage: measurement}."""
    import_stages()
    print(json.dumps(embedding_stages(n, classes, stages, overrides)))


def files_child(folder, output_dir, num_workers, classes, embeddings=None):
    """In a fresh process: the scan and split of the files in folder (and, given (n, stages, overrides), the
    embedding stages after it); prints {stage: measurement}."""
    import_stages()
    results = {
        "scan and split": {**measured(scan_and_split, folder, output_dir, num_workers, classes), "workers": num_workers}
    }
    output_lock.release_locks()
    if embeddings:
        n, stages, overrides = embeddings
        results.update(embedding_stages(n, classes, stages, overrides))
    print(json.dumps(results))


ONE_THREAD = {name: "1" for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")}


def in_child(function, *args):
    return common.run_child(f"from bench import scale; scale.{function}(*{args!r})", env=ONE_THREAD)


# --------------------------------------------------------------------------- the section
def growth(small, large, n_small, n_large):
    """The exponent e of time ~ size^e between the two sizes."""
    return math.log(max(large, 1e-6) / max(small, 1e-6)) / math.log(n_large / n_small)


def measure(scratch, quick=False, num_workers=2):
    """{stage: {size: measurement}} at both sizes; the scan on written files, the rest on synthetic embeddings.
    Quick: tiny sizes, 9 classes, and every stage of a size in one process (the figures mean nothing)."""
    sizes = QUICK if quick else FULL
    classes, overrides = sizes["classes"], sizes["overrides"]
    results = {"scan and split": {}, **{stage: {} for stage in EMBEDDING_STAGES}}
    for n_files, n in zip(sizes["files"], sizes["embeddings"]):
        folder, out = Path(scratch) / f"files{n_files}", Path(scratch) / f"scan{n_files}"
        write_image_files(folder, n_files, classes)
        together = (n, list(EMBEDDING_STAGES), overrides) if quick else None
        measured_here = in_child("files_child", str(folder), str(out), num_workers, classes, together)
        for stage in EMBEDDING_STAGES if not quick else ():
            measured_here.update(in_child("embeddings_child", n, classes, [stage], overrides))
        for stage, value in measured_here.items():
            results[stage][n_files if stage == "scan and split" else n] = value
    return results


def rows(results, quick):
    out = []
    for stage, by_size in results.items():
        (n_small, small), (n_large, large) = sorted(by_size.items())
        exponent = growth(small["cpu_seconds"], large["cpu_seconds"], n_small, n_large)
        workers = large.get("workers", 0) * large["workers_peak_mb"]  # each worker's peak counts pages it shares
        peak = max(large["peak_rss_mb"], small["peak_rss_mb"]) + workers
        what = "files" if stage == "scan and split" else "embeddings"
        compared = (
            f"{n_small:,} -> {n_large:,} {what}: {small['cpu_seconds']:.2f} -> {large['cpu_seconds']:.2f} "
            f"CPU s on 1 thread (wall {small['seconds']:.2f} -> {large['seconds']:.2f} s), "
            f"peak RSS {small['peak_rss_mb']:.0f} -> {large['peak_rss_mb']:.0f} MB"
            + (f" (+ {large['workers']} decoding workers, {large['workers_peak_mb']:.0f} MB each)" if workers else "")
        )
        name = f"scale: {stage}"
        target = f"growth <= linear, peak {TARGETS['scale: memory']}"
        if quick:
            out.append(
                common.not_here(
                    name, compared, round(exponent, 2), target, "", "--quick sizes are too small to show growth"
                )
            )
            continue
        linear = exponent <= GROWTH_SLACK or large["cpu_seconds"] < FAST_ENOUGH_S
        reason = "needs more memory" if linear else REASONS.get(stage, "grows faster than its data")
        out.append(
            common.verdict(
                name,
                compared,
                f"n^{exponent:.2f}, {peak:.0f} MB",
                target,
                linear and TARGETS["scale: memory"].met(peak),
                "",
                reason,
            )
        )
    return out


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    with tempfile.TemporaryDirectory(prefix="plankton-scale-") as scratch:
        results = measure(scratch, quick="--quick" in argv)
    for row in rows(results, "--quick" in argv):
        print(f"{row['what']:<30} {row['measured']!s:>18}  {row['status']:<7} {row['compared']}")
    return results


if __name__ == "__main__":
    main()
