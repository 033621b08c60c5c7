"""Shared plumbing of the lab's scripts: configuration, paths, device, seeding, artifact I/O, entry point.

Every script does `cfg = lab.load_config(argv)` and runs its `main` through `lab.run_main`, so
overrides, error messages and atomic writes behave the same everywhere. The configuration comes from
configfile.py and `--name=value` overrides; artifacts live under `output_dir` and are written atomically.
Nothing here knows about images, models or checkpoints (dataloader.py, backbone.py and checkpoint.py do).
"""
import ast
import atexit
import contextlib
import difflib
import errno
import hashlib
import json
import logging
import math
import os
import random
import re
import socket
import sys
import tempfile
import time
import traceback
import unicodedata
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parent.parent  # the repository: every relative path hangs on it
NULLABLE = {"backbone_weights", "predict_dir"}
ARTIFACT_DIRS = ("checkpoints", "results", "figs", "embeddings", "cache")
NOVELTY_SCORES = ("msp", "energy", "knn", "mahalanobis", "mahalanobis_knn")  # novelty_scores.SCORES (tested)


class LabError(Exception):
    """A problem the user can fix; printed as one paragraph, without a traceback."""


# --------------------------------------------------------------------------- config
def config_defaults():
    """The settings of configfile.py, or of the file PLANKTON_LAB_CONFIG names (the tests' frozen copy)."""
    other = os.environ.get("PLANKTON_LAB_CONFIG")
    if other:
        import runpy
        values = runpy.run_path(other)
    else:
        import configfile
        values = vars(configfile)
    settings = (bool, int, float, str, list, tuple, type(None))
    return {k: v for k, v in values.items() if not k.startswith("_") and k.islower() and isinstance(v, settings)}


def _check_type(name, value, default):
    def fail(expected):
        raise LabError(f"--{name}={value!r} has the wrong type: expected {expected} (the default is "
                       f"{default!r}). Strings need quotes inside the shell, e.g. --{name}=\"'text'\" "
                       f"or a bare word, lists look like --{name}=\"['a', 'b']\".")
    if name in NULLABLE and value is None:
        return None
    if isinstance(default, bool):
        if not isinstance(value, bool):
            fail("True or False")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            fail("an integer")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail("a number")
        return float(value)
    if isinstance(default, str) or default is None:
        if not isinstance(value, str):
            fail("a string" + (" or None" if name in NULLABLE else ""))
        return value
    if isinstance(default, (list, tuple)):
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            fail("a list of strings")
        return list(value)
    return value


def parse_overrides(argv, defaults):
    """`--name=value` pairs -> dict; values are Python literals, or bare words taken as strings."""
    overrides = {}
    for arg in argv:
        if not arg.startswith("--") or "=" not in arg:
            raise LabError(f"Cannot read the argument {arg!r}: every argument must look like --name=value, "
                           f"with a name from configfile.py (e.g. --lr=0.001).")
        name, text = arg[2:].split("=", 1)
        if name not in defaults:
            close = difflib.get_close_matches(name, defaults, n=1)
            hint = f" Did you mean --{close[0]}?" if close else ""
            raise LabError(f"Unknown setting --{name}: it is not a name in configfile.py.{hint} "
                           f"Run the script with --help to list the settings.")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text  # a bare word such as --device=cpu
        overrides[name] = _check_type(name, value, defaults[name])
    return overrides


