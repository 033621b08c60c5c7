"""Embeddings, distances, galleries and transfer learning against brute-force references."""

import tracemalloc

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import cdist

import compute_average_distances as distances
import dimensionality_reduction as reduction
import transfer_learning
from lab import artifacts, embedding_files


def brute_force(groups):
    k = len(groups)
    out = {m: np.zeros((k, k)) for m in ("euclidean", "angular", "cosine")}
    for p in range(k):
        for q in range(k):
            e = cdist(groups[p], groups[q])
            c = 1 - cdist(groups[p], groups[q], "cosine")
            mask = ~np.eye(len(groups[p]), dtype=bool) if p == q else np.ones_like(e, dtype=bool)
            out["euclidean"][p, q] = e[mask].mean()
            out["angular"][p, q] = (np.arccos(np.clip(c, -1, 1)) / np.pi)[mask].mean()
            out["cosine"][p, q] = (1 - c)[mask].mean()
    return out


@pytest.mark.parametrize("block", [1024, 7])
def test_distances_equal_brute_force_without_self_pairs(block, monkeypatch):
    monkeypatch.setattr(distances, "BLOCK", block)  # 7 exercises many blocks, off-diagonal mirroring and edges
    rng = np.random.default_rng(0)
    groups = [rng.normal(loc, 1.0, (n, 16)) for loc, n in ((0, 23), (2, 17), (-1, 30))]
    ours, ref = distances.average_distances(groups), brute_force(groups)
    for m in ours:
        np.testing.assert_allclose(ours[m], ref[m], rtol=1e-9, atol=1e-12)
    assert 0 <= ours["angular"].min() and ours["angular"].max() <= 1


def test_zero_embeddings_are_left_out_of_angular_averages():
    rng = np.random.default_rng(1)
    a = np.abs(rng.normal(size=(10, 8)))
    a_with_zero = np.vstack([a, np.zeros((2, 8))])
    ours = distances.average_distances([a_with_zero])
    assert ours["angular"][0, 0] == pytest.approx(brute_force([a])["angular"][0, 0])
    assert np.isfinite(ours["euclidean"][0, 0])


@pytest.mark.parametrize("block", [1024, 3])
def test_zero_embeddings_leave_the_angular_and_cosine_averages_across_blocks_and_classes(block, monkeypatch):
    monkeypatch.setattr(distances, "BLOCK", block)
    rng = np.random.default_rng(11)
    directed = [np.abs(rng.normal(c, 1, size=(n, 8))) for c, n in ((0, 9), (1, 7))]
    with_zeros = [np.insert(directed[0], [0, 4, 4], 0.0, axis=0), np.insert(directed[1], [6], 0.0, axis=0)]
    ours, on_directed, on_all = (
        distances.average_distances(with_zeros),
        brute_force(directed),
        brute_force(with_zeros),
    )
    np.testing.assert_allclose(ours["angular"], on_directed["angular"], rtol=1e-9)
    np.testing.assert_allclose(ours["cosine"], on_directed["cosine"], rtol=1e-9)
    np.testing.assert_allclose(ours["euclidean"], on_all["euclidean"], rtol=1e-9)  # zeros keep their distances


@pytest.mark.slow
def test_a_20000_row_class_runs_without_an_n_by_n_matrix():
    rng = np.random.default_rng(2)
    groups = [rng.normal(size=(20_000, 128)), rng.normal(1, 1, size=(300, 128))]
    tracemalloc.start()
    result = distances.average_distances(groups)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 20_000 * 20_000 * 8 / 20  # an N x N float64 matrix would be 3.2 GB; we stay far below
    assert result["euclidean"][0, 0] == pytest.approx(np.sqrt(2 * 128), rel=0.01)  # E|x-y| for N(0, I)


