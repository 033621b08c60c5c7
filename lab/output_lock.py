"""One lab run per output folder: a second run stops, naming the first; the folder of a run that was killed is free
at once. The lock is the operating system's (flock, through the filelock package) on output_dir/.plankton-lab.lock,
held for the whole run: the kernel lets it go when the process ends in any way, kill -9 included, so no lock is
ever judged stale by hand. Beside it, output_dir/.plankton-lab.owner.json names the holder (script, pid, host,
start) for the message a refused run prints; it is removed when the lock is released, so one left behind is a
killed run's, and the next run says it takes over from it.

On a file system where flock is not implemented (ENOSYS: some FUSE and CIFS mounts), filelock falls back to its
SoftFileLock: the lock file is created exclusively, holds the holder's pid, host and start time, and is removed on
release; a killed run's lock on this machine is taken over, another machine's never (its process cannot be checked
from here: delete the lock once that run is gone for good). A file system that refuses locks otherwise (ENOLCK: an
NFS mount without its lock service) stops the run with a clear error. docs/provenance.md has the details.

Writes output_dir/.plankton-lab.lock (left in place, empty, after a run: waiting runs must share its inode) and
output_dir/.plankton-lab.owner.json (removed on release).
"""

import atexit
import contextlib
import errno
import json
import os
import socket
import sys
import time
import warnings
from pathlib import Path

import filelock

import lab

LOCK_NAME = ".plankton-lab.lock"
OWNER_NAME = ".plankton-lab.owner.json"
WAIT_S = 3  # how long a run waits for the lock: past filelock's 2-s rule for an unreadable soft lock, and a run ending

_held = {}  # lock path -> (filelock lock, the pid that took it); run_pipeline.py runs every stage in one process


def _owner(folder):
    """(what the owner record holds, in words; the record as a dict, or None when it names no run)."""
    path = Path(folder) / OWNER_NAME
    try:
        content = path.read_bytes()
    except FileNotFoundError:
        return "there is no record of it yet", None
    except OSError as exc:
        return f"its record cannot be read: {exc.strerror or exc}", None
    try:
        owner = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        owner = None
    if isinstance(owner, dict) and type(owner.get("pid")) is int:
        return f"{owner.get('script')}, pid {owner['pid']}, started {owner.get('started')}", owner
    shown = repr(content[:40].decode("utf-8", "backslashreplace")) if content else "empty"
    return f"its record names no run: {shown}", None


def _busy(folder, lock_path):
    said, owner = _owner(folder)
    if owner is None:
        who = f"a run that has not said which ({said}; it may have started this very moment)"
    else:
        who = (
            f"{owner.get('script')} (pid {owner['pid']} on {owner.get('host', 'this machine')}, "
            f"started {owner.get('started')})"
        )
    return lab.LabError(
        f"Another run of the lab is writing into {folder}: {who}. Two runs on one output folder would mix their "
        f"checkpoints and results. Wait for it to finish, stop it, or give this run its own --output_dir. (If that "
        f"run is gone for good, e.g. its machine crashed, and the lock stays, delete {lock_path}.)"
    )


def _cannot_lock(folder, exc):
    if exc.errno in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return lab.LabError(
            f"The file system of the output folder {folder} cannot lock files ({exc.strerror or exc}), so the lab "
            f"cannot keep a second run from writing into it. On NFS, the lock service (lockd) may not be running, "
            f"or the folder is mounted with nolock. Choose an --output_dir on a local disk, or ask for locking on "
            f"that mount; nothing was changed."
        )
    return lab.LabError(
        f"Cannot write to the output folder {folder} ({exc.strerror or exc}). Make it writable or choose another "
        f"with --output_dir=/some/writable/folder; nothing was changed."
    )


def claim(folder):
    """Take the lock of the output folder `folder` (which exists) for this process, for as long as it runs. True
    when taken now, False when this process holds it already; a run that holds it stops this one (LabError)."""
    lock_path = Path(folder) / LOCK_NAME
    if lock_path in _held:
        return False
    lock = filelock.FileLock(lock_path, timeout=WAIT_S, thread_local=False)
    with warnings.catch_warnings(record=True) as fell_back:
        warnings.simplefilter("always")
        try:
            lock.acquire()
        except filelock.Timeout:
            raise _busy(folder, lock_path) from None
        except OSError as exc:
            raise _cannot_lock(folder, exc) from None
    if any("SoftFileLock" in str(w.message) for w in fell_back):
        print(
            f"[lock] the file system of {folder} has no flock: the lock is a file that names this run (filelock's "
            f"SoftFileLock); a killed run's lock is taken over on this machine only",
            file=sys.stderr,
        )
    said, _ = _owner(folder)
    if (Path(folder) / OWNER_NAME).exists():  # left by a run that never released the lock: it was killed
        print(f"[lock] taking over the lock of an earlier run that is gone ({said})", file=sys.stderr)
    me = {
        "pid": os.getpid(),
        "script": Path(sys.argv[0]).name or "python",
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    _held[lock_path] = (lock, os.getpid())
    atexit.register(_release, lock_path)
    _write_owner(folder, me)
    return True


def _write_owner(folder, me):
    """The record that names the holder, read only for messages: a half-written one (a run killed while writing
    it) is shown as naming no run, never trusted."""
    with contextlib.suppress(OSError):  # the lock is held either way; only the message would lack a name
        (Path(folder) / OWNER_NAME).write_text(json.dumps(me))


def release_locks():
    for lock_path in list(_held):
        _release(lock_path)


def _release(lock_path):
    lock, pid = _held.get(lock_path, (None, None))
    if lock is None or pid != os.getpid():
        return  # a forked child (a DataLoader worker) never releases its parent's lock
    del _held[lock_path]
    with contextlib.suppress(OSError):
        (lock_path.parent / OWNER_NAME).unlink()  # first: while the lock is held, no other run writes it
    with contextlib.suppress(OSError):
        lock.release()
