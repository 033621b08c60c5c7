"""The settings: configfile.py (or the file PLANKTON_LAB_CONFIG names), `--name=value` overrides, type-checked
against the defaults and validated from one table of choices and ranges before any work starts.
Reads configfile.py; writes nothing.
"""

import ast
import difflib
import math
import os
import sys
import textwrap
import unicodedata
from pathlib import Path
from types import SimpleNamespace

import lab
from lab import settings_help

NULLABLE = {
    "backbone_weights",
    "predict_dir",
    "query",
    "labels_file",
    "labels_columns",
    "labels_map",
    "samples",
    "sample_metadata",
    "accept_precision",
}
# Settings that are a number or None, whatever configfile.py holds (accept_precision=None there stays a number's).
NULLABLE_NUMBERS = {"accept_precision"}


# Settings whose default is None but whose values are lists of strings (labels_file: a string too).
NULLABLE_LISTS = {"labels_file": "a string or a list of strings", "labels_columns": "a list of strings"}


# The choice lists, defined here once; the modules that use them import them from here.
LABEL_STATUSES = ("validated", "predicted", "dubious")  # EcoTaxa's statuses of a classified object
NOVELTY_SCORES = ("msp", "energy", "knn", "mahalanobis", "mahalanobis_knn")  # novelty_scores.py computes each
ABUNDANCE_METHODS = ("cc", "acc", "pcc", "pacc", "emq", "emq_bcts", "emq_nbvs")  # QuaPy's methods, lab/abundances.py
AUDIT_MODELS = ("linear", "head")  # label_audit.py fits one per fold
STOPPING_RULES = ("averaged", "smoothed", "raw")  # train.py's early stopping: head_training.STOPPING
TRUNK_VIEWS = (1, 2, 4, 8)  # the first k dihedral views of image_io.VIEW_TURNS, each a group of transforms


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


def defaults_file():
    """The path of the defaults file: the one PLANKTON_LAB_CONFIG names, else configfile.py."""
    other = os.environ.get("PLANKTON_LAB_CONFIG")
    if other:
        return Path(other)
    import configfile

    return Path(configfile.__file__)


def default_of(name):
    """One setting's value in the defaults file (configfile.py, or PLANKTON_LAB_CONFIG's): what a message quotes as
    "the default", so that the message says what the user's own file holds."""
    return config_defaults()[name]


def _check_type(name, value, default):
    def fail(expected, words=False):  # words: a string or a list is expected, so say how the shell passes one
        quote = f" In the shell, quote a string (--{name}=\"'text'\" or a bare word), a list: --{name}=\"['a', 'b']\"."
        said = f"--{name}={value!r} has the wrong type: expected {expected} (the default is {default!r})."
        raise lab.LabError(said + (quote if words else ""))

    if name in NULLABLE and value is None:
        return None
    if name == "seen_classes" and value == ALL_CLASSES:
        return value
    if name == "cpu_threads" and value != "auto":  # "auto" or a number
        return value if isinstance(value, int) and not isinstance(value, bool) else fail("'auto' or an integer")
    if name in NULLABLE_NUMBERS:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail("a number or None")
        return float(value)
    if name in NULLABLE_LISTS:
        if isinstance(value, str) and name == "labels_file":
            return value
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            fail(NULLABLE_LISTS[name] + " or None", words=True)
        return list(value)
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
            fail("a string" + (" or None" if name in NULLABLE else ""), words=True)
        return value
    if isinstance(default, (list, tuple)):
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            fail("a list of strings", words=True)
        return list(value)
    return value


def parse_overrides(argv, defaults):
    """`--name=value` pairs -> dict; values are Python literals, or bare words taken as strings."""
    overrides = {}
    for arg in argv:
        if not arg.startswith("--") or "=" not in arg:
            raise lab.LabError(
                f"Cannot read the argument {arg!r}: every argument must look like --name=value, "
                f"with a name from configfile.py (e.g. --lr=0.001)."
            )
        name, text = arg[2:].split("=", 1)
        if name not in defaults:
            close = difflib.get_close_matches(name, defaults, n=1)
            hint = f" Did you mean --{close[0]}?" if close else ""
            raise lab.LabError(
                f"Unknown setting --{name}: it is not a name in configfile.py.{hint} "
                f"Run the script with --help to list the settings."
            )
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text  # a bare word such as --device=cpu
        overrides[name] = _check_type(name, value, defaults[name])
    return overrides


