"""Where artifacts live and how they are written: paths under output_dir, the output folders (taken with
output_lock, created, and cleared of what killed runs left), atomic writes (a crash or a full disk
never leaves half a file), CSV and JSON read exactly as written, file digests, and the loud failure that
names the script making a missing (or damaged) artifact.

File names that are not valid UTF-8 (old zips, Windows archives: Linux names are bytes) reach Python as text with
"surrogate escapes". CSV files hold such a name as its own bytes, exactly as on disk (written and read with
errors="surrogateescape"); every valid name is plain UTF-8 as before. Read them back with pandas'
`encoding_errors="surrogateescape"` (read_csv below does). `printable` shows them in messages and pages.
"""

import contextlib
import errno
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

import lab
from lab import output_lock

ARTIFACT_DIRS = ("checkpoints", "results", "figs", "embeddings", "cache")


# --------------------------------------------------------------------------- paths
def resolve(path):
    path = Path(os.path.expanduser(str(path)))
    return path if path.is_absolute() else lab.ROOT / path


def out_path(cfg, kind, name=""):
    """Where an artifact lives: out_path(cfg, "checkpoints", "best.pth")."""
    assert kind in ARTIFACT_DIRS, kind
    return resolve(cfg.output_dir) / kind / name if name else resolve(cfg.output_dir) / kind


# The one place the synthetic demo data set lives, never a user's data_root. Only the entry points (dataloader.py,
# run_pipeline.py, python -m lab.demo_data) generate it; the data layer below them only compares paths with it.
DEMO_ROOT = lab.ROOT / "data" / "demo"


def is_demo_root(cfg):
    return resolve(cfg.data_root) == DEMO_ROOT


def ensure_output_dirs(cfg, kinds=ARTIFACT_DIRS):
    """Take the output folder for this run (one lab run at a time: output_lock), clear what interrupted runs left
    behind, create the artifact folders and prove they are writable, so a run never fails at its end."""
    folder = resolve(cfg.output_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise lab.LabError(
            f"Cannot write to the output folder {folder} ({exc.strerror or exc}). Choose another with "
            f"--output_dir=/some/writable/folder; nothing was changed."
        ) from None
    if output_lock.claim(folder):  # the first time in this process: no other lab run is writing the folder
        remove_leftovers(cfg)
    for kind in kinds:
        path = out_path(cfg, kind)
        try:
            path.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
                pass
        except OSError as exc:
            raise lab.LabError(
                f"Cannot write to the output folder {path} ({exc.strerror or exc}). Make it writable, "
                f"free some space, or choose another with --output_dir=/some/writable/folder; "
                f"nothing was changed."
            ) from None


# Temporary files of an interrupted write: `.name.tmp<pid>.ext` (temporary_path), `name.npy.tmp<pid>` (the trunk
# cache) and `name.npy.part<rank>` (a torchrun rank's shard of it). Only files named so, in the lab's own artifact
# folders, are ever removed.
LEFTOVER = re.compile(r"(\..+\.tmp(?P<a>\d+)(\.[^.]*)?|trunk_.+\.npy\.tmp(?P<b>\d+)|trunk_.+\.npy\.part\d+)")


def remove_leftovers(cfg):
    """Delete the temporary files that killed runs left (they can be gigabytes); called with the folder's lock
    held, so no other lab run is writing them."""
    removed, size = 0, 0
    for kind in ARTIFACT_DIRS:
        folder = out_path(cfg, kind)
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


def require(path, made_by, what="file"):
    """Fail loudly, naming the script that makes a missing input artifact."""
    path = Path(path)
    if not path.exists():
        raise lab.LabError(
            f"The {what} {path} does not exist yet. It is made by `python {made_by}`: run that first "
            f"(with the same --output_dir), or run the whole pipeline with `python run_pipeline.py`."
        )
    return path


# --------------------------------------------------------------------------- atomic artifact I/O
# Every artifact is written in one way, with the destination first and the content last: save_csv(path, frame),
# write_csv(path, frame), OutputSet.save_csv(kind, name, frame), atomic_write(path, write).
def temporary_path(path):
    """Where path is written before it is moved into place: `.name.tmp<pid>.ext` beside it (remove_leftovers
    recognises the ones a killed run left)."""
    path = Path(path)
    return path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")


def stage(path, write):
    """Call write(temporary path) and flush the file to the disk; return the temporary path. On any failure the
    temporary file is removed and the error raised as it came."""
    tmp = temporary_path(path)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return tmp


def replace_whole(path, write):
    """The one atomic write: stage(path, write), then move the whole file over path. An OSError is raised as it
    came (for callers that say in their own words what a failure leaves); nothing half-written is left."""
    tmp = stage(path, write)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return Path(path)


def failure_reason(exc):
    """An OSError in words: "the disk is full" for the one a user meets most."""
    return "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))


def save_failed(path, exc, kept, rerun="the script"):
    """The error for a write that failed: what happened, what the folder still holds (`kept`), what to do."""
    return lab.LabError(
        f"Could not save {path}: {failure_reason(exc)}. {kept} Free some space or choose another "
        f"--output_dir, then run {rerun} again."
    )


def atomic_write(path, write):
    """Call write(tmp_path), then move tmp over path: a crash or a full disk never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return replace_whole(path, write)
    except OSError as exc:
        kept = "The previous version is intact." if path.exists() else "Nothing was written."
        raise save_failed(path, exc, kept) from None


def save_text(path, text):
    return atomic_write(path, lambda p: Path(p).write_text(text))


def write_json(path, obj):
    Path(path).write_text(json.dumps(obj, indent=2, default=str) + "\n")  # ASCII: escapes any name losslessly


def save_json(path, obj):
    return atomic_write(path, lambda p: write_json(p, obj))


def write_csv(path, frame):
    """A CSV artifact; a file name that is not valid UTF-8 is written as its own bytes (see above)."""
    frame.to_csv(path, index=False, errors="surrogateescape")


def save_csv(path, frame):
    return atomic_write(path, lambda p: write_csv(p, frame))


def read_json(path, made_by, what="file"):
    """A JSON artifact (an object); a missing one names the script that makes it, and so does a damaged one."""
    require(path, made_by, what)
    try:
        body = json.loads(Path(path).read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        body, problem = None, f"not valid JSON: {str(exc)[:80]}"
    else:
        problem = None if isinstance(body, dict) else f"JSON, but {type(body).__name__}, not an object"
    if problem:
        raise lab.LabError(
            f"The {what} {path} is damaged ({problem}): it was cut short or edited. It is made by "
            f"`python {made_by}`: run that again (with the same --output_dir), then this script."
        )
    return body


def printable(text):
    """Text for a message or a page: a file name's bytes that are not UTF-8 shown as \\xNN escapes."""
    return str(text).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


MISSING_NUMBERS = ["", "nan", "NaN", "NA", "N/A", "None", "null", "<NA>"]


def read_csv(path, text_columns):
    """A CSV artifact with its free-text columns (class names, paths) read back exactly as written: a class
    folder named 01, NA, None or nan stays that string. The other columns are parsed as numbers, with empty
    cells as missing values."""
    import pandas as pd

    header = list(pd.read_csv(path, nrows=0, encoding_errors="surrogateescape").columns)
    return pd.read_csv(
        path,
        dtype={c: str for c in header if c in text_columns},
        keep_default_na=False,
        na_values={c: MISSING_NUMBERS for c in header if c not in text_columns},
        encoding_errors="surrogateescape",
    )


def file_digest(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