def test_a_class_above_distance_max_per_class_is_a_seeded_sample_of_that_many():
    rng = np.random.default_rng(6)
    big, small = rng.normal(size=(50, 8)), rng.normal(size=(10, 8))
    used = distances.sampled_groups([big, small], 20, seed=1)
    assert [len(g) for g in used] == [20, 10] and used[1] is small
    rows = {tuple(r) for r in big}
    assert all(tuple(r) in rows for r in used[0]) and len({tuple(r) for r in used[0]}) == 20  # distinct rows of big
    np.testing.assert_array_equal(used[0], distances.sampled_groups([big, small], 20, seed=1)[0])  # seeded
    assert not np.array_equal(used[0], distances.sampled_groups([big, small], 20, seed=2)[0])
    assert distances.sampled_groups([big], 0, seed=1)[0] is big  # 0: every image, exact


def test_gallery_rows_are_truly_closest_and_furthest():
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(200, 128))
    labels = np.array(["a"] * 80 + ["b"] * 70 + ["c"] * 50)
    every = reduction.class_galleries(vectors, labels, ["a", "b", "c"], 5)
    picks = every["b"]
    centre = vectors[labels == "b"].mean(0)
    d = np.linalg.norm(vectors - centre, axis=1)
    own, other = np.flatnonzero(labels == "b"), np.flatnonzero(labels != "b")
    assert list(picks[reduction.ROWS[0]][0]) == list(own[np.argsort(d[own])[:5]])
    assert list(picks[reduction.ROWS[1]][0]) == list(own[np.argsort(-d[own])[:5]])
    assert list(picks[reduction.ROWS[2]][0]) == list(other[np.argsort(d[other])[:5]])
    np.testing.assert_allclose(picks[reduction.ROWS[2]][1], np.sort(d[other])[:5])
    for cls in ["a", "c"]:  # every class's centre, in the same pass, as if computed alone
        own, other = np.flatnonzero(labels == cls), np.flatnonzero(labels != cls)
        d = np.linalg.norm(vectors - vectors[own].mean(0), axis=1)
        assert list(every[cls][reduction.ROWS[0]][0]) == list(own[np.argsort(d[own])[:5]])
        assert list(every[cls][reduction.ROWS[1]][0]) == list(own[np.argsort(-d[own])[:5]])
        assert list(every[cls][reduction.ROWS[2]][0]) == list(other[np.argsort(d[other])[:5]])


def test_gallery_ties_and_blocks_give_a_stable_sorts_picks():
    rng = np.random.default_rng(9)
    vectors = rng.normal(size=(500, 8))
    vectors[[7, 40, 41, 42]] = vectors[:7].mean(0) + 0.01  # copies nearest to a's centre: equal distances, to be
    labels = np.array(["a"] * 7 + ["b"] * 493)  # taken in index order, as a stable sort would
    d = np.linalg.norm(vectors - vectors[:7].mean(0), axis=1)
    centres = np.stack([vectors[:7].mean(0), vectors[7:].mean(0)])
    blocked = reduction.distances_to(vectors, centres, block=64)
    np.testing.assert_allclose(blocked[:, 0], d, rtol=1e-12)
    np.testing.assert_array_equal(blocked, reduction.distances_to(vectors, centres, block=len(vectors)))
    for k in (1, 3, 5, 600):
        assert list(reduction.k_smallest(d[7:], k)) == list(np.argsort(d[7:], kind="stable")[:k])
    picks = reduction.class_galleries(vectors, labels, ["a"], 5)["a"]
    assert list(picks[reduction.ROWS[2]][0])[:4] == [7, 40, 41, 42]
    assert list(picks[reduction.ROWS[2]][0]) == list(7 + np.argsort(d[7:], kind="stable")[:5])


