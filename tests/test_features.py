"""The trunk cache: its key notices every change that alters the features, and its cleanup deletes only its own
stale files."""

import os

import numpy as np
import pandas as pd
import pytest
import torch

import backbone
from lab import artifacts, config, image_io, splitting, trunk_cache


@pytest.fixture
def two_images(make_cfg):
    cfg, _ = make_cfg()
    rows = pd.DataFrame(
        {
            "path": ["chainthin/chainthin_0000.png", "darksphere/darksphere_0000.png"],
            "label": ["chainthin", "darksphere"],
        }
    )
    return cfg, rows, splitting.absolute_paths(cfg, rows["path"])


def test_cache_key_changes_with_everything_that_changes_the_features(two_images, tmp_path):
    cfg, _, paths = two_images
    key = trunk_cache.cache_key(cfg, paths, "weights A", None)
    assert key == trunk_cache.cache_key(cfg, list(paths), "weights A", None)  # stable
    assert len(key) == 16 and all(c in "0123456789abcdef" for c in key)
    bigger = config.load_config([f"--data_root={cfg.data_root!r}", "--image_size=96"])
    variants = [
        trunk_cache.cache_key(cfg, paths[:1], "weights A", None),  # another image list
        trunk_cache.cache_key(cfg, paths[::-1], "weights A", None),  # another order
        trunk_cache.cache_key(bigger, paths, "weights A", None),  # another image size
        trunk_cache.cache_key(cfg, paths, "weights B", None),  # other trunk weights
        trunk_cache.cache_key(cfg, paths, "weights A", torch.bfloat16),
    ]  # another precision
    assert len({key, *variants}) == 1 + len(variants)
    copy = tmp_path / "copy.png"
    copy.write_bytes(open(paths[0], "rb").read())
    before = trunk_cache.cache_key(cfg, [str(copy), paths[1]], "weights A", None)
    os.utime(copy, ns=(1, 1))  # the same bytes, another modification time
    assert trunk_cache.cache_key(cfg, [str(copy), paths[1]], "weights A", None) != before


def test_stale_cleanup_deletes_only_this_splits_older_cache_files_of_one_precision(tmp_path):
    names = {
        "trunk_train_fp32_0123456789abcdef.npy": True,
        "trunk_train_fp32_0123456789abcdef.ok.npy": True,
        "trunk_train_fp32_fedcba9876543210.npy": True,
        "trunk_train_bf16_0123456789abcdef.npy": False,  # another precision: another checkpoint's features
        "trunk_test_fp32_0123456789abcdef.npy": False,  # another split's cache
        "trunk_train_fp32_backup.npy": False,  # a user's file that merely looks similar
        "trunk_train_fp32_0123456789abcdef.npy.tmp123": False,
        "trunk_train_fp32_0123456789ABCDEF.npy": False,
        "notes.txt": False,
    }
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    removed = trunk_cache.remove_stale_caches(tmp_path, "train", None)
    assert sorted(removed) == sorted(n for n, stale in names.items() if stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n for n, stale in names.items() if not stale)


def test_trunk_features_are_cached_reused_and_equal_to_the_trunk(two_images, monkeypatch):
    cfg, rows, paths = two_images
    trunk = backbone.build_trunk(None, backbone.RANDOM_TRUNK_SEED)
    device = torch.device("cpu")
    feats, ok = trunk_cache.trunk_features(cfg, trunk, rows, "train", "random", device, None)
    side = backbone.trunk_side(cfg.image_size)
    assert feats.shape == (2, backbone.TRUNK_CHANNELS, side, side) and feats.dtype == np.float16 and ok.all()
    with torch.no_grad():
        x = torch.stack([image_io.image_tensor(image_io.load_rgb(p), cfg.image_size) for p in paths])
        reference = trunk(x).numpy()
    np.testing.assert_allclose(np.asarray(feats, np.float32), reference, rtol=1e-2, atol=1e-2)  # float16 storage

    def must_not_run(*args, **kwargs):
        raise AssertionError("the cache was not reused")

    monkeypatch.setattr(trunk_cache, "run_trunk", must_not_run)
    again, _ = trunk_cache.trunk_features(cfg, trunk, rows, "train", "random", device, None)
    np.testing.assert_array_equal(np.asarray(again), np.asarray(feats))
    cached = sorted(p.name for p in artifacts.out_path(cfg, "cache").iterdir())
    assert len(cached) == 2 and all(n.startswith("trunk_train_fp32_") for n in cached)
    monkeypatch.undo()
    bf16, _ = trunk_cache.trunk_features(cfg, trunk, rows, "train", "random", device, torch.bfloat16)
    assert len(list(artifacts.out_path(cfg, "cache").iterdir())) == 4  # the fp32 features are never overwritten
    error = np.linalg.norm(np.asarray(bf16, np.float32) - reference) / np.linalg.norm(reference)
    assert 0 < error < 0.1  # bf16 features: close to fp32, and really computed in bf16
