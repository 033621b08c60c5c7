"""Figures: matplotlib on the file-only Agg backend, class names every installed font can draw (or escaped, with
one note), file names that stand for a class on every disk, and atomic saving.
"""

import contextlib
import hashlib
import logging
import re
import sys
import unicodedata

from lab import artifacts


def figure_slug(name, class_names=()):
    """The part of a figure's file name that stands for a class: the name itself when it is plain ASCII
    (letters, digits, _ . -), else its readable ASCII part plus 8 hex digits of a hash of the exact name
    (gallery_cls-3f2a9c1b.png for a Chinese name). Unique per class and the same on every run, where
    replacing characters alone would give two classes one file name. class_names: the other classes of the
    same figures; a name that differs from one of them only in letter case gets the hash too, as macOS and
    Windows disks take Odontella.png and odontella.png for one file."""
    name = unicodedata.normalize("NFC", name)
    case_twin = any(
        name != other and name.casefold() == unicodedata.normalize("NFC", other).casefold() for other in class_names
    )
    if re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}", name) and not case_twin:
        return name
    ascii_part = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", ascii_part).strip("._-")[:60]
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:8]
    return f"{readable}-{digest}" if readable else f"cls-{digest}"


FEW_CLASSES_PALETTE = (  # matplotlib's tab10 then Dark2: the maps' colours up to 18 classes, as always
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
    "#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666",
)  # fmt: skip


def class_palette(n_classes):
    """Hex colours for n classes, one each, the same in the static and the interactive map: tab10 then Dark2 up to
    18 classes; past that colorcet's Glasbey palette (256 colours chosen to be told apart; its first ten are
    tab10's), cycled beyond 256."""
    if n_classes <= len(FEW_CLASSES_PALETTE):
        return list(FEW_CLASSES_PALETTE[:n_classes])
    import colorcet

    glasbey = colorcet.palette["glasbey_category10"]
    return [glasbey[i % len(glasbey)] for i in range(n_classes)]


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
        print(
            f"note: no installed font has the characters of the class name(s) {', '.join(map(repr, new))}: figures "
            f"show those characters escaped (\\uXXXX). To see them drawn, install a font that has them (e.g. "
            f"Noto Sans CJK: `apt install fonts-noto-cjk`, or from fonts.google.com/noto) and delete "
            f"matplotlib's font cache ({_matplotlib_cache()}).",
            file=sys.stderr,
        )
    return shown


def _matplotlib_cache():
    import matplotlib

    return matplotlib.get_cachedir()


def save_figure(path, fig):
    """Save fig as a PNG: at path (atomically), or as a file of an output set (manifest.OutputSet.file)."""
    plt = pyplot()
    try:
        write = lambda p: fig.savefig(p, dpi=110, bbox_inches="tight")  # noqa: E731
        return path.stage(write) if hasattr(path, "stage") else artifacts.atomic_write(path, write)
    finally:
        plt.close(fig)