def validate_config(c):
    """Reject values the scripts cannot work with, before any work starts."""
    def bad(msg):
        raise LabError(f"Invalid configuration: {msg} Fix it in configfile.py or with a --name=value override.")
    if not (isinstance(c.lr, float) and math.isfinite(c.lr) and c.lr > 0):
        bad(f"lr={c.lr} must be a positive finite number (the default is 0.0014).")
    for name in ("batch_size", "epochs", "patience", "embedding_dim", "gallery_size", "transfer_repeats",
                 "knn_k", "umap_samples_per_split", "novelty_knn_k"):
        if getattr(c, name) < 1:
            bad(f"{name}={getattr(c, name)} must be at least 1.")
    if c.embedding_dim < 2:
        bad(f"embedding_dim={c.embedding_dim} must be at least 2.")
    if c.umap_samples_per_split < 10 or c.umap_n_neighbors < 2:
        bad("umap_samples_per_split must be >= 10 and umap_n_neighbors >= 2.")
    for name in ("val_fraction", "test_fraction", "transfer_test_fraction"):
        if not 0 < getattr(c, name) < 1:
            bad(f"{name}={getattr(c, name)} must lie strictly between 0 and 1.")
    if c.val_fraction + c.test_fraction >= 1:
        bad(f"val_fraction + test_fraction = {c.val_fraction + c.test_fraction:g} leaves no training images; "
            f"their sum must be below 1 (the defaults are 0.05 + 0.20).")
    if not 32 <= c.image_size <= 1024:
        bad(f"image_size={c.image_size} cannot be taken by the architecture: the frozen trunk divides it by 8 "
            f"and the head pools by 2 more, so it must lie in 32..1024 (the default is 128).")
    if not 0 <= c.dropout < 1 or not 0 <= c.umap_min_dist <= 1:
        bad("dropout must lie in [0, 1) and umap_min_dist in [0, 1].")
    if c.distance_max_per_class == 1 or c.distance_max_per_class < 0 or c.transfer_max_images < 2:
        bad("distance_max_per_class must be 0 (every image) or at least 2, and transfer_max_images at least 2.")
    if c.novelty_bank_max < 0 or 0 < c.novelty_bank_max < c.novelty_knn_k * len(c.seen_classes):
        bad(f"novelty_bank_max={c.novelty_bank_max} must be 0 (every training embedding) or at least novelty_knn_k x "
            f"the seen classes ({c.novelty_knn_k} x {len(c.seen_classes)} = {c.novelty_knn_k * len(c.seen_classes)}): "
            f"the kNN score needs novelty_knn_k neighbours of each class in its reference (default 20000).")
    if c.num_workers < 0 or c.seed < 0 or c.max_images_per_class < 0 or c.min_images_per_class < 3:
        bad("num_workers, seed and max_images_per_class must be >= 0 and min_images_per_class >= 3.")
    if c.precision not in ("auto", "fp32", "bf16", "fp16"):
        bad(f"precision={c.precision!r} must be one of 'auto', 'fp32', 'bf16', 'fp16'.")
    if c.class_weighting not in ("none", "balanced"):
        bad(f"class_weighting={c.class_weighting!r} must be 'none' (plain cross-entropy, the default) or 'balanced' "
            f"(inverse-frequency class weights, for imbalanced data).")
    if c.novelty_score not in NOVELTY_SCORES:
        bad(f"novelty_score={c.novelty_score!r} must be one of {', '.join(map(repr, NOVELTY_SCORES))} (the lab's "
            f"default, 'mahalanobis_knn', told new taxa best on ndsb9).")
    if c.predict_dir is not None and not c.predict_dir.strip():
        bad("predict_dir='' names no folder: give the folder of new images, e.g. --predict_dir=/data/cruise42.")
    if c.head_precision not in ("auto", "fp32", "bf16"):
        bad(f"head_precision={c.head_precision!r} must be one of 'auto', 'fp32', 'bf16' (fp16 would need loss "
            f"scaling).")
    if c.reduction_method not in ("umap", "tsne", "pca"):
        bad(f"reduction_method={c.reduction_method!r} must be one of 'umap', 'tsne', 'pca'.")
    if not (c.device in ("auto", "cpu", "cuda", "mps") or c.device.startswith("cuda:")):
        bad(f"device={c.device!r} must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'.")
    for name, minimum in (("seen_classes", 2), ("unseen_classes", 2)):
        classes = getattr(c, name)
        if len(classes) < minimum or len(set(classes)) != len(classes):
            bad(f"{name} must name at least {minimum} distinct classes, got {classes}.")
    both = sorted(set(c.seen_classes) & set(c.unseen_classes))
    if both:
        bad(f"the classes {both} are in both seen_classes and unseen_classes; a class is either trained on "
            f"(seen) or held out (unseen), so remove it from one of the two lists.")


HELP = ("Settings (defaults from configfile.py; override with --name=value, values as Python literals):\n")


