"""Benchmark: the lab's fast paths against the original approach, measured side by side in one run, and the
lab's stages at FlowCamNet size.

Reads a data root (default ../shared/data/ndsb9, the 5,665 real plankton images beside the repository) and runs
the pipeline on it in a scratch folder (your own artifacts are not touched); the scale section writes synthetic
files there too (bench/scale.py). Prints a table and writes results/benchmark.json under output_dir, rewritten
after each measurement, so a stopped run keeps the rows it measured (`finished` says whether it ran to the end). The
machine's CPU features (AVX2, AVX512-BF16, AMX) are named, and each target is applied where it holds: a row
reads met, MISSED (with its reason), n/a here (with the reason it does not apply) or info.

    python bench/bench_pipeline.py                                   # ndsb9, about 25 minutes on 2 cores
    python bench/bench_pipeline.py --data_root=/data/imgs --seen_classes="[...]" --unseen_classes="[...]"
    python bench/bench_pipeline.py --only=map,head_precision         # some measurements (names: MEASUREMENTS)
    python bench/bench_pipeline.py --headline                        # headline rows, real sizes (make bench-quick)
    python bench/bench_pipeline.py --quick                           # tiny sizes: a smoke test, not a benchmark
"""

import contextlib
import functools
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import backbone  # noqa: E402
import compute_average_distances  # noqa: E402
import lab  # noqa: E402
import run_pipeline  # noqa: E402
from bench import common, legacy, map_variants, scale  # noqa: E402
from bench.common import information, not_here, verdict  # noqa: E402
from bench.targets import TARGETS, TRUNK_BF16  # noqa: E402
from lab import (  # noqa: E402
    artifacts,
    cached_features,
    checkpoint,
    config,
    data_folders,
    embedding_files,
    hardware,
    head_training,
    image_io,
    output_lock,
    precision,
    progress,
    runtime,
    splitting,
    thread_choice,
    trunk_cache,
)

NDSB9 = ROOT.parent / "shared" / "data" / "ndsb9"
NDSB9_SEEN = [
    "diatom_chain_string",
    "protist_noctiluca",
    "acantharia_protist",
    "copepod_cyclopoid_oithona",
    "chaetognath_sagitta",
    "hydromedusae_solmaris",
]
NDSB9_UNSEEN = ["diatom_chain_tube", "trichodesmium_tuft", "radiolarian_colony"]
FULL = {
    "trunk_images": 256,
    "rounds": 5,
    "batch_sizes": (32, 64, 128, 256),
    "original_batches": 7,
    "head_epochs": 15,
    "head_seeds": 3,
    "loader_images": 3000,
    "map_samples_per_split": 700,
    "dist_small": 5000,
    "dist_large": 20000,
    "cache_small": 5000,
    "cache_large": 20000,
    "cache_image_size": 64,
    # predict.py's chunks are 1,000 images: 2 against 10 chunks shows what grows with the folder; larger samples
    # cost minutes more on a CPU without native bf16 (predict.py ran 99-116 images/s on the AVX2 stand-in)
    "predict_small": 2000,
    "predict_large": 10000,
}
QUICK = {
    "trunk_images": 32,
    "rounds": 1,
    "batch_sizes": (8, 16),
    "original_batches": 2,
    "head_epochs": 2,
    "head_seeds": 1,
    "loader_images": 64,
    "map_samples_per_split": 60,
    "dist_small": 300,
    "dist_large": 1200,
    "cache_small": 40,
    "cache_large": 160,
    "cache_image_size": 32,
    "predict_small": 40,
    "predict_large": 160,
}
QUICK_OVERRIDES = [
    "--max_images_per_class=24",
    "--image_size=64",
    "--epochs=2",
    "--umap_samples_per_split=60",
    "--transfer_repeats=1",
    "--num_workers=0",
]
TRAINED_STAGES = ("split", "train", "evaluate", "embed")  # what the measurements need; --quick runs only these


# --------------------------------------------------------------------------- what the measurements share
class Run:
    """The benchmark's settings and scratch folder, and (made on first use) the trained model."""

    def __init__(self, argv, quick, scratch):
        self.quick, self.scratch, self.sizes = quick, Path(scratch), QUICK if quick else FULL
        self.argv = argv + [f"--output_dir={str(scratch)!r}"]
        self.pipeline_seconds = None
        self.measured = {}  # raw results of earlier measurements, for the extrapolation
        self.headline = False  # make bench-quick: some measurements shorten themselves

    def run_stages(self, names):
        seconds = {}
        for name, module in run_pipeline.STAGES:
            if name in names:
                print(f"\n=== [bench] {name}", flush=True)
                seconds[name] = common.timed(module.main, self.argv)[1]
        output_lock.release_locks()  # fresh processes that time a stage must be able to take the output folder
        return seconds

    @functools.cached_property
    def trained(self):
        if self.pipeline_seconds is None:
            self.run_stages(TRAINED_STAGES)
        trained = checkpoint.load_trained(config.load_config(self.argv))
        cfg, ckpt, model, split, device = trained.cfg, trained.ckpt, trained.model, trained.split, trained.device
        paths = splitting.absolute_paths(cfg, split[split["split"] == "train"]["path"])
        images = [
            image_io.image_tensor(image_io.load_rgb(p), cfg.image_size) for p in paths[: self.sizes["trunk_images"]]
        ]
        batches = [
            torch.stack(images[i : i + cfg.batch_size]).contiguous(memory_format=torch.channels_last)
            for i in range(0, len(images), cfg.batch_size)
        ]
        return SimpleNamespace(
            cfg=cfg,
            ckpt=ckpt,
            model=model,
            split=split,
            device=device,
            paths=paths,
            batches=batches,
            auto_dtype=precision.trunk_dtype(cfg.precision, device),
        )


def native_bf16(device):
    """Whether bf16 arithmetic is native here: a CUDA GPU with bf16, or a CPU with AVX512-BF16 or AMX."""
    return torch.cuda.is_bf16_supported() if device.type == "cuda" else precision.cpu_supports_bf16()


def trunk_bf16_target(device):
    """The trunk's bf16 target for this kind of machine (bench/targets.py), or None where bf16 is not native."""
    return TRUNK_BF16["gpu" if device.type == "cuda" else hardware.cpu_kind()]


def trunk_pass(trunk, batches, device, dtype):
    """A callable: the trunk over every batch (autocast to dtype, or fp32); its outputs kept in `last`."""
    autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()

    def work():
        with torch.no_grad(), autocast:
            work.last = torch.cat([trunk(x.to(device)).float().cpu() for x in batches])

    return work


def sync_for(device):
    return torch.cuda.synchronize if device.type == "cuda" else None


