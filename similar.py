"""Images like this one: the similar_k nearest embedded images of a query image (or of every image of a folder).

    python similar.py --query=/data/cruise42/img_0001.png            # one image, anywhere
    python similar.py --query=/data/cruise42 --similar_k=5           # every image under a folder, recursively

Reads checkpoints/best.pth (train.py), embeddings/embeddings_{train,val,test,unseen}.pkl (embed.py) and, when it
exists and comes from the same checkpoint, embeddings/embeddings_predict.pkl (predict.py), and the query images.
Each query is embedded with the checkpoint as predict.py embeds new images; its neighbours are the embedded images
of smallest cosine distance (1 - cosine similarity), found by one exact matrix-vector product per query. An
embedded image that is the query file itself is listed as the query (rank 0, distance 0) and never counted as its
own neighbour. Images whose embedding is all zeros have no direction: they are listed once per query with rank
"zero" and no distance, never ranked. Writes, as one output set (results/similar_manifest.json, lab/manifest.py)
  results/similar.csv            query, rank, path, label (class, or predicted class for predict), split, distance
  figs/similar_<query>.png       the query and its neighbours, captioned (plotting.figure_slug of the file name)
"""

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

import lab
from lab import (
    artifacts,
    checkpoint,
    config,
    data_folders,
    embedding_files,
    image_io,
    manifest,
    plotting,
    runtime,
    trunk_cache,
)

SETS = ("train", "val", "test", "unseen")
COLUMNS = ["query", "rank", "path", "label", "split", "distance"]


# --------------------------------------------------------------------------- inputs
def query_paths(cfg):
    """Absolute paths of the query images: the file, or every image under the folder (the scan's rules)."""
    if cfg.query is None:
        raise lab.LabError(
            "similar.py needs a query: run it as `python similar.py --query=/path/to/image.png` (or "
            "a folder of images), or set query in configfile.py."
        )
    target = artifacts.resolve(cfg.query)
    if target.is_dir():
        images = data_folders.list_class_files(target)[0]
        if not images:
            raise lab.LabError(
                f"No image files under {target} (searched recursively for jpg, png, tif, bmp, gif, "
                f"webp...). Point --query at an image or a folder of images."
            )
        return [str(target / p) for p in images]
    if not target.is_file():
        raise lab.LabError(f"query={cfg.query!r} is neither an image file nor a folder ({target} does not exist).")
    return [str(target)]


def reference_set(cfg):
    """(rows: path, label, split; float32 embeddings) of every embedded set: embed.py's, and predict.py's when it
    belongs to the current checkpoint."""
    names = list(SETS) + (["predict"] if embedding_files.current_predict_set(cfg) else [])
    frames, vectors = [], []
    for name in names:
        frame, emb = embedding_files.load_embeddings(cfg, name)
        frames.append(frame[["path", "label", "split"]])
        vectors.append(emb.astype(np.float32))
    return pd.concat(frames, ignore_index=True), np.concatenate(vectors)


# --------------------------------------------------------------------------- the search
def unit_rows(vectors):
    """(rows scaled to unit length, float32; which rows are all zeros and have no direction)."""
    vectors = np.asarray(vectors, np.float32)
    norms = np.linalg.norm(vectors, axis=1)
    zero = norms == 0
    return vectors / np.where(zero, 1.0, norms)[:, None], zero


def nearest(reference, zero, query, k, itself=-1):
    """(indices, cosine distances) of the k nearest rows of the unit reference to the unit query vector, closest
    first; all-zero rows and the query's own row (itself) are never among them."""
    similarity = reference @ query
    similarity[zero] = -np.inf
    if itself >= 0:
        similarity[itself] = -np.inf
    k = min(k, int(np.isfinite(similarity).sum()))
    if k <= 0:
        return np.zeros(0, np.int64), np.zeros(0)
    top = np.argpartition(-similarity, k - 1)[:k]
    top = top[np.argsort(-similarity[top], kind="stable")]
    return top, np.clip(1.0 - similarity[top].astype(np.float64), 0.0, 2.0)


def same_file(path_a, path_b):
    try:
        return os.path.samefile(path_a, path_b)
    except OSError:
        return False


