"""Near-copies: one particle saved twice (re-saved as JPEG, re-cropped or shifted by a few pixels, brightened), found
by comparing the decoded pixels, so that a split can keep them together or at least say how many cross it.

The criterion (measured on ndsb9 and on synthetic copies: docs/similar.md, "Near-copies"). Only images of one class
whose decoded sizes differ by at most SIZE_SLACK pixels in width and height are compared (re-saving, shifting and
brightening keep the size, a re-crop by a few pixels nearly so). Each image's grey levels are moved so that its
background (the border's median) is white; a dark-field image is inverted. Then, in three steps:
  coarse     on 64-px thumbnails (cached), vectorised over the pairs: 36 x 36 darkness grids correlated at the
             best of 5 x 5 offsets; under COARSE_MIN a pair is not one particle (cheap, and loose enough to keep the
             synthetic copies whose thin structures a thumbnail's grid blurs)
  alignment  at full resolution (a pair with an image above FULL_MAX px reduced by one whole factor for both),
             the peak of the cross-correlation of the two images' darkness within FULL_SHIFT pixels
  decision   a near-copy when all three hold:
             texture   1 - Pearson correlation over the pixels darker than OBJECT_LEVEL in both  <= TEXTURE_MAX
             shape     the share of one image's particle pixels (darker than SHAPE_DARK) that fall on the other's
                       background (at least SHAPE_BACKGROUND), the smaller of the two directions <= SHAPE_MAX
             noise     the Pearson correlation of the two images' fine detail (each minus its Gaussian blur of
                       NOISE_SIGMA px) over the particle's interior (the shared particle pixels, NOISE_ERODE px in
                       from its rim)  >= NOISE_MIN
The texture alone passes look-alikes: two Acantharia with one dark core and their faint spines at other angles
(their spines do not overlap, so they never enter the texture's pixels). The shape catches them: each one's spines
lie on the other's background. It is taken in the smaller direction because brightening by 10 % erases a copy's
faintest pixels (they clip to white), so that the brighter copy's particle lies inside the original's, never
beside it. The noise catches two featureless particles of one size (the demo's dark discs): alike in texture and
shape, but each image's own pixel noise is its own, while a copy keeps it (re-saving as JPEG at quality 70 too).
A perceptual hash (imagehash) was measured first and fails: plankton crops are small dark shapes on
white, so distinct images of one class share a 64-bit phash while a 2-pixel shift moves it further.

Reads image files; writes cache/near_copy_thumbnails.npz (thumbnails per file, keyed by path, size and
modification time), results/near_copies.csv and results/near_copies.json (splitting.py calls save_report).
"""
import os
import sys
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pandas as pd
from PIL import Image

from lab import artifacts, image_io, manifest

SIZE_SLACK = 4           # pixels: a re-crop by a few pixels changes the size by that much
CANVAS = 64              # thumbnail side (the coarse step): larger crops are resized to it
MARGIN = 4               # white border around each thumbnail, so that the coarse offsets never wrap the image
GRID = 2                 # thumbnail pixels per coarse grid cell
COARSE_SHIFT = 2         # grid cells of offset tried in the coarse step (4 thumbnail pixels)
COARSE_MIN = 0.75        # coarse correlation below which a pair is not compared further
FULL_MAX = 256           # full-resolution side: larger crops are reduced by a whole factor (memory and time)
FULL_SHIFT = 4           # pixels of misalignment searched at full resolution
ALIGNMENT_PEAKS = 5      # offsets of highest cross-correlation tried, the most alike kept
FAR = 4                  # ... while the pair is within FAR times a threshold of a near-copy
OBJECT_LEVEL = 250       # grey level below which a pixel belongs to the particle (the background is at 255)
MIN_INNER_PIXELS = 8     # fewer particle pixels in common: no texture to compare, never a near-copy
TEXTURE_MAX = 0.05       # the decision's thresholds (docs/similar.md: how they were chosen)
SHAPE_DARK = 240
SHAPE_BACKGROUND = 252
SHAPE_MAX = 0.02
FAINT_BACKGROUND = 254   # the background level of the shape mismatch for a particle with no pixel under SHAPE_DARK
NOISE_SIGMA = 1.0        # px: the blur whose residual is an image's fine detail and noise
NOISE_ERODE = 3          # px: the particle's rim left out of the noise (a rim's blur is alike in any two particles)
NOISE_MIN = 0.70         # ndsb9 copies measured 0.73 or more, distinct demo discs at most 0.63 (docs/similar.md)
BATCH = 2048             # pairs correlated at once in the coarse step
VERSION = 5              # of the thumbnails in the cache
PAIR_COLUMNS = ["group", "path_a", "label_a", "split_a", "path_b", "label_b", "split_b", "kind", "texture_distance",
                "shape_mismatch", "noise_correlation", "shift_y", "shift_x"]
