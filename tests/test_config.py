import re

import pytest

import lab
from lab import config


def test_the_tests_run_on_a_frozen_copy_with_the_same_setting_names():
    import runpy

    frozen = config.config_defaults()
    own = {k for k in runpy.run_path(str(lab.ROOT / "configfile.py")) if k.islower() and not k.startswith("_")}
    assert set(frozen) == own  # a new setting goes into tests/mission_config.py too


@pytest.mark.slow
def test_a_students_configfile_does_not_change_the_tests(tmp_path):
    """A copy of the repository whose configfile.py holds a student's own values still passes these tests."""
    import shutil
    import subprocess
    import sys

    copy = tmp_path / "repo"
    shutil.copytree(
        lab.ROOT,
        copy,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "data", "results", "figs", "embeddings", "cache", "checkpoints", "__pycache__"
        ),
    )
    # The student's file is made from the tests' frozen copy, not from the live configfile.py, which may already
    # be a student's own (this test must pass after a real student's edit too).
    student_config = (lab.ROOT / "tests" / "mission_config.py").read_text()
    for line, student in (
        ('data_root = "data/demo"', 'data_root = "/mnt/unmounted/FlowCamNet/imgs"'),
        ("lr = 0.0014", "lr = 0.05"),
        ("epochs = 50 ", "epochs = 2 "),
        ('seen_classes = ["chainthin"', 'seen_classes = ["Retaria", "chainthin"'),
        ('unseen_classes = ["Retaria", ', 'unseen_classes = ["Odontella", '),
    ):
        assert line in student_config, line
        student_config = student_config.replace(line, student)
    (copy / "configfile.py").write_text(student_config)
    env = {k: v for k, v in __import__("os").environ.items() if k != "PLANKTON_LAB_CONFIG"}
    check = subprocess.run(
        [sys.executable, "-c", "from lab import config; print(config.config_defaults()['lr'])"],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
    )
    assert check.stdout.strip() == "0.05"  # the copy really holds the student's values
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_config.py",
            "-k",
            "not students_configfile and not every_script",
        ],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-3000:]


@pytest.mark.parametrize(
    "arg, name, value",
    [
        ("--lr=0.001", "lr", 0.001),
        ("--lr=1", "lr", 1.0),
        ("--batch_size=32", "batch_size", 32),
        ("--device=cpu", "device", "cpu"),
        ("--device='cpu'", "device", "cpu"),
        ("--backbone_weights=None", "backbone_weights", None),
        ("--resume=True", "resume", True),
        ("--seen_classes=['a','b']", "seen_classes", ["a", "b"]),
        ("--seen_classes=('a','b')", "seen_classes", ["a", "b"]),
    ],
)
def test_good_overrides(arg, name, value):
    cfg = config.load_config([arg, "--unseen_classes=['x','y']"] if name == "seen_classes" else [arg])
    assert getattr(cfg, name) == value and type(getattr(cfg, name)) is type(value)


@pytest.mark.parametrize(
    "arg, fragment",
    [
        ("--lrr=0.1", "Did you mean --lr"),
        ("--nonsense=1", "Unknown setting"),
        ("lr=0.1", "--name=value"),
        ("--batch_size=2.5", "an integer"),
        ("--batch_size=True", "an integer"),
        ("--lr='fast'", "a number"),
        ("--resume=1", "True or False"),
        ("--seen_classes='a'", "a list of strings"),
        ("--device=3", "a string"),
        ("--lr=0", "positive"),
        ("--lr=-1", "positive"),
        ("--lr=float('nan')", "a number"),
        ("--batch_size=0", "at least 1"),
        ("--val_fraction=0", "strictly between"),
        ("--test_fraction=1.5", "strictly between"),
        ("--test_fraction=0.96", "leaves no training images"),
        ("--image_size=16", "cannot be taken by the architecture"),
        ("--image_size=4096", "cannot be taken"),
        ("--precision='fp8'", "precision"),
        ("--device='tpu'", "device"),
        ("--unseen_classes=['chainthin','Retaria']", "both seen_classes and unseen_classes"),
        ("--seen_classes=['a']", "at least 2"),
        ("--reduction_method='lda'", "reduction_method"),
        ("--head_precision='fp16'", "head_precision"),
        ("--distance_max_per_class=1", "distance_max_per_class"),
        ("--transfer_max_images=1", "transfer_max_images"),
    ],
)
def test_bad_overrides_are_rejected_before_work(arg, fragment):
    with pytest.raises(lab.LabError, match=fragment):
        config.load_config([arg])


