"""Benchmark of the near-copy search (lab/near_copies.py): does it find synthetic copies of real plankton images,
does it leave distinct images alone, and what does it cost?

Reads ../shared/data/ndsb9 (or --data_root=FOLDER, one folder per class) in place; writes the synthetic copies only
in a scratch folder (removed at the end). Measures:
  copies   --copies (default 400) random images, seeded, each re-saved as JPEG at quality 70, shifted by 2 px (the
           uncovered strip background, the far edge lost), re-cropped by 2 px and brightened by 10 %: the share of
           each kind the search finds as the image's near-copy (the whole search: sizes, coarse step, full
           resolution), and how many brightened copies kept under a quarter of their particle pixels
  search   the search over the whole data set, within classes: the pairs compared at full resolution, the pairs
           and images flagged, and its seconds (thumbnails apart)
Prints a table and writes results/near_copies_benchmark.json under --output_dir (default: the current folder's
results/, created when missing), with the flagged pairs.

    python bench/bench_near_copies.py                                  # ndsb9: about 1 min 30 s on 2 cores
    python bench/bench_near_copies.py --data_root=/data/FlowCam --copies=100
"""

import io
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image, ImageEnhance  # noqa: E402

import lab  # noqa: E402
from bench import common  # noqa: E402
from bench.bench_pipeline import NDSB9  # noqa: E402
from lab import artifacts, image_io, near_copies, particle_match, runtime  # noqa: E402

OPTIONS = {"--data_root": str(NDSB9), "--copies": "400", "--seed": "42", "--output_dir": "."}
KINDS = ("jpeg70", "shift2", "recrop2", "bright10")
SURVIVES = 0.25  # a brightened copy whose particle keeps less than this share of its pixels is counted apart


def options(argv):
    chosen = dict(OPTIONS)
    for arg in argv:
        name, _, value = arg.partition("=")
        if name not in chosen:
            raise lab.LabError(f"Unknown option {name!r}: the benchmark takes {', '.join(OPTIONS)}.")
        chosen[name] = value.strip("'\"")
    return chosen


def images_of(root):
    """(paths, class of each) of the image files under root's class folders, sorted."""
    paths, classes = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(folder.iterdir()):
            if f.suffix.lower() in image_io.IMAGE_EXTENSIONS:
                paths.append(str(f))
                classes.append(folder.name)
    if not paths:
        raise lab.LabError(
            f"No class folders with images under {root}: give --data_root=FOLDER (one folder per "
            f"class), or put ../shared/data/ndsb9 beside the repository."
        )
    return paths, np.array(classes)


def synthetic_copies(img):
    """The issue's near-copies of one image (any mode), and a 2-pixel re-crop; tests/test_near_copies.py uses them."""
    pixels = np.asarray(img)
    background = np.median(np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]]), axis=0)
    shifted = np.empty_like(pixels)
    shifted[:] = background.astype(pixels.dtype)
    shifted[2:, 2:] = pixels[:-2, :-2]
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=70)
    width, height = img.size
    return {
        "jpeg70": Image.open(buffer).convert("RGB"),
        "shift2": Image.fromarray(shifted),
        "recrop2": img.crop((2, 2, width, height)),
        "bright10": ImageEnhance.Brightness(img).enhance(1.1),
    }


def measure_copies(paths, count, seed, scratch):
    """Per kind, the share of `count` random images whose copy the search pairs with them, and the brightened
    copies whose particle kept under SURVIVES of its pixels."""
    rng = np.random.default_rng(seed)
    found, erased = {kind: 0 for kind in KINDS}, 0
    for k in rng.choice(len(paths), min(count, len(paths)), replace=False):
        original = near_copies.thumbnail(paths[k])
        for kind, copy in synthetic_copies(image_io.load_rgb(paths[k])).items():
            path = str(scratch / f"{kind}.png")
            copy.save(path)
            made = near_copies.thumbnail(path)
            (i, _, *_), _ = near_copies.find_pairs(
                [paths[k], path], np.stack([original[0], made[0]]), np.array([original[1], made[1]])
            )
            found[kind] += int(len(i) == 1)
            if kind == "bright10":
                before = (particle_match.full_grey(paths[k]) < particle_match.OBJECT_LEVEL).sum()
                after = (particle_match.full_grey(path) < particle_match.OBJECT_LEVEL).sum()
                erased += int(after < SURVIVES * max(before, 1))
    n = min(count, len(paths))
    return {"images": n, **{kind: found[kind] / n for kind in KINDS}, "bright10_particle_erased": erased}


def measure_search(paths, classes):
    started = time.perf_counter()
    made = [near_copies.thumbnail(p) for p in paths]
    thumbnails = time.perf_counter() - started
    pixels, sizes = np.stack([m[0] for m in made]), np.array([m[1] for m in made])
    started = time.perf_counter()
    (i, j, texture, shape, noise, _, _), compared = near_copies.find_pairs(paths, pixels, sizes, classes)
    seconds = time.perf_counter() - started
    flagged = set(i.tolist()) | set(j.tolist())
    return {
        "images": len(paths),
        "classes": len(set(classes.tolist())),
        "thumbnail_seconds": round(thumbnails, 1),
        "search_seconds": round(seconds, 1),
        "pairs_compared": int(compared),
        "pairs": int(len(i)),
        "images_flagged": len(flagged),
        "share_flagged": len(flagged) / len(paths),
        "flagged_pairs": [
            {"a": paths[a], "b": paths[b], "texture": float(t), "shape": float(s), "noise": float(n)}
            for a, b, t, s, n in zip(i, j, texture, shape, noise)
        ],
    }


def rows(copies, search):
    return [
        common.information(
            f"near-copies: {kind}",
            "synthetic copies of random images found",
            round(100 * copies[kind], 2),
            "%",
            f"{copies['bright10_particle_erased']} of {copies['images']} kept under {SURVIVES:.0%} of their particle"
            if kind == "bright10"
            else "",
        )
        for kind in KINDS
    ] + [
        common.information(
            "near-copies: flagged",
            f"images with a near-copy in their class, of {search['images']}",
            round(100 * search["share_flagged"], 2),
            "%",
            f"{search['pairs']} pairs; {search['pairs_compared']} compared at full resolution",
        ),
        common.information(
            "near-copies: search",
            "the search over every image, thumbnails apart",
            search["search_seconds"],
            " s",
            f"thumbnails {search['thumbnail_seconds']} s",
        ),
    ]


def main(argv=None):
    chosen = options(sys.argv[1:] if argv is None else argv)
    root = artifacts.resolve(chosen["--data_root"])
    if not root.is_dir():
        raise lab.LabError(f"The benchmark data {root} is absent. Pass --data_root=FOLDER (one folder per class).")
    paths, classes = images_of(root)
    scratch = Path(tempfile.mkdtemp(prefix="plankton-near-copies-"))
    try:
        copies = measure_copies(paths, int(chosen["--copies"]), int(chosen["--seed"]), scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    search = measure_search(paths, classes)
    result = {
        "data_root": str(root),
        "copies": copies,
        "search": search,
        "rows": rows(copies, search),
        "machine": common.machine(),
    }
    out = artifacts.resolve(chosen["--output_dir"]) / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = artifacts.save_json(out / "near_copies_benchmark.json", result)
    for row in result["rows"]:
        print(f"{row['what']:<24} {row['compared']:<58} {row['measured']:>8}{row['unit']:<3} {row['reason']}")
    print(f"written to {path}")
    return result


if __name__ == "__main__":
    runtime.run_main(main)