SIDE = CANVAS + 2 * MARGIN
THUMBNAIL_CACHE = "near_copy_thumbnails.npz"  # under cache/: the split's, kept by any later run that fails


def white_background(grey):
    """Grey levels (int16) moved so that the image's background (its border's median) is white (255); a
    dark-field image is inverted first, so that the particle is darker than its background."""
    grey = np.asarray(grey).astype(np.int16)
    background = int(np.median(np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])))
    if background < 128:
        grey, background = 255 - grey, 255 - background
    return np.clip(grey + (255 - background), 0, 255)


# --------------------------------------------------------------------------- thumbnails
def file_size(path):
    """The image's (width, height) as the lab decodes it (EXIF rotation applied), from its header."""
    import warnings
    with warnings.catch_warnings():  # a huge image: image_io.decode has noted it already (image_notes.csv)
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as img:
            width, height = img.size
            if img.getexif().get(image_io.EXIF_ORIENTATION, 1) in (5, 6, 7, 8):  # turned by a quarter
                width, height = height, width
    return width, height


def thumbnail(path):
    """(grey uint8 SIDE x SIDE with the image at (MARGIN, MARGIN) on white, its size (w, h) at full resolution:
    the candidates' size check compares the files, not their reduced decodes)."""
    img = image_io.load_rgb(path, CANVAS).convert("L")  # a large JPEG is decoded reduced
    size = img.size
    if max(size) > CANVAS:  # one continuous scale, so that images a few pixels apart in size keep one scale
        scale = CANVAS / max(size)
        img = img.resize((max(1, round(size[0] * scale)), max(1, round(size[1] * scale))), Image.BOX)
    pixels = np.full((SIDE, SIDE), 255, np.uint8)
    grey = white_background(img).astype(np.uint8)
    pixels[MARGIN:MARGIN + grey.shape[0], MARGIN:MARGIN + grey.shape[1]] = grey
    return pixels, file_size(path)


def _thumbnail_or_blank(path):
    try:
        return thumbnail(path)
    except Exception:  # unreadable since the scan: never a near-copy of anything
        return np.full((SIDE, SIDE), 255, np.uint8), (0, 0)


def _file_key(path):
    st = os.stat(path)
    return f"{path}\0{st.st_size}\0{st.st_mtime_ns}"


