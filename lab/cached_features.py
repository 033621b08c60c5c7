"""The trunk's cached features batched for the head: `CachedSplit` (one split's memory-mapped features, in each of its
dihedral views, labels and split.csv rows), `PooledSplit` (several splits as one, or a subset of them, for the stages
that retrain the head on other parts: audit.py's folds), `head_of_views` (the head's output averaged over an
image's views) and `head_outputs` (logits and embeddings of every image). trunk_cache.py computes and stores the
features; this module only reads them.

Views (the trunk_views setting): a split cached in k dihedral views is batched in one of three ways, by `views`:
None, the first view (the images as they are; the only one when k = 1); an integer per image, the view each image is
read in (training: a random view per image per epoch, `draw_views`); or ALL_VIEWS, every view of each image,
stacked as (k, batch, ...), which `head_of_views` averages. The model's output for an image is that average: its
logits and its embedding averaged over its views (the head's last layer is linear, so the averaged logits are the
classifier's output on the averaged embedding).
"""

import numpy as np
import pandas as pd
import torch

from lab import progress

ALL_VIEWS = "all"


def draw_views(data, generator):
    """A random view per image of data (a LongTensor, seeded by generator), or None when data has one view: then
    nothing is drawn, and a run without views draws exactly the random numbers it drew before views existed."""
    if data.views == 1:
        return None
    return torch.randint(data.views, (len(data),), generator=generator)


def view_of_batch(views, chosen):
    """The views argument of `read` for the images at positions chosen of a split: views as given to `batches`."""
    if views is None or isinstance(views, str):
        return views
    return np.asarray(views)[chosen]


class CachedSplit:
    """Trunk features (memory-mapped float16, one array per dihedral view), labels and split.csv rows of the images
    that decoded, batched as float32 tensors."""

    def __init__(self, feats, ok, labels, rows=None):
        self.index = np.flatnonzero(ok)
        self.view_feats = list(feats) if isinstance(feats, (list, tuple)) else [feats]
        self.feats = self.view_feats[0]
        self.labels = torch.as_tensor(np.asarray(labels)[self.index], dtype=torch.long)
        self.rows = None if rows is None else rows.iloc[self.index].reset_index(drop=True)

    def __len__(self):
        return len(self.index)

    @property
    def views(self):
        return len(self.view_feats)

    def first_views(self, k):
        """The same images read in their first k views only (the features are shared, never copied)."""
        copy = object.__new__(CachedSplit)
        copy.__dict__.update(self.__dict__, view_feats=self.view_feats[:k])
        return copy

    def _read_view(self, chosen, view):
        """The features of `chosen` in one view, in the cache's own dtype (float16): converted once, by `read`."""
        rows = self.index[chosen]
        sort = np.argsort(rows)  # ascending reads are kinder to the memory map
        x = torch.from_numpy(np.asarray(self.view_feats[view][rows[sort]]))
        inverse = np.empty_like(sort)
        inverse[sort] = np.arange(len(sort))
        return x[inverse]

    def read(self, chosen, views=None, dtype=torch.float32):
        """The features of the images at positions `chosen` (numpy), in that order, as `dtype` (None: the cache's
        own, float16): in the first view (views None), in each image's own view (an integer array, one per chosen
        image), or in every view (ALL_VIEWS: stacked, views first)."""
        chosen = np.asarray(chosen, dtype=np.int64)
        x = self._read(chosen, views)
        return x if dtype is None else x.to(dtype)

    def _read(self, chosen, views):
        if views is None:
            return self._read_view(chosen, 0)
        if isinstance(views, str):
            return torch.stack([self._read_view(chosen, v) for v in range(self.views)])
        views = np.asarray(views)
        x = None
        for view in np.unique(views):
            mine = views == view
            part = self._read_view(chosen[mine], int(view))
            if x is None:
                x = torch.empty((len(chosen), *part.shape[1:]), dtype=part.dtype)
            x[torch.from_numpy(mine)] = part
        return x

    def batches(self, batch_size, order=None, views=None, dtype=torch.float32):
        """(features, labels) in batches of the images in `order` (default: as stored); views: see the module;
        dtype: the features' (the head's autocast dtype saves a conversion: the cache's float16 becomes bf16 in
        the same copy that lays the batch out)."""
        order = torch.arange(len(self)) if order is None else order
        for start in range(0, len(self), batch_size):
            chosen = order[start : start + batch_size].numpy()
            x = self.read(chosen, view_of_batch(views, chosen), dtype=None)
            yield as_batch(x, dtype), self.labels[chosen]


