"""The whole mission end to end: on a tiny demo set, on real plankton images from ../shared, and on file names that
are not UTF-8; a missing data root is an error that creates nothing."""

import base64
import io
import json
import os
import re
import shutil

import pandas as pd
import pytest
from conftest import BAD_NAME, FAST, NDSB9_SEEN, NDSB9_UNSEEN, run_script, shared_dataset
from PIL import Image

import lab
import run_pipeline
from lab import artifacts, config

ARTIFACTS = {
    "results": [
        "dataset_summary.csv",
        "split.csv",
        "split.json",
        "skipped_files.csv",
        "train_history.csv",
        "test_metrics.json",
        "test_predictions.csv",
        "average_distances_test.csv",
        "average_distances_unseen.csv",
        "umap_coordinates.csv",
        "galleries.csv",
        "transfer_learning.csv",
        "novelty.csv",
        "novelty_scores.csv",
        "novelty_thresholds.json",
        "pipeline_timings.csv",
        "report.html",
        "label_issues.csv",
        "label_issues_ecotaxa.tsv",
    ],
    "figs": [
        "training_plot.png",
        "confusion_matrix.png",
        "average_euclidean_distances_test.png",
        "average_angular_distances_test.png",
        "average_euclidean_distances_unseen.png",
        "average_angular_distances_unseen.png",
        "umap_embeddings.png",
        "accuracy_SVC.png",
        "accuracy_Linear.png",
        "accuracy_kNN.png",
        "accuracy_all.png",
        "novelty_roc.png",
        "novelty_scores.png",
        "label_issues.png",
    ],
    "embeddings": [
        "embeddings_train.pkl",
        "embeddings_val.pkl",
        "embeddings_test.pkl",
        "embeddings_unseen.pkl",
        "embeddings_meta.json",
    ],
    "checkpoints": ["best.pth", "last.pth"],
}


def check_all_artifacts(cfg, classes):
    for kind, names in ARTIFACTS.items():
        for name in names:
            assert artifacts.out_path(cfg, kind, name).stat().st_size > 0, f"{kind}/{name}"
    for c in classes:
        assert artifacts.out_path(cfg, "figs", f"gallery_{c}.png").exists()
    page = artifacts.out_path(cfg, "results", "report.html").read_text()
    markup = re.sub(r"<script\b.*?</script>", "", page, flags=re.S)  # bokeh's inlined code holds URLs in strings
    refs = re.findall(r'<img src="([^"]+)"', markup)
    assert len(refs) >= 11 + len(classes)
    for ref in refs:  # one self-contained file: every figure inlined, and a real PNG
        assert ref.startswith("data:image/png;base64,"), ref[:80]
        with Image.open(io.BytesIO(base64.b64decode(ref.split(",", 1)[1]))) as figure:
            assert figure.format == "PNG" and min(figure.size) > 100
    assert not re.search(r'(src|href)="(?!data:|#)', markup), "the report refers to a file or URL beside it"
    galleries = pd.read_csv(artifacts.out_path(cfg, "results", "galleries.csv"))
    assert len(galleries) == len(classes) * 3 * cfg.gallery_size


@pytest.mark.slow
def test_pipeline_on_tiny_demo_makes_every_artifact_and_a_report(tiny_pipeline):
    cfg, _, timings = tiny_pipeline
    check_all_artifacts(cfg, cfg.seen_classes + cfg.unseen_classes)
    assert list(timings["stage"]) == [s for s, _ in run_pipeline.STAGES] + ["total"]
    coords = pd.read_csv(artifacts.out_path(cfg, "results", "umap_coordinates.csv"))
    assert set(coords["split"]) == {"train", "test", "unseen"} and coords[["x", "y"]].notna().all().all()


