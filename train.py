"""Train the head on the frozen trunk's cached features (mission task 3).

Reads data_root and results/split.csv (made here on first use, see dataloader.py). Writes:
  checkpoints/best.pth          the model with the lowest validation loss (first epoch included), with the
                                resolved config, class names and the trunk weights used; written atomically
  checkpoints/last.pth          the state after the last finished epoch, for --resume=True
  checkpoints/previous/         the previous run's best.pth, last.pth, history, plot and provenance, set aside
                                when a fresh run starts
  results/train_history.csv     per epoch: loss and accuracy on train and validation, seconds
  figs/training_plot.png        loss and accuracy curves
  results/train_manifest.json   the history's and the plot's digests, and those of the best.pth and split.csv they
                                belong to (written last: manifest.py)
Cross-entropy (with class_weighting="balanced", each class weighted n / (classes x n_class) by its training
count, in the training and the validation loss), Adam, batches of batch_size, at most `epochs` epochs, early
stopping after `patience` epochs without a better validation loss. By default (stopping="averaged") the head's
weights are averaged over epochs (an exponential moving average, lab/head_training.py), and it is the averaged
weights that are validated, stopped on and kept in best.pth (history: their validation loss and accuracy): one
lucky or unlucky epoch on a small validation split no longer decides the model. stopping="smoothed" stops on a moving
average of the validation loss, stopping="raw" on each epoch's own (the rule before issue 34). With trunk_views=k >
1 the trunk's output is cached in k dihedral views of each image; each epoch trains on a random view of each image
(seeded), and the validation averages the views, as every later prediction does. Both checkpoints
record the rule and its state; last.pth the average too, for --resume (docs/training-recipe.md). The head's
forward and backward passes run in bf16 autocast where the hardware has bf16 natively (head_precision="auto"; fp32
elsewhere), recorded in the checkpoints, on the threads cpu_threads says ("auto", as for the trunk pass: the faster
of one thread and torch's count, timed as it trains; docs/performance.md, "The head under load"). Ctrl-C stops
after the last finished epoch; resume with `python train.py --resume=True`.
"""

import contextlib
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field

import pandas as pd
import torch

import backbone
import lab
from lab import (
    artifacts,
    cached_features,
    checkpoint,
    config,
    head_training,
    manifest,
    plotting,
    precision,
    runtime,
    splitting,
    thread_choice,
    trunk_cache,
)


def plot_history(history, path):
    plt = plotting.pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for part, style in (("train", "-o"), ("val", "-s")):
        ax_loss.plot(history["epoch"], history[f"{part}_loss"], style, ms=3, label=part)
        ax_acc.plot(history["epoch"], history[f"{part}_acc"], style, ms=3, label=part)
    if "val_loss_smoothed" in history and not history["val_loss_smoothed"].equals(history["val_loss"]):
        ax_loss.plot(history["epoch"], history["val_loss_smoothed"], "--", label="val, smoothed (stopping)")
    best = history.loc[history[kept_loss_column(history)].idxmin()]
    ax_loss.axvline(best["epoch"], color="grey", ls=":", label=f"best (epoch {int(best['epoch'])})")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="Accuracy", ylim=(0, 1.02))
    ax_loss.legend()
    ax_acc.legend()
    plotting.save_figure(path, fig)


def kept_loss_column(history):
    """The history's column whose lowest value marks the epoch kept in best.pth: the loss the stopping rule compared
    (a history of a run before the rule was recorded has only the raw one)."""
    return "val_loss_smoothed" if "val_loss_smoothed" in history else "val_loss"


def save_summary(cfg, history):
    """The history CSV and the loss/accuracy plot, published as one set with what they (and best.pth) belong to."""
    if not history:
        return
    frame = pd.DataFrame(history)
    with manifest.OutputSet(cfg, "train") as out:
        out.save_csv("results", "train_history.csv", frame)
        plot_history(frame, out.file("figs", "training_plot.png"))
        out.publish(
            checkpoint=manifest.artifact_digest(cfg, "checkpoints", "best.pth"), split=splitting.split_digest(cfg)
        )


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


PREVIOUS_RUN = (
    ("checkpoints", "best.pth"),
    ("checkpoints", "last.pth"),
    ("results", "train_history.csv"),
    ("figs", "training_plot.png"),
    ("results", "train_manifest.json"),
)


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


@dataclass
class Run:
    """Where training starts: the precisions of the trunk's features and of the head's arithmetic, and, when
    resuming, the state of the interrupted run (model, optimizer and random state already restored)."""

    trunk_dtype: torch.dtype | None
    head_dtype: torch.dtype | None
    history: list = field(default_factory=list)
    stopping_state: dict | None = None  # head_training.EarlyStopping's, when resuming
    average_state: dict | None = None  # the averaged weights' AveragedModel, when resuming stopping="averaged"
    first_epoch: int = 1


