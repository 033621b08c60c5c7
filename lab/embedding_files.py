"""Embedding files: embeddings/embeddings_<split>.pkl (pandas DataFrames: label, label_idx, split, path,
emb_0 ...) and their meta file, with each file's digest and the checkpoint they came from, written as files of an
output set (manifest.py), so a set never mixes two models. embed.py writes the train/val/test/unseen set, predict.py
its own with its predictions.
"""

import contextlib
import hashlib
import json
import shlex
import sys

import numpy as np
import pandas as pd

import lab
from lab import artifacts, manifest, progress, splitting


# --------------------------------------------------------------------------- embedding DataFrames
def embedding_frame(cfg, rows, vectors, class_names):
    """label, label_idx (index in class_names), split, absolute path, emb_0 ... emb_<d-1> (float32)."""
    index = {c: i for i, c in enumerate(class_names)}
    frame = pd.DataFrame(
        {
            "label": rows["label"].values,
            "label_idx": [index[c] for c in rows["label"]],
            "split": rows["split"].values,
            "path": splitting.absolute_paths(cfg, rows["path"]),
        }
    )
    emb = pd.DataFrame(vectors.astype(np.float32), columns=[f"emb_{i}" for i in range(vectors.shape[1])])
    return pd.concat([frame, emb], axis=1)


def embedding_columns(frame):
    return [c for c in frame.columns if c.startswith("emb_")]


EMBEDDINGS_META = "embeddings_meta.json"  # embed.py's set: train, val, test, unseen


PREDICT_META = "embeddings_predict_meta.json"  # predict.py's set: the new images it classified


def meta_name_of(split_name):
    return PREDICT_META if split_name == "predict" else EMBEDDINGS_META


def set_name_of(meta_name):
    """The output set (manifest.py) an embeddings meta file belongs to: embed.py's, or predict.py's."""
    return "predict" if meta_name == PREDICT_META else "embed"


def save_embedding_set(cfg, frames, meta, meta_name=EMBEDDINGS_META, out=None):
    """Write embeddings_<split>.pkl for every split of frames, and the meta file with each file's digest and the
    checkpoint they came from, as files of an output set (manifest.OutputSet): `out`, the set of the script that
    writes them with others (embed.py, predict.py), or a set of their own, published here. So a run killed in
    between leaves the previous set or none, never files of two models. Returns the embeddings set's id."""
    own = out is None
    out = manifest.OutputSet(cfg, set_name_of(meta_name)) if own else out
    with out if own else contextlib.nullcontext():
        digests = {}
        for name, frame in frames.items():
            with progress.heartbeat(f"embed {name}: writing {len(frame)} rows"):
                digests[name] = manifest.digest(out.write("embeddings", f"embeddings_{name}.pkl", frame.to_pickle))
            print(
                f"[embed] {name}: {len(frame)} images x {len(embedding_columns(frame))} dims -> "
                f"{artifacts.out_path(cfg, 'embeddings', f'embeddings_{name}.pkl')}"
            )
        set_id = hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()[:16]
        out.save_json("embeddings", meta_name, {**meta, "files": digests, "set": set_id})
        if own:
            out.publish(checkpoint=meta.get("checkpoint_sha256"), embeddings=set_id)
    return set_id


def embedding_set(cfg, meta_name=EMBEDDINGS_META):
    """The meta of the current embeddings: one whole set (its manifest holds), made from the checkpoint that
    checkpoints/best.pth holds now."""
    set_name = set_name_of(meta_name)
    made_by = manifest.made_by(set_name)
    meta_path = artifacts.require(artifacts.out_path(cfg, "embeddings", meta_name), made_by, "embeddings set")
    published, problem = manifest.check(cfg, set_name)
    if published is None or f"embeddings/{meta_name}" not in published["outputs"]:
        raise lab.LabError(
            f"The embeddings in {meta_path.parent} are not one whole set ({problem or 'another set'}"
            f"): a file does not belong to the embeddings set in {meta_name} ({made_by} was "
            f"interrupted while writing, or a file was replaced or deleted). Re-run "
            f"`python {made_by}`, then this script."
        )
    meta = artifacts.read_json(meta_path, made_by, "embeddings set")
    current = manifest.artifact_digest(cfg, "checkpoints", "best.pth")
    if "set" not in meta or meta.get("checkpoint_sha256") != current:
        made = f"epoch {meta.get('checkpoint_epoch')} of a checkpoint saved {meta.get('checkpoint_saved_at')}"
        raise lab.LabError(
            f"The embeddings in {meta_path.parent} were computed from another model ({made}) than "
            f"checkpoints/best.pth now holds{' (none)' if current is None else ''}: using them would "
            f"mix two runs. Re-run `python {made_by}` (it is quick: the trunk features are cached), "
            f"then this script."
        )
    return meta


def predict_command(predict_dir):
    """The command that classifies a sample again (quoted for the shell)."""
    return f"python predict.py --predict_dir={shlex.quote(artifacts.printable(predict_dir))}"


def current_predict_set(cfg):
    """predict.py's set (its manifest: inputs, outputs, id) when it is whole and was made with the current
    checkpoint and embeddings, else None, with a note naming the command that brings it: a sample's predictions
    are optional, they never block the pipeline."""
    if not (
        manifest.manifest_path(cfg, "predict").exists() or artifacts.out_path(cfg, "embeddings", PREDICT_META).exists()
    ):
        return None
    published, problem = manifest.check(cfg, "predict")
    if published is None:
        print(
            f"note: leaving out the predictions in {artifacts.out_path(cfg, 'results')}: they are not one whole "
            f"set ({problem}). Run predict.py again to have them.",
            file=sys.stderr,
        )
        return None
    inputs = published["inputs"]
    try:
        embeddings = embedding_set(cfg)["set"]
    except lab.LabError:
        embeddings = None
    if (
        inputs.get("checkpoint") != manifest.artifact_digest(cfg, "checkpoints", "best.pth")
        or inputs.get("embeddings") != embeddings
    ):
        print(
            f"note: leaving out the predictions of {artifacts.printable(inputs.get('predict_dir'))}: predict.py made "
            f"them with another model or other embeddings. Run `{predict_command(inputs.get('predict_dir'))}` "
            f"again to have them with this one.",
            file=sys.stderr,
        )
        return None
    return published


def embedding_inputs(cfg):
    """What an analysis script's outputs are computed from, for its manifest: the embeddings set and its
    checkpoint."""
    meta = embedding_set(cfg)
    return {"embeddings": meta["set"], "checkpoint": meta["checkpoint_sha256"]}


def load_embeddings(cfg, split_name):
    """(frame, float64 vectors) of one embeddings file of the current set; a missing, stale or half-written set
    names embed.py."""
    meta_name = meta_name_of(split_name)
    meta = embedding_set(cfg, meta_name)
    made_by = "predict.py" if meta_name == PREDICT_META else "embed.py"
    path = artifacts.require(
        artifacts.out_path(cfg, "embeddings", f"embeddings_{split_name}.pkl"), made_by, "embeddings file"
    )
    if meta["files"].get(split_name) != manifest.digest(path):
        raise lab.LabError(
            f"{path} does not belong to the embeddings set in {meta_name} ({made_by} was "
            f"interrupted while writing, or the file was replaced). Re-run `python {made_by}`."
        )
    frame = pd.read_pickle(path)
    return frame, frame[embedding_columns(frame)].to_numpy(np.float64)
