"""Generate the synthetic FlowCam-like demo data set (one folder of grey-level PNG crops per class).

Reads nothing; writes `data/demo/<class>/<class>_NNNN.png` under the repository, and nowhere else, with a
marker file `.plankton-lab-demo`: it replaces only a folder holding that marker, so it can never overwrite a
user's data, whatever data_root says. Deterministic: the same seed gives the same bytes. Each class is drawn
with its real morphology, dark organisms on a light background, then rotated, scaled, blurred and noised.
Chaetoceros (unseen) is deliberately drawn like chainthin (seen) with setae added, so that the analysis plots
have a near neighbour to show.

    python -m lab.demo_data                   # (re)generates data/demo
"""

import math
import os
import shutil
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

import lab
from lab import artifacts, config, runtime
from lab.artifacts import DEMO_ROOT, is_demo_root  # where the demo lives, known below the generator too

CANVAS = 256  # drawing canvas; each crop is cut to the organism and scaled down afterwards


def _ink(rng):
    return int(rng.integers(20, 90))


def _chain(draw, rng, setae):
    n = int(rng.integers(3, 9))
    w, h = rng.uniform(10, 16), rng.uniform(6, 10) * (1.4 if setae else 1.0)
    x0 = CANVAS / 2 - n * w / 2
    y = CANVAS / 2 + rng.uniform(-10, 10)
    ink = _ink(rng)
    for i in range(n):
        x = x0 + i * w
        y += rng.uniform(-2, 2)
        draw.rounded_rectangle([x + 1, y - h / 2, x + w - 1, y + h / 2], radius=3, outline=ink, width=2)
        if setae:  # long bristles from each cell's corners: Chaetoceros
            for sign in (-1, 1):
                angle = sign * rng.uniform(0.6, 1.3) + math.pi / 2 * (1 - sign)
                length = rng.uniform(35, 70)
                draw.line(
                    [
                        x + w / 2,
                        y + sign * h / 2,
                        x + w / 2 + length * math.cos(angle),
                        y + sign * (h / 2 + length * abs(math.sin(angle))),
                    ],
                    fill=ink + 30,
                    width=1,
                )
    draw.line([x0, y, x0 + n * w, y], fill=ink, width=1)


def _sphere(draw, rng):
    r = rng.uniform(25, 55)
    c = CANVAS / 2
    draw.ellipse([c - r, c - r, c + r, c + r], fill=_ink(rng) - 10)
    for _ in range(int(rng.integers(3, 8))):  # granules
        a, d, s = rng.uniform(0, 2 * math.pi), rng.uniform(0, r * 0.7), rng.uniform(2, 6)
        x, y = c + d * math.cos(a), c + d * math.sin(a)
        draw.ellipse([x - s, y - s, x + s, y + s], fill=int(rng.integers(60, 110)))


def _vase(draw, rng):
    c, h, w = CANVAS / 2, rng.uniform(70, 110), rng.uniform(28, 42)
    top, bottom = c - h / 2, c + h / 2
    left = [(c - w / 2, top), (c - w / 2 * 0.9, c), (c - w / 4, bottom - 10), (c, bottom)]
    right = [(2 * c - x, y) for x, y in reversed(left)]
    ink = _ink(rng)
    draw.polygon(left + right, fill=200, outline=ink, width=3)
    for k in range(1, int(rng.integers(4, 7))):  # longitudinal ribs
        f = k / 7
        draw.line([(c - w / 2 + f * w, top), (c - w / 4 + f * w / 2, bottom - 8)], fill=ink + 20, width=1)


def _box_with_horns(draw, rng):
    c, w, h = CANVAS / 2, rng.uniform(50, 80), rng.uniform(28, 40)
    ink = _ink(rng)
    cells = int(rng.integers(1, 3))
    for i in range(cells):
        x0 = c - cells * w / 2 + i * w
        draw.rectangle([x0, c - h / 2, x0 + w - 2, c + h / 2], fill=170, outline=ink, width=3)
        for x in (x0 + 4, x0 + w - 6):  # horns at both corners
            draw.line([x, c - h / 2, x + rng.uniform(-4, 4), c - h / 2 - rng.uniform(12, 22)], fill=ink, width=3)
        draw.ellipse([x0 + w / 2 - 6, c - 6, x0 + w / 2 + 6, c + 6], fill=ink + 20)


