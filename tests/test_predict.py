"""predict.py: a nested folder with junk in it, its predictions equal evaluate.py's, the EcoTaxa layout, and an
interrupted run that continues where it stopped; a run that fails while saving leaves the previous complete set, the
EcoTaxa table of the sample before is removed, file names that are not UTF-8 are kept as their bytes and left out of
EcoTaxa, what it prints (the images counted, the next command, the lower-case columns), and a blank predict_dir."""

import contextlib
import errno
import io
import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import BAD_NAME, class_images, sample
from PIL import Image
from scipy.special import softmax

import evaluate
import lab
import predict
from lab import (
    artifacts,
    cached_features,
    checkpoint,
    config,
    embedding_files,
    output_lock,
    prediction_table,
    trunk_cache,
)


def threshold_of(cfg):
    saved = json.loads(artifacts.out_path(cfg, "results", "novelty_thresholds.json").read_text())
    return saved["thresholds"][cfg.novelty_score]


@pytest.fixture
def messy_sample(tiny_demo, tmp_path):
    """sample/<station>/<depth>/ of demo images, a corrupt .jpg, a text file, a 16-bit PNG and a hidden folder."""
    sample = tmp_path / "sample"
    sources = sorted((tiny_demo / "Retaria").iterdir())[:4] + sorted((tiny_demo / "chainthin").iterdir())[:3]
    for i, src in enumerate(sources):
        folder = sample / f"station{i % 2}" / ("10m" if i < 4 else "50m")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, folder / src.name)
    grey = np.asarray(Image.open(sources[0]).convert("L"), dtype=np.uint16) * 16  # a 12-bit sensor's range
    Image.fromarray(grey).save(sample / "station0" / "deep16bit.png")
    assert Image.open(sample / "station0" / "deep16bit.png").mode.startswith("I")
    (sample / "station1" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (sample / "notes.txt").write_text("CTD cast 42, Niskin 3\n")
    (sample / ".thumbnails").mkdir()
    shutil.copy(sources[0], sample / ".thumbnails" / "hidden.jpg")
    return sample


def test_the_rows_name_the_top_classes_and_the_report_reads_every_class_column_as_text():
    """TOP classes per row, most probable first (fewer when the model has fewer classes), against a brute-force
    sort; TEXT_COLUMNS, by which the report and the EcoTaxa table read the file back, names every class column."""
    classes = ["a", "b", "c", "d"]
    logits = np.array([[0.0, 3.0, 1.0, 2.0], [5.0, 0.0, 0.0, 1.0]])
    rows = prediction_table.prediction_rows(["x.png", "y.png"], logits, np.array([0.1, 0.9]), 0.5, classes, "energy")
    probabilities = softmax(logits, axis=1)
    for i in range(2):
        ranked = sorted(range(4), key=lambda c: -probabilities[i, c])[: prediction_table.TOP]
        assert [rows[f"top{k + 1}_class"][i] for k in range(len(ranked))] == [classes[c] for c in ranked]
        assert [rows[f"top{k + 1}_probability"][i] for k in range(len(ranked))] == pytest.approx(
            probabilities[i, ranked]
        )
    assert list(rows["predicted"]) == ["b", "a"] and list(rows["possibly_new"]) == [False, True]
    for n_classes in (2, 4):
        columns = prediction_table.prediction_columns(classes[:n_classes], "energy")
        class_columns = {c for c in columns if c.endswith("_class")} | {"path", "predicted"}
        assert class_columns <= set(prediction_table.TEXT_COLUMNS)
        assert sum(c.endswith("_class") for c in columns) == min(n_classes, prediction_table.TOP)


def test_a_nested_folder_with_junk_is_classified_and_the_junk_listed(novelty_ready, messy_sample):
    cfg, argv = novelty_ready
    counts = predict.main(argv + [f"--predict_dir={str(messy_sample)!r}"])
    rows = pd.read_csv(artifacts.out_path(cfg, "results", "predictions.csv"))
    assert len(rows) == 8 and "station0/deep16bit.png" in set(rows["path"])
    assert all(p.count("/") >= 1 and not p.startswith(".") for p in rows["path"])
    p_columns = [f"p_{c}" for c in cfg.seen_classes]
    assert rows[p_columns].sum(axis=1).to_numpy() == pytest.approx(np.ones(8), abs=1e-9)
    assert (rows["predicted"] == rows["top1_class"]).all() and (rows["probability"] == rows["top1_probability"]).all()
    assert (rows["top1_probability"] >= rows["top2_probability"]).all()
    assert (rows["top2_probability"] >= rows["top3_probability"]).all()
    assert (rows[p_columns].to_numpy().argmax(1) == [cfg.seen_classes.index(c) for c in rows["predicted"]]).all()
    score = f"novelty_{cfg.novelty_score}"
    assert (rows["possibly_new"] == (rows[score] > threshold_of(cfg))).all()
    skipped = pd.read_csv(artifacts.out_path(cfg, "results", "predict_skipped.csv")).set_index("path")["reason"]
    assert set(skipped.index) == {"station1/broken.jpg", "notes.txt", ".thumbnails"}  # as the scan ignores them
    assert "not an image" in skipped["notes.txt"] and "not an image" not in skipped["station1/broken.jpg"]
    assert "hidden" in skipped[".thumbnails"]
    table = pd.read_csv(artifacts.out_path(cfg, "results", "prediction_counts.csv"))
    assert table.equals(counts) and list(table["class"]) == cfg.seen_classes
    assert table["images"].sum() == 8 and table["possibly_new"].sum() == rows["possibly_new"].sum()
    assert table.set_index("class")["images"].to_dict() == {c: (rows["predicted"] == c).sum() for c in cfg.seen_classes}
    embeddings = pd.read_pickle(artifacts.out_path(cfg, "embeddings", "embeddings_predict.pkl"))
    assert (embeddings["split"] == "predict").all() and len(embeddings) == 8
    assert list(embeddings["label"]) == list(rows["predicted"])
    assert list(embeddings["path"]) == [str(messy_sample / p) for p in rows["path"]]


def test_predictions_equal_evaluates_on_the_test_images(novelty_ready, tiny_demo):
    cfg, argv = novelty_ready
    evaluate.main(argv)
    predict.main(argv + [f"--predict_dir={str(tiny_demo)!r}"])  # the whole data root: every split, unseen too
    ours = pd.read_csv(artifacts.out_path(cfg, "results", "predictions.csv")).set_index("path")
    theirs = pd.read_csv(artifacts.out_path(cfg, "results", "test_predictions.csv"))
    assert len(ours) == 9 * 36 and len(theirs) == 6 * 7
    assert list(ours.loc[theirs["path"], "predicted"]) == list(theirs["predicted"])
    trained = checkpoint.load_trained(cfg)  # evaluate.py's own path to its logits
    trained_cfg, model, split, device = trained.cfg, trained.model, trained.split, trained.device
    ckpt = checkpoint.load(artifacts.out_path(cfg, "checkpoints", "best.pth"))
    test = trunk_cache.prepare(
        trained_cfg, device, split, model, ckpt["weights"], checkpoint.trunk_dtype(ckpt, device), names=("test",)
    )["test"]
    probabilities = softmax(
        cached_features.head_outputs(model, test, device, cfg.batch_size)[0].astype(np.float64), axis=1
    )
    p_columns = [f"p_{c}" for c in cfg.seen_classes]
    assert ours.loc[test.rows["path"], p_columns].to_numpy() == pytest.approx(probabilities, abs=1e-5)


def test_ecotaxa_table_layout(novelty_ready, messy_sample):
    cfg, argv = novelty_ready
    predict.main(argv + [f"--predict_dir={str(messy_sample)!r}", "--ecotaxa=True"])
    lines = artifacts.out_path(cfg, "results", "ecotaxa_predictions.tsv").read_text().splitlines()
    header, types = lines[0].split("\t"), lines[1].split("\t")
    assert header[:5] == [
        "img_file_name",
        "object_id",
        "object_annotation_category",
        "object_annotation_status",
        "object_probability",
    ]
    assert types == ["[t]"] * 4 + ["[f]"] * (len(header) - 4)
    assert all(h == h.lower() and h.split("_", 1)[0] in ("img", "object") for h in header)
    table = pd.read_csv(artifacts.out_path(cfg, "results", "ecotaxa_predictions.tsv"), sep="\t", skiprows=[1])
    rows = pd.read_csv(artifacts.out_path(cfg, "results", "predictions.csv"))
    assert len(table) == len(rows) == 8 and table["object_id"].is_unique
    assert (table["object_annotation_status"] == "predicted").all()
    assert list(table["object_annotation_category"]) == list(rows["predicted"])
    assert all((messy_sample / name).is_file() for name in table["img_file_name"])  # relative to the sample folder
    p_columns = [h for h in header if h.startswith("object_p_")]
    assert len(p_columns) == len(cfg.seen_classes)
    assert table[p_columns].sum(axis=1).to_numpy() == pytest.approx(np.ones(8), abs=1e-9)
    assert set(table["object_possibly_new"]) <= {0, 1}


def test_an_interrupted_run_continues_where_it_stopped(novelty_ready, tiny_demo, monkeypatch):
    cfg, argv = novelty_ready
    argv = argv + [f"--predict_dir={str(tiny_demo / 'Retaria')!r}"]  # 36 images: 5 chunks of 8
    monkeypatch.setattr(predict, "CHUNK", 8)
    real_run_trunk, calls = trunk_cache.run_trunk, []

    def failing_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_run_trunk(*args, **kwargs)

    for stale in artifacts.out_path(cfg, "cache").glob("predict_*.npz"):
        stale.unlink()
    monkeypatch.setattr(trunk_cache, "run_trunk", failing_third)
    with pytest.raises(KeyboardInterrupt):
        predict.main(argv)
    assert len(list(artifacts.out_path(cfg, "cache").glob("predict_*.npz"))) == 2  # two finished chunks, nothing half
    calls.clear()
    monkeypatch.setattr(trunk_cache, "run_trunk", lambda *a, **k: (calls.append(1), real_run_trunk(*a, **k))[1])
    predict.main(argv)
    assert len(calls) == 3  # only the three unfinished chunks
    resumed = pd.read_csv(artifacts.out_path(cfg, "results", "predictions.csv"))
    for done in artifacts.out_path(cfg, "cache").glob("predict_*.npz"):
        done.unlink()
    calls.clear()
    predict.main(argv)
    assert len(calls) == 5
    pd.testing.assert_frame_equal(resumed, pd.read_csv(artifacts.out_path(cfg, "results", "predictions.csv")))


def test_missing_folder_and_missing_thresholds_say_what_to_do(novelty_ready, tiny_demo, tmp_path):
    cfg, argv = novelty_ready
    with pytest.raises(lab.LabError, match="--predict_dir=/path/to/sample"):
        predict.main(argv)
    with pytest.raises(lab.LabError, match="is not a folder"):
        predict.main(argv + [f"--predict_dir={str(tmp_path / 'nowhere')!r}"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(lab.LabError, match="No image files"):
        predict.main(argv + [f"--predict_dir={str(tmp_path / 'empty')!r}"])
    thresholds = artifacts.out_path(cfg, "results", "novelty_thresholds.json")
    saved = thresholds.read_text()
    retaria = f"--predict_dir={str(tiny_demo / 'Retaria')!r}"
    try:
        for changed, message in (
            ({"novelty_knn_k": 3}, "novelty_knn_k=3"),
            ({"knn_bank_digest": "0" * 16}, "kNN reference of"),
            ({"knn_bank_digest": None}, "earlier version"),
        ):
            thresholds.write_text(json.dumps({**json.loads(saved), **changed}))
            if changed.get("knn_bank_digest", "") is None:  # a file from before the reference was recorded
                older = {k: v for k, v in json.loads(saved).items() if k != "knn_bank_digest"}
                thresholds.write_text(json.dumps(older))
            with pytest.raises(lab.LabError, match=f"{message}.*Run `python novelty.py`"):
                predict.main(argv + [retaria])
        thresholds.write_text(saved)
        with pytest.raises(lab.LabError, match=r"not the 60 that novelty_bank_max=60 keeps \(pass --novelty_bank_max"):
            predict.main(argv + [retaria, "--novelty_bank_max=60"])  # a smaller reference than novelty.py's
        output_lock.release_locks()
        predict.main(argv + [retaria, "--novelty_bank_max=100000"])  # another cap that keeps the same reference
    finally:
        thresholds.write_text(saved)


PREDICT_FILES = (
    ("results", "predictions.csv"),
    ("results", "prediction_counts.csv"),
    ("results", "predict_skipped.csv"),
    ("results", "ecotaxa_predictions.tsv"),
    ("embeddings", "embeddings_predict.pkl"),
    ("embeddings", "embeddings_predict_meta.json"),
    ("results", "predict_manifest.json"),
)


def set_files(cfg):
    """The bytes of every file of predict.py's set that exists."""
    found = {}
    for kind, name in PREDICT_FILES:
        path = artifacts.out_path(cfg, kind, name)
        if path.exists():
            found[f"{kind}/{name}"] = path.read_bytes()
    return found


@pytest.fixture(scope="module")
def haul(novelty_ready, tiny_demo, tmp_path_factory):
    """One predict.py run (with --ecotaxa=True), in a copy of the trained output folder, on a haul holding three
    images, a file that does not decode and a text file: (config, the folder, its stdout, its stderr). Several
    tests read this one run."""
    cfg, argv = novelty_ready
    out = tmp_path_factory.mktemp("haul") / "out"
    shutil.copytree(artifacts.resolve(cfg.output_dir), out)
    argv = [a for a in argv if not a.startswith("--output_dir=")] + [f"--output_dir={str(out)!r}"]
    folder = sample(out.parent / "haul", class_images(tiny_demo, "Retaria", 3))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "notes.txt").write_text("CTD cast 7\n")
    stdout, stderr = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            predict.main(argv + [f"--predict_dir={str(folder)!r}", "--ecotaxa=True"])
    finally:
        output_lock.release_locks()
    return config.load_config(argv), folder, stdout.getvalue(), stderr.getvalue()


def test_a_predict_run_that_fails_while_saving_leaves_the_previous_complete_set(
    novelty_ready, tiny_demo, tmp_path, monkeypatch
):
    cfg, argv = novelty_ready
    a = sample(tmp_path / "A", class_images(tiny_demo, "Retaria", 6))
    b = sample(tmp_path / "B", class_images(tiny_demo, "chainthin", 2))
    predict.main(argv + [f"--predict_dir={str(a)!r}"])
    before = set_files(cfg)

    def disk_full(frame, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    with monkeypatch.context() as patched:
        patched.setattr(pd.DataFrame, "to_pickle", disk_full)  # the disk fills while the embeddings are saved
        with pytest.raises(
            lab.LabError,
            match=rf"the disk is full\. The previous complete set of predict.py's "
            rf"results \(the predictions of {re.escape(str(a))}\).*is intact",
        ):
            predict.main(argv + [f"--predict_dir={str(b)!r}"])
    assert set_files(cfg) == before  # A's CSV files, embeddings and manifest, all of them
    assert embedding_files.current_predict_set(cfg)["inputs"]["predict_dir"] == str(a)
    for key in before:  # no set at all before: nothing is left, and the message says so
        artifacts.out_path(cfg, *key.split("/")).unlink()
    with monkeypatch.context() as patched:
        patched.setattr(pd.DataFrame, "to_pickle", disk_full)
        with pytest.raises(lab.LabError, match="Nothing was written"):
            predict.main(argv + [f"--predict_dir={str(b)!r}"])
    assert set_files(cfg) == {}


def test_a_predict_run_removes_the_ecotaxa_table_of_the_sample_before(novelty_ready, tiny_demo, tmp_path):
    cfg, argv = novelty_ready
    x = sample(tmp_path / "X", class_images(tiny_demo, "Retaria", 4))
    y = sample(tmp_path / "Y", class_images(tiny_demo, "chainthin", 5))
    table = artifacts.out_path(cfg, "results", "ecotaxa_predictions.tsv")
    predict.main(argv + [f"--predict_dir={str(x)!r}", "--ecotaxa=True"])
    assert table.exists()
    predict.main(argv + [f"--predict_dir={str(y)!r}"])
    assert not table.exists(), "X's EcoTaxa table stayed beside Y's predictions"
    assert len(pd.read_csv(artifacts.out_path(cfg, "results", "predictions.csv"))) == 5


def test_names_that_are_not_utf8_are_classified_kept_as_their_bytes_and_left_out_of_ecotaxa(
    novelty_ready, tiny_demo, tmp_path, capsys
):
    cfg, argv = novelty_ready
    names = ["good.png", BAD_NAME, "caf\u00e9.png"]
    folder = sample(tmp_path / "old_zip", class_images(tiny_demo, "Retaria", 3), names)
    predict.main(argv + [f"--predict_dir={str(folder)!r}", "--ecotaxa=True"])
    raw = artifacts.out_path(cfg, "results", "predictions.csv").read_bytes()
    assert b"\nbad\xff\xfename.png," in raw and "\ncaf\u00e9.png,".encode() in raw  # the names' own bytes
    rows = artifacts.read_csv(artifacts.out_path(cfg, "results", "predictions.csv"), ("path", "predicted"))
    assert sorted(rows["path"]) == sorted(names)  # read back exactly
    assert (folder / rows["path"][rows["path"] == BAD_NAME].item()).is_file()
    tsv = artifacts.out_path(cfg, "results", "ecotaxa_predictions.tsv").read_text(encoding="utf-8")  # valid UTF-8
    assert "good.png" in tsv and "caf\u00e9.png" in tsv and "bad" not in tsv
    left_out = artifacts.read_csv(artifacts.out_path(cfg, "results", "ecotaxa_left_out.csv"), ("path", "reason"))
    assert list(left_out["path"]) == [BAD_NAME] and "convmv -f latin1 -t utf8 --notest" in left_out["reason"][0]
    err = capsys.readouterr().err
    assert "not valid UTF-8" in err and "convmv" in err and "bad\\xff\\xfename.png" in err


def test_predict_says_which_command_puts_the_new_images_on_the_map(haul):
    out = haul[2]
    assert "next: `python dimensionality_reduction.py` puts these images on the 2-D map" in out
    assert "`python report.py` shows them" in out


def test_an_unreadable_file_is_not_counted_as_an_image(haul):
    out = haul[2]  # three images, a file that does not decode, a text file
    assert not re.search(r"\b4 images\b", out), out
    assert "4 image files under" in out and "(1 other entry ignored)" in out
    assert "3 images classified" in out and "1 image file that could not be decoded and 1 other entry skipped" in out


def test_the_ecotaxa_table_says_why_its_columns_are_lower_case(haul):
    cfg, _, out, _ = haul
    assert (
        "lower case because EcoTaxa's import takes no other (object_p_rhabdonellidae is the class "
        "'Rhabdonellidae')" in out
    )
    header = artifacts.out_path(cfg, "results", "ecotaxa_predictions.tsv").read_text().splitlines()[0].split("\t")
    assert "object_p_rhabdonellidae" in header


def test_a_blank_predict_dir_is_quoted_as_given():
    with pytest.raises(lab.LabError, match=r"predict_dir=' ' names no folder"):
        config.load_config(["--predict_dir=' '"])