def start_or_resume(cfg, device, model, optimizer, split_digest):
    """A fresh run's precisions, or everything of the interrupted run (checkpoints/last.pth): refused, before any
    trunk work, when the split or a setting changed since. The one place that knows about resuming."""
    if not cfg.resume:
        return Run(precision.trunk_dtype(cfg.precision, device), precision.head_dtype(cfg.head_precision, device))
    last = checkpoint.resume_state(cfg)
    if last["split_digest"] != split_digest:
        raise lab.LabError(
            "Cannot resume: results/split.csv has changed since the interrupted run (it was "
            "drawn anew, or grew by new images). Continuing would train one model on two splits. "
            "Start afresh without --resume=True."
        )
    model.load_state_dict(last["model_state"])
    optimizer.load_state_dict(last["optimizer_state"])
    torch.set_rng_state(last["torch_rng"])
    print(f"[resume] continuing after epoch {last['epoch']} (best validation loss {last['best_loss']:.4f})")
    # a last.pth from before the rule was recorded stopped on the raw loss: its best and stale go on as they were
    stopping_state = last.get("stopping") or {"smoothed": None, "best": last["best_loss"], "stale": last["stale"]}
    # the same features and the same arithmetic as before, whatever "auto" says on this machine
    return Run(
        checkpoint.trunk_dtype(last, device),
        precision.PRECISIONS[last.get("head_precision", "fp32")],
        last["history"],
        stopping_state,
        last.get("average_state"),
        last["epoch"] + 1,
    )


def train_one_epoch(model, data, device, cfg, optimizer, epoch, weights, head_dtype):
    """One pass over the training images in this epoch's seeded order, each image in a random one of its cached
    dihedral views when trunk_views > 1 (resumable: one seed per epoch for both)."""
    shuffle = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
    order = torch.randperm(len(data), generator=shuffle)
    return head_training.run_epoch(
        model,
        data,
        device,
        cfg.batch_size,
        optimizer,
        order,
        desc=f"epoch {epoch}/{cfg.epochs}",
        weights=weights,
        dtype=head_dtype,
        views=cached_features.draw_views(data, shuffle),  # None (nothing drawn) with one view
    )


def evaluate(model, data, device, cfg, weights, head_dtype):
    return head_training.run_epoch(model, data, device, cfg.batch_size, weights=weights, dtype=head_dtype)


def weights_text(classes, weights):
    """Each class's loss weight; past config.NAMES_SHOWN classes, their range."""
    if len(classes) <= config.NAMES_SHOWN:
        return ", ".join(f"{c} {w:.2f}" for c, w in zip(classes, weights))
    low, high = min(range(len(weights)), key=weights.__getitem__), max(range(len(weights)), key=weights.__getitem__)
    return (
        f"from {weights[low]:.2f} ({classes[low]}) to {weights[high]:.2f} ({classes[high]}) over {len(classes)} "
        "classes (n / (classes x n_class), n_class from results/dataset_summary.csv)"
    )


