"""2-D map of the embeddings and per-class image galleries (mission tasks 6-7).

Reads embeddings/embeddings_{train,test,unseen}.pkl (embed.py), embeddings/embeddings_predict.pkl (predict.py)
when it exists, and the images they point to. Writes
  figs/umap_embeddings.png         three panels (train, test, unseen) coloured by class
  results/umap_coordinates.csv     split, label, path, x, y of every mapped point
  figs/gallery_<class>.png         per class: the gallery_size images closest to the class centre, the
                                   furthest, and the closest images of other classes, with class and distance
                                   (<class> is plotting.figure_slug: the name, or ASCII + a hash where it is not ASCII)
  results/galleries.csv            every gallery tile: set, class, figure (file name), row, rank, path, label,
                                   distance
  results/dimensionality_reduction_manifest.json   written last (manifest.py): these files, the embeddings set and
                                   predict.py's set that the "predict" points come from (a gallery of a class no
                                   longer analysed is removed with the set it belonged to)
Up to umap_samples_per_split embeddings of each split are sampled (seeded) and standardised, and the 2-D
reduction (reduction_method: umap, tsne or pca) is fitted once on their union. Galleries are computed in the
128-d embedding space, not in the 2-D map: seen classes on the train split, unseen classes among themselves.
Images predict.py classified join the map as a fourth split, "predict" (in the interactive map of the report; the
static figure shows them as grey context points).
"""

import contextlib
import io
import re
import sys
import time
import warnings

import numpy as np
import pandas as pd

from lab import artifacts, class_matrices, config, embedding_files, image_io, manifest, plotting, runtime

SPLITS = ("train", "test", "unseen")
PREDICT = "predict"  # the split of embeddings_predict.pkl, made by predict.py
ROWS = ("closest to centre", "furthest from centre", "closest of other classes")


def sample_rows(frame, limit, rng):
    if len(frame) <= limit:
        return np.arange(len(frame))
    return np.sort(rng.choice(len(frame), size=limit, replace=False))


def exact_neighbours(x, k):
    """(indices int32, distances float32), N x k: each point itself first, then its k - 1 nearest others, exact
    (scikit-learn), in the form umap.UMAP(precomputed_knn=...) takes."""
    from sklearn.neighbors import NearestNeighbors

    distances, indices = NearestNeighbors(n_neighbors=k - 1).fit(x).kneighbors()  # no argument: self left out
    own = np.arange(len(x))[:, None]
    return (
        np.hstack([own, indices]).astype(np.int32),
        np.hstack([np.zeros_like(own, dtype=float), distances]).astype(np.float32),
    )


def cache_umap_compilation():
    """Switch on numba's on-disk cache for UMAP's compiled functions, which UMAP leaves off: otherwise numba
    compiles its graph and layout code in every new process (its cost: docs/performance.md). The cache lies
    beside UMAP's code (or in NUMBA_CACHE_DIR) and is renewed when UMAP changes; where it cannot be written,
    UMAP compiles as before."""
    import numba
    from umap import layouts, umap_

    for module in (umap_, layouts):
        for function in vars(module).values():
            if (
                isinstance(function, numba.core.registry.CPUDispatcher)
                and function.py_func.__module__ == module.__name__
            ):
                try:
                    function.enable_caching()
                except (AttributeError, RuntimeError):  # another numba, or no writable cache location
                    return