def thumbnails(cfg, abs_paths):
    """(pixels n x SIDE x SIDE, sizes n x 2) of the files, from cache/near_copy_thumbnails.npz
    where a file's path, size and modification time are unchanged; the cache is rewritten with these files."""
    cache = artifacts.out_path(cfg, "cache", THUMBNAIL_CACHE)
    known = {}
    if cache.exists():
        try:
            with np.load(cache) as data:
                if int(data["version"]) == VERSION:
                    known = {k: i for i, k in enumerate(data["keys"])}
                    cached = {name: data[name] for name in ("pixels", "sizes")}
        except (OSError, ValueError, KeyError):
            known = {}
    keys = [_file_key(p) for p in abs_paths]
    pixels = np.empty((len(keys), SIDE, SIDE), np.uint8)
    sizes = np.zeros((len(keys), 2), np.int32)
    missing = [i for i, k in enumerate(keys) if k not in known]
    for i, k in enumerate(keys):
        if k in known:
            j = known[k]
            pixels[i], sizes[i] = cached["pixels"][j], cached["sizes"][j]
    workers = max(1, min(cfg.num_workers, os.cpu_count() or 1))
    todo = [abs_paths[i] for i in missing]
    if workers > 1 and len(todo) > 2000:
        with ProcessPoolExecutor(workers) as pool:
            made = list(pool.map(_thumbnail_or_blank, todo, chunksize=256))
    else:
        made = [_thumbnail_or_blank(p) for p in todo]
    for i, (p, s) in zip(missing, made):
        pixels[i], sizes[i] = p, s
    if missing or len(known) != len(keys):
        artifacts.atomic_write(cache, lambda f: np.savez(f, version=VERSION, keys=np.asarray(keys), pixels=pixels,
                                                         sizes=sizes))
    return pixels, sizes


# --------------------------------------------------------------------------- candidate pairs
def candidate_pairs(sizes, chunk=1 << 22):
    """(i, j) index arrays, i < j, of the images whose sizes differ by at most SIZE_SLACK in width and height.
    Sorted by width, each image meets only the next ones within the slack: no n x n matrix."""
    sizes = np.asarray(sizes)
    order = np.lexsort((sizes[:, 1], sizes[:, 0]))
    width, height = sizes[order, 0], sizes[order, 1]
    n = len(order)
    ends = np.searchsorted(width, width + SIZE_SLACK, side="right")
    counts = ends - np.arange(n) - 1
    found_i, found_j = [], []
    start = 0
    while start < n:  # blocks of about `chunk` pairs, so that memory stays bounded for large sets
        stop = start + max(1, int(np.searchsorted(np.cumsum(counts[start:]), chunk)))
        rows = np.repeat(np.arange(start, min(stop, n)), counts[start:stop])
        offsets = np.arange(len(rows)) - np.repeat(np.cumsum(counts[start:stop]) - counts[start:stop],
                                                   counts[start:stop])
        cols = rows + 1 + offsets
        keep = (np.abs(height[rows] - height[cols]) <= SIZE_SLACK) & (width[rows] > 0) & (width[cols] > 0)
        found_i.append(order[rows[keep]])
        found_j.append(order[cols[keep]])
        start = stop
    i, j = np.concatenate(found_i or [[]]).astype(np.int64), np.concatenate(found_j or [[]]).astype(np.int64)
    return np.minimum(i, j), np.maximum(i, j)


# --------------------------------------------------------------------------- comparing pairs
def coarse_grids(pixels):
    """Each thumbnail's darkness on a (SIDE / GRID)^2 grid, centred and scaled to unit norm (float32)."""
    cells = SIDE // GRID
    dark = (255.0 - pixels.astype(np.float32)).reshape(len(pixels), cells, GRID, cells, GRID).mean((2, 4))
    dark -= dark.mean((1, 2), keepdims=True)
    return dark / (np.sqrt((dark ** 2).sum((1, 2), keepdims=True)) + 1e-6)


def coarse_similarity(grids_a, grids_b):
    """The best correlation of each pair of grids over offsets of up to COARSE_SHIFT cells (the margins are white
    and wider than the offsets, so nothing wraps into the image)."""
    best = np.full(len(grids_a), -1.0, np.float32)
    for dy in range(-COARSE_SHIFT, COARSE_SHIFT + 1):
        for dx in range(-COARSE_SHIFT, COARSE_SHIFT + 1):
            moved = np.roll(grids_b, (dy, dx), axis=(1, 2))
            best = np.maximum(best, np.einsum("pij,pij->p", grids_a, moved))
    return best


