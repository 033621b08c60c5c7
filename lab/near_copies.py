"""Near-copies: one particle saved twice (re-saved as JPEG, re-cropped or shifted by a few pixels, brightened), found
by comparing the decoded pixels, so that a split can keep them together or at least say how many cross it.

The search (measured on ndsb9 and on synthetic copies: docs/similar.md, "Near-copies"). Only images of one class
whose decoded sizes differ by at most SIZE_SLACK pixels in width and height are compared (re-saving, shifting and
brightening keep the size, a re-crop by a few pixels nearly so). Each image's grey levels are moved so that its
background (the border's median) is white; a dark-field image is inverted. Then:
  index      on 64-px thumbnails (cached): each image's nearest neighbours in its class, ranked, a few per image
             (lab/near_copy_index.py): the work grows with n log n, not with the pairs of a class
  coarse     the index's candidates, vectorised over the pairs: 36 x 36 darkness grids correlated at the best of
             5 x 5 offsets; under COARSE_MIN a pair is not one particle (cheap, and loose enough to keep the
             synthetic copies whose thin structures a thumbnail's grid blurs)
  confirm    at full resolution, alignment and decision: lab/particle_match.py (texture, shape and noise)
The all-pairs search (every size-compatible pair through the coarse step: coarse_candidates, find_pairs with
all_pairs=True) is kept as the reference the index is measured and tested against.
Pairs join into groups transitively; near_copies="group" keeps a group, with its byte-identical copies, in one
split (group_keys). A perceptual hash (imagehash) was measured first and fails: plankton crops are small dark
shapes on white, so distinct images of one class share a 64-bit phash while a 2-pixel shift moves it further.

Reads image files; writes cache/near_copy_thumbnails.npz (thumbnails per file, keyed by path, size and
modification time), results/near_copies.csv and results/near_copies.json (splitting.py calls save_report).
"""

import functools
import os
import sys
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pandas as pd
from PIL import Image

from lab import artifacts, image_io, manifest, near_copy_index, particle_match, progress

SIZE_SLACK = 4  # pixels: a re-crop by a few pixels changes the size by that much
CANVAS = 64  # thumbnail side (the coarse step): larger crops are resized to it
MARGIN = 4  # white border around each thumbnail, so that the coarse offsets never wrap the image
GRID = 2  # thumbnail pixels per coarse grid cell
COARSE_SHIFT = 2  # grid cells of offset tried in the coarse step (4 thumbnail pixels)
COARSE_MIN = 0.75  # coarse correlation below which a pair is not compared further
BATCH = 2048  # pairs correlated at once in the coarse step
VERSION = 5  # of the thumbnails in the cache
PAIR_COLUMNS = [
    "group",
    "path_a",
    "label_a",
    "split_a",
    "path_b",
    "label_b",
    "split_b",
    "kind",
    "texture_distance",
    "shape_mismatch",
    "noise_correlation",
    "shift_y",
    "shift_x",
]
SIDE = CANVAS + 2 * MARGIN
ANNOUNCE_FROM = 5000  # images: a search over more says when it starts (no silence over 10 s: DEVELOPERS.md)
SAYS = ("near-copy thumbnails", "images")  # the progress line of the thumbnails' pass
THUMBNAIL_CACHE = "near_copy_thumbnails.npz"  # under cache/: the split's, kept by any later run that fails


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
    grey = particle_match.white_background(img).astype(np.uint8)
    pixels[MARGIN : MARGIN + grey.shape[0], MARGIN : MARGIN + grey.shape[1]] = grey
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
            made = list(progress.progress(pool.map(_thumbnail_or_blank, todo, chunksize=256), len(todo), *SAYS))
    else:
        made = list(progress.progress(map(_thumbnail_or_blank, todo), len(todo), *SAYS))
    for i, (p, s) in zip(missing, made):
        pixels[i], sizes[i] = p, s
    if missing or len(known) != len(keys):
        artifacts.atomic_write(
            cache, lambda f: np.savez(f, version=VERSION, keys=np.asarray(keys), pixels=pixels, sizes=sizes)
        )
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
        offsets = np.arange(len(rows)) - np.repeat(
            np.cumsum(counts[start:stop]) - counts[start:stop], counts[start:stop]
        )
        cols = rows + 1 + offsets
        keep = (np.abs(height[rows] - height[cols]) <= SIZE_SLACK) & (width[rows] > 0) & (width[cols] > 0)
        found_i.append(order[rows[keep]])
        found_j.append(order[cols[keep]])
        start = stop
    i, j = np.concatenate(found_i or [[]]).astype(np.int64), np.concatenate(found_j or [[]]).astype(np.int64)
    return np.minimum(i, j), np.maximum(i, j)


