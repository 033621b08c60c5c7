"""Train the head on the frozen trunk's cached features (mission task 3).

Reads data_root and results/split.csv (made here on first use, see dataloader.py). Writes:
  checkpoints/best.pth          the model with the lowest validation loss (first epoch included), with the
                                resolved config, class names and the trunk weights used; written atomically
  checkpoints/last.pth          the state after the last finished epoch, for --resume=True
  results/train_history.csv     per epoch: loss and accuracy on train and validation, seconds
  figs/training_plot.png        loss and accuracy curves
Cross-entropy, Adam, batches of batch_size, at most `epochs` epochs, early stopping on the validation loss
after `patience` epochs without improvement. Ctrl-C stops after the last finished epoch; resume with
`python train.py --resume=True`.
"""
import math
import sys
import time

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

import backbone
import dataloader
import features
import lab

FORMAT = "plankton-lab-checkpoint/1"
# Settings that may differ when resuming; everything else must match the interrupted run.
RESUMABLE = {"epochs", "patience", "resume", "device", "num_workers", "output_dir", "rebuild_split"}


def split_digest(cfg):
    return lab.file_digest(lab.out_path(cfg, "results", "split.csv"))


class CachedSplit:
    """Trunk features (memory-mapped float16), labels and split.csv rows of the images that decoded,
    batched as float32 tensors."""

    def __init__(self, feats, ok, labels, rows=None):
        self.index = np.flatnonzero(ok)
        self.feats, self.labels = feats, torch.as_tensor(np.asarray(labels)[self.index], dtype=torch.long)
        self.rows = None if rows is None else rows.iloc[self.index].reset_index(drop=True)

    def __len__(self):
        return len(self.index)

    def batches(self, batch_size, order=None):
        order = torch.arange(len(self)) if order is None else order
        for start in range(0, len(self), batch_size):
            chosen = order[start:start + batch_size].numpy()
            rows = self.index[chosen]
            sort = np.argsort(rows)  # ascending reads are kinder to the memory map
            x = torch.from_numpy(np.asarray(self.feats[rows[sort]], dtype=np.float32))
            inverse = np.empty_like(sort)
            inverse[sort] = np.arange(len(sort))
            yield x[inverse].contiguous(memory_format=torch.channels_last), self.labels[chosen]


def prepare(cfg, device, split, model, weights_id, names=("train", "val")):
    """CachedSplit per split name, computing the trunk pass where the cache misses."""
    dtype = lab.trunk_dtype(cfg.precision, device)
    class_index = {c: i for i, c in enumerate(cfg.seen_classes)}
    out = {}
    for name in names:
        rows = split[split["split"] == name].reset_index(drop=True)
        feats, ok = features.trunk_features(cfg, model.trunk, rows, name, weights_id, device, dtype)
        out[name] = CachedSplit(feats, ok, [class_index.get(label, -1) for label in rows["label"]], rows)
    return out


@torch.no_grad()
def head_outputs(model, data, device, batch_size):
    """(logits, embeddings) as numpy arrays for every image of a CachedSplit, model in eval mode."""
    model.eval()
    logits, embeddings = [], []
    for x, _ in data.batches(batch_size):
        out, emb = model.head(x.to(device))
        logits.append(out.float().cpu())
        embeddings.append(emb.float().cpu())
    if not logits:
        return np.zeros((0, model.classifier.out_features), np.float32), np.zeros((0, model.classifier.in_features), np.float32)
    return torch.cat(logits).numpy(), torch.cat(embeddings).numpy()


def run_epoch(model, data, device, batch_size, optimizer=None, order=None, desc=None):
    """One pass; trains when an optimizer is given. Returns (mean loss, accuracy)."""
    criterion = nn.CrossEntropyLoss(reduction="sum")
    model.train(optimizer is not None)
    total_loss, correct = 0.0, 0
    batches = data.batches(batch_size, order)
    if desc:
        batches = tqdm(batches, total=math.ceil(len(data) / batch_size), desc=desc, unit="batch", leave=False,
                       disable=None)
    with torch.set_grad_enabled(optimizer is not None):
        for x, y in batches:
            x, y = x.to(device), y.to(device)
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


def checkpoint_payload(cfg, model, weights_id, digest, **extra):
    return {"format": FORMAT, "model_state": model.state_dict(), "classes": list(cfg.seen_classes),
            "config": vars(cfg).copy(), "weights": weights_id, "split_digest": digest,
            "versions": lab.package_versions(), **extra}


def plot_history(history, path):
    plt = lab.pyplot()
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
    lab.save_figure(path, fig)


def resume_state(cfg):
    last = lab.load_checkpoint(lab.out_path(cfg, "checkpoints", "last.pth"))
    differs = [k for k, v in last["config"].items() if k not in RESUMABLE and getattr(cfg, k, v) != v]
    if differs:
        raise lab.LabError(f"Cannot resume: the settings {differs} differ from those of the interrupted run in "
                           f"checkpoints/last.pth. Resume with the same settings, or start afresh without "
                           f"--resume=True.")
    return last


