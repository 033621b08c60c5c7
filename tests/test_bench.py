"""A smoke test of the benchmark on tiny data, so that it cannot rot. No timing is asserted."""
import json

from conftest import shared_dataset


def test_benchmark_quick_run_writes_every_row(tmp_path):
    shared_dataset("ndsb9")
    from bench import bench_pipeline
    raw = bench_pipeline.main(["--quick", f"--output_dir={str(tmp_path)!r}"])
    saved = json.loads((tmp_path / "results" / "benchmark.json").read_text())
    names = [r["what"] for r in saved["rows"]]
    for expected in ("end to end", "trunk pass", "trunk efficiency", "head training epoch", "data loading", "UMAP",
                     "average distances", "distance memory", "cache memory", "predict memory"):
        assert expected in names
    assert all(r["met"] or r["reason"] for r in saved["rows"])  # a missed target always says why
    assert saved["distances"]["agree_with_cdist"] and raw["trunk"]["embedding_cosine"] > 0.9
