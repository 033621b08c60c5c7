"""The dihedral views (issue 34, the trunk_views setting): the views of an image are the eight dihedral transforms
(each prefix the setting allows a group), their trunk cache is keyed by view, training draws a random view per image
per epoch, every prediction averages the views, and the checkpoint records trunk_views for resuming and
predicting."""

import itertools

import numpy as np
import pandas as pd
import pytest
import torch

import backbone
import embed
import evaluate
import lab
import train
from lab import (
    artifacts,
    cached_features,
    checkpoint,
    config,
    embedding_files,
    image_io,
    label_audit,
    splitting,
    trunk_cache,
)


def brute_force_views(x):
    """The 8 elements of the dihedral group acting on the last two axes: 4 turns, and 4 turns of the mirror image."""
    return [torch.rot90(x, k, dims=(-2, -1)) for k in range(4)] + [
        torch.rot90(torch.flip(x, dims=(-1,)), k, dims=(-2, -1)) for k in range(4)
    ]


def index_of(views, y):
    found = [v for v, view in enumerate(views) if torch.equal(view, y)]
    assert len(found) == 1
    return found[0]


def test_the_views_are_the_eight_dihedral_transforms_and_each_prefix_a_group():
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).reshape(2, 3, 5, 5)  # no symmetry at all
    views = [image_io.dihedral_view(x, v) for v in range(image_io.VIEWS)]
    reference = brute_force_views(x)
    assert image_io.VIEWS == 8 and torch.equal(views[0], x)
    assert sorted(index_of(reference, view) for view in views) == list(range(8))  # each transform exactly once
    for k in config.TRUNK_VIEWS:  # closed under composition: a view of a view of the first k is one of them
        prefix = views[:k]
        for a, b in itertools.product(range(k), repeat=2):
            composed = image_io.dihedral_view(image_io.dihedral_view(x, a), b)
            assert index_of(prefix, composed) < k, (k, a, b)


def test_trunk_views_is_one_of_1_2_4_8_and_an_integer():
    assert config.config_defaults()["trunk_views"] == 1
    assert config.load_config(["--trunk_views=8"]).trunk_views == 8
    with pytest.raises(lab.LabError, match="trunk_views=3 must be one of 1, 2, 4, 8"):
        config.load_config(["--trunk_views=3"])
    with pytest.raises(lab.LabError, match="expected an integer"):
        config.load_config(["--trunk_views='8'"])


@pytest.fixture
def split_rows(make_cfg):
    cfg, _ = make_cfg()
    rows = pd.DataFrame(
        {
            "path": ["chainthin/chainthin_0000.png", "darksphere/darksphere_0000.png", "Odontella/Odontella_0001.png"],
            "label": ["chainthin", "darksphere", "Odontella"],
        }
    )
    return cfg, rows, splitting.absolute_paths(cfg, rows["path"])


def cache_names(cfg):
    return sorted(p.name for p in artifacts.out_path(cfg, "cache").iterdir())


