"""The recipe and views benchmarks' own arithmetic (issue 34): the split each seed draws, the spread they report,
and the 8 dihedral views of an image."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from bench import bench_recipe, bench_views


def test_each_seed_draws_a_stratified_split_of_every_image_once_and_another_seed_another():
    labels = np.repeat(np.arange(3), [200, 100, 40])
    cfg = SimpleNamespace(val_fraction=0.05, test_fraction=0.20)
    train, val, test = bench_recipe.draw_split(labels, cfg, seed=0)
    assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(len(labels)))  # each image once
    for c, n in enumerate((200, 100, 40)):
        assert abs((labels[test] == c).sum() - 0.20 * n) <= 1 and abs((labels[val] == c).sum() - 0.05 * n) <= 1
    assert not np.array_equal(test, bench_recipe.draw_split(labels, cfg, seed=1)[2])


def test_the_summary_is_the_mean_and_sample_standard_deviation_of_each_rule():
    rng = np.random.default_rng(0)
    rows = [
        {"variant": "constant", "rule": rule, "seed": s, "accuracy": a, "macro_f1": a, "balanced_accuracy": a}
        | {"epochs_trained": int(e), "epoch_kept": int(e) - 5}
        for rule in ("raw", "weights_ema")
        for s, (a, e) in enumerate(zip(rng.uniform(0.8, 1, 5), rng.integers(6, 50, 5)))
    ]
    summary = bench_recipe.summary_of(rows)
    for rule in ("raw", "weights_ema"):
        accuracy = [r["accuracy"] for r in rows if r["rule"] == rule]
        epochs = [r["epochs_trained"] for r in rows if r["rule"] == rule]
        entry = summary[f"constant/{rule}"]
        assert entry["seeds"] == 5 and entry["accuracy"]["mean"] == pytest.approx(sum(accuracy) / 5)
        assert entry["accuracy"]["sd"] == pytest.approx(np.std(accuracy, ddof=1))
        assert entry["epochs_trained"]["mean"] == pytest.approx(sum(epochs) / 5)


def test_noise_patience_waits_longer_when_the_loss_jumps():
    steady, noisy = bench_recipe.NoisePatience(5), bench_recipe.NoisePatience(5)
    for loss in [0.5] + [0.51] * 5:
        steady.step(loss)
    for loss in [0.5, 1.5, 0.6, 1.4, 0.7, 1.3]:
        noisy.step(loss)
    assert steady.stale == noisy.stale == 5 and steady.stop and not noisy.stop


def test_the_views_of_an_image_are_its_eight_dihedral_transforms():
    image = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4)  # no symmetry: 8 distinct views
    views = [bench_views.dihedral(image, v)[0].numpy() for v in range(bench_views.VIEWS)]
    plain = image[0].numpy()
    brute_force = [np.rot90(plain, k, axes=(1, 2)) for k in range(4)]
    brute_force += [np.flip(np.rot90(plain, k, axes=(1, 2)), axis=2) for k in range(4)]
    assert all(np.array_equal(v, b) for v, b in zip(views, brute_force))
    assert len({v.tobytes() for v in views}) == 8 and np.array_equal(views[0], plain)