# --------------------------------------------------------------------------- the rules, one table
# Each setting's rule: a range ("at_least", "between", "open_unit") or a set of choices; the message is made from
# the rule, so a range is written once. Rules between settings come after the table.
def at_least(low, zero_means=None):
    """An integer >= low; zero_means: 0 is also allowed and means that (e.g. 'every image')."""

    def check(value):
        ok = value >= low or (zero_means is not None and value == 0)
        text = f"at least {low}" + (f", or 0 ({zero_means})" if zero_means else "")
        return ok, text

    return check


def between(low, high, low_open=False, high_open=False):
    def check(value):
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        text = (
            f"strictly between {low:g} and {high:g}"
            if low_open and high_open
            else f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        )
        return math.isfinite(value) and above and below, text

    return check


def positive(value):
    return math.isfinite(value) and value > 0, "a positive finite number"


def one_of(*choices):
    def check(value):
        return value in choices, "one of " + ", ".join(map(repr, choices))

    return check


def auto_or_at_least(low):
    return lambda value: (value == "auto" or value >= low, f"'auto' or an integer of at least {low}")


def a_device(value):
    return (
        value in ("auto", "cpu", "cuda", "mps") or value.startswith("cuda:"),
        "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'",
    )


ALL_CLASSES = "all"  # seen_classes: every class folder (or table label) that is not an unseen class


def distinct_classes(value):
    return len(value) >= 2 and len(set(value)) == len(value), "a list of at least 2 distinct classes"


def all_or_distinct_classes(value):
    if value == ALL_CLASSES:
        return True, ""
    ok, _ = distinct_classes(value)
    return (
        ok,
        f"{ALL_CLASSES!r} (every class folder that is not an unseen class) or a list of at least 2 distinct classes",
    )


def every_class(cfg):
    """True when seen_classes is 'all' and the scan has not yet made it a list (data_folders.candidate_classes)."""
    return cfg.seen_classes == ALL_CLASSES


def tables_or_none(value):
    names = [value] if isinstance(value, str) else value
    return value is None or (
        len(names) > 0 and all(n.strip() for n in names)
    ), "None, or the path of a table or folder of tables (or a list of them)"


def two_columns_or_none(value):
    return (
        value is None or (len(value) == 2 and all(v.strip() for v in value) and value[0] != value[1]),
        "None, or two different column names: the image path's, then the label's",
    )


def a_path_or_none(value):
    return value is None or bool(value.strip()), "None, or the path of a two-column table"


def samples_or_none(value):
    return value is None or bool(value.strip()), "None, 'subfolders', or the path of a table of samples and images"


def a_share_or_none(value):
    ok = value is None or (math.isfinite(value) and 0 < value < 1)
    return ok, "None (accept nothing automatically), or a precision strictly between 0 and 1"


def statuses(value):
    return (
        len(value) > 0 and set(value) <= set(LABEL_STATUSES),
        "a non-empty list of EcoTaxa statuses among " + ", ".join(map(repr, LABEL_STATUSES)),
    )