# --------------------------------------------------------------------------- comparing pairs
def coarse_grids(pixels, chunk=4096):
    """Each thumbnail's darkness on a (SIDE / GRID)^2 grid, centred and scaled to unit norm (float32). In chunks of
    thumbnails: a float32 copy of all of them at once was 4 GB per 100,000 images (the scale benchmark's split)."""
    cells = SIDE // GRID
    grids = np.empty((len(pixels), cells, cells), np.float32)
    for start in range(0, len(pixels), chunk):
        part = pixels[start : start + chunk]
        dark = (255.0 - part.astype(np.float32)).reshape(len(part), cells, GRID, cells, GRID).mean((2, 4))
        dark -= dark.mean((1, 2), keepdims=True)
        grids[start : start + chunk] = dark / (np.sqrt((dark**2).sum((1, 2), keepdims=True)) + 1e-6)
    return grids


def coarse_similarity(grids_a, grids_b):
    """The best correlation of each pair of grids over offsets of up to COARSE_SHIFT cells (the margins are white
    and wider than the offsets, so nothing wraps into the image)."""
    best = np.full(len(grids_a), -1.0, np.float32)
    for dy in range(-COARSE_SHIFT, COARSE_SHIFT + 1):
        for dx in range(-COARSE_SHIFT, COARSE_SHIFT + 1):
            moved = np.roll(grids_b, (dy, dx), axis=(1, 2))
            best = np.maximum(best, np.einsum("pij,pij->p", grids_a, moved))
    return best


def pair_similarity(grids, i, j):
    """coarse_similarity of the pairs (i, j) of these grids, in batches of BATCH pairs (bounded memory)."""
    parts = [coarse_similarity(grids[i[s : s + BATCH]], grids[j[s : s + BATCH]]) for s in range(0, len(i), BATCH)]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def grouped_similarity(grids, i, j):
    """pair_similarity's values, computed for many pairs per image: the pairs grouped by their first image, whose
    (2 COARSE_SHIFT + 1)^2 shifted grids meet all its partners in one matrix product (the shift moved from the
    second grid to the first, which gives the same correlations: np.roll is a permutation of both alike). The
    index's rounds give an image up to hundreds of partners, where this is several times faster."""
    from numpy.lib.stride_tricks import sliding_window_view

    scores = np.empty(len(i), np.float32)
    if not len(i):
        return scores
    cells = grids.shape[1]
    order = np.argsort(i, kind="stable")
    starts = np.flatnonzero(np.r_[True, i[order][1:] != i[order][:-1]])
    for start, stop in zip(starts, [*starts[1:], len(i)]):
        rows = order[start:stop]
        wrapped = np.pad(grids[i[rows[0]]], COARSE_SHIFT, mode="wrap")  # np.roll's wrap, as coarse_similarity's
        shifted = sliding_window_view(wrapped, (cells, cells)).reshape(-1, cells * cells)
        scores[rows] = (shifted @ grids[j[rows]].reshape(len(rows), -1).T).max(0)
    return scores


def _classes(n, classes):
    classes = np.zeros(n, int) if classes is None else np.asarray(classes)
    return [(c, np.flatnonzero(classes == c)) for c in np.unique(classes)]


def coarse_candidates(pixels, sizes, classes=None):
    """The all-pairs search (the reference the index is measured against): (i, j, coarse similarity) of every
    size-compatible pair (within a class where classes are given) whose coarse similarity reaches COARSE_MIN."""
    grids, found = coarse_grids(pixels), []
    for _, idx in _classes(len(pixels), classes):
        a, b = candidate_pairs(sizes[idx])
        similarity = pair_similarity(grids, idx[a], idx[b])
        keep = similarity >= COARSE_MIN
        found.append((idx[a][keep], idx[b][keep], similarity[keep]))
    return tuple(np.concatenate([f[k] for f in found]) for k in range(3))


def indexed_candidates(pixels, sizes, classes=None):
    """(i, j, coarse similarity, {class: the index's statistics}) of the pairs the index proposes within each class
    (lab/near_copy_index.py): a subset of coarse_candidates', at most K_CONFIRM per image."""
    parts = _classes(len(pixels), classes)
    if len(pixels) > ANNOUNCE_FROM:
        print(f"[near-copy index] {len(parts)} classes: coarse grids of {len(pixels)} thumbnails, then each class")
    with progress.heartbeat("near-copy index: coarse grids"):  # 7 s on ndsb112 under load, before any class
        grids = coarse_grids(pixels)
    sizes, found, stats = np.asarray(sizes), [], {}
    for c, idx in progress.progress(parts, len(parts), "near-copy index", "classes"):
        a, b, similarity, stats[str(c)] = near_copy_index.class_candidates(
            pixels[idx], sizes[idx], SIZE_SLACK, COARSE_MIN, functools.partial(grouped_similarity, grids[idx])
        )
        found.append((idx[a], idx[b], similarity))
    return (*(np.concatenate([f[k] for f in found]) for k in range(3)), stats)