# --------------------------------------------------------------------------- 1. the pipeline
def measure_pipeline(run):
    if run.quick:
        run.pipeline_seconds = run.run_stages(TRAINED_STAGES)
        return run.pipeline_seconds, [
            not_here(
                "end to end",
                "split, train, evaluate, embed only",
                None,
                str(TARGETS["end to end"]),
                "s",
                "--quick runs only the stages the measurements need",
            )
        ]
    timings = run_pipeline.run(run.argv)
    output_lock.release_locks()
    run.pipeline_seconds = dict(zip(timings["stage"], timings["seconds"]))
    total = run.pipeline_seconds["total"]
    history = artifacts.out_path(config.load_config(run.argv), "results", "train_history.csv")
    epochs = artifacts.read_csv(history, ())["seconds"]
    reason = (
        f"train took {run.pipeline_seconds['train']:.0f} s: {len(epochs)} epochs of {epochs.min():.1f} to "
        f"{epochs.max():.1f} s (median {epochs.median():.1f}); an epoch far above the fastest is the machine's "
        f"other load stalling torch's threads (load average {common.load_average()})"
    )
    target = TARGETS["end to end"]
    return run.pipeline_seconds, [
        verdict(
            "end to end",
            "full pipeline, per stage and total",
            round(total, 1),
            str(target),
            target.met(total),
            "s",
            reason,
        )
    ]


# --------------------------------------------------------------------------- 2. the trunk pass
def measure_trunk(run):
    """Reduced precision vs fp32 (wall clock on the pipeline's threads, and CPU time on one thread), accuracy,
    and the BN-folded channels-last trunk vs the original module."""
    t = run.trained
    reduced = t.auto_dtype or (torch.bfloat16 if t.device.type == "cpu" else torch.float16)
    fused = backbone.inference_trunk(t.model.trunk).to(t.device)
    n = sum(len(b) for b in t.batches)
    passes = {
        "fp32": trunk_pass(fused, t.batches, t.device, None),
        "reduced": trunk_pass(fused, t.batches, t.device, reduced),
        "original": trunk_pass(t.model.trunk.to(t.device), [b.contiguous() for b in t.batches], t.device, None),
    }
    native = native_bf16(t.device) or reduced == torch.float16
    rounds = run.sizes["rounds"] if native else 1  # emulated bf16 is ~8x slower: one round says enough
    wall = common.best_rates(passes, n, rounds, sync=sync_for(t.device))
    cpu = (
        common.best_rates({k: passes[k] for k in ("fp32", "reduced")}, n, rounds, single_thread=True)
        if t.device.type == "cpu" and native
        else {}
    )
    with torch.no_grad():
        e32 = t.model.head(passes["fp32"].last.to(t.device))[1].float()
        e_red = t.model.head(passes["reduced"].last.to(t.device))[1].float()
    cosine = torch.nn.functional.cosine_similarity(e32, e_red, dim=1, eps=1e-12).mean().item()
    acc_red, acc_32 = reduced_test_accuracy(t, reduced)
    raw = {
        "reduced_dtype": str(reduced),
        "wall_images_per_s": wall,
        "one_thread_cpu_images_per_s": cpu,
        "embedding_cosine": cosine,
        "test_accuracy_fp32": acc_32,
        "test_accuracy_reduced": acc_red,
        "auto_precision_here": precision.precision_name(t.auto_dtype),
    }
    name = str(reduced)[6:]
    wall_ratio = wall["reduced"] / wall["fp32"]
    compared = (
        f"{name} vs fp32, images/s, wall on {torch.get_num_threads()} threads ({wall['reduced']:.0f} vs "
        f"{wall['fp32']:.0f}: {wall_ratio:.2f}x)"
    )
    target = trunk_bf16_target(t.device)
    kind = "GPU" if t.device.type == "cuda" else f"{hardware.cpu_kind()} CPU"
    if cpu and target:
        ratio = cpu["reduced"] / cpu["fp32"]
        compared += f"; CPU time on 1 thread ({cpu['reduced']:.0f} vs {cpu['fp32']:.0f}): {ratio:.2f}x"
        rows = [
            verdict(
                "trunk pass",
                compared,
                round(ratio, 2),
                f"{target} ({kind}, 1 thread, CPU time)",
                target.met(ratio),
                "x",
                "below target",
            )
        ]
    elif native and target:
        rows = [
            verdict(
                "trunk pass",
                compared,
                round(wall_ratio, 2),
                f"{target} ({kind})",
                target.met(wall_ratio),
                "x",
                "below target",
            )
        ]
    else:
        rows = [
            not_here(
                "trunk pass",
                compared,
                round(wall_ratio, 2),
                "none on this CPU kind",
                "x",
                f"no native bf16 here ({hardware.describe()}): oneDNN emulates it, so precision=auto keeps fp32",
            )
        ]
    rows.append(
        verdict(
            "trunk pass accuracy",
            "reduced vs fp32: embedding cosine, test accuracy points",
            f"{cosine:.4f}, {100 * (acc_red - acc_32):+.2f}",
            f"{TARGETS['trunk pass accuracy: cosine']}, {TARGETS['trunk pass accuracy: points']}",
            TARGETS["trunk pass accuracy: cosine"].met(cosine)
            and TARGETS["trunk pass accuracy: points"].met(100 * (acc_red - acc_32)),
            "",
            "reduced precision changes predictions",
        )
    )
    rows.append(
        information(
            "trunk module",
            f"BN-folded channels-last vs original module, fp32 images/s ({wall['fp32']:.0f} vs {wall['original']:.0f})",
            round(wall["fp32"] / wall["original"], 2),
            "x",
        )
    )
    run.measured["trunk_images_per_s"] = wall["reduced" if t.auto_dtype else "fp32"]
    return raw, rows


def reduced_test_accuracy(t, reduced):
    """(test accuracy of the head on trunk features computed in `reduced`, the pipeline's fp32-or-auto one)."""
    test_rows = t.split[t.split["split"] == "test"].reset_index(drop=True)
    feats, ok = trunk_cache.trunk_features(
        t.cfg, t.model.trunk, test_rows, "test_reduced", t.ckpt["weights"], t.device, reduced
    )
    data = cached_features.CachedSplit(feats, ok, [t.cfg.seen_classes.index(c) for c in test_rows["label"]])
    predicted = cached_features.head_outputs(t.model, data, t.device, t.cfg.batch_size)[0].argmax(1)
    reference = json.loads(artifacts.out_path(t.cfg, "results", "test_metrics.json").read_text())["accuracy"]
    return float((predicted == data.labels.numpy()).mean()), reference


# --------------------------------------------------------------------------- 3. trunk efficiency
def matmul(dtype, device, n=3072, reps=4):
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return lambda: [a @ b for _ in range(reps)], 2 * n**3 * reps


def measure_efficiency(run):
    """Achieved GFLOP/s of the trunk against a large matmul of the same dtype, measured in turn. Where that
    matmul runs on AMX (bf16 on a CPU with AMX), it is information only: a 3x3 convolution on 16 x 16 maps
    cannot reach AMX GEMM speed."""
    from torch.utils.flop_counter import FlopCounterMode

    t = run.trained
    fused = backbone.inference_trunk(t.model.trunk)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fused(torch.randn(1, 3, t.cfg.image_size, t.cfg.image_size))
    flops = counter.get_total_flops()
    fused.to(t.device)
    dtype = t.auto_dtype or torch.float32
    mm, mm_flops = matmul(dtype, t.device)
    n = sum(len(b) for b in t.batches)
    rates = common.best_rates(
        {"trunk": trunk_pass(fused, t.batches, t.device, t.auto_dtype), "matmul": mm},
        1,
        run.sizes["rounds"],
        sync=sync_for(t.device),
    )
    achieved, peak = flops * n * rates["trunk"] / 1e9, mm_flops * rates["matmul"] / 1e9
    raw = {"gflop_per_image": flops / 1e9, "achieved_gflops": achieved, "matmul_gflops": peak, "dtype": str(dtype)}
    compared = f"achieved GFLOP/s / matmul GFLOP/s ({str(dtype)[6:]}: {achieved:.0f} / {peak:.0f})"
    on_amx = t.device.type == "cpu" and dtype == torch.bfloat16 and hardware.cpu_features()["amx_bf16"]
    if on_amx:
        return raw, [
            information(
                "trunk efficiency",
                compared,
                round(achieved / peak, 2),
                "",
                "the bf16 matmul runs on AMX, which small 3x3 convolutions cannot match",
            )
        ]
    return raw, [
        verdict(
            "trunk efficiency",
            compared,
            round(achieved / peak, 2),
            str(TARGETS["trunk efficiency"]),
            TARGETS["trunk efficiency"].met(achieved / peak),
            "",
            "small convolutions do not reach GEMM speed",
        )
    ]


