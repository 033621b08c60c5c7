"""The developer tools in tools/: same_outputs.py (the refactoring check: a changed time, digest or folder path is
masked, a changed number or a missing file is a difference) and longest_silence.py (the gap between output lines)."""

import json
import os
import sys

import pytest

import lab

sys.path.insert(0, str(lab.ROOT / "tools"))
import same_outputs


def write_run(root, loss, written, digest, extra=False):
    (root / "results").mkdir(parents=True)
    (root / "results" / "train_history.csv").write_text(f"epoch,train_loss,seconds\n1,{loss},{written[-2:]}\n")
    manifest = {"written": written, "files": {"results/train_history.csv": digest}, "output_dir": str(root)}
    (root / "results" / "train_manifest.json").write_text(json.dumps(manifest))
    (root / "results" / "report.html").write_text(f"<p>sha256 {digest}, saved {written}</p>")
    if extra:
        (root / "results" / "extra.csv").write_text("a\n1\n")


def test_times_digests_and_paths_are_masked_and_numbers_are_not(tmp_path):
    write_run(tmp_path / "a", 0.5, "2026-12-06 00:38:49", "29bcc97c09041be9")
    write_run(tmp_path / "b", 0.5, "2026-12-06 00:39:28", "6061e7e0108935cb")
    write_run(tmp_path / "c", 0.25, "2026-12-06 00:39:28", "6061e7e0108935cb", extra=True)
    (tmp_path / "b" / ".plankton-lab.lock").write_bytes(b"")  # the lock a run leaves: not an output
    assert same_outputs.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    compared, problems = same_outputs.compare(tmp_path / "a", tmp_path / "c")
    assert len(compared) == 3
    assert any(p.startswith("results/train_history.csv differs") and "0.5" in p for p in problems)
    assert any(p.startswith("only in") and p.endswith("extra.csv") for p in problems)
    assert same_outputs.main([str(tmp_path / "a"), str(tmp_path / "c")]) == 1


@pytest.mark.slow
def test_longest_silence_measures_the_gap_between_output_lines():
    import longest_silence

    script = "import time; print('a', flush=True); time.sleep(1.2); print('b', flush=True); time.sleep(0.1)"
    status, lines, total = longest_silence.watch([sys.executable, "-c", script], stream=open(os.devnull, "w"))
    assert status == 0 and [text for _, text in lines] == ["a", "b"]
    gap, text, number = longest_silence.longest_gap(lines, total)
    assert 1.1 <= gap < total and text == "b" and number == 2
    assert longest_silence.main(["--limit=0.5", "--", sys.executable, "-c", script]) == 3
    assert longest_silence.main(["--", sys.executable, "-c", "import sys; sys.exit(4)"]) == 4
