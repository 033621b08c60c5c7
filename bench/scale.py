"""The benchmark's scale section: every default stage at FlowCamNet size (301,247 images in 93 classes), on
synthetic data, each stage in a fresh process so that its peak resident memory is its own; and the same stages on
real data sets of 9 and 110 classes (ndsb9, ndsb112), so that growth with images and with classes is told apart.

Writes small PNG files (32 x 32, random content, one folder per class) and the scan's outputs into the scratch
folder it is given, and deletes nothing else. Measures, at 30,000, 100,000 and 300,000 images:
  scan and split       dataloader.py on the image files, near-copy search included (the default): at 30,000 and
                       100,000 files only (writing 300,000 files alone takes minutes), projected to FlowCamNet's
                       size with the exponent measured between them
  distances            the average distances (compute_average_distances) over every class
  map sample           the 2-D map's seeded sample of each split and its standardisation (the fit itself is on
                       at most 3 x umap_samples_per_split points, whatever the data size)
  galleries            the 128-d nearest and furthest images of every class (dimensionality_reduction.class_galleries)
  transfer             transfer learning (transfer_learning.transfer_curves) with all 93 classes unseen
  novelty              novelty.py's scorer (novelty_scores.NoveltyScorer: class Gaussians, the kNN bank of at most
                       novelty_bank_max embeddings, the validation standardisation) fitted on 70 % of the
                       embeddings as the training set and 5 % as validation, then every score of the other 25 %
  label audit          audit.py's default model (lab/label_audit.py): out-of-fold probabilities of a logistic
                       regression on 256-d pooled features over audit_folds folds, cleanlab's ranking, and
                       results/label_issues.csv written (its size is reported: one column per class)
on synthetic 128-d embeddings (256-d features for the audit) in 93 classes (sizes from 1 to 10 x, as real classes
are uneven). Returns seconds and peak resident memory per stage and size, and how each grows (the exponent of a
least-squares line of log CPU seconds on log size). The children run on one thread and growth is judged on CPU
seconds (the stage's own and its workers'): the work a stage does, which the other load of a shared machine cannot
distort as it distorts wall time; wall seconds are reported beside them.

The data sets (measure_datasets; `--datasets`): run_pipeline.py's stages, each `python <stage>.py` in a fresh
process with the same settings (--epochs=3, a random trunk), on ndsb9 (9 classes), on ndsb112 capped at 60 images
per class (110 classes, about as many images as ndsb9) and on all of ndsb112: CPU seconds, wall seconds and peak
resident memory per stage, the ratio ndsb112 / ndsb9, and the growth exponent against classes (ndsb9 -> ndsb112 at
60 per class) and against images (ndsb112 at 60 per class -> all of it).

The FlowCamNet rows (flowcamnet_rows): a full run projected from these measured rates, the trunk pass and the
head's epochs from a fresh process measuring them (rates_child), on this CPU and with oneDNN held to AVX2
(ONEDNN_MAX_CPU_ISA, a stand-in for an AVX2-only CPU: the head and trunk then run in fp32).

    python -m bench.scale [--quick]    # alone; bench/bench_pipeline.py runs it as its scale section
    python -m bench.scale --datasets   # the ndsb9 / ndsb112 rows alone
"""

import concurrent.futures
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common
from bench.targets import TARGETS
from lab import config, output_lock, progress

FLOWCAMNET_IMAGES = 301_247
FULL = {
    "files": (30_000, 100_000),
    "embeddings": (30_000, 100_000, 300_000),
    "classes": 93,
    "overrides": [],
}
QUICK = {"files": (90, 180), "embeddings": (900, 1_800), "classes": 9, "overrides": ["--transfer_repeats=1"]}
EMBEDDING_STAGES = ("distances", "map sample", "galleries", "transfer", "novelty", "label audit")
# Sizes of a stage measured at fewer than FULL's: transfer samples at most transfer_max_images per side, so at
# 100,000 it costs what it costs at 300,000 (163 against 164 CPU s at commit 04de670); its two ends give its growth,
# as before issue 30, and save the full benchmark about three minutes.
SIZES = {"transfer": (30_000, 300_000)}
COST_ORDER = ("map sample", "galleries", "novelty", "distances", "label audit", "transfer")  # cheapest first
REASONS = {"novelty": "every image meets every training embedding: is novelty_bank_max 0 (no bound)?"}
AUDIT_DIMS = 256  # the audit's pooled trunk features: 64 channels x a 2 x 2 grid (label_audit.POOL_GRID)
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

    dimensionality_reduction.class_galleries(x, y, np.unique(y), cfg.gallery_size)


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