# --------------------------------------------------------------------------- 4. trunk settings (the bf16 gap)
def measure_trunk_settings(run):
    """What layout, batch size and oneDNN ISA do to fp32 and bf16, on one thread in CPU time (information)."""
    t = run.trained
    if t.device.type != "cpu" or not precision.cpu_supports_bf16():
        return {}, [
            not_here(
                "trunk settings",
                "bf16 vs fp32 by layout and batch size",
                None,
                "(information)",
                "",
                "measured only on a CPU with native bf16",
            )
        ]
    images = torch.cat(t.batches)
    fused = backbone.inference_trunk(t.model.trunk)
    plain = backbone.inference_trunk(t.model.trunk).to(memory_format=torch.contiguous_format)
    variants = {}
    for size in run.sizes["batch_sizes"]:
        for layout, trunk in (("channels_last", fused), ("contiguous", plain)):
            shaped = [
                b.contiguous(
                    memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format
                )
                for b in images.split(size)
            ]
            for dtype in (None, torch.bfloat16):
                variants[(layout, size, precision.precision_name(dtype))] = trunk_pass(trunk, shaped, t.device, dtype)
    # one round after the warm-up: 16 variants, information only (two rounds cost the full run 40 s more)
    rates = common.best_rates(variants, len(images), 1, single_thread=True)
    table = {
        f"{layout} batch {size}": {"fp32": rates[(layout, size, "fp32")], "bf16": rates[(layout, size, "bf16")]}
        for layout, size, _ in variants
    }
    amx = hardware.cpu_features()["amx_bf16"] and not run.quick  # --quick: no fresh process for it
    without_amx = bf16_ratio_without_amx(len(images), t.cfg.image_size) if amx else None
    best = max(table, key=lambda k: table[k]["bf16"])
    summary = "; ".join(f"{k}: {v['bf16'] / v['fp32']:.2f}x" for k, v in table.items())
    rows = [
        information(
            "trunk settings",
            f"bf16/fp32 by layout and batch, 1 thread, CPU time: {summary}; fastest "
            f"bf16: {best} ({table[best]['bf16']:.0f} images/s)",
            round(table[best]["bf16"] / table[best]["fp32"], 2),
            "x",
        )
    ]
    if without_amx:
        rows.append(
            information(
                "bf16 without AMX",
                f"oneDNN limited to AVX512-BF16 (ONEDNN_MAX_CPU_ISA), bf16 vs fp32 "
                f"({without_amx['bf16']:.0f} vs {without_amx['fp32']:.0f} images/s, 1 thread)",
                round(without_amx["bf16"] / without_amx["fp32"], 2),
                "x",
            )
        )
    return {"one_thread_cpu_images_per_s": table, "without_amx": without_amx}, rows


def bf16_ratio_without_amx(n, image_size):
    return common.run_child(
        f"from bench.bench_pipeline import isa_child; isa_child({n}, {image_size})",
        env={"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"},
    )


def isa_child(n, image_size):
    """In a fresh process (oneDNN's ISA is fixed at start): fp32 and bf16 images/s of a random trunk, 1 thread."""
    trunk = backbone.inference_trunk(backbone.build_trunk(None, 0))
    batches = list(torch.randn(n, 3, image_size, image_size).contiguous(memory_format=torch.channels_last).split(64))
    cpu = torch.device("cpu")
    print(
        json.dumps(
            common.best_rates(
                {
                    "fp32": trunk_pass(trunk, batches, cpu, None),
                    "bf16": trunk_pass(trunk, batches, cpu, torch.bfloat16),
                },
                n,
                2,
                single_thread=True,
            )
        )
    )


# --------------------------------------------------------------------------- 5. head training
def measure_head_training(run):
    """An epoch on cached features (the head in its automatic precision) vs the original kind of step."""
    t = run.trained
    data = cached_train(t)
    head = precision.head_dtype(t.cfg.head_precision, t.device)
    model = checkpoint.model_from_checkpoint(t.ckpt, t.cfg).to(t.device)
    optimizer = head_training.adam(model, t.cfg.lr)

    def epoch():
        return head_training.run_epoch(model, data, t.device, t.cfg.batch_size, optimizer, dtype=head)

    with thread_choice.chosen(t.cfg.cpu_threads):  # as train.py trains it
        ours = common.best_rates({"cached": epoch}, len(data), run.sizes["rounds"])["cached"]
    labels = [t.cfg.seen_classes.index(c) for c in t.split[t.split["split"] == "train"]["label"]]
    original = legacy.original_training_steps(
        checkpoint.model_from_checkpoint(t.ckpt, t.cfg), t.paths, labels, t.cfg, t.device, run.sizes["original_batches"]
    )
    name = precision.precision_name(head)
    run.measured["head_epoch_images_per_s"] = ours
    return {"cached_epoch_images_per_s": ours, "head_precision": name, "original_step_images_per_s": original}, [
        verdict(
            "head training epoch",
            f"cached features ({name} head) vs original step, images/s ({ours:.0f} vs {original:.0f})",
            round(ours / original, 1),
            str(TARGETS["head training epoch"]),
            TARGETS["head training epoch"].met(ours / original),
            "x",
            "the head's two 64-channel convolutions cost ~0.1 GFLOP per image against ~1 for the trunk",
        )
    ]


def cached_train(t, names=("train",)):
    dtype = checkpoint.trunk_dtype(t.ckpt, t.device)
    data = trunk_cache.prepare(t.cfg, t.device, t.split, t.model, t.ckpt["weights"], dtype, names=names)
    return data[names[0]] if len(names) == 1 else data


def fresh_head(t, seed):
    torch.manual_seed(seed)
    model = backbone.PlanktonNet(
        len(t.ckpt["classes"]), t.cfg.image_size, None, t.cfg.seed, t.cfg.embedding_dim, t.cfg.dropout
    )
    model.trunk.load_state_dict(t.model.trunk.state_dict())
    model.to(t.device)
    return model, head_training.adam(model, t.cfg.lr)


