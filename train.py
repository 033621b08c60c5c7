"""Train the head on the frozen trunk's cached features (mission task 3).

Reads data_root and results/split.csv (made here on first use, see dataloader.py). Writes:
  checkpoints/best.pth          the model with the lowest validation loss (first epoch included), with the
                                resolved config, class names and the trunk weights used; written atomically
  checkpoints/last.pth          the state after the last finished epoch, for --resume=True
  checkpoints/previous/         the previous run's best.pth, last.pth, history, plot and provenance, set aside
                                when a fresh run starts
  results/train_history.csv     per epoch: loss and accuracy on train and validation, seconds
  figs/training_plot.png        loss and accuracy curves
  results/provenance_train.json the digest of the best.pth and split.csv these belong to
Cross-entropy (with class_weighting="balanced", each class weighted n / (classes x n_class) by its training
count, in the training and the validation loss), Adam, batches of batch_size, at most `epochs` epochs, early
stopping on the validation loss after `patience` epochs without improvement. The head's forward and backward
passes run in bf16 autocast where the hardware has bf16 natively (head_precision="auto"; fp32 elsewhere),
recorded in the checkpoints. Ctrl-C stops after the last finished epoch; resume with
`python train.py --resume=True`.
"""
import contextlib
import math
import os
import signal
import sys
import time

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

import backbone
import lab
from lab import artifacts, checkpoint, config, output_lock, plotting, provenance, runtime, splitting, trunk_cache


def class_weights(labels, n_classes, weighting):
    """None for plain cross-entropy; for "balanced", n / (classes x n_class) per class, as scikit-learn's
    compute_class_weight: the weights average 1 over the training images, so the loss keeps its scale."""
    if weighting == "none":
        return None
    counts = np.bincount(np.asarray(labels), minlength=n_classes).astype(np.float64)
    weights = np.divide(counts.sum(), n_classes * counts, out=np.zeros(n_classes), where=counts > 0)
    return torch.tensor(weights, dtype=torch.float32)


def run_epoch(model, data, device, batch_size, optimizer=None, order=None, desc=None, weights=None, dtype=None):
    """One pass; trains when an optimizer is given. Returns (mean loss, accuracy). weights: per-class loss weights;
    dtype: the head's autocast dtype (backbone.head_dtype), or None for fp32."""
    criterion = nn.CrossEntropyLoss(weight=None if weights is None else weights.to(device), reduction="sum")
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype is not None else contextlib.nullcontext
    model.train(optimizer is not None)
    total_loss, correct = 0.0, 0
    batches = data.batches(batch_size, order)
    if desc:
        batches = tqdm(batches, total=math.ceil(len(data) / batch_size), desc=desc, unit="batch", leave=False,
                       disable=None)
    with torch.set_grad_enabled(optimizer is not None):
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            with autocast():  # the loss too: autocast computes cross-entropy in fp32 from bf16 logits
                logits, _ = model.head(x)
                loss = criterion(logits, y)
            if not torch.isfinite(loss):
                return float("nan"), 0.0
            if optimizer is not None:
                optimizer.zero_grad(set_to_none=True)
                (loss / len(y)).backward()
                optimizer.step()
            total_loss += loss.item()
            correct += (logits.argmax(1) == y).sum().item()
    return total_loss / max(len(data), 1), correct / max(len(data), 1)


def plot_history(history, path):
    plt = plotting.pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for part, style in (("train", "-o"), ("val", "-s")):
        ax_loss.plot(history["epoch"], history[f"{part}_loss"], style, ms=3, label=part)
        ax_acc.plot(history["epoch"], history[f"{part}_acc"], style, ms=3, label=part)
    best = history.loc[history["val_loss"].idxmin()]
    ax_loss.axvline(best["epoch"], color="grey", ls=":", label=f"best (epoch {int(best['epoch'])})")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="Accuracy", ylim=(0, 1.02))
    ax_loss.legend()
    ax_acc.legend()
    plotting.save_figure(path, fig)


