"""Classify a new sample: every image under a folder, with its class probabilities and a possibly-new flag.

    python predict.py --predict_dir=/data/cruise42/flowcam                 # after run_pipeline.py
    python predict.py --predict_dir=/data/cruise42/flowcam --ecotaxa=True  # also a table to import into EcoTaxa

Reads checkpoints/best.pth (train.py), embeddings/embeddings_{train,val}.pkl (embed.py: the reference of the
novelty score), results/novelty_thresholds.json (novelty.py) and every image under predict_dir, recursively, by
the scan's rules (the formats image_io.IMAGE_EXTENSIONS lists, any case, mode and bit depth; hidden entries are
not entered; a file that does not decode is skipped). The training images themselves are not needed. Writes
  results/predictions.csv            one row per image: path (relative to predict_dir), predicted, probability,
                                     top1_class, top1_probability ... top3_*, p_<class> for every seen class
                                     (they sum to 1), novelty_<score> (the novelty_score setting; higher = more
                                     likely new) and possibly_new (above that score's validation threshold)
  results/prediction_counts.csv      per seen class: images predicted, how many of them possibly new, share
  results/abundances.csv             per seen class: its share and count corrected for the sample's class
                                     proportions (abundance_method, calibrated on the validation embeddings) with
                                     a 95 % interval, beside the plain count; a last row counts the possibly new
                                     images (lab/abundances.py, docs/abundances.md: the file to cite)
  results/predict_skipped.csv        files left out (unreadable images, non-image files) and why
  embeddings/embeddings_predict.pkl  as embed.py's files, split "predict"; label is the PREDICTED class
  results/ecotaxa_predictions.tsv    with --ecotaxa=True: EcoTaxa's import layout (see ecotaxa_frame)
  cache/predict_<key>.npz            logits, embeddings and decoded flags of each chunk of CHUNK images
Scales: the images go through the trunk CHUNK at a time, and each chunk's outputs are cached under a key of its
files (paths, sizes, modification times), the image size, the trunk weights, the precision and the checkpoint.
No image and no trunk output is held beyond its chunk; what grows with the folder is its list of file names and
the embeddings assembled at the end (about 2.4 KB per image, measured: README "Performance"). A run stopped by
Ctrl-C or a crash continues from its first unfinished chunk when started again.
"""
import hashlib
import re
import sys

import numpy as np
import pandas as pd
from scipy.special import softmax
from tqdm import tqdm

import lab
from lab import (
    abundances,
    artifacts,
    checkpoint,
    config,
    data_folders,
    embedding_files,
    image_io,
    output_lock,
    provenance,
    runtime,
    trunk_cache,
)
from lab import novelty_scores as ns

CHUNK = 1000  # images per cached chunk: an interruption loses at most this much work
TOP = 3


# --------------------------------------------------------------------------- inputs
def sample_images(cfg):
    """(folder, image paths relative to it, (path, reason) of the entries ignored, as the scan ignores them)."""
    if cfg.predict_dir is None:
        raise lab.LabError("predict.py needs the folder of new images to classify: run it as `python predict.py "
                           "--predict_dir=/path/to/sample` (every image under it, in sub-folders too, is "
                           "classified), or set predict_dir in configfile.py.")
    folder = artifacts.resolve(cfg.predict_dir)
    if not folder.is_dir():
        raise lab.LabError(f"predict_dir={cfg.predict_dir!r} is not a folder ({folder} does not exist or is a "
                           f"file). Give the folder that holds the sample's image files.")
    images, ignored = data_folders.list_class_files(folder)  # the scan's rules: sub-folders, loops, hidden files
    if not images:
        raise lab.LabError(f"No image files under {folder} (searched recursively for the formats the scan reads: "
                           f"jpg, png, tif, bmp, gif, webp...; {len(ignored)} other entries). Point --predict_dir "
                           f"at the folder of image crops.")
    return folder, images, ignored