def reduction(size):
    """The whole factor that brings an image of this (width, height) within FULL_MAX pixels."""
    return max(1, -(-max(size) // FULL_MAX))


def full_grey(path, factor=1):
    """The image at full resolution reduced by a whole factor (a pair is compared at the larger of its two images'
    reduction(), so at one scale), grey, background white (int16); None when it cannot be decoded."""
    try:
        img = image_io.load_rgb(path).convert("L")
    except Exception:  # unreadable since the scan: never a near-copy of anything
        return None
    if factor > 1:
        img = img.reduce(factor)
    return white_background(img)


def _pearson_distance(a, b):
    if len(a) < 2 or a.std() < 1e-6 or b.std() < 1e-6:
        return 2.0
    return float(1.0 - np.corrcoef(a, b)[0, 1])


def _decide(a, b, both):
    """(texture distance, shape mismatch) of aligned canvases a and b over the pixels both images cover."""
    inner = both & (a < OBJECT_LEVEL) & (b < OBJECT_LEVEL)
    texture = _pearson_distance(a[inner], b[inner]) if inner.sum() >= MIN_INNER_PIXELS else 2.0
    dark_a, dark_b = both & (a < SHAPE_DARK), both & (b < SHAPE_DARK)
    background = SHAPE_BACKGROUND
    if not (dark_a.any() and dark_b.any()):  # a faint particle (a thin diatom chain): judged on its faint pixels
        dark_a, dark_b, background = both & (a < OBJECT_LEVEL), both & (b < OBJECT_LEVEL), FAINT_BACKGROUND
        if not (dark_a.any() and dark_b.any()):
            return texture, 1.0
    a_on_background = (dark_a & (b >= background)).sum() / dark_a.sum()
    b_on_background = (dark_b & (a >= background)).sum() / dark_b.sum()
    return texture, float(min(a_on_background, b_on_background))


def _noise_correlation(a, b, both):
    """Pearson correlation of the fine detail (minus a NOISE_SIGMA blur) of aligned canvases a and b over the
    particle pixels they share, NOISE_ERODE px in from the rim (all of them for a particle too thin for that)."""
    from scipy.ndimage import binary_erosion, gaussian_filter
    inner = both & (a < OBJECT_LEVEL) & (b < OBJECT_LEVEL)
    interior = binary_erosion(inner, iterations=NOISE_ERODE)
    if interior.sum() >= MIN_INNER_PIXELS:
        inner = interior
    if inner.sum() < MIN_INNER_PIXELS:
        return -1.0
    detail_a, detail_b = (x - gaussian_filter(x, NOISE_SIGMA) for x in (a, b))
    return 1.0 - _pearson_distance(detail_a[inner], detail_b[inner])


def confirm(grey_a, grey_b):
    """(texture distance, shape mismatch, noise correlation, shift y, shift x) of two full-resolution greys: b
    aligned on a at one of the ALIGNMENT_PEAKS offsets (within FULL_SHIFT pixels) of highest darkness
    cross-correlation, the one that makes them most alike (a fine texture along one axis, a diatom chain's, has
    near-equal peaks a pixel apart). The noise is measured only where texture and shape make a near-copy (else
    -1): it costs two blurs."""
    if grey_a is None or grey_b is None:
        return 2.0, 1.0, -1.0, 0, 0
    h = max(grey_a.shape[0], grey_b.shape[0]) + 2 * FULL_SHIFT
    w = max(grey_a.shape[1], grey_b.shape[1]) + 2 * FULL_SHIFT
    canvases, covers = [], []
    for grey in (grey_a, grey_b):
        canvas, cover = np.full((h, w), 255.0), np.zeros((h, w), bool)
        canvas[FULL_SHIFT:FULL_SHIFT + grey.shape[0], FULL_SHIFT:FULL_SHIFT + grey.shape[1]] = grey
        cover[FULL_SHIFT:FULL_SHIFT + grey.shape[0], FULL_SHIFT:FULL_SHIFT + grey.shape[1]] = True
        canvases.append(canvas)
        covers.append(cover)
    a, b = canvases
    surface = np.fft.irfft2(np.fft.rfft2(255.0 - a) * np.conj(np.fft.rfft2(255.0 - b)), s=(h, w))
    window = np.arange(-FULL_SHIFT, FULL_SHIFT + 1)
    local = surface[window[:, None] % h, window[None, :] % w].ravel()
    best = None
    for k in np.argsort(-local, kind="stable")[:ALIGNMENT_PEAKS]:
        dy, dx = int(window[k // len(window)]), int(window[k % len(window)])
        both = covers[0] & np.roll(covers[1], (dy, dx), axis=(0, 1))
        texture, shape = _decide(a, np.roll(b, (dy, dx), axis=(0, 1)), both)
        score = max(texture / TEXTURE_MAX, shape / SHAPE_MAX)
        if best is None or score < best[0]:
            best = (score, texture, shape, dy, dx, both)
        if best[0] <= 1 or best[0] > FAR:  # a near-copy already, or too far for another offset to make it one
            break
    _, texture, shape, dy, dx, both = best
    noise = _noise_correlation(a, np.roll(b, (dy, dx), axis=(0, 1)), both) if best[0] <= 1 else -1.0
    return texture, shape, noise, dy, dx


def is_near_copy(texture, shape, noise):
    return (np.asarray(texture) <= TEXTURE_MAX) & (np.asarray(shape) <= SHAPE_MAX) & (np.asarray(noise) >= NOISE_MIN)


def coarse_candidates(pixels, sizes, classes=None):
    """(i, j, coarse similarity) of the size-compatible pairs (within a class where classes are given) whose
    coarse similarity reaches COARSE_MIN."""
    if classes is None:
        i, j = candidate_pairs(sizes)
    else:
        classes = np.asarray(classes)
        parts = [(idx[a], idx[b]) for c in np.unique(classes) for idx in [np.flatnonzero(classes == c)]
                 for a, b in [candidate_pairs(sizes[idx])]]
        i, j = (np.concatenate([p[k] for p in parts]) if parts else np.zeros(0, np.int64) for k in (0, 1))
    grids = coarse_grids(pixels)
    keep_i, keep_j, keep_s = [], [], []
    for start in range(0, len(i), BATCH):
        bi, bj = i[start:start + BATCH], j[start:start + BATCH]
        similarity = coarse_similarity(grids[bi], grids[bj])
        keep = similarity >= COARSE_MIN
        keep_i.append(bi[keep]), keep_j.append(bj[keep]), keep_s.append(similarity[keep])
    if not keep_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate(keep_i), np.concatenate(keep_j), np.concatenate(keep_s)


def find_pairs(abs_paths, pixels, sizes, classes=None):
    """The near-copy pairs among the files (their thumbnails and decoded sizes given): (i, j, texture distance,
    shape mismatch, noise correlation, shift y, shift x) arrays, and the number of pairs compared at full resolution."""
    i, j, _ = coarse_candidates(pixels, sizes, classes)
    greys = {}

    def grey(k, factor):
        if (k, factor) not in greys:
            greys[(k, factor)] = full_grey(abs_paths[k], factor)
        return greys[(k, factor)]
    rows = []
    for a, b in zip(i.tolist(), j.tolist()):
        factor = max(reduction(sizes[a]), reduction(sizes[b]))
        texture, shape, noise, dy, dx = confirm(grey(a, factor), grey(b, factor))
        if is_near_copy(texture, shape, noise):
            rows.append((a, b, texture, shape, noise, dy, dx))
        if len(greys) > 4096:  # bounded memory: the pairs come sorted by class and size, so neighbours repeat
            greys.clear()
    types = (np.int64, np.int64, float, float, float, int, int)
    found = tuple(np.array(col, dtype=t) for col, t in zip(zip(*rows), types)) if rows \
        else tuple(np.zeros(0, t) for t in types)
    return found, len(i)


def groups(n, i, j):
    """Component label of each of n images, near-copy pairs (i, j) joined (transitively)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


# --------------------------------------------------------------------------- the split's near-copies
def search(cfg, files):
    """(the near-copy pairs among the configured classes' files, the number of pairs compared at full resolution):
    a DataFrame of path_a, label_a, path_b, label_b, distances and shift (paths relative to data_root), and the
    group of each pair. Images are compared within their
    class: a near-copy there is what inflates the test accuracy, and the pairs to compare grow with the square of
    a class, not of the data set (byte-identical files across classes are found by data_folders.find_duplicates)."""
    root = artifacts.resolve(cfg.data_root)
    paths = [(p, c) for c in cfg.seen_classes + cfg.unseen_classes for p in files[c]]
    abs_paths = [str(root / p) for p, _ in paths]
    pixels, sizes = thumbnails(cfg, abs_paths)
    (i, j, texture, shape, noise, dy, dx), compared = find_pairs(abs_paths, pixels, sizes, [c for _, c in paths])
    component = groups(len(paths), i, j)
    frame = pd.DataFrame({"group": component[i], "path_a": [paths[k][0] for k in i],
                          "label_a": [paths[k][1] for k in i], "path_b": [paths[k][0] for k in j],
                          "label_b": [paths[k][1] for k in j], "texture_distance": np.round(texture, 4),
                          "shape_mismatch": np.round(shape, 4), "noise_correlation": np.round(noise, 4),
                          "shift_y": dy, "shift_x": dx})
    if len(frame):  # groups numbered 0, 1, ... in order of first appearance
        frame["group"] = pd.factorize(frame["group"])[0]
    return frame, compared


def group_keys(pairs, digests):
    """The split's grouping key of every file (splitting.draw_split keeps equal keys in one split): its bytes'
    digest, and for the files linked by near-copy pairs and byte-identical copies, transitively, the smallest key
    among them, so that byte-identical copies and near-copies of one particle stay together. Transitively: a file
    may be a near-copy in one class and, copied byte for byte under another, a near-copy there too."""
    parent = {}

    def root(path):
        parent.setdefault(path, path)
        while parent[path] != path:
            parent[path] = parent[parent[path]]  # path halving
            path = parent[path]
        return path

    for a, b in zip(pairs["path_a"], pairs["path_b"]):
        parent[root(a)] = root(b)
    linked = set(parent)
    byte_groups = {}
    for path, key in digests.items():
        byte_groups.setdefault(key, []).append(path)
    for paths in byte_groups.values():
        if len(paths) > 1 and linked.intersection(paths):
            for path in paths[1:]:
                parent[root(path)] = root(paths[0])
    components = {}
    for path in parent:
        components.setdefault(root(path), []).append(path)
    keys = dict(digests)
    for members in components.values():
        shared = min(digests.get(p) or p for p in members)
        keys.update({p: shared for p in members})
    return keys


def with_splits(pairs, split):
    """The pairs with each side's split and the kind: 'across splits' or 'within a split'."""
    where = dict(zip(split["path"], split["split"]))
    frame = pairs.copy()
    frame["split_a"] = [where.get(p, "") for p in frame["path_a"]]
    frame["split_b"] = [where.get(p, "") for p in frame["path_b"]]
    frame["kind"] = np.where(frame["split_a"] == frame["split_b"], "within a split", "across splits")
    frame = frame.sort_values(["kind", "group"], kind="stable").reset_index(drop=True)
    return frame[PAIR_COLUMNS]


def test_images_with_train_copies(pairs):
    """Paths of the test images that have a near-copy in train."""
    sides = (("split_a", "path_a", "split_b"), ("split_b", "path_b", "split_a"))
    return {p for mine, path, other in sides
            for p in pairs.loc[(pairs[mine] == "test") & (pairs[other] == "train"), path]}


def report_frames(cfg, pairs, split, compared):
    """(results/near_copies.csv's table: each pair with its group, both splits, the distances; near_copies.json's
    summary) of the pairs found; prints one warning line when near-copies cross splits. splitting.make_split
    writes both files in the split's output set, so that they always belong to the split.csv beside them."""
    frame = with_splits(pairs, split)
    flagged = set(frame["path_a"]) | set(frame["path_b"])
    leaks = test_images_with_train_copies(frame)
    across = int((frame["kind"] == "across splits").sum())
    summary = {"mode": cfg.near_copies, "pairs": len(frame), "pairs_across_splits": across,
               "images_flagged": len(flagged), "images": len(split), "test_images_with_train_copy": len(leaks),
               "pairs_compared_at_full_resolution": int(compared),
               "criterion": {"size_slack": SIZE_SLACK, "coarse_min": COARSE_MIN, "full_shift": FULL_SHIFT,
                             "texture_max": TEXTURE_MAX, "shape_max": SHAPE_MAX, "shape_dark": SHAPE_DARK,
                             "shape_background": SHAPE_BACKGROUND, "object_level": OBJECT_LEVEL,
                             "noise_min": NOISE_MIN, "noise_sigma": NOISE_SIGMA, "noise_erode": NOISE_ERODE}}
    if across:
        advice = ("" if cfg.near_copies == "group" else " The test accuracy may be inflated (report.py gives it "
                  "without them); --near_copies=group --rebuild_split=True keeps each group in one split.")
        print(f"warning: {len(flagged)} of {len(split)} images ({100 * len(flagged) / max(len(split), 1):.1f} %) "
              f"have a near-copy; {across} near-copy pair(s) cross splits and {len(leaks)} test image(s) have one "
              f"in train (results/near_copies.csv).{advice}", file=sys.stderr)
    elif len(frame):
        print(f"[split] {len(frame)} near-copy pair(s), each within one split (results/near_copies.csv)")
    else:
        print(f"[split] no near-copies among the images ({int(compared)} look-alike pairs compared at full "
              f"resolution; results/near_copies.csv)")
    return frame, summary


def current_report(cfg):
    """results/near_copies.csv as strings when it belongs to the current split (one complete output set with
    split.csv), else None (a split drawn before the search existed)."""
    body = manifest.complete(cfg, "split")
    if body is None or "results/near_copies.csv" not in body["outputs"]:
        return None
    return artifacts.read_csv(artifacts.out_path(cfg, "results", "near_copies.csv"),
                              ["path_a", "label_a", "split_a", "path_b", "label_b", "split_b", "kind"])


def accuracy_without_copies(cfg, test_predictions):
    """One sentence: the test accuracy with the test images that have a near-copy in train left out."""
    pairs = current_report(cfg)
    if pairs is None:
        return ("Near-copies: not searched for this split (it was drawn before the search existed); a new split "
                "(`python dataloader.py --rebuild_split=True`, then retrain) searches them.")
    root = artifacts.resolve(cfg.data_root)
    leaks = {str(root / p) for p in test_images_with_train_copies(pairs)} | test_images_with_train_copies(pairs)
    kept = test_predictions[~test_predictions["path"].astype(str).isin(leaks)]
    left_out = len(test_predictions) - len(kept)
    if not left_out:
        return f"Near-copies: no test image has a near-copy in train ({len(pairs)} near-copy pairs in all)."
    correct = kept["label"].astype(str) == kept["predicted"].astype(str)
    return (f"Without the {left_out} test image(s) that have a near-copy in train, the test accuracy is "
            f"{100 * correct.mean():.2f} % on {len(kept)} images (results/near_copies.csv).")
