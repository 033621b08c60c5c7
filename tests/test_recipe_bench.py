"""The recipe and views benchmarks' own arithmetic (issue 34): the split each seed draws, the spread they report,
and the views benchmark's summary and options (the 8 dihedral views themselves: test_views.py)."""

from types import SimpleNamespace

import numpy as np
import pytest

import lab
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


def test_the_views_summary_is_the_mean_and_sample_standard_deviation_of_each_k():
    rng = np.random.default_rng(1)
    rows = []
    for k in (1, 8):
        for s in range(3):
            row = {"seed": s, "trunk_views": k, "epochs": int(rng.integers(6, 50)), "seconds_per_epoch": 1.0 + s}
            for kind in bench_views.KINDS:
                a = float(rng.uniform(0.8, 1))
                row[kind] = {"accuracy": a, "balanced_accuracy": a - 0.01, "macro_f1": a - 0.02}
            rows.append(row)
    summary = bench_views.summary_of(rows)
    for k in (1, 8):
        mine = [r for r in rows if r["trunk_views"] == k]
        entry = summary[str(k)]
        balanced = [r["averaged"]["balanced_accuracy"] for r in mine]
        assert entry["seeds"] == 3 and entry["averaged/balanced_accuracy"]["mean"] == pytest.approx(np.mean(balanced))
        assert entry["averaged/balanced_accuracy"]["sd"] == pytest.approx(np.std(balanced, ddof=1))
        assert entry["epochs"]["mean"] == pytest.approx(np.mean([r["epochs"] for r in mine]))


def test_the_views_benchmark_takes_only_the_settings_views():
    expected = (range(3, 5), [1, 8], 0, ["--lr=0.1"])
    assert bench_views.own_options(["--views=1,8", "--seeds=2", "--first_seed=3", "--lr=0.1"]) == expected
    with pytest.raises(lab.LabError, match="--views=1,3"):
        bench_views.own_options(["--views=1,3"])
