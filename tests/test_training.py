"""Training, evaluation, checkpoints, and the faults a long run meets (crash, Ctrl-C, divergence, full disk): a file
broken after the split left out of every later stage and listed once, later scripts using the trunk precision and
finding the data where the checkpoint's files are, a resume that refuses a changed split, and a retrain that diverges
at once keeping the previous model aside."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import FAST, analyse_all, wait_for_epoch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

import embed
import evaluate
import lab
import report
import train
from lab import (
    artifacts,
    checkpoint,
    config,
    embedding_files,
    head_training,
    manifest,
    output_lock,
    precision,
    splitting,
    trunk_cache,
)


@pytest.fixture(scope="module")
def trained(tiny_demo, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    argv = [f"--data_root={str(tiny_demo)!r}", f"--output_dir={str(out)!r}", *FAST]
    history = train.main(argv)
    return config.load_config(argv), argv, history


def test_training_learns_well_above_chance_and_keeps_the_best_epoch(trained):
    cfg, argv, history = trained
    best = min(history, key=lambda h: h["val_loss"])
    # 6 classes, chance 1/6. Training accuracy on ~160 images is the firm check (0.6 by chance: p < 1e-36); the 12
    # validation images only confirm it (6 right by chance: p < 0.01), as their accuracy moves with every seed
    assert best["train_acc"] > 0.6 and best["val_acc"] >= 0.5
    ckpt = checkpoint.load(artifacts.out_path(cfg, "checkpoints", "best.pth"))
    assert ckpt["epoch"] == best["epoch"] and ckpt["classes"] == cfg.seen_classes
    assert ckpt["config"]["image_size"] == 64 and ckpt["weights"].startswith("RANDOM")
    assert artifacts.out_path(cfg, "figs", "training_plot.png").stat().st_size > 1000
    assert len(open(artifacts.out_path(cfg, "results", "train_history.csv")).readlines()) == len(history) + 1


def test_first_epoch_is_saved_when_it_is_the_best(make_cfg):
    cfg, argv = make_cfg("--epochs=1")
    train.main(argv)
    assert checkpoint.load(artifacts.out_path(cfg, "checkpoints", "best.pth"))["epoch"] == 1


@pytest.mark.parametrize("native", [True, False])
def test_the_head_trains_in_bf16_only_where_the_hardware_has_it(native, monkeypatch):
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert precision.head_dtype("auto", cpu) == (torch.bfloat16 if native else None)
    assert precision.head_dtype("fp32", cpu) is None and precision.head_dtype("bf16", cpu) == torch.bfloat16


def test_a_bf16_head_learns_as_well_and_the_checkpoint_says_so(make_cfg, monkeypatch):
    seen = []
    real_autocast = torch.autocast

    def recording_autocast(device_type, dtype=None, **kwargs):
        seen.append(dtype)
        return real_autocast(device_type, dtype=dtype, **kwargs)

    monkeypatch.setattr(train.torch, "autocast", recording_autocast)
    cfg, argv = make_cfg("--head_precision='bf16'", "--epochs=6")
    history = train.main(argv)
    assert seen and set(seen) == {torch.bfloat16}  # every training and validation batch ran under bf16 autocast
    assert max(h["train_acc"] for h in history) > 0.6 and max(h["val_acc"] for h in history) >= 0.5  # as above
    for name in ("best.pth", "last.pth"):
        assert checkpoint.load(artifacts.out_path(cfg, "checkpoints", name))["head_precision"] == "bf16"
    cfg32, argv32 = make_cfg("--head_precision='fp32'", "--epochs=1", output_dir=cfg.output_dir + "-fp32")
    seen.clear()
    train.main(argv32)
    assert not seen
    assert checkpoint.load(artifacts.out_path(cfg32, "checkpoints", "best.pth"))["head_precision"] == "fp32"


def test_checkpoint_round_trip_rebuilds_the_same_model(trained):
    cfg, argv, _ = trained
    ckpt = checkpoint.load(artifacts.out_path(cfg, "checkpoints", "best.pth"))
    model = checkpoint.model_from_checkpoint(ckpt, checkpoint.config_from_checkpoint(ckpt, cfg))
    again = checkpoint.model_from_checkpoint(ckpt, checkpoint.config_from_checkpoint(ckpt, config.load_config([])))
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(model(x), again(x)):
            assert torch.equal(a, b)
    assert all(torch.equal(v, ckpt["model_state"][k]) for k, v in model.state_dict().items())


def test_the_checkpoint_says_whether_its_trunk_is_random_and_older_checkpoints_still_load(trained, tmp_path):
    cfg, argv, _ = trained
    ckpt = checkpoint.load(artifacts.out_path(cfg, "checkpoints", "best.pth"))
    assert ckpt["random_trunk"] is True and checkpoint.random_trunk(ckpt)
    assert not checkpoint.random_trunk({**ckpt, "random_trunk": False})
    older = tmp_path / "older"  # as saved before the flag existed: the weights' description alone tells
    shutil.copytree(artifacts.out_path(cfg, "results"), older / "results")
    (older / "checkpoints").mkdir()
    del ckpt["random_trunk"]
    torch.save(ckpt, older / "checkpoints" / "best.pth")
    loaded = checkpoint.load_trained(config.load_config([*argv, f"--output_dir={str(older)!r}"]))
    assert loaded.random_trunk
    assert len(loaded.split) == len(pd.read_csv(artifacts.out_path(cfg, "results", "split.csv")))
    state = loaded.model.state_dict()  # the checkpoint's weights, every one of them
    assert set(state) == set(ckpt["model_state"])
    assert all(torch.equal(state[name].cpu(), tensor.cpu()) for name, tensor in ckpt["model_state"].items())
    assert loaded.digest == manifest.artifact_digest(loaded.cfg, "checkpoints", "best.pth")
    imagenet = {**ckpt, "weights": "torchvision EfficientNet_V2_S_Weights.IMAGENET1K_V1"}
    assert not checkpoint.random_trunk(imagenet)


def test_evaluation_is_above_chance_and_its_metrics_equal_sklearns(trained):
    cfg, argv, _ = trained
    metrics = evaluate.main(argv)
    # chance is 1/6; 21 or more of 42 right by chance has p < 1e-6 (binomial). Not higher: on this tiny random-trunk
    # set the accuracy moves with the seed and the last bits of arithmetic (0.57 to 0.93 over seeds 0-3 and 42)
    assert metrics["accuracy"] >= 0.5 and metrics["n_test"] == 6 * round(36 * 0.2)
    assert artifacts.out_path(cfg, "figs", "confusion_matrix.png").exists()
    predictions = pd.read_csv(artifacts.out_path(cfg, "results", "test_predictions.csv"))
    assert list(predictions.columns) == ["path", "label", "predicted", "probability", "correct"]
    # the softmax of the predicted (most likely) class: never below 1 / classes, never above 1
    assert predictions["probability"].between(1 / 6, 1).all() and predictions["probability"].nunique() > 1
    assert predictions.loc[predictions["correct"], "probability"].mean() > 1 / 6 + 0.1
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.integers(0, 5, 300), rng.integers(0, 5, 300)
    y_pred[y_pred == 4] = 3  # a class never predicted
    m = evaluate.metrics_from_confusion(evaluate.confusion_matrix(y_true, y_pred, 5), list("abcde"))
    assert m["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro", zero_division=0))


def test_later_scripts_use_the_checkpoints_config_and_say_so(trained, capsys):
    cfg, argv, _ = trained
    evaluate.main(argv + ["--image_size=128", "--seen_classes=['a', 'b']"])
    out = capsys.readouterr().out
    assert "using the checkpoint's image_size=64" in out and "using the checkpoint's seen_classes" in out


def test_missing_and_foreign_checkpoints_are_clear_errors(make_cfg, trained):
    cfg, argv = make_cfg()
    with pytest.raises(lab.LabError, match=r"does not exist yet.*python train.py"):
        evaluate.main(argv)
    with pytest.raises(lab.LabError, match=r"does not exist yet.*python embed.py"):
        embedding_files.load_embeddings(cfg, "test")
    path = artifacts.out_path(cfg, "checkpoints", "best.pth")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00garbage")
    with pytest.raises(lab.LabError, match="damaged or not a file made by this lab"):
        evaluate.main(argv)
    torch.save({"state_dict": {}}, path)
    with pytest.raises(lab.LabError, match="not a checkpoint made by this lab"):
        evaluate.main(argv)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"format": "plankton-lab-checkpoint/1", "x": Evil()}, path)
    with pytest.raises(lab.LabError, match="cannot be read"):  # weights_only refuses arbitrary objects
        checkpoint.load(path)


def test_divergence_stops_with_a_message(make_cfg, own_defaults):
    own_defaults({"lr = 0.0014": "lr = 0.003"})  # the default the message quotes is the defaults file's
    cfg, argv = make_cfg("--lr=1e12", "--epochs=6")
    with pytest.raises(
        lab.LabError,
        match=r"diverged in epoch 1.*no model was saved.*Lower the learning rate \(the default is 0\.003\)",
    ):
        train.main(argv)
    assert not artifacts.out_path(cfg, "checkpoints", "best.pth").exists()  # nothing diverged is ever saved as best


def test_unwritable_output_folder_fails_before_work(make_cfg, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    cfg, argv = make_cfg(output_dir=blocker / "out")
    with pytest.raises(lab.LabError, match="Cannot write to the output folder"):
        train.main(argv)


def test_full_disk_during_a_save_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "best.pth"
    checkpoint.save(path, {"format": "plankton-lab-checkpoint/1", "v": torch.ones(3)})

    def full_disk(obj, f, *a, **k):
        open(f, "wb").write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(lab.LabError, match="disk is full.*previous version is intact"):
        checkpoint.save(path, {"format": "plankton-lab-checkpoint/1", "v": torch.zeros(3)})
    monkeypatch.undo()
    assert torch.equal(checkpoint.load(path)["v"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["best.pth"]  # no temporary left behind


# ---------------------------------------------------------------- subprocess faults: kill -9 and Ctrl-C
def _as_in_a_terminal():
    """A shell runs background jobs with SIGINT ignored, and Python keeps it so: pytest started with `&` would
    hand its children a deaf ear to Ctrl-C. A user's foreground train.py has the default disposition."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(argv):
    return subprocess.Popen(
        [sys.executable, "train.py", *argv],
        cwd=lab.ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_as_in_a_terminal,
    )


