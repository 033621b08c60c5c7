"""Benchmark of the label audit (audit.py): does it find planted label errors in real images, what does it cost, and
does its cost grow linearly with the data?

Reads ../shared/data/ndsb9 (or --data_root=... with --seen_classes / --unseen_classes) in place and writes only in
a scratch folder. Links the images into a scratch data root in which 5 % of the seen images sit under another
seen class (seeded, drawn at random; the images are never touched), then draws the split there;
trains on those labels (train.py, evaluate.py) and runs audit.py. Measures:
  found   the share of the flipped images in the audit's top 5 % and top 10 % (target: >= 80 % in the top 10 %),
          and the precision and recall of cleanlab's flags against the flips; audit.py's wall time; the same with
          the other audit_model (side by side: the linear model and the lab's head)
  growth  the audit (out-of-fold loop and ranking) on the same cached features pooled once and ten times (read in
          place: ten times the images, no trunk pass; a head trains GROWTH_EPOCHS epochs per fold), on one thread
          and in CPU seconds, which other load on a shared machine cannot inflate (wall seconds beside): it must
          grow linearly
  demo    what the stage adds to the demo pipeline: its stages (run_pipeline.STAGES) on data/demo in a scratch
          folder, each on one thread, the audit's CPU seconds against the other stages' (wall beside), target
          <= 15 %; and audit.py's with the other audit_model
On a random trunk (backbone_weights=None) unless --backbone_weights is given. Prints a table and writes
results/audit_benchmark.json under output_dir.

    python bench/bench_audit.py                      # ndsb9 at 128 px
    python bench/bench_audit.py --only=found,growth  # some measurements (names: MEASUREMENTS)
    python bench/bench_audit.py --quick              # tiny sizes: a smoke test, not a benchmark
"""

import functools
import math
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import audit  # noqa: E402
import dataloader  # noqa: E402
import evaluate  # noqa: E402
import lab  # noqa: E402
import run_pipeline  # noqa: E402
import train  # noqa: E402
from bench import common  # noqa: E402
from bench.bench_pipeline import NDSB9, NDSB9_SEEN, NDSB9_UNSEEN  # noqa: E402
from bench.common import information, not_here, verdict  # noqa: E402
from lab import (  # noqa: E402
    artifacts,
    cached_features,
    checkpoint,
    config,
    data_folders,
    demo_data,
    label_audit,
    output_lock,
    runtime,
)

FLIP_SHARE = 0.05
TOP_SHARES = (0.05, 0.10)
FOUND_TARGET = 0.80  # of the flips in the top 10 %
GROWTH_FACTOR = 10
GROWTH_EPOCHS = 1  # the epoch count does not depend on the data's size: one epoch per fold shows the growth
GROWTH_SLACK = 1.15  # as bench/scale.py: an exponent up to 1.15 counts as linear (caches and allocators wobble)
DEMO_TARGET = 0.15
DEMO_THREADS = 1  # the stages' share in CPU seconds on one thread: two threads on a busy 2-core machine waste CPU
QUICK_OVERRIDES = ["--max_images_per_class=30", "--image_size=64", "--epochs=2", "--num_workers=0"]


class Run:
    """The benchmark's settings and scratch folder, and (made on first use) the model trained on flipped labels."""

    def __init__(self, argv, quick, scratch):
        self.quick, self.scratch = quick, Path(scratch)
        self.argv = argv + [f"--output_dir={str(self.scratch / 'flipped')!r}"]

    @functools.cached_property
    def flipped(self):
        """A scratch data root with flipped labels, then split, train, evaluate (so that the test split's features
        are cached, as in the pipeline): the paths whose labels were flipped."""
        cfg = config.load_config(self.argv)
        root, paths = flipped_root(cfg, FLIP_SHARE, cfg.seed, self.scratch / "data")
        self.argv = self.argv + [f"--data_root={str(root)!r}"]
        for stage in (dataloader, train, evaluate):
            print(f"\n=== [bench] {stage.__name__}", flush=True)
            stage.main(self.argv)
        output_lock.release_locks()
        return paths


