"""Benchmark: how much does the test accuracy depend on luck, and which head-training recipe makes it depend less?

Reads ../shared/data/ndsb9 (its six benchmark classes seen; or --ndsb112=True: ndsb112's 100 largest classes seen,
the next 10 unseen; or --data_root=... with the classes). Writes results/recipe_<data folder>.json under output_dir
(recipe_ndsb9.json), a row at a time as each seed's heads finish, keeping an earlier run's rows of the other
variants; the trunk cache and the split it drew go to `output_dir/results/bench_recipe/`.

The trunk is computed once, on one fixed trunk (a random one offline: built from TRUNK_SEED whatever --seed says),
over every seen image; its cached output is pooled. For each seed s of --seeds=N (s = 0 .. N-1) the split is then
drawn anew in memory (stratified: val_fraction for validation, test_fraction for testing, seeded by s) and a fresh
head initialised from s: only the head's seed and the split vary, as a user who retrains sees it. Each training
variant (the mission's constant lr; label smoothing 0.1; ReduceLROnPlateau from Adam's 0.0014) trains one head per
seed, epoch by epoch, until every stopping candidate has stopped or `epochs` is reached; every candidate is
scored on that same trajectory (the epoch it would stop at, the weights it would keep), so candidates differ by
their rule alone, never by a different draw:

    raw            the epoch's own validation loss, patience epochs (the lab's recipe before issue 34)
    ema            an exponential moving average of the validation loss (head_training.LOSS_SMOOTHING)
    ema50          the same, the newest epoch weighing 0.5
    noise_patience the raw loss, patience grown with its recent epoch-to-epoch noise (up to 3 x patience)
    weights_ema    an exponential moving average of the head's weights (head_training.weight_average, decay
                   WEIGHTS_DECAY per epoch), stopped on its own raw validation loss: train.py's stopping="averaged"

("ema" is train.py's stopping="smoothed", "raw" its stopping="raw".)

    python bench/bench_recipe.py --seeds=5                  # ndsb9, random trunk offline
    python bench/bench_recipe.py --seeds=3 --ndsb112=True --variants=constant --rules=raw,ema,weights_ema

--rules=a,b scores only those candidates: the trajectory ends when they have all stopped (noise_patience's can run
to 3 x patience epochs past its best).
"""

import copy
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.metrics import balanced_accuracy_score, f1_score  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

import backbone  # noqa: E402
import lab  # noqa: E402
from bench import common  # noqa: E402
from bench.bench_operating_points import ndsb112_classes  # noqa: E402
from bench.bench_pipeline import NDSB9, NDSB9_SEEN, NDSB9_UNSEEN  # noqa: E402
from lab import (  # noqa: E402
    artifacts,
    cached_features,
    config,
    head_training,
    label_audit,
    precision,
    runtime,
    splitting,
    trunk_cache,
)

TRUNK_SEED = 0  # the one trunk every seed's head trains on (a random trunk's seed is not what is measured)
VARIANTS = ("constant", "smoothing", "plateau")
RULES = ("raw", "ema", "ema50", "noise_patience", "weights_ema")


class NoisePatience:
    """The raw loss's best epoch, with a patience that grows with how much the loss jumped over the last epochs:
    patience x (1 + 10 x the standard deviation of its last 6 epoch-to-epoch changes / the best loss), at most 3 x
    patience."""

    def __init__(self, patience):
        self.patience, self.losses, self.best, self.stale = patience, [], math.inf, 0

    def step(self, val_loss):
        self.losses.append(val_loss)
        improved = val_loss < self.best
        self.best, self.stale = (val_loss, 0) if improved else (self.best, self.stale + 1)
        return improved

    @property
    def stop(self):
        changes = np.diff(self.losses[-7:])
        noise = float(np.std(changes)) / self.best if len(changes) > 1 else 0.0
        return self.stale >= min(3 * self.patience, round(self.patience * (1 + 10 * noise)))


def stopping_rules(patience, chosen=RULES):
    every = {
        "raw": head_training.EarlyStopping("raw", patience),
        "ema": head_training.EarlyStopping("ema", patience),
        "ema50": head_training.EarlyStopping("ema", patience, smoothing=0.5),
        "noise_patience": NoisePatience(patience),
        "weights_ema": head_training.EarlyStopping("raw", patience),  # fed the averaged weights' loss
    }
    return {name: every[name] for name in chosen}


def draw_split(labels, cfg, seed):
    """(train, validation, test) positions of the pooled images, stratified, seeded: the split a user's run draws."""
    every = np.arange(len(labels))
    rest, test = train_test_split(every, test_size=cfg.test_fraction, stratify=labels, random_state=seed)
    val_share = cfg.val_fraction / (1 - cfg.test_fraction)
    train, val = train_test_split(rest, test_size=val_share, stratify=labels[rest], random_state=seed)
    return np.sort(train), np.sort(val), np.sort(test)


