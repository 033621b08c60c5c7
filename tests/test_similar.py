"""similar.py: the neighbours equal a brute-force search, a query's own image is marked and not counted, all-zero
embeddings are listed and never ranked; and the script on a trained demo model."""

import numpy as np
import pandas as pd

import similar
from lab import artifacts


def test_nearest_equals_a_brute_force_search():
    rng = np.random.default_rng(0)
    vectors = np.maximum(rng.normal(size=(500, 16)), 0).astype(np.float32)
    vectors[[3, 77]] = 0
    unit, zero = similar.unit_rows(vectors)
    assert list(np.flatnonzero(zero)) == [3, 77]
    for _ in range(5):
        query = rng.normal(size=16)
        top, distance = similar.nearest(unit, zero, (query / np.linalg.norm(query)).astype(np.float32), 10)
        cosine = [
            1 - v @ query / (np.linalg.norm(v) * np.linalg.norm(query)) if v.any() else np.inf
            for v in vectors.astype(np.float64)
        ]
        brute = np.argsort(cosine, kind="stable")[:10]
        assert list(top) == list(brute) and np.allclose(distance, np.sort(cosine)[:10], atol=1e-5)
        assert 3 not in top and 77 not in top


def test_the_query_image_is_marked_not_counted_and_zero_embeddings_are_listed(tmp_path):
    files = [tmp_path / f"{k}.png" for k in range(6)]
    for f in files:
        f.write_bytes(b"x")
    rows = pd.DataFrame(
        {
            "path": [str(f) for f in files],
            "label": list("aabbcc"),
            "split": ["train", "val", "test", "unseen", "predict", "train"],
        }
    )
    vectors = np.array([[1, 0], [0.9, 0.1], [0, 1], [0, 0], [0.5, 0.5], [1, 0.01]], np.float32)
    unit, zero = similar.unit_rows(vectors)
    where = {str(f.resolve()): [k] for k, f in enumerate(files)}
    found = similar.rows_of_query(str(files[0]), vectors[0], rows, unit, zero, 3, where)
    frame = pd.DataFrame(found)
    assert list(frame["rank"]) == [0, 1, 2, 3, "zero"]
    assert frame["path"].iloc[0] == str(files[0]) and frame["distance"].iloc[0] == 0  # itself, marked
    assert str(files[0]) not in set(frame.loc[frame["rank"].isin([1, 2, 3]), "path"])  # never its own neighbour
    assert list(frame["path"].iloc[1:4]) == [str(files[k]) for k in (5, 1, 4)]
    assert frame["path"].iloc[4] == str(files[3]) and np.isnan(frame["distance"].iloc[4])


def test_similar_on_the_demo_model(novelty_ready, tiny_demo):
    cfg, argv = novelty_ready
    query = sorted((tiny_demo / "Odontella").iterdir())[0]
    frame = similar.main(argv + [f"--query={str(query)!r}", "--similar_k=4"])
    saved = pd.read_csv(artifacts.out_path(cfg, "results", "similar.csv"))
    assert len(saved) == len(frame) and list(frame["rank"][:5]) == [0, 1, 2, 3, 4]
    assert frame["path"].iloc[0] == str(query) and frame["label"].iloc[0] == "Odontella"
    assert (np.diff(frame["distance"].iloc[1:5].to_numpy(float)) >= 0).all()
    assert str(query) not in set(frame["path"].iloc[1:])
    assert artifacts.out_path(cfg, "figs", f"similar_{query.stem}.png").exists()
