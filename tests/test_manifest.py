"""One run, one story (lab/manifest.py, docs/provenance.md): a result of an older model is refused and the report
names every script to re-run, in order; an embeddings set cut in the middle is no set; a set cut while being
published is no set and says so; a single file and a set's file fail on a full disk alike, leaving no temporary."""

import errno
import os
import re

import pandas as pd
import pytest
from conftest import analyse_all

import compute_average_distances
import dimensionality_reduction
import embed
import evaluate
import lab
import report
import train
import transfer_learning
from lab import artifacts, manifest


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


def test_a_set_cut_while_being_published_is_no_set_and_says_nothing_is_left(make_cfg, monkeypatch):
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


def test_a_single_file_and_a_sets_file_fail_on_a_full_disk_alike_and_leave_no_temporary(make_cfg):
    """One atomic write (artifacts.stage / replace_whole) behind every writer, one message for a full disk."""
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
