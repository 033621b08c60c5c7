"""Benchmark of similar.py at FlowCamNet size: one query's search among 300,000 embeddings, and the command's whole
wall time and peak memory for 1 and for 100 query images, loading included.

The model is a random-trunk head trained on a small demo set in a scratch folder; its embeddings set is then
replaced by 300,000 synthetic 128-d embeddings (non-negative, as after the embedding layer's ReLU), written as
embed.py writes a set, so that similar.py loads, checks and searches exactly what it would at that size. Nothing
outside the scratch folder is touched. Prints a table and writes results/benchmark_similar.json under output_dir
(default: the scratch folder, removed at the end).

    python bench/bench_similar.py                    # 300,000 embeddings, about 3 minutes on 2 cores
    python bench/bench_similar.py --quick            # 20,000 embeddings: a smoke test, not a benchmark
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import embed  # noqa: E402
import similar  # noqa: E402
import train  # noqa: E402
from bench import common  # noqa: E402
from bench.targets import TARGETS  # noqa: E402
from lab import config, demo_data, embedding_files, output_lock  # noqa: E402

FLOWCAMNET_EMBEDDINGS = 300_000
QUERIES = (1, 100)
SEARCH_ROUNDS = 50


def scratch_model(folder, quick):
    """A trained random-trunk model and its embeddings set on a small demo set: the argv that reaches it."""
    counts = {c: 24 for c in demo_data.CLASSES} if quick else {c: 40 for c in demo_data.CLASSES}
    root = demo_data.generate(Path(folder) / "demo", counts=counts)
    argv = [
        f"--data_root={str(root)!r}",
        f"--output_dir={str(Path(folder) / 'out')!r}",
        "--backbone_weights=None",
        "--image_size=64",
        "--epochs=2",
        "--num_workers=0",
        "--precision='fp32'",
    ]
    train.main(argv)
    embed.main(argv)
    output_lock.release_locks()
    return argv, root


def grow_embeddings(cfg, n):
    """Replace the train split's embeddings by n synthetic rows (paths of real files, cycled), written with the
    set's own writer and meta, so that similar.py's checks pass as for a set embed.py made."""
    meta = embedding_files.embedding_set(cfg)
    frames = {name: embedding_files.load_embeddings(cfg, name)[0] for name in ("train", "val", "test", "unseen")}
    real = frames["train"]
    rng = np.random.default_rng(0)
    vectors = np.maximum(rng.normal(size=(n, cfg.embedding_dim)), 0).astype(np.float32)
    rows = real.iloc[np.arange(n) % len(real)][["label", "label_idx", "split", "path"]].reset_index(drop=True)
    emb = pd.DataFrame(vectors, columns=[f"emb_{i}" for i in range(cfg.embedding_dim)])
    frames["train"] = pd.concat([rows, emb], axis=1)
    embedding_files.save_embedding_set(cfg, frames, {k: v for k, v in meta.items() if k not in ("files", "set")})
    return sum(len(f) for f in frames.values())


def search_ms(n, dim, rounds):
    """Milliseconds of one query's exact search (similar.nearest) among n unit vectors: median and best."""
    rng = np.random.default_rng(1)
    reference, zero = similar.unit_rows(np.maximum(rng.normal(size=(n, dim)), 0).astype(np.float32))
    times = []
    for _ in range(rounds):
        query = similar.unit_rows(np.maximum(rng.normal(size=(1, dim)), 0))[0][0]
        start = time.perf_counter()
        similar.nearest(reference, zero, query, 10)
        times.append(1000 * (time.perf_counter() - start))
    return float(np.median(times)), float(np.min(times))


PEAK = (
    "import resource, runpy, sys; sys.argv = sys.argv[1:]; sys.path.insert(0, '.')\n"
    "try:\n    runpy.run_path('similar.py', run_name='__main__')\n"
    "finally:\n    print('PEAK_MB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,\n"
    "          resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, file=sys.stderr)"
)


def command(argv, query):
    """(wall seconds, peak MB of the process, peak MB of its largest decoding worker) of `python similar.py`."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", PEAK, "similar.py", *argv, f"--query={str(query)!r}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"similar.py failed:\n{proc.stderr[-3000:]}")
    own, workers = (float(v) for v in proc.stderr.strip().splitlines()[-1].split()[1:3])
    return seconds, own, workers


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    quick = "--quick" in argv
    n = 20_000 if quick else FLOWCAMNET_EMBEDDINGS
    with tempfile.TemporaryDirectory(prefix="plankton-similar-") as scratch:
        model_argv, root = scratch_model(scratch, quick)
        cfg = config.load_config(model_argv)
        total = grow_embeddings(cfg, n)
        median, best = search_ms(n, cfg.embedding_dim, 5 if quick else SEARCH_ROUNDS)
        folder = Path(scratch) / "queries"
        images = sorted(p for c in demo_data.CLASSES for p in (root / c).iterdir())[: max(QUERIES)]
        folder.mkdir()
        for i, image in enumerate(images):
            os.symlink(image, folder / f"q{i:03d}{image.suffix}")
        runs = {1: command(model_argv, images[0]), len(images): command(model_argv, folder)}
        raw = {
            "embeddings": total,
            "search_ms_median": median,
            "search_ms_best": best,
            "commands": {str(k): {"seconds": s, "peak_mb": m, "worker_peak_mb": w} for k, (s, m, w) in runs.items()},
            "machine": common.machine(),
            "quick": quick,
        }
        target = TARGETS["similar search"]
        rows = [
            common.verdict(
                "similar search",
                f"one query among {n:,} embeddings, exact cosine (median of "
                f"{5 if quick else SEARCH_ROUNDS}; best {best:.1f} ms)",
                round(median, 1),
                str(target),
                target.met(median),
                "ms",
                "the matrix-vector product is memory-bound",
            )
        ]
        for queries, (seconds, peak, workers) in runs.items():
            rows.append(
                common.information(
                    f"similar.py, {queries} quer{'y' if queries == 1 else 'ies'}",
                    f"whole command, {total:,} embeddings loaded and checked; peak "
                    f"{peak:.0f} MB (+ decoding workers {workers:.0f} MB)",
                    round(seconds, 1),
                    "s",
                )
            )
        out = Path(next((a.split("=", 1)[1].strip("'\"") for a in argv if a.startswith("--output_dir=")), scratch))
        (out / "results").mkdir(parents=True, exist_ok=True)
        (out / "results" / "benchmark_similar.json").write_text(json.dumps({"raw": raw, "rows": rows}, indent=2))
        for r in rows:
            print(
                f"{r['what']:<26} {str(r['measured']) + r.get('unit', ''):>10}  {r['target']:<10} {r['status']:<6} "
                f"{r['compared']}"
            )
        return raw, rows


if __name__ == "__main__":
    main()