def flipped_root(cfg, share, seed, folder):
    """A scratch data root of links to the images (the images themselves are not touched) in which `share` of the
    seen images are linked under another seen class, drawn at random (seeded): a label that is wrong the way a
    taxonomist's slip is, seen by the lab exactly as a folder of classes. Returns (root, flipped relative paths)."""
    source = artifacts.resolve(cfg.data_root)
    rng = np.random.default_rng(seed)
    images = {c: data_folders.list_class_files(source / c)[0] for c in cfg.seen_classes + cfg.unseen_classes}
    seen = [(c, name) for c in cfg.seen_classes for name in images[c]]
    chosen = set(rng.choice(len(seen), size=round(share * len(seen)), replace=False).tolist())
    flipped = set()
    for index, (cls, name) in enumerate(seen):
        target = cls
        if index in chosen:
            others = [c for c in cfg.seen_classes if c != cls]
            target = others[rng.integers(len(others))]
        relative = f"{target}/{name}" if target == cls else f"{target}/flipped_from_{cls}__{name.replace('/', '__')}"
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(source / cls / name, folder / relative)
        if target != cls:
            flipped.add(relative)
    for cls in cfg.unseen_classes:
        for name in images[cls]:
            (folder / cls / name).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(source / cls / name, folder / cls / name)
    print(f"[bench] {len(flipped)} of {len(seen)} seen images linked under another class in {folder}")
    return folder, flipped


def found_shares(issues, flipped):
    """Share of the flipped images (of those audited) in each top share of the ranking; precision and recall of
    cleanlab's flags against the flips."""
    is_flip = issues["path"].isin(flipped).to_numpy()  # the table is sorted by rank
    flagged = issues["flagged"].to_numpy(dtype=bool)
    found = {
        f"top_{round(100 * s)}": float(is_flip[: math.ceil(s * len(issues))].sum() / max(is_flip.sum(), 1))
        for s in TOP_SHARES
    }
    return {
        **found,
        "flips": int(is_flip.sum()),
        "images": len(issues),
        "flagged": int(flagged.sum()),
        "precision": float((flagged & is_flip).sum() / max(flagged.sum(), 1)),
        "recall": float((flagged & is_flip).sum() / max(is_flip.sum(), 1)),
    }


def other_models(argv):
    """The audit_models that argv does not choose, each as its override."""
    chosen = config.load_config(argv).audit_model
    return [model for model in label_audit.AUDIT_MODELS if model != chosen]


def measure_found(run):
    flipped = run.flipped
    start, cpu = time.perf_counter(), time.process_time()
    issues = audit.main(run.argv)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    output_lock.release_locks()
    found = found_shares(issues, flipped)
    cfg = config.load_config(run.argv)
    epochs = checkpoint.load(artifacts.out_path(cfg, "checkpoints", "best.pth"))["epoch"]
    result = {
        **found,
        "audit_model": cfg.audit_model,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "main_run_best_epoch": epochs,
        "load_average": common.load_average(),
    }
    compared = (
        f"{found['flips']} flipped labels among {found['images']} images, audit_model={cfg.audit_model!r}: "
        f"in the audit's top 5 % {100 * found['top_5']:.1f} %, top 10 % {100 * found['top_10']:.1f} %"
    )
    flags = (
        f"{found['flagged']} flagged: precision {found['precision']:.3f}, recall {found['recall']:.3f} (a "
        f"flagged label that was not flipped may be one of the data's own errors)"
    )
    timing = (
        f"audit.py at {found['images']} images, {cfg.audit_folds} folds of the {cfg.audit_model} model"
        + (", each stopped on a tenth of its images" if cfg.audit_model == "head" else "")
        + f": {cpu_seconds:.1f} CPU s, load average {result['load_average']}"
    )
    rows = [
        verdict(
            "audit: flips found",
            compared,
            round(100 * found["top_10"], 1),
            f">= {100 * FOUND_TARGET:.0f} % in the top 10 %",
            found["top_10"] >= FOUND_TARGET,
            "%",
            "the out-of-fold models miss flips",
        ),
        information("audit: cleanlab's flags", flags, round(found["precision"], 3), ""),
        information("audit: wall time", timing, round(seconds, 1), "s"),
    ]
    if run.quick:
        rows[0] = not_here(
            rows[0]["what"],
            compared,
            rows[0]["measured"],
            rows[0]["target"],
            "%",
            "--quick trains on a few images for two epochs",
        )
        return result, rows
    result["other_models"] = {}
    for model in other_models(run.argv):  # the same flips, side by side
        start, cpu = time.perf_counter(), time.process_time()
        issues = audit.main(run.argv + [f"--audit_model={model}"])
        other = {
            **found_shares(issues, flipped),
            "seconds": time.perf_counter() - start,
            "cpu_seconds": time.process_time() - cpu,
        }
        output_lock.release_locks()
        result["other_models"][model] = other
        rows.append(
            information(
                f"audit: {model} model",
                f"the same with audit_model={model!r}: top 5 % "
                f"{100 * other['top_5']:.1f} %, top 10 % {100 * other['top_10']:.1f} %, flags' "
                f"precision {other['precision']:.3f}, recall {other['recall']:.3f}; "
                f"{other['cpu_seconds']:.1f} CPU s ({other['cpu_seconds'] / cpu_seconds:.0f}x "
                f"the {cfg.audit_model} model's), wall {other['seconds']:.1f} s",
                round(100 * other["top_10"], 1),
                "%",
            )
        )
    return result, rows