def test_the_cache_is_keyed_by_view_and_holds_the_trunk_of_each_view(split_rows, monkeypatch):
    cfg, rows, paths = split_rows
    trunk = backbone.build_trunk(None, backbone.RANDOM_TRUNK_SEED)
    device = torch.device("cpu")
    key = trunk_cache.cache_key(cfg, paths, "random", None)
    keys = [trunk_cache.view_key(key, v) for v in range(8)]
    assert keys[0] == key and len(set(keys)) == 8  # view 0: the cache of a run without views, unchanged
    passes = []
    real_run_trunk = trunk_cache.run_trunk
    monkeypatch.setattr(trunk_cache, "run_trunk", lambda *a, **k: (passes.append(a[6]), real_run_trunk(*a, **k))[1])
    one = [trunk_cache.trunk_features(cfg, trunk, rows, "train", "random", device, None, 0)[0]]
    assert passes == [(0,)] and cache_names(cfg) == [f"trunk_train_fp32_{key}.npy", f"trunk_train_fp32_{key}.ok.npy"]
    four = [trunk_cache.trunk_features(cfg, trunk, rows, "train", "random", device, None, v)[0] for v in range(4)]
    assert passes == [(0,), (1,), (2,), (3,)]  # views 1 to 3 computed; view 0, the same features, read back
    assert len(cache_names(cfg)) == 8 and all(f"_view{v}_{keys[v]}" in " ".join(cache_names(cfg)) for v in (1, 2, 3))
    np.testing.assert_array_equal(np.asarray(one[0]), np.asarray(four[0]))
    with torch.no_grad():  # each view's features: the trunk of that transform of the images, computed here
        x = torch.stack([image_io.image_tensor(image_io.load_rgb(p), cfg.image_size) for p in paths])
        for v, feats in enumerate(four):
            reference = trunk(image_io.dihedral_view(x, v)).numpy()
            np.testing.assert_allclose(np.asarray(feats, np.float32), reference, rtol=1e-2, atol=1e-2)
    assert not np.allclose(np.asarray(four[1], np.float32), np.asarray(four[0], np.float32), atol=1e-2)
    # a split prepared with one view reads view 0 alone; with four, all four; nothing is recomputed
    split = rows.assign(split="train")
    model = backbone.PlanktonNet(6, cfg.image_size, None, backbone.RANDOM_TRUNK_SEED)
    for views in (1, 4):
        data = trunk_cache.prepare(cfg, device, split, model, "random", None, ("train",), views)["train"]
        assert data.views == views
    assert len(passes) == 4
    # images changed: every view's old files go, only the current key's of each view stay
    trunk_cache.trunk_features(cfg, trunk, rows.iloc[:2], "train", "random", device, None, 2)
    new = trunk_cache.view_key(trunk_cache.cache_key(cfg, paths[:2], "random", None), 2)
    assert cache_names(cfg) == sorted([f"trunk_train_fp32_view2_{new}.npy", f"trunk_train_fp32_view2_{new}.ok.npy"])


def test_batches_read_each_images_own_view_or_every_view(split_rows):
    cfg, rows, _ = split_rows
    feats = [
        np.full((3, 2, 1, 1), v, np.float16) + np.arange(3, dtype=np.float16)[:, None, None, None] * 10
        for v in range(4)
    ]
    data = cached_features.CachedSplit(feats, np.ones(3, bool), [0, 1, 2], rows)
    pooled = cached_features.PooledSplit([data, data]).subset([5, 0, 3])  # images 2, 0, 0 of the two parts
    ((x, y),) = pooled.batches(8, views=np.array([3, 1, 0]))
    assert x[:, 0, 0, 0].tolist() == [23, 1, 0] and y.tolist() == [2, 0, 0]
    ((x, _),) = pooled.batches(8, views=cached_features.ALL_VIEWS)
    assert x.shape == (4, 3, 2, 1, 1) and x[:, :, 0, 0, 0].tolist() == [[20 + v, v, v] for v in range(4)]
    ((x, _),) = pooled.batches(8)
    assert x[:, 0, 0, 0].tolist() == [20, 0, 0]  # no views asked: the images as they are
    one = data.first_views(1)
    assert one.views == 1 and cached_features.draw_views(one, torch.Generator()) is None


def test_no_views_draw_no_random_numbers():
    data = cached_features.CachedSplit(np.zeros((5, 1, 1, 1), np.float16), np.ones(5, bool), [0] * 5)
    generator = torch.Generator().manual_seed(7)
    before = generator.get_state()
    assert cached_features.draw_views(data, generator) is None
    assert torch.equal(generator.get_state(), before)  # trunk_views=1 trains on the very shuffles of before


@pytest.fixture
def trained_with_views(make_cfg, monkeypatch):
    """A model trained with trunk_views=2, and the views each training batch and each validation read."""
    cfg, argv = make_cfg("--trunk_views=2", "--epochs=3", "--patience=10")
    reads = []
    real_read = cached_features.CachedSplit.read

    def read(self, chosen, views=None, dtype=torch.float32):
        reads.append(
            (len(self), np.array(chosen), views if isinstance(views, str) or views is None else np.array(views))
        )
        return real_read(self, chosen, views, dtype)

    monkeypatch.setattr(cached_features.CachedSplit, "read", read)
    train.main(argv)
    monkeypatch.undo()
    return cfg, argv, reads


