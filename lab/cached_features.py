"""The trunk's cached features batched for the head: `CachedSplit` (one split's memory-mapped features, labels and
split.csv rows), `PooledSplit` (several splits as one, or a subset of them, for the stages that retrain the head on
other parts: audit.py's folds) and `head_outputs` (logits and embeddings of every image). trunk_cache.py computes
and stores the features; this module only reads them.
"""

import numpy as np
import pandas as pd
import torch

from lab import progress


class CachedSplit:
    """Trunk features (memory-mapped float16), labels and split.csv rows of the images that decoded,
    batched as float32 tensors."""

    def __init__(self, feats, ok, labels, rows=None):
        self.index = np.flatnonzero(ok)
        self.feats = feats
        self.labels = torch.as_tensor(np.asarray(labels)[self.index], dtype=torch.long)
        self.rows = None if rows is None else rows.iloc[self.index].reset_index(drop=True)

    def __len__(self):
        return len(self.index)

    def read(self, chosen):
        """The float32 features of the images at positions `chosen` (numpy), in that order."""
        rows = self.index[chosen]
        sort = np.argsort(rows)  # ascending reads are kinder to the memory map
        x = torch.from_numpy(np.asarray(self.feats[rows[sort]], dtype=np.float32))
        inverse = np.empty_like(sort)
        inverse[sort] = np.arange(len(sort))
        return x[inverse]

    def batches(self, batch_size, order=None):
        order = torch.arange(len(self)) if order is None else order
        for start in range(0, len(self), batch_size):
            chosen = order[start : start + batch_size].numpy()
            yield self.read(chosen).contiguous(memory_format=torch.channels_last), self.labels[chosen]


class PooledSplit:
    """Several CachedSplits as one (e.g. train, validation and test together), or a subset of their images, batched
    as a CachedSplit is: the features are read from each split's cache in place, never copied. `positions` are
    the images' places in the concatenation of the parts; `rows` their split.csv rows."""

    def __init__(self, parts, positions=None):
        self.parts = list(parts)
        sizes = [len(part) for part in self.parts]
        every = np.arange(sum(sizes))
        self.positions = every if positions is None else np.asarray(positions, dtype=np.int64)
        self.part = np.repeat(np.arange(len(sizes)), sizes)[self.positions]
        self.within = (every - np.repeat(np.cumsum([0] + sizes[:-1]), sizes))[self.positions]
        self.labels = torch.cat([part.labels for part in self.parts])[torch.from_numpy(self.positions)]

    def __len__(self):
        return len(self.positions)

    def subset(self, chosen):
        """The images at places `chosen` of this one, as a PooledSplit of the same parts."""
        return PooledSplit(self.parts, self.positions[np.asarray(chosen, dtype=np.int64)])

    @property
    def rows(self):
        frames = [part.rows for part in self.parts]
        return pd.concat(frames, ignore_index=True).iloc[self.positions].reset_index(drop=True)

    def batches(self, batch_size, order=None):
        order = torch.arange(len(self)) if order is None else order
        for start in range(0, len(self), batch_size):
            chosen = order[start : start + batch_size].numpy()
            part, within = self.part[chosen], self.within[chosen]
            x = None
            for k in np.unique(part):
                mine = part == k
                features = self.parts[k].read(within[mine])
                if x is None:
                    x = torch.empty((len(chosen), *features.shape[1:]), dtype=features.dtype)
                x[torch.from_numpy(mine)] = features
            yield x.contiguous(memory_format=torch.channels_last), self.labels[chosen]


@torch.no_grad()
def head_outputs(model, data, device, batch_size, desc=None):
    """(logits, embeddings) as numpy arrays for every image of a CachedSplit, model in eval mode; with desc, a
    progress line every few seconds (lab/progress.py)."""
    model.eval()
    logits, embeddings = [], []
    batches = data.batches(batch_size)
    if desc is not None:
        batches = progress.progress(batches, -(-len(data) // batch_size), desc, unit="batches")
    for x, _ in batches:
        out, emb = model.head(x.to(device))
        logits.append(out.float().cpu())
        embeddings.append(emb.float().cpu())
    if not logits:
        return (
            np.zeros((0, model.classifier.out_features), np.float32),
            np.zeros((0, model.classifier.in_features), np.float32),
        )
    return torch.cat(logits).numpy(), torch.cat(embeddings).numpy()