def label_audit(x, y, cfg):
    """audit.py's default (linear) audit of every image, its table and results/label_issues.csv written to a
    temporary file; returns the CSV's size in MB."""
    import os

    import pandas as pd

    from lab import label_audit as audit

    classes = [class_name(c) for c in range(int(y.max()) + 1)]
    fold = audit.assign_folds(y, cfg.audit_folds, cfg.seed)
    probabilities = audit.linear_out_of_fold_probabilities(x, y, fold, cfg.class_weighting, len(classes), log=print)
    quality, flagged, rank = audit.rank_labels(y, probabilities)
    rows = pd.DataFrame(
        {"path": [f"{classes[c]}/{i:06d}.png" for i, c in enumerate(y)], "split": "train", "label": np.take(classes, y)}
    )
    table = audit.issue_table(rows, classes, probabilities, quality, flagged, rank, fold)
    with tempfile.NamedTemporaryFile(suffix=".csv") as f:
        table.to_csv(f.name, index=False)
        return os.path.getsize(f.name) / 2**20


STAGE_FUNCTIONS = {
    "distances": distances,
    "map sample": map_sample,
    "galleries": galleries,
    "transfer": transfer,
    "novelty": novelty,
    "label audit": label_audit,
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
    out = fn(*args)
    return {
        "seconds": time.perf_counter() - start,
        "cpu_seconds": cpu_seconds() - cpu,
        "peak_rss_mb": common.rss_mb("VmHWM"),
        "workers_peak_mb": common.children_peak_mb(),
        **({"output_mb": out} if isinstance(out, float) else {}),
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
        "lab.label_audit",
        "cleanlab.filter",
        "sklearn.linear_model",
        "sklearn.neighbors",
        "sklearn.preprocessing",
        "sklearn.svm",
    ):
        importlib.import_module(module)


def embedding_stages(n, classes, stages, overrides):
    cfg = config.load_config(overrides)
    out = {}
    for stage in stages:
        x, y = synthetic_embeddings(n, classes, dims=AUDIT_DIMS if stage == "label audit" else 128)
        out[stage] = measured(STAGE_FUNCTIONS[stage], x, y, cfg)
    return out


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
    summary = json.loads((Path(output_dir) / "results" / "near_copies.json").read_text())
    results["scan and split"]["near_copies"] = {
        key: summary["index"][key] for key in ("index_pairs", "images_extended", "classes_at_cap")
    }
    if embeddings:
        n, stages, overrides = embeddings
        results.update(embedding_stages(n, classes, stages, overrides))
    print(json.dumps(results))


# The embedding stages' children run two at a time where there are two cores: each is held to one thread and
# timed in its own CPU seconds, so a neighbour on the other core does not change its figure, and the section's
# wall time halves (the full benchmark's 25-minute budget, issue 30). The scan and split runs alone (its decoding
# workers use every core).
SIDE_BY_SIDE = max(1, min(2, os.cpu_count() or 1))
ONE_THREAD = {name: "1" for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")}


def in_child(function, *args):
    what = f"scale: {function}({', '.join(str(a) for a in args if isinstance(a, (int, list)))})"
    return common.run_child(f"from bench import scale; scale.{function}(*{args!r})", env=ONE_THREAD, what=what)


# --------------------------------------------------------------------------- the section
def growth(sizes, seconds):
    """The exponent e of time ~ size^e: the slope of a least-squares line of log seconds on log size (two sizes:
    the line through both)."""
    return float(np.polyfit(np.log(sizes), np.log(np.maximum(seconds, 1e-6)), 1)[0])


def projected(by_size, n):
    """CPU seconds of a stage at n images, from its largest measured size and its growth (at least linear: a
    stage's sublinear start is not extrapolated to 300,000)."""
    sizes = sorted(by_size)
    exponent = growth(sizes, [by_size[k]["cpu_seconds"] for k in sizes]) if len(sizes) > 1 else 1.0
    return by_size[sizes[-1]]["cpu_seconds"] * (n / sizes[-1]) ** max(exponent, 1.0)


def measure(scratch, quick=False, num_workers=2):
    """{stage: {size: measurement}} at every size; the scan on written files (removed once scanned), the rest on
    synthetic embeddings, each stage and size in its own process. Quick: tiny sizes, 9 classes, and every stage of
    a size in one process (the figures mean nothing)."""
    sizes = QUICK if quick else FULL
    classes, overrides = sizes["classes"], sizes["overrides"]
    results = {"scan and split": {}, **{stage: {} for stage in EMBEDDING_STAGES}}
    for k, n_files in enumerate(sizes["files"]):
        folder, out = Path(scratch) / f"files{n_files}", Path(scratch) / f"scan{n_files}"
        print(f"[scale] writing {n_files:,} image files, then scan and split with near-copies", flush=True)
        with progress.heartbeat(f"scale: writing {n_files:,} files"):
            write_image_files(folder, n_files, classes)
        together = (sizes["embeddings"][k], list(EMBEDDING_STAGES), overrides) if quick else None
        for stage, value in in_child("files_child", str(folder), str(out), num_workers, classes, together).items():
            results[stage][n_files if stage == "scan and split" else sizes["embeddings"][k]] = value
        shutil.rmtree(folder, ignore_errors=True)  # this section's own files: 100,000 of them take disk space
        said = results["scan and split"][n_files]
        print(f"[scale] scan and split, {n_files:,} files: {said['cpu_seconds']:.1f} CPU s", flush=True)
    jobs = [] if quick else [(n, s) for s in EMBEDDING_STAGES for n in sizes["embeddings"] if n in SIZES.get(s, (n,))]
    jobs.sort(key=lambda job: -job[0] * COST_ORDER.index(job[1]))  # the longest first, so the two end together
    with concurrent.futures.ThreadPoolExecutor(max_workers=SIDE_BY_SIDE) as pool:
        running = {
            pool.submit(in_child, "embeddings_child", n, classes, [stage], overrides): (n, stage) for n, stage in jobs
        }
        for done in concurrent.futures.as_completed(running):
            n, stage = running[done]
            results[stage][n] = done.result()[stage]
            print(f"[scale] {stage}, {n:,} embeddings: {results[stage][n]['cpu_seconds']:.1f} CPU s", flush=True)
    return results


def each(by_size, key, digits):
    """'a -> b -> c': one measurement at every size, smallest first."""
    return " -> ".join(f"{by_size[k][key]:.{digits}f}" for k in sorted(by_size))


def rows(results, quick):
    out = []
    for stage, by_size in results.items():
        sizes = sorted(by_size)
        large = by_size[sizes[-1]]
        exponent = growth(sizes, [by_size[k]["cpu_seconds"] for k in sizes])
        workers = large.get("workers", 0) * large["workers_peak_mb"]  # each worker's peak counts pages it shares
        peak = max(by_size[k]["peak_rss_mb"] for k in sizes) + workers
        what = "files" if stage == "scan and split" else "embeddings"
        compared = (
            f"{' -> '.join(f'{k:,}' for k in sizes)} {what}: {each(by_size, 'cpu_seconds', 2)} CPU s on 1 thread "
            f"(wall {each(by_size, 'seconds', 2)} s), peak RSS {each(by_size, 'peak_rss_mb', 0)} MB"
            + (f" (+ {large['workers']} decoding workers, {large['workers_peak_mb']:.0f} MB each)" if workers else "")
            + (f"; label_issues.csv {large['output_mb']:.0f} MB" if "output_mb" in large else "")
            + (
                f"; at {FLOWCAMNET_IMAGES:,} projected {projected(by_size, FLOWCAMNET_IMAGES):.0f} CPU s"
                if sizes[-1] < FLOWCAMNET_IMAGES and not quick
                else ""
            )
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


# --------------------------------------------------------------------------- FlowCamNet: every default stage
CPU_KINDS = {"this CPU": {}, "AVX2 stand-in": {"ONEDNN_MAX_CPU_ISA": "AVX2"}}
RATE_IMAGES = {"trunk": 256, "head": 4096}  # images of the rates child's trunk pass and head epoch (quick: fewer)


def rates_child(image_size, batch_size, n_classes, trunk_images, head_images, rounds, head_setting="auto"):
    """In a fresh process (oneDNN's instruction set is fixed when it loads): the trunk pass's images/s on this
    process's torch threads and a head epoch's on cpu_threads=head_setting (as train.py trains it), wall clock,
    best of `rounds`, each in the precision that "auto" picks here (lab/precision.py: bf16 where native, fp32
    where oneDNN is held to AVX2); prints them as JSON."""
    import contextlib

    import torch

    import backbone
    from lab import cached_features, head_training, precision, thread_choice

    cpu = torch.device("cpu")
    trunk_dtype, head_dtype = precision.trunk_dtype("auto", cpu), precision.head_dtype("auto", cpu)
    trunk = backbone.inference_trunk(backbone.build_trunk(None, 0))
    images = torch.randn(trunk_images, 3, image_size, image_size).contiguous(memory_format=torch.channels_last)

    def trunk_work():
        autocast = torch.autocast("cpu", dtype=trunk_dtype) if trunk_dtype else contextlib.nullcontext()
        with torch.no_grad(), autocast:
            trunk_work.out = torch.cat([trunk(b).float() for b in images.split(batch_size)])

    trunk_rate = common.best_rates({"trunk": trunk_work}, trunk_images, rounds)["trunk"]
    features = trunk_work.out.numpy().astype(np.float16)
    features = np.concatenate([features] * math.ceil(head_images / len(features)))[:head_images]
    labels = np.random.default_rng(0).integers(0, n_classes, head_images)
    data = cached_features.CachedSplit(features, np.ones(head_images, bool), labels)
    model = backbone.PlanktonNet(n_classes, image_size, None, 0)
    optimizer = head_training.adam(model, 1e-3)  # as train.py's (the rate does not change the time)

    def epoch():
        head_training.run_epoch(model, data, cpu, batch_size, optimizer, dtype=head_dtype)

    threads = torch.get_num_threads()
    with thread_choice.chosen(head_setting) as choice:
        head_rate = common.best_rates({"head": epoch}, head_images, rounds)["head"]
    print(
        json.dumps(
            {
                "trunk_images_per_s": trunk_rate,
                "head_epoch_images_per_s": head_rate,
                "trunk_precision": precision.precision_name(trunk_dtype),
                "head_precision": precision.precision_name(head_dtype),
                "torch_threads": threads,
                "cpu_threads": choice.describe(),
            }
        )
    )


def measure_rates(cfg, classes, quick=False):
    """{CPU kind: rates_child's rates} on this CPU and on the AVX2 stand-in, each in a fresh process."""
    scale = 8 if quick else 1
    args = (cfg.image_size, cfg.batch_size, classes, RATE_IMAGES["trunk"] // scale, RATE_IMAGES["head"] // scale)
    out = {}
    for kind, env in CPU_KINDS.items():
        print(f"[scale] trunk pass and head epoch rates, {kind}", flush=True)
        out[kind] = common.run_child(
            f"from bench import scale; scale.rates_child(*{(*args, 1 if quick else 2, cfg.cpu_threads)!r})",
            env,
            what=f"scale: trunk and head rates, {kind}",
        )
    return out


def flowcamnet_seconds(results, rates, cfg, datasets=None, pipeline=None, n=FLOWCAMNET_IMAGES):
    """{stage: seconds} of a full default run on n images (93 classes) on one CPU kind, from the rates measured:
    the split (scan, split, near-copies) and the analysis stages (distances, map sample and galleries, transfer,
    novelty, label audit) from this section's CPU seconds at their largest size, projected with their growth;
    the trunk pass (once per image: the trunk cache) and the head's `epochs` epochs over the training share from
    `rates`; evaluate, embed and report, which need a whole trained output set, from the data sets' rows (their CPU
    seconds on all of ndsb112, projected to n with the growth measured against images) when measured, else
    linearly from `pipeline` ({"seconds": {stage: wall s}, "images": n}: the benchmark's own pipeline run)."""
    train_share = 1 - cfg.val_fraction - cfg.test_fraction
    seconds = {
        "split with near-copies": projected(results["scan and split"], n),
        "trunk pass": n / rates["trunk_images_per_s"],
        f"head training ({cfg.epochs} epochs)": n * train_share * cfg.epochs / rates["head_epoch_images_per_s"],
    }
    for stage in EMBEDDING_STAGES:
        seconds[stage] = projected(results[stage], n)
    for stage in ("evaluate", "embed", "report"):
        if datasets and stage in datasets.get("stages", {}):
            row, largest = datasets["stages"][stage], list(datasets["images"])[-1]
            growth_ = row["exponent_images"] if math.isfinite(row["exponent_images"]) else 1.0
            seconds[stage] = row["cpu_seconds"][largest] * (n / datasets["images"][largest]) ** max(growth_, 1.0)
        elif pipeline and stage in pipeline["seconds"]:  # linearly from the benchmark's own pipeline run
            seconds[stage] = pipeline["seconds"][stage] * n / pipeline["images"]
    return seconds


def flowcamnet_rows(results, rates, cfg, datasets=None, pipeline=None, quick=False):
    """One row per CPU kind: the whole default pipeline at FlowCamNet size, projected from the rates measured."""
    out = []
    for kind, rate in rates.items():
        seconds = flowcamnet_seconds(results, rate, cfg, datasets, pipeline)
        total = sum(seconds.values()) / 3600
        without_head = total - next(v for k, v in seconds.items() if k.startswith("head")) / 3600
        parts = ", ".join(f"{k} {v / 60:.1f} min" for k, v in seconds.items())
        source = (
            "evaluate, embed, report from ndsb112 with their growth"
            if datasets and "stages" in datasets
            else "evaluate, embed, report linearly from the ndsb9 pipeline's wall seconds"
            if pipeline
            else "evaluate, embed, report not measured"
        )
        compared = (
            f"{FLOWCAMNET_IMAGES:,} images on {kind} (trunk {rate['trunk_precision']} "
            f"{rate['trunk_images_per_s']:.0f} images/s, head {rate['head_precision']} "
            f"{rate['head_epoch_images_per_s']:.0f} images/s on {rate.get('cpu_threads', '?')}, "
            f"{rate['torch_threads']} torch threads): {parts}; {source}"
        )
        name = "FlowCamNet run" + ("" if kind == "this CPU" else f", {kind}")
        target = TARGETS["FlowCamNet run"]
        if quick:
            out.append(common.not_here(name, compared, round(total, 2), str(target), "h", "--quick sizes"))
            continue
        reason = (
            f"the head's {cfg.epochs} epochs are {total - without_head:.2f} h of it; without them "
            f"{without_head:.2f} h" + ("" if target.met(without_head) else ": stages other than the head miss too")
        )
        out.append(common.verdict(name, compared, round(total, 2), str(target), target.met(total), "h", reason))
    return out


# --------------------------------------------------------------------------- ndsb9 and ndsb112: images and classes
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
NDSB9_UNSEEN = ["diatom_chain_tube", "trichodesmium_tuft", "radiolarian_colony"]  # bench_pipeline's
NDSB112_UNSEEN = [  # issue 31's done-criterion
    "chaetognath_sagitta",
    "copepod_cyclopoid_oithona",
    "detritus_blob",
    "ctenophore_cestid",
    "hydromedusae_narco_young",
    "protist_star",
    "pteropod_butterfly",
    "radiolarian_chain",
    "tunicate_salp",
    "unknown_sticks",
]
CAPPED = 60  # images per class of the middle run: ndsb112's 110 classes at about ndsb9's number of images
DATASETS = {
    "ndsb9": (SHARED / "ndsb9", NDSB9_UNSEEN, []),
    f"ndsb112 at {CAPPED} per class": (SHARED / "ndsb112", NDSB112_UNSEEN, [f"--max_images_per_class={CAPPED}"]),
    "ndsb112": (SHARED / "ndsb112", NDSB112_UNSEEN, []),
}
DATASET_SETTINGS = ["--epochs=3", "--backbone_weights=None"]  # the same for every data set: only the data differ


def stage_scripts():
    """The pipeline's stage scripts, in run_pipeline.STAGES' order (imported here, not at the top: the scale
    section's other measurements need no torch in this parent process)."""
    import run_pipeline

    return tuple(module.__name__ for _, module in run_pipeline.STAGES)


def stage_process(script, argv, label):
    """Run `python <script>.py argv` in a fresh process, its output passed on with `label` before each line;
    returns its wall seconds, CPU seconds (its own and its reaped workers') and peak resident MB (wait4's)."""
    import os
    import subprocess

    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-u", f"{script}.py", *argv],
        cwd=common.ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    tail = []
    for line in proc.stdout:
        print(f"  [{label}] {line.rstrip()}", flush=True)
        tail = (tail + [line])[-30:]
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"benchmark stage failed: python {script}.py {' '.join(argv)}\n{''.join(tail)}")
    return {
        "seconds": time.perf_counter() - start,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss / 1024,
    }


def dataset_counts(output_dir):
    """(images, classes) of a run's split: every row of split.csv, and its seen and unseen classes."""
    import pandas as pd

    split = pd.read_csv(Path(output_dir) / "results" / "split.csv", usecols=["label"])
    return len(split), split["label"].nunique()


def exponent(before, after, size_before, size_after):
    """e of seconds ~ size^e between two runs (NaN where the sizes are equal: nothing to tell)."""
    if size_before == size_after:
        return float("nan")
    return math.log(max(after, 1e-6) / max(before, 1e-6)) / math.log(size_after / size_before)


def measure_datasets(scratch, datasets=None, settings=DATASET_SETTINGS):
    """{"images": {name: n}, "classes": {name: k}, "stages": {stage: {"cpu_seconds": {name: s}, ...}}} of the
    pipeline's stages on each data set (DATASETS by default: (data root, unseen classes, extra settings), every
    other class seen; none is measured when one is absent), with the import cost of
    each stage's process (`--help`) measured once and left out of its CPU seconds."""
    datasets = DATASETS if datasets is None else datasets
    present = {k: v for k, v in datasets.items() if Path(v[0]).is_dir()}
    if len(present) < len(datasets):
        return {"skipped": sorted(set(datasets) - set(present))}
    scripts = stage_scripts()
    result = {"images": {}, "classes": {}, "stages": {s: {} for s in scripts}, "imports": {}}
    for script in scripts:
        result["imports"][script] = stage_process(script, ["--help"], f"{script} --help")["cpu_seconds"]
    for name, (folder, unseen, extra) in present.items():
        out = Path(scratch) / name.replace(" ", "_")
        argv = [
            f"--data_root={str(folder)!r}",
            "--seen_classes='all'",
            f"--unseen_classes={unseen!r}",
            f"--output_dir={str(out)!r}",
            *settings,
            *extra,
        ]
        for script in scripts:
            took = stage_process(script, argv, f"{name}: {script}")
            took["cpu_seconds"] = max(took["cpu_seconds"] - result["imports"][script], 0.01)
            for key, value in took.items():
                result["stages"][script].setdefault(key, {})[name] = value
            print(
                f"[scale] {name}, {script}: {took['cpu_seconds']:.1f} CPU s, {took['peak_rss_mb']:.0f} MB", flush=True
            )
        result["images"][name], result["classes"][name] = dataset_counts(out)
    names = list(present)
    small, middle, large = names  # ndsb9, ndsb112 capped (about ndsb9's images), ndsb112
    for row in result["stages"].values():
        cpu = row["cpu_seconds"]
        row["ratio"] = cpu[large] / cpu[small]
        row["memory_ratio"] = row["peak_rss_mb"][large] / row["peak_rss_mb"][small]
        row["exponent_classes"] = exponent(cpu[small], cpu[middle], *(result["classes"][k] for k in (small, middle)))
        row["exponent_images"] = exponent(cpu[middle], cpu[large], *(result["images"][k] for k in (middle, large)))
    result["stages"] = {STAGE_NAMES.get(k, k): v for k, v in result["stages"].items()}
    return result


STAGE_NAMES = {
    "dataloader": "split",
    "compute_average_distances": "distances",
    "dimensionality_reduction": "reduction",
    "transfer_learning": "transfer",
}
# Why a stage may grow faster than linearly (filled from what the rows showed; none is allowed to without a reason)
DATASET_REASONS = {
    "split": "the near-copy index is n log n per class by design (rounds up to 32 x log2 n neighbours), and "
    "ndsb112's larger classes have longer runs of look-alikes; measured n_images^1.26 from 60 per class to all",
}


def dataset_rows(datasets):
    if "skipped" in datasets:
        return [
            common.not_here(
                "scale: ndsb112 / ndsb9",
                "every stage on ndsb9 and ndsb112",
                None,
                "growth <= linear in images and classes",
                "",
                f"data sets absent under {SHARED}: {', '.join(datasets['skipped'])}",
            )
        ]
    small, middle, large = list(datasets["images"])
    out = []
    for stage, row in datasets["stages"].items():
        compared = (
            f"{large} / {small} ({datasets['images'][large]:,} / {datasets['images'][small]:,} images, "
            f"{datasets['classes'][large]} / {datasets['classes'][small]} classes): CPU "
            f"{row['cpu_seconds'][large]:.1f} / {row['cpu_seconds'][small]:.1f} s (wall "
            f"{row['seconds'][large]:.1f} / {row['seconds'][small]:.1f} s), peak RSS {row['peak_rss_mb'][large]:.0f} / "
            f"{row['peak_rss_mb'][small]:.0f} MB ({row['memory_ratio']:.2f}x); growth n_classes^"
            f"{row['exponent_classes']:.2f} ({small} -> {middle}), n_images^{row['exponent_images']:.2f} "
            f"({middle} -> {large})"
        )
        exponents = [e for e in (row["exponent_classes"], row["exponent_images"]) if math.isfinite(e)]
        linear = max(exponents, default=0.0) <= GROWTH_SLACK or row["cpu_seconds"][large] < FAST_ENOUGH_S
        out.append(
            common.verdict(
                f"scale: ndsb112 {stage}",
                compared,
                f"{row['ratio']:.2f}x",
                "growth <= linear in images and classes",
                linear,
                "",
                DATASET_REASONS.get(stage, "grows faster than linearly: no reason known yet"),
            )
        )
    return out


def main(argv=None):
    from lab import config as lab_config

    argv = sys.argv[1:] if argv is None else argv
    quick = "--quick" in argv
    with tempfile.TemporaryDirectory(prefix="plankton-scale-") as scratch:
        if "--datasets" in argv:
            datasets = measure_datasets(scratch)
            for row in dataset_rows(datasets):
                print(f"{row['what']:<30} {row['measured']!s:>10}  {row['status']:<7} {row['compared']}")
            return datasets
        results = measure(scratch, quick=quick)
        rates = measure_rates(lab_config.load_config([]), FULL["classes"], quick)
    for row in rows(results, quick) + flowcamnet_rows(results, rates, lab_config.load_config([]), quick=quick):
        print(f"{row['what']:<30} {row['measured']!s:>18}  {row['status']:<7} {row['compared']}")
    return results


if __name__ == "__main__":
    main()