def save_summary(cfg, history):
    """The history CSV, the loss/accuracy plot and what they (and best.pth) belong to."""
    if not history:
        return
    frame = pd.DataFrame(history)
    artifacts.save_csv(artifacts.out_path(cfg, "results", "train_history.csv"), frame)
    plot_history(frame, artifacts.out_path(cfg, "figs", "training_plot.png"))
    provenance.record_inputs(cfg, "train", checkpoint=provenance.artifact_digest(cfg, "checkpoints", "best.pth"),
                             split=splitting.split_digest(cfg))


@contextlib.contextmanager
def deferred_interrupts():
    """Hold further Ctrl-C while the summary is written; say so, and act on it afterwards."""
    pressed = []

    def note(signum, frame):
        pressed.append(signum)
        print("\n(still saving the training summary; a moment ...)", file=sys.stderr, flush=True)
    previous = signal.signal(signal.SIGINT, note)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


PREVIOUS_RUN = (("checkpoints", "best.pth"), ("checkpoints", "last.pth"), ("results", "train_history.csv"),
                ("figs", "training_plot.png"), ("results", "provenance_train.json"))


def set_previous_run_aside(cfg):
    """A fresh run starts without the last run's checkpoints and training summary, so that nothing later mistakes
    them for this run's (e.g. when this one diverges before its first epoch); they are kept together in
    checkpoints/previous/, which holds one run: the files of the run before it are removed first, so that a run
    killed before its summary never leaves its checkpoints beside an older run's history."""
    found = [artifacts.out_path(cfg, *where) for where in PREVIOUS_RUN if artifacts.out_path(cfg, *where).exists()]
    if not found:
        return
    aside = artifacts.out_path(cfg, "checkpoints", "previous")
    aside.mkdir(exist_ok=True)
    for _, name in PREVIOUS_RUN:  # the run before: none of its files may stay beside the previous run's
        (aside / name).unlink(missing_ok=True)
    for path in found:
        os.replace(path, aside / path.name)
    print(f"[train] the previous run's {', '.join(p.name for p in found)} moved to {aside}/")


