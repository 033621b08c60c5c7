"""Trust: no command loses a user's data, no result is silently stale or mixed, through the scripts as a user
runs them (issue #8, and the folder issues #9.5, #9.6, #9.8 and #9.9)."""

import json
import shutil
import signal
import subprocess
import sys

import pandas as pd
import pytest
from conftest import FAST, lock_is_free, wait_for_epoch

import compute_average_distances
import dimensionality_reduction
import embed
import evaluate
import lab
import report
import train
import transfer_learning
from lab import (
    artifacts,
    checkpoint,
    config,
    demo_data,
    embedding_files,
    manifest,
    precision,
    splitting,
    trunk_cache,
)


def run_script(script, *argv, env=None):
    return subprocess.run([sys.executable, script, *argv], cwd=lab.ROOT, capture_output=True, text=True, env=env)


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def own_data(tiny_demo, tmp_path):
    """A user's data folder (a copy of the tiny demo set, without the demo marker)."""
    root = shutil.copytree(tiny_demo, tmp_path / "FlowCamNet" / "imgs")
    (root / demo_data.MARKER).unlink()
    return root


# ---------------------------------------------------------------- 1. never delete or write into a user's folder
@pytest.mark.slow
def test_demo_generator_never_touches_a_folder_it_did_not_make(own_data):
    before = snapshot(own_data)
    result = run_script("-m", "lab.demo_data", f"--data_root={str(own_data)!r}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "always writes into" in result.stderr and "drop --data_root" in result.stderr
    with pytest.raises(lab.LabError, match=r"was not made by the lab \(lab/demo_data.py\)"):
        demo_data.generate(own_data)
    with pytest.raises(lab.LabError, match=r"was not made by the lab \(lab/demo_data.py\)"):
        demo_data.generate(own_data.parent)  # nor any folder above it
    assert snapshot(own_data) == before


def test_the_demo_generator_replaces_only_its_own_folder(tmp_path):
    root = demo_data.generate(tmp_path / "demo", counts={"chainthin": 2, "Retaria": 2})
    assert (root / demo_data.MARKER).is_file()
    again = demo_data.generate(root, counts={"chainthin": 3, "Retaria": 3})  # ours: replaced
    assert len(list((again / "chainthin").iterdir())) == 3 and not (tmp_path / "demo.partial").exists()


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


def test_the_random_trunk_fallback_is_for_the_demo_folder_alone(tmp_path):
    lookalike = config.load_config([f"--data_root={str(tmp_path / 'data' / 'demo')!r}"])
    assert not demo_data.is_demo_root(lookalike)
    assert demo_data.is_demo_root(config.load_config([f"--data_root={str(demo_data.DEMO_ROOT)!r}"]))


# ---------------------------------------------------------------- a trained run on a user's copy of the data
@pytest.fixture
def trained_copy(own_data, tmp_path):
    argv = [
        f"--data_root={str(own_data)!r}",
        f"--output_dir={str(tmp_path / 'out')!r}",
        *FAST,
        "--epochs=3",
        "--reduction_method='pca'",
    ]
    train.main(argv)
    return config.load_config(argv), argv, own_data


def analyse_all(argv):
    embed.main(argv)
    compute_average_distances.main(argv)
    dimensionality_reduction.main(argv)
    transfer_learning.main(argv)


# ---------------------------------------------------------------- 2. a file that breaks after the split
@pytest.mark.slow
def test_a_file_broken_after_the_split_is_left_out_everywhere_and_listed_once(trained_copy):
    cfg, argv, root = trained_copy
    split = splitting.read_split_file(cfg)
    victims = [split[split["split"] == s]["path"].iloc[0] for s in ("test", "unseen")]
    originals = {v: (root / v).read_bytes() for v in victims}
    for v in victims:
        (root / v).write_bytes(originals[v][: len(originals[v]) // 3])  # truncated since the split was made
    metrics = evaluate.main(argv)
    analyse_all(argv)
    report.main(argv)
    skipped = splitting.read_skipped(cfg)
    assert sorted(skipped["path"]) == sorted(victims) and (skipped["stage"] == splitting.TRUNK_STAGE).all()
    assert metrics["n_test"] == (split["split"] == "test").sum() - 1
    for name in ("test", "unseen"):
        frame, _ = embedding_files.load_embeddings(cfg, name)
        assert not set(frame["path"]) & {str(root / v) for v in victims}
    for v, data in originals.items():  # repaired: it comes back, and leaves the list
        (root / v).write_bytes(data)
    assert evaluate.main(argv)["n_test"] == (split["split"] == "test").sum()
    embed.main(argv)
    assert set(splitting.read_skipped(cfg)["path"]) == set()


# ---------------------------------------------------------------- 3. no stale result, no mixed set
@pytest.mark.slow
def test_results_of_an_older_model_are_refused_and_the_report_names_what_to_rerun(trained_copy, capsys):
    cfg, argv, _ = trained_copy
    evaluate.main(argv)
    analyse_all(argv)
    page = report.main(argv).read_text()
    digest = manifest.artifact_digest(cfg, "checkpoints", "best.pth")
    assert digest in page
    train.main(argv + ["--lr=0.003"])  # a retrain: every later result is now stale
    assert manifest.artifact_digest(cfg, "checkpoints", "best.pth") != digest
    for script in (compute_average_distances, dimensionality_reduction, transfer_learning):
        with pytest.raises(lab.LabError, match=r"another model.*python embed.py"):
            script.main(argv)
    with pytest.raises(lab.LabError, match=r"embed, evaluate, novelty|embed, evaluate, compute_average_distances"):
        report.main(argv)  # everything that must be re-run, at once, in order
    embed.main(argv)
    compute_average_distances.main(argv)
    with pytest.raises(
        lab.LabError,
        match=r"evaluate, dimensionality_reduction, transfer_learning.*python "
        r"evaluate.py; python dimensionality_reduction.py",
    ):
        report.main(argv)
    evaluate.main(argv)
    dimensionality_reduction.main(argv)
    transfer_learning.main(argv)
    assert manifest.artifact_digest(cfg, "checkpoints", "best.pth") in report.main(argv).read_text()


def test_an_embeddings_set_cut_in_the_middle_is_refused(trained_copy):
    cfg, argv, _ = trained_copy
    embed.main(argv)
    test_file = artifacts.out_path(cfg, "embeddings", "embeddings_test.pkl")
    frame = pd.read_pickle(test_file)
    frame.iloc[:3].to_pickle(test_file)  # as if embed.py was killed after writing this file of a new set
    with pytest.raises(lab.LabError, match=r"does not belong to the embeddings set.*python embed.py"):
        compute_average_distances.main(argv)
    embed.main(argv)
    compute_average_distances.main(argv)


# ---------------------------------------------------------------- 4. the same trunk features for training and analysis
def test_later_scripts_use_the_trunk_precision_the_head_was_trained_on(own_data, tmp_path, monkeypatch):
    argv = [
        f"--data_root={str(own_data)!r}",
        f"--output_dir={str(tmp_path / 'out')!r}",
        *FAST,
        "--epochs=2",
        "--precision='auto'",
    ]
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: True)  # trained where bf16 is native
    train.main(argv)
    cfg = config.load_config(argv)
    assert checkpoint.load(artifacts.out_path(cfg, "checkpoints", "best.pth"))["trunk_precision"] == "bf16"
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: False)  # analysed where it is not
    evaluate.main(argv)
    embed.main(argv)
    cached = sorted(p.name for p in artifacts.out_path(cfg, "cache").glob("*.npy"))
    assert cached and all("_bf16_" in name for name in cached), cached  # no fp32 features, nothing rewritten
    meta = artifacts.out_path(cfg, "embeddings", "embeddings_meta.json")
    assert json.loads(meta.read_text())["trunk_precision"] == "bf16"


# ---------------------------------------------------------------- 5. resume refuses a changed split
def test_resume_refuses_a_changed_split_before_any_trunk_work(trained_copy, monkeypatch):
    cfg, argv, root = trained_copy
    shutil.copy(root / "Odontella" / "Odontella_0001.png", root / "Odontella" / "new.png")
    splitting.read_or_draw_split(config.load_config(argv + ["--rebuild_split=True"]))

    def no_trunk(*args, **kwargs):
        raise AssertionError("the trunk pass ran before the refusal")

    monkeypatch.setattr(trunk_cache, "run_trunk", no_trunk)
    with pytest.raises(lab.LabError, match="Cannot resume: results/split.csv has changed"):
        train.main(argv + ["--resume=True", "--epochs=6"])


# ---------------------------------------------------------------- 6. other settings draw their own split
def test_other_settings_draw_their_own_split_but_changed_files_are_refused(trained_copy, capsys):
    cfg, argv, root = trained_copy
    first = splitting.read_split_file(cfg)
    classes = "--seen_classes=['chainthin', 'darksphere', 'Odontella']"
    train.main(argv + [classes, "--epochs=1"])
    assert "seen_classes differ from the settings of results/split.csv: drawing" in capsys.readouterr().out
    assert set(splitting.read_split_file(cfg)["label"]) != set(first["label"])
    metrics = evaluate.main(argv)  # evaluates the model just trained, on its own split
    assert set(metrics["per_class"]) == {"chainthin", "darksphere", "Odontella"}
    (root / "Odontella" / "Odontella_0003.png").unlink()
    with pytest.raises(lab.LabError, match="no longer matches the files"):
        train.main(argv + [classes, "--epochs=1"])


# ---------------------------------------------------------------- 8. unexpected errors show their traceback
@pytest.mark.slow
def test_unexpected_errors_show_their_traceback_and_user_errors_one_paragraph(tmp_path):
    code = "from lab import runtime; runtime.run_main(lambda: {}['missing'])"
    result = subprocess.run([sys.executable, "-c", code], cwd=lab.ROOT, capture_output=True, text=True)
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr and "KeyError: 'missing'" in result.stderr
    assert "error: unexpected failure" in result.stderr
    user = run_script("evaluate.py", f"--output_dir={str(tmp_path)!r}")
    assert user.returncode == 2 and "Traceback" not in user.stderr and "python train.py" in user.stderr


# ---------------------------------------------------------------- #9.5 a repaired file comes back
def test_a_file_unreadable_at_the_scan_and_repaired_later_comes_back(make_cfg, own_data):
    good = (own_data / "darksphere" / "darksphere_0000.png").read_bytes()
    (own_data / "darksphere" / "broken.png").write_bytes(good[:100])
    cfg, argv = make_cfg(data_root=own_data)
    split = splitting.read_or_draw_split(cfg)
    assert "darksphere/broken.png" not in set(split["path"])
    splitting.read_or_draw_split(cfg)  # still broken: not a change
    (own_data / "darksphere" / "broken.png").write_bytes(good)
    with pytest.raises(
        lab.LabError,
        match=r"1 image\(s\) were added to .* \(1 of them unreadable before and "
        r"readable now\).*`python train.py` adds them",
    ):
        splitting.read_or_draw_split(cfg, grow=False)  # the scripts after training
    grown = splitting.read_or_draw_split(cfg).set_index("path")  # train.py, dataloader.py: it joins, the others stay
    assert grown.loc["darksphere/broken.png", "round"] == "1"
    assert grown.loc["darksphere/broken.png", "split"] == grown.loc["darksphere/darksphere_0000.png", "split"]
    assert (grown["round"] == "0").sum() == len(split)


# ---------------------------------------------------------------- #9.6 moved data
def test_moved_data_is_found_where_the_user_says_when_its_files_match(trained_copy, tmp_path, capsys):
    cfg, argv, root = trained_copy
    moved = tmp_path / "new_disk" / "imgs"
    shutil.move(root, moved)
    new_argv = [a for a in argv if not a.startswith("--data_root=")] + [f"--data_root={str(moved)!r}"]
    metrics = evaluate.main(new_argv)
    assert "the split's files are in" in capsys.readouterr().out and metrics["accuracy"] > 0.4
    (moved / "Odontella" / "Odontella_0005.png").write_bytes(b"other content, other size")
    with pytest.raises(lab.LabError, match="does not exist"):  # not the same files: the checkpoint's root is used
        evaluate.main(new_argv)


# ---------------------------------------------------------------- #9.8 two runs on one output folder
@pytest.mark.slow
def test_a_second_run_on_the_same_output_folder_refuses_and_a_dead_runs_lock_is_taken_over(make_cfg):
    cfg, argv = make_cfg("--epochs=1000", "--patience=1000", "--batch_size=8")
    first = subprocess.Popen(
        [sys.executable, "train.py", *argv], cwd=lab.ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for_epoch(cfg, 1, first)
        second = run_script("train.py", *argv)
        assert second.returncode == 2 and f"pid {first.pid}" in second.stderr and "own --output_dir" in second.stderr
        other = run_script("evaluate.py", *argv)
        assert other.returncode == 2 and "Another run of the lab" in other.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    (artifacts.out_path(cfg, "cache") / "trunk_train_fp32_0123456789abcdef.npy.tmp999999").write_bytes(b"x" * 1000)
    (artifacts.out_path(cfg, "results") / ".split.tmp999999.csv").write_text("half")
    third = run_script("evaluate.py", *argv)
    assert third.returncode == 0, third.stderr
    assert "taking over the lock of an earlier run that is gone" in third.stderr
    assert "temporary file(s)" in third.stdout and "left by an interrupted run" in third.stdout
    assert not list(artifacts.out_path(cfg, "cache").glob("*.tmp*"))
    assert not list(artifacts.out_path(cfg, "results").glob(".*tmp*"))
    assert lock_is_free(artifacts.resolve(cfg.output_dir))  # released at the end of the run


# ---------------------------------------------------------------- #9.9 a retrain that diverges at once
def test_a_retrain_that_diverges_at_once_does_not_leave_the_previous_model_as_its_own(trained_copy):
    cfg, argv, _ = trained_copy
    previous = artifacts.out_path(cfg, "checkpoints", "best.pth").read_bytes()
    with pytest.raises(lab.LabError, match=r"no model was saved \(the previous run's checkpoints.*previous/"):
        train.main(argv + ["--lr=1e12"])
    assert not artifacts.out_path(cfg, "checkpoints", "best.pth").exists()
    assert (artifacts.out_path(cfg, "checkpoints") / "previous" / "best.pth").read_bytes() == previous  # kept, not lost
    for where in (("results", "train_history.csv"), ("figs", "training_plot.png")):  # no stale summary either
        assert not artifacts.out_path(cfg, *where).exists()
        assert (artifacts.out_path(cfg, "checkpoints") / "previous" / where[1]).stat().st_size > 0
    with pytest.raises(lab.LabError, match="does not exist yet.*python train.py"):
        evaluate.main(argv)
