"""Embeddings of the train, test and unseen images (mission task 4).

Reads checkpoints/best.pth (train.py), results/split.csv and the cached trunk features. Writes
  embeddings/embeddings_train.pkl, embeddings_test.pkl, embeddings_unseen.pkl
      pickled pandas DataFrames, one row per image: label (class name), label_idx (index in the checkpoint's
      seen classes, or in unseen_classes for the unseen split), split, path (absolute), emb_0 ... emb_127
      (float32): the 128-d activation before the last layer, model in eval mode
  embeddings/embeddings_meta.json   checkpoint, config, seed and package versions that made them
"""
import sys

import numpy as np
import pandas as pd

import dataloader
import lab
import train

SPLITS = ("train", "test", "unseen")


def embedding_frame(cfg, rows, vectors, class_names):
    index = {c: i for i, c in enumerate(class_names)}
    frame = pd.DataFrame({"label": rows["label"].values, "label_idx": [index[c] for c in rows["label"]],
                          "split": rows["split"].values, "path": dataloader.absolute_paths(cfg, rows["path"])})
    emb = pd.DataFrame(vectors.astype(np.float32), columns=[f"emb_{i}" for i in range(vectors.shape[1])])
    return pd.concat([frame, emb], axis=1)


def embedding_columns(frame):
    return [c for c in frame.columns if c.startswith("emb_")]


def load_embeddings(cfg, split_name):
    """Read one embeddings file; a missing one names embed.py."""
    path = lab.require(lab.out_path(cfg, "embeddings", f"embeddings_{split_name}.pkl"), "embed.py", "embeddings file")
    frame = pd.read_pickle(path)
    return frame, frame[embedding_columns(frame)].to_numpy(np.float64)


def main(argv=None):
    cfg = lab.load_config(argv, __doc__)
    lab.ensure_output_dirs(cfg, ("embeddings", "cache", "results"))
    cfg, ckpt, model, split, device = train.load_trained(cfg)
    data = train.prepare(cfg, device, split, model, ckpt["weights"], names=SPLITS)
    for name in SPLITS:
        names = ckpt["classes"] if name != "unseen" else cfg.unseen_classes
        vectors = train.head_outputs(model, data[name], device, cfg.batch_size)[1]
        frame = embedding_frame(cfg, data[name].rows, vectors, names)
        path = lab.atomic_write(lab.out_path(cfg, "embeddings", f"embeddings_{name}.pkl"), frame.to_pickle)
        print(f"[embed] {name}: {len(frame)} images x {len(embedding_columns(frame))} dims -> {path}")
    lab.save_json(lab.out_path(cfg, "embeddings", "embeddings_meta.json"), {
        "checkpoint": str(lab.out_path(cfg, "checkpoints", "best.pth")), "checkpoint_epoch": ckpt["epoch"],
        "trunk_weights": ckpt["weights"], "seed": cfg.seed, "config": vars(cfg), "versions": lab.package_versions()})


if __name__ == "__main__":
    lab.run_main(lambda: main(sys.argv[1:]))