def _collared_bulb(draw, rng):
    c, r = CANVAS / 2, rng.uniform(24, 36)
    ink = _ink(rng)
    draw.ellipse([c - r, c - r * 0.4, c + r, c + r * 1.5], fill=120, outline=ink, width=3)
    cw, ch = r * 0.75, rng.uniform(20, 32)
    draw.rectangle([c - cw, c - r * 0.4 - ch, c + cw, c - r * 0.2], fill=185, outline=ink, width=2)
    for k in range(1, 4):  # collar rings
        y = c - r * 0.4 - ch * k / 4
        draw.line([c - cw, y, c + cw, y], fill=ink, width=1)


def _three_horns(draw, rng):
    c, r = CANVAS / 2, rng.uniform(16, 24)
    ink = _ink(rng)
    draw.ellipse([c - r, c - r, c + r, c + r], fill=ink + 40, outline=ink, width=2)
    apical = rng.uniform(60, 95)
    draw.line([c, c - r, c + rng.uniform(-6, 6), c - r - apical], fill=ink, width=4)
    for sign in (-1, 1):  # two antapical horns curving down
        length = rng.uniform(45, 80)
        ang = math.pi / 2 + sign * rng.uniform(0.25, 0.6)
        draw.line(
            [
                c + sign * r * 0.6,
                c + r * 0.6,
                c + sign * r * 0.6 - length * math.cos(ang),
                c + r * 0.6 + length * math.sin(ang),
            ],
            fill=ink,
            width=4,
        )


def _spiny_sphere(draw, rng):
    c, r = CANVAS / 2, rng.uniform(25, 40)
    ink = _ink(rng)
    for _ in range(int(rng.integers(14, 26))):  # radial spines
        a, length = rng.uniform(0, 2 * math.pi), rng.uniform(15, 40)
        draw.line(
            [c + r * math.cos(a), c + r * math.sin(a), c + (r + length) * math.cos(a), c + (r + length) * math.sin(a)],
            fill=ink + 20,
            width=2,
        )
    draw.ellipse([c - r, c - r, c + r, c + r], fill=150, outline=ink, width=3)
    draw.ellipse([c - r / 2, c - r / 2, c + r / 2, c + r / 2], fill=ink + 30)


def _rod_colony(draw, rng):
    c, n, length = CANVAS / 2, int(rng.integers(4, 9)), rng.uniform(40, 70)
    ink = _ink(rng)
    if rng.random() < 0.5:  # star
        for k in range(n):
            a = 2 * math.pi * k / n + rng.uniform(-0.1, 0.1)
            draw.line([c, c, c + length * math.cos(a), c + length * math.sin(a)], fill=ink, width=4)
    else:  # zig-zag
        x, y = c - n * length / 4, c
        for k in range(n):
            a = (0.6 if k % 2 else -0.6) + rng.uniform(-0.1, 0.1)
            nx, ny = x + length / 2 * math.cos(a), y + length / 2 * math.sin(a)
            draw.line([x, y, nx, ny], fill=ink, width=4)
            x, y = nx, ny


# The one list of the demo's classes: FlowCamNet names, their role in configfile.py's defaults, how many
# images (unequal, as in real plankton samples, so that the class shares mean something) and how to draw one.
CLASSES = {
    "chainthin": ("seen", 300, lambda d, r: _chain(d, r, setae=False)),
    "darksphere": ("seen", 260, _sphere),
    "Rhabdonellidae": ("seen", 220, _vase),
    "Odontella": ("seen", 280, _box_with_horns),
    "Codonellopsis": ("seen", 240, _collared_bulb),
    "Neoceratium": ("seen", 200, _three_horns),
    "Retaria": ("unseen", 220, _spiny_sphere),
    "Thalassionematales": ("unseen", 180, _rod_colony),
    "Chaetoceros": ("unseen", 260, lambda d, r: _chain(d, r, setae=True)),
}
SEEN = [name for name, (role, _, _) in CLASSES.items() if role == "seen"]
UNSEEN = [name for name, (role, _, _) in CLASSES.items() if role == "unseen"]
DEFAULT_COUNTS = {name: count for name, (_, count, _) in CLASSES.items()}