def test_training_draws_a_random_view_per_image_per_epoch_and_validates_on_their_average(trained_with_views):
    cfg, _, reads = trained_with_views
    split = splitting.read_split_file(cfg)
    n_train, n_val = (int((split["split"] == s).sum()) for s in ("train", "val"))
    training = [(chosen, views) for n, chosen, views in reads if n == n_train and not isinstance(views, str)]
    validating = [views for n, _, views in reads if n == n_val]
    assert validating and all(v == cached_features.ALL_VIEWS for v in validating)
    per_epoch = []
    for epoch in range(3):  # the batches of one epoch: every training image once, each in one view of the two
        batches = training[epoch * len(training) // 3 : (epoch + 1) * len(training) // 3]
        chosen = np.concatenate([c for c, _ in batches])
        views = np.concatenate([v for _, v in batches])
        assert sorted(chosen) == list(range(n_train)) and set(views) == {0, 1}
        per_epoch.append(views[np.argsort(chosen)])
    assert not np.array_equal(per_epoch[0], per_epoch[1]) and not np.array_equal(per_epoch[1], per_epoch[2])
    # seeded: the same draw as train.py's generator of that epoch gives
    shuffle = torch.Generator().manual_seed(cfg.seed * 100003 + 1)
    order = torch.randperm(n_train, generator=shuffle)
    assert np.array_equal(per_epoch[0], torch.randint(2, (n_train,), generator=shuffle).numpy())
    assert len(order) == n_train


def test_predictions_average_the_views_and_the_checkpoint_records_them(trained_with_views, capsys):
    cfg, argv, _ = trained_with_views
    best = checkpoint.load(artifacts.out_path(cfg, "checkpoints", "best.pth"))
    assert best["config"]["trunk_views"] == 2
    trained = checkpoint.load_trained(config.load_config(argv + ["--trunk_views=8"]))
    assert trained.cfg.trunk_views == 2 and "using the checkpoint's trunk_views=2" in capsys.readouterr().out
    model, device = trained.model, trained.device
    data = trunk_cache.prepare(trained.cfg, device, trained.split, model, best["weights"], None, ("test",))["test"]
    assert data.views == 2
    logits, embeddings = cached_features.head_outputs(model, data, device, 16)
    with torch.no_grad():  # brute force: each view's features through the head alone, then the mean
        outs = [model.head(torch.from_numpy(np.asarray(f[data.index], np.float32))) for f in data.view_feats]
    np.testing.assert_allclose(logits, torch.stack([o[0] for o in outs]).mean(0).numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(embeddings, torch.stack([o[1] for o in outs]).mean(0).numpy(), rtol=1e-4, atol=1e-4)
    assert not np.allclose(logits, outs[0][0].numpy(), atol=1e-3)  # the average is not the upright output alone
    # predict.py's pass over new images computes the same views and the same average
    paths = splitting.absolute_paths(trained.cfg, data.rows["path"])
    fresh = trunk_cache.image_outputs(model, paths, trained.cfg.image_size, 16, 0, device, None, views=2)
    np.testing.assert_allclose(fresh["logits"], logits, rtol=1e-3, atol=1e-3)
    # evaluate.py and embed.py read the checkpoint's views: their numbers are the averages
    metrics = evaluate.main(argv)
    assert metrics["accuracy"] == pytest.approx((logits.argmax(1) == data.labels.numpy()).mean())
    embed.main(argv)
    _, vectors = embedding_files.load_embeddings(trained.cfg, "test")
    np.testing.assert_allclose(vectors, embeddings, rtol=1e-4, atol=1e-4)


def test_resuming_refuses_other_views_and_an_older_checkpoint_means_one(trained_with_views, tmp_path):
    cfg, argv, _ = trained_with_views
    with pytest.raises(lab.LabError, match=r"settings \['trunk_views'\] differ"):
        train.main(argv + ["--resume=True", "--trunk_views=1"])
    best = checkpoint.load(artifacts.out_path(cfg, "checkpoints", "best.pth"))
    del best["config"]["trunk_views"]  # a checkpoint of before the setting
    assert checkpoint.config_from_checkpoint(best, config.load_config(argv + ["--trunk_views=8"])).trunk_views == 1


def test_the_audit_heads_follow_the_main_runs_stopping_rule():
    cfg = config.load_config([])
    device = torch.device("cpu")
    ckpt = {"config": {"stopping": "averaged"}, "epoch": 3}
    assert label_audit.fold_training(ckpt, cfg, device).stopping == "averaged"
    assert label_audit.fold_training({"config": {}, "epoch": 3}, cfg, device).stopping == "raw"  # before the setting