def timed_audit(run, factor, threads=1, c_scale=1.0):
    """CPU and wall seconds of label_audit.audit_labels on the cached features pooled `factor` times (a head: with
    GROWTH_EPOCHS epochs per fold), on `threads` torch threads; for the linear model also its fits' CPU seconds and
    optimizer iterations, summed over the folds, fitted at LINEAR_C x c_scale."""
    _ = run.flipped  # the model trained on the flipped labels, and its caches
    trained = checkpoint.load_trained(config.load_config(run.argv))
    data = audit.audited_images(trained)
    pooled = cached_features.PooledSplit(data.parts * factor)
    rules = label_audit.fold_training(trained.ckpt, trained.cfg, trained.device).with_epochs(GROWTH_EPOCHS)
    before, fit, c = torch.get_num_threads(), label_audit.fit_linear, label_audit.LINEAR_C
    fits = {"iterations": 0, "cpu_seconds": 0.0}

    def counted_fit(*args):
        started = time.process_time()
        model = fit(*args)
        fits["cpu_seconds"] += time.process_time() - started
        fits["iterations"] += int(model[-1].n_iter_.max())
        return model

    torch.set_num_threads(threads)
    label_audit.fit_linear, label_audit.LINEAR_C = counted_fit, c * c_scale
    try:
        start, cpu = time.perf_counter(), time.process_time()
        label_audit.audit_labels(
            trained.model,
            pooled,
            trained.ckpt["classes"],
            rules,
            trained.cfg.audit_folds,
            trained.device,
            log=lambda _: None,
            audit_model=trained.cfg.audit_model,
        )
        return {
            "images": len(pooled),
            "cpu_seconds": time.process_time() - cpu,
            "seconds": time.perf_counter() - start,
            "fits": fits,
        }
    finally:
        torch.set_num_threads(before)
        label_audit.fit_linear, label_audit.LINEAR_C = fit, c


def growth_exponent(small, large, images):
    return math.log(large / small) / math.log(images[1] / images[0])


