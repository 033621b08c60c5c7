"""One lab run per output folder: the lock (a second run stops, naming the first; a killed run's lock is taken
over) and the sweep of temporary files that killed runs left behind. Writes output_dir/.plankton-lab.lock.
"""
import atexit
import contextlib
import json
import os
import re
import socket
import sys
import tempfile
import time
from pathlib import Path

import lab
from lab import artifacts


def ensure_output_dirs(cfg, kinds=artifacts.ARTIFACT_DIRS):
    """Take the output folder for this run (one lab run at a time), create the artifact folders and prove they
    are writable, so a run never fails at its end; then clear what interrupted runs left behind."""
    claim_output_dir(cfg)
    for kind in kinds:
        folder = artifacts.out_path(cfg, kind)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
                pass
        except OSError as exc:
            raise lab.LabError(f"Cannot write to the output folder {folder} ({exc.strerror or exc}). Make it writable, "
                               f"free some space, or choose another with --output_dir=/some/writable/folder; "
                               f"nothing was changed.") from None


LOCK_NAME = ".plankton-lab.lock"


_held_locks = set()


def _process_start(pid):
    """A process's start time in clock ticks since boot (Linux), to tell a live run from a reused pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(owner):
    if owner.get("host", socket.gethostname()) != socket.gethostname():
        return True  # another machine's run (a shared file system): its process cannot be checked from here
    try:
        os.kill(int(owner["pid"]), 0)
    except (OSError, ValueError, KeyError):
        return False
    start = _process_start(owner["pid"])
    return start is None or owner.get("process_start") in (None, start)


def claim_output_dir(cfg):
    """One lab run per output folder: a second run that would write the same artifacts stops, naming the first;
    the lock of a run that was killed is recognised (its process is gone) and taken over."""
    folder = artifacts.resolve(cfg.output_dir)
    lock = folder / LOCK_NAME
    if lock in _held_locks:
        return  # run_pipeline.py runs every stage in this process
    script = Path(sys.argv[0]).name or "python"
    me = {"pid": os.getpid(), "process_start": _process_start(os.getpid()), "script": script,
          "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise lab.LabError(f"Cannot write to the output folder {folder} ({exc.strerror or exc}). Choose another with "
                           f"--output_dir=/some/writable/folder; nothing was changed.") from None
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                owner = json.loads(lock.read_text() or "{}")
            except (OSError, ValueError):
                owner = {}
            if owner and _alive(owner) and owner.get("pid") != os.getpid():
                raise lab.LabError(f"Another run of the lab is writing into {folder}: {owner.get('script')} (pid "
                                   f"{owner.get('pid')} on {owner.get('host', 'this machine')}, started "
                                   f"{owner.get('started')}). Two runs on one output folder would mix their "
                                   f"checkpoints and results. Wait for it to finish, stop it, or give this run its own "
                                   f"--output_dir. (If that run is gone for good, e.g. its machine crashed, delete "
                                   f"{lock}.)") from None
            if owner:
                print(f"[lock] taking over the lock of an earlier run that is gone ({owner.get('script')}, pid "
                      f"{owner.get('pid')}, started {owner.get('started')})", file=sys.stderr)
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
            continue
        except OSError as exc:
            raise lab.LabError(f"Cannot write to the output folder {folder} ({exc.strerror or exc}). Make it "
                               f"writable or choose another with --output_dir=/some/writable/folder; nothing was "
                               f"changed.") from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        _held_locks.add(lock)
        atexit.register(_release, lock)
        remove_leftovers(cfg)
        return
    raise lab.LabError(f"Could not take the lock {lock}: another run keeps taking it. Give this run its own "
                       f"--output_dir.")


def release_locks():
    for lock in list(_held_locks):
        _release(lock)


def _release(lock):
    with contextlib.suppress(OSError, ValueError):
        if json.loads(lock.read_text()).get("pid") == os.getpid():
            lock.unlink()
    _held_locks.discard(lock)


# Temporary files of an interrupted write: `.name.tmp<pid>.ext` (atomic_write), `name.npy.tmp<pid>` (the trunk
# cache) and `name.npy.part<rank>` (a torchrun rank's shard of it). Only files named so, in the lab's own artifact
# folders, are ever removed.
LEFTOVER = re.compile(r"(\..+\.tmp(?P<a>\d+)(\.[^.]*)?|trunk_.+\.npy\.tmp(?P<b>\d+)|trunk_.+\.npy\.part\d+)")


def remove_leftovers(cfg):
    """Delete the temporary files that killed runs left (they can be gigabytes); called with the lock held, so no
    other lab run is writing them."""
    removed, size = 0, 0
    for kind in artifacts.ARTIFACT_DIRS:
        folder = artifacts.out_path(cfg, kind)
        if not folder.is_dir():
            continue
        for entry in os.scandir(folder):
            match = LEFTOVER.fullmatch(entry.name)
            pid = match and (match["a"] or match["b"])  # a torchrun rank's part has no pid: never in use here
            if match and entry.is_file(follow_symlinks=False) and (pid is None or int(pid) != os.getpid()):
                size += entry.stat().st_size
                os.unlink(entry.path)
                removed += 1
    if removed:
        print(f"[cleanup] removed {removed} temporary file(s) ({size / 1e6:.1f} MB) left by an interrupted run")
    return removed