def draw_crop(class_name, rng):
    """One grey-level crop: the organism, randomly rotated, cropped with a margin, scaled, blurred, noised."""
    background = int(rng.integers(205, 240))
    img = Image.new("L", (CANVAS, CANVAS), background)
    CLASSES[class_name][2](ImageDraw.Draw(img), rng)
    img = img.rotate(rng.uniform(0, 360), resample=Image.BILINEAR, fillcolor=background)
    ys, xs = np.nonzero(np.asarray(img) < background - 10)
    margin = int(rng.integers(3, 12))
    box = (
        max(xs.min() - margin, 0),
        max(ys.min() - margin, 0),
        min(xs.max() + margin, CANVAS),
        min(ys.max() + margin, CANVAS),
    )
    img = img.crop(box)
    scale = rng.uniform(0.35, 0.9)
    img = img.resize((max(int(img.width * scale), 8), max(int(img.height * scale), 8)), Image.BILINEAR)
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 1.2)))
    pixels = np.asarray(img, dtype=np.float32) + rng.normal(0, rng.uniform(2, 8), (img.height, img.width))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="L")


MARKER = ".plankton-lab-demo"  # written at generation; only a folder holding it is ever replaced


def _made_by_the_lab(folder):
    return (folder / MARKER).is_file()


def _refuse_foreign(folder):
    if folder.exists() and not _made_by_the_lab(folder):
        raise lab.LabError(
            f"{folder} exists and was not made by the lab (lab/demo_data.py): it has no {MARKER} "
            f"file, so the demo generator will not touch it: it may be your data. Move it away if it is "
            f"an old demo set, or leave it; the demo always lives in {DEMO_ROOT}."
        )


def generate(root=DEMO_ROOT, counts=None, seed=0):
    """Write the demo data set under root (default data/demo); counts maps class -> number of images.
    Refuses any existing folder that it did not make itself."""
    counts = counts or DEFAULT_COUNTS
    root = artifacts.resolve(root)
    staging = root.with_name(root.name + ".partial")  # renamed at the end: an interrupted run leaves no half set
    _refuse_foreign(root)
    _refuse_foreign(staging)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    (staging / MARKER).write_text(
        f"synthetic demo data written by the lab (lab/demo_data.py, seed {seed}); safe to delete\n"
    )
    for c_idx, name in enumerate(counts):
        folder = staging / name
        folder.mkdir()
        rng = np.random.default_rng([seed, c_idx])
        for i in range(counts[name]):
            draw_crop(name, rng).save(folder / f"{name}_{i:04d}.png")
    if root.exists():
        shutil.rmtree(root)  # ours: it holds the marker
    os.replace(staging, root)
    return root


def ensure_demo_data(cfg):
    """Generate the demo data on first use, when data_root is the demo folder and it is missing. Called by the
    entry points (dataloader.py, run_pipeline.py) alone: the scripts after them stop with the command instead."""
    if is_demo_root(cfg) and not DEMO_ROOT.exists():
        print(f"[demo] generating the synthetic demo data set in {DEMO_ROOT} (once, a few seconds) ...")
        generate(DEMO_ROOT)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    config.load_config(argv, __doc__)  # the same --help and checks as every script
    if any(a.startswith("--data_root=") for a in argv):
        raise lab.LabError(
            f"The demo generator (python -m lab.demo_data) always writes into {DEMO_ROOT} and "
            f"nowhere else, so that it can never overwrite your data; drop --data_root. data_root only "
            f"says where the other scripts read images from."
        )
    root = generate(DEMO_ROOT)
    print(f"wrote {sum(DEFAULT_COUNTS.values())} images of {len(DEFAULT_COUNTS)} classes to {root}")


if __name__ == "__main__":
    runtime.run_main(lambda: main(sys.argv[1:]))
