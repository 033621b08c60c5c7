"""One run, one story (issue #18): what the report and predict.py show or join together comes from one run, proven
by digests; multi-file outputs are all or nothing; file names that are not UTF-8, a lock being written, degenerate
embeddings and damaged JSON never crash a script. One test per case of the issue (and per bullet of its case 8)."""

import contextlib
import errno
import io
import json
import os
import re
import shutil
import textwrap
import time

import filelock
import numpy as np
import pandas as pd
import pytest
from conftest import FAST, lock_is_free

import dataloader
import dimensionality_reduction
import lab
import predict
import report
from lab import artifacts, checkpoint, config, embedding_files, interactive_map, output_lock, splitting
from lab import novelty_scores as ns

BAD_NAME = os.fsdecode(b"bad\xff\xfename.png")  # Latin-1 bytes, as an old zip or a Windows archive leaves them


def sample(folder, images, names=None):
    """A folder of new images: copies of `images`, named `names` (img_0000.png ... by default)."""
    folder.mkdir(parents=True)
    for i, source in enumerate(images):
        shutil.copy(source, folder / (names[i] if names else f"img_{i:04d}.png"))
    return folder


def class_images(root, cls, n, skip=0):
    return sorted((root / cls).iterdir())[skip : skip + n]


def pipeline_copy(tiny_pipeline, tmp_path):
    """(cfg, argv) of a copy of the tiny pipeline's output folder, which the test may change."""
    cfg, argv, _ = tiny_pipeline
    out = tmp_path / "out"
    shutil.copytree(artifacts.resolve(cfg.output_dir), out)
    argv = [a for a in argv if not a.startswith("--output_dir=")] + [f"--output_dir={str(out)!r}"]
    return config.load_config(argv), argv


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


def captured_map_points(monkeypatch):
    """The points report.py hands to the interactive map, captured as it builds the page."""
    captured, build_map = [], interactive_map.build_map
    monkeypatch.setattr(
        interactive_map, "build_map", lambda points, *a, **k: (captured.append(points), build_map(points, *a, **k))[1]
    )
    return captured


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


# --------------------------------------------------------------------------- 1. the map mixes two samples
@pytest.mark.slow
def test_1_the_map_never_shows_one_samples_points_with_anothers_predictions(
    tiny_pipeline, tiny_demo, tmp_path, monkeypatch
):
    cfg, argv = pipeline_copy(tiny_pipeline, tmp_path)
    a = sample(tmp_path / "A", class_images(tiny_demo, "Retaria", 12))
    b = sample(tmp_path / "B", class_images(tiny_demo, "chainthin", 12))  # the same file names, other images
    predict.main(argv + [f"--predict_dir={str(a)!r}"])
    dimensionality_reduction.main(argv + ["--reduction_method=pca"])
    predict.main(argv + [f"--predict_dir={str(b)!r}"])
    captured = captured_map_points(monkeypatch)
    page = report.main(argv).read_text()
    points = captured[-1]
    assert (points["split"] == "predict").sum() == 0, points[points["split"] == "predict"][["file", "prediction"]]
    assert "python dimensionality_reduction.py" in page and str(b) in page  # the line naming the command
    dimensionality_reduction.main(argv + ["--reduction_method=pca"])
    report.main(argv)
    mapped = captured[-1][captured[-1]["split"] == "predict"].set_index("file")
    rows = artifacts.read_csv(artifacts.out_path(cfg, "results", "predictions.csv"), ("path", "predicted"))
    assert len(mapped) == len(rows) == 12
    for _, row in rows.iterrows():  # every point carries the prediction of its own file of B
        assert f"<b>{row['predicted']}</b>" in mapped.loc[row["path"], "prediction"]
        assert mapped.loc[row["path"], "colour_class"] == row["predicted"]