# --------------------------------------------------------------------------- the chunked, cached pass
def chunk_path(cfg, abs_paths, weights_id, dtype, checkpoint_digest):
    """The trunk-cache key of these files, extended by the checkpoint (the head's outputs depend on it)."""
    trunk_key = trunk_cache.cache_key(cfg, abs_paths, weights_id, dtype)
    key = hashlib.sha256(f"{trunk_key}:{checkpoint_digest}".encode()).hexdigest()[:16]
    return artifacts.out_path(cfg, "cache", f"predict_{key}.npz")


def compute_chunk(cfg, model, device, dtype, abs_paths):
    """Logits, embeddings and decoded flags of a chunk (shared by every rank under torchrun)."""
    return trunk_cache.image_outputs(model, abs_paths, cfg.image_size, cfg.batch_size, cfg.num_workers, device, dtype,
                                     desc="chunk")


def run_chunks(cfg, model, device, dtype, checkpoint_digest, weights_id, abs_paths):
    """Cached outputs of every chunk, computing only the missing ones; returns the chunk files in order.
    dtype is the trunk precision the checkpoint was trained on, so its scores match evaluate.py's."""
    files, reused = [], 0
    with tqdm(total=len(abs_paths), desc="predict", unit="image", disable=None) as bar:
        for start in range(0, len(abs_paths), CHUNK):
            paths = abs_paths[start:start + CHUNK]
            path = chunk_path(cfg, paths, weights_id, dtype, checkpoint_digest)
            if path.exists():
                reused += 1
            else:
                outputs = compute_chunk(cfg, model, device, dtype, paths)
                artifacts.atomic_write(path, lambda p, o=outputs: np.savez(p, **o))
            files.append(path)
            bar.update(len(paths))
    if reused:
        print(f"[predict] {reused} of {len(files)} chunk(s) were already done by an earlier run and were reused")
    return files


def remove_stale_chunks(cfg, keep):
    """Chunk caches of other folders or checkpoints: only files named exactly as this script names them."""
    keep = {p.name for p in keep}
    for stale in artifacts.out_path(cfg, "cache").glob("predict_*.npz"):
        if re.fullmatch(r"predict_[0-9a-f]{16}\.npz", stale.name) and stale.name not in keep:
            stale.unlink()


# --------------------------------------------------------------------------- tables
def prediction_columns(classes, score_name):
    tops = [f"top{k + 1}_{what}" for k in range(min(TOP, len(classes))) for what in ("class", "probability")]
    return (["path", "predicted", "probability"] + tops + [f"p_{c}" for c in classes]
            + [f"novelty_{score_name}", "possibly_new"])


def prediction_rows(rel_paths, logits, novelty, threshold, classes, score_name):
    """One row per image: the predicted class (the logits' argmax, as evaluate.py), its probability, the top
    classes, the full probability vector and the novelty score with its flag."""
    probabilities = softmax(np.asarray(logits, np.float64), axis=1)
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :TOP]
    rows = np.arange(len(probabilities))
    names = np.asarray(classes, dtype=object)
    frame = {"path": rel_paths, "predicted": names[order[:, 0]], "probability": probabilities[rows, order[:, 0]]}
    for k in range(order.shape[1]):
        frame[f"top{k + 1}_class"] = names[order[:, k]]
        frame[f"top{k + 1}_probability"] = probabilities[rows, order[:, k]]
    for i, c in enumerate(classes):
        frame[f"p_{c}"] = probabilities[:, i]
    frame[f"novelty_{score_name}"] = novelty
    frame["possibly_new"] = novelty > threshold
    return pd.DataFrame(frame, columns=prediction_columns(classes, score_name))


def skipped_reason(abs_path):
    return image_io.check_image(abs_path) or "failed to decode during the trunk pass"


