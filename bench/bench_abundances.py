"""Benchmark: how close are the corrected abundances to the truth, and how often do their 95 % intervals hold it?

Reads ../shared/data/ndsb9 (or --data_root=... with --seen_classes / --unseen_classes). Trains the lab's model on
it once in a scratch folder (train.py, embed.py, novelty.py, and audit.py --audit_model=head for
--calibration=out_of_fold), or takes the model already trained in --trained_dir=FOLDER (an output folder where
those have run with the same settings). Then draws --samples samples of --sample_size images from the
lab's TEST split, each with class proportions drawn uniformly from the simplex (QuaPy's UPP: the
artificial-prevalence protocol for more than a few classes; seeded by --seed), and quantifies every sample as
predict.py does: the images flagged possibly new are set apart, every method of lab/abundances.py is calibrated on
the validation split (--calibration=out_of_fold: on audit.py's out-of-fold outputs of the training and validation
images, as --abundance_calibration=out_of_fold) and gives its 95 % bootstrap interval (--abundance_bootstrap
draws). The truth is each sample's share of every class among its images not flagged.
Prints, per method, the mean absolute error of the proportions and how often the interval holds the truth, with
the targets of bench/targets.py applied to --abundance_method; writes results/abundances_benchmark.json under
the output folder (the scratch folder's is deleted: give --output_dir to keep it).

    python bench/bench_abundances.py --backbone_weights=None             # ndsb9 offline, ~1 h on 2 busy cores
    python bench/bench_abundances.py --trained_dir=/tmp/run --samples=100 --jobs=2
"""

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

import audit  # noqa: E402
import embed  # noqa: E402
import lab  # noqa: E402
import novelty  # noqa: E402
import train  # noqa: E402
from bench import common  # noqa: E402
from bench.bench_pipeline import NDSB9, NDSB9_SEEN, NDSB9_UNSEEN  # noqa: E402
from bench.targets import TARGETS  # noqa: E402
from lab import (  # noqa: E402
    abundance_inputs,
    abundances,
    artifacts,
    checkpoint,
    config,
    embedding_files,
    progress,
    runtime,
)
from lab import novelty_scores as ns  # noqa: E402

OWN_OPTIONS = {
    "--samples": 500,
    "--sample_size": 300,
    "--trained_dir": None,
    "--jobs": 1,
    "--calibration": "validation",
}
CALIBRATIONS = ("validation", "out_of_fold")


# --------------------------------------------------------------------------- the measurement, on arrays
def labelled_collection(labels, n_classes):
    import quapy as qp

    return qp.data.LabelledCollection(np.zeros((len(labels), 1)), np.asarray(labels), classes=range(n_classes))


def draw_samples(labels, n_classes, samples, sample_size, seed):
    """Row indices of each sample: QuaPy's uniform-prevalence protocol (UPP) on the labelled rows, seeded."""
    import quapy as qp

    collection = labelled_collection(labels, n_classes)
    return list(
        qp.protocol.UPP(collection, sample_size=sample_size, repeats=samples, random_state=seed, return_type="index")()
    )


def draw_at(labels, n_classes, prevalences, sample_size, seed):
    """Row indices of one sample of the given class prevalences, drawn within each class with replacement: QuaPy's
    sampler, the one UPP above draws each of its samples with (bench/bench_cruise.py's blooms and rare taxa)."""
    return labelled_collection(labels, n_classes).sampling_index(sample_size, *prevalences, random_state=seed)


def quantify_samples(calibrated, probabilities, labels, flagged, indices, seed, first):
    """For each sample (row indices) and method: (truth, point, low, high), each of shape (classes,)."""
    n_classes = probabilities.shape[1]
    out = []
    for i, rows in progress.progress(enumerate(indices, start=first), len(indices), "samples", "samples"):
        kept = rows[~flagged[rows]]
        truth = np.bincount(labels[kept], minlength=n_classes) / max(len(kept), 1)
        everything = np.bincount(labels[rows], minlength=n_classes) / len(rows)
        methods = {}
        for name, method in calibrated.items():
            rng = np.random.default_rng([seed, i, config.ABUNDANCE_METHODS.index(name)])
            methods[name] = [x.tolist() for x in method.interval(probabilities[kept], rng)]
        out.append({"truth": truth.tolist(), "truth_all_images": everything.tolist(), "methods": methods})
    return out