def find_pairs(abs_paths, pixels, sizes, classes=None, all_pairs=False):
    """The near-copy pairs among the files (their thumbnails and decoded sizes given): (i, j, texture distance,
    shape mismatch, noise correlation, shift y, shift x) arrays, and the search's summary: pairs compared at full
    resolution, and per class the index's statistics (none with all_pairs=True, the reference search)."""
    if all_pairs:
        (i, j, _), stats = coarse_candidates(pixels, sizes, classes), {}
    else:
        i, j, _, stats = indexed_candidates(pixels, sizes, classes)
    order = np.lexsort((j, i))  # each image's pairs together: its full-resolution decode is reused
    i, j = i[order], j[order]
    greys = {}

    def grey(k, factor):
        if (k, factor) not in greys:
            greys[(k, factor)] = particle_match.full_grey(abs_paths[k], factor)
        return greys[(k, factor)]

    rows = []
    for a, b in progress.progress(zip(i.tolist(), j.tolist()), len(i), "near-copy confirm", "pairs"):
        factor = max(particle_match.reduction(sizes[a]), particle_match.reduction(sizes[b]))
        texture, shape, noise, dy, dx = particle_match.confirm(grey(a, factor), grey(b, factor))
        if particle_match.is_near_copy(texture, shape, noise):
            rows.append((a, b, texture, shape, noise, dy, dx))
        if len(greys) > 4096:  # bounded memory
            greys.clear()
    types = (np.int64, np.int64, float, float, float, int, int)
    found = (
        tuple(np.array(col, dtype=t) for col, t in zip(zip(*rows), types))
        if rows
        else tuple(np.zeros(0, t) for t in types)
    )
    return found, {"pairs_compared_at_full_resolution": len(i), "classes": stats}