# --------------------------------------------------------------------------- 2. a failed predict.py
def test_2_a_predict_run_that_fails_while_saving_leaves_the_previous_complete_set(
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


def test_2_a_set_cut_while_being_published_is_no_set_and_says_nothing_is_left(make_cfg, monkeypatch):
    from lab import manifest

    cfg, _ = make_cfg()
    with manifest.OutputSet(cfg, "demo_set", about="the first") as out:
        out.save_csv("results", "a.csv", pd.DataFrame({"x": [1]}))
        out.save_csv("results", "b.csv", pd.DataFrame({"x": [2]}))
        out.publish(source="first")
    assert manifest.complete(cfg, "demo_set")["about"] == "the first"
    real_replace, moved = os.replace, []

    def fail_second(src, dst):
        moved.append(dst)
        if len(moved) == 2:
            raise OSError(errno.EIO, "Input/output error")
        return real_replace(src, dst)

    monkeypatch.setattr(manifest.os, "replace", fail_second)
    with pytest.raises(lab.LabError, match=r"holds none of them \(nothing\)"):
        with manifest.OutputSet(cfg, "demo_set", about="the second") as out:
            out.save_csv("results", "a.csv", pd.DataFrame({"x": [3]}))
            out.save_csv("results", "b.csv", pd.DataFrame({"x": [4]}))
            out.publish(source="second")
    monkeypatch.undo()
    assert manifest.check(cfg, "demo_set") == (None, "results/demo_set_manifest.json does not exist")
    assert not list(artifacts.out_path(cfg, "results").glob(".*tmp*"))  # no temporary file left behind


def test_2_a_single_file_and_a_sets_file_fail_on_a_full_disk_alike_and_leave_no_temporary(make_cfg):
    """One atomic write (artifacts.stage / replace_whole) behind every writer, one message for a full disk."""
    from lab import manifest

    cfg, _ = make_cfg()
    target = artifacts.out_path(cfg, "results", "a.csv")
    artifacts.save_csv(target, pd.DataFrame({"x": [1]}))

    def disk_fills(path):
        with open(path, "w") as f:
            f.write("x\n")  # half of it
        raise OSError(errno.ENOSPC, "No space left on device")

    saving = rf"Could not save {re.escape(str(target))}: the disk is full\. "
    with pytest.raises(lab.LabError, match=saving + r"The previous version is intact\. .*run the script again\.$"):
        artifacts.atomic_write(target, disk_fills)
    with pytest.raises(lab.LabError, match=saving + r"Nothing was written: .*run `python demo_set.py` again\.$"):
        with manifest.OutputSet(cfg, "demo_set") as out:
            out.write("results", "a.csv", disk_fills)
    assert target.read_text() == "x\n1\n"
    assert [p.name for p in target.parent.iterdir()] == ["a.csv"]  # no temporary file left behind


# --------------------------------------------------------------------------- 3. the checkpoint's run, not the settings
def section(page, number):
    return page.split(f"<h2>{number}. ")[1].split("<h2>")[0]


@pytest.mark.slow
def test_3_the_report_describes_the_checkpoints_split_and_data_root(tiny_pipeline, tiny_demo, tmp_path):
    cfg, argv = pipeline_copy(tiny_pipeline, tmp_path)
    dataloader.main(argv + ["--seen_classes=['chainthin', 'darksphere', 'Odontella']", "--max_images_per_class=20"])
    page = report.main(argv).read_text()
    data = section(page, 1)
    assert "Left out" in data and "python dataloader.py" in data and "--max_images_per_class=0" in data, data
    assert "<table" not in data and "Rhabdonellidae" in section(page, 3)  # the 6-class model's test set
    dataloader.main(argv)  # the command's settings: the model's split again, byte for byte
    assert "Rhabdonellidae" in section(report.main(argv).read_text(), 1)
    other = shutil.copytree(tiny_demo, tmp_path / "other")
    (other / "Odontella" / "Odontella_0003.png").unlink()  # another folder: not the files the model saw
    with pytest.raises(lab.LabError, match=r"does not hold the files that checkpoints/best.pth was trained on"):
        report.main(argv + [f"--data_root={str(other)!r}"])
    moved = shutil.copytree(tiny_demo, tmp_path / "moved")
    page = report.main(argv + [f"--data_root={str(moved)!r}"]).read_text()
    assert f"Data root <code>{tiny_demo}</code>; images read from <code>{moved}</code> (same files)" in page


# --------------------------------------------------------------------------- 4. a stale EcoTaxa table
def test_4_a_predict_run_removes_the_ecotaxa_table_of_the_sample_before(novelty_ready, tiny_demo, tmp_path):
    cfg, argv = novelty_ready
    x = sample(tmp_path / "X", class_images(tiny_demo, "Retaria", 4))
    y = sample(tmp_path / "Y", class_images(tiny_demo, "chainthin", 5))
    table = artifacts.out_path(cfg, "results", "ecotaxa_predictions.tsv")
    predict.main(argv + [f"--predict_dir={str(x)!r}", "--ecotaxa=True"])
    assert table.exists()
    predict.main(argv + [f"--predict_dir={str(y)!r}"])
    assert not table.exists(), "X's EcoTaxa table stayed beside Y's predictions"
    assert len(pd.read_csv(artifacts.out_path(cfg, "results", "predictions.csv"))) == 5


# --------------------------------------------------------------------------- 5. file names that are not UTF-8
def test_5_names_that_are_not_utf8_are_classified_kept_as_their_bytes_and_left_out_of_ecotaxa(
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


def test_5_a_class_folder_with_a_name_that_is_not_utf8_is_split_and_written_reversibly(tiny_demo, tmp_path, make_cfg):
    root = shutil.copytree(tiny_demo, tmp_path / "data")
    shutil.copy(root / "Odontella" / "Odontella_0000.png", root / "Odontella" / BAD_NAME)
    cfg, _ = make_cfg(data_root=root)
    split = splitting.read_or_draw_split(cfg)
    assert f"Odontella/{BAD_NAME}" in set(split["path"])
    assert b"Odontella/bad\xff\xfename.png," in artifacts.out_path(cfg, "results", "split.csv").read_bytes()
    assert f"Odontella/{BAD_NAME}" in set(splitting.read_split_file(cfg)["path"])  # read back the same
    duplicates = artifacts.read_csv(artifacts.out_path(cfg, "results", "duplicates.csv"), ("path", "label"))
    assert f"Odontella/{BAD_NAME}" in set(duplicates["path"])  # a copy of Odontella_0000.png


@pytest.mark.slow
def test_5_names_that_are_not_utf8_go_through_the_whole_pipeline_and_the_report(tiny_demo, tmp_path):
    import run_pipeline

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


# --------------------------------------------------------------------------- 6. the output-folder lock
def test_6_a_second_run_arriving_before_the_first_names_itself_is_refused_not_let_in(make_cfg, monkeypatch):
    """Deterministic race: a second run arrives after the first took the lock but before it wrote the record that
    names it. The operating system's lock decides, not the record: exactly one of them holds the folder."""
    cfg, _ = make_cfg()
    folder = artifacts.resolve(cfg.output_dir)
    lock = folder / output_lock.LOCK_NAME
    monkeypatch.setattr(output_lock, "WAIT_S", 0.2)
    real_write, refused = output_lock._write_owner, []

    def second_run_arrives(*args):
        first = output_lock._held.pop(lock)  # the second run is another process: it does not hold the lock
        try:
            artifacts.ensure_output_dirs(cfg, ("results",))
        except lab.LabError as exc:
            refused.append(str(exc))
        output_lock._held[lock] = first
        real_write(*args)

    monkeypatch.setattr(output_lock, "_write_owner", second_run_arrives)
    artifacts.ensure_output_dirs(cfg, ("results",))  # the first run
    assert len(refused) == 1 and "Another run of the lab is writing into" in refused[0]
    assert "a run that has not said which (there is no record of it yet" in refused[0]
    assert json.loads((folder / output_lock.OWNER_NAME).read_text())["pid"] == os.getpid()  # the first run's
    output_lock.release_locks()
    assert lock_is_free(folder)


@pytest.mark.parametrize("content", [b"", b"[1]", b"5", b'"text"', b'{"pid": "12"}', b"\x00garbage{"])
def test_6_garbage_in_the_lock_file_or_its_record_never_crashes_a_run(make_cfg, content, capsys, monkeypatch):
    cfg, argv = make_cfg()
    folder = artifacts.resolve(cfg.output_dir)
    folder.mkdir(parents=True)
    past_the_lock = r"checkpoint .*does not exist yet"  # report.py went on: there is no model in this folder
    (folder / output_lock.LOCK_NAME).write_bytes(content)  # the lock file's content means nothing to the lock
    with pytest.raises(lab.LabError, match=past_the_lock):
        report.main(argv)
    assert "[lock]" not in capsys.readouterr().err
    output_lock.release_locks()

    (folder / output_lock.OWNER_NAME).write_bytes(content)  # a record that no run removed: a killed run's
    with pytest.raises(lab.LabError, match=past_the_lock):
        report.main(argv)
    err = capsys.readouterr().err
    assert "[lock] taking over the lock of an earlier run that is gone (its record names no run" in err
    assert json.loads((folder / output_lock.OWNER_NAME).read_text())["pid"] == os.getpid()
    output_lock.release_locks()

    (folder / output_lock.OWNER_NAME).write_bytes(content)
    monkeypatch.setattr(output_lock, "WAIT_S", 0.2)
    with filelock.FileLock(folder / output_lock.LOCK_NAME):  # held by a run whose record is garbage
        with pytest.raises(lab.LabError, match=r"Another run .*a run that has not said which \(its record names no"):
            report.main(argv)


def test_6_a_file_system_that_refuses_locks_stops_the_run_with_a_clear_error(make_cfg, monkeypatch):
    import filelock._native._unix as native

    def no_lock_service(fd):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))  # as NFS says when lockd is not running

    cfg, argv = make_cfg()
    monkeypatch.setattr(native, "lock_fd_nonblocking", no_lock_service)
    with pytest.raises(lab.LabError, match=r"The file system of the output folder .* cannot lock files .*local disk"):
        report.main(argv)
    assert not output_lock._held


