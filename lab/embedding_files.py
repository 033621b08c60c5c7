"""Embedding files: embeddings/embeddings_<split>.pkl (pandas DataFrames: label, label_idx, split, path,
emb_0 ...) and the meta file written last, with each file's digest and the checkpoint they came from, so a
set never mixes two models. embed.py writes the train/val/test/unseen set, predict.py its own.
"""
import hashlib
import json
import sys

import numpy as np
import pandas as pd

import lab
from lab import artifacts, provenance, splitting


# --------------------------------------------------------------------------- embedding DataFrames
def embedding_frame(cfg, rows, vectors, class_names):
    """label, label_idx (index in class_names), split, absolute path, emb_0 ... emb_<d-1> (float32)."""
    index = {c: i for i, c in enumerate(class_names)}
    frame = pd.DataFrame({"label": rows["label"].values, "label_idx": [index[c] for c in rows["label"]],
                          "split": rows["split"].values, "path": splitting.absolute_paths(cfg, rows["path"])})
    emb = pd.DataFrame(vectors.astype(np.float32), columns=[f"emb_{i}" for i in range(vectors.shape[1])])
    return pd.concat([frame, emb], axis=1)


def embedding_columns(frame):
    return [c for c in frame.columns if c.startswith("emb_")]


EMBEDDINGS_META = "embeddings_meta.json"            # embed.py's set: train, val, test, unseen


PREDICT_META = "embeddings_predict_meta.json"        # predict.py's set: the new images it classified


def meta_name_of(split_name):
    return PREDICT_META if split_name == "predict" else EMBEDDINGS_META


def save_embedding_set(cfg, frames, meta, meta_name=EMBEDDINGS_META):
    """Write embeddings_<split>.pkl for every split of frames, then embeddings_meta.json with each file's digest
    and the digest of the checkpoint they came from. The meta is written last: a run killed in between leaves
    files that do not match it, which load_embeddings refuses, so a set never mixes two models."""
    digests = {}
    for name, frame in frames.items():
        path = artifacts.atomic_write(artifacts.out_path(cfg, "embeddings", f"embeddings_{name}.pkl"), frame.to_pickle)
        digests[name] = artifacts.file_digest(path)[:16]
        print(f"[embed] {name}: {len(frame)} images x {len(embedding_columns(frame))} dims -> {path}")
    set_id = hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()[:16]
    artifacts.save_json(artifacts.out_path(cfg, "embeddings", meta_name), {**meta, "files": digests, "set": set_id})
    return set_id


def embedding_set(cfg, meta_name=EMBEDDINGS_META):
    """The meta of the current embeddings, checked against the checkpoint they must come from."""
    made_by = "predict.py" if meta_name == PREDICT_META else "embed.py"
    meta_path = artifacts.require(artifacts.out_path(cfg, "embeddings", meta_name), made_by, "embeddings set")
    meta = json.loads(meta_path.read_text())
    current = provenance.artifact_digest(cfg, "checkpoints", "best.pth")
    if "set" not in meta or meta.get("checkpoint_sha256") != current:
        made = f"epoch {meta.get('checkpoint_epoch')} of a checkpoint saved {meta.get('checkpoint_saved_at')}"
        raise lab.LabError(f"The embeddings in {meta_path.parent} were computed from another model ({made}) than "
                           f"checkpoints/best.pth now holds{' (none)' if current is None else ''}: using them would "
                           f"mix two runs. Re-run `python {made_by}` (it is quick: the trunk features are cached), "
                           f"then this script.")
    return meta


def current_predict_set(cfg):
    """predict.py's embeddings set when it exists and comes from the current checkpoint, else None (with a note:
    an older sample's predictions are optional, they never block the pipeline)."""
    if not artifacts.out_path(cfg, "embeddings", PREDICT_META).exists():
        return None
    try:
        meta = embedding_set(cfg, PREDICT_META)
    except lab.LabError:
        meta = json.loads(artifacts.out_path(cfg, "embeddings", PREDICT_META).read_text())
        print(f"note: leaving out the predictions of {meta.get('predict_dir')}: predict.py made them with another "
              f"model. Run `python predict.py --predict_dir={meta.get('predict_dir')!r}` again to have them with "
              f"this one.", file=sys.stderr)
        return None
    path = artifacts.out_path(cfg, "embeddings", "embeddings_predict.pkl")
    return meta if path.exists() and meta["files"].get("predict") == artifacts.file_digest(path)[:16] else None


def record_embedding_inputs(cfg, script):
    """An analysis script's outputs belong to the embeddings set (and so the checkpoint) they were computed from."""
    meta = embedding_set(cfg)
    predict = current_predict_set(cfg) if script == "dimensionality_reduction" else None
    provenance.record_inputs(cfg, script, embeddings=meta["set"], checkpoint=meta["checkpoint_sha256"],
                             predict=predict and predict["set"])


def load_embeddings(cfg, split_name):
    """(frame, float64 vectors) of one embeddings file of the current set; a missing, stale or half-written set
    names embed.py."""
    meta_name = meta_name_of(split_name)
    meta = embedding_set(cfg, meta_name)
    made_by = "predict.py" if meta_name == PREDICT_META else "embed.py"
    path = artifacts.require(artifacts.out_path(cfg, "embeddings", f"embeddings_{split_name}.pkl"), made_by,
                             "embeddings file")
    if meta["files"].get(split_name) != artifacts.file_digest(path)[:16]:
        raise lab.LabError(f"{path} does not belong to the embeddings set in {meta_name} ({made_by} was "
                           f"interrupted while writing, or the file was replaced). Re-run `python {made_by}`.")
    frame = pd.read_pickle(path)
    return frame, frame[embedding_columns(frame)].to_numpy(np.float64)