def summarise(per_sample, methods):
    """Per method: mean absolute error of the proportions (over samples and classes), share of the (sample,
    class) intervals holding the truth, share of samples whose intervals all hold it, mean interval width."""
    truth = np.array([s["truth"] for s in per_sample])
    summary = {}
    for name in methods:
        point, low, high = (np.array([s["methods"][name][j] for s in per_sample]) for j in range(3))
        holds = (low - 1e-12 <= truth) & (truth <= high + 1e-12)
        summary[name] = {
            "mae": float(np.abs(point - truth).mean()),
            "coverage": float(holds.mean()),
            "coverage_all_classes": float(holds.all(axis=1).mean()),
            "mean_width": float((high - low).mean()),
            "worst_class_mae": float(np.abs(point - truth).mean(axis=0).max()),
        }
    return summary


def measure(calibration, test, samples, sample_size, draws, seed, jobs=1, methods=config.ABUNDANCE_METHODS):
    """calibration: an abundances.Calibration; test: (probabilities, labels, flagged possibly new). Returns the
    per-method summary and the per-sample estimates."""
    probabilities, labels, flagged = (np.asarray(a) for a in test)
    indices = draw_samples(labels, probabilities.shape[1], samples, sample_size, seed)
    calibrated = {m: abundances.Calibrated(m, calibration, draws, seed) for m in methods}
    chunks = np.array_split(np.arange(len(indices)), max(1, jobs))
    if jobs > 1:
        from joblib import Parallel, delayed

        parts = Parallel(n_jobs=jobs)(
            delayed(quantify_samples)(
                calibrated, probabilities, labels, flagged, [indices[i] for i in c], seed, int(c[0])
            )
            for c in chunks
            if len(c)
        )
    else:
        parts = [quantify_samples(calibrated, probabilities, labels, flagged, indices, seed, 0)]
    per_sample = [s for part in parts for s in part]
    summary = summarise(per_sample, methods)
    for name, method in calibrated.items():
        summary[name]["failed_bootstrap_fits"] = method.failed
    return summary, per_sample


# --------------------------------------------------------------------------- the lab's model and splits
def own_options(argv):
    """(the benchmark's own options, the settings for the lab's scripts)."""
    own, rest = dict(OWN_OPTIONS), []
    for arg in argv:
        name, _, value = arg.partition("=")
        if name == "--calibration" and value not in CALIBRATIONS:
            raise lab.LabError(f"--calibration={value!r}: it is one of {', '.join(CALIBRATIONS)}.")
        if name in own:
            own[name] = value if name in ("--trained_dir", "--calibration") else int(value)
        else:
            rest.append(arg)
    return own, rest


def lab_argv(argv, output_dir):
    names = {a.split("=", 1)[0] for a in argv}
    extra = [] if "--data_root" in names else [f"--data_root={str(NDSB9)!r}"]
    if "--seen_classes" not in names:
        extra += [f"--seen_classes={NDSB9_SEEN!r}", f"--unseen_classes={NDSB9_UNSEEN!r}"]
    return [a for a in argv if not a.startswith("--output_dir=")] + extra + [f"--output_dir={str(output_dir)!r}"]


def model_outputs(argv, calibration_source="validation"):
    """(cfg, calibration (probabilities, labels), test (probabilities, labels, flagged), test accuracy) of the
    model trained in argv's output folder, from its embeddings: the calibration set exactly as predict.py takes
    it (lab/abundance_inputs.py), the test split through the same last layer and novelty flag."""
    cfg = config.load_config(argv)
    trained = checkpoint.load_trained(cfg, split=False, made_for="abundances")
    scorer = ns.scorer_from_artifacts(trained.cfg, trained.ckpt, trained.digest)
    threshold = ns.load_thresholds(trained.cfg, trained.digest, scorer)["thresholds"][trained.cfg.novelty_score]
    calibration = abundance_inputs.calibration_from_artifacts(
        trained.cfg, scorer, threshold, trained.digest, trained.ckpt["classes"], calibration_source
    )
    frame, vectors = embedding_files.load_embeddings(trained.cfg, "test")
    probabilities = abundance_inputs.probabilities_from_embeddings(scorer, vectors)
    labels = frame["label_idx"].to_numpy()
    flagged = scorer.scores(vectors, (trained.cfg.novelty_score,))[trained.cfg.novelty_score] > threshold
    accuracy = float((probabilities.argmax(1) == labels).mean())
    return trained.cfg, calibration, (probabilities, labels, flagged), accuracy


