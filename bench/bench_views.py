"""Benchmark: what do the dihedral views (the trunk_views setting: flips and quarter turns) add to the head's
accuracy, and what do they cost? Issue 34's "cheap accuracy lever".

Reads ../shared/data/ndsb9 (or the data and classes given as to bench_recipe.py; e.g. --data_root=... with
--seen_classes=all and --max_images_per_class=N). Caches the fixed trunk's output of every seen image in the 8
dihedral views (lab/trunk_cache.py, in output_dir/results/bench_recipe/ beside bench_recipe.py's cache: view 0 is
its cache), then for each seed s of --seeds=N draws the split anew (bench_recipe.draw_split) and, for each k of
--views (default 1,4,8), trains a head exactly as train.py does with trunk_views=k: the default recipe
(stopping="averaged"), a random view of each image per epoch, validation on the average of the k views. Scores the
kept head on the test images:

    averaged      the mean of its outputs over the k views (what evaluate.py and predict.py report)
    upright       the images as they are (view 0 alone)
    all_8_views   the mean over all 8 views (for k = 1: averaging at test time only, a head trained upright)

Writes results/views_<data folder>.json under output_dir, a row per seed and k as it finishes, with the trunk
seconds of each view computed in this run and the cache's bytes per view.

    python bench/bench_views.py --seeds=3                         # ndsb9
    python bench/bench_views.py --seeds=2 --data_root=../shared/data/ndsb112 --seen_classes=all \\
        --unseen_classes="[...]" --max_images_per_class=60

--first_seed=s starts the seeds at s (seeds s .. s+N-1: several processes can share the seeds, each with its own
output_dir). --timing_images=N instead times the trunk pass alone on the first N seen images, in 1 and in 8 views,
side by side in a fresh cache folder (removed afterwards), and writes results/views_timing_<data folder>.json: run
it under `flock /tmp/lab-timing.lock`.
"""

import copy
import math
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import backbone  # noqa: E402
import lab  # noqa: E402
from bench import common  # noqa: E402
from bench.bench_recipe import TRUNK_SEED, configure, draw_split, scores  # noqa: E402
from lab import (  # noqa: E402
    artifacts,
    cached_features,
    config,
    head_training,
    image_io,
    label_audit,
    precision,
    runtime,
    splitting,
    trunk_cache,
)

KINDS = ("averaged", "upright", "all_8_views")


def own_options(argv):
    own = {"--seeds": "3", "--first_seed": "0", "--views": "1,4,8", "--timing_images": "0"}
    rest = []
    for arg in argv:
        name, _, value = arg.partition("=")
        if name in own:
            own[name] = value
        else:
            rest.append(arg)
    views = [int(v) for v in own["--views"].split(",")]
    if set(views) - set(config.TRUNK_VIEWS):
        raise lab.LabError(f"--views={own['--views']}: each must be one of {config.TRUNK_VIEWS}.")
    first = int(own["--first_seed"])
    return range(first, first + int(own["--seeds"])), views, int(own["--timing_images"]), rest