def train_heads_side_by_side(t, dtypes, epochs, data, seed):
    """A fresh head per dtype (same initial weights and shuffles), trained epoch by epoch in turn on one thread,
    each keeping its best validation epoch as train.py does. Returns {name: (test accuracy, images per CPU second
    of its fastest epoch)}: on one thread, in that thread's CPU time, a shared machine's load cannot stall it."""
    heads = {name: fresh_head(t, seed) for name in dtypes}
    best = {name: (math.inf, None, 0.0) for name in dtypes}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for epoch in range(1, epochs + 1):
            for name, dtype in dtypes.items():
                model, optimizer = heads[name]
                order = torch.randperm(len(data["train"]), generator=torch.Generator().manual_seed(seed + epoch))
                start = time.thread_time()
                head_training.run_epoch(model, data["train"], t.device, t.cfg.batch_size, optimizer, order, dtype=dtype)
                rate = len(data["train"]) / max(time.thread_time() - start, 1e-9)
                val_loss, _ = head_training.run_epoch(model, data["val"], t.device, t.cfg.batch_size, dtype=dtype)
                loss, state, fastest = best[name]
                if val_loss < loss:
                    loss, state = val_loss, {k: v.clone() for k, v in model.state_dict().items()}
                best[name] = (loss, state, max(fastest, rate))
    finally:
        torch.set_num_threads(threads)
    out = {}
    for name, (_, state, rate) in best.items():
        model = heads[name][0]
        model.load_state_dict(state)
        predicted = cached_features.head_outputs(model, data["test"], t.device, t.cfg.batch_size)[0].argmax(1)
        out[name] = (float((predicted == data["test"].labels.numpy()).mean()), rate)
    return out


def measure_head_precision(run):
    """The head trained in bf16 autocast vs fp32, side by side over a few seeds: epoch speed and test accuracy
    (the mean over seeds: one training run's accuracy moves by a point or so with the seed alone)."""
    t = run.trained
    if not native_bf16(t.device):
        return {}, [
            not_here(
                "head bf16",
                "bf16 vs fp32 head epoch and test accuracy",
                None,
                f"{TARGETS['head bf16 speed']}, {TARGETS['head bf16 accuracy']}",
                "",
                "no native bf16 (no AVX512-BF16/AMX): head_precision=auto trains the head in fp32",
            )
        ]
    epochs, seeds = run.sizes["head_epochs"], range(t.cfg.seed, t.cfg.seed + run.sizes["head_seeds"])
    data = cached_train(t, ("train", "val", "test"))
    runs = [train_heads_side_by_side(t, {"fp32": None, "bf16": torch.bfloat16}, epochs, data, seed) for seed in seeds]
    accuracy = {name: [r[name][0] for r in runs] for name in ("fp32", "bf16")}
    rate = {name: max(r[name][1] for r in runs) for name in ("fp32", "bf16")}
    speed = rate["bf16"] / rate["fp32"]
    points = 100 * (np.mean(accuracy["bf16"]) - np.mean(accuracy["fp32"]))
    per_seed = ", ".join(f"{100 * a:.2f}/{100 * b:.2f}" for a, b in zip(accuracy["bf16"], accuracy["fp32"]))
    raw = {"epochs": epochs, "seeds": list(seeds), "test_accuracy": accuracy, "one_thread_images_per_cpu_s": rate}
    return raw, [
        verdict(
            "head bf16 speed",
            f"bf16 vs fp32 head epoch on cached features, 1 thread, CPU time ({rate['bf16']:.0f}"
            f" vs {rate['fp32']:.0f} images/s)",
            round(speed, 2),
            str(TARGETS["head bf16 speed"]),
            TARGETS["head bf16 speed"].met(speed),
            "x",
            "bf16 does not pay here",
        ),
        verdict(
            "head bf16 accuracy",
            f"test accuracy after {epochs} epochs, bf16 vs fp32 head, mean of "
            f"{len(runs)} seed(s) (per seed, bf16/fp32 %: {per_seed})",
            f"{points:+.2f}",
            str(TARGETS["head bf16 accuracy"]),
            TARGETS["head bf16 accuracy"].met(points),
            "points",
            "bf16 rounding changes what the head learns",
        ),
    ]


# --------------------------------------------------------------------------- 5b. the head under load
LABS = " (the lab's)"


AUTO = "auto (cpu_threads='auto')"


def thread_settings():
    """{name: (OpenMP environment, cpu_threads)} of the alternatives, the environment fixed before torch loads in
    a fresh process: one thread; torch's own thread count with OpenMP's threads spinning while they wait
    (libgomp's default when OMP_WAIT_POLICY is unset: None here) or asleep (passive); and cpu_threads="auto",
    which times one thread against torch's count as the head trains (lab/thread_choice.py)."""
    cores = torch.get_num_threads()
    return {
        "1 thread": ({"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": None}, 1),
        f"{cores} threads, spinning": ({"OMP_NUM_THREADS": str(cores), "OMP_WAIT_POLICY": None}, cores),
        f"{cores} threads, passive": ({"OMP_NUM_THREADS": str(cores), "OMP_WAIT_POLICY": "PASSIVE"}, cores),
        AUTO: ({"OMP_NUM_THREADS": str(cores), "OMP_WAIT_POLICY": None}, "auto"),
    }


def labs_setting(settings, head_setting):
    """The name of the setting the lab's head trains with here: cpu_threads (the config's) and OpenMP's wait
    policy as the user left it; None where that is none of them."""
    passive = os.environ.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE"
    threads = head_setting if head_setting == "auto" else min(int(head_setting), torch.get_num_threads())
    for name, (env, setting) in settings.items():
        if setting == threads and (threads == 1 or (env["OMP_WAIT_POLICY"] == "PASSIVE") == passive):
            return name
    return None


def probe_cost(fast, slow, batch_size):
    """The share of a run that cpu_threads="auto" spends timing the slower count, from two measured rates
    (images/s): PROBE_BATCHES + 1 batches on the slower count, every KEEP_SECONDS or as long as the rule of
    lab/thread_choice.py holds the choice."""
    lost = (thread_choice.PROBE_BATCHES + 1) * batch_size * (1 / slow - 1 / fast)
    return lost / thread_choice.keep_seconds_after(lost)


@contextlib.contextmanager
def busy_processes(n):
    """n processes each spinning a Python loop on a core (another job on a shared machine), killed when the block
    ends, however it ends. They stay in the benchmark's session: where Linux groups processes by session for
    fairness (autogroup), a job of another session would get the same share of the CPU as the benchmark's whole
    session, whatever its nice value; in one session, the benchmark's threads and the load meet as equals."""
    procs = []
    try:
        for _ in range(n):
            procs.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))
        yield
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()


def with_openmp(env, code):
    """Python code that sets the OpenMP environment `env` (None: unset) and then runs `code`, for a fresh process:
    before anything loads torch (libgomp reads it then, once)."""
    sets = "; ".join(
        f"os.environ.pop({name!r}, None)" if value is None else f"os.environ[{name!r}] = {value!r}"
        for name, value in env.items()
    )
    return f"import os; {sets}; {code}"


TRUNK_ROUNDS = 3  # the trunk's passes per child (a few seconds each), whatever the head's rounds