def train(cfg):
    device = lab.select_device(cfg.device)
    lab.seed_everything(cfg.seed)
    split = dataloader.load_split(cfg)
    model = backbone.build_model(cfg, len(cfg.seen_classes))
    weights_id = backbone.describe_weights(cfg.backbone_weights, cfg.seed)
    print(f"[trunk weights] {weights_id}")
    backbone.print_model_summary(model, cfg.image_size)
    data = prepare(cfg, device, split, model, weights_id)
    digest = split_digest(cfg)
    model.to(device)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    history, best_loss, stale, start = [], math.inf, 0, 1
    if cfg.resume:
        last = resume_state(cfg)
        model.load_state_dict(last["model_state"])
        optimizer.load_state_dict(last["optimizer_state"])
        torch.set_rng_state(last["torch_rng"])
        history, best_loss, stale, start = last["history"], last["best_loss"], last["stale"], last["epoch"] + 1
        print(f"[resume] continuing after epoch {last['epoch']} (best validation loss {best_loss:.4f})")
        if stale >= cfg.patience or start > cfg.epochs:
            print("[resume] that run had already finished; nothing to do.")
            return history
    best_path, last_path = lab.out_path(cfg, "checkpoints", "best.pth"), lab.out_path(cfg, "checkpoints", "last.pth")
    print(f"[train] {len(data['train'])} train / {len(data['val'])} validation images, {len(cfg.seen_classes)} "
          f"classes, up to {cfg.epochs} epochs (patience {cfg.patience}) on {device}")
    epoch = start - 1
    try:
        for epoch in range(start, cfg.epochs + 1):
            t0 = time.time()
            order = torch.randperm(len(data["train"]), generator=torch.Generator().manual_seed(cfg.seed * 100003 + epoch))
            train_loss, train_acc = run_epoch(model, data["train"], device, cfg.batch_size, optimizer, order,
                                              desc=f"epoch {epoch}/{cfg.epochs}")
            val_loss, val_acc = run_epoch(model, data["val"], device, cfg.batch_size)
            if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
                kept = f"{best_path} keeps the best model so far" if best_loss < math.inf else "no model was saved"
                raise lab.LabError(f"Training diverged in epoch {epoch}: the loss became NaN or infinite (lr={cfg.lr}). "
                                   f"Training stopped; {kept}. Lower the learning rate (the mission uses 0.0014) "
                                   f"and run train.py again.")
            history.append({"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc,
                            "val_loss": val_loss, "val_acc": val_acc, "seconds": time.time() - t0})
            improved = val_loss < best_loss
            if improved:
                best_loss, stale = val_loss, 0
                lab.save_checkpoint(best_path, checkpoint_payload(cfg, model, weights_id, digest, epoch=epoch,
                                                                  val_loss=val_loss, val_acc=val_acc))
            else:
                stale += 1
            lab.save_checkpoint(last_path, checkpoint_payload(
                cfg, model, weights_id, digest, epoch=epoch, optimizer_state=optimizer.state_dict(),
                torch_rng=torch.get_rng_state(), history=history, best_loss=best_loss, stale=stale))
            print(f"epoch {epoch:3d}  train loss {train_loss:.4f} acc {train_acc:.3f}  |  val loss {val_loss:.4f} "
                  f"acc {val_acc:.3f}  {'* saved best' if improved else ''}  ({time.time() - t0:.1f} s)", flush=True)
            if stale >= cfg.patience:
                print(f"[train] early stop: no better validation loss for {cfg.patience} epochs")
                break
    except KeyboardInterrupt:
        print(f"\nInterrupted during epoch {epoch}. {last_path} holds the state after the last finished epoch and "
              f"{best_path} the best model so far. Continue with `python train.py --resume=True`.", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        if history:
            frame = pd.DataFrame(history)
            lab.save_csv(lab.out_path(cfg, "results", "train_history.csv"), frame)
            plot_history(frame, lab.out_path(cfg, "figs", "training_plot.png"))
    best = min(history, key=lambda h: h["val_loss"])
    print(f"[train] best validation loss {best['val_loss']:.4f} (accuracy {best['val_acc']:.3f}) at epoch "
          f"{best['epoch']}, saved to {best_path}")
    return history


def load_trained(cfg):
    """For the scripts after training: (config of the checkpoint, checkpoint, model, split, device)."""
    ckpt = lab.load_checkpoint(lab.out_path(cfg, "checkpoints", "best.pth"))
    cfg = lab.config_from_checkpoint(ckpt, cfg)
    lab.print_config(cfg, "configuration (data and model settings from the checkpoint)")
    print(f"[checkpoint] epoch {ckpt['epoch']}, classes {ckpt['classes']}; trunk weights: {ckpt['weights']}")
    if ckpt["weights"].startswith("RANDOM"):
        print("[checkpoint] WARNING: this model was trained on a RANDOM trunk (backbone_weights=None); its "
              "embeddings say nothing about plankton beyond this data set.", file=sys.stderr)
    split = dataloader.load_split(cfg)
    if split_digest(cfg) != ckpt["split_digest"]:
        raise lab.LabError("results/split.csv has changed since the checkpoint was trained (it was rebuilt). "
                           "Retrain with `python train.py` so that the test set holds no training images.")
    device = lab.select_device(cfg.device)
    model = backbone.model_from_checkpoint(ckpt, cfg).to(device)
    return cfg, ckpt, model, split, device


def main(argv=None):
    cfg = lab.load_config(argv, __doc__)
    lab.print_config(cfg)
    lab.ensure_output_dirs(cfg)
    return train(cfg)


if __name__ == "__main__":
    lab.run_main(lambda: main(sys.argv[1:]))
