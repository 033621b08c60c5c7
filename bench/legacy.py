"""The original approaches that the benchmark measures the lab's fast paths against. Reads and writes nothing.

    reduce_to_2d             UMAP with its own neighbour search, compiled by numba in every new process
    original_training_steps  images decoded and the trunk recomputed in train mode at every step
    brute_force_distances    scipy's cdist over every pair of every two classes
Imports are inside the functions: a fresh process timing the 2-D map imports this module and must pay only what
the original script paid.
"""

import time

import numpy as np

from lab import image_io


def reduce_to_2d(x, cfg):
    """dimensionality_reduction.reduce_to_2d as it was: UMAP finds the neighbours itself."""
    import umap
    from sklearn.preprocessing import StandardScaler

    x = StandardScaler().fit_transform(x)
    reducer = umap.UMAP(
        n_neighbors=min(cfg.umap_n_neighbors, len(x) - 1), min_dist=cfg.umap_min_dist, random_state=cfg.seed, n_jobs=1
    )
    return reducer.fit_transform(x)


def original_training_steps(model, paths, labels, cfg, device, n_batches):
    """Images per second of the original kind of step: images decoded, the trunk recomputed in train mode, then
    the head; steady state (the first batch, which warms up workers and kernels, is not counted)."""
    import torch

    from lab import trunk_cache

    loader = trunk_cache.trunk_loader(
        paths[: n_batches * cfg.batch_size], cfg.image_size, cfg.batch_size, cfg.num_workers, device
    )
    model = model.to(device)
    torch.nn.Module.train(model, True)  # as the original: all in train mode (not PlanktonNet.train's frozen trunk)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    targets = torch.as_tensor(labels[: n_batches * cfg.batch_size])
    seen, start = 0, None
    for i, (x, _) in enumerate(loader):
        logits, _ = model(image_io.normalise(x.to(device)))
        batch_targets = targets[i * cfg.batch_size : i * cfg.batch_size + len(x)].to(device)
        loss = torch.nn.functional.cross_entropy(logits, batch_targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if start is None:
            start = time.perf_counter()
        else:
            seen += len(x)
    return seen / (time.perf_counter() - start)


def brute_force_distances(groups):
    """[euclidean, angular] k x k mean distances by cdist, self-pairs left out within a class."""
    from scipy.spatial.distance import cdist

    k = len(groups)
    out = np.zeros((2, k, k))
    for p in range(k):
        for q in range(k):
            e, c = cdist(groups[p], groups[q]), cdist(groups[p], groups[q], "cosine")
            mask = ~np.eye(len(e), dtype=bool) if p == q else np.ones(e.shape, dtype=bool)
            out[0, p, q] = e[mask].mean()
            out[1, p, q] = (np.arccos(np.clip(1 - c, -1, 1)) / np.pi)[mask].mean()
    return out