def write_predictions(cfg, ckpt, folder, images, chunk_files, scorer, score_name, threshold):
    """Stream predictions.csv chunk by chunk; returns (embedding frames, per-class counts, unreadable files)."""
    classes = ckpt["classes"]
    embedding_parts, unreadable = [], []
    counts = pd.DataFrame(0, index=classes, columns=["images", "possibly_new"])

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            pd.DataFrame(columns=prediction_columns(classes, score_name)).to_csv(f, index=False)
            for start, chunk_file in zip(range(0, len(images), CHUNK), chunk_files):
                with np.load(chunk_file) as data:
                    ok, logits, embeddings = data["ok"], data["logits"][data["ok"]], data["embeddings"][data["ok"]]
                rel = np.asarray(images[start:start + CHUNK], dtype=object)
                unreadable.extend({"path": p, "reason": skipped_reason(str(folder / p))} for p in rel[~ok])
                novelty = scorer.scores(embeddings, (score_name,))[score_name]
                rows = prediction_rows(list(rel[ok]), logits, novelty, threshold, classes, score_name)
                rows.to_csv(f, header=False, index=False)
                counts["images"] += rows["predicted"].value_counts().reindex(classes, fill_value=0)
                counts["possibly_new"] += rows[rows["possibly_new"]]["predicted"].value_counts().reindex(
                    classes, fill_value=0)
                embedding_parts.append(embedding_files.embedding_frame(cfg, pd.DataFrame(
                    {"label": rows["predicted"], "split": "predict", "path": [str(folder / p) for p in rows["path"]]}),
                    embeddings, classes))
    artifacts.atomic_write(artifacts.out_path(cfg, "results", "predictions.csv"), write)
    return embedding_parts, counts, unreadable


def count_table(counts):
    total = max(int(counts["images"].sum()), 1)
    return pd.DataFrame({"class": counts.index, "images": counts["images"].values,
                         "possibly_new": counts["possibly_new"].values, "share": counts["images"].values / total})


# --------------------------------------------------------------------------- EcoTaxa
def ecotaxa_names(classes):
    """EcoTaxa column names are Table_field in lower case: object_p_<class> with the class made safe."""
    names, seen = {}, set()
    for i, c in enumerate(classes):
        name = "object_p_" + re.sub(r"[^a-z0-9_]+", "_", c.lower()).strip("_")
        name = name if name not in seen else f"{name}_{i}"
        seen.add(name)
        names[c] = name
    return names


def ecotaxa_frame(predictions, classes, score_name, used_ids):
    """EcoTaxa's import columns for a block of predictions.csv: img_file_name (relative to predict_dir: put the
    TSV at the folder's top), a unique object_id, the predicted category, status 'predicted', then the scores."""
    ids = []
    for path in predictions["path"]:
        base = re.sub(r"\.[^./]*$", "", path).replace("/", "__")
        object_id, n = base, 1
        while object_id in used_ids:  # a.jpg and a.png in one folder
            n += 1
            object_id = f"{base}_{n}"
        used_ids.add(object_id)
        ids.append(object_id)
    frame = pd.DataFrame({"img_file_name": predictions["path"].values, "object_id": ids,
                          "object_annotation_category": predictions["predicted"].values,
                          "object_annotation_status": "predicted",
                          "object_probability": predictions["probability"].values})
    for c, name in ecotaxa_names(classes).items():
        frame[name] = predictions[f"p_{c}"].values
    frame[f"object_novelty_{score_name}"] = predictions[f"novelty_{score_name}"].values
    frame["object_possibly_new"] = predictions["possibly_new"].astype(int).values
    return frame


def write_ecotaxa(cfg, classes, score_name):
    """results/ecotaxa_predictions.tsv: header row, then EcoTaxa's type row ([t] text, [f] number), then data."""
    source = artifacts.out_path(cfg, "results", "predictions.csv")
    used_ids = set()

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            first = True
            text = {c: str for c in ("path", "predicted", "top1_class", "top2_class", "top3_class")}
            for block in pd.read_csv(source, chunksize=CHUNK, dtype=text, keep_default_na=False):
                frame = ecotaxa_frame(block, classes, score_name, used_ids)
                if first:
                    f.write("\t".join(frame.columns) + "\n")
                    f.write("\t".join("[t]" if i < 4 else "[f]" for i in range(len(frame.columns))) + "\n")
                    first = False
                frame.to_csv(f, sep="\t", header=False, index=False)
    return artifacts.atomic_write(artifacts.out_path(cfg, "results", "ecotaxa_predictions.tsv"), write)