def under_load_child(argv, quick, scratch, rounds, head_setting, with_trunk=True):
    """In a fresh process started by with_openmp: median images/s of the head's epoch (cached features, its
    automatic precision, as in head_training, on cpu_threads=head_setting) and, with_trunk, of the trunk pass (its
    automatic precision, on torch's threads), with the wait policy that process's OpenMP environment gives. With "auto",
    the warm-up epoch holds the first probe, and the measured epochs (well within KEEP_SECONDS) the choice."""
    bench = Run(argv, quick, scratch)
    bench.pipeline_seconds = {}  # the parent trained the model and cached the features: only read them here
    t = bench.trained
    data = cached_train(t)
    head = precision.head_dtype(t.cfg.head_precision, t.device)
    model = checkpoint.model_from_checkpoint(t.ckpt, t.cfg).to(t.device)
    optimizer = head_training.adam(model, t.cfg.lr)
    work = {
        "head": (
            len(data),
            lambda: head_training.run_epoch(model, data, t.device, t.cfg.batch_size, optimizer, dtype=head),
        ),
    }
    if with_trunk:
        work["trunk"] = (
            sum(len(b) for b in t.batches),
            trunk_pass(backbone.inference_trunk(t.model.trunk).to(t.device), t.batches, t.device, t.auto_dtype),
        )
    rates = {name: [] for name in work}
    threads = torch.get_num_threads()
    with thread_choice.chosen(head_setting) as choice:  # the head's batches set their own count in it
        for round_ in range(rounds + 1):  # the first round a warm-up: oneDNN picks and caches its kernels
            for name, (items, fn) in work.items():
                if name == "trunk" and round_ > TRUNK_ROUNDS:
                    continue
                torch.set_num_threads(threads)  # the trunk on torch's threads, whatever the head's last batch ran on
                start = time.perf_counter()
                fn()
                rates[name].append(items / (time.perf_counter() - start))
    rates = {name: r[1:] for name, r in rates.items()}
    medians = {name: float(np.median(r)) for name, r in rates.items()}  # a steady load: the typical epoch, not the best
    print(
        json.dumps(
            {
                **medians,
                "threads": torch.get_num_threads(),
                "wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                "cpu_threads": choice.describe(),
            }
        )
    )


def measure_head_load(run):
    """The head's epoch and the trunk pass, idle and beside one and two busy processes, in each thread setting
    (thread_settings): wall clock, as a user waits for it. Every setting meets each load in turn. make bench-quick
    (--headline) leaves out two busy processes and the passive wait."""
    t = run.trained
    cached_train(t)  # the children read the cached features
    settings = thread_settings()
    short = run.quick or run.headline
    if short:
        settings = {name: value for name, value in settings.items() if value[0]["OMP_WAIT_POLICY"] is None}
    loads = (0, 1) if short else (0, 1, 2)
    rounds = {load: head_load_rounds(run, load) for load in loads}
    measured = {name: {} for name in settings}
    for load in loads:
        print(f"[bench] head under load: {load} busy process(es) beside it, {len(settings)} settings", flush=True)
        with busy_processes(load):
            for name, (env, head_setting) in settings.items():
                # the trunk alone, on the fixed settings (the "auto" child times the head only); idle and 1 busy
                trunk = name != AUTO and load < 2
                code = (
                    "from bench.bench_pipeline import under_load_child; "
                    f"under_load_child({run.argv[:-1]!r}, {run.quick!r}, {str(run.scratch)!r}, {rounds[load]}, "
                    f"{head_setting!r}, {trunk!r})"
                )
                what = f"head under load: {name}, {load} busy"
                measured[name][load] = common.run_child(with_openmp(env, code), what=what)
                print(f"[bench] {what}: head {measured[name][load]['head']:.0f} images/s", flush=True)
    return head_load_rows(run, settings, loads, rounds, measured)


def head_load_rounds(run, load):
    """The head's measured epochs per child (after a warm-up epoch). Idle, 5: the idle target (0.95x) compares two
    settings within a few per cent, and medians of 3 were seen 7 % apart. Under load, 3: the busy target (0.8x) is
    met or missed by far more than their noise, and a loaded epoch is slow (up to 11 s in fp32). make bench-quick
    (--headline) the same: with medians of 3 idle it read 0.955x at f288f08, at the target's edge."""
    if run.quick:
        return 1
    return 3 if load > 0 else 5


def epochs_text(rounds, loads):
    if len({rounds[load] for load in loads}) == 1:
        return f"median of {rounds[loads[0]]} epochs"
    return f"median of {rounds[loads[0]]} epochs idle, {rounds[loads[-1]]} under load"


def head_load_rows(run, settings, loads, rounds, measured):
    ours = labs_setting(settings, run.trained.cfg.cpu_threads)
    one = "1 thread"
    spinning = next(  # torch's threads, spinning: the setting before issue 30
        name for name, (env, value) in settings.items() if name not in (one, AUTO) and not env["OMP_WAIT_POLICY"]
    )
    table = "; ".join(
        f"{name}{LABS if name == ours else ''} " + " / ".join(f"{by_load[load]['head']:.0f}" for load in loads)
        for name, by_load in measured.items()
    )
    trunk = "; ".join(
        f"{name} " + " / ".join(f"{by_load[load]['trunk']:.0f}" for load in loads[:2])
        for name, by_load in measured.items()
        if "trunk" in by_load[0]
    )
    loads_text = " / ".join({0: "idle", 1: "1 busy", 2: "2 busy"}[load] for load in loads)
    raw = {"loads": list(loads), "rounds": rounds, "settings": settings, "labs_setting": ours, "measured": measured}
    if ours is None or run.quick:
        why = "--quick: tiny sizes" if run.quick else "OMP_NUM_THREADS or OMP_WAIT_POLICY set to none of these"
        return raw, [
            not_here("head under load", f"head images/s, {loads_text}: {table}", None, "(information)", "", why)
        ]
    busy_ratio = measured[ours][1]["head"] / measured[one][0]["head"]
    idle_ratio = measured[ours][0]["head"] / measured[spinning][0]["head"]
    target, idle_target = TARGETS["head under load"], TARGETS["head under load: idle"]
    rows = [
        verdict(
            "head under load",
            f"the lab's setting ({ours}) beside 1 busy process vs 1 thread idle; head images/s, "
            f"{epochs_text(rounds, loads)}, {loads_text}: {table}",
            round(busy_ratio, 2),
            str(target),
            target.met(busy_ratio),
            "x",
            "the head's threads lose their turns to the busy process",
        ),
        verdict(
            "head idle",
            f"the lab's setting ({ours}) vs {spinning} (before issue 30), idle, head images/s "
            f"({measured[ours][0]['head']:.0f} vs {measured[spinning][0]['head']:.0f})",
            round(idle_ratio, 2),
            str(idle_target),
            idle_target.met(idle_ratio),
            "x",
            "the idle head is slower than on torch's threads spinning, as before issue 30",
        ),
        information(
            "trunk under load",
            f"trunk pass images/s (its automatic precision), idle / 1 busy: {trunk}",
            round(measured[spinning][1]["trunk"] / measured[spinning][0]["trunk"], 2),
            "x",
            f"the trunk alone on fixed settings: {spinning} beside 1 busy process vs idle (the lab's trunk pass runs "
            "on cpu_threads as the head does)",
        ),
    ]
    if AUTO in measured:
        by_load = {load: sorted((measured[one][load]["head"], measured[spinning][load]["head"])) for load in loads}
        batch = run.trained.cfg.batch_size
        costs = " / ".join(f"{100 * probe_cost(by_load[load][1], by_load[load][0], batch):.1f} %" for load in loads)
        chosen = " / ".join(measured[AUTO][load].get("cpu_threads", "?") for load in loads)
        rows.append(
            information(
                "head threads: auto",
                f"what cpu_threads='auto' ran on, {loads_text}: {chosen}; the share of a run it spends timing the "
                f"slower count ({thread_choice.PROBE_BATCHES + 1} batches every {thread_choice.KEEP_SECONDS:.0f} s, "
                f"or less often where they would cost over {100 * thread_choice.MAX_PROBE_SHARE:.0f} %), "
                f"from the 1-thread and {spinning} rates: {costs}",
                f"{100 * probe_cost(*reversed(by_load[max(loads[:2])]), batch):.1f} %",
                "",
                "beside 1 busy process",
            )
        )
    return raw, rows