def test_the_same_seed_trains_the_same_model_whether_the_trunk_cache_was_cold_or_warm(make_cfg):
    cfg, argv = make_cfg("--epochs=3", "--patience=100", "--num_workers=1")
    train.main(argv)  # cold: computes the trunk cache (a DataLoader with a worker)
    output_lock.release_locks()
    train.main(argv)  # warm: reads it; the first run's checkpoints go to checkpoints/previous/
    cold = checkpoint.load(artifacts.out_path(cfg, "checkpoints") / "previous" / "last.pth")
    warm = checkpoint.load(artifacts.out_path(cfg, "checkpoints", "last.pth"))
    assert cold["epoch"] == warm["epoch"] == 3
    for k in cold["model_state"]:
        assert torch.equal(cold["model_state"][k], warm["model_state"][k]), k


def test_previous_run_folder_never_mixes_two_runs(make_cfg):
    cfg, _ = make_cfg()
    folder = {name: artifacts.out_path(cfg, name) for name in ("checkpoints", "results", "figs")}
    for path in folder.values():
        path.mkdir(parents=True)
    aside = folder["checkpoints"] / "previous"
    aside.mkdir()
    for name in ("best.pth", "train_history.csv", "training_plot.png"):
        (aside / name).write_text("run A")  # the run before last, complete
    for name in ("best.pth", "last.pth"):
        (folder["checkpoints"] / name).write_text("run B")  # last run: killed before its summary was written
    train.set_previous_run_aside(cfg)
    assert {p.name: p.read_text() for p in aside.iterdir()} == {"best.pth": "run B", "last.pth": "run B"}
    assert not list(folder["checkpoints"].glob("*.pth"))


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_uninterrupted_result(make_cfg, tmp_path, trained):
    _, trained_argv, _ = trained
    opts = ["--epochs=10", "--patience=100", "--batch_size=8", "--cpu_threads=1"]  # "auto" may change the sums
    cfg_a, argv_a = make_cfg(*opts, output_dir=tmp_path / "a")
    train.main(argv_a)
    cfg_b, argv_b = make_cfg(*opts, output_dir=tmp_path / "b")
    proc = _start(argv_b)
    wait_for_epoch(cfg_b, 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = checkpoint.load(artifacts.out_path(cfg_b, "checkpoints", "last.pth"))["epoch"]
    assert killed_at < 10, "the run finished before it could be killed"
    checkpoint.load(artifacts.out_path(cfg_b, "checkpoints", "best.pth"))  # still loadable
    train.main(argv_b + ["--resume=True"])
    a = checkpoint.load(artifacts.out_path(cfg_a, "checkpoints", "last.pth"))
    b = checkpoint.load(artifacts.out_path(cfg_b, "checkpoints", "last.pth"))
    assert a["epoch"] == b["epoch"] == 10
    for k in a["model_state"]:
        assert torch.allclose(a["model_state"][k].float(), b["model_state"][k].float(), atol=1e-6), k
    assert [round(h["val_loss"], 6) for h in a["history"]] == [round(h["val_loss"], 6) for h in b["history"]]


@pytest.mark.slow
def test_kill_9_at_any_moment_leaves_best_pth_loadable(make_cfg):
    cfg, argv = make_cfg("--epochs=1000", "--patience=1000", "--batch_size=8")
    for delay in (0.0, 0.013, 0.031, 0.057):
        proc = _start(argv)
        wait_for_epoch(cfg, 1, proc)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for name in ("best.pth", "last.pth"):
            checkpoint.load(artifacts.out_path(cfg, "checkpoints", name))
    leftovers = [p.name for p in artifacts.out_path(cfg, "checkpoints").iterdir() if ".tmp" in p.name]
    assert len(leftovers) <= 1  # at most the temporary of the save that was cut; never read, replaced next time


@pytest.mark.slow
@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_saves_and_tells_how_to_resume(make_cfg, presses):
    cfg, argv = make_cfg("--epochs=1000", "--patience=1000", "--batch_size=8")
    proc = _start(argv)
    wait_for_epoch(cfg, 1, proc)
    for _ in range(presses):  # an impatient user presses twice: the second must not cut the summary
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
    _, err = proc.communicate(timeout=600)  # a busy machine may be slow to save; it is never lost
    assert proc.returncode == 130, err
    assert "--resume=True" in err and "Traceback" not in err
    last = checkpoint.load(artifacts.out_path(cfg, "checkpoints", "last.pth"))
    assert checkpoint.load(artifacts.out_path(cfg, "checkpoints", "best.pth"))["epoch"] >= 1
    assert artifacts.out_path(cfg, "figs", "training_plot.png").exists()
    history = pd.read_csv(artifacts.out_path(cfg, "results", "train_history.csv"))
    assert list(history["epoch"]) == list(range(1, last["epoch"] + 1))  # every finished epoch, in the summary


def test_divergence_after_good_epochs_keeps_the_last_good_best_model(make_cfg, monkeypatch):
    cfg, argv = make_cfg("--epochs=8", "--patience=100")
    real_epoch, calls = head_training.run_epoch, {"n": 0}

    def diverging_from_epoch_3(model, data, device, batch_size, optimizer=None, *args, **kwargs):
        if optimizer is not None:
            calls["n"] += 1
        if calls["n"] >= 3:
            return float("nan"), 0.0
        return real_epoch(model, data, device, batch_size, optimizer, *args, **kwargs)

    monkeypatch.setattr(head_training, "run_epoch", diverging_from_epoch_3)
    with pytest.raises(lab.LabError, match="diverged in epoch 3.*keeps the best model so far"):
        train.main(argv)
    best = checkpoint.load(artifacts.out_path(cfg, "checkpoints", "best.pth"))
    assert best["epoch"] in (1, 2) and all(torch.isfinite(v.float()).all() for v in best["model_state"].values())
    assert checkpoint.load(artifacts.out_path(cfg, "checkpoints", "last.pth"))["epoch"] == 2


def test_an_image_broken_after_the_split_is_skipped_during_the_trunk_pass(make_cfg, tiny_demo, tmp_path):
    import shutil

    import pandas as pd

    root = tmp_path / "data"
    shutil.copytree(tiny_demo, root)
    cfg, argv = make_cfg("--epochs=1", data_root=root)
    split = splitting.read_or_draw_split(cfg)
    victim = split[split["split"] == "train"]["path"].iloc[0]
    (root / victim).write_bytes(b"broken since the split was made")
    history = train.main(argv)
    skipped = pd.read_csv(artifacts.out_path(cfg, "results", "skipped_files.csv"))
    assert victim in set(skipped["path"])
    assert history and "trunk pass" in skipped.set_index("path").loc[victim, "reason"]


@pytest.mark.slow
def test_scripts_run_out_of_order_name_the_script_to_run_first(tmp_path):
    for script, needed in (
        ("compute_average_distances.py", "embed.py"),
        ("transfer_learning.py", "embed.py"),
        ("dimensionality_reduction.py", "embed.py"),
        ("embed.py", "train.py"),
    ):
        result = subprocess.run(
            [sys.executable, script, f"--output_dir={str(tmp_path)!r}"], cwd=lab.ROOT, capture_output=True, text=True
        )
        assert result.returncode == 2 and f"python {needed}" in result.stderr, (script, result.stderr)
        assert "Traceback" not in result.stderr


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


def test_resume_refuses_a_changed_split_before_any_trunk_work(trained_copy, monkeypatch):
    cfg, argv, root = trained_copy
    shutil.copy(root / "Odontella" / "Odontella_0001.png", root / "Odontella" / "new.png")
    splitting.read_or_draw_split(config.load_config(argv + ["--rebuild_split=True"]))

    def no_trunk(*args, **kwargs):
        raise AssertionError("the trunk pass ran before the refusal")

    monkeypatch.setattr(trunk_cache, "run_trunk", no_trunk)
    with pytest.raises(lab.LabError, match="Cannot resume: results/split.csv has changed"):
        train.main(argv + ["--resume=True", "--epochs=6"])


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
