"""One run, one story (issue #18): what the report and predict.py show or join together comes from one run, proven
by digests; multi-file outputs are all or nothing; file names that are not UTF-8, a lock being written, degenerate
embeddings and damaged JSON never crash a script. One test per case of the issue (and per bullet of its case 8)."""
import json
import os
import time

import numpy as np
import pytest

import lab
import predict
import report
from lab import artifacts, config, output_lock
from lab import novelty_scores as ns


# --------------------------------------------------------------------------- 6. the output-folder lock
def test_6_a_lock_being_written_is_never_taken_by_a_second_run(make_cfg, monkeypatch):
    """Deterministic race: a second run (the parent process's pid stands for it) arrives while the first is writing
    its lock. The lock never exists without its content, so exactly one of them holds it."""
    cfg, _ = make_cfg()
    folder = artifacts.resolve(cfg.output_dir)
    lock = folder / output_lock.LOCK_NAME
    real_dump, seen = json.dump, []

    def second_run_arrives(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("pid") == os.getpid() and not seen:
            seen.append(lock.exists() and lock.stat().st_size == 0)  # would a second run see an empty lock?
            with monkeypatch.context() as other:
                other.setattr(output_lock.os, "getpid", os.getppid)
                output_lock.claim_output_dir(cfg)  # the second run takes the folder: it found it free
        return real_dump(obj, f, *args, **kwargs)
    monkeypatch.setattr(output_lock.json, "dump", second_run_arrives)
    output_lock._held_locks.discard(lock)
    with pytest.raises(lab.LabError, match=rf"Another run of the lab is writing into .*pid {os.getppid()}"):
        output_lock.claim_output_dir(cfg)  # the first run: it must not hold the folder too
    assert seen == [False]
    assert json.loads(lock.read_text())["pid"] == os.getppid()  # the second run's lock, intact
    output_lock._held_locks.discard(lock)


@pytest.mark.parametrize("content", [b"", b"[1]", b"5", b"\"text\"", b"{\"pid\": \"12\"}", b"\x00garbage{"])
def test_6_a_lock_that_names_no_run_is_waited_for_then_taken_over_with_the_usual_line(make_cfg, content, capsys):
    cfg, argv = make_cfg()
    lock = artifacts.resolve(cfg.output_dir) / output_lock.LOCK_NAME
    lock.parent.mkdir(parents=True)
    lock.write_bytes(content)
    with pytest.raises(lab.LabError, match=r"names no run.*Wait a minute"):
        report.main(argv)  # fresh: another run may be writing it this very moment
    assert lock.read_bytes() == content
    old = time.time() - output_lock.UNREADABLE_LOCK_S - 5
    os.utime(lock, (old, old))
    with pytest.raises(lab.LabError, match=r"checkpoint .*does not exist yet"):  # past the lock: no model here
        report.main(argv)
    err = capsys.readouterr().err
    assert "[lock] taking over the lock of an earlier run that is gone (its lock names no run" in err
    assert json.loads(lock.read_text())["pid"] == os.getpid()


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


@pytest.mark.parametrize("damage", ['{"thresholds": {"msp": 0.', "[1]", '{"thresholds": 3}'])
def test_7_a_damaged_thresholds_file_is_one_paragraph_naming_novelty_py(novelty_ready, tiny_demo, damage):
    cfg, argv = novelty_ready
    path = artifacts.out_path(cfg, "results", "novelty_thresholds.json")
    saved = path.read_text()
    try:
        path.write_text(damage)
        with pytest.raises(lab.LabError, match=r"novelty_thresholds.json is damaged.*python novelty.py"):
            predict.main(argv + [f"--predict_dir={str(tiny_demo / 'Retaria')!r}"])
    finally:
        path.write_text(saved)


# --------------------------------------------------------------------------- 8. small ones
def test_8_a_blank_predict_dir_is_quoted_as_given():
    with pytest.raises(lab.LabError, match=r"predict_dir=' ' names no folder"):
        config.load_config(["--predict_dir=' '"])
