"""The settings: configfile.py (or the file PLANKTON_LAB_CONFIG names), `--name=value` overrides, type-checked
against the defaults and validated from one table of choices and ranges before any work starts.
Reads configfile.py; writes nothing.
"""
import ast
import difflib
import math
import os
import sys
import unicodedata
from types import SimpleNamespace

import lab

NULLABLE = {"backbone_weights", "predict_dir"}


NOVELTY_SCORES = ("msp", "energy", "knn", "mahalanobis", "mahalanobis_knn")  # novelty_scores.SCORES (tested)


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
        raise lab.LabError(f"--{name}={value!r} has the wrong type: expected {expected} (the default is "
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
            raise lab.LabError(f"Cannot read the argument {arg!r}: every argument must look like --name=value, "
                               f"with a name from configfile.py (e.g. --lr=0.001).")
        name, text = arg[2:].split("=", 1)
        if name not in defaults:
            close = difflib.get_close_matches(name, defaults, n=1)
            hint = f" Did you mean --{close[0]}?" if close else ""
            raise lab.LabError(f"Unknown setting --{name}: it is not a name in configfile.py.{hint} "
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
        raise lab.LabError(f"Invalid configuration: {msg} Fix it in configfile.py or with a --name=value override.")
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
    if c.audit_folds < 2:
        bad(f"audit_folds={c.audit_folds} must be at least 2: each image is scored by a head trained on the other "
            f"folds (the default is 5).")
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
    # is matched in that form too (data_folders.class_folders), and both spell the same label.
    cfg.seen_classes = [unicodedata.normalize("NFC", c) for c in cfg.seen_classes]
    cfg.unseen_classes = [unicodedata.normalize("NFC", c) for c in cfg.unseen_classes]
    validate_config(cfg)
    return cfg


def print_config(cfg, title="configuration"):
    print(f"[{title}] " + ", ".join(f"{k}={v!r}" for k, v in vars(cfg).items()))
