"""Shared plumbing of the lab's scripts: configuration, paths, device, seeding, artifact I/O, entry point.

Every script does `cfg = lab.load_config(argv)` and runs its `main` through `lab.run_main`, so
overrides, error messages and atomic writes behave the same everywhere. The configuration comes from
configfile.py and `--name=value` overrides; artifacts live under `output_dir` and are written atomically.
Nothing here knows about images, models or checkpoints (dataloader.py, backbone.py and checkpoint.py do).
"""
import ast
import contextlib
import difflib
import errno
import hashlib
import json
import math
import os
import random
import sys
import tempfile
import traceback
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parent
NULLABLE = {"backbone_weights", "predict_dir"}
ARTIFACT_DIRS = ("checkpoints", "results", "figs", "embeddings", "cache")
NOVELTY_SCORES = ("msp", "energy", "knn", "mahalanobis", "mahalanobis_knn")  # novelty_scores.SCORES (tested)


class LabError(Exception):
    """A problem the user can fix; printed as one paragraph, without a traceback."""


# --------------------------------------------------------------------------- config
def config_defaults():
    import configfile
    settings = (bool, int, float, str, list, tuple, type(None))
    return {k: v for k, v in vars(configfile).items()
            if not k.startswith("_") and k.islower() and isinstance(v, settings)}


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
        bad(f"lr={c.lr} must be a positive finite number (the mission uses 0.0014).")
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
            f"their sum must be below 1 (the mission uses 0.05 + 0.20).")
    if not 32 <= c.image_size <= 1024:
        bad(f"image_size={c.image_size} cannot be taken by the architecture: the frozen trunk divides it by 8 "
            f"and the head pools by 2 more, so it must lie in 32..1024 (the mission uses 128).")
    if not 0 <= c.dropout < 1 or not 0 <= c.umap_min_dist <= 1:
        bad("dropout must lie in [0, 1) and umap_min_dist in [0, 1].")
    if c.num_workers < 0 or c.seed < 0 or c.max_images_per_class < 0 or c.min_images_per_class < 3:
        bad("num_workers, seed and max_images_per_class must be >= 0 and min_images_per_class >= 3.")
    if c.precision not in ("auto", "fp32", "bf16", "fp16"):
        bad(f"precision={c.precision!r} must be one of 'auto', 'fp32', 'bf16', 'fp16'.")
    if c.class_weighting not in ("none", "balanced"):
        bad(f"class_weighting={c.class_weighting!r} must be 'none' (plain cross-entropy, the mission's) or 'balanced' "
            f"(inverse-frequency class weights, for imbalanced data).")
    if c.novelty_score not in NOVELTY_SCORES:
        bad(f"novelty_score={c.novelty_score!r} must be one of {', '.join(map(repr, NOVELTY_SCORES))} (the lab's "
            f"default, 'mahalanobis_knn', told new taxa best on ndsb9).")
    if c.predict_dir is not None and not c.predict_dir.strip():
        bad("predict_dir='' names no folder: give the folder of new images, e.g. --predict_dir=/data/cruise42.")
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
    cfg.seen_classes, cfg.unseen_classes = list(cfg.seen_classes), list(cfg.unseen_classes)
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
    """Create the artifact folders and prove they are writable, so a run never fails at its end."""
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
    import torch
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise LabError(f"device={name!r} was asked for but CUDA is not available on this machine; "
                       f"use --device=auto or --device=cpu.")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise LabError("device='mps' was asked for but MPS is not available; use --device=auto or --device=cpu.")
    return torch.device(name)



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


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend: scripts run on servers without a display."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


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


def package_versions():
    import importlib.metadata as md
    versions = {"python": sys.version.split()[0]}
    for name in ("torch", "torchvision", "numpy", "pandas", "scikit-learn", "umap-learn"):
        with contextlib.suppress(md.PackageNotFoundError):
            versions[name] = md.version(name)
    return versions


# --------------------------------------------------------------------------- entry point
def run_main(main):
    """Run a script's main: user errors become one paragraph and exit code 2, Ctrl-C exit code 130."""
    try:
        main()
    except LabError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("\nInterrupted by the user (Ctrl-C); finished artifacts are intact.", file=sys.stderr)
        raise SystemExit(130) from None
    except MemoryError:
        print("\nerror: out of memory. Lower batch_size or num_workers (or umap_samples_per_split for the "
              "2-D map) and run again.", file=sys.stderr)
        raise SystemExit(2) from None
    except Exception as exc:  # an unexpected failure: keep the traceback, but out of the user's way
        log = Path(tempfile.gettempdir()) / f"plankton-lab-error-{os.getpid()}.txt"
        log.write_text(traceback.format_exc())
        print(f"\nerror: unexpected failure ({type(exc).__name__}: {exc}). This is likely a bug in the lab, not "
              f"in your data; the full traceback is in {log}. Please report it with that file.", file=sys.stderr)
        raise SystemExit(1) from None
