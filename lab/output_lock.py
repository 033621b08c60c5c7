"""One lab run per output folder: the lock (a second run stops, naming the first; a killed run's lock is taken
over) and the sweep of temporary files that killed runs left behind. Writes output_dir/.plankton-lab.lock, which is
linked into place whole (never empty), so two runs never hold it at once.
"""

import atexit
import contextlib
import errno
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
            raise lab.LabError(
                f"Cannot write to the output folder {folder} ({exc.strerror or exc}). Make it writable, "
                f"free some space, or choose another with --output_dir=/some/writable/folder; "
                f"nothing was changed."
            ) from None


LOCK_NAME = ".plankton-lab.lock"


UNREADABLE_LOCK_S = 60  # a lock that names no owner is taken over once this old (no lab run ever leaves one so)


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
    except PermissionError:
        pass  # the process exists (another user's)
    except (OSError, ValueError, KeyError, OverflowError):
        return False
    start = _process_start(owner["pid"])
    return start is None or owner.get("process_start") in (None, start)


def _owner(content):
    """The run a lock's content names (a JSON object with an integer pid), or None."""
    try:
        owner = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        return None
    return owner if isinstance(owner, dict) and type(owner.get("pid")) is int else None


def _publish_lock(lock, me):
    """Create the lock with its content already in it: written to a temporary file, then linked into place, so the
    lock never exists empty (a run that has created it but not yet written it cannot be taken for a dead one).
    False if another lock is there. A file system without hard links (FAT, some network shares) gets an exclusive
    create instead; its brief empty lock is then covered by UNREADABLE_LOCK_S."""
    tmp = lock.with_name(f"{LOCK_NAME}.tmp{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            json.dump(me, f)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, lock)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK):
            raise
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump(me, f)
    return True


def _remove_stale(lock, content):
    """Remove the lock judged stale, unless another run put its own there meanwhile: renamed aside, compared with
    what was judged, and put back if it is another."""
    aside = lock.with_name(f"{LOCK_NAME}.stale{os.getpid()}")
    try:
        os.rename(lock, aside)
    except FileNotFoundError:
        return
    try:
        if aside.read_bytes() != content:
            with contextlib.suppress(OSError):
                os.link(aside, lock)
    finally:
        with contextlib.suppress(OSError):
            aside.unlink()


def _shown(content):
    return repr(content[:40].decode("utf-8", "backslashreplace")) if content else "empty"


def _busy(folder, lock, owner):
    return lab.LabError(
        f"Another run of the lab is writing into {folder}: {owner.get('script')} (pid "
        f"{owner.get('pid')} on {owner.get('host', 'this machine')}, started {owner.get('started')}). "
        f"Two runs on one output folder would mix their checkpoints and results. Wait for it to "
        f"finish, stop it, or give this run its own --output_dir. (If that run is gone for good, e.g. "
        f"its machine crashed, delete {lock}.)"
    )


def _unreadable(folder, lock, content, age):
    return lab.LabError(
        f"The output folder {folder} is locked by {lock}, which names no run ({_shown(content)}, "
        f"{age:.0f} s old): another run may be writing it this very moment. Wait a minute and run "
        f"this again (a lock that stays unreadable is taken over once it is {UNREADABLE_LOCK_S} s "
        f"old), or give this run its own --output_dir."
    )


def claim_output_dir(cfg):
    """One lab run per output folder: a second run that would write the same artifacts stops, naming the first;
    the lock of a run that was killed is recognised (its process is gone) and taken over, and so is a lock that
    names no run once it is UNREADABLE_LOCK_S old. Never crashes on what a lock holds."""
    folder = artifacts.resolve(cfg.output_dir)
    lock = folder / LOCK_NAME
    if lock in _held_locks:
        return  # run_pipeline.py runs every stage in this process
    script = Path(sys.argv[0]).name or "python"
    me = {
        "pid": os.getpid(),
        "process_start": _process_start(os.getpid()),
        "script": script,
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise lab.LabError(
            f"Cannot write to the output folder {folder} ({exc.strerror or exc}). Choose another with "
            f"--output_dir=/some/writable/folder; nothing was changed."
        ) from None
    for _ in range(5):
        try:
            if _publish_lock(lock, me):
                break
            content, age = lock.read_bytes(), time.time() - lock.stat().st_mtime
        except FileNotFoundError:
            continue  # released meanwhile: try again
        except OSError as exc:
            raise lab.LabError(
                f"Cannot write to the output folder {folder} ({exc.strerror or exc}). Make it "
                f"writable or choose another with --output_dir=/some/writable/folder; nothing was "
                f"changed."
            ) from None
        owner = _owner(content)
        if owner is None and age < UNREADABLE_LOCK_S:
            raise _unreadable(folder, lock, content, age)
        if owner is not None and _alive(owner) and owner["pid"] != os.getpid():
            raise _busy(folder, lock, owner)
        what = (
            f"{owner.get('script')}, pid {owner.get('pid')}, started {owner.get('started')}"
            if owner
            else f"its lock names no run: {_shown(content)}, {age:.0f} s old"
        )
        print(f"[lock] taking over the lock of an earlier run that is gone ({what})", file=sys.stderr)
        _remove_stale(lock, content)
    else:
        raise lab.LabError(
            f"Could not take the lock {lock}: another run keeps taking it. Give this run its own --output_dir."
        )
    _held_locks.add(lock)
    atexit.register(_release, lock)
    remove_leftovers(cfg)


def release_locks():
    for lock in list(_held_locks):
        _release(lock)


def _release(lock):
    with contextlib.suppress(OSError):
        owner = _owner(lock.read_bytes())
        if owner is not None and owner["pid"] == os.getpid():
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