def reduce_to_2d(x, cfg):
    """One fit of the chosen method on all points (standardised)."""
    from sklearn.preprocessing import StandardScaler

    x = StandardScaler().fit_transform(x)
    if cfg.reduction_method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=cfg.seed).fit_transform(x)
    if cfg.reduction_method == "tsne":
        from sklearn.manifold import TSNE

        return TSNE(
            n_components=2, init="pca", random_state=cfg.seed, perplexity=min(30.0, max(2.0, (len(x) - 1) / 3))
        ).fit_transform(x)
    import umap

    cache_umap_compilation()
    k = min(cfg.umap_n_neighbors, len(x) - 1)
    started = time.perf_counter()
    # Exact neighbours from scikit-learn: UMAP's own search is compiled by numba in every new process, which
    # cost most of this stage (docs/performance.md); exact is also at least as good a graph as approximate.
    neighbours = exact_neighbours(x, k)
    print(
        f"[map] exact {k} nearest neighbours of {len(x)} points ({time.perf_counter() - started:.1f} s); UMAP's "
        f"graph and layout next (the first run after an install also compiles UMAP's code: 10-20 s more)",
        flush=True,
    )
    # verbose: UMAP says where it is every tenth of its epochs, so a long layout is never silent
    reducer = umap.UMAP(
        n_neighbors=k,
        min_dist=cfg.umap_min_dist,
        random_state=cfg.seed,
        n_jobs=1,
        precomputed_knn=neighbours,
        verbose=True,
        tqdm_kwds={"disable": True},
    )
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(Prefixed("[map] umap: ", sys.stdout)),
        runtime.torch_threads_kept(),
    ):
        warnings.filterwarnings("ignore", message=".*knn_search_index.*")  # we never transform new points
        return reducer.fit_transform(x)


class Prefixed(io.TextIOBase):
    """Passes UMAP's progress lines (its steps and every tenth of its epochs) on to another stream, each with a
    prefix and flushed; its echo of its own parameters and its time stamps are left out."""

    PROGRESS = re.compile(r"(?:\w{3} \w{3} +\d+ [\d:]+ \d{4} )?((?:Construct|Finished|completed).*)")

    def __init__(self, prefix, target):
        self.prefix, self.target, self.pending = prefix, target, ""

    def write(self, text):
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            match = self.PROGRESS.fullmatch(line.strip())
            if match:
                self.target.write(f"{self.prefix}{' '.join(match[1].split())}\n")
        self.target.flush()
        return len(text)


LEGEND_IN_PANEL_UP_TO = class_matrices.NUMBERED_UP_TO  # classes: a legend in each panel up to this many


def class_colours(seen, unseen):
    """A colour per class (plotting.class_palette: tab10 then Dark2 up to 18 classes, then Glasbey's), as the
    report's interactive map has them."""
    from matplotlib.colors import to_rgb

    names = list(seen) + [c for c in unseen if c not in seen]
    return {c: to_rgb(colour) for c, colour in zip(names, plotting.class_palette(len(names)))}


def label_clusters(ax, part, classes, numbers):
    """Past LEGEND_IN_PANEL_UP_TO classes: each class's number at the median of its points in this panel."""
    import matplotlib.patheffects as effects

    outline = [effects.withStroke(linewidth=2, foreground="white")]
    for c in classes:
        pts = part[part["label"] == c]
        if len(pts):
            x, y = pts["x"].median(), pts["y"].median()
            ax.text(x, y, str(numbers[c]), fontsize=6, ha="center", va="center", path_effects=outline, zorder=3)


def plot_map(coords, cfg, path):
    plt = plotting.pyplot()
    seen = list(dict.fromkeys(coords.loc[coords["split"] == "train", "label"]))
    unseen = list(dict.fromkeys(coords.loc[coords["split"] == "unseen", "label"]))
    colours = class_colours(seen, unseen)
    shown = dict(zip(seen + unseen, plotting.drawable_names(seen + unseen)))
    many = len(colours) > LEGEND_IN_PANEL_UP_TO
    numbers = {c: i + 1 for i, c in enumerate(colours)}
    fig, axes = plt.subplots(1, 3, figsize=(24, 8) if many else (18, 6), sharex=True, sharey=True)
    for ax, split in zip(axes, SPLITS):
        ax.scatter(coords["x"], coords["y"], s=2, color="0.88", zorder=0)  # all points, for orientation
        part = coords[coords["split"] == split]
        classes = unseen if split == "unseen" else seen
        for c in classes:
            pts = part[part["label"] == c]
            ax.scatter(pts["x"], pts["y"], s=4, color=colours[c], label=f"{shown[c]} ({len(pts)})", alpha=0.8)
        ax.set_title(f"{split} ({len(part)} points)")
        if many:
            label_clusters(ax, part, classes, numbers)
        else:
            ax.legend(markerscale=3, fontsize=8, loc="best")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        f"{cfg.reduction_method.upper()} of the 128-d embeddings (one fit on all "
        f"{coords['split'].nunique()} splits, standardised)"
    )
    if many:  # one legend beside the map, numbered as the clusters are labelled
        legend_below(fig, colours, numbers, shown, set(unseen) - set(seen))
    plotting.save_figure(path, fig)