def test_transfer_learning_on_separable_embeddings(make_cfg):
    cfg, _ = make_cfg("--transfer_repeats=3")
    rng = np.random.default_rng(4)
    centres = rng.normal(0, 6, (3, 128))
    y = np.repeat([0, 1, 2], [60, 45, 8])  # the last class has fewer training images than k
    x = centres[y] + rng.normal(size=(len(y), 128))
    table = transfer_learning.transfer_curves(x, y, cfg)
    # the grid is built from the training part alone (70 %): the smallest class has 6 of its 8 images there
    y_train = y[transfer_learning.held_out_split(x, y, 0.3, cfg.seed)[0]]
    assert np.bincount(y_train).min() == 6
    assert sorted(set(table["per_class"]) - {"all"}) == [1, 2, 3, 5]  # every grid size below 6, then the whole part
    assert set(table["classifier"]) == {"SVC", "Linear", "kNN"}
    assert len(table) == 3 * (3 * 4 + 1)  # every (size, repeat, classifier), 'all' once
    assert table[table["per_class"] == "all"]["train_size"].eq(len(y_train)).all()
    full = table[table["per_class"] == "all"]
    assert (full["balanced_accuracy"] > 0.95).all()
    knn = table[table["classifier"] == "kNN"]
    assert knn["k"].max() <= 10 and (knn["k"] * 3 <= knn["train_size"]).all()  # capped by the smallest class
    one_each = knn[knn["train_size"] == 3]
    assert (one_each["balanced_accuracy"] > 0.9).all()  # 1-NN on separable classes, not a majority vote


def test_transfer_learning_caps_each_side_at_transfer_max_images(make_cfg):
    cfg, _ = make_cfg("--transfer_repeats=1", "--transfer_max_images=60")
    rng = np.random.default_rng(7)
    y = np.repeat([0, 1, 2], [200, 100, 12])
    x = rng.normal(0, 6, (3, 16))[y] + rng.normal(size=(len(y), 16))
    table = transfer_learning.transfer_curves(x, y, cfg)
    assert (table["n_test"] <= 60).all() and (table["train_size"] <= 60).all()
    full = table[table["per_class"] == "all"]
    assert full["train_size"].eq(20 + 20 + 8).all()  # 60 // 3 = 20 per class; the small class keeps its 8 of 12
    assert full["n_test"].eq(20 + 20 + 4).all()


def test_copy_units_group_members_as_a_pass_per_unit_would():
    rng = np.random.default_rng(8)
    members = np.sort(rng.choice(1000, size=300, replace=False))
    copy_ids = rng.integers(0, 40, size=300)
    expected = [members[copy_ids == u] for u in np.unique(copy_ids)]  # the former, quadratic grouping
    got = transfer_learning.copy_units(members, copy_ids)
    assert len(got) == len(expected) and all(np.array_equal(a, b) for a, b in zip(got, expected))


@pytest.fixture(scope="module")
def embedded(novelty_ready):
    """A model trained on the tiny demo and its embeddings (the session's, shared with the novelty tests)."""
    return novelty_ready


def test_embedding_files_schema_and_rows(embedded):
    cfg, _ = embedded
    split = pd.read_csv(artifacts.out_path(cfg, "results", "split.csv"))
    for name in ("train", "test", "unseen"):
        frame = pd.read_pickle(artifacts.out_path(cfg, "embeddings", f"embeddings_{name}.pkl"))
        assert list(frame.columns[:4]) == ["label", "label_idx", "split", "path"]
        emb = [f"emb_{i}" for i in range(128)]
        assert list(frame.columns[4:]) == emb and (frame[emb].dtypes == np.float32).all()
        assert len(frame) == (split["split"] == name).sum() and (frame["split"] == name).all()
        classes = cfg.unseen_classes if name == "unseen" else cfg.seen_classes
        assert [classes[i] for i in frame["label_idx"]] == list(frame["label"])
    assert artifacts.out_path(cfg, "embeddings", "embeddings_meta.json").exists()


