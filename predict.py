"""Classify a new sample: every image under a folder, with its class probabilities and a possibly-new flag.

    python predict.py --predict_dir=/data/cruise42/flowcam                 # after run_pipeline.py
    python predict.py --predict_dir=/data/cruise42/flowcam --ecotaxa=True  # also a table to import into EcoTaxa

Reads checkpoints/best.pth (train.py), embeddings/embeddings_{train,val}.pkl (embed.py: the reference of the
novelty score), results/novelty_thresholds.json (novelty.py), results/operating_points.csv (evaluate.py) and
every image under predict_dir, recursively, by the scan's rules (the formats image_io.IMAGE_EXTENSIONS lists, any
case, mode and bit depth; hidden entries are not entered; a file that does not decode is skipped). The training
images themselves are not needed. Writes
  results/predictions.csv            one row per image: path (relative to predict_dir), predicted, probability,
                                     top1_class, top1_probability ... top3_*, p_<class> for every seen class
                                     (they sum to 1), novelty_<score> (the novelty_score setting; higher = more
                                     likely new) and possibly_new (above that score's validation threshold);
                                     accepted (probability at or above accept_threshold, its class's threshold
                                     in results/operating_points.csv, and not possibly new; empty when that file
                                     is missing or made for another checkpoint: the message names the command)
  results/prediction_counts.csv      per seen class: images predicted, how many of them possibly new, share;
                                     accepted and to_review (the others), and each as a share of the sample
  results/abundances.csv             per seen class: its share and count corrected for the sample's class
                                     proportions (abundance_method, calibrated on the validation embeddings) with
                                     a 95 % interval, beside the plain count; a last row counts the possibly new
                                     images (lab/abundances.py, docs/abundances.md: the file to cite)
  results/predict_skipped.csv        files left out (unreadable images, non-image files, in a cruise those outside
                                     every sample) and why
  results/sample_abundances.csv      with samples= (a cruise, docs/cruise.md): abundances.csv's table per sample,
                                     with concentrations per litre (lab/cruise_abundances.py); predictions.csv then
                                     has a sample column, the EcoTaxa table a sample_id, and abundances.csv and
                                     prediction_counts.csv hold the cruise as one pool
  results/sample_summary.csv         with samples=: one row per sample (images, read, skipped, volume, why none)
  embeddings/embeddings_predict.pkl  as embed.py's files, split "predict"; label is the PREDICTED class
  results/ecotaxa_predictions.tsv    with --ecotaxa=True: EcoTaxa's import layout (lab/ecotaxa.py); a file
                                     whose name is not valid UTF-8 is left out of it (EcoTaxa could not match it
                                     to the file in the zip) and listed in results/ecotaxa_left_out.csv
  results/predict_manifest.json      written last (manifest.py): every file above with its digest, and what they
                                     were computed from (checkpoint, embeddings, thresholds, the sample's files)
  cache/predict_<key>.npz            logits, embeddings and decoded flags of each chunk of CHUNK images
The files above are one set, all or nothing: written under temporary names, then published together; after any
failure the previous complete set stays (or, when none was complete, nothing), and the message says which. A file
the new set lacks (an EcoTaxa table of another sample) is removed. File names that are not valid UTF-8 are kept as
their own bytes in the CSV files (artifacts.py). After predict.py, `python dimensionality_reduction.py` puts the
images on the 2-D map and `python report.py` shows them.
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

import lab
from lab import (
    abundance_inputs,
    artifacts,
    checkpoint,
    config,
    cruise_abundances,
    data_folders,
    ecotaxa,
    embedding_files,
    image_io,
    manifest,
    prediction_table,
    progress,
    runtime,
    samples,
    trunk_cache,
)
from lab import novelty_scores as ns
from lab import operating_points as op

CHUNK = 1000  # images per cached chunk: an interruption loses at most this much work
# Every file of predict.py's output set (manifest.py), published together, the manifest last; a file that a run does
# not write (the EcoTaxa table without --ecotaxa=True) is removed, so no file of another sample stays beside them.
PREDICT_OUTPUTS = (
    ("results", "predictions.csv"),
    ("results", "prediction_counts.csv"),
    ("results", "abundances.csv"),
    ("results", "predict_skipped.csv"),
    ("results", "sample_abundances.csv"),
    ("results", "sample_summary.csv"),
    ("results", "ecotaxa_predictions.tsv"),
    ("results", "ecotaxa_left_out.csv"),
    ("embeddings", "embeddings_predict.pkl"),
    ("embeddings", embedding_files.PREDICT_META),
)
NOT_UTF8 = (
    "its name is not valid UTF-8, so EcoTaxa could not match it to the file in the zip: left out of "
    "ecotaxa_predictions.tsv (it is in predictions.csv). Rename it, e.g. `convmv -f latin1 -t utf8 --notest "
    "-r <folder>`, and run predict.py again"
)


# --------------------------------------------------------------------------- inputs
def sample_images(cfg):
    """(folder, image paths relative to it, (path, reason) of the entries ignored, as the scan ignores them)."""
    if cfg.predict_dir is None:
        raise lab.LabError(
            "predict.py needs the folder of new images to classify: run it as `python predict.py "
            "--predict_dir=/path/to/sample` (every image under it, in sub-folders too, is "
            "classified), or set predict_dir in configfile.py."
        )
    folder = artifacts.resolve(cfg.predict_dir)
    if not folder.is_dir():
        raise lab.LabError(
            f"predict_dir={cfg.predict_dir!r} is not a folder ({folder} does not exist or is a "
            f"file). Give the folder that holds the sample's image files."
        )
    images, ignored = data_folders.list_class_files(folder)  # the scan's rules: sub-folders, loops, hidden files
    if not images:
        raise lab.LabError(
            f"No image files under {folder} (searched recursively for the formats the scan reads: "
            f"jpg, png, tif, bmp, gif, webp...; {len(ignored)} other entries). Point --predict_dir "
            f"at the folder of image crops."
        )
    return folder, images, ignored


# --------------------------------------------------------------------------- the chunked, cached pass
def chunk_path(cfg, abs_paths, weights_id, dtype, checkpoint_digest):
    """The trunk-cache key of these files, extended by the checkpoint (the head's outputs depend on it)."""
    trunk_key = trunk_cache.cache_key(cfg, abs_paths, weights_id, dtype)
    key = hashlib.sha256(f"{trunk_key}:{checkpoint_digest}".encode()).hexdigest()[:16]
    return artifacts.out_path(cfg, "cache", f"predict_{key}.npz")


def compute_chunk(cfg, model, device, dtype, abs_paths):
    """Logits, embeddings and decoded flags of a chunk (shared by every rank under torchrun)."""
    return trunk_cache.image_outputs(
        model,
        abs_paths,
        cfg.image_size,
        cfg.batch_size,
        cfg.num_workers,
        device,
        dtype,
        desc="chunk",
        views=cfg.trunk_views,  # the checkpoint's: the views its head was trained on, averaged as evaluate.py does
        cpu_threads=cfg.cpu_threads,
    )


def run_chunks(cfg, model, device, dtype, checkpoint_digest, weights_id, abs_paths, done=None):
    """Cached outputs of every chunk, computing only the missing ones; returns the chunk files in order.
    dtype is the trunk precision the checkpoint was trained on, so its scores match evaluate.py's. done(n): called
    when the first n images are through (a cruise says which samples are)."""
    files, reused = [], 0
    starts = range(0, len(abs_paths), CHUNK)
    for start in progress.progress(starts, len(starts), "predict", unit=f"chunks of {CHUNK} images"):
        paths = abs_paths[start : start + CHUNK]
        path = chunk_path(cfg, paths, weights_id, dtype, checkpoint_digest)
        if path.exists():
            reused += 1
        else:
            outputs = compute_chunk(cfg, model, device, dtype, paths)
            artifacts.atomic_write(path, lambda p, o=outputs: np.savez(p, **o))
        files.append(path)
        if done:
            done(start + len(paths))
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
def skipped_reason(abs_path):
    return image_io.check_image(abs_path) or "failed to decode during the trunk pass"


def write_predictions(
    out, cfg, ckpt, folder, images, chunk_files, scorer, score_name, threshold, accept_thresholds, sample_of=None
):
    """Stream predictions.csv (a file of the output set `out`) chunk by chunk; returns (embedding frames, per-class
    counts, unreadable files). sample_of: each image's sample in a cruise (the column `sample`), else None."""
    classes = ckpt["classes"]
    embedding_parts, unreadable = [], []
    counts = pd.DataFrame(0, index=classes, columns=["images", "possibly_new", "accepted"])

    def write(tmp):
        with open(tmp, "w", newline="", errors="surrogateescape") as f:  # a name that is not UTF-8: its own bytes
            header = prediction_table.prediction_columns(classes, score_name, sample_of is not None)
            pd.DataFrame(columns=header).to_csv(f, index=False)
            for start, chunk_file in zip(range(0, len(images), CHUNK), chunk_files):
                with np.load(chunk_file) as data:
                    ok, logits, embeddings = data["ok"], data["logits"][data["ok"]], data["embeddings"][data["ok"]]
                rel = np.asarray(images[start : start + CHUNK], dtype=object)
                unreadable.extend({"path": p, "reason": skipped_reason(str(folder / p))} for p in rel[~ok])
                novelty = scorer.scores(embeddings, (score_name,))[score_name]
                sample = None if sample_of is None else np.asarray(sample_of[start : start + CHUNK], dtype=object)[ok]
                rows = prediction_table.prediction_rows(
                    list(rel[ok]), logits, novelty, threshold, classes, score_name, accept_thresholds, sample
                )
                rows.to_csv(f, header=False, index=False)
                counts["images"] += rows["predicted"].value_counts().reindex(classes, fill_value=0)
                counts["possibly_new"] += (
                    rows[rows["possibly_new"]]["predicted"].value_counts().reindex(classes, fill_value=0)
                )
                if accept_thresholds is not None:
                    accepted = rows["accepted"].astype(bool)
                    counts["accepted"] += rows[accepted]["predicted"].value_counts().reindex(classes, fill_value=0)
                embedding_parts.append(
                    embedding_files.embedding_frame(
                        cfg,
                        pd.DataFrame(
                            {
                                "label": rows["predicted"],
                                "split": "predict",
                                "path": [str(folder / p) for p in rows["path"]],
                            }
                        ),
                        embeddings,
                        classes,
                    )
                )

    out.write("results", "predictions.csv", write)
    return embedding_parts, counts, unreadable


def count_table(counts, accepting=True):
    """Per class: images, possibly new, share; accepted and to_review with their shares of the whole sample (empty
    when nothing could be accepted: no operating points for this checkpoint)."""
    total = max(int(counts["images"].sum()), 1)
    accepted = counts["accepted"].values if accepting else np.full(len(counts), np.nan)
    to_review = counts["images"].values - accepted
    return pd.DataFrame(
        {
            "class": counts.index,
            "images": counts["images"].values,
            "possibly_new": counts["possibly_new"].values,
            "share": counts["images"].values / total,
            "accepted": accepted,  # integers, or NaN (an empty cell) when unknown: as read back from the CSV
            "to_review": to_review,
            "accepted_share": accepted / total,
            "to_review_share": to_review / total,
        }
    )


# --------------------------------------------------------------------------- EcoTaxa
def ecotaxa_frame(predictions, classes, score_name, used_ids):
    """EcoTaxa's import columns for a block of predictions.csv: img_file_name (relative to predict_dir: put the
    TSV at the folder's top), a unique object_id, the predicted category, status 'predicted', then the scores."""
    frame = pd.DataFrame(
        {
            "img_file_name": predictions["path"].values,
            "object_id": ecotaxa.object_ids(predictions["path"], used_ids),
            "object_annotation_category": predictions["predicted"].values,
            "object_annotation_status": "predicted",
            "object_probability": predictions["probability"].values,
        }
    )
    for c, name in ecotaxa.probability_columns(classes).items():
        frame[name] = predictions[f"p_{c}"].values
    frame[f"object_novelty_{score_name}"] = predictions[f"novelty_{score_name}"].values
    frame["object_possibly_new"] = predictions["possibly_new"].astype(int).values
    if "sample" in predictions:  # a cruise: EcoTaxa files each object under its sample
        frame["sample_id"] = predictions["sample"].values
    # 1 accepted (operating_points.csv), 0 to review, empty when no operating points applied: for sorting in EcoTaxa,
    # where every prediction stays `predicted` until a taxonomist validates it
    accepted = predictions["accepted"].map({True: 1, False: 0, "True": 1, "False": 0})
    frame["object_accepted"] = pd.array(accepted.values, dtype="Int64")
    return frame


def is_utf8(name):
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # a name that was not UTF-8 on disk (surrogate escapes)
        return False
    return True


def write_ecotaxa(out, classes, score_name):
    """results/ecotaxa_predictions.tsv (a file of the output set `out`, made from its predictions.csv): header row,
    then EcoTaxa's type row ([t] text, [f] number), then data. Names that are not valid UTF-8 are left out and
    listed in results/ecotaxa_left_out.csv; returns them."""
    source = out.staged_path("results", "predictions.csv")
    used_ids, left_out = set(), []
    text = {c: str for c in prediction_table.TEXT_COLUMNS}

    def write(tmp):
        with open(tmp, "w", newline="") as f:  # UTF-8 only: EcoTaxa reads nothing else
            blocks = pd.read_csv(
                source, chunksize=CHUNK, dtype=text, keep_default_na=False, encoding_errors="surrogateescape"
            )
            for number, block in enumerate(blocks):
                readable = block["path"].map(is_utf8).to_numpy(bool)
                if "sample" in block:  # a sample named after a folder whose name is not UTF-8 either
                    readable = readable & block["sample"].map(is_utf8).to_numpy(bool)
                left_out.extend(block["path"][~readable])
                frame = ecotaxa_frame(block[readable], classes, score_name, used_ids)
                if number == 0:
                    f.write("\t".join(frame.columns) + "\n" + "\t".join(ecotaxa.type_row(frame)) + "\n")
                frame.to_csv(f, sep="\t", header=False, index=False)

    out.write("results", "ecotaxa_predictions.tsv", write)
    if left_out:
        out.save_csv("results", "ecotaxa_left_out.csv", pd.DataFrame({"path": left_out, "reason": NOT_UTF8}))
    return left_out


def ecotaxa_note(cfg, classes, left_out, folder):
    """Where the EcoTaxa table is, why its columns are lower case (with this model's own example), and the names
    left out of it."""
    example = next((c for c in classes if c != c.lower()), classes[0])
    print(
        f"[predict] EcoTaxa table: {artifacts.out_path(cfg, 'results', 'ecotaxa_predictions.tsv')}. Its column "
        f"names are lower case because EcoTaxa's import takes no other "
        f"({ecotaxa.probability_columns(classes)[example]} is the class {example!r}); object_annotation_category "
        f"keeps the class names as predictions.csv does"
    )
    if left_out:
        print(
            f"warning: {plural(len(left_out), 'file')} whose name is not valid UTF-8 (e.g. "
            f"'{artifacts.printable(left_out[0])}') are left out of the EcoTaxa table, which could not match them "
            f"to the files in its zip; they are listed in results/ecotaxa_left_out.csv (and classified in "
            f"predictions.csv). Rename them to UTF-8, e.g. `convmv -f latin1 -t utf8 --notest -r "
            f"{artifacts.printable(folder)}` (latin1: names from an old Windows or Mac archive), and run "
            f"predict.py again.",
            file=sys.stderr,
        )


def plural(n, word, many=None):
    return f"{n} {word if n == 1 else many or word + 's'}"


def sample_digest(chunk_files):
    """What identifies the sample: its chunks' keys (every file's path, size, time and content fingerprint)."""
    return hashlib.sha256("".join(p.name for p in chunk_files).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- main
def main(argv=None):
    cfg = config.load_config(argv, __doc__)
    config.print_settings(cfg)
    folder, images, others = sample_images(cfg)
    cruise = samples.assign(cfg, folder, images)  # None: the folder is one sample
    metadata = samples.read_metadata(cfg)  # checked before any wait, as the samples are
    images = cruise.images if cruise else images
    artifacts.ensure_output_dirs(cfg, ("results", "embeddings", "cache"))
    trained = checkpoint.load_trained(cfg, split=False, made_for="predictions")  # no split, no training images
    cfg, ckpt, digest, model, device = trained.cfg, trained.ckpt, trained.digest, trained.model, trained.device
    scorer = ns.scorer_from_artifacts(cfg, ckpt, digest)
    score_name = cfg.novelty_score
    threshold = ns.load_thresholds(cfg, digest, scorer)["thresholds"][score_name]
    accept_thresholds, not_accepting = op.load(cfg, ckpt["classes"], digest)
    if not_accepting:
        print(f"note: `accepted` is left empty: {not_accepting}.", file=sys.stderr)
    print(
        f"[predict] {plural(len(images), 'image file')} under {artifacts.printable(folder)} "
        f"({plural(len(others), 'other entry', 'other entries')} ignored); possibly_new: {score_name} above "
        f"{threshold:.4g}, its validation threshold"
    )
    # before the trunk pass, so that a refusal costs no wait; its id is recorded with the abundances it calibrates
    audit = abundance_inputs.out_of_fold_audit(cfg, digest) if cfg.abundance_calibration == "out_of_fold" else None
    dtype = trained.trunk_dtype
    if cruise:
        empty = len(cruise.empty)
        with_images = len(cruise.samples) - empty
        # the per-sample progress below counts only samples with image files: say so here, so that "sample 1/2" of
        # a cruise of 3 does not read as a miscount
        print(
            f"[predict] a cruise of {plural(len(cruise.samples), 'sample')} ({cruise.source})"
            + (f"; {with_images} with image files, {empty} without (named at the end)" if empty else "")
        )
    done = samples.SampleProgress(cruise.sample_of).reached if cruise else None
    abs_paths = [str(folder / p) for p in images]
    chunk_files = run_chunks(cfg, model, device, dtype, digest, ckpt["weights"], abs_paths, done)
    inputs = {
        "checkpoint": digest,
        "embeddings": embedding_files.embedding_set(cfg)["set"],
        "thresholds": manifest.artifact_digest(cfg, "results", "novelty_thresholds.json"),
        "operating_points": (
            manifest.artifact_digest(cfg, "results", op.FILE) if accept_thresholds is not None else None
        ),
        "sample": sample_digest(chunk_files),
        "predict_dir": str(folder),
        "abundance_calibration": cfg.abundance_calibration,
        **({"audit": audit["id"]} if audit is not None else {}),
        **(samples.provenance(cfg) if cruise else {}),
    }
    left_out = []
    with manifest.OutputSet(cfg, "predict", PREDICT_OUTPUTS, f"the predictions of {folder}") as out:
        parts, counts, unreadable = write_predictions(
            out,
            cfg,
            ckpt,
            folder,
            images,
            chunk_files,
            scorer,
            score_name,
            threshold,
            accept_thresholds,
            cruise and cruise.sample_of,
        )
        predictions_path = out.staged_path("results", "predictions.csv")
        fits = abundance_inputs.abundance_fits(cfg, ckpt["classes"], scorer, threshold, digest)  # once per run
        abundance = abundance_inputs.sample_abundances(cfg, ckpt["classes"], predictions_path, fits)
        out.save_csv("results", "abundances.csv", abundance)  # a cruise's: all its samples as one pool
        if cruise:
            table = samples.sample_table(cruise, metadata)
            by_sample, summary = cruise_abundances.cruise_tables(
                cruise, table, ckpt["classes"], fits, predictions_path, cfg.seed
            )
            out.save_csv("results", "sample_abundances.csv", by_sample)
            out.save_csv("results", "sample_summary.csv", summary)
        ignored = [{"path": p, "reason": reason} for p, reason in others] + (cruise.skipped if cruise else [])
        out.save_csv("results", "predict_skipped.csv", pd.DataFrame(unreadable + ignored, columns=["path", "reason"]))
        counts_table = count_table(counts, accept_thresholds is not None)
        out.save_csv("results", "prediction_counts.csv", counts_table)
        meta = {
            "checkpoint_sha256": digest,
            "checkpoint_epoch": ckpt["epoch"],
            "predict_dir": str(folder),
            "checkpoint_saved_at": ckpt.get("saved_at"),
            "trunk_weights": ckpt["weights"],
            "versions": manifest.package_versions(),
        }
        embedding_files.save_embedding_set(
            cfg, {"predict": pd.concat(parts, ignore_index=True)}, meta, embedding_files.PREDICT_META, out=out
        )
        if cfg.ecotaxa:
            left_out = write_ecotaxa(out, ckpt["classes"], score_name)
        out.publish(**inputs)
    if cfg.ecotaxa:
        ecotaxa_note(cfg, ckpt["classes"], left_out, folder)
    remove_stale_chunks(cfg, chunk_files)
    if cruise:
        samples.print_cruise(summary, len(cruise.skipped))
    print_summary(counts_table, unreadable, others, artifacts.out_path(cfg, "results", "predictions.csv"))
    return counts_table


def print_summary(table, unreadable, others, path):
    total, flagged = int(table["images"].sum()), int(table["possibly_new"].sum())
    if unreadable:
        print(
            f"warning: {plural(len(unreadable), 'image file')} could not be decoded and were skipped (listed in "
            f"results/predict_skipped.csv): {artifacts.printable(', '.join(u['path'] for u in unreadable[:5]))}",
            file=sys.stderr,
        )
    print(
        f"\n[predict] {plural(total, 'image')} classified, {flagged} ({100 * flagged / max(total, 1):.1f} %) "
        f"possibly of a taxon never seen; {plural(len(unreadable), 'image file')} that could not be decoded and "
        f"{plural(len(others), 'other entry', 'other entries')} skipped"
    )
    for _, r in table.iterrows():
        print(f"  {r['class']:<32} {r['images']:>7}  ({r['possibly_new']} possibly new)")
    if table["accepted"].notna().all():
        accepted = int(table["accepted"].sum())
        print(
            f"[predict] accepted without review (operating_points.csv): {accepted} "
            f"({100 * accepted / max(total, 1):.1f} %); to review: {total - accepted}"
        )
    print(f"[predict] per-image results: {path}")
    print(
        "[predict] next: `python dimensionality_reduction.py` puts these images on the 2-D map (the split "
        '"predict"), then `python report.py` shows them there and in its predictions section (report.py alone '
        "does not map them: the map is made by dimensionality_reduction.py)"
    )


if __name__ == "__main__":
    runtime.run_main(lambda: main(sys.argv[1:]))
