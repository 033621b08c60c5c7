"""The near-copy search's candidate pairs by a nearest-neighbour index instead of all pairs (lab/near_copies.py
confirms them; measured in docs/similar.md, "Near-copies").

Within one class, from the cached 64-px thumbnails (near_copies.thumbnails):
  centring   each thumbnail's darkness (its faintest DARK_FLOOR grey levels left out, which brightening erases)
             moved so that its centroid (integer-rounded) sits at the centre of a WINDOW x WINDOW canvas: a shifted
             or re-cropped copy moves with its particle, so one vector per image stands for the all-pairs search's
             best of 5 x 5 offsets
  index      the centred darkness blurred (INDEX_BLUR), pooled into CELL x CELL cells, reduced to INDEX_DIMS
             principal components, with the decoded width and height (SIZE_WEIGHT per pixel) appended;
             scikit-learn's KDTree gives each image its K_INDEX nearest; those within SIZE_SLACK in size and at or
             above the coarse floor (COARSE_MIN, the all-pairs search's own score) stay candidates
  rounds     an image whose every neighbour passed the size and coarse checks sits among look-alikes that may go
             on past them (a class of small round particles): it is asked again for twice as many, until one of its
             neighbours fails a check, or up to the cap, K_INDEX x ceil(log2 n) neighbours (neighbour_cap)
  ranking    each candidate pair's fine score: the best correlation of the centred darkness, pixel for pixel, over
             offsets of up to FINE_SHIFT px (the centroid's rounding); each image keeps its K_CONFIRM best, and a
             pair goes on when either image keeps it
The work is then at most K_INDEX x log2 n pairs per image to score and K_CONFIRM to confirm: the index is what makes
it grow with n log n rather than n^2. The fine score ranks a copy first because it shares the particle's pixel noise,
which a look-alike of one shape does not (measured on ndsb9's copies: docs/similar.md). An image still saturated at
the cap may have had more candidates: counted per class as "at the cap" (near_copies.json). With a fixed K_INDEX
(before the rounds) 640 images of 12 ndsb112 classes were; the longest run of passing neighbours there is 144, under
the cap of every class.

Reads nothing (the thumbnails are given); writes nothing.
"""

import math

import numpy as np

K_INDEX = 32  # neighbours per image asked of the index
K_CONFIRM = 3  # best-ranked candidates per image compared at full resolution
INDEX_DIMS = 16  # principal components of the pooled darkness in the KD-tree
SIZE_WEIGHT = 0.05  # per pixel of width or height in the index: 4 px in both cost about a copy's descriptor distance
WINDOW = 96  # side of the centred canvas (thumbnail pixels): a 64-px particle fits when its centroid is central
INDEX_BLUR = (
    3.0  # px: the index's darkness blurred before pooling, so that a centroid rounded the other way moves it little
)
CELL = 4  # thumbnail pixels per cell of the index's pooled darkness
FINE_SHIFT = 1  # pixels of offset tried by the fine score around the centroids' alignment
DARK_FLOOR = 24  # grey levels under the background left out: brightening by 10 % erases a faint halo, not the core
DARK_FLOOR_SHARE = 0.25  # ... at most this share of a faint particle's darkest pixel
FIT_ROWS = 4000  # images the principal components are fitted on (a seeded draw from larger classes)
CHUNK = 2048  # images centred at once (memory: CHUNK x WINDOW^2 floats)