RULES = {
    "seen_classes": all_or_distinct_classes,
    "unseen_classes": distinct_classes,
    "val_fraction": between(0, 1, True, True),
    "test_fraction": between(0, 1, True, True),
    "min_images_per_class": at_least(3),
    "max_images_per_class": at_least(0, "every image"),
    "near_copies": one_of("report", "group"),
    "image_size": between(32, 1024),
    "dropout": between(0, 1, high_open=True),
    "embedding_dim": at_least(2),
    "batch_size": at_least(1),
    "lr": positive,
    "epochs": at_least(1),
    "patience": at_least(1),
    "stopping": one_of(*STOPPING_RULES),
    "trunk_views": one_of(*TRUNK_VIEWS),
    "class_weighting": one_of("none", "balanced"),
    "seed": at_least(0),
    "device": a_device,
    "precision": one_of("auto", "fp32", "bf16", "fp16"),
    "head_precision": one_of("auto", "fp32", "bf16"),
    "num_workers": at_least(0),
    "cpu_threads": auto_or_at_least(1),
    "umap_samples_per_split": at_least(10),
    "reduction_method": one_of("umap", "tsne", "pca"),
    "umap_n_neighbors": at_least(2),
    "umap_min_dist": between(0, 1),
    "distance_max_per_class": at_least(2, "every image"),
    "gallery_size": at_least(1),
    "transfer_repeats": at_least(1),
    "transfer_test_fraction": between(0, 1, True, True),
    "transfer_max_images": at_least(2),
    "knn_k": at_least(1),
    "novelty_knn_k": at_least(1),
    "novelty_score": one_of(*NOVELTY_SCORES),
    "similar_k": at_least(1),
    "audit_folds": at_least(2),
    "audit_model": one_of(*AUDIT_MODELS),
    "labels_file": tables_or_none,
    "labels_columns": two_columns_or_none,
    "labels_statuses": statuses,
    "labels_map": a_path_or_none,
    "abundance_method": one_of(*ABUNDANCE_METHODS),
    "abundance_bootstrap": at_least(20),
    "abundance_calibration": one_of("validation", "out_of_fold"),
    "samples": samples_or_none,
    "sample_metadata": a_path_or_none,
    "accept_precision": a_share_or_none,
    "accept_confidence": between(0, 1, True, True),
}
# Why a value is refused, where the range alone does not say it.
WHY = {
    "image_size": "cannot be taken by the architecture: the frozen trunk divides it by 8 and the head pools by 2 more",
    "head_precision": "fp16 would need loss scaling",
    "audit_folds": "each image is scored by a model fitted on the other folds",
    "novelty_score": "the lab's default, 'mahalanobis_knn', told new taxa best on ndsb9",
    "class_weighting": "'none' is plain cross-entropy; 'balanced' weights classes by inverse frequency",
    "abundance_bootstrap": "a 95 % interval from fewer draws rests on one or two of them",
}


def _cross_setting_problems(c, defaults):
    """The rules that involve two settings or more; `defaults`: the defaults file's values, which messages quote."""
    if c.val_fraction + c.test_fraction >= 1:
        yield (
            f"val_fraction + test_fraction = {c.val_fraction + c.test_fraction:g} leaves no training images; "
            f"their sum must be below 1 (the defaults are {defaults['val_fraction']!r} + "
            f"{defaults['test_fraction']!r})."
        )
    if not every_class(c):  # the rules that count classes run once the scan has made "all" a list
        both = sorted(set(c.seen_classes) & set(c.unseen_classes))
        if both:
            yield (
                f"the classes {both} are in both seen_classes and unseen_classes; a class is either trained on "
                f"(seen) or held out (unseen), so remove it from one of the two lists."
            )
        needed = c.novelty_knn_k * len(c.seen_classes)
        if c.novelty_bank_max < 0 or 0 < c.novelty_bank_max < needed:
            yield (
                f"novelty_bank_max={c.novelty_bank_max} must be 0 (every training embedding) or at least "
                f"novelty_knn_k x the seen classes ({c.novelty_knn_k} x {len(c.seen_classes)} = {needed}): the kNN "
                f"score needs novelty_knn_k neighbours of each class in its reference "
                f"(default {defaults['novelty_bank_max']!r})."
            )
    if c.predict_dir is not None and not c.predict_dir.strip():
        yield (
            f"predict_dir={c.predict_dir!r} names no folder: give the folder of new images, e.g. "
            f"--predict_dir=/data/cruise42."
        )
    if c.sample_metadata is not None and c.samples is None:
        yield (
            f"sample_metadata={c.sample_metadata!r} describes samples, but samples=None makes predict_dir one "
            f"sample: add --samples=subfolders (each sub-folder of predict_dir a sample) or --samples=<table of "
            f"sample and image path>, or leave sample_metadata out."
        )
    if c.query is not None and not c.query.strip():
        yield "query='' names no image: give an image or a folder, e.g. --query=/data/cruise42/img_0001.png."