@pytest.mark.parametrize(
    ("arg", "quoting"),
    [
        ("--seen_classes='a'", True),
        ("--device=3", True),
        ("--predict_dir=3", True),  # a string or None: the default None is no string, the hint still applies
        ("--labels_columns=3", True),
        ("--batch_size=2.5", False),
        ("--cpu_threads='fast'", False),
    ],
)
def test_a_wrong_type_explains_shell_quoting_only_where_a_string_or_list_is_expected(arg, quoting):
    with pytest.raises(lab.LabError) as error:
        config.load_config([arg])
    assert ("quote a string" in str(error.value)) == quoting


def help_of(argv, capsys):
    """What --help prints, its whitespace (wrapping, indents) made single spaces."""
    with pytest.raises(SystemExit) as stop:
        config.load_config(argv)
    assert stop.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def test_help_gives_each_setting_its_meaning_from_the_defaults_file_comments(capsys):
    text = help_of(["--help"], capsys)
    assert "Settings (defaults and their meaning from tests/mission_config.py;" in text
    # a trailing comment, under the section heading above it
    assert "training: --batch_size=64 images per optimisation step, >= 1 --lr=0.0014 Adam learning rate, > 0" in text
    # a comment block directly above the setting, the heading above the block left out
    assert (
        "data: --data_root='data/demo' A folder with one sub-folder of images per class. The default is the "
        'synthetic demo data set, generated on first use. For FlowCamNet use ".../FlowCamNet/imgs". '
        "--seen_classes=" in text
    )
    assert "--unseen_classes=['Retaria', 'Thalassionematales', 'Chaetoceros'] Classes held out of training" in text
    names = [name for name in config.config_defaults()]
    assert [text.index(f" --{name}=") for name in names] == sorted(text.index(f" --{name}=") for name in names)


def test_help_reads_the_comments_of_the_file_plankton_lab_config_names(own_defaults, capsys):
    own_defaults(
        {
            "lr = 0.0014  # Adam learning rate, > 0": "lr = 0.003  # my own rate, not 'Adam' # nor this",
            "epochs = 50  # maximum number of epochs, >= 1": "# Two lines\n# of meaning.\nepochs = 50",
            "patience = 5  # stop": "# a note apart\n\npatience = 5  # stop",
            'data_root = "data/demo"': 'data_root = "data/#demo"  # a # in a string is no comment',
            "# --- compute ----": "# --- my machine ----",
        }
    )
    text = help_of(["--lr=0.01", "--help"], capsys)
    assert "own_configfile.py;" in text and "Adam learning rate" not in text
    assert "--lr=0.003 my own rate, not 'Adam' # nor this --epochs=50 Two lines of meaning. --patience=5 stop" in text
    assert "a note apart" not in text  # a blank line parts a comment from the setting below it
    assert "--data_root='data/#demo' A folder with one sub-folder of images per class." in text
    assert 'generated on first use. For FlowCamNet use ".../FlowCamNet/imgs". a # in a string is no comment' in text
    assert "my machine: --device='auto'" in text and "compute:" not in text


def test_a_default_quoted_in_a_message_is_the_defaults_files(own_defaults):
    own_defaults(
        {
            "val_fraction = 0.05": "val_fraction = 0.1",
            "novelty_bank_max = 20000": "novelty_bank_max = 30000",
            "lr = 0.0014": "lr = 0.003",
        }
    )
    with pytest.raises(lab.LabError, match=r"their sum must be below 1 \(the defaults are 0\.1 \+ 0\.2\)"):
        config.load_config(["--test_fraction=0.9"])
    with pytest.raises(lab.LabError, match=r"in its reference \(default 30000\)"):
        config.load_config(["--novelty_bank_max=59"])
    with pytest.raises(lab.LabError, match=r"lr=0\.0 must be a positive finite number\. The default is 0\.003\."):
        config.load_config(["--lr=0"])
    assert config.default_of("lr") == 0.003


SCRIPTS = [
    "dataloader.py",
    "train.py",
    "evaluate.py",
    "embed.py",
    "compute_average_distances.py",
    "dimensionality_reduction.py",
    "transfer_learning.py",
    "report.py",
    "run_pipeline.py",
]


# Runs every script as `python <script> ...` would (run_path as __main__), all in one child process: the imports
# are paid once, not once per script.
EVERY_SCRIPT = """
import contextlib, io, json, runpy, sys
results = {}
for script in sys.argv[1:]:
    sys.argv = [script, "--epochz=3", "--output_dir=" + repr(OUT)]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            runpy.run_path(script, run_name="__main__")
        code = 0
    except SystemExit as exc:
        code = exc.code
    results[script] = [code, err.getvalue()]
print(json.dumps(results))
"""