def train_model(argv, calibration_source):
    """train.py, embed.py and novelty.py; audit.py too (with the head) only for the out-of-fold calibration, the one
    that reads it: the validation split's needs no audit."""
    for script in (train, embed, novelty):
        script.main(argv)
    if calibration_source == "out_of_fold":
        audit.main(argv + ["--audit_model=head"])  # the out-of-fold calibration takes the head's own outputs


# --------------------------------------------------------------------------- the table
def verdicts(summary, default):
    """The targets of bench/targets.py, applied to the default method."""
    ratio = summary[default]["mae"] / summary["cc"]["mae"]
    error, cover = TARGETS["abundance error"], TARGETS["abundance coverage"]
    return [
        common.verdict(
            "abundance error",
            f"{default} MAE / CC MAE",
            round(ratio, 3),
            str(error),
            error.met(ratio),
            "x",
            "the correction does not halve CC's error",
        ),
        common.verdict(
            "abundance coverage",
            f"{default} 95 % intervals holding the truth",
            round(summary[default]["coverage"], 3),
            str(cover),
            cover.met(summary[default]["coverage"]),
            "",
            "the intervals are too narrow for the error they leave",
        ),
    ]


def print_table(result):
    print(
        f"\n{result['samples']} samples of {result['sample_size']} test images (UPP, seed {result['seed']}); "
        f"{result['calibration_images']} calibration images ({result.get('calibration', 'validation')}, not "
        f"flagged); "
        f"{result['draws']} bootstrap draws; classifier accuracy on the test split {result['test_accuracy']:.3f}"
    )
    print(
        f"{'method':<9} {'MAE':>7} {'/ CC':>5} {'coverage':>9} {'all classes':>12} {'width':>7} "
        f"{'worst class':>12} {'failed fits':>12}"
    )
    cc = result["summary"]["cc"]["mae"]
    for name, s in result["summary"].items():
        mark = "  <- default (abundance_method)" if name == result["default"] else ""
        print(
            f"{name:<9} {s['mae']:>7.4f} {s['mae'] / cc:>5.2f} {s['coverage']:>9.3f} "
            f"{s['coverage_all_classes']:>12.3f}"
            f" {s['mean_width']:>7.3f} {s['worst_class_mae']:>12.4f} {s['failed_bootstrap_fits']:>12}{mark}"
        )
    for row in result["verdicts"]:
        print(
            f"{row['what']:<20} {row['compared']:<48} {row['measured']:>7} target {row['target']:<8} "
            f"{row['status']} {row['reason']}"
        )


# --------------------------------------------------------------------------- main
def run(argv):
    own, argv = own_options(argv)
    base = config.load_config(argv)

    def train(run_argv):
        if not artifacts.resolve(config.load_config(run_argv).data_root).is_dir():
            raise lab.LabError(
                f"The benchmark data {NDSB9} is absent. Pass --data_root=... with --seen_classes=[...] "
                f"and --unseen_classes=[...], or --trained_dir=... of a trained model."
            )
        train_model(run_argv, own["--calibration"])

    with common.trained_model(own["--trained_dir"], argv, lab_argv, "plankton-abundances-", train) as run_argv:
        start = time.perf_counter()
        cfg, calibration, test, accuracy = model_outputs(run_argv, own["--calibration"])
        summary, per_sample = measure(
            calibration, test, own["--samples"], own["--sample_size"], cfg.abundance_bootstrap, cfg.seed, own["--jobs"]
        )
        truth_all = np.array([s["truth_all_images"] for s in per_sample])
        default_point = np.array([s["methods"][cfg.abundance_method][0] for s in per_sample])
        result = {
            "samples": own["--samples"],
            "sample_size": own["--sample_size"],
            "seed": cfg.seed,
            "draws": cfg.abundance_bootstrap,
            "default": cfg.abundance_method,
            "test_accuracy": accuracy,
            "calibration": calibration.source,
            "calibration_images": len(calibration.labels),
            "test_images": len(test[1]),
            "test_flagged_share": float(np.mean(test[2])),
            "summary": summary,
            "default_mae_against_all_images": float(np.abs(default_point - truth_all).mean()),
            "verdicts": verdicts(summary, cfg.abundance_method),
            "seconds": time.perf_counter() - start,
            "machine": common.machine(),
            "argv": argv,
            "per_sample": per_sample,
        }
    return common.save_result(base, "abundances_benchmark.json", result, print_table)


def main(argv=None):
    return run(sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":
    runtime.run_main(main)