# A lab run reduced to its lock, in a process of its own: it claims the folder at the moment GO, says whether it
# took it, and holds it until it is killed. FLOCK=no takes flock away, as on a file system that lacks it (ENOSYS).
CLAIMANT = textwrap.dedent("""
    import errno, os, sys, time
    from pathlib import Path
    if os.environ["FLOCK"] == "no":
        import filelock._native._unix as native
        def no_flock(fd):
            raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))
        native.lock_fd_nonblocking = no_flock
    import lab
    from lab import output_lock
    while time.time() < float(os.environ["GO"]):
        pass
    try:
        output_lock.claim(Path(os.environ["FOLDER"]))
    except lab.LabError as exc:
        print("refused:", exc, flush=True)
        sys.exit(2)
    print("took", flush=True)
    time.sleep(600)
""")


@pytest.mark.slow
@pytest.mark.parametrize("flock", ["yes", "no"])
def test_6_of_runs_racing_for_a_folder_one_takes_it_and_a_killed_ones_is_taken_over(tmp_path, flock):
    import subprocess
    import sys

    def start(go):
        env = {**os.environ, "FOLDER": str(tmp_path), "GO": str(go), "FLOCK": flock, "PYTHONPATH": str(lab.ROOT)}
        return subprocess.Popen(
            [sys.executable, "-c", CLAIMANT], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    racers = [start(time.time() + 5) for _ in range(6)]  # all started before GO, so they claim at the same moment
    try:
        said = {proc.pid: proc.stdout.readline() for proc in racers}
        holders = [pid for pid, line in said.items() if line.startswith("took")]
        assert len(holders) == 1, said
        for proc in racers:
            if proc.pid != holders[0]:
                assert proc.wait(timeout=60) == 2 and f"pid {holders[0]} on " in said[proc.pid], said[proc.pid]
    finally:
        for proc in racers:
            proc.kill()  # SIGKILL: the holder is killed as the out-of-memory killer would
            proc.communicate()
    late = start(0)
    try:
        assert late.stdout.readline().startswith("took")
    finally:
        late.kill()
        _, err = late.communicate()
    assert f"[lock] taking over the lock of an earlier run that is gone (-c, pid {holders[0]}, started" in err
    assert ("has no flock" in err) == (flock == "no")


# --------------------------------------------------------------------------- 7. degenerate inputs of the scorer
@pytest.mark.parametrize("value", [0.0, 0.7])
def test_7_identical_or_all_zero_training_embeddings_give_finite_novelty_scores(value):
    train = np.full((30, 8), value)
    labels = np.repeat([0, 1, 2], 10)
    gaussians = ns.Gaussians(train, labels)
    assert gaussians.degenerate
    queries = np.random.default_rng(0).normal(size=(5, 8))
    expected = np.sqrt(((queries - value) ** 2).sum(1))  # no spread: the Euclidean distance to the (one) mean
    assert gaussians.mahalanobis(queries) == pytest.approx(expected)
    scorer = ns.NoveltyScorer(train, labels, np.ones((3, 8)), np.zeros(3), 5, np.full((4, 8), value))
    scores = scorer.scores(queries)
    assert all(np.isfinite(v).all() for v in scores.values())
    assert not ns.Gaussians(np.random.default_rng(1).normal(size=(30, 8)), labels).degenerate


def test_7_a_damaged_thresholds_file_is_one_paragraph_naming_novelty_py(novelty_ready):
    cfg, _ = novelty_ready
    trained = checkpoint.load_trained(cfg, model=False, split=False)
    scorer = ns.scorer_from_artifacts(trained.cfg, trained.ckpt, trained.digest)
    path = artifacts.out_path(cfg, "results", "novelty_thresholds.json")
    saved = path.read_text()
    try:
        for damage in ('{"thresholds": {"msp": 0.', "[1]", '{"thresholds": 3}'):  # cut short, not an object, edited
            path.write_text(damage)
            with pytest.raises(lab.LabError, match=r"novelty_thresholds.json is damaged.*python novelty.py"):
                ns.load_thresholds(trained.cfg, trained.digest, scorer)  # what predict.py reads them with
    finally:
        path.write_text(saved)
    assert ns.load_thresholds(trained.cfg, trained.digest, scorer)["thresholds"]


# --------------------------------------------------------------------------- 8. small ones
def test_8_the_tooltip_of_a_predicted_image_shows_its_novelty_score_and_flag(tiny_demo, tmp_path):
    new = sample(tmp_path / "new", class_images(tiny_demo, "Retaria", 2))
    paths = [str(new / "img_0000.png"), str(new / "img_0001.png")]
    coords = pd.DataFrame({"split": "predict", "label": None, "path": paths, "x": [0.0, 1.0], "y": 0.0})
    predictions = pd.DataFrame(
        {
            "path": paths,
            "predicted": ["Odontella", "chainthin"],
            "probability": [0.8, 0.6],
            "novelty_mahalanobis_knn": [2.5, -0.25],
            "possibly_new": [True, False],
        }
    )
    points = interactive_map.map_points(coords, None, predictions).set_index("file")
    assert "<b>possibly new</b>: novelty mahalanobis_knn = 2.5" in points.loc["img_0000.png", "prediction"]
    assert "not flagged as new: novelty mahalanobis_knn = -0.25" in points.loc["img_0001.png", "prediction"]


def test_8_predict_says_which_command_puts_the_new_images_on_the_map(haul):
    out = haul[2]
    assert "next: `python dimensionality_reduction.py` puts these images on the 2-D map" in out
    assert "`python report.py` shows them" in out


@pytest.mark.slow
@pytest.mark.parametrize(
    "figure, message",
    [
        ("novelty_roc.png", r"novelty: figs/novelty_roc.png is missing.*python novelty.py"),
        ("gallery_Odontella.png", r"gallery_Odontella.png is missing.*python dimensionality_reduction.py"),
    ],
)
def test_8_a_missing_figure_stops_the_report_naming_the_script_that_makes_it(tiny_pipeline, tmp_path, figure, message):
    cfg, argv = pipeline_copy(tiny_pipeline, tmp_path)
    artifacts.out_path(cfg, "figs", figure).unlink()
    with pytest.raises(lab.LabError, match=message):
        report.main(argv)


def test_8_an_unreadable_file_is_not_counted_as_an_image(haul):
    out = haul[2]  # three images, a file that does not decode, a text file
    assert not re.search(r"\b4 images\b", out), out
    assert "4 image files under" in out and "(1 other entry ignored)" in out
    assert "3 images classified" in out and "1 image file that could not be decoded and 1 other entry skipped" in out


def test_8_the_ecotaxa_table_says_why_its_columns_are_lower_case(haul):
    cfg, _, out, _ = haul
    assert (
        "lower case because EcoTaxa's import takes no other (object_p_rhabdonellidae is the class "
        "'Rhabdonellidae')" in out
    )
    header = artifacts.out_path(cfg, "results", "ecotaxa_predictions.tsv").read_text().splitlines()[0].split("\t")
    assert "object_p_rhabdonellidae" in header


def test_8_a_blank_predict_dir_is_quoted_as_given():
    with pytest.raises(lab.LabError, match=r"predict_dir=' ' names no folder"):
        config.load_config(["--predict_dir=' '"])