def validate_config(c):
    """Reject values the scripts cannot work with, before any work starts: each setting against its rule in RULES,
    then the rules between settings."""
    defaults = config_defaults()
    for name, rule in RULES.items():
        value = getattr(c, name)
        ok, expected = rule(value)
        if not ok:
            why = f" ({WHY[name]})" if name in WHY else ""
            default = f" The default is {defaults[name]!r}." if name in defaults else ""
            raise lab.LabError(
                f"Invalid configuration: {name}={value!r} must be {expected}{why}.{default} Fix it "
                f"in configfile.py or with a --name=value override."
            )
    for problem in _cross_setting_problems(c, defaults):
        raise lab.LabError(f"Invalid configuration: {problem} Fix it in configfile.py or with a --name=value override.")


def load_config(argv=None, describe=None):
    """Defaults from configfile.py, then `--name=value` overrides, type-checked and validated."""
    argv = sys.argv[1:] if argv is None else list(argv)
    defaults = config_defaults()
    if any(a in ("-h", "--help") for a in argv):
        try:
            print(settings_help.help_text(defaults, defaults_file(), describe), flush=True)
        except BrokenPipeError:  # `--help | head` read what it wanted; Python's last flush must not fail too
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(0)
    cfg = SimpleNamespace(**{**defaults, **parse_overrides(argv, defaults)})
    # Composed Unicode (NFC), as typed on most systems: a folder name that a macOS zip wrote decomposed (NFD)
    # is matched in that form too (data_folders.class_folders), and both spell the same label.
    if not every_class(cfg):
        cfg.seen_classes = [unicodedata.normalize("NFC", c) for c in cfg.seen_classes]
    cfg.unseen_classes = [unicodedata.normalize("NFC", c) for c in cfg.unseen_classes]
    validate_config(cfg)
    return cfg


# What this process has printed of the settings, so that run_pipeline.py's stages do not repeat it.
_shown = {}
_UNSET = object()


NAMES_SHOWN = 12  # class names: a longer list is printed as its count and first few, and the file that lists them


def names_text(names, listed_in="results/split.json"):
    """A list of class names for a printed line: the list itself up to NAMES_SHOWN names, else how many, the first
    three and the file that lists them all (no line spells out 110 names)."""
    names = list(names)
    if len(names) <= NAMES_SHOWN:
        return repr(names)
    return f"[{len(names)} classes: {', '.join(map(repr, names[:3]))}, ... (all in {listed_in})]"


def setting_text(name, value):
    """`name=value` for a printed line, class lists shortened by names_text."""
    if name in ("seen_classes", "unseen_classes") and isinstance(value, (list, tuple)):
        return f"{name}={names_text(value)}"
    return f"{name}={value!r}"


def print_config(cfg, title="configuration"):
    """The whole configuration, wrapped to the terminal's usual width (run_pipeline.py, once at its start)."""
    items = [setting_text(k, v) for k, v in vars(cfg).items()]
    print(
        f"[{title}]\n"
        + textwrap.fill(
            "  ".join(items),
            width=118,
            initial_indent="  ",
            subsequent_indent="  ",
            break_long_words=False,
            break_on_hyphens=False,
        )
    )
    _shown.update(vars(cfg))


def print_settings(cfg):
    """One line: the settings that differ from configfile.py and that this process has not printed yet (a script's
    own overrides; nothing inside run_pipeline.py, which printed them all at its start)."""
    defaults = config_defaults()
    changed = {k: v for k, v in vars(cfg).items() if defaults.get(k, _UNSET) != v and _shown.get(k, _UNSET) != v}
    if changed:
        print(
            "[settings] "
            + ", ".join(setting_text(k, v) for k, v in changed.items())
            + " (the others as in configfile.py)"
        )
    elif not _shown:
        print("[settings] as in configfile.py")
    _shown.update(vars(cfg))