def legend_below(fig, colours, numbers, shown, unseen):
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", linestyle="", color=colour, markersize=5) for colour in colours.values()]
    names = [f"{numbers[c]} {shown[c]}{' (unseen)' if c in unseen else ''}" for c in colours]
    columns = 5
    fig.legend(handles, names, loc="upper center", bbox_to_anchor=(0.5, 0.02), ncol=columns, fontsize=7, frameon=False)


def distances_to(vectors, centres, block=512):
    """Euclidean distance of every row to every centre (rows x centres), in the rows' precision. Each block of rows
    (256 KB of 128-d float32 embeddings, 512 KB in float64) meets every centre while it sits in the CPU's cache,
    and each row's distance is the same sum as for one centre alone. The galleries of 93 classes over 300,000
    float32 rows took 1.73 CPU s, 10.4 times 30,000 rows; a pass over all rows per centre took 2.82 s, 12.3 times
    (/tmp script, one thread, the project's Xeon): at 30,000 the rows stayed in the cache between the passes, at
    300,000 not. The price: the whole matrix at once (300,000 x 93 float64: 223 MB)."""
    centres = np.atleast_2d(centres)
    # column-major: a class's distances to every row lie together, for class_galleries' picks
    out = np.empty((len(vectors), len(centres)), dtype=np.result_type(vectors.dtype, centres.dtype), order="F")
    for start in range(0, len(vectors), block):
        rows = vectors[start : start + block]
        for j, centre in enumerate(centres):
            diff = rows - centre
            out[start : start + block, j] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    return out


def k_smallest(values, k):
    """Indices of the k smallest values, ascending, ties by position: a stable argsort's first k, in linear time."""
    if k >= len(values):
        return np.argsort(values, kind="stable")
    kth = np.partition(values, k - 1)[k - 1]
    candidates = np.flatnonzero(values <= kth)
    return candidates[np.argsort(values[candidates], kind="stable")][:k]


def class_galleries(vectors, labels, classes, k):
    """{class: {row: (indices, distances)}}: per class, the k own images nearest to and furthest from its centre
    and the k nearest images of other classes, from one pass over the rows for every centre (distances_to)."""
    owns = [np.flatnonzero(labels == cls) for cls in classes]
    distance = distances_to(vectors, np.stack([vectors[own].mean(0) for own in owns]))
    picks = {}
    for j, (cls, own) in enumerate(zip(classes, owns)):
        is_own = np.zeros(len(vectors), bool)
        is_own[own] = True
        other = np.flatnonzero(~is_own)
        d_own, d_other = distance[own, j], distance[other, j]
        order_own = np.argsort(d_own, kind="stable")
        nearest_other = k_smallest(d_other, k)
        picks[cls] = {
            ROWS[0]: (own[order_own[:k]], d_own[order_own[:k]]),
            ROWS[1]: (own[order_own[::-1][:k]], d_own[order_own[::-1][:k]]),
            ROWS[2]: (other[nearest_other], d_other[nearest_other]),
        }
    return picks


def thumbnail(path, size=96):
    try:
        return image_io.letterbox(image_io.load_rgb(path, size), size)
    except Exception:
        return None  # a file gone since embedding: leave the tile blank rather than lose the gallery