@pytest.mark.slow
def test_pipeline_on_real_ndsb9_plankton(tmp_path):
    root = shared_dataset("ndsb9")
    argv = [
        f"--data_root={str(root)!r}",
        f"--output_dir={str(tmp_path)!r}",
        f"--seen_classes={NDSB9_SEEN!r}",
        f"--unseen_classes={NDSB9_UNSEEN!r}",
        "--max_images_per_class=60",
        *FAST,
    ]
    run_pipeline.main(argv)
    cfg = config.load_config(argv)
    check_all_artifacts(cfg, NDSB9_SEEN + NDSB9_UNSEEN)
    metrics = json.loads(artifacts.out_path(cfg, "results", "test_metrics.json").read_text())
    assert metrics["n_test"] == 6 * 12 and metrics["accuracy"] > 2 / 6  # twice chance, even on a random trunk
    transfer = pd.read_csv(artifacts.out_path(cfg, "results", "transfer_learning.csv"))
    assert transfer[transfer["per_class"] == "all"]["balanced_accuracy"].max() > 0.5  # 3 unseen classes: chance 1/3
    novelty = pd.read_csv(artifacts.out_path(cfg, "results", "novelty.csv"))
    default = novelty[novelty["default"] & (novelty["unseen_class"] == "all")]
    assert default["auroc"].item() > 0.6  # unseen taxa score above seen ones (chance 0.5), even on a random trunk
    assert not list(tmp_path.rglob("*.jpg")), "the images are read in place, never copied"


def test_demo_offline_falls_back_to_a_random_trunk_loudly_but_real_data_does_not(tmp_path, monkeypatch, capsys):
    import pytest

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    import torch

    monkeypatch.setattr(
        torch.hub, "download_url_to_file", lambda *a, **k: (_ for _ in ()).throw(OSError("Name or service not known"))
    )
    demo_cfg = config.load_config([])  # the default data_root is the demo set
    assert run_pipeline.weights_overrides(demo_cfg) == ["--backbone_weights=None"]
    assert "DEMO ON A RANDOM TRUNK" in capsys.readouterr().err
    real_cfg = config.load_config([f"--data_root={str(tmp_path)!r}"])
    with pytest.raises(lab.LabError, match="seems to be offline"):
        run_pipeline.weights_overrides(real_cfg)


@pytest.mark.slow
def test_a_missing_data_root_is_an_error_naming_it_and_nothing_is_created(tmp_path):
    missing = tmp_path / "unmounted" / "FlowCamNet" / "imgs"
    result = run_script(
        "run_pipeline.py",
        f"--data_root={str(missing)!r}",
        f"--output_dir={str(tmp_path / 'o')!r}",
        "--backbone_weights=None",
    )
    assert result.returncode == 2 and str(missing) in result.stderr and "does not exist" in result.stderr
    assert not missing.parent.parent.exists() and "RANDOM TRUNK" not in result.stderr


@pytest.mark.slow
def test_names_that_are_not_utf8_go_through_the_whole_pipeline_and_the_report(tiny_demo, tmp_path):
    root = shutil.copytree(tiny_demo, tmp_path / "data")
    for cls in ("Odontella", "Retaria"):
        os.rename(root / cls / f"{cls}_0001.png", root / cls / BAD_NAME)
    argv = [f"--data_root={str(root)!r}", f"--output_dir={str(tmp_path / 'out')!r}", *FAST, "--reduction_method='pca'"]
    run_pipeline.main(argv)
    cfg = config.load_config(argv)
    embedded = pd.concat(
        [
            pd.read_pickle(artifacts.out_path(cfg, "embeddings", f"embeddings_{s}.pkl"))
            for s in ("train", "val", "test", "unseen")
        ]
    )
    assert {str(root / c / BAD_NAME) for c in ("Odontella", "Retaria")} <= set(embedded["path"])
    page = artifacts.out_path(cfg, "results", "report.html").read_text(encoding="utf-8")  # valid UTF-8 throughout
    assert "bad\\\\xff\\\\xfename.png" in page or "bad\\xff\\xfename.png" in page  # shown escaped, in the map's data