def centred_darkness(pixels):
    """(n, WINDOW, WINDOW) float32: each thumbnail's darkness (255 - grey) with its centroid moved to the centre,
    scaled to unit norm; what falls outside the window is cut (only a far, off-centre part of a 64-px particle)."""
    n, side, _ = pixels.shape
    out = np.zeros((n, WINDOW, WINDOW), np.float32)
    axis = np.arange(side, dtype=np.float32)
    for start in range(0, n, CHUNK):
        dark = 255.0 - pixels[start : start + CHUNK].astype(np.float32)
        floor = np.minimum(DARK_FLOOR, DARK_FLOOR_SHARE * dark.max((1, 2), keepdims=True))
        dark = np.maximum(dark - floor, 0)
        mass = dark.sum((1, 2)) + 1e-6
        top = np.rint(WINDOW / 2 - (dark.sum(2) @ axis) / mass).astype(int)
        left = np.rint(WINDOW / 2 - (dark.sum(1) @ axis) / mass).astype(int)
        for k, (y, x) in enumerate(zip(top, left)):
            src_y, src_x = slice(max(0, -y), min(side, WINDOW - y)), slice(max(0, -x), min(side, WINDOW - x))
            out[start + k, src_y.start + y : src_y.stop + y, src_x.start + x : src_x.stop + x] = dark[k, src_y, src_x]
    out /= np.sqrt((out**2).sum((1, 2), keepdims=True)) + 1e-6
    return out


def index_points(centred, sizes, seed=0):
    """The KD-tree's points: the pooled centred darkness (centred, unit norm) reduced to INDEX_DIMS principal
    components, then the width and height times SIZE_WEIGHT."""
    from scipy.ndimage import gaussian_filter
    from sklearn.decomposition import PCA

    cells = WINDOW // CELL
    pooled = np.concatenate(
        [
            gaussian_filter(centred[start : start + CHUNK], (0, INDEX_BLUR, INDEX_BLUR))
            .reshape(-1, cells, CELL, cells, CELL)
            .mean((2, 4))
            .reshape(-1, cells * cells)
            for start in range(0, len(centred), CHUNK)
        ]
    )
    pooled -= pooled.mean(1, keepdims=True)
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True) + 1e-6
    dims = min(INDEX_DIMS, len(pooled) - 1, pooled.shape[1])
    if dims >= 1:
        rng = np.random.default_rng(seed)
        fit = pooled if len(pooled) <= FIT_ROWS else pooled[rng.choice(len(pooled), FIT_ROWS, replace=False)]
        pca = PCA(dims, svd_solver="covariance_eigh").fit(fit)
        reduced = pca.transform(pooled)
    else:
        reduced = np.zeros((len(pooled), 0))
    return np.hstack([reduced, SIZE_WEIGHT * np.asarray(sizes, float)])


def fine_scores(centred, i, j):
    """Each pair's best correlation of the centred darkness over offsets of up to FINE_SHIFT px: pairs grouped by
    their first image, whose shifted canvases meet all its partners in one matrix product."""
    scores = np.empty(len(i), np.float32)
    order = np.argsort(i, kind="stable")
    starts = np.flatnonzero(np.r_[True, i[order][1:] != i[order][:-1]]) if len(i) else []
    from numpy.lib.stride_tricks import sliding_window_view

    side = 2 * FINE_SHIFT + 1
    for start, stop in zip(starts, [*starts[1:], len(i)]):
        rows = order[start:stop]
        padded = np.pad(centred[i[rows[0]]], FINE_SHIFT)  # zero darkness around: a shift brings in background
        query = sliding_window_view(padded, centred.shape[1:]).reshape(side * side, -1)
        scores[rows] = (query @ centred[j[rows]].reshape(len(rows), -1).T).max(0)
    return scores


def support(centred):
    """The centred canvases cut to the box where any of them has darkness: outside it every canvas is zero, so the
    fine score is the same, and a class of small particles is scored on a fraction of the WINDOW x WINDOW pixels."""
    rows, cols = np.flatnonzero(centred.any((0, 2))), np.flatnonzero(centred.any((0, 1)))
    if not len(rows):
        return centred
    return np.ascontiguousarray(centred[:, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1])


def best_per_image(i, j, scores, keep):
    """Mask of the pairs that are among the `keep` best-scored pairs of either of their images."""
    ends = np.concatenate([i, j])
    pair = np.concatenate([np.arange(len(i))] * 2)
    order = np.lexsort((-np.concatenate([scores, scores]), ends))
    first = np.r_[0, np.flatnonzero(ends[order][1:] != ends[order][:-1]) + 1]
    rank = np.arange(len(order)) - np.repeat(first, np.diff(np.r_[first, len(order)]))
    kept = np.zeros(len(i), bool)
    kept[pair[order[rank < keep]]] = True
    return kept