def rows_of_query(query_path, query_vector, rows, reference, zero, k, where):
    """similar.csv's rows of one query: itself when embedded (rank 0), its k neighbours, the all-zero images."""
    own = [i for i in where.get(os.path.realpath(query_path), []) if same_file(rows["path"].iat[i], query_path)]
    out = [
        {
            "query": query_path,
            "rank": 0,
            "path": rows["path"].iat[i],
            "label": rows["label"].iat[i],
            "split": rows["split"].iat[i],
            "distance": 0.0,
        }
        for i in own
    ]
    unit, query_zero = unit_rows(query_vector[None])
    if not query_zero[0]:
        excluded = zero.copy()
        excluded[own] = True
        top, distance = nearest(reference, excluded, unit[0], k)
        out += [
            {
                "query": query_path,
                "rank": r + 1,
                "path": rows["path"].iat[i],
                "label": rows["label"].iat[i],
                "split": rows["split"].iat[i],
                "distance": float(d),
            }
            for r, (i, d) in enumerate(zip(top, distance))
        ]
    out += [
        {
            "query": query_path,
            "rank": "zero",
            "path": rows["path"].iat[i],
            "label": rows["label"].iat[i],
            "split": rows["split"].iat[i],
            "distance": np.nan,
        }
        for i in np.flatnonzero(zero)
        if i not in own
    ]
    return out


# --------------------------------------------------------------------------- the figure
def plot_query(query_path, found, path):
    """The query and its ranked neighbours in one row, each captioned with split, label and distance."""
    plt = plotting.pyplot()
    ranked = [r for r in found if r["rank"] not in (0, "zero")]
    fig, axes = plt.subplots(1, len(ranked) + 1, figsize=(1.9 * (len(ranked) + 1), 2.5), squeeze=False)
    panels = [(query_path, "query\n" + Path(query_path).name[:22])] + [
        (r["path"], f"{r['rank']}. {r['split']}\n{name[:20]}\nd={r['distance']:.3f}")
        for r, name in zip(ranked, plotting.drawable_names([r["label"] for r in ranked]))
    ]
    for ax, (image, caption) in zip(axes[0], panels):
        try:
            ax.imshow(image_io.letterbox(image_io.load_rgb(image, 128), 128))
        except Exception:  # a file moved since it was embedded: the caption still says which
            ax.text(0.5, 0.5, "unreadable", ha="center", va="center")
        ax.set_title(caption, fontsize=7)
        ax.axis("off")
    return plotting.save_figure(path, fig)


def figure_name(query_path, taken):
    slug = plotting.figure_slug(Path(query_path).stem)
    name, n = f"similar_{slug}.png", 1
    while name in taken:  # a.png and a.jpg, or two folders holding img_1.png
        n += 1
        name = f"similar_{slug}_{n}.png"
    taken.add(name)
    return name


# --------------------------------------------------------------------------- main
def main(argv=None):
    cfg = config.load_config(argv, __doc__)
    queries = query_paths(cfg)
    artifacts.ensure_output_dirs(cfg, ("results", "figs"))
    trained = checkpoint.load_trained(cfg, split=False, made_for="neighbours")
    cfg, model, device = trained.cfg, trained.model, trained.device
    rows, vectors = reference_set(cfg)
    reference, zero = unit_rows(vectors)
    where = {}
    for i, p in enumerate(rows["path"]):
        where.setdefault(os.path.realpath(p), []).append(i)
    outputs = trunk_cache.image_outputs(
        model,
        queries,
        cfg.image_size,
        cfg.batch_size,
        cfg.num_workers,
        device,
        trained.trunk_dtype,
        desc="queries",
        views=cfg.trunk_views,  # the checkpoint's, as embed.py's vectors averaged them
        cpu_threads=cfg.cpu_threads,
    )
    table, taken = [], set()
    # the CSV and its figures as one set: a new query never leaves an older query's figures beside its table
    with manifest.OutputSet(cfg, "similar", about=f"the neighbours of {artifacts.printable(cfg.query)}") as out:
        for query_path, vector, ok in zip(queries, outputs["embeddings"], outputs["ok"]):
            if not ok:
                print(f"warning: {artifacts.printable(query_path)} could not be decoded: left out", file=sys.stderr)
                continue
            found = rows_of_query(query_path, vector, rows, reference, zero, cfg.similar_k, where)
            table += found
            plot_query(query_path, found, out.file("figs", figure_name(query_path, taken)))
        frame = pd.DataFrame(table, columns=COLUMNS)
        out.save_csv("results", "similar.csv", frame)
        out.publish(
            checkpoint=trained.digest,
            embeddings=embedding_files.embedding_set(cfg)["set"],
            query=str(artifacts.resolve(cfg.query)),
        )
    print(
        f"[similar] {len(queries)} query image(s) against {len(rows)} embedded images ({int(zero.sum())} all-zero): "
        f"{artifacts.out_path(cfg, 'results', 'similar.csv')} and figs/similar_*.png"
    )
    return frame


if __name__ == "__main__":
    runtime.run_main(lambda: main(sys.argv[1:]))