def train(cfg):
    device = runtime.select_device(cfg.device)
    runtime.seed_everything(cfg.seed)
    split = splitting.load_split(cfg)
    model = backbone.build_model(cfg, len(cfg.seen_classes))
    weights_id = backbone.describe_weights(cfg.backbone_weights, cfg.seed)
    print(f"[trunk weights] {weights_id}")
    backbone.print_model_summary(model, cfg.image_size)
    digest = splitting.split_digest(cfg)
    dtype = backbone.trunk_dtype(cfg.precision, device)
    head = backbone.head_dtype(cfg.head_precision, device)
    if cfg.resume:  # refused before any trunk work when the run cannot be continued
        last = checkpoint.resume_state(cfg)
        if last["split_digest"] != digest:
            raise lab.LabError("Cannot resume: results/split.csv has changed since the interrupted run (it was "
                               "drawn anew). Continuing would train one model on two splits. Start afresh without "
                               "--resume=True.")
        dtype = checkpoint.trunk_dtype(last, device)  # the same features as before, whatever 'auto' says here
        head = backbone.PRECISIONS[last.get("head_precision", "fp32")]  # and the same arithmetic
    data = trunk_cache.prepare(cfg, device, split, model, weights_id, dtype)
    if not cfg.resume:  # only now: a run stopped during its trunk pass leaves the previous model in place
        set_previous_run_aside(cfg)
    model.to(device)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    history, best_loss, stale, start = [], math.inf, 0, 1
    if cfg.resume:
        model.load_state_dict(last["model_state"])
        optimizer.load_state_dict(last["optimizer_state"])
        torch.set_rng_state(last["torch_rng"])
        history, best_loss, stale, start = last["history"], last["best_loss"], last["stale"], last["epoch"] + 1
        print(f"[resume] continuing after epoch {last['epoch']} (best validation loss {best_loss:.4f})")
        if stale >= cfg.patience or start > cfg.epochs:
            print("[resume] that run had already finished; nothing to do.")
            return history
    best_path = artifacts.out_path(cfg, "checkpoints", "best.pth")
    last_path = artifacts.out_path(cfg, "checkpoints", "last.pth")
    print(f"[train] {len(data['train'])} train / {len(data['val'])} validation images, {len(cfg.seen_classes)} "
          f"classes, up to {cfg.epochs} epochs (patience {cfg.patience}) on {device}, head in "
          f"{backbone.precision_name(head)}")
    precision = backbone.precision_name(dtype)
    weights = class_weights(data["train"].labels.numpy(), len(cfg.seen_classes), cfg.class_weighting)
    if weights is not None:
        print("[train] class_weighting='balanced': loss weights " + ", ".join(
            f"{c} {w:.2f}" for c, w in zip(cfg.seen_classes, weights.tolist())))
    head_precision = backbone.precision_name(head)
    epoch = start - 1
    try:
        for epoch in range(start, cfg.epochs + 1):
            t0 = time.time()
            shuffle = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)  # resumable: one seed per epoch
            order = torch.randperm(len(data["train"]), generator=shuffle)
            train_loss, train_acc = run_epoch(model, data["train"], device, cfg.batch_size, optimizer, order,
                                              desc=f"epoch {epoch}/{cfg.epochs}", weights=weights, dtype=head)
            val_loss, val_acc = run_epoch(model, data["val"], device, cfg.batch_size, weights=weights, dtype=head)
            if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
                kept = (f"{best_path} keeps the best model so far" if best_loss < math.inf else
                        "no model was saved (the previous run's checkpoints, if any, are in checkpoints/previous/)")
                raise lab.LabError(f"Training diverged in epoch {epoch}: the loss became NaN or infinite "
                                   f"(lr={cfg.lr}). Training stopped; {kept}. Lower the learning rate (the default "
                                   f"is 0.0014) and run train.py again.")
            history.append({"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc,
                            "val_loss": val_loss, "val_acc": val_acc, "seconds": time.time() - t0})
            improved = val_loss < best_loss
            if improved:
                best_loss, stale = val_loss, 0
                checkpoint.save(best_path, checkpoint.payload(cfg, model, weights_id, digest, precision,
                                                              epoch=epoch, val_loss=val_loss, val_acc=val_acc,
                                                              head_precision=head_precision))
            else:
                stale += 1
            checkpoint.save(last_path, checkpoint.payload(
                cfg, model, weights_id, digest, precision, epoch=epoch, optimizer_state=optimizer.state_dict(),
                torch_rng=torch.get_rng_state(), history=history, best_loss=best_loss, stale=stale,
                head_precision=head_precision))
            print(f"epoch {epoch:3d}  train loss {train_loss:.4f} acc {train_acc:.3f}  |  val loss {val_loss:.4f} "
                  f"acc {val_acc:.3f}  {'* saved best' if improved else ''}  ({time.time() - t0:.1f} s)", flush=True)
            if stale >= cfg.patience:
                print(f"[train] early stop: no better validation loss for {cfg.patience} epochs")
                break
    except KeyboardInterrupt:
        with deferred_interrupts():  # a second Ctrl-C must not cut the summary being saved
            save_summary(cfg, history)
        print(f"\nInterrupted during epoch {epoch}. {last_path} holds the state after the last finished epoch "
              f"and {best_path} the best model so far. Continue with `python train.py --resume=True`.",
              file=sys.stderr)
        raise SystemExit(130) from None
    except BaseException:
        save_summary(cfg, history)
        raise
    save_summary(cfg, history)
    best = min(history, key=lambda h: h["val_loss"])
    print(f"[train] best validation loss {best['val_loss']:.4f} (accuracy {best['val_acc']:.3f}) at epoch "
          f"{best['epoch']}, saved to {best_path}")
    return history


def main(argv=None):
    cfg = config.load_config(argv, __doc__)
    config.print_config(cfg)
    output_lock.ensure_output_dirs(cfg)
    return train(cfg)


if __name__ == "__main__":
    runtime.run_main(lambda: main(sys.argv[1:]))