# --------------------------------------------------------------------------- main
def main(argv=None):
    cfg = config.load_config(argv, __doc__)
    config.print_settings(cfg)
    folder, images, others = sample_images(cfg)
    output_lock.ensure_output_dirs(cfg, ("results", "embeddings", "cache"))
    trained = checkpoint.load_trained(cfg, split=False, made_for="predictions")  # no split, no training images
    cfg, ckpt, digest, model, device = trained.cfg, trained.ckpt, trained.digest, trained.model, trained.device
    scorer = ns.scorer_from_artifacts(cfg, ckpt, digest)
    score_name = cfg.novelty_score
    threshold = ns.load_thresholds(cfg, digest, scorer)["thresholds"][score_name]
    print(f"[predict] {len(images)} images under {folder} ({len(others)} other files ignored); possibly_new: "
          f"{score_name} above {threshold:.4g}, its validation threshold")
    dtype = trained.trunk_dtype
    chunk_files = run_chunks(cfg, model, device, dtype, digest, ckpt["weights"], [str(folder / p) for p in images])
    parts, counts, unreadable = write_predictions(cfg, ckpt, folder, images, chunk_files, scorer, score_name,
                                                  threshold)
    abundance_table = abundances.sample_abundances(cfg, ckpt["classes"], scorer, threshold,
                                                   artifacts.out_path(cfg, "results", "predictions.csv"))
    ignored = [{"path": p, "reason": reason} for p, reason in others]
    artifacts.save_csv(artifacts.out_path(cfg, "results", "predict_skipped.csv"),
                       pd.DataFrame(unreadable + ignored, columns=["path", "reason"]))
    table = count_table(counts)
    artifacts.save_csv(artifacts.out_path(cfg, "results", "prediction_counts.csv"), table)
    artifacts.save_csv(artifacts.out_path(cfg, "results", "abundances.csv"), abundance_table)
    frame = pd.concat(parts, ignore_index=True)
    meta = {"checkpoint_sha256": digest, "checkpoint_epoch": ckpt["epoch"], "checkpoint_saved_at": ckpt.get("saved_at"),
            "predict_dir": str(folder), "trunk_weights": ckpt["weights"], "versions": provenance.package_versions()}
    embedding_files.save_embedding_set(cfg, {"predict": frame}, meta, embedding_files.PREDICT_META)
    if cfg.ecotaxa:
        print(f"[predict] EcoTaxa table: {write_ecotaxa(cfg, ckpt['classes'], score_name)}")
    remove_stale_chunks(cfg, chunk_files)
    print_summary(table, unreadable, others, artifacts.out_path(cfg, "results", "predictions.csv"))
    return table


def print_summary(table, unreadable, others, path):
    total, flagged = int(table["images"].sum()), int(table["possibly_new"].sum())
    if unreadable:
        print(f"warning: {len(unreadable)} image file(s) could not be decoded and were skipped (listed in "
              f"results/predict_skipped.csv): {', '.join(u['path'] for u in unreadable[:5])}", file=sys.stderr)
    print(f"\n[predict] {total} images classified, {flagged} ({100 * flagged / max(total, 1):.1f} %) possibly of a "
          f"taxon never seen; {len(unreadable)} unreadable and {len(others)} other entries skipped")
    for _, r in table.iterrows():
        print(f"  {r['class']:<32} {r['images']:>7}  ({r['possibly_new']} possibly new)")
    print(f"[predict] per-image results: {path}")


if __name__ == "__main__":
    runtime.run_main(lambda: main(sys.argv[1:]))
