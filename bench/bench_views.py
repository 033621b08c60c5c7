"""Benchmark: what does averaging the 8 dihedral views at test time (flips and quarter turns) add to a head trained
on the upright images? Half of issue 34's "trunk views" lever, measured before any setting is built.

Reads ../shared/data/ndsb9 (or the data and classes given as to bench_recipe.py), draws the split once (as
bench_recipe.py does, in output_dir/results/bench_recipe/), computes the fixed trunk's output of each test image in
the 8 dihedral views (view v: v % 4 quarter turns, then a left-right flip when v >= 4; view 0 is the image itself),
and for each seed trains a head with train.py's default recipe (stopping="averaged") on the upright training images
of that one split. Scores the kept head on the upright test images, and on the mean of its softmax over the 8
views. Writes results/views_<data folder>.json under output_dir, a row per seed as it finishes.

    python bench/bench_views.py --seeds=5
"""

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import backbone  # noqa: E402
from bench import common  # noqa: E402
from bench.bench_recipe import TRUNK_SEED, configure, own_options, scores  # noqa: E402
from lab import (  # noqa: E402
    artifacts,
    cached_features,
    head_training,
    label_audit,
    precision,
    runtime,
    splitting,
    trunk_cache,
)

VIEWS = 8


def dihedral(images, view):
    """The view-th of the 8 dihedral transforms of a batch (N, C, H, W): view % 4 quarter turns, flipped when >= 4."""
    turned = torch.rot90(images, view % 4, dims=(2, 3))
    return torch.flip(turned, dims=(3,)) if view >= 4 else turned


class Viewed(nn.Module):
    """The trunk fed the view-th dihedral transform of its input."""

    def __init__(self, trunk, view):
        super().__init__()
        self.view, self.trunk = view, trunk

    def forward(self, images):
        return self.trunk(dihedral(images, self.view))


class Batches:
    """What run_trunk writes, kept in memory."""

    def __init__(self):
        self.features, self.ok = [], []

    def append_pair(self, features, ok):
        self.features.append(features)
        self.ok.append(ok)


def view_features(cfg, trunk, rows, device, dtype):
    """{view: (features float16 array, ok flags)} of the rows' images, computed in memory (never cached on disk)."""
    paths = splitting.absolute_paths(cfg, rows["path"])
    out = {}
    for view in range(VIEWS):
        batches = Batches()
        loader = trunk_cache.trunk_loader(paths, cfg.image_size, cfg.batch_size, 0, device)
        trunk_cache.run_trunk(Viewed(trunk, view), loader, device, dtype, batches.append_pair, f"view {view}")
        out[view] = (np.concatenate(batches.features), np.concatenate(batches.ok))
    return out


def train_averaged(model, train, val, cfg, device, dtype, seed):
    """train.py's default recipe on cached features: the averaged weights validated, stopped on and kept."""
    label_audit.reset_head(model, seed)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    average = head_training.weight_average(model)
    stopping = head_training.EarlyStopping("raw", cfg.patience)
    kept = None
    for epoch in range(1, cfg.epochs + 1):
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed * 100003 + epoch))
        head_training.run_epoch(model, train, device, cfg.batch_size, optimizer, order, dtype=dtype)
        average.update_parameters(model)
        val_loss, _ = head_training.run_epoch(average.module, val, device, cfg.batch_size, dtype=dtype)
        if stopping.step(val_loss):
            kept = {k: v.clone() for k, v in average.module.state_dict().items()}
        if stopping.stop:
            break
    average.module.load_state_dict(kept)
    return average.module, epoch


def run(argv):
    seeds, _, _, rest = own_options(argv)
    cfg, work = configure(rest)
    artifacts.ensure_output_dirs(cfg, ("results",))
    artifacts.ensure_output_dirs(work)
    runtime.seed_everything(TRUNK_SEED)
    device = runtime.select_device(work.device)
    dtype = precision.head_dtype(work.head_precision, device)
    trunk_dtype = precision.trunk_dtype(work.precision, device)
    split = splitting.read_or_draw_split(work)
    model = backbone.build_model(work, len(work.seen_classes)).to(device)
    weights_id = backbone.describe_weights(work.backbone_weights, TRUNK_SEED)
    data = trunk_cache.prepare(work, device, split, model, weights_id, trunk_dtype, names=("train", "val", "test"))
    test_rows = split[split["split"] == "test"].reset_index(drop=True)
    start = time.perf_counter()
    views = view_features(work, model.trunk, test_rows, device, trunk_dtype)
    trunk_seconds = time.perf_counter() - start
    labels = data["test"].labels
    tests = {v: cached_features.CachedSplit(f, ok, labels.new_zeros(len(ok)).numpy()) for v, (f, ok) in views.items()}
    out_path = artifacts.out_path(cfg, "results", f"views_{Path(work.data_root).name}.json")
    result = {
        "data_root": str(work.data_root),
        "test_images": len(data["test"]),
        "views": VIEWS,
        "trunk_seconds_for_the_views": trunk_seconds,
        "machine": common.machine(),
        "command": "python bench/bench_views.py " + " ".join(argv),
        "rows": [],
    }
    print(f"[views] {len(data['test'])} test images in {VIEWS} views: {trunk_seconds:.0f} s of trunk")
    truth = labels.numpy()
    for seed in range(seeds):
        head, epochs = train_averaged(model, data["train"], data["val"], work, device, dtype, seed)
        probabilities = [
            torch.softmax(torch.from_numpy(cached_features.head_outputs(head, tests[v], device, 256)[0]), 1)
            for v in range(VIEWS)
        ]
        upright = scores(truth, probabilities[0].argmax(1).numpy())
        averaged = scores(truth, torch.stack(probabilities).mean(0).argmax(1).numpy())
        result["rows"].append({"seed": seed, "epochs": epochs, "upright": upright, "views_averaged": averaged})
        print(
            f"[views] seed {seed}: upright {upright['accuracy']:.4f} (balanced {upright['balanced_accuracy']:.4f}), "
            f"8 views averaged {averaged['accuracy']:.4f} (balanced {averaged['balanced_accuracy']:.4f})",
            flush=True,
        )
        for kind in ("upright", "views_averaged"):
            values = np.array([[r[kind]["accuracy"], r[kind]["balanced_accuracy"]] for r in result["rows"]])
            result[kind] = {"accuracy_mean": values[:, 0].mean(), "balanced_accuracy_mean": values[:, 1].mean()}
        artifacts.save_json(out_path, result)
    print(f"written to {out_path}")
    return result


def main(argv=None):
    return run(sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":
    runtime.run_main(main)