def fit(cfg, model, optimizer, data, device, run, trunk_weights, split_digest):
    """The epochs: train, validate, keep the best model, stop early; a summary whatever happens."""
    best_path = artifacts.out_path(cfg, "checkpoints", "best.pth")
    last_path = artifacts.out_path(cfg, "checkpoints", "last.pth")
    trunk_precision = precision.precision_name(run.trunk_dtype)
    head_precision = precision.precision_name(run.head_dtype)
    print(
        f"[train] {len(data['train'])} train / {len(data['val'])} validation images, {len(cfg.seen_classes)} "
        f"classes, up to {cfg.epochs} epochs (patience {cfg.patience}, stopping {cfg.stopping!r}) on {device}, head "
        f"in {head_precision}" + (f", {cfg.trunk_views} dihedral views of each image" if cfg.trunk_views > 1 else "")
    )
    weights = head_training.class_weights(data["train"].labels.numpy(), len(cfg.seen_classes), cfg.class_weighting)
    if weights is not None:
        print("[train] class_weighting='balanced': loss weights " + weights_text(cfg.seen_classes, weights.tolist()))
    history, epoch = run.history, run.first_epoch - 1
    rule, averaged = head_training.STOPPING[cfg.stopping]
    stopping = head_training.EarlyStopping(rule, cfg.patience, state=run.stopping_state)
    average = head_training.weight_average(model) if averaged else None
    if average is not None and run.average_state is not None:
        average.load_state_dict(run.average_state)
    validated = average.module if average is not None else model  # the weights validated, stopped on and kept

    def save(path, net, **extra):
        checkpoint.save(
            path,
            checkpoint.payload(
                cfg,
                net,
                trunk_weights,
                split_digest,
                trunk_precision,
                epoch=epoch,
                head_precision=head_precision,
                stopping=stopping.state_dict(),
                **extra,
            ),
        )

    epochs_saved = len(history)  # the epochs last.pth holds: an interrupt between two saves leaves the summary at them
    try:
        for epoch in range(run.first_epoch, cfg.epochs + 1):
            t0 = time.time()
            train_loss, train_acc = train_one_epoch(
                model, data["train"], device, cfg, optimizer, epoch, weights, run.head_dtype
            )
            if average is not None:
                average.update_parameters(model)
            val_loss, val_acc = evaluate(validated, data["val"], device, cfg, weights, run.head_dtype)
            if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
                kept = (
                    f"{best_path} keeps the best model so far"
                    if stopping.best < math.inf
                    else "no model was saved (the previous run's checkpoints, if any, are in checkpoints/previous/)"
                )
                raise lab.LabError(
                    f"Training diverged in epoch {epoch}: the loss became NaN or infinite "
                    f"(lr={cfg.lr}). Training stopped; {kept}. Lower the learning rate (the default "
                    f"is {config.default_of('lr')!r}) and run train.py again."
                )
            history.append(
                {
                    "epoch": epoch,
                    "train_loss": train_loss,
                    "train_acc": train_acc,
                    "val_loss": val_loss,
                    "val_acc": val_acc,
                    "seconds": time.time() - t0,
                }
            )
            improved = stopping.step(val_loss)
            history[-1]["val_loss_smoothed"] = stopping.smoothed
            if improved:
                save(best_path, validated, val_loss=val_loss, val_acc=val_acc)
            save(
                last_path,
                model,
                average_state=None if average is None else average.state_dict(),
                optimizer_state=optimizer.state_dict(),
                torch_rng=torch.get_rng_state(),
                history=history,
                best_loss=stopping.best,
                stale=stopping.stale,
            )
            epochs_saved = len(history)
            print(
                f"epoch {epoch:3d}  train loss {train_loss:.4f} acc {train_acc:.3f}  |  val loss {val_loss:.4f} "
                f"acc {val_acc:.3f}  {'* saved best' if improved else ''}  ({time.time() - t0:.1f} s)",
                flush=True,
            )
            if stopping.stop:
                smoothed = {"averaged": " of the averaged weights", "smoothed": " (smoothed)"}.get(cfg.stopping, "")
                print(f"[train] early stop: no better validation loss{smoothed} for {cfg.patience} epochs")
                break
    except KeyboardInterrupt:
        with deferred_interrupts():  # a second Ctrl-C must not cut the summary being saved
            save_summary(cfg, history[:epochs_saved])
        print(
            f"\nInterrupted during epoch {epoch}. {last_path} holds the state after the last finished epoch "
            f"and {best_path} the best model so far. Continue with `python train.py --resume=True`.",
            file=sys.stderr,
        )
        raise SystemExit(130) from None
    except BaseException:
        save_summary(cfg, history)
        raise
    save_summary(cfg, history)
    best = min(history, key=lambda h: h[kept_loss_column(h)])
    print(
        f"[train] best validation loss {best['val_loss']:.4f} (smoothed {best[kept_loss_column(best)]:.4f}, "
        f"accuracy {best['val_acc']:.3f}) at epoch {best['epoch']}, saved to {best_path}"
    )
    return history


def main(argv=None):
    cfg = config.load_config(argv, __doc__)
    config.print_settings(cfg)
    artifacts.ensure_output_dirs(cfg)
    device = runtime.select_device(cfg.device)
    runtime.seed_everything(cfg.seed)
    split = splitting.read_or_draw_split(cfg)
    split_digest = splitting.split_digest(cfg)
    model = backbone.build_model(cfg, len(cfg.seen_classes))
    trunk_weights = backbone.describe_weights(cfg.backbone_weights)
    print(f"[trunk weights] {trunk_weights}")
    backbone.print_model_summary(model, cfg.image_size)
    model.to(device)
    optimizer = head_training.adam(model, cfg.lr)
    run = start_or_resume(cfg, device, model, optimizer, split_digest)
    data = trunk_cache.prepare(cfg, device, split, model, trunk_weights, run.trunk_dtype)
    if not cfg.resume:  # only now: a run stopped during its trunk pass leaves the previous model in place
        set_previous_run_aside(cfg)
    if (run.stopping_state or {}).get("stale", 0) >= cfg.patience or run.first_epoch > cfg.epochs:
        print("[resume] that run had already finished; nothing to do.")
        return run.history
    with thread_choice.chosen(cfg.cpu_threads) as threads:  # the head's thread count; torch's own after it
        history = fit(cfg, model, optimizer, data, device, run, trunk_weights, split_digest)
    if device.type == "cpu":
        print(f"[train] the head ran on {threads.describe(('train', 'eval'))} (cpu_threads={cfg.cpu_threads!r})")
    return history


if __name__ == "__main__":
    runtime.run_main(lambda: main(sys.argv[1:]))
