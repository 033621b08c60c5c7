"""Benchmark: a synthetic cruise through predict.py, against the truth, and timed against one sample.

Reads ../shared/data/ndsb9 (or --data_root=... with --seen_classes / --unseen_classes). Trains the lab's model on it
once in a scratch folder (train.py, embed.py, novelty.py), or takes the model already trained in
--trained_dir=FOLDER. Then builds a cruise of --samples samples of --sample_size images from the lab's TEST split
and the unseen classes' images only (never a training or validation image), drawn within each class with
replacement by bench/bench_abundances.py's sampler (QuaPy's), seeded by --seed: compositions cycle through uniform
draws from the simplex (UPP), blooms (one taxon 80 %), near-absent taxa (two taxa at 2 images each) and even
shares; 0, 2, 5 or 10 % of each sample are images of the unseen classes; each sample a known volume (0.5 to 5 L).
The cruise is a folder of symbolic links (one per drawn image, a sub-folder per sample) in a scratch folder, and a
metadata table. predict.py runs it as a cruise (--samples=subfolders --sample_metadata=...), then the very same
images as one sample, each run from a cold chunk cache, timed.
Prints and writes results/cruise_benchmark.json under the output folder: per sample and overall, the mean
absolute error of the corrected proportions (abundance_method) and of CC's against the truth (each seen taxon's
share of the sample's images not flagged possibly new, unseen-class images that pass the flag included in the
denominator, as they are in the estimate's), how often the 95 % intervals hold the truth, the concentrations per
litre against the true ones, and the two runs' times.

    python bench/bench_cruise.py --backbone_weights=None    # ndsb9 offline: train, then 20 x 500 images twice
    python bench/bench_cruise.py --trained_dir=/tmp/run --samples=40
"""

import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import lab  # noqa: E402
import predict  # noqa: E402
from bench import bench_abundances, common  # noqa: E402
from bench.bench_pipeline import NDSB9  # noqa: E402
from lab import artifacts, config, embedding_files, output_lock, runtime  # noqa: E402

OWN_OPTIONS = {"--samples": 20, "--sample_size": 500, "--trained_dir": None}
KINDS = ("upp", "bloom", "near-absent", "even")
UNSEEN_SHARES = (0.0, 0.02, 0.05, 0.10)


# --------------------------------------------------------------------------- the cruise
def compositions(n_seen, samples, sample_size, seed):
    """(kind, prevalences over the seen classes then 'unseen', volume in litres) of each sample, seeded."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(samples):
        kind, unseen = KINDS[i % len(KINDS)], UNSEEN_SHARES[(i // len(KINDS)) % len(UNSEEN_SHARES)]
        shares = rng.dirichlet(np.ones(n_seen))
        if kind == "bloom":
            shares = np.eye(n_seen)[rng.integers(n_seen)] * 0.8 + 0.2 * shares
        elif kind == "near-absent":
            rare = rng.choice(n_seen, 2, replace=False)
            shares[rare] = 0
            shares = shares / shares.sum() * (1 - 4 / sample_size)
            shares[rare] = 2 / sample_size
        elif kind == "even":
            shares = np.full(n_seen, 1 / n_seen)
        out.append((kind, np.append(shares * (1 - unseen), unseen), float(np.round(rng.uniform(0.5, 5.0), 3))))
    return out


def build_cruise(folder, paths, labels, n_seen, samples, sample_size, seed):
    """The cruise's sample folders of links, its metadata table, and {relative path: true label (n_seen: unseen)}."""
    truth, rows = {}, []
    for i, (kind, prevalences, volume) in enumerate(compositions(n_seen, samples, sample_size, seed)):
        name = f"sample_{i:02d}"
        (folder / name).mkdir(parents=True)
        drawn = bench_abundances.draw_at(labels, n_seen + 1, prevalences, sample_size, seed + i)
        for k, row in enumerate(drawn):
            link = f"{name}/{k:04d}_{Path(paths[row]).name}"
            (folder / link).symlink_to(paths[row])
            truth[link] = int(labels[row])
        rows.append({"sample": name, "volume_l": volume, "kind": kind, "unseen_share": prevalences[-1]})
    metadata = pd.DataFrame(rows)
    metadata.to_csv(folder.parent / "metadata.csv", index=False)
    return truth, metadata