def groups(n, i, j):
    """Component label of each of n images, near-copy pairs (i, j) joined (transitively)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


# --------------------------------------------------------------------------- the split's near-copies
def search(cfg, files):
    """(the near-copy pairs among the configured classes' files, the search's summary: find_pairs'): a DataFrame of
    path_a, label_a, path_b, label_b, distances and shift (paths relative to data_root), and the group of each pair.
    Images are compared within their class: a near-copy there is what inflates the test accuracy (byte-identical
    files across classes are found by data_folders.find_duplicates)."""
    root = artifacts.resolve(cfg.data_root)
    paths = [(p, c) for c in cfg.seen_classes + cfg.unseen_classes for p in files[c]]
    abs_paths = [str(root / p) for p, _ in paths]
    if len(paths) > ANNOUNCE_FROM:  # a long search says that it started: its stages' progress lines come later
        print(f"[near-copies] searching {len(paths)} images: thumbnails, then an index per class, then the pairs")
    pixels, sizes = thumbnails(cfg, abs_paths)
    (i, j, texture, shape, noise, dy, dx), searched = find_pairs(abs_paths, pixels, sizes, [c for _, c in paths])
    component = groups(len(paths), i, j)
    frame = pd.DataFrame(
        {
            "group": component[i],
            "path_a": [paths[k][0] for k in i],
            "label_a": [paths[k][1] for k in i],
            "path_b": [paths[k][0] for k in j],
            "label_b": [paths[k][1] for k in j],
            "texture_distance": np.round(texture, 4),
            "shape_mismatch": np.round(shape, 4),
            "noise_correlation": np.round(noise, 4),
            "shift_y": dy,
            "shift_x": dx,
        }
    )
    if len(frame):  # groups numbered 0, 1, ... in order of first appearance
        frame["group"] = pd.factorize(frame["group"])[0]
    return frame, searched


def index_summary(searched):
    """near_copies.json's account of the index: its constants, the pairs it proposed, those ranked out (candidates
    beyond an image's K_CONFIRM best, dropped), the images whose neighbours were extended past K_INDEX (every one
    passed the size and coarse checks: near_copy_index.neighbour_rounds) and the classes with images at the cap
    (still every neighbour passing at K_INDEX x ceil(log2 n): more candidates may have existed)."""
    per_class = searched.get("classes", {})
    keys = ("index_pairs", "coarse_pairs", "ranked_out", "images_extended")
    total = {key: sum(s[key] for s in per_class.values()) for key in keys}
    return {
        "k_index": near_copy_index.K_INDEX,
        "k_confirm": near_copy_index.K_CONFIRM,
        "cap": "k_index x ceil(log2 of the class's images) neighbours per image",
        **total,
        "most_neighbours": max((s["most_neighbours"] for s in per_class.values()), default=0),
        "classes_at_cap": {c: s["images_at_cap"] for c, s in per_class.items() if s["images_at_cap"]},
    }


def group_keys(pairs, digests):
    """The split's grouping key of every file (splitting.draw_split keeps equal keys in one split): its bytes'
    digest, and for the files linked by near-copy pairs and byte-identical copies, transitively (groups), the
    smallest key among them, so that byte-identical copies and near-copies of one particle stay together.
    Transitively: a file may be a near-copy in one class and, copied byte for byte under another, a near-copy there
    too."""
    keys = dict(digests)
    byte_groups = {}
    for path, key in digests.items():
        byte_groups.setdefault(key, []).append(path)
    paired = list(dict.fromkeys([*pairs["path_a"], *pairs["path_b"]]))
    copies = [(p, q) for p in paired for q in byte_groups.get(digests.get(p), ())]  # each with its byte copies
    files = list(dict.fromkeys(paired + [q for _, q in copies]))
    index = {p: k for k, p in enumerate(files)}
    links = [*zip(pairs["path_a"], pairs["path_b"]), *copies]
    component = groups(
        len(files),
        np.array([index[a] for a, _ in links], dtype=np.int64),
        np.array([index[b] for _, b in links], dtype=np.int64),
    )
    shared = {}
    for path, c in zip(files, component):
        shared[c] = min(shared.get(c, digests.get(path) or path), digests.get(path) or path)
    keys.update({path: shared[c] for path, c in zip(files, component)})
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
    return {
        p for mine, path, other in sides for p in pairs.loc[(pairs[mine] == "test") & (pairs[other] == "train"), path]
    }


def report_frames(cfg, pairs, split, searched):
    """(results/near_copies.csv's table: each pair with its group, both splits, the distances; near_copies.json's
    summary) of the pairs found; prints one warning line when near-copies cross splits. splitting.make_split
    writes both files in the split's output set, so that they always belong to the split.csv beside them."""
    frame = with_splits(pairs, split)
    flagged = set(frame["path_a"]) | set(frame["path_b"])
    leaks = test_images_with_train_copies(frame)
    across = int((frame["kind"] == "across splits").sum())
    summary = {
        "mode": cfg.near_copies,
        "pairs": len(frame),
        "pairs_across_splits": across,
        "images_flagged": len(flagged),
        "images": len(split),
        "test_images_with_train_copy": len(leaks),
        "pairs_compared_at_full_resolution": int(searched["pairs_compared_at_full_resolution"]),
        "index": index_summary(searched),
        "criterion": {"size_slack": SIZE_SLACK, "coarse_min": COARSE_MIN, **particle_match.criterion()},
    }
    if across:
        advice = (
            ""
            if cfg.near_copies == "group"
            else " The test accuracy may be inflated (report.py gives it "
            "without them); --near_copies=group --rebuild_split=True keeps each group in one split."
        )
        print(
            f"warning: {len(flagged)} of {len(split)} images ({100 * len(flagged) / max(len(split), 1):.1f} %) "
            f"have a near-copy; {across} near-copy pair(s) cross splits and {len(leaks)} test image(s) have one "
            f"in train (results/near_copies.csv).{advice}",
            file=sys.stderr,
        )
    elif len(frame):
        print(f"[split] {len(frame)} near-copy pair(s), each within one split (results/near_copies.csv)")
    else:
        print(
            f"[split] no near-copies among the images ({searched['pairs_compared_at_full_resolution']} look-alike "
            f"pairs compared at full "
            f"resolution; results/near_copies.csv)"
        )
    return frame, summary


def current_report(cfg):
    """results/near_copies.csv as strings when it belongs to the current split (one complete output set with
    split.csv), else None (a split drawn before the search existed)."""
    body = manifest.complete(cfg, "split")
    if body is None or "results/near_copies.csv" not in body["outputs"]:
        return None
    return artifacts.read_csv(
        artifacts.out_path(cfg, "results", "near_copies.csv"),
        ["path_a", "label_a", "split_a", "path_b", "label_b", "split_b", "kind"],
    )