def predictions(model, data, device, batch_size):
    return cached_features.head_outputs(model, data, device, batch_size)[0].argmax(1)


def train_variant(model, parts, cfg, device, dtype, variant, seed, chosen=RULES):
    """One head trained from seed's initialisation until every candidate rule has stopped (or cfg.epochs). Returns
    {rule: (epoch stopped, epoch kept, its test predictions)} and the seconds per epoch."""
    train, val, test = parts
    label_audit.reset_head(model, seed)
    optimizer = head_training.adam(model, cfg.lr)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=2)
    smoothing = 0.1 if variant == "smoothing" else 0.0
    averaged = head_training.weight_average(model)
    average = averaged.module
    rules = stopping_rules(cfg.patience, chosen)
    kept = {name: (0, 0, None) for name in rules}  # (stopped at, kept epoch, kept predictions)
    stopped = {}
    start = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed * 100003 + epoch))
        head_training.run_epoch(
            model, train, device, cfg.batch_size, optimizer, order, dtype=dtype, smoothing=smoothing
        )
        val_loss, _ = head_training.run_epoch(model, val, device, cfg.batch_size, dtype=dtype)
        if variant == "plateau":
            plateau.step(val_loss)
        averaged.update_parameters(model)
        average_loss, _ = head_training.run_epoch(average, val, device, cfg.batch_size, dtype=dtype)
        if not (math.isfinite(val_loss) and math.isfinite(average_loss)):
            raise lab.LabError(f"The head diverged (seed {seed}, variant {variant}, epoch {epoch}).")
        now = {"model": None, "average": None}  # test predictions computed only when a rule keeps this epoch
        for name, rule in rules.items():
            if name in stopped:
                continue
            source = "average" if name == "weights_ema" else "model"
            if rule.step(average_loss if source == "average" else val_loss):
                if now[source] is None:
                    net = average if source == "average" else model
                    now[source] = predictions(net, test, device, cfg.batch_size)
                kept[name] = (epoch, epoch, now[source])
            if rule.stop:
                stopped[name] = epoch
        print(
            f"[recipe]   seed {seed} {variant} epoch {epoch}: val loss {val_loss:.4f}, averaged weights' "
            f"{average_loss:.4f}, {len(stopped)}/{len(rules)} rules stopped ({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
        if len(stopped) == len(rules):
            break
    seconds = (time.perf_counter() - start) / epoch
    return {name: (stopped.get(name, epoch), kept[name][1], kept[name][2]) for name in rules}, seconds


def scores(labels, predicted):
    return {
        "accuracy": float((predicted == labels).mean()),
        "macro_f1": float(f1_score(labels, predicted, average="macro")),
        "balanced_accuracy": float(balanced_accuracy_score(labels, predicted)),
    }


def summary_of(rows):
    """Mean and standard deviation (over seeds, ddof 1) of each variant x rule's scores and epochs."""
    out = {}
    for key in sorted({(r["variant"], r["rule"]) for r in rows}):
        mine = [r for r in rows if (r["variant"], r["rule"]) == key]
        entry = {"seeds": len(mine)}
        for measure in ("accuracy", "macro_f1", "balanced_accuracy", "epochs_trained", "epoch_kept"):
            values = np.array([r[measure] for r in mine], dtype=float)
            entry[measure] = {"mean": float(values.mean()), "sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0}
        out[f"{key[0]}/{key[1]}"] = entry
    return out


def print_summary(summary):
    print(f"\n{'variant/rule':<28} {'seeds':>5} {'accuracy':>16} {'macro F1':>16} {'epochs':>12}")
    for name, e in summary.items():
        acc, f1, ep = e["accuracy"], e["macro_f1"], e["epochs_trained"]
        print(
            f"{name:<28} {e['seeds']:>5} {acc['mean']:>8.4f} ± {acc['sd']:.4f} {f1['mean']:>8.4f} ± {f1['sd']:.4f} "
            f"{ep['mean']:>6.1f} ± {ep['sd']:.1f}"
        )


def pooled_features(cfg, device):
    """The fixed trunk's cached output of every seen image (computed once, then read from the cache), pooled."""
    split = splitting.read_or_draw_split(cfg)
    model = backbone.build_model(cfg, len(cfg.seen_classes)).to(device)
    weights_id = backbone.describe_weights(cfg.backbone_weights, cfg.seed)
    trunk_dtype = precision.trunk_dtype(cfg.precision, device)
    data = trunk_cache.prepare(cfg, device, split, model, weights_id, trunk_dtype, names=("train", "val", "test"))
    return model, cached_features.PooledSplit([data["train"], data["val"], data["test"]])


def earlier_rows(path, cfg, variants):
    """The rows of the variants this run does not train, from an earlier run on the same data, trunk and settings:
    each variant can be measured in its own run and the file holds them all."""
    if not path.exists():
        return []
    earlier = json.loads(path.read_text())
    same = all(
        earlier.get(key) == getattr(cfg, key) for key in ("image_size", "lr", "batch_size", "epochs", "patience")
    )
    if not same or earlier.get("data_root") != str(cfg.data_root):
        return []
    return [row for row in earlier.get("rows", []) if row["variant"] not in variants]


def own_options(argv):
    own = {"--seeds": "5", "--variants": ",".join(VARIANTS), "--rules": ",".join(RULES)}
    rest = []
    for arg in argv:
        name, _, value = arg.partition("=")
        if name == "--ndsb112":
            rest += ndsb112_classes() if value == "True" else []
        elif name in own:
            own[name] = value
        else:
            rest.append(arg)
    variants, rules = own["--variants"].split(","), own["--rules"].split(",")
    if set(variants) - set(VARIANTS) or set(rules) - set(RULES):
        raise lab.LabError(
            f"--variants={own['--variants']} or --rules={own['--rules']} names an unknown one; choose variants among "
            f"{VARIANTS} and rules among {RULES}."
        )
    return int(own["--seeds"]), variants, rules, rest


def configure(argv):
    names = {a.split("=", 1)[0] for a in argv}
    defaults = []
    if "--data_root" not in names:
        if not NDSB9.is_dir():
            raise lab.LabError(f"The benchmark data {NDSB9} is absent. Pass --data_root=... with the classes.")
        defaults += [f"--data_root={str(NDSB9)!r}", f"--seen_classes={NDSB9_SEEN!r}"]
        defaults += [f"--unseen_classes={NDSB9_UNSEEN!r}"]
    if "--backbone_weights" not in names:
        defaults.append("--backbone_weights=None")  # offline: the one trunk there is
    cfg = config.load_config(defaults + argv + [f"--seed={TRUNK_SEED}"])
    work = copy.copy(cfg)  # the trunk cache and the first split in results/bench_recipe/, never the user's
    work.output_dir = str(artifacts.out_path(cfg, "results", "bench_recipe"))
    return cfg, work


def run(argv):
    seeds, variants, rules, rest = own_options(argv)
    cfg, work = configure(rest)
    artifacts.ensure_output_dirs(cfg, ("results",))
    artifacts.ensure_output_dirs(work)
    runtime.seed_everything(TRUNK_SEED)
    device = runtime.select_device(work.device)
    dtype = precision.head_dtype(work.head_precision, device)
    model, pool = pooled_features(work, device)
    labels = pool.labels.numpy()
    out_path = artifacts.out_path(cfg, "results", f"recipe_{Path(work.data_root).name}.json")
    result = {
        "data_root": str(work.data_root),
        "seen_classes": len(work.seen_classes),
        "images": len(pool),
        "trunk": backbone.describe_weights(work.backbone_weights, TRUNK_SEED),
        "image_size": work.image_size,
        "head_precision": precision.precision_name(dtype),
        "lr": work.lr,
        "batch_size": work.batch_size,
        "epochs": work.epochs,
        "patience": work.patience,
        "machine": common.machine(),
        "command": "python bench/bench_recipe.py " + " ".join(argv),
        "rows": earlier_rows(out_path, work, variants),
    }
    print(f"[recipe] {len(pool)} images of {len(work.seen_classes)} classes; {seeds} seeds x {variants}")
    for seed in range(seeds):
        train, val, test = (pool.subset(p) for p in draw_split(labels, work, seed))
        for variant in variants:
            outcome, seconds = train_variant(model, (train, val, test), work, device, dtype, variant, seed, rules)
            for rule, (stopped, kept_epoch, predicted) in outcome.items():
                row = {"seed": seed, "variant": variant, "rule": rule, "epochs_trained": stopped}
                row |= {"epoch_kept": kept_epoch, "seconds_per_epoch": seconds}
                row |= scores(test.labels.numpy(), predicted)
                result["rows"].append(row)
            line = ", ".join(
                f"{r} {scores(test.labels.numpy(), o[2])['accuracy']:.4f}@{o[0]}" for r, o in outcome.items()
            )
            print(f"[recipe] seed {seed} {variant}: {line}  ({seconds:.1f} s/epoch)", flush=True)
            result["summary"] = summary_of(result["rows"])
            artifacts.save_json(out_path, result)
    print_summary(result["summary"])
    print(f"written to {out_path}")
    return result


def main(argv=None):
    return run(sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":
    runtime.run_main(main)