def test_distance_script_writes_matrices_that_match_its_csv(embedded):
    cfg, argv = embedded
    results = distances.main(argv)
    table = pd.read_csv(artifacts.out_path(cfg, "results", "average_distances_unseen.csv"))
    assert len(table) == 9 and results["unseen"]["euclidean"].shape == (3, 3)
    frame, x = embedding_files.load_embeddings(cfg, "unseen")
    groups = [x[(frame["label"] == c).to_numpy()] for c in cfg.unseen_classes]
    groups = [g[np.abs(g).sum(1) > 0] for g in groups]
    ref = brute_force(groups)
    np.testing.assert_allclose(results["unseen"]["angular"], ref["angular"], rtol=1e-9)


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_other_reduction_methods_give_2d_points_that_keep_clusters_apart(make_cfg, method):
    cfg, _ = make_cfg(f"--reduction_method='{method}'")
    rng = np.random.default_rng(5)
    x = np.vstack([rng.normal(0, 1, (60, 128)), rng.normal(8, 1, (60, 128))])
    xy = reduction.reduce_to_2d(x, cfg)
    assert xy.shape == (120, 2) and np.isfinite(xy).all()
    gap = np.linalg.norm(xy[:60].mean(0) - xy[60:].mean(0))
    assert gap > 3 * max(xy[:60].std(0).max(), xy[60:].std(0).max())


def test_the_map_gets_exact_neighbours_each_point_first_copies_included():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 16))
    x[11] = x[10]  # a copy: its twin is its nearest other point, at distance 0
    indices, dist = reduction.exact_neighbours(x, 6)
    assert indices.shape == dist.shape == (200, 6)
    assert (indices[:, 0] == np.arange(200)).all() and (dist[:, 0] == 0).all()  # as UMAP's precomputed_knn expects
    brute = cdist(x, x)
    np.fill_diagonal(brute, np.inf)
    np.testing.assert_allclose(dist[:, 1:], np.sort(brute, axis=1)[:, :5], rtol=1e-5, atol=1e-6)
    assert indices[10, 1] == 11 and indices[11, 1] == 10


@pytest.mark.slow
def test_the_umap_map_keeps_clusters_apart_and_neighbourhoods_intact(make_cfg):
    from sklearn.manifold import trustworthiness
    from sklearn.preprocessing import StandardScaler

    cfg, _ = make_cfg()
    rng = np.random.default_rng(4)
    x = np.vstack([rng.normal(8 * c, 1, (80, 32)) for c in range(3)])
    xy = reduction.reduce_to_2d(x, cfg)
    assert xy.shape == (240, 2) and np.isfinite(xy).all()
    centres = [xy[80 * c : 80 * (c + 1)].mean(0) for c in range(3)]
    spread = max(xy[80 * c : 80 * (c + 1)].std(0).max() for c in range(3))
    assert min(np.linalg.norm(a - b) for i, a in enumerate(centres) for b in centres[i + 1 :]) > 3 * spread
    assert trustworthiness(StandardScaler().fit_transform(x), xy, n_neighbors=cfg.umap_n_neighbors) > 0.9


def test_the_map_leaves_torchs_thread_count_as_it_found_it(make_cfg):
    """UMAP's numba code resets OpenMP's thread count to the number of cores: the stages after the map in one
    process (run_pipeline.py) would then train and embed with other threads than alone, under OMP_NUM_THREADS=1."""
    import torch

    cfg, _ = make_cfg()
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reduction.reduce_to_2d(np.random.default_rng(6).normal(size=(120, 16)), cfg)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_umaps_progress_is_passed_on_without_its_parameters():
    import io

    out = io.StringIO()
    stream = reduction.Prefixed("[map] umap: ", out)
    stream.write(
        "UMAP(n_jobs=1, precomputed_knn=(array([[   0, 20],\n       [1, 3]])), verbose=True)\n"
        "Mon Nov 30 02:26:12 2026 Construct fuzzy simplicial set\n\tcompleted  0  /  500 "
    )
    stream.write("epochs\nMon Nov 30 02:26:14 2026 Finished embedding\n")
    assert out.getvalue().splitlines() == [
        "[map] umap: Construct fuzzy simplicial set",
        "[map] umap: completed 0 / 500 epochs",
        "[map] umap: Finished embedding",
    ]
