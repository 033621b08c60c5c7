"""The early-stopping rule (issue 34): it stops and keeps the best weights on scripted validation losses, train.py
records it in its checkpoints, and resuming goes on with the same rule and the same averages."""

import numpy as np
import pandas as pd
import pytest
import torch

import lab
import train
from lab import artifacts, checkpoint, head_training

REAL_RUN_EPOCH = head_training.run_epoch  # wrapped by each scripted run, never a wrapper of a wrapper
# A noisy validation loss: epoch 4 is a lucky dip (0.15) that the raw rule keeps, the smoothed one does not.
NOISY = [1.0, 0.6, 0.5, 0.15, 0.7, 0.45, 0.4, 0.38, 0.37, 0.6, 0.7, 0.8, 0.9, 0.9, 0.9]


def reference(losses, rule, patience, smoothing):
    """(epoch kept, epoch stopped at), 1-based, computed another way: pandas' exponentially weighted mean
    (adjust=False is y0 = x0, yt = (1 - a) y(t-1) + a xt), then the first epoch `patience` after the running
    minimum."""
    compared = pd.Series(losses).ewm(alpha=smoothing, adjust=False).mean() if rule == "ema" else pd.Series(losses)
    best, best_epoch = np.inf, 0
    for epoch, value in enumerate(compared, start=1):
        if value < best:
            best, best_epoch = value, epoch
        if epoch - best_epoch >= patience:
            return best_epoch, epoch
    return best_epoch, len(losses)


def run_rule(losses, rule, patience, smoothing=head_training.LOSS_SMOOTHING):
    stopping = head_training.EarlyStopping(rule, patience, smoothing)
    kept = 0
    for epoch, loss in enumerate(losses, start=1):
        if stopping.step(loss):
            kept = epoch
        if stopping.stop:
            return kept, epoch
    return kept, len(losses)


@pytest.mark.parametrize("rule", ["raw", "ema"])
@pytest.mark.parametrize("patience", [1, 3, 5])
def test_the_rule_keeps_and_stops_where_a_brute_force_reference_does(rule, patience):
    for seed in range(20):
        losses = NOISY if seed == 0 else list(np.random.default_rng(seed).gamma(2.0, 0.3, size=30))
        assert run_rule(losses, rule, patience) == reference(losses, rule, patience, head_training.LOSS_SMOOTHING)


def test_one_lucky_epoch_wins_the_raw_rule_but_not_the_smoothed_one():
    assert run_rule(NOISY, "raw", 5) == (4, 9)  # the dip at epoch 4, then 5 epochs without better: stopped at 9
    kept, stopped = run_rule(NOISY, "ema", 5)
    assert kept == 9 and stopped == 14  # the smoothed loss keeps falling through 0.45 .. 0.37, so it trains on


def scripted_validation(monkeypatch, losses):
    """train.py's run_epoch with the validation losses replaced by `losses`, one per epoch; returns the classifier's
    weights noted after each training pass and at each validation (of the weights validated)."""
    real_epoch, scripted, trained, validated = REAL_RUN_EPOCH, iter(losses), [], []

    def epoch(model, data, device, batch_size, optimizer=None, *args, **kwargs):
        result = real_epoch(model, data, device, batch_size, optimizer, *args, **kwargs)
        if optimizer is not None:
            trained.append(model.classifier.weight.detach().clone())
            return result
        validated.append(model.classifier.weight.detach().clone())
        return next(scripted), result[1]

    monkeypatch.setattr(head_training, "run_epoch", epoch)
    return trained, validated


@pytest.mark.parametrize("stopping", ["raw", "smoothed", "averaged"])
def test_training_stops_on_the_rule_and_best_pth_holds_the_kept_epochs_weights(make_cfg, monkeypatch, stopping):
    cfg, argv = make_cfg("--epochs=15", "--patience=5", f"--stopping={stopping!r}")
    trained, validated = scripted_validation(monkeypatch, NOISY)
    history = train.main(argv)
    rule, averaged = head_training.STOPPING[stopping]
    kept, stopped = reference(NOISY, rule, 5, head_training.LOSS_SMOOTHING)
    assert len(history) == stopped and [h["val_loss"] for h in history] == NOISY[:stopped]
    best = checkpoint.load(artifacts.out_path(cfg, "checkpoints", "best.pth"))
    assert best["epoch"] == kept and torch.equal(best["model_state"]["classifier.weight"], validated[kept - 1])
    assert not torch.equal(validated[kept - 1], validated[-1])  # the kept weights are not merely the last ones
    # what was validated: the weights as trained, or their average, computed here by brute force
    expected = trained[0]
    for epoch, weights in enumerate(trained):
        expected = weights if not averaged or epoch == 0 else 0.7 * expected + 0.3 * weights
        assert torch.allclose(validated[epoch], expected, atol=1e-6), epoch
    # the checkpoint records the recipe: the setting, the rule, its smoothing and its state
    assert best["config"]["stopping"] == stopping and best["stopping"]["rule"] == rule
    assert best["stopping"]["smoothing"] == (head_training.LOSS_SMOOTHING if rule == "ema" else None)
    frame = pd.read_csv(artifacts.out_path(cfg, "results", "train_history.csv"))
    assert int(frame.loc[frame["val_loss_smoothed"].idxmin(), "epoch"]) == kept


@pytest.mark.parametrize("stopping", ["smoothed", "averaged"])
def test_resuming_goes_on_with_the_same_rule_and_averages_and_refuses_another(
    make_cfg, monkeypatch, tmp_path, stopping
):
    rule = f"--stopping={stopping!r}"
    whole_cfg, whole_argv = make_cfg("--epochs=12", "--patience=100", rule, output_dir=tmp_path / "whole")
    scripted_validation(monkeypatch, NOISY)
    whole = train.main(whole_argv)
    cfg, argv = make_cfg("--epochs=6", "--patience=100", rule, output_dir=tmp_path / "cut")
    scripted_validation(monkeypatch, NOISY)
    train.main(argv)
    with pytest.raises(lab.LabError, match=r"settings \['stopping'\] differ"):
        train.main(argv + ["--epochs=12", "--resume=True", "--stopping='raw'"])
    scripted_validation(monkeypatch, NOISY[6:])
    resumed = train.main(argv + ["--epochs=12", "--resume=True"])
    assert [h["val_loss_smoothed"] for h in resumed] == pytest.approx([h["val_loss_smoothed"] for h in whole])
    ends = [checkpoint.load(artifacts.out_path(c, "checkpoints", "best.pth")) for c in (whole_cfg, cfg)]
    assert ends[0]["epoch"] == ends[1]["epoch"]
    for key, value in ends[0]["model_state"].items():  # the same average, carried over by last.pth
        assert torch.allclose(value.float(), ends[1]["model_state"][key].float(), atol=1e-5), key
