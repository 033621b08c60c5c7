"""novelty.py on a trained tiny demo: its table equals scikit-learn's on its own per-image scores, and its
thresholds come from the validation images alone."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

import lab
import novelty
from lab import artifacts, config, embedding_files, manifest
from lab import novelty_scores as ns


@pytest.fixture
def embedded(novelty_ready):
    return novelty_ready


def test_novelty_table_equals_sklearn_on_its_own_scores(embedded):
    cfg, argv = embedded
    table = novelty.main(argv)
    scores = pd.read_csv(artifacts.out_path(cfg, "results", "novelty_scores.csv"))
    assert scores["split"].value_counts().to_dict() == {"unseen": 3 * 36, "test": 6 * 7, "val": 6 * 2}
    known, new = scores[scores["split"] == "test"], scores[scores["split"] == "unseen"]
    saved = pd.read_csv(artifacts.out_path(cfg, "results", "novelty.csv"))
    assert set(saved["unseen_class"]) == {"all", *cfg.unseen_classes} and set(saved["score"]) == set(ns.SCORES)
    for _, row in saved.iterrows():
        chosen = new if row["unseen_class"] == "all" else new[new["label"] == row["unseen_class"]]
        values = np.r_[known[row["score"]], chosen[row["score"]]]
        is_new = np.r_[np.zeros(len(known)), np.ones(len(chosen))]
        assert row["auroc"] == pytest.approx(roc_auc_score(is_new, values), abs=1e-9)
        assert row["n_new"] == len(chosen) and row["n_known"] == len(known)
        assert row["flagged_unseen"] == pytest.approx(np.mean(chosen[row["score"]] > row["threshold"]))
    assert saved[saved["default"]]["score"].unique().tolist() == [cfg.novelty_score]
    assert len(table) == len(saved)
    for name in ("novelty_roc.png", "novelty_scores.png"):
        assert artifacts.out_path(cfg, "figs", name).stat().st_size > 10_000


def test_thresholds_come_from_the_validation_images_only(embedded):
    cfg, argv = embedded
    novelty.main(argv)
    path = artifacts.out_path(cfg, "results", "novelty_thresholds.json")
    first = json.loads(path.read_text())
    assert first["checkpoint_sha256"] == manifest.artifact_digest(cfg, "checkpoints", "best.pth")
    scores = pd.read_csv(artifacts.out_path(cfg, "results", "novelty_scores.csv"))
    val = scores[scores["split"] == "val"]
    for name in ns.SCORES:
        assert first["thresholds"][name] == pytest.approx(np.sort(val[name])[int(np.ceil(0.95 * len(val))) - 1])
    originals = {
        split: pd.read_pickle(artifacts.out_path(cfg, "embeddings", f"embeddings_{split}.pkl"))
        for split in ("train", "val", "test", "unseen")
    }
    meta = embedding_files.embedding_set(cfg)

    def embed_as(changed_splits):
        """The embeddings set with these splits' vectors changed (as embed.py would write it)."""
        frames = {split: frame.copy() for split, frame in originals.items()}
        for split in changed_splits:
            emb = [c for c in frames[split].columns if c.startswith("emb_")]
            frames[split][emb] = frames[split][emb] * 3.0 + 1.0
        embedding_files.save_embedding_set(cfg, frames, meta)

    try:
        embed_as(("test", "unseen"))  # other test and unseen images: not one threshold moves
        novelty.main(argv)
        assert json.loads(path.read_text())["thresholds"] == first["thresholds"]
        embed_as(("val",))  # other validation images: every threshold moves
        novelty.main(argv)
        moved = json.loads(path.read_text())["thresholds"]
        assert all(moved[name] != first["thresholds"][name] for name in ("energy", "knn", "mahalanobis"))
    finally:
        embed_as(())
        novelty.main(argv)  # the shared fixture's thresholds as they were


def test_embeddings_of_another_checkpoint_are_refused(embedded):
    cfg, argv = embedded
    meta_path = artifacts.out_path(cfg, "embeddings", "embeddings_meta.json")
    original = meta_path.read_text()
    try:
        meta_path.write_text(json.dumps({**json.loads(original), "checkpoint_sha256": "0" * 64}))
        with pytest.raises(lab.LabError, match="python embed.py"):
            novelty.main(argv)
    finally:
        meta_path.write_text(original)


def test_novelty_settings_are_validated():
    for bad, fragment in (
        ("--novelty_score='odin'", "novelty_score='odin' must be one of"),
        ("--novelty_knn_k=0", "novelty_knn_k=0 must be at least 1"),
        ("--novelty_bank_max=-1", "novelty_bank_max=-1 must be 0"),
        ("--novelty_bank_max=59", r"at least novelty_knn_k x the seen classes \(10 x 6 = 60\)"),
        ("--predict_dir=''", "names no folder"),
    ):
        with pytest.raises(lab.LabError, match=fragment):
            config.load_config([bad])
    assert config.load_config(["--predict_dir=None"]).predict_dir is None