def neighbour_cap(n):
    """The most neighbours any image of a class of n is given: K_INDEX x ceil(log2 n), so that the work of a class
    is at most n log n pairs (and the whole class when that is smaller)."""
    return min(n - 1, K_INDEX * max(1, math.ceil(math.log2(max(n, 2)))))


def neighbour_rounds(points, sizes, size_slack, coarse_min, pair_similarity):
    """(i, j, coarse similarity) of the unique pairs (i < j) the index asked about, and the statistics of its rounds.
    Every image is first given its K_INDEX nearest. An image whose every neighbour passed the size and coarse checks
    sits in a run of look-alikes that may go on past them: it is asked again with twice as many, and so on, until one
    of its neighbours fails a check or it has neighbour_cap(n). Those still saturated then are at the cap."""
    from sklearn.neighbors import KDTree

    n, tree = len(points), KDTree(points)
    cap = neighbour_cap(n)
    todo, asked, k = np.arange(n), 0, min(K_INDEX, cap)
    keys, similarity = [], []
    stats = {"images_extended": 0, "most_neighbours": k, "images_at_cap": 0}
    while True:
        _, neighbours = tree.query(points[todo], k=k + 1)  # +1: an image is its own nearest
        new = neighbours[:, asked + 1 :] if asked else neighbours
        rows, cols = np.repeat(todo, new.shape[1]), new.ravel()
        fits = (
            (np.abs(sizes[rows] - sizes[cols]).max(1) <= size_slack)
            & (sizes[rows].min(1) > 0)
            & (sizes[cols].min(1) > 0)
            & (rows != cols)
        )
        pair_keys = np.minimum(rows, cols) * n + np.maximum(rows, cols)
        unique, back = np.unique(pair_keys[fits], return_inverse=True)
        coarse = pair_similarity(unique // n, unique % n) if len(unique) else np.zeros(0, np.float32)
        passed = np.zeros(len(rows), bool)
        passed[fits] = coarse[back] >= coarse_min
        keys.append(unique)
        similarity.append(coarse)
        saturated = (passed | (rows == cols)).reshape(len(todo), -1).all(1)
        if k >= cap or not saturated.any():
            stats["images_at_cap"] = int(saturated.sum()) if k < n - 1 else 0  # k = n - 1: the whole class was asked
            break
        todo, asked, k = todo[saturated], k, min(2 * k, cap)
        stats["images_extended"] += 0 if asked > K_INDEX else len(todo)
        stats["most_neighbours"] = k
    unique, first = np.unique(np.concatenate(keys), return_index=True)
    return unique // n, unique % n, np.concatenate(similarity)[first], stats


def class_candidates(pixels, sizes, size_slack, coarse_min, pair_similarity):
    """(i, j, coarse similarity, statistics) of the candidate pairs within one class: the index's neighbours that
    pass the size and coarse checks (neighbour_rounds), each image's K_CONFIRM best by the fine score.
    pair_similarity(i, j) is the all-pairs search's own coarse score (near_copies passes it in), so the candidates
    are a subset of the all-pairs search's."""
    n = len(pixels)
    empty = np.zeros(0, np.int64)
    stats = {
        "images": n,
        "index_pairs": 0,
        "coarse_pairs": 0,
        "images_extended": 0,
        "most_neighbours": 0,
        "images_at_cap": 0,
        "ranked_out": 0,
    }
    if n < 2:
        return empty, empty, np.zeros(0, np.float32), stats
    centred = centred_darkness(pixels)
    i, j, coarse, rounds = neighbour_rounds(
        index_points(centred, sizes), np.asarray(sizes), size_slack, coarse_min, pair_similarity
    )
    stats.update(rounds, index_pairs=len(i))
    passed = coarse >= coarse_min
    i, j, coarse = i[passed], j[passed], coarse[passed]
    stats["coarse_pairs"] = len(i)
    kept = best_per_image(i, j, fine_scores(support(centred), i, j), K_CONFIRM)
    stats["ranked_out"] = int((~kept).sum())
    return i[kept], j[kept], coarse[kept].astype(np.float32), stats