def as_batch(x, dtype):
    """x as dtype, in one copy; a batch of one view (4-d) also in the head's convolutions' fastest layout
    (channels last), a stack of views as it is (head_of_views lays it out when it flattens it)."""
    if x.dim() == 4:
        return x.to(dtype, memory_format=torch.channels_last)
    return x.to(dtype)


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

    @property
    def views(self):
        return min(part.views for part in self.parts) if self.parts else 1

    def subset(self, chosen):
        """The images at places `chosen` of this one, as a PooledSplit of the same parts."""
        return PooledSplit(self.parts, self.positions[np.asarray(chosen, dtype=np.int64)])

    @property
    def rows(self):
        frames = [part.rows for part in self.parts]
        return pd.concat(frames, ignore_index=True).iloc[self.positions].reset_index(drop=True)

    def batches(self, batch_size, order=None, views=None, dtype=torch.float32):
        order = torch.arange(len(self)) if order is None else order
        for start in range(0, len(self), batch_size):
            chosen = order[start : start + batch_size].numpy()
            part, within, batch_views = self.part[chosen], self.within[chosen], view_of_batch(views, chosen)
            x = None
            for k in np.unique(part):
                mine = part == k
                features = self.parts[k].read(within[mine], view_of_batch(batch_views, mine), dtype=None)
                if x is None:
                    x = torch.empty((*features.shape[:-4], len(chosen), *features.shape[-3:]), dtype=features.dtype)
                x[..., torch.from_numpy(mine), :, :, :] = features
            yield as_batch(x, dtype), self.labels[chosen]


def head_of_views(model, x):
    """(logits, embeddings) of the head on x: a batch of one view (batch, C, s, s), or every view of each image
    (views, batch, C, s, s), all through the head at once, the logits and the embeddings averaged over the views
    (in float32)."""
    if x.dim() == 4:
        return model.head(x.contiguous(memory_format=torch.channels_last))
    views, batch = x.shape[:2]
    logits, embedding = model.head(x.flatten(0, 1).contiguous(memory_format=torch.channels_last))
    return logits.float().view(views, batch, -1).mean(0), embedding.float().view(views, batch, -1).mean(0)


def every_view(data):
    """The views argument that batches every view of data (for its averaged outputs), or None when it has one."""
    return ALL_VIEWS if data.views > 1 else None


@torch.no_grad()
def head_outputs(model, data, device, batch_size, desc=None):
    """(logits, embeddings) as numpy arrays for every image of a CachedSplit, model in eval mode; with several
    views, averaged over them (head_of_views); with desc, a progress line every few seconds (lab/progress.py)."""
    model.eval()
    logits, embeddings = [], []
    batches = data.batches(batch_size, views=every_view(data))
    if desc is not None:
        batches = progress.progress(batches, -(-len(data) // batch_size), desc, unit="batches")
    for x, _ in batches:
        out, emb = head_of_views(model, x.to(device))
        logits.append(out.float().cpu())
        embeddings.append(emb.float().cpu())
    if not logits:
        return (
            np.zeros((0, model.classifier.out_features), np.float32),
            np.zeros((0, model.classifier.in_features), np.float32),
        )
    return torch.cat(logits).numpy(), torch.cat(embeddings).numpy()