def load_config(argv=None, describe=None):
    """Defaults from configfile.py, then `--name=value` overrides, type-checked and validated."""
    argv = sys.argv[1:] if argv is None else list(argv)
    defaults = config_defaults()
    if any(a in ("-h", "--help") for a in argv):
        print((describe or "") + "\n\n" + HELP + "\n".join(f"  --{k}={v!r}" for k, v in defaults.items()))
        raise SystemExit(0)
    cfg = SimpleNamespace(**{**defaults, **parse_overrides(argv, defaults)})
    # Composed Unicode (NFC), as typed on most systems: a folder name that a macOS zip wrote decomposed (NFD)
    # is matched in that form too (dataloader.class_folders), and both spell the same label.
    cfg.seen_classes = [unicodedata.normalize("NFC", c) for c in cfg.seen_classes]
    cfg.unseen_classes = [unicodedata.normalize("NFC", c) for c in cfg.unseen_classes]
    validate_config(cfg)
    return cfg


def print_config(cfg, title="configuration"):
    print(f"[{title}] " + ", ".join(f"{k}={v!r}" for k, v in vars(cfg).items()))



# --------------------------------------------------------------------------- paths
def resolve(path):
    path = Path(os.path.expanduser(str(path)))
    return path if path.is_absolute() else ROOT / path


def out_path(cfg, kind, name=""):
    """Where an artifact lives: out_path(cfg, "checkpoints", "best.pth")."""
    assert kind in ARTIFACT_DIRS, kind
    return resolve(cfg.output_dir) / kind / name if name else resolve(cfg.output_dir) / kind


