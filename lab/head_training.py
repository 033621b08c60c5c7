"""Training the head on cached trunk features: the class weights of the loss, one pass over a split (training
when an optimizer is given), the early-stopping rule (`EarlyStopping`) and the average of the head's weights over
epochs (`weight_average`). Shared by train.py, the benchmarks and
every stage that retrains the head on the cache (no trunk pass is ever repeated). Reads and writes nothing.
"""

import contextlib
import math

import numpy as np
import torch
from sklearn.utils.class_weight import compute_class_weight
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from lab import cached_features, progress, thread_choice


def adam(model, lr):
    """Adam over the model's trainable weights (the head's: the trunk is frozen), in torch's fused form where it
    has one (CPU and CUDA): one kernel for every weight's update instead of a loop of small ones. Measured on the
    project's 2-core Xeon, one thread, bf16 head: epochs 1.13x faster (3,011 -> 3,418 images/s); the same update
    rule, rounded in another order."""
    weights = [p for p in model.parameters() if p.requires_grad]
    device = weights[0].device.type if weights else "cpu"
    return torch.optim.Adam(weights, lr=lr, fused=True if device in ("cpu", "cuda") else None)


def class_weights(labels, n_classes, weighting):
    """None for plain cross-entropy; for "balanced", scikit-learn's compute_class_weight, n / (classes x n_class)
    per class: the weights average 1 over the training images, so the loss keeps its scale. A class absent from the
    labels (an audit fold can lack a rare class) gets weight 0, and the others keep n / (n_classes x n_class), as if
    it were counted with no image."""
    if weighting == "none":
        return None
    labels = np.asarray(labels)
    present = np.unique(labels)
    weights = np.zeros(n_classes)
    if len(present):  # compute_class_weight refuses a class missing from the labels: it is given the present ones,
        # and its n / (present x n_class) is rescaled to n / (n_classes x n_class) (times 1.0, exact, when all are)
        weights[present] = compute_class_weight("balanced", classes=present, y=labels) * (len(present) / n_classes)
    return torch.tensor(weights, dtype=torch.float32)


def run_epoch(
    model,
    data,
    device,
    batch_size,
    optimizer=None,
    order=None,
    desc=None,
    weights=None,
    dtype=None,
    smoothing=0.0,
    views=None,
):
    """One pass; trains when an optimizer is given. Returns (mean loss, accuracy). weights: per-class loss weights;
    dtype: the head's autocast dtype (precision.head_dtype), or None for fp32; smoothing: label smoothing of the loss
    (the benchmark's candidate; train.py's loss has none). Data cached in several dihedral views (trunk_views):
    training reads each image in its view of `views` (cached_features.draw_views; None: the first view), an
    evaluation averages every view's output, as the model's predictions do (cached_features.head_of_views)."""
    criterion = nn.CrossEntropyLoss(
        weight=None if weights is None else weights.to(device), reduction="sum", label_smoothing=smoothing
    )
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype is not None else contextlib.nullcontext
    model.train(optimizer is not None)
    total_loss, correct = 0.0, 0
    views = views if optimizer is not None else cached_features.every_view(data)
    batches = data.batches(batch_size, order, views, dtype=dtype or torch.float32)
    if desc:
        batches = progress.progress(batches, math.ceil(len(data) / batch_size), desc, unit="batches")
    with torch.set_grad_enabled(optimizer is not None):
        for x, y in batches:
            with thread_choice.batch_threads(device, "train" if optimizer is not None else "eval", len(y)):
                x, y = x.to(device), y.to(device)
                with autocast():  # the loss too: autocast computes cross-entropy in fp32 from bf16 logits
                    logits, _ = cached_features.head_of_views(model, x)
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


# The weight of the newest epoch in the smoothed validation loss of stopping="ema". On ndsb9's 5 % validation split
# the loss of one epoch jumps by a factor of 3 and back (issue 34); 0.3 averages about the last 5 epochs, as many
# as the default patience (bench/bench_recipe.py measures it against the other candidates: docs/training-recipe.md).
LOSS_SMOOTHING = 0.3


class EarlyStopping:
    """When to keep a model and when to stop, from one validation loss per epoch. rule "raw": the epoch's own loss,
    as the lab first stopped; "ema": an exponential moving average of the losses (LOSS_SMOOTHING the newest one's
    weight), so that one lucky or unlucky epoch neither wins nor stops training. `step` says whether the epoch is
    the best so far (keep its weights); `stop` is true after `patience` epochs without one. Its state is plain
    numbers, saved in last.pth so that a resumed run goes on with the same averages."""

    def __init__(self, rule, patience, smoothing=LOSS_SMOOTHING, state=None):
        self.rule, self.patience, self.smoothing = rule, patience, smoothing
        self.smoothed, self.best, self.stale = None, math.inf, 0
        if state:
            self.smoothed, self.best, self.stale = state["smoothed"], state["best"], state["stale"]

    def step(self, val_loss):
        if self.rule == "raw" or self.smoothed is None:
            self.smoothed = val_loss
        else:
            self.smoothed = self.smoothing * val_loss + (1 - self.smoothing) * self.smoothed
        improved = self.smoothed < self.best
        self.best, self.stale = (self.smoothed, 0) if improved else (self.best, self.stale + 1)
        return improved

    @property
    def stop(self):
        return self.stale >= self.patience

    def state_dict(self):
        return {
            "rule": self.rule,
            "smoothing": self.smoothing if self.rule == "ema" else None,
            "smoothed": self.smoothed,
            "best": self.best,
            "stale": self.stale,
        }


# stopping="averaged": the share of the averaged weights kept at each epoch's end (0.7: the last ~3 epochs weigh 66 %).
# Measured on ndsb9 with the other candidates in docs/training-recipe.md.
WEIGHTS_DECAY = 0.7
# How each `stopping` setting stops: the rule applied to the validation loss, and whether it is the loss of the
# averaged weights (which best.pth then holds) or of the weights as trained.
STOPPING = {"averaged": ("raw", True), "smoothed": ("ema", False), "raw": ("raw", False)}


def weight_average(model, decay=WEIGHTS_DECAY):
    """torch's AveragedModel of the model: after `update_parameters(model)` at each epoch's end, its `.module` holds
    decay x the previous average + (1 - decay) x the weights (the first call copies them); BatchNorm's statistics are
    averaged alike (use_buffers), so the averaged head is evaluated with statistics that belong to it."""
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
