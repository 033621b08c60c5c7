"""One run per output folder (lab/output_lock.py): a second run is refused naming the first, a dead run's lock is
taken over, the operating system's lock decides a race (in one process and among six), garbage in the lock file or
its record never crashes a run, and a file system that cannot lock stops the run with a clear error."""

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import filelock
import pytest
from conftest import lock_is_free, run_script, wait_for_epoch

import lab
import report
from lab import artifacts, output_lock


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


def test_a_second_run_arriving_before_the_first_names_itself_is_refused_not_let_in(make_cfg, monkeypatch):
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
def test_garbage_in_the_lock_file_or_its_record_never_crashes_a_run(make_cfg, content, capsys, monkeypatch):
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


def test_a_file_system_that_refuses_locks_stops_the_run_with_a_clear_error(make_cfg, monkeypatch):
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
def test_of_runs_racing_for_a_folder_one_takes_it_and_a_killed_ones_is_taken_over(tmp_path, flock):
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