# --------------------------------------------------------------------------- the measurement
def measure(out_dir, truth, metadata, classes):
    """Per sample: MAE of the corrected and CC's proportions, interval coverage, concentrations against truth.
    classes: the seen classes in the model's order (the truth's label indices)."""
    results = Path(out_dir) / "results"
    table = artifacts.read_csv(results / "sample_abundances.csv", ("sample", "class", "method"))
    assert set(table["class"]) - {"possibly new"} == set(classes), "the model's classes are not the truth's"
    predictions = artifacts.read_csv(results / "predictions.csv", ("path", "sample", "predicted"))
    predictions["truth"] = predictions["path"].map(truth)
    per_sample = []
    for name, rows in table.groupby("sample", sort=True):
        images = predictions[predictions["sample"] == name]
        kept = images[~images["possibly_new"].astype(bool)]
        seen = rows[~rows["possibly_new"].astype(bool)].set_index("class").reindex(classes)
        true_kept = np.bincount(kept["truth"], minlength=len(classes) + 1)[: len(classes)]
        true_all = np.bincount(images["truth"], minlength=len(classes) + 1)[: len(classes)]
        share = true_kept / max(len(kept), 1)
        volume = float(metadata.set_index("sample").at[name, "volume_l"])
        concentration, low, high = (seen[c].to_numpy(float) for c in predict_concentrations())
        low_share, high_share = seen["proportion_low"].to_numpy(float), seen["proportion_high"].to_numpy(float)
        holds = (low_share - 1e-12 <= share) & (share <= high_share + 1e-12)
        present = true_kept >= 5  # relative errors of taxa with a few images mean little
        per_sample.append(
            {
                "sample": name,
                "kind": metadata.set_index("sample").at[name, "kind"],
                "unseen_share": float(metadata.set_index("sample").at[name, "unseen_share"]),
                "images": len(images),
                "flagged": int(len(images) - len(kept)),
                "mae_corrected": float(np.abs(seen["proportion"].to_numpy() - share).mean()),
                "mae_cc": float(np.abs(seen["cc_proportion"].to_numpy() - share).mean()),
                "coverage": float(np.mean(holds)),
                "concentration_relative_error": float(
                    np.mean(
                        np.abs(concentration[present] - true_kept[present] / volume) / (true_kept[present] / volume)
                    )
                ),
                "concentration_coverage": float(
                    np.mean((low - 1e-9 <= true_kept / volume) & (true_kept / volume <= high + 1e-9))
                ),
                "concentration_over_all_images": float(concentration.sum() / (true_all.sum() / volume)),
            }
        )
    return per_sample


def predict_concentrations():
    return ("concentration_per_l", "concentration_per_l_low", "concentration_per_l_high")


def timed_predict(argv, folder, cruise_args):
    """Seconds of one predict.py run from a cold chunk cache."""
    cfg = config.load_config(argv)
    for stale in artifacts.out_path(cfg, "cache").glob("predict_*.npz"):
        stale.unlink()
    start = time.perf_counter()
    predict.main(argv + [f"--predict_dir={str(folder)!r}", *cruise_args])
    output_lock.release_locks()
    return time.perf_counter() - start


# --------------------------------------------------------------------------- main
def own_options(argv):
    own, rest = dict(OWN_OPTIONS), []
    for arg in argv:
        name, _, value = arg.partition("=")
        if name in own:
            own[name] = value if name == "--trained_dir" else int(value)
        else:
            rest.append(arg)
    return own, rest