# --------------------------------------------------------------------------- 6. data loading
def loader_pass(loader):
    """(images/s of a whole pass, workers' start-up included; images/s in steady state, from the first batch's
    arrival to the last, the first batch not counted: the rate a pass over many images runs at)."""
    start = time.perf_counter()
    seen, first = 0, None
    for x, _ in loader:
        if first is None:
            first, after_first = time.perf_counter(), -len(x)
        seen += len(x)
        after_first += len(x)
    end = time.perf_counter()
    whole = seen / max(end - start, 1e-9)
    return whole, (after_first / max(end - first, 1e-9) if after_first else whole)  # one batch: no steady state


def measure_loader(run):
    """The decoding workers alone vs the trunk: both in steady state and at their best of the same rounds."""
    t = run.trained
    loader = trunk_cache.trunk_loader(
        t.paths[: run.sizes["loader_images"]], t.cfg.image_size, t.cfg.batch_size, t.cfg.num_workers, t.device
    )
    passes = [loader_pass(loader) for _ in range(run.sizes["rounds"])]
    whole_ips, loader_ips = max(p[0] for p in passes), max(p[1] for p in passes)
    trunk_ips = run.measured.get("trunk_images_per_s")
    if trunk_ips is None:
        return {"loader_images_per_s": loader_ips}, [
            information("data loading", "loader alone, images/s", round(loader_ips), "images/s")
        ]
    workers = max(t.cfg.num_workers, 1)
    return {"loader_images_per_s": loader_ips, "loader_whole_pass_images_per_s": whole_ips}, [
        verdict(
            "data loading",
            f"loader alone ({t.cfg.num_workers} workers) vs trunk, images/s in steady state, best "
            f"of {len(passes)} ({loader_ips:.0f} vs {trunk_ips:.0f}; a whole pass of "
            f"{run.sizes['loader_images']} images with the workers' start-up: {whole_ips:.0f})",
            round(loader_ips / trunk_ips, 1),
            str(TARGETS["data loading"]),
            TARGETS["data loading"].met(loader_ips / trunk_ips),
            "x",
            f"{loader_ips / workers:.0f} images/s per decoding worker ({t.cfg.num_workers} on {os.cpu_count()} "
            f"cores): 3x this trunk needs {3 * trunk_ips * workers / loader_ips:.1f} workers; raise num_workers "
            f"where the cores allow",
        )
    ]


# --------------------------------------------------------------------------- 7. the 2-D map stage
LEGACY_MAP = map_variants.LEGACY_MAP


def map_stage(run, variant, samples):
    """(seconds of the whole stage in a fresh process, trustworthiness of its map, points mapped)."""
    argv = run.argv + [f"--umap_samples_per_split={samples}"]
    assert variant in map_variants.VARIANTS, variant
    call = f"import sys; sys.path.insert(0, {str(ROOT)!r}); from bench import map_variants; "
    seconds = common.wall_of_child(["-c", call + f"map_variants.run({variant!r}, {argv!r})"])
    score, points = map_trustworthiness(config.load_config(argv))
    return {"seconds": seconds, "trustworthiness": score, "points": points}