def ensure_output_dirs(cfg, kinds=ARTIFACT_DIRS):
    """Take the output folder for this run (one lab run at a time), create the artifact folders and prove they
    are writable, so a run never fails at its end; then clear what interrupted runs left behind."""
    claim_output_dir(cfg)
    for kind in kinds:
        folder = out_path(cfg, kind)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
                pass
        except OSError as exc:
            raise LabError(f"Cannot write to the output folder {folder} ({exc.strerror or exc}). Make it writable, "
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
    folder = resolve(cfg.output_dir)
    lock = folder / LOCK_NAME
    if lock in _held_locks:
        return  # run_pipeline.py runs every stage in this process
    script = Path(sys.argv[0]).name or "python"
    me = {"pid": os.getpid(), "process_start": _process_start(os.getpid()), "script": script,
          "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LabError(f"Cannot write to the output folder {folder} ({exc.strerror or exc}). Choose another with "
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
                raise LabError(f"Another run of the lab is writing into {folder}: {owner.get('script')} (pid "
                               f"{owner.get('pid')} on {owner.get('host', 'this machine')}, started "
                               f"{owner.get('started')}). Two runs on one output folder would mix their checkpoints "
                               f"and results. Wait for it to finish, stop it, or give this run its own "
                               f"--output_dir. (If that run is gone for good, e.g. its machine crashed, delete "
                               f"{lock}.)") from None
            if owner:
                print(f"[lock] taking over the lock of an earlier run that is gone ({owner.get('script')}, pid "
                      f"{owner.get('pid')}, started {owner.get('started')})", file=sys.stderr)
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
            continue
        except OSError as exc:
            raise LabError(f"Cannot write to the output folder {folder} ({exc.strerror or exc}). Make it writable "
                           f"or choose another with --output_dir=/some/writable/folder; nothing was changed.") from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        _held_locks.add(lock)
        atexit.register(_release, lock)
        remove_leftovers(cfg)
        return
    raise LabError(f"Could not take the lock {lock}: another run keeps taking it. Give this run its own "
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
        raise LabError(f"The {what} {path} does not exist yet. It is made by `python {made_by}`: run that first "
                       f"(with the same --output_dir), or run the whole pipeline with `python run_pipeline.py`.")
    return path


# --------------------------------------------------------------------------- device & seeds
def seed_everything(seed):
    import torch
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def select_device(name):
    """The device the setting names; under torchrun, a GPU is this rank's own (cuda:LOCAL_RANK)."""
    import torch
    from lab import distributed
    if name == "auto":
        if torch.cuda.is_available():
            return distributed.rank_device(torch.device("cuda"))
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise LabError(f"device={name!r} was asked for but CUDA is not available on this machine; "
                       f"use --device=auto or --device=cpu.")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise LabError("device='mps' was asked for but MPS is not available; use --device=auto or --device=cpu.")
    return distributed.rank_device(torch.device(name))



# --------------------------------------------------------------------------- atomic artifact I/O
def atomic_write(path, write):
    """Call write(tmp_path), then move tmp over path: a crash or a full disk never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        reason = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        kept = "The previous version is intact." if path.exists() else "Nothing was written."
        raise LabError(f"Could not save {path}: {reason}. {kept} Free some space or choose another "
                       f"--output_dir, then run the script again.") from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


def save_text(path, text):
    return atomic_write(path, lambda p: Path(p).write_text(text))


def save_json(path, obj):
    return save_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def save_csv(path, frame):
    return atomic_write(path, lambda p: frame.to_csv(p, index=False))


MISSING_NUMBERS = ["", "nan", "NaN", "NA", "N/A", "None", "null", "<NA>"]


def read_csv(path, text_columns):
    """A CSV artifact with its free-text columns (class names, paths) read back exactly as written: a class
    folder named 01, NA, None or nan stays that string. The other columns are parsed as numbers, with empty
    cells as missing values."""
    import pandas as pd
    header = list(pd.read_csv(path, nrows=0).columns)
    return pd.read_csv(path, dtype={c: str for c in header if c in text_columns}, keep_default_na=False,
                       na_values={c: MISSING_NUMBERS for c in header if c not in text_columns})


def figure_slug(name, class_names=()):
    """The part of a figure's file name that stands for a class: the name itself when it is plain ASCII
    (letters, digits, _ . -), else its readable ASCII part plus 8 hex digits of a hash of the exact name
    (gallery_cls-3f2a9c1b.png for a Chinese name). Unique per class and the same on every run, where
    replacing characters alone would give two classes one file name. class_names: the other classes of the
    same figures; a name that differs from one of them only in letter case gets the hash too, as macOS and
    Windows disks take Odontella.png and odontella.png for one file."""
    name = unicodedata.normalize("NFC", name)
    case_twin = any(name != other and name.casefold() == unicodedata.normalize("NFC", other).casefold()
                    for other in class_names)
    if re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}", name) and not case_twin:
        return name
    ascii_part = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", ascii_part).strip("._-")[:60]
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:8]
    return f"{readable}-{digest}" if readable else f"cls-{digest}"


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend: scripts run on servers without a display."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


_FONT_CHARACTERS = {}
_NOTED_UNDRAWABLE = set()


def _font_characters(font_file):
    if font_file not in _FONT_CHARACTERS:
        from matplotlib.ft2font import FT2Font
        try:
            _FONT_CHARACTERS[font_file] = frozenset(FT2Font(font_file).get_charmap())
        except (OSError, RuntimeError, ValueError):  # a damaged font file: it draws nothing for us
            _FONT_CHARACTERS[font_file] = frozenset()
    return _FONT_CHARACTERS[font_file]


def _missing_characters(text):
    """Code points of text that none of the fonts matplotlib is set to use can draw."""
    import matplotlib
    from matplotlib import font_manager
    missing = {ord(ch) for ch in text if not ch.isspace()}
    for family in matplotlib.rcParams["font.family"]:
        with contextlib.suppress(ValueError):  # a family that is not installed
            font = font_manager.findfont(font_manager.FontProperties(family=[family]), fallback_to_default=False)
            missing -= _font_characters(font)
    return missing


def font_with(code_points):
    """The family of an installed font that draws all these characters, or None. matplotlib's 'Last Resort'
    font is left out: it maps every character to an empty box, the very thing to avoid."""
    from matplotlib import font_manager
    for entry in sorted(font_manager.fontManager.ttflist, key=lambda f: (f.name, f.fname)):
        if not entry.name.startswith("Last Resort") and code_points <= _font_characters(entry.fname):
            return entry.name
    return None


def drawable_names(names):
    """Class names as figures can show them. A name whose characters the current fonts lack gets an installed
    font that has them (matplotlib falls back to it glyph by glyph); with none installed, the characters are
    shown escaped (\\u73ea) and one note says so, instead of empty boxes. '$' is escaped so a name is never
    read as a formula."""
    import matplotlib
    pyplot()
    shown, undrawable = [], []
    for name in names:
        missing = _missing_characters(name)
        if missing:
            family = font_with(missing)
            if family is not None:
                matplotlib.rcParams["font.family"] = [*matplotlib.rcParams["font.family"], family]
                # a CJK font often has only a 'medium' weight: matplotlib would log that on every figure
                logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)
                missing = set()
            else:
                undrawable.append(name)
        shown.append("".join(f"\\u{ord(ch):04x}" if ord(ch) in missing else ch for ch in name).replace("$", r"\$"))
    new = [n for n in undrawable if n not in _NOTED_UNDRAWABLE]
    if new:
        _NOTED_UNDRAWABLE.update(new)
        print(f"note: no installed font has the characters of the class name(s) {', '.join(map(repr, new))}: figures "
              f"show those characters escaped (\\uXXXX). To see them drawn, install a font that has them (e.g. "
              f"Noto Sans CJK: `apt install fonts-noto-cjk`, or from fonts.google.com/noto) and delete "
              f"matplotlib's font cache ({_matplotlib_cache()}).", file=sys.stderr)
    return shown


def _matplotlib_cache():
    import matplotlib
    return matplotlib.get_cachedir()


def save_figure(path, fig):
    plt = pyplot()
    atomic_write(path, lambda p: fig.savefig(p, dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return path


def file_digest(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def artifact_digest(cfg, kind, name):
    """A short sha256 of one artifact (what later artifacts record they were computed from), or None if absent."""
    path = out_path(cfg, kind, name)
    return file_digest(path)[:16] if path.is_file() else None


def record_inputs(cfg, script, **inputs):
    """results/provenance_<script>.json: the digests of what this script's outputs were computed from, so that
    report.py (and the user) can tell results of different runs apart."""
    return save_json(out_path(cfg, "results", f"provenance_{script}.json"),
                     {"script": script, "inputs": inputs, "written": time.strftime("%Y-%m-%d %H:%M:%S")})


def recorded_inputs(cfg, script):
    """What a script's outputs were computed from, or None when it has not run in this output folder."""
    path = out_path(cfg, "results", f"provenance_{script}.json")
    try:
        return json.loads(path.read_text())["inputs"]
    except (OSError, ValueError, KeyError):
        return None


def package_versions():
    import importlib.metadata as md
    versions = {"python": sys.version.split()[0]}
    for name in ("torch", "torchvision", "numpy", "pandas", "scikit-learn", "umap-learn"):
        with contextlib.suppress(md.PackageNotFoundError):
            versions[name] = md.version(name)
    return versions


# --------------------------------------------------------------------------- entry point
def run_main(main):
    """Run a script's main: user errors become one paragraph and exit code 2, Ctrl-C exit code 130. Under torchrun
    (distributed.py) rank 0 runs main and the other ranks compute the trunk-pass shards it hands out."""
    from lab import distributed  # under torchrun: rank 0 runs main, the other ranks compute trunk-pass shards for it
    try:
        distributed.start()
        if distributed.is_main():
            main()
        else:
            distributed.serve()
        release_locks()
    except LabError as exc:
        _fail(f"error: {exc}", 2)
    except KeyboardInterrupt:
        _fail("Interrupted by the user (Ctrl-C); finished artifacts are intact.", 130)
    except distributed.Terminated:
        _fail("error: torchrun stopped this run because another rank failed: its report below names the rank and "
              "how it ended. Nothing half-written was kept as complete; run the same command again once the cause "
              "is fixed.", 143)
    except MemoryError:
        _fail("error: out of memory. Lower batch_size or num_workers (or umap_samples_per_split for the 2-D map) "
              "and run again.", 2)
    except Exception as exc:  # an unexpected failure: a researcher must see where the code failed
        traceback.print_exc(file=sys.stderr)
        _fail(f"error: unexpected failure ({type(exc).__name__}: {exc}). This is likely a bug in the lab, not in "
              f"your data: the traceback above shows where it happened; please report it with that traceback.", 1)
    finally:
        distributed.stop()


def _fail(message, code):
    """One message on stderr, then the exit code. Under torchrun, only rank 0 speaks for a run that it stops (the
    other ranks' failures reach it as reasons); a SIGTERM from torchrun must not cut the message short."""
    from lab import distributed
    distributed.stopping()
    if distributed.is_main() or code not in (130, 143):  # Ctrl-C and torchrun's stop reach every rank at once
        print("\n" + distributed.report_failure(message), file=sys.stderr)
    distributed.stop()
    raise SystemExit(code) from None