def plot_gallery(cls, set_name, picks, frame, k, path):
    plt = plotting.pyplot()
    names = list(dict.fromkeys([cls, *frame["label"]]))
    shown = dict(zip(names, plotting.drawable_names(names)))
    fig, axes = plt.subplots(3, k, figsize=(1.9 * k + 1.5, 7.2), squeeze=False)
    for r, (row, (idx, dist)) in enumerate(picks.items()):
        for t in range(k):
            ax = axes[r, t]
            ax.set_xticks([])
            ax.set_yticks([])
            if t < len(idx):
                image = thumbnail(frame["path"].iloc[idx[t]])
                if image is not None:
                    ax.imshow(image)
                ax.set_title(f"{shown[frame['label'].iloc[idx[t]]]}\nd = {dist[t]:.2f}", fontsize=8)
            else:
                ax.axis("off")
        axes[r, 0].set_ylabel(row, fontsize=9)
    fig.suptitle(f"{shown[cls]} ({set_name}): distances to the class centre in the 128-d embedding space")
    plotting.save_figure(path, fig)


def galleries(cfg, frames, out):
    rows, every_class = [], [c for name in ("train", "unseen") for c in frames[name][0]["label"].unique()]
    for set_name, (frame, vectors) in (("train", frames["train"]), ("unseen", frames["unseen"])):
        labels = frame["label"].to_numpy()
        classes = list(dict.fromkeys(frame.sort_values("label_idx")["label"]))
        every_pick = class_galleries(vectors, labels, classes, cfg.gallery_size)
        for number, cls in enumerate(classes, 1):
            print(f"[galleries] {set_name} {number}/{len(classes)}: {cls}", flush=True)
            picks = every_pick[cls]
            figure = f"gallery_{plotting.figure_slug(cls, every_class)}.png"
            plot_gallery(cls, set_name, picks, frame, cfg.gallery_size, out.file("figs", figure))
            for row, (idx, dist) in picks.items():
                for rank, (i, d) in enumerate(zip(idx, dist)):
                    rows.append(
                        {
                            "set": set_name,
                            "class": cls,
                            "figure": figure,
                            "row": row,
                            "rank": rank + 1,
                            "path": frame["path"].iloc[i],
                            "label": frame["label"].iloc[i],
                            "distance": float(d),
                        }
                    )
    table = pd.DataFrame(rows)
    out.save_csv("results", "galleries.csv", table)
    print(f"[galleries] {table['class'].nunique()} classes -> figs/gallery_<class>.png, results/galleries.csv")
    return table


def map_splits(cfg):
    """(train, test and unseen, and predict when predict.py has embedded new images with the current model; the
    manifest of predict.py's set or None)."""
    predict = embedding_files.current_predict_set(cfg)
    return SPLITS + ((PREDICT,) if predict else ()), predict


def main(argv=None):
    cfg = config.load_config(argv, __doc__)
    config.print_settings(cfg)
    artifacts.ensure_output_dirs(cfg, ("results", "figs"))
    runtime.seed_everything(cfg.seed)
    splits, predict = map_splits(cfg)
    frames = {s: embedding_files.load_embeddings(cfg, s) for s in splits}
    rng = np.random.default_rng(cfg.seed)
    parts = []
    for s in splits:
        frame, vectors = frames[s]
        keep = sample_rows(frame, cfg.umap_samples_per_split, rng)
        parts.append((frame.iloc[keep][["split", "label", "path"]].assign(split=s), vectors[keep]))
    points = np.concatenate([v for _, v in parts])
    print(
        f"[map] fitting {cfg.reduction_method} once on {len(points)} embeddings "
        f"({', '.join(f'{s} {len(v)}' for s, (_, v) in zip(splits, parts))})"
    )
    xy = reduce_to_2d(points, cfg)
    coords = pd.concat([p for p, _ in parts], ignore_index=True).assign(
        x=xy[:, 0], y=xy[:, 1], method=cfg.reduction_method
    )
    with manifest.OutputSet(cfg, "dimensionality_reduction") as out:
        out.save_csv("results", "umap_coordinates.csv", coords)
        plot_map(coords, cfg, out.file("figs", "umap_embeddings.png"))
        galleries(cfg, frames, out)
        # the sample of the map's "predict" points: report.py joins predictions to them only when it is the same
        out.publish(**embedding_files.embedding_inputs(cfg), predict=predict and predict["id"])


if __name__ == "__main__":
    runtime.run_main(lambda: main(sys.argv[1:]))
