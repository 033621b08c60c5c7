"""Embeddings of the train, validation, test and unseen images (mission task 4).

Reads checkpoints/best.pth (train.py), results/split.csv and the cached trunk features (in the precision
the checkpoint was trained on). Writes, as one set:
  embeddings/embeddings_train.pkl, embeddings_val.pkl, embeddings_test.pkl, embeddings_unseen.pkl
      pickled pandas DataFrames, one row per image: label (class name), label_idx (index in the checkpoint's
      seen classes, or in unseen_classes for the unseen split), split, path (absolute), emb_0 ... emb_127
      (float32): the 128-d activation before the last layer, model in eval mode
  embeddings/embeddings_meta.json   the digest of the checkpoint that made them and of each file (later scripts
      refuse a set that another model made), config, seed and package versions
  results/embed_manifest.json       written last (manifest.py): every file's digest, the checkpoint's and the
      split's; a run that fails leaves the previous complete set or none, never a half-written one
The validation embeddings are what novelty.py chooses its thresholds on, so that the test split stays unseen.
"""

import sys

from lab import (
    artifacts,
    cached_features,
    checkpoint,
    config,
    embedding_files,
    manifest,
    precision,
    runtime,
    trunk_cache,
)

SPLITS = ("train", "val", "test", "unseen")


def main(argv=None):
    cfg = config.load_config(argv, __doc__)
    config.print_settings(cfg)
    artifacts.ensure_output_dirs(cfg, ("embeddings", "cache", "results"))
    trained = checkpoint.load_trained(cfg)
    cfg, ckpt, model, device = trained.cfg, trained.ckpt, trained.model, trained.device
    dtype = trained.trunk_dtype
    data = trunk_cache.prepare(cfg, device, trained.split, model, ckpt["weights"], dtype, names=SPLITS)
    frames = {}
    for name in SPLITS:
        names = ckpt["classes"] if name != "unseen" else cfg.unseen_classes
        vectors = cached_features.head_outputs(model, data[name], device, cfg.batch_size, desc=f"embed {name}")[1]
        frames[name] = embedding_files.embedding_frame(cfg, data[name].rows, vectors, names)
    meta = {
        "checkpoint": str(artifacts.out_path(cfg, "checkpoints", "best.pth")),
        "checkpoint_sha256": trained.digest,
        "checkpoint_epoch": ckpt["epoch"],
        "checkpoint_saved_at": ckpt.get("saved_at"),
        "trunk_weights": ckpt["weights"],
        "trunk_precision": precision.precision_name(dtype),
        "seed": cfg.seed,
        "config": vars(cfg),
        "versions": manifest.package_versions(),
    }
    with manifest.OutputSet(cfg, "embed") as out:
        set_id = embedding_files.save_embedding_set(cfg, frames, meta, out=out)
        out.publish(checkpoint=trained.digest, split=ckpt["split_digest"], embeddings=set_id)
    return set_id


if __name__ == "__main__":
    runtime.run_main(lambda: main(sys.argv[1:]))