def map_trustworthiness(cfg):
    """sklearn's trustworthiness of results/umap_coordinates.csv against the standardised embeddings it maps."""
    from sklearn.manifold import trustworthiness
    from sklearn.preprocessing import StandardScaler

    coords = artifacts.read_csv(artifacts.out_path(cfg, "results", "umap_coordinates.csv"), ("split", "label", "path"))
    vectors = {}
    for s in coords["split"].unique():
        frame, x = embedding_files.load_embeddings(cfg, s)
        vectors.update({(s, p): v for p, v in zip(frame["path"], x)})
    x = StandardScaler().fit_transform(np.stack([vectors[k] for k in zip(coords["split"], coords["path"])]))
    k = min(cfg.umap_n_neighbors, len(x) // 2 - 1)
    return float(trustworthiness(x, coords[["x", "y"]].to_numpy(), n_neighbors=k)), len(x)


def measure_map(run):
    """dimensionality_reduction.py as a user runs it (a fresh process), at the demo's size: ours with numba's
    cache warm (every run after the first), ours compiling (the first run), and UMAP's own neighbour search;
    at the pipeline's full sample size too (--quick: ours only)."""
    run.trained  # noqa: B018 (a cached property: trains the model now, so that the timings below leave it out)
    demo, full = run.sizes["map_samples_per_split"], run.trained.cfg.umap_samples_per_split
    if run.quick:
        ours = map_stage(run, "ours", demo)
        compared = f"fresh process, {ours['points']} points: {ours['seconds']:.1f} s"
        return {"demo_size": {"ours": ours}}, [
            not_here(
                "2-D map stage",
                compared,
                round(ours["seconds"], 1),
                str(TARGETS["2-D map stage"]),
                "s",
                "--quick maps a few points and skips the original",
            )
        ]
    map_stage(run, "ours", demo)  # fills numba's cache, as any earlier run would have
    at_demo = {v: map_stage(run, v, demo) for v in ("ours", "ours, first run", LEGACY_MAP)}
    at_full = {v: map_stage(run, v, full) for v in ("ours", LEGACY_MAP)}
    ours, first, old = at_demo["ours"], at_demo["ours, first run"], at_demo[LEGACY_MAP]
    big_ours, big_old = at_full["ours"], at_full[LEGACY_MAP]
    drop = old["trustworthiness"] - ours["trustworthiness"]
    full_drop = big_old["trustworthiness"] - big_ours["trustworthiness"]
    return {"demo_size": at_demo, "full_size": at_full}, [
        verdict(
            "2-D map stage",
            f"whole stage, fresh process, {ours['points']} points (the demo's size): ours "
            f"{ours['seconds']:.1f} s (first run, numba compiling: {first['seconds']:.1f} s) vs UMAP's own "
            f"search {old['seconds']:.1f} s",
            round(ours["seconds"], 1),
            str(TARGETS["2-D map stage"]),
            TARGETS["2-D map stage"].met(ours["seconds"]),
            "s",
            "numba compilation or the galleries' figures",
        ),
        verdict(
            "2-D map quality",
            f"trustworthiness, ours vs UMAP's own search, {ours['points']} points "
            f"({ours['trustworthiness']:.4f} vs {old['trustworthiness']:.4f}); at {big_ours['points']} points "
            f"{big_ours['trustworthiness']:.4f} vs {big_old['trustworthiness']:.4f} "
            f"(stage {big_ours['seconds']:.1f} s vs {big_old['seconds']:.1f} s)",
            f"{-drop:+.4f}",
            str(TARGETS["2-D map quality"]),
            TARGETS["2-D map quality"].met(drop) and full_drop <= TARGETS["2-D map quality"].value,
            "",
            "the exact neighbours change the map",
        ),
    ]


# --------------------------------------------------------------------------- 8. distances
def measure_distances(run):
    """Blockwise BLAS vs brute-force cdist (equal results), and the memory added at 20,000 per class."""
    import tracemalloc

    rng = np.random.default_rng(0)
    small = [np.abs(rng.normal(m, 1, (run.sizes["dist_small"], 128))) for m in range(3)]
    ours_result, ours = common.timed(compute_average_distances.average_distances, small)
    reference, theirs = common.timed(legacy.brute_force_distances, small)
    agree = bool(
        np.allclose(ours_result["euclidean"], reference[0], rtol=1e-9)
        and np.allclose(ours_result["angular"], reference[1], rtol=1e-7)
    )
    large = [np.abs(rng.normal(m, 1, (run.sizes["dist_large"], 128))) for m in range(2)]
    tracemalloc.start()
    _, large_s = common.timed(compute_average_distances.average_distances, large)
    peak = tracemalloc.get_traced_memory()[1] / 1e6
    tracemalloc.stop()
    raw = {
        "n_small": len(small[0]),
        "ours_s": ours,
        "cdist_s": theirs,
        "agree_with_cdist": agree,
        "n_large": len(large[0]),
        "large_s": large_s,
        "large_peak_added_mb": peak,
    }
    return raw, [
        verdict(
            "average distances",
            f"ours vs brute-force cdist, {len(small[0])} per class x 3 classes ({ours:.2f} s "
            f"vs {theirs:.2f} s; equal: {agree})",
            round(theirs / ours, 2),
            str(TARGETS["average distances"]),
            TARGETS["average distances"].met(theirs / ours) and agree,
            "x",
            "below target",
        ),
        verdict(
            "distance memory",
            f"peak memory added at {len(large[0])} per class x 2 classes ({large_s:.1f} s)",
            round(peak, 1),
            str(TARGETS["distance memory"]),
            TARGETS["distance memory"].met(peak),
            "MB",
            "blocks too large",
        ),
    ]


# --------------------------------------------------------------------------- 9. trunk-cache memory
def cache_child(n, image_size, data_root, classes, out):
    """In a fresh process: the trunk pass over n images (cycling the data) -> its peak resident memory."""
    import pandas as pd

    cfg = config.load_config(
        [
            f"--data_root={data_root!r}",
            f"--output_dir={out!r}",
            f"--image_size={image_size}",
            "--backbone_weights=None",
            "--precision='fp32'",
            f"--seen_classes={classes[:2]!r}",
            f"--unseen_classes={classes[2:4]!r}",
        ]
    )
    files = sorted(f"{c}/{f}" for c in classes for f in data_folders.list_class_files(Path(data_root) / c)[0])
    rows = pd.DataFrame({"path": [files[i % len(files)] for i in range(n)], "label": "x"})
    trunk = backbone.build_trunk(None, 0)
    common.reset_peak_rss()  # importing torch peaks above the trunk pass: measure the pass's own high-water mark
    before = common.rss_mb("VmRSS")
    feats, ok = trunk_cache.trunk_features(cfg, trunk, rows, "bench", "random", torch.device("cpu"), None)
    assert feats.shape[0] == n and ok.all()
    print(json.dumps({"n": n, "peak_rss_mb": common.rss_mb("VmHWM"), "before_mb": before}))


def measure_cache_memory(run):
    t, sizes = run.trained, run.sizes
    classes = t.cfg.seen_classes + t.cfg.unseen_classes
    result = {}
    for n in (sizes["cache_small"], sizes["cache_large"]):
        out = run.scratch / f"cache{n}"
        args = (n, sizes["cache_image_size"], str(artifacts.resolve(t.cfg.data_root)), classes, str(out))
        result[n] = common.run_child(f"from bench.bench_pipeline import cache_child; cache_child(*{args!r})")
        shutil.rmtree(out, ignore_errors=True)
    small, large = result[sizes["cache_small"]], result[sizes["cache_large"]]
    growth = large["peak_rss_mb"] - small["peak_rss_mb"]
    compared = (
        f"peak RSS of the trunk pass, {sizes['cache_small']} vs {sizes['cache_large']} images at "
        f"{sizes['cache_image_size']} px ({small['peak_rss_mb']:.0f} vs {large['peak_rss_mb']:.0f} MB)"
    )
    return result, [
        verdict(
            "cache memory",
            compared,
            round(growth, 1),
            str(TARGETS["cache memory"]),
            TARGETS["cache memory"].met(growth),
            "MB",
            "features held in memory",
        )
    ]


def sample_of_links(n, data_root, classes, folder):
    """A folder of n symbolic links to the data's images, cycling through them, in sub-folders of 1,000 (as a
    cruise's export): a large new sample without copying one image."""
    root = Path(data_root)
    files = sorted(root / c / f for c in classes for f in data_folders.list_class_files(root / c)[0])
    for i in range(n):
        target = files[i % len(files)]
        link = Path(folder) / f"part{i // 1000:03d}" / f"{i:06d}_{target.name}"
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, link)
    return folder


def predict_child(argv):
    """In a fresh process: predict.py over a sample folder -> its peak resident memory and wall time."""
    import predict

    common.reset_peak_rss()  # imports peak above what predict itself holds: measure predict's own high-water mark
    before = common.rss_mb("VmRSS")
    start = time.perf_counter()
    table = predict.main(argv)
    print(
        json.dumps(
            {
                "images": int(table["images"].sum()),
                "peak_rss_mb": common.rss_mb("VmHWM"),
                "before_mb": before,
                "seconds": time.perf_counter() - start,
            }
        )
    )


def measure_predict_memory(run):
    """Peak RSS of predict.py on new samples of two sizes (made of links), with the trained model (issue #11)."""
    t, sizes = run.trained, run.sizes
    run.run_stages(("novelty",))  # predict.py's possibly_new flag needs the validation thresholds
    classes = t.cfg.seen_classes + t.cfg.unseen_classes
    result = {}
    for n in (sizes["predict_small"], sizes["predict_large"]):
        folder = sample_of_links(n, artifacts.resolve(t.cfg.data_root), classes, run.scratch / f"sample{n}")
        argv = run.argv + [f"--predict_dir={str(folder)!r}"]
        result[n] = common.run_child(f"from bench.bench_pipeline import predict_child; predict_child({argv!r})")
        shutil.rmtree(folder, ignore_errors=True)
    small, large = result[sizes["predict_small"]], result[sizes["predict_large"]]
    growth = large["peak_rss_mb"] - small["peak_rss_mb"]
    compared = (
        f"peak RSS of predict.py, {small['images']} vs {large['images']} images at {t.cfg.image_size} px "
        f"({small['peak_rss_mb']:.0f} vs {large['peak_rss_mb']:.0f} MB; "
        f"{large['images'] / large['seconds']:.0f} images/s)"
    )
    return result, [
        verdict(
            "predict memory",
            compared,
            round(growth, 1),
            str(TARGETS["predict memory"]),
            TARGETS["predict memory"].met(growth),
            "MB",
            "more than file names and embeddings (about 2.4 KB per image) grows with the sample",
        )
    ]