def measure_growth(run):
    """CPU seconds of the same fit on GROWTH_FACTOR times the images. The head: GROWTH_EPOCHS epochs per fold. The
    linear model: the copies fitted at C / GROWTH_FACTOR, whose optimum is the original images' own (scikit-learn
    weighs the L2 penalty against the sum of the losses), so that the optimizer solves the same problem on ten
    times the data. Beside it, the copies at the lab's C: the penalty then weighs less against more images (on any
    larger data set, not only copies), and the optimizer may need more iterations (at most LINEAR_MAX_ITER per
    fold)."""
    model = config.load_config(run.argv).audit_model
    small = timed_audit(run, 1)
    large = timed_audit(run, GROWTH_FACTOR, c_scale=1 / GROWTH_FACTOR if model == "linear" else 1.0)
    images = (small["images"], large["images"])
    exponent = growth_exponent(small["cpu_seconds"], large["cpu_seconds"], images)
    compared = (
        f"{small['images']:,} -> {large['images']:,} images (the cached features pooled {GROWTH_FACTOR}x), "
        f"the {model} model"
        + (
            f", {GROWTH_EPOCHS} epoch per fold"
            if model == "head"
            else f", the copies at C / {GROWTH_FACTOR} (the same fit)"
        )
        + f", 1 thread: {small['cpu_seconds']:.1f} -> {large['cpu_seconds']:.1f} "
        f"CPU s (wall {small['seconds']:.1f} -> {large['seconds']:.1f} s)"
    )
    result = {"small": small, "large": large, "exponent": exponent}
    if model == "linear":
        fixed = result["large_at_the_labs_c"] = timed_audit(run, GROWTH_FACTOR)
        result["exponent_at_the_labs_c"] = growth_exponent(small["cpu_seconds"], fixed["cpu_seconds"], images)
        compared += (
            f"; optimizer iterations {small['fits']['iterations']} -> {large['fits']['iterations']}; at the "
            f"lab's C: {fixed['cpu_seconds']:.1f} CPU s, {fixed['fits']['iterations']} iterations "
            f"(n^{result['exponent_at_the_labs_c']:.2f}: the penalty weighs less against more images)"
        )
    row = verdict(
        "audit: growth",
        compared,
        f"n^{exponent:.2f}",
        f"<= linear (n^{GROWTH_SLACK})",
        exponent <= GROWTH_SLACK,
        "",
        "the audit grows faster than its data",
    )
    return result, [row]