@pytest.mark.slow
def test_every_script_rejects_an_unknown_name_in_one_paragraph(tmp_path):
    import json
    import subprocess
    import sys

    scripts = sorted(p.name for p in lab.ROOT.glob("*.py") if "__main__" in p.read_text())
    assert set(SCRIPTS) <= set(scripts)  # a new script joins this test through the glob
    code = f"OUT = {str(tmp_path)!r}\n" + EVERY_SCRIPT
    result = subprocess.run([sys.executable, "-c", code, *scripts], cwd=lab.ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    outcomes = json.loads(result.stdout.strip().splitlines()[-1])
    assert sorted(outcomes) == scripts
    for script, (exit_code, stderr) in outcomes.items():
        assert exit_code == 2, (script, stderr)
        assert "Did you mean --epochs?" in stderr and "Traceback" not in stderr, script
    assert not any(tmp_path.iterdir())  # refused before any work


def test_the_configuration_is_printed_once_and_each_script_adds_only_what_differs(monkeypatch, capsys):
    monkeypatch.setattr(config, "_shown", {})
    cfg = config.load_config(["--epochs=7", "--lr=0.01"])
    config.print_settings(cfg)  # a script run alone: its own overrides, nothing else
    line = capsys.readouterr().out.strip()
    assert line.startswith("[settings] lr=0.01, epochs=7") and "batch_size" not in line
    monkeypatch.setattr(config, "_shown", {})
    config.print_config(cfg)  # run_pipeline.py: all of it, once
    assert capsys.readouterr().out.count("epochs=7") == 1
    config.print_settings(cfg)  # its stages then repeat nothing
    assert capsys.readouterr().out == ""
    config.print_settings(config.load_config(["--epochs=7", "--lr=0.01", "--knn_k=3"]))
    assert capsys.readouterr().out.strip() == "[settings] knn_k=3 (the others as in configfile.py)"


def test_progress_speaks_in_a_log_at_most_every_few_seconds(monkeypatch):
    import io

    from lab import progress

    log = io.StringIO()  # not a terminal
    clock = iter(range(0, 100, 3))  # each item takes 3 s
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    assert list(progress.progress(range(6), 6, "trunk train", unit="batches", stream=log)) == list(range(6))
    lines = log.getvalue().splitlines()
    assert lines == ["[trunk train] 2/6 batches, 6 s", "[trunk train] 4/6 batches, 12 s"]


def test_heartbeat_speaks_while_a_silent_step_runs_and_not_after_it():
    import io
    import time

    from lab import progress

    log = io.StringIO()
    with progress.heartbeat("audit fold 1/5", every=0.02, stream=log):
        time.sleep(0.2)  # a step that says nothing of itself
    lines = log.getvalue().splitlines()
    assert lines and all(line.startswith("[audit fold 1/5] still working, ") for line in lines)
    time.sleep(0.1)
    assert log.getvalue().splitlines() == lines  # the thread stopped with the step
    quiet = io.StringIO()
    with progress.heartbeat("fast", every=60, stream=quiet):
        pass
    assert quiet.getvalue() == ""


def test_progress_speaks_in_a_log_while_one_item_takes_long(monkeypatch):
    import io
    import time

    from lab import progress

    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.1)
    monkeypatch.setattr(progress, "WATCH_EVERY_S", 0.02)

    def items():
        yield "quick"
        time.sleep(0.5)  # the second item is slow: the loop cannot speak until it comes
        yield "slow"

    log = io.StringIO()
    assert list(progress.progress(items(), 2, "near-copy index", unit="classes", stream=log)) == ["quick", "slow"]
    lines = log.getvalue().splitlines()
    watcher = r"\[near-copy index\] 1/2 classes, \d+ s; the next one for \d+ s"
    own = r"\[near-copy index\] 1/2 classes, \d+ s"  # the loop's own line, if the first item came late
    assert any(re.fullmatch(watcher, line) for line in lines)
    assert all(re.fullmatch(watcher, line) or re.fullmatch(own, line) for line in lines), lines
    time.sleep(0.1)
    assert log.getvalue().splitlines() == lines  # the watcher stopped with the loop


@pytest.mark.slow
def test_a_watched_loop_over_a_dataloader_with_workers_runs_and_speaks(monkeypatch, capfd):
    """DataLoader workers are forked inside the watched loop (its first item): they start, deliver every batch, and the
    watcher speaks while a slow batch is on its way."""
    import time

    import torch

    from lab import progress

    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.1)
    monkeypatch.setattr(progress, "WATCH_EVERY_S", 0.02)

    class Slow(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            time.sleep(0.3)
            return torch.tensor(i)

    loader = torch.utils.data.DataLoader(Slow(), batch_size=1, num_workers=2)
    got = [int(x) for x in progress.progress(loader, len(loader), "trunk test", unit="batches")]
    assert got == [0, 1, 2, 3]
    assert "[trunk test] " in capfd.readouterr().out