def train_with_views(model, train, val, cfg, device, dtype, seed):
    """train.py's default recipe (stopping="averaged") on cached features in train.views views: each epoch a seeded
    order and a random view per image, the averaged weights validated on the views' average, stopped on and
    kept. Returns (the kept head, epochs trained, seconds per epoch)."""
    label_audit.reset_head(model, seed)
    optimizer = head_training.adam(model, cfg.lr)
    average = head_training.weight_average(model)
    stopping = head_training.EarlyStopping("raw", cfg.patience)
    kept, start = None, time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        shuffle = torch.Generator().manual_seed(seed * 100003 + epoch)
        order = torch.randperm(len(train), generator=shuffle)
        views = cached_features.draw_views(train, shuffle)
        head_training.run_epoch(model, train, device, cfg.batch_size, optimizer, order, dtype=dtype, views=views)
        average.update_parameters(model)
        val_loss, _ = head_training.run_epoch(average.module, val, device, cfg.batch_size, dtype=dtype)
        if not math.isfinite(val_loss):
            raise lab.LabError(f"The head diverged (seed {seed}, {train.views} views, epoch {epoch}).")
        if stopping.step(val_loss):
            kept = {k: v.clone() for k, v in average.module.state_dict().items()}
        print(
            f"[views]   seed {seed}, {train.views} views, epoch {epoch}: averaged weights' val loss {val_loss:.4f} "
            f"({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
        if stopping.stop:
            break
    average.module.load_state_dict(kept)
    return average.module, epoch, (time.perf_counter() - start) / epoch


def with_views(pooled, k):
    """The pooled images read in their first k views."""
    return cached_features.PooledSplit([part.first_views(k) for part in pooled.parts], pooled.positions)


def test_scores(head, test, k, device, batch_size):
    """{kind: scores} of the head on the test images (KINDS)."""
    truth = test.labels.numpy()
    out = {}
    for kind, views in (("averaged", k), ("upright", 1), ("all_8_views", image_io.VIEWS)):
        logits = cached_features.head_outputs(head, with_views(test, views), device, batch_size)[0]
        out[kind] = scores(truth, logits.argmax(1))
    return out


def summary_of(rows):
    """Mean and standard deviation (over seeds, ddof 1) of each k's scores, epochs and seconds per epoch."""
    out = {}
    for k in sorted({r["trunk_views"] for r in rows}):
        mine = [r for r in rows if r["trunk_views"] == k]
        entry = {"seeds": len(mine)}
        measures = [(kind, m) for kind in KINDS for m in ("accuracy", "balanced_accuracy", "macro_f1")]
        for kind, measure in [*measures, (None, "epochs"), (None, "seconds_per_epoch")]:
            values = np.array([r[kind][measure] if kind else r[measure] for r in mine], dtype=float)
            sd = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            entry[f"{kind}/{measure}" if kind else measure] = {"mean": float(values.mean()), "sd": sd}
        out[str(k)] = entry
    return out


def cache_bytes(work, view):
    """Bytes of the cache files of one view (every split's features, float16)."""
    folder = artifacts.out_path(work, "cache")
    files = [p for p in folder.glob("trunk_*.npy") if ("_view" in p.name) == (view > 0)]
    own = [p for p in files if view == 0 or f"_view{view}_" in p.name]
    return sum(p.stat().st_size for p in own if not p.name.endswith(".ok.npy"))


def prepared(work, device, views):
    """The trunk's cached output of every seen image in `views` views, pooled; and the seconds each view took."""
    split = splitting.read_or_draw_split(work)
    model = backbone.build_model(work, len(work.seen_classes)).to(device)
    weights_id = backbone.describe_weights(work.backbone_weights, TRUNK_SEED)
    trunk_dtype = precision.trunk_dtype(work.precision, device)
    seconds = []
    for k in range(1, views + 1):  # one view more each time: the seconds of view k-1 alone (its cache misses)
        start = time.perf_counter()
        data = trunk_cache.prepare(work, device, split, model, weights_id, trunk_dtype, ("train", "val", "test"), k)
        seconds.append(time.perf_counter() - start)
    return model, cached_features.PooledSplit([data[name] for name in ("train", "val", "test")]), seconds


def timing(work, device, images):
    """Trunk seconds of `images` seen images in 1 and in 8 views, each from a cold cache folder made here."""
    split = splitting.read_or_draw_split(work)
    rows = split[split["split"] != "unseen"].head(images).reset_index(drop=True)
    model = backbone.build_model(work, len(work.seen_classes)).to(device)
    weights_id = backbone.describe_weights(work.backbone_weights, TRUNK_SEED)
    trunk_dtype = precision.trunk_dtype(work.precision, device)
    out = {}
    for views in (1, image_io.VIEWS):
        timed = artifacts.out_path(work, "results", f"views_timing_{views}")
        shutil.rmtree(timed, ignore_errors=True)
        cfg = copy.copy(work)
        cfg.output_dir = str(timed)
        artifacts.ensure_output_dirs(cfg, ("results", "cache"))
        start = time.perf_counter()
        key = trunk_cache.cache_key(cfg, splitting.absolute_paths(cfg, rows["path"]), weights_id, trunk_dtype)
        for view in range(views):
            trunk_cache.trunk_features(cfg, model.trunk, rows, "timing", weights_id, device, trunk_dtype, view, key)
        seconds = time.perf_counter() - start
        size = sum(p.stat().st_size for p in artifacts.out_path(cfg, "cache").glob("*.npy"))
        out[views] = {"seconds": seconds, "images_per_second": len(rows) / seconds, "cache_bytes": size}
        print(f"[views] {len(rows)} images in {views} view(s): {seconds:.1f} s, cache {size / 1e6:.1f} MB", flush=True)
        shutil.rmtree(timed)
    return {"images": len(rows), "by_views": out, "ratio_8_to_1": out[8]["seconds"] / out[1]["seconds"]}


def run(argv):
    seeds, views, timing_images, rest = own_options(argv)
    cfg, work = configure(rest)
    artifacts.ensure_output_dirs(cfg, ("results",))
    artifacts.ensure_output_dirs(work)
    runtime.seed_everything(TRUNK_SEED)
    device = runtime.select_device(work.device)
    dtype = precision.head_dtype(work.head_precision, device)
    name = Path(work.data_root).name
    command = "python bench/bench_views.py " + " ".join(argv)
    if timing_images:
        result = {"data_root": str(work.data_root), "machine": common.machine(), "command": command}
        result |= timing(work, device, timing_images)
        result["machine_after"] = common.machine()["load_average"]
        artifacts.save_json(artifacts.out_path(cfg, "results", f"views_timing_{name}.json"), result)
        return result
    model, pool, seconds = prepared(work, device, max(views + [image_io.VIEWS]))
    labels = pool.labels.numpy()
    out_path = artifacts.out_path(cfg, "results", f"views_{name}.json")
    result = {
        "data_root": str(work.data_root),
        "seen_classes": len(work.seen_classes),
        "images": len(pool),
        "max_images_per_class": work.max_images_per_class,
        "trunk": backbone.describe_weights(work.backbone_weights, TRUNK_SEED),
        "image_size": work.image_size,
        "head_precision": precision.precision_name(dtype),
        "trunk_seconds_per_view": seconds,
        "cache_bytes_per_view": [cache_bytes(work, v) for v in range(image_io.VIEWS)],
        "machine": common.machine(),
        "command": command,
        "rows": [],
    }
    print(f"[views] {len(pool)} images of {len(work.seen_classes)} classes; seeds {list(seeds)} x trunk_views {views}")
    for seed in seeds:
        train, val, test = (pool.subset(p) for p in draw_split(labels, work, seed))
        for k in views:
            head, epochs, per_epoch = train_with_views(
                model, with_views(train, k), with_views(val, k), work, device, dtype, seed
            )
            row = {"seed": seed, "trunk_views": k, "epochs": epochs, "seconds_per_epoch": per_epoch}
            row |= test_scores(head, test, k, device, 256)
            result["rows"].append(row)
            print(
                f"[views] seed {seed}, trunk_views {k}: "
                + ", ".join(
                    f"{kind} {row[kind]['accuracy']:.4f} (balanced {row[kind]['balanced_accuracy']:.4f})"
                    for kind in KINDS
                )
                + f"; {epochs} epochs, {per_epoch:.1f} s each",
                flush=True,
            )
            result["summary"] = summary_of(result["rows"])
            artifacts.save_json(out_path, result)
    result["machine_after"] = common.machine()["load_average"]
    artifacts.save_json(out_path, result)
    print(f"written to {out_path}")
    return result


def main(argv=None):
    return run(sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":
    runtime.run_main(main)