# --------------------------------------------------------------------------- 10. FlowCamNet size
def measure_scale(run):
    cfg = config.load_config(run.argv)
    results = scale.measure(run.scratch / "scale", run.quick, cfg.num_workers)
    run.measured["scale"] = results
    run.measured["rates"] = scale.measure_rates(cfg, (scale.QUICK if run.quick else scale.FULL)["classes"], run.quick)
    return {
        **{stage: {str(n): v for n, v in by_size.items()} for stage, by_size in results.items()},
        "rates": run.measured["rates"],
    }, scale.rows(results, run.quick)


def measure_datasets(run):
    """Every pipeline stage on ndsb9, on ndsb112 at 60 images per class and on all of ndsb112 (bench/scale.py):
    opt-in (--only=datasets), as it runs the pipeline three times."""
    run.measured["datasets"] = scale.measure_datasets(run.scratch / "datasets")
    return run.measured["datasets"], scale.dataset_rows(run.measured["datasets"])


def measure_flowcamnet(run):
    """A full FlowCamNet run (301,247 images) with every default stage, on this CPU and on the AVX2 stand-in,
    projected from the rates measured above (bench/scale.py's flowcamnet_rows)."""
    measured = run.measured
    if not {"scale", "rates"} <= set(measured):
        return {}, [not_here("FlowCamNet run", "projection", None, "(information)", "", "needs the scale measurements")]
    cfg, pipeline = config.load_config(run.argv), None
    if run.pipeline_seconds and "report" in run.pipeline_seconds:  # the whole pipeline ran here: its images
        images = len(artifacts.read_csv(artifacts.out_path(cfg, "results", "split.csv"), ("path",)))
        pipeline = {"seconds": run.pipeline_seconds, "images": images}
    datasets = measured.get("datasets")
    rows = scale.flowcamnet_rows(measured["scale"], measured["rates"], cfg, datasets, pipeline, run.quick)
    return {r["what"]: r["compared"] for r in rows}, rows


MEASUREMENTS = (
    ("pipeline", measure_pipeline),
    ("trunk", measure_trunk),
    ("efficiency", measure_efficiency),
    ("trunk_settings", measure_trunk_settings),
    ("head_training", measure_head_training),
    ("head_precision", measure_head_precision),
    ("head_load", measure_head_load),
    ("loader", measure_loader),
    ("map", measure_map),
    ("distances", measure_distances),
    ("cache_memory", measure_cache_memory),
    ("predict_memory", measure_predict_memory),
    ("scale", measure_scale),
    ("datasets", measure_datasets),
    ("flowcamnet", measure_flowcamnet),
)
OPT_IN = {"datasets"}  # run only when --only names them (the pipeline three times over: about 10 minutes)

# make bench-quick (--headline): the rows a reader looks at first, at the full run's sizes
HEADLINE = ("pipeline", "trunk", "head_training", "head_load")


# --------------------------------------------------------------------------- the run
def configure(argv):
    headline = "--headline" in argv
    quick, only, argv = common.measurement_options([a for a in argv if a != "--headline"], MEASUREMENTS)
    if headline and (quick or only):
        raise lab.LabError(
            "--headline chooses its own measurements at real sizes (make bench-quick); it cannot be combined with "
            "--quick (tiny sizes, a smoke test) or --only=... . Give one of the three."
        )
    only = HEADLINE if headline else only
    names = {a.split("=", 1)[0] for a in argv}
    base = config.load_config(argv)
    if "--data_root" not in names:
        if not NDSB9.is_dir():
            raise lab.LabError(
                f"The default benchmark data {NDSB9} is absent. Pass --data_root=... with "
                f"--seen_classes=[...] and --unseen_classes=[...] of your own data set."
            )
        argv += [f"--data_root={str(NDSB9)!r}"]
        if "--seen_classes" not in names:
            argv += [f"--seen_classes={NDSB9_SEEN!r}", f"--unseen_classes={NDSB9_UNSEEN!r}"]
    if base.backbone_weights is not None:
        try:
            backbone.build_trunk(base.backbone_weights, base.seed)
        except lab.LabError:
            print(
                "[bench] ImageNet weights unavailable (offline): timing a random trunk, which costs exactly the "
                "same; accuracies are those of a random trunk.",
                file=sys.stderr,
            )
            argv += ["--backbone_weights=None"]
    return quick, only, argv + (QUICK_OVERRIDES if quick else []), base, headline


def run(argv):
    quick, only, argv, base, headline = configure(argv)
    chosen = [name for name, _ in MEASUREMENTS if (name in only if only is not None else name not in OPT_IN)]
    raw = {"machine": common.machine(), "quick": quick, "headline": headline, "argv": argv, "measurements": chosen}
    raw["finished"] = False
    raw["rows"], raw["seconds"] = [], {}
    print(f"[bench] machine: {raw['machine']}")
    path = None
    try:
        with tempfile.TemporaryDirectory(prefix="plankton-bench-") as scratch:
            bench = Run(argv, quick, scratch)
            bench.headline = headline
            for name, measure in MEASUREMENTS:
                if name in chosen:
                    print(f"[bench] {name} ({chosen.index(name) + 1}/{len(chosen)})", flush=True)
                    with progress.heartbeat(f"bench: {name}"):  # a section that measures in-process is silent
                        (raw[name], new_rows), raw["seconds"][name] = common.timed(measure, bench)
                    raw["rows"] += new_rows
                    path = save_rows(base, raw)  # a stopped run keeps every row measured so far
            output_lock.release_locks()
        raw["finished"] = True
        path = save_rows(base, raw)
    except BaseException:
        if raw["rows"]:  # Ctrl-C or a failure: show what was measured before the error is reported
            print_table(raw["rows"], raw)
            print(f"\n[bench] stopped before the end: the {len(raw['rows'])} rows above are in {path}", flush=True)
        raise
    print_table(raw["rows"], raw)
    print(f"\nwritten to {path}")
    return raw


def save_rows(base, raw):
    """Rewrite results/benchmark.json whole (atomically) with the rows measured so far; `finished` says whether
    every chosen measurement ran. The scratch runs release every lock they hold, so the folder is taken again."""
    artifacts.ensure_output_dirs(base, ("results",))
    return artifacts.save_json(artifacts.out_path(base, "results", "benchmark.json"), raw)


def print_table(rows, raw):
    m = raw["machine"]
    print(
        f"\nBenchmark on {m['cpu']} ({m['cores']} cores, torch {m['torch']} on {m['torch_threads']} threads; CPU "
        f"features: {common.feature_summary(m['cpu_features'])}; {m['precision_rule']})"
        + ("  [--quick: tiny sizes, the figures mean nothing]" if raw["quick"] else "")
        + ("  [--headline: the headline rows only, at real sizes]" if raw.get("headline") else "")
    )
    print(f"{'what':<28} {'measured':>20}  {'target':<30} {'':<7} compared")
    for r in rows:
        unit = r["unit"] if r["unit"] in ("x", "s", "") else " " + r["unit"]
        print(
            f"{r['what']:<28} {str(r['measured']) + unit:>20}  {r['target']:<30} {r['status']:<7} {r['compared']}"
            + (f"\n{'':<28} {r['reason']}" if r["reason"] else "")
        )
    stages = ", ".join(f"{k} {v:.1f}" for k, v in (raw.get("pipeline") or {}).items())
    print(f"pipeline stages (s): {stages}")
    print("benchmark sections (s): " + ", ".join(f"{k} {v:.0f}" for k, v in raw["seconds"].items()))


def main(argv=None):
    return run(sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":
    runtime.run_main(main)
