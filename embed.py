"""Embeddings of the train, validation, test and unseen images (mission task 4).

Reads checkpoints/best.pth (train.py), results/split.csv and the cached trunk features. Writes
  embeddings/embeddings_train.pkl, embeddings_val.pkl, embeddings_test.pkl, embeddings_unseen.pkl
      pickled pandas DataFrames, one row per image: label (class name), label_idx (index in the checkpoint's
      seen classes, or in unseen_classes for the unseen split), split, path (absolute), emb_0 ... emb_127
      (float32): the 128-d activation before the last layer, model in eval mode
  embeddings/embeddings_meta.json   checkpoint (and its sha256), config, seed and package versions that made them
The validation embeddings are what novelty.py chooses its thresholds on, so that the test split stays unseen.
"""
import sys

import checkpoint
import dataloader
import features
import lab

SPLITS = ("train", "val", "test", "unseen")


def main(argv=None):
    cfg = lab.load_config(argv, __doc__)
    lab.ensure_output_dirs(cfg, ("embeddings", "cache", "results"))
    cfg, ckpt, model, split, device = checkpoint.load_trained(cfg)
    data = features.prepare(cfg, device, split, model, ckpt["weights"], names=SPLITS)
    for name in SPLITS:
        names = ckpt["classes"] if name != "unseen" else cfg.unseen_classes
        vectors = features.head_outputs(model, data[name], device, cfg.batch_size)[1]
        frame = dataloader.embedding_frame(cfg, data[name].rows, vectors, names)
        path = lab.atomic_write(lab.out_path(cfg, "embeddings", f"embeddings_{name}.pkl"), frame.to_pickle)
        print(f"[embed] {name}: {len(frame)} images x {len(dataloader.embedding_columns(frame))} dims -> {path}")
    lab.save_json(lab.out_path(cfg, "embeddings", "embeddings_meta.json"), {
        "checkpoint": str(lab.out_path(cfg, "checkpoints", "best.pth")), "checkpoint_epoch": ckpt["epoch"],
        "checkpoint_sha256": lab.file_digest(lab.out_path(cfg, "checkpoints", "best.pth")),
        "trunk_weights": ckpt["weights"], "seed": cfg.seed, "config": vars(cfg), "versions": lab.package_versions()})


if __name__ == "__main__":
    lab.run_main(lambda: main(sys.argv[1:]))