def run(argv):
    own, argv = own_options(argv)
    base = config.load_config(argv)
    scratch = Path(tempfile.mkdtemp(prefix="plankton-cruise-"))
    try:
        trained = artifacts.resolve(own["--trained_dir"]) if own["--trained_dir"] else scratch / "trained"
        run_argv = bench_abundances.lab_argv(argv, trained)
        if not own["--trained_dir"]:
            if not artifacts.resolve(config.load_config(run_argv).data_root).is_dir():
                raise lab.LabError(
                    f"The benchmark data {NDSB9} is absent. Pass --data_root=... with --seen_classes=[...] and "
                    f"--unseen_classes=[...], or --trained_dir=... of a trained model."
                )
            started = time.perf_counter()
            bench_abundances.train_model(run_argv, "validation")
            training_s = time.perf_counter() - started
        cfg = config.load_config(run_argv)
        test, _ = embedding_files.load_embeddings(cfg, "test")
        unseen, _ = embedding_files.load_embeddings(cfg, "unseen")
        classes = list(test.drop_duplicates("label_idx").sort_values("label_idx")["label"])  # the model's order
        paths = np.concatenate([test["path"].to_numpy(object), unseen["path"].to_numpy(object)])
        labels = np.concatenate([test["label_idx"].to_numpy(int), np.full(len(unseen), len(classes))])
        folder = scratch / "cruise" / "samples"
        truth, metadata = build_cruise(
            folder, paths, labels, len(classes), own["--samples"], own["--sample_size"], cfg.seed
        )
        timed_predict(run_argv, folder / "sample_00", [])  # a warm-up: the first run in a process pays the imports
        one_sample_s = timed_predict(run_argv, folder, [])  # the same images as one sample
        cruise_s = timed_predict(
            run_argv,
            folder,
            ["--samples=subfolders", f"--sample_metadata={str(folder.parent / 'metadata.csv')!r}"],
        )
        per_sample = measure(trained, truth, metadata, classes)
        frame = pd.DataFrame(per_sample)
        result = {
            "samples": own["--samples"],
            "sample_size": own["--sample_size"],
            "images": int(frame["images"].sum()),
            "seed": cfg.seed,
            "method": cfg.abundance_method,
            "draws": cfg.abundance_bootstrap,
            "mae_corrected": float(frame["mae_corrected"].mean()),
            "mae_cc": float(frame["mae_cc"].mean()),
            "coverage": float(frame["coverage"].mean()),
            "concentration_relative_error": float(frame["concentration_relative_error"].mean()),
            "concentration_coverage": float(frame["concentration_coverage"].mean()),
            "concentration_over_all_images": float(frame["concentration_over_all_images"].mean()),
            "by_kind": frame.groupby("kind")[["mae_corrected", "mae_cc", "coverage"]].mean().to_dict("index"),
            "cruise_s": cruise_s,
            "one_sample_s": one_sample_s,
            "cruise_over_one_sample": cruise_s / one_sample_s,
            "training_s": None if own["--trained_dir"] else training_s,
            "machine": common.machine(),
            "argv": argv,
            "per_sample": per_sample,
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    output_lock.ensure_output_dirs(base, ("results",))
    path = artifacts.save_json(artifacts.out_path(base, "results", "cruise_benchmark.json"), result)
    print_table(result, frame)
    print(f"written to {path}")
    return result


def print_table(result, frame):
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(frame.drop(columns=["sample"]).round(4).to_string(index=False))
    print(
        f"\n{result['samples']} samples of {result['sample_size']} images ({result['images']} in all), "
        f"{result['method']} with {result['draws']} draws: MAE corrected {result['mae_corrected']:.4f} vs CC "
        f"{result['mae_cc']:.4f}; 95 % intervals holding the truth {result['coverage']:.3f}; concentrations: mean "
        f"relative error {result['concentration_relative_error']:.3f}, intervals holding the true one "
        f"{result['concentration_coverage']:.3f}, estimated / all images' {result['concentration_over_all_images']:.3f}"
    )
    print(
        f"time: cruise {result['cruise_s']:.1f} s, the same images as one sample {result['one_sample_s']:.1f} s: "
        f"{result['cruise_over_one_sample']:.2f}x (target <= 1.5x)"
    )
    for kind, row in result["by_kind"].items():
        print(
            f"  {kind:<12} MAE corrected {row['mae_corrected']:.4f}  CC {row['mae_cc']:.4f}  "
            f"coverage {row['coverage']:.3f}"
        )


def main(argv=None):
    return run(sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":
    runtime.run_main(main)
