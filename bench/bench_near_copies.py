"""Benchmark of the near-copy search (lab/near_copies.py, its index lab/near_copy_index.py): does the indexed search
find the synthetic copies of real plankton images that the all-pairs search finds, does it leave distinct images
alone, and how does its time grow?

Reads ../shared/data/ndsb9 (or --data_root=FOLDER, one folder per class) in place, and for the other measurements
the folders named below; writes the synthetic copies and the drawn class only in a scratch folder (removed at the
end). Measures:
  copies   --copies (default 400) random images, seeded, each re-saved as JPEG at quality 70, shifted by 2 px (the
           uncovered strip background, the far edge lost), re-cropped by 2 px and brightened by 10 %: per kind, the
           share the all-pairs search finds (the pair alone: it has no ranking) and the share the indexed search
           finds with the copies among all the images of their class (its neighbours and ranking see them all)
  search   the indexed search over --data_root and each of --false_pair_roots (data/demo is generated when
           missing), and the all-pairs search beside it (--reference=True): pairs found by each, new pairs
  timing   the indexed search over --timing_root (default ../shared/data/ndsb112; thumbnails apart)
  big      --big_class=N (default 0: off): one class of N images drawn by lab/demo_data (--big_class_name, default
           darksphere: featureless look-alikes), 1 % of them planted copies (shift, re-crop, brightened); the
           indexed search at N/8, N/4, N/2 and N, its time, the growth exponent (least squares of log time on
           log n), the index's rounds and cap, and the planted copies found
Prints progress lines and a table; writes results/near_copies_benchmark.json under --output_dir (default: the current
folder's results/, created when missing).

    python bench/bench_near_copies.py                       # ndsb9, demo, flowcam, ndsb112
    python bench/bench_near_copies.py --big_class=30000     # and one 30,000-image class
    python bench/bench_near_copies.py --data_root=/data/FlowCam --copies=100 --timing_root= --false_pair_roots=
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
from lab import artifacts, demo_data, image_io, near_copies, particle_match, progress, runtime  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
OPTIONS = {
    "--data_root": str(NDSB9),
    "--copies": "400",
    "--seed": "42",
    "--output_dir": ".",
    "--false_pair_roots": f"{demo_data.DEMO_ROOT},{SHARED / 'flowcam-vliz-demo'}",
    "--timing_root": str(SHARED / "ndsb112"),
    "--reference": "True",
    "--big_class": "0",
    "--big_class_name": "darksphere",
}
KINDS = ("jpeg70", "shift2", "recrop2", "bright10")
PLANTED = ("shift2", "recrop2", "bright10")  # a JPEG re-save of a featureless particle is missed by design
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


def thumbnails_of(paths, desc="thumbnails"):
    """(pixels, sizes) of the files, as near_copies.thumbnails makes them (no cache here)."""
    made = [near_copies.thumbnail(p) for p in progress.progress(paths, len(paths), desc, "images")]
    return np.stack([m[0] for m in made]), np.array([m[1] for m in made])


def is_pair_found(paths, pixels, sizes, a, b):
    """Whether the full-resolution comparison confirms the pair (a, b)."""
    factor = max(particle_match.reduction(sizes[a]), particle_match.reduction(sizes[b]))
    greys = [particle_match.full_grey(paths[k], factor) for k in (a, b)]
    return bool(particle_match.is_near_copy(*particle_match.confirm(*greys)[:3]))


def planted_found(paths, pixels, sizes, classes, originals, first_copy):
    """For each original (its copy at first_copy + r), whether the indexed search over all the images finds the
    pair: the index and ranking propose it and the full-resolution comparison confirms it."""
    i, j, _, _ = near_copies.indexed_candidates(pixels, sizes, classes)
    proposed = set(zip(i.tolist(), j.tolist()))
    return np.array(
        [
            (int(k), first_copy + r) in proposed and is_pair_found(paths, pixels, sizes, int(k), first_copy + r)
            for r, k in enumerate(originals)
        ]
    )


def measure_copies(paths, classes, pixels, sizes, count, seed, scratch):
    """Per kind, the share of `count` random images whose copy each search finds, those only the all-pairs search
    finds, and the brightened copies whose particle kept under SURVIVES of its pixels."""
    rng = np.random.default_rng(seed)
    originals = rng.choice(len(paths), min(count, len(paths)), replace=False)
    result, erased = {"images": len(originals)}, 0
    for kind in KINDS:
        (scratch / kind).mkdir()
        copy_paths = []
        for r, k in enumerate(progress.progress(originals, len(originals), f"copies {kind}", "images")):
            copy_paths.append(str(scratch / kind / f"{r}.png"))
            synthetic_copies(image_io.load_rgb(paths[k]))[kind].save(copy_paths[-1])
        copy_pixels, copy_sizes = thumbnails_of(copy_paths)
        all_paths = paths + copy_paths
        all_pixels, all_sizes = np.concatenate([pixels, copy_pixels]), np.concatenate([sizes, copy_sizes])
        reference = np.array(
            [
                len(near_copies.find_pairs([paths[k], c], all_pixels[[k, n]], all_sizes[[k, n]], all_pairs=True)[0][0])
                == 1
                for k, c, n in zip(originals, copy_paths, range(len(paths), len(all_paths)))
            ]
        )
        indexed = planted_found(
            all_paths, all_pixels, all_sizes, np.concatenate([classes, classes[originals]]), originals, len(paths)
        )
        result[kind] = {
            "all_pairs": float(reference.mean()),
            "indexed": float(indexed.mean()),
            "all_pairs_only": int((reference & ~indexed).sum()),
            "indexed_only": int((indexed & ~reference).sum()),
        }
        if kind == "bright10":
            for k, c in zip(originals, copy_paths):
                before = (particle_match.full_grey(paths[k]) < particle_match.OBJECT_LEVEL).sum()
                after = (particle_match.full_grey(c) < particle_match.OBJECT_LEVEL).sum()
                erased += int(after < SURVIVES * max(before, 1))
    result["bright10_particle_erased"] = erased
    return result


def measure_search(paths, classes, pixels, sizes, reference):
    """The indexed search over every image (and the all-pairs search with reference): pairs, time, new pairs."""
    started = time.perf_counter()
    (i, j, texture, shape, noise, _, _), searched = near_copies.find_pairs(paths, pixels, sizes, classes)
    seconds = time.perf_counter() - started
    found = set(zip(i.tolist(), j.tolist()))
    result = {
        "images": len(paths),
        "classes": len(set(classes.tolist())),
        "search_seconds": round(seconds, 1),
        "pairs_compared": searched["pairs_compared_at_full_resolution"],
        "index": near_copies.index_summary(searched),
        "pairs": len(found),
        "images_flagged": len(set(i.tolist()) | set(j.tolist())),
        "flagged_pairs": [
            {"a": paths[a], "b": paths[b], "texture": float(t), "shape": float(s), "noise": float(n)}
            for a, b, t, s, n in zip(i, j, texture, shape, noise)
        ],
    }
    if reference:
        started = time.perf_counter()
        (ri, rj, *_), searched = near_copies.find_pairs(paths, pixels, sizes, classes, all_pairs=True)
        expected = set(zip(ri.tolist(), rj.tolist()))
        result["all_pairs"] = {
            "seconds": round(time.perf_counter() - started, 1),
            "pairs_compared": searched["pairs_compared_at_full_resolution"],
            "pairs": len(expected),
            "new_pairs": len(found - expected),
            "missed_pairs": len(expected - found),
        }
    return result


def searched_root(root, reference):
    root = artifacts.resolve(root)
    if root == demo_data.DEMO_ROOT and not root.exists():
        demo_data.generate(root)
    paths, classes = images_of(root)
    started = time.perf_counter()
    pixels, sizes = thumbnails_of(paths, f"thumbnails {root.name}")
    result = {"data_root": str(root), "thumbnail_seconds": round(time.perf_counter() - started, 1)}
    return {**result, **measure_search(paths, classes, pixels, sizes, reference)}, (paths, classes, pixels, sizes)


def big_class(n, name, seed, scratch):
    """One class of n drawn images, 1 % of them planted copies: the indexed search at n/8, n/4, n/2 and n."""
    planted = max(n // 100, len(PLANTED))
    rng = np.random.default_rng(seed)
    paths = []
    for k in progress.progress(range(n - planted), n - planted, f"drawing {name}", "images"):
        paths.append(str(scratch / f"{k:06d}.png"))
        demo_data.draw_crop(name, rng).save(paths[-1])
    copies = []
    for r in range(planted):
        copies.append(str(scratch / f"copy_{r:05d}.png"))
        synthetic_copies(Image.open(paths[r]))[PLANTED[r % len(PLANTED)]].save(copies[-1])
    pixels, sizes = thumbnails_of(paths + copies, f"thumbnails {name}")
    runs = []
    for size in (n // 8, n // 4, n // 2, n):
        keep = planted * size // n
        chosen = list(range(size - keep)) + list(range(n - planted, n - planted + keep))
        sub_paths = [(paths + copies)[k] for k in chosen]
        started = time.perf_counter()
        (i, j, *_), searched = near_copies.find_pairs(sub_paths, pixels[chosen], sizes[chosen])
        seconds = time.perf_counter() - started
        found = set(zip(i.tolist(), j.tolist()))
        hits = [(r, size - keep + r) in found for r in range(keep)]
        runs.append(
            {
                "images": size,
                "seconds": round(seconds, 1),
                "pairs_compared": searched["pairs_compared_at_full_resolution"],
                "index": near_copies.index_summary(searched),
                "pairs": len(found),
                "planted": keep,
                **{kind: float(np.mean(hits[k :: len(PLANTED)])) for k, kind in enumerate(PLANTED)},
            }
        )
        index = runs[-1]["index"]
        print(
            f"[big class] {size} images: {seconds:.1f} s, {len(found)} pairs, planted found "
            f"{sum(hits)}/{keep}; {index['images_extended']} images asked again (up to {index['most_neighbours']} "
            f"neighbours), at the cap: {sum(index['classes_at_cap'].values())}",
            flush=True,
        )
    sizes_, times = np.log([r["images"] for r in runs]), np.log([max(r["seconds"], 0.1) for r in runs])
    return {"class": name, "runs": runs, "growth_exponent": round(float(np.polyfit(sizes_, times, 1)[0]), 2)}


def rows(result):
    copies, out = result["copies"], []
    for kind in KINDS:
        out.append(
            common.information(
                f"near-copies: {kind}",
                "synthetic copies found: indexed (all-pairs)",
                round(100 * copies[kind]["indexed"], 2),
                "%",
                f"all-pairs {100 * copies[kind]['all_pairs']:.2f} %, found by all-pairs only: "
                f"{copies[kind]['all_pairs_only']}"
                + (
                    f"; {copies['bright10_particle_erased']} kept under {SURVIVES:.0%} of their particle"
                    if kind == "bright10"
                    else ""
                ),
            )
        )
    for search in result["searches"]:
        reference = search.get("all_pairs")
        out.append(
            common.information(
                f"near-copies: {Path(search['data_root']).name}",
                f"pairs found by the index, of {search['images']} images",
                search["pairs"],
                "",
                f"{search['search_seconds']} s (thumbnails {search['thumbnail_seconds']} s)"
                + (
                    f"; all-pairs {reference['pairs']} pairs in {reference['seconds']} s, new {reference['new_pairs']}"
                    f", missed {reference['missed_pairs']}"
                    if reference
                    else ""
                ),
            )
        )
    if result.get("big"):
        big = result["big"]
        out.append(
            common.information(
                f"near-copies: {big['class']}",
                "growth exponent of the indexed search's time, one class",
                big["growth_exponent"],
                "",
                "; ".join(
                    f"{r['images']}: {r['seconds']} s, at the cap {sum(r['index']['classes_at_cap'].values())}, "
                    f"planted found {', '.join(f'{k} {100 * r[k]:.0f} %' for k in PLANTED)}"
                    for r in big["runs"]
                ),
            )
        )
    return out


def main(argv=None):
    chosen = options(sys.argv[1:] if argv is None else argv)
    root = artifacts.resolve(chosen["--data_root"])
    if not root.is_dir():
        raise lab.LabError(f"The benchmark data {root} is absent. Pass --data_root=FOLDER (one folder per class).")
    reference = chosen["--reference"] == "True"
    search, (paths, classes, pixels, sizes) = searched_root(root, reference)
    result = {"data_root": str(root), "searches": [search]}
    scratch = Path(tempfile.mkdtemp(prefix="plankton-near-copies-"))
    try:
        result["copies"] = measure_copies(
            paths, classes, pixels, sizes, int(chosen["--copies"]), int(chosen["--seed"]), scratch
        )
        for other in filter(None, chosen["--false_pair_roots"].split(",")):
            result["searches"].append(searched_root(other, reference)[0])
        if chosen["--timing_root"]:
            result["searches"].append(searched_root(chosen["--timing_root"], False)[0])
        if int(chosen["--big_class"]):
            (scratch / "big").mkdir()
            result["big"] = big_class(
                int(chosen["--big_class"]), chosen["--big_class_name"], int(chosen["--seed"]), scratch / "big"
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result["rows"] = rows(result)
    result["machine"] = common.machine()
    out = artifacts.resolve(chosen["--output_dir"]) / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = artifacts.save_json(out / "near_copies_benchmark.json", result)
    for row in result["rows"]:
        print(f"{row['what']:<28} {row['compared']:<52} {row['measured']:>8}{row['unit']:<3} {row['reason']}")
    print(f"written to {path}")
    return result


if __name__ == "__main__":
    runtime.run_main(main)