def cpu_seconds():
    """CPU seconds of this process and of its finished children (the trunk pass's decoding workers)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def run_stages(argv, stages):
    """Each (name, script) stage in order, as run_pipeline.py runs them, each on DEMO_THREADS torch threads: wall and
    CPU seconds per stage."""
    demo_data.ensure_demo_data(config.load_config(argv))
    threads, seconds = torch.get_num_threads(), {}
    try:
        for name, module in stages:
            print(f"\n=== [bench] {name}", flush=True)
            torch.set_num_threads(DEMO_THREADS)  # UMAP's numba resets OpenMP's thread count for what follows
            wall, cpu = time.perf_counter(), cpu_seconds()
            module.main(argv)
            seconds[name] = {"seconds": time.perf_counter() - wall, "cpu_seconds": cpu_seconds() - cpu}
    finally:
        torch.set_num_threads(threads)
        output_lock.release_locks()
    return seconds


def measure_demo(run):
    """The demo pipeline's stages in a scratch folder: the audit's seconds against the other stages' (CPU seconds
    for the verdict, which the machine's other load cannot inflate; wall beside); then audit.py with the other
    model."""
    if run.quick:
        return {}, [
            not_here(
                "audit: demo share",
                "the demo pipeline",
                None,
                f"<= {100 * DEMO_TARGET:.0f} %",
                "%",
                "--quick does not run the demo pipeline",
            )
        ]
    argv = [
        f"--data_root={str(demo_data.DEMO_ROOT)!r}",
        f"--seen_classes={demo_data.SEEN!r}",
        f"--unseen_classes={demo_data.UNSEEN!r}",
        "--backbone_weights=None",
        f"--output_dir={str(run.scratch / 'demo')!r}",
    ]
    stages = run_stages(argv, run_pipeline.STAGES)
    others = {
        kind: sum(s[kind] for name, s in stages.items() if name != "audit") for kind in ("seconds", "cpu_seconds")
    }
    share = {kind: stages["audit"][kind] / others[kind] for kind in others}
    others_models = {
        model: run_stages(argv + [f"--audit_model={model}"], [("audit", audit)])["audit"]
        for model in other_models(argv)
    }
    cfg = config.load_config(argv)
    epochs = checkpoint.load(artifacts.out_path(cfg, "checkpoints", "best.pth"))["epoch"]
    compared = (
        f"the demo's stages (random trunk, {DEMO_THREADS} thread): audit ({cfg.audit_model} model) "
        f"{stages['audit']['cpu_seconds']:.1f} CPU s vs the other stages {others['cpu_seconds']:.1f} (train "
        f"{stages['train']['cpu_seconds']:.1f}); wall {stages['audit']['seconds']:.1f} vs "
        f"{others['seconds']:.1f} s ({100 * share['seconds']:.0f} %); "
        + ", ".join(
            f"audit_model={k!r}: {v['cpu_seconds']:.1f} CPU s ({100 * v['cpu_seconds'] / others['cpu_seconds']:.0f} %)"
            for k, v in others_models.items()
        )
    )
    reason = (
        (
            f"{cfg.audit_folds} heads, each trained as train.py trains it (until {cfg.patience} epochs without "
            f"a better loss on a tenth of its images) on {cfg.audit_folds - 1}/{cfg.audit_folds} of the training "
            f"and validation images: about {cfg.audit_folds - 1} times train.py's epochs"
        )
        if cfg.audit_model == "head"
        else "the linear model's folds cost more than expected"
    )
    return {
        "stages": stages,
        "share": share,
        "other_models": others_models,
        "main_run_best_epoch": epochs,
        "audit_model": cfg.audit_model,
        "threads": DEMO_THREADS,
        "load_average": common.load_average(),
    }, [
        verdict(
            "audit: demo share",
            compared,
            round(100 * share["cpu_seconds"], 1),
            f"<= {100 * DEMO_TARGET:.0f} %",
            share["cpu_seconds"] <= DEMO_TARGET,
            "%",
            reason,
        )
    ]


MEASUREMENTS = (("found", measure_found), ("growth", measure_growth), ("demo", measure_demo))


def configure(argv):
    quick, only, argv = common.measurement_options(argv, MEASUREMENTS)
    names = {a.split("=", 1)[0] for a in argv}
    if "--data_root" not in names:
        if not NDSB9.is_dir():
            raise lab.LabError(
                f"The default benchmark data {NDSB9} is absent. Pass --data_root=... with "
                f"--seen_classes=[...] and --unseen_classes=[...] of your own data set."
            )
        argv += [f"--data_root={str(NDSB9)!r}", f"--seen_classes={NDSB9_SEEN!r}", f"--unseen_classes={NDSB9_UNSEEN!r}"]
    if "--backbone_weights" not in names:
        argv += ["--backbone_weights=None"]  # the target is set on the random trunk
    return quick, only, argv + (QUICK_OVERRIDES if quick else []), config.load_config(argv)


def run(argv):
    quick, only, argv, base = configure(argv)
    raw, rows = {"machine": common.machine(), "quick": quick, "argv": argv, "seconds": {}}, []
    print(f"[bench] machine: {raw['machine']}")
    with tempfile.TemporaryDirectory(prefix="plankton-bench-audit-") as scratch:
        bench = Run(argv, quick, scratch)
        for name, measure in MEASUREMENTS:
            if only is None or name in only:
                (raw[name], new_rows), raw["seconds"][name] = common.timed(measure, bench)
                rows += new_rows
        output_lock.release_locks()
    raw["rows"] = rows
    artifacts.ensure_output_dirs(base, ("results",))
    path = artifacts.save_json(artifacts.out_path(base, "results", "audit_benchmark.json"), raw)
    print_table(rows, raw)
    print(f"\nwritten to {path}")
    return raw


def print_table(rows, raw):
    m = raw["machine"]
    print(
        f"\nLabel audit benchmark on {m['cpu']} ({m['cores']} cores, torch {m['torch']} on {m['torch_threads']} "
        f"threads; load average {m['load_average']})" + ("  [--quick: tiny sizes]" if raw["quick"] else "")
    )
    for r in rows:
        unit = r["unit"] if r["unit"] in ("", "%", "s") else " " + r["unit"]
        print(
            f"{r['what']:<26} {str(r['measured']) + unit:>10}  {r['target']:<24} {r['status']:<7} {r['compared']}"
            + (f"\n{'':<26} {r['reason']}" if r["reason"] else "")
        )
    print("benchmark sections (s): " + ", ".join(f"{k} {v:.0f}" for k, v in raw["seconds"].items()))


def main(argv=None):
    return run(sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":
    runtime.run_main(main)
