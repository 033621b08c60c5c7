"""Data: scan the folder-per-class data root, report the classes, make and check the split, load images.

Reads `data_root` (one sub-folder of images per class). Writes, once:
  results/split.csv            path (relative to data_root), label, split (train / val / test / unseen)
  results/split.json           what the split was drawn from (data root, classes, fractions, seed)
  results/dataset_summary.csv  per class: images, share of its group, skipped and ignored files; totals
  results/skipped_files.csv    unreadable image files (empty, truncated, corrupt), with the reason
Every later script reads split.csv, so all of them use the same split; a split.csv that no longer matches
the files on disk stops the run with the command that rebuilds it. Also reads and builds the embedding
DataFrames (`embeddings/embeddings_<split>.pkl`, written by embed.py) for every script after it.

    python dataloader.py                      # tasks 1-2: report the classes and write the split
    python dataloader.py --rebuild_split=True
"""
import difflib
import json
import os
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageFile

import demo_data
import lab

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the statistics torchvision's ImageNet weights were trained with
IMAGENET_STD = (0.229, 0.224, 0.225)
ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error to report, not grey pixels to learn from
Image.MAX_IMAGE_PIXELS = 200_000_000     # plankton mosaics can be large; still refuse decompression bombs
SPLIT_COLUMNS = ["path", "label", "split"]


# --------------------------------------------------------------------------- image decoding
def to_rgb(img):
    """Any PIL mode -> 8-bit RGB: transparency onto white (the crops' background), 16-bit scaled by bit depth."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        pixels = np.asarray(img, dtype=np.float64)
        if img.mode == "F":
            lo, hi = float(np.nanmin(pixels)), float(np.nanmax(pixels))
            pixels = (pixels - lo) / (hi - lo or 1.0) * 255.0
        else:  # 12- or 16-bit sensors: scale by the bit depth actually used, not by the image's own max
            bits = max(8, int(np.ceil(np.log2(max(float(pixels.max()), 1.0) + 1))))
            pixels = pixels / (2 ** bits - 1) * 255.0
        img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def load_rgb(path):
    with Image.open(path) as img:
        img.load()
        return to_rgb(img)


def letterbox(img, size):
    """Pad to a square with the border's median colour, then resize: the organism keeps its aspect ratio."""
    w, h = img.size
    if w != h:
        pixels = np.asarray(img)
        border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
        fill = tuple(int(v) for v in np.median(border, axis=0))
        side = max(w, h)
        square = Image.new("RGB", (side, side), fill)
        square.paste(img, ((side - w) // 2, (side - h) // 2))
        img = square
    return img.resize((size, size), Image.BILINEAR, reducing_gap=3.0)


def image_tensor(img, size):
    pixels = np.asarray(letterbox(img, size), dtype=np.float32) / 255.0
    pixels = (pixels - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32))


def check_image(path):
    """None if the file decodes fully, else the reason it cannot be used."""
    try:
        if os.path.getsize(path) == 0:
            return "empty file (0 bytes)"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                img.load()
                to_rgb(img)
        return None
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError... for broken files
        return f"{type(exc).__name__}: {str(exc)[:120]}"


class ImageDataset(torch.utils.data.Dataset):
    """Images by absolute path -> (normalised tensor, ok flag); a file that fails to decode gives ok=False."""

    def __init__(self, paths, image_size):
        self.paths, self.image_size = list(paths), image_size

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            return image_tensor(load_rgb(self.paths[i]), self.image_size), True
        except Exception:
            return torch.zeros(3, self.image_size, self.image_size), False


# --------------------------------------------------------------------------- scanning
def _class_folders(root):
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


def is_image_name(name):
    """An image extension (any case), and not a macOS resource fork (`._x.jpg` looks like an image but is not)."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS and not name.startswith("._")


def list_class_files(folder):
    """(image files, other files) of one class folder, sorted; sub-folders count as other entries."""
    images, others = [], []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.is_file() and is_image_name(entry.name):
            images.append(entry.name)
        else:
            others.append(entry.name)
    return images, others


def list_images_recursive(folder):
    """(image files, other files) under folder and all its sub-folders, as sorted posix paths relative to it;
    hidden folders (.git, .ipynb_checkpoints) are not entered, as the scan ignores them."""
    images, others = [], []
    for here, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        relative = os.path.relpath(here, folder)
        for name in sorted(names):
            path = name if relative == "." else f"{relative}/{name}".replace(os.sep, "/")
            (images if is_image_name(name) else others).append(path)
    return sorted(images), sorted(others)


def cap_images(images, cfg):
    """At most max_images_per_class of a class's files, a seeded sample, in sorted order."""
    if not cfg.max_images_per_class or len(images) <= cfg.max_images_per_class:
        return images
    keep = np.random.default_rng(cfg.seed).choice(len(images), cfg.max_images_per_class, replace=False)
    return [images[i] for i in sorted(keep)]


def check_data_root(cfg):
    """Clear errors for a missing root or class folder; returns the resolved root."""
    demo_data.ensure_demo_data(cfg)
    root = lab.resolve(cfg.data_root)
    if not root.is_dir():
        raise lab.LabError(f"The data root {root} does not exist or is not a folder. Point data_root in "
                           f"configfile.py (or --data_root=...) at a folder with one sub-folder of images per class, "
                           f"e.g. .../FlowCamNet/imgs.")
    existing = _class_folders(root)
    for name in cfg.seen_classes + cfg.unseen_classes:
        if not (root / name).is_dir():
            close = difflib.get_close_matches(name, existing, n=1, cutoff=0.5)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            listing = ", ".join(existing[:40]) + (" ..." if len(existing) > 40 else "")
            raise lab.LabError(f"The class folder {name!r} is not in {root}.{hint} The classes there are: "
                               f"{listing or '(none)'}. Fix seen_classes / unseen_classes in configfile.py.")
    return root


def scan(cfg):
    """Check every image of the configured classes; returns (files per class, skipped rows, ignored rows)."""
    root = check_data_root(cfg)
    listing = {name: list_class_files(root / name) for name in cfg.seen_classes + cfg.unseen_classes}
    if cfg.max_images_per_class:
        listing = {name: (cap_images(images, cfg), others) for name, (images, others) in listing.items()}
    paths = [str(root / name / f) for name, (images, _) in listing.items() for f in images]
    workers = max(1, min(cfg.num_workers, os.cpu_count() or 1))
    if workers > 1 and len(paths) > 2000:
        with ProcessPoolExecutor(workers) as pool:
            reasons = list(pool.map(check_image, paths, chunksize=256))
    else:
        reasons = [check_image(p) for p in paths]
    bad = {p: r for p, r in zip(paths, reasons) if r}
    files, skipped, ignored = {}, [], []
    for name, (images, others) in listing.items():
        files[name] = [f"{name}/{f}" for f in images if str(root / name / f) not in bad]
        skipped += [{"path": f"{name}/{f}", "label": name, "reason": bad[str(root / name / f)]}
                    for f in images if str(root / name / f) in bad]
        ignored += [{"path": f"{name}/{o}", "label": name} for o in others]
        if not files[name]:
            raise lab.LabError(f"The class folder {root / name} holds no readable images ({len(images)} image "
                               f"files, {len(others)} other entries). Put its images there (jpg, png, tif or bmp) "
                               f"or remove {name!r} from the class lists in configfile.py.")
        if len(files[name]) < cfg.min_images_per_class:
            raise lab.LabError(f"The class {name!r} has only {len(files[name])} readable images, fewer than "
                               f"min_images_per_class={cfg.min_images_per_class}: too few to give the train, "
                               f"validation and test splits (or the transfer-learning splits) some of each. Add "
                               f"images, remove the class from configfile.py, or lower min_images_per_class.")
    if skipped:
        names = ", ".join(s["path"] for s in skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        print(f"warning: skipping {len(skipped)} unreadable image file(s) (listed in results/skipped_files.csv): "
              f"{names}", file=sys.stderr)
    return files, skipped, ignored


def summarise(cfg, files, skipped, ignored):
    """Tasks 1-2: each class's image count and share of its group, with totals."""
    rows = []
    for group, classes in (("seen", cfg.seen_classes), ("unseen", cfg.unseen_classes)):
        total = sum(len(files[c]) for c in classes)
        for c in classes:
            rows.append({"group": group, "class": c, "images": len(files[c]), "share": len(files[c]) / total,
                         "skipped_unreadable": sum(s["label"] == c for s in skipped),
                         "ignored_non_image": sum(i["label"] == c for i in ignored)})
        rows.append({"group": group, "class": "TOTAL", "images": total, "share": 1.0,
                     "skipped_unreadable": sum(r["skipped_unreadable"] for r in rows if r["group"] == group),
                     "ignored_non_image": sum(r["ignored_non_image"] for r in rows if r["group"] == group)})
    return pd.DataFrame(rows)


def draw_split(cfg, files):
    """Stratified, seeded split: per seen class val/test by rounding (at least one each), the rest train."""
    rng = np.random.default_rng(cfg.seed)
    rows = []
    for c in cfg.seen_classes:
        order = rng.permutation(len(files[c]))
        n = len(order)
        n_val = max(1, round(n * cfg.val_fraction))
        n_test = max(1, round(n * cfg.test_fraction))
        if n - n_val - n_test < 1:
            raise lab.LabError(f"The class {c!r} has {n} images: with val_fraction={cfg.val_fraction} and "
                               f"test_fraction={cfg.test_fraction} none would be left for training. Add images, lower "
                               f"the fractions, or raise min_images_per_class to keep such classes out.")
        names = ["val"] * n_val + ["test"] * n_test + ["train"] * (n - n_val - n_test)
        rows += [{"path": files[c][i], "label": c, "split": s} for i, s in zip(order, names)]
    for c in cfg.unseen_classes:
        rows += [{"path": p, "label": c, "split": "unseen"} for p in files[c]]
    return pd.DataFrame(rows, columns=SPLIT_COLUMNS)


def split_identity(cfg):
    return {"data_root": str(lab.resolve(cfg.data_root)), "max_images_per_class": cfg.max_images_per_class,
            "seen_classes": cfg.seen_classes,
            "unseen_classes": cfg.unseen_classes, "val_fraction": cfg.val_fraction,
            "test_fraction": cfg.test_fraction, "seed": cfg.seed}


def make_split(cfg):
    files, skipped, ignored = scan(cfg)
    summary = summarise(cfg, files, skipped, ignored)
    split = draw_split(cfg, files)
    lab.save_csv(lab.out_path(cfg, "results", "dataset_summary.csv"), summary)
    lab.save_csv(lab.out_path(cfg, "results", "skipped_files.csv"),
                 pd.DataFrame(skipped, columns=["path", "label", "reason"]))
    lab.save_json(lab.out_path(cfg, "results", "split.json"), split_identity(cfg))
    lab.save_csv(lab.out_path(cfg, "results", "split.csv"), split)
    print_summary(summary, split)
    return split


def print_summary(summary, split):
    print("\nclasses (images, share of their group):")
    for _, r in summary.iterrows():
        print(f"  {r['group']:<7} {r['class']:<32} {r['images']:>7}  {100 * r['share']:6.2f} %")
    counts = split.groupby(["split"]).size().to_dict()
    print("split sizes: " + ", ".join(f"{k} {counts.get(k, 0)}" for k in ("train", "val", "test", "unseen")))


def verify_split(cfg, split):
    """Stop with the rebuild command if split.csv was made for other settings or other files."""
    rebuild = "python dataloader.py --rebuild_split=True"
    root = check_data_root(cfg)  # a missing folder is the clearer message
    identity_path = lab.out_path(cfg, "results", "split.json")
    identity = json.loads(identity_path.read_text()) if identity_path.exists() else {}
    wanted = split_identity(cfg)
    changed = [k for k in wanted if identity.get(k) != wanted[k]]
    if changed:
        raise lab.LabError(f"results/split.csv was drawn with other settings ({', '.join(changed)} differ from "
                           f"the current config). Rebuild it with `{rebuild}` (then retrain: train.py), or "
                           f"restore the old settings.")
    on_disk = {f"{c}/{f}" for c in cfg.seen_classes + cfg.unseen_classes
               for f in cap_images(list_class_files(root / c)[0], cfg)}
    skipped_csv = lab.out_path(cfg, "results", "skipped_files.csv")
    if skipped_csv.exists() and skipped_csv.stat().st_size > 0:
        on_disk -= set(pd.read_csv(skipped_csv)["path"])
    in_split = set(split["path"])
    added, removed = sorted(on_disk - in_split), sorted(in_split - on_disk)
    if added or removed:
        examples = ", ".join((removed + added)[:4])
        raise lab.LabError(f"results/split.csv no longer matches the files in {root}: {len(added)} image(s) were "
                           f"added and {len(removed)} removed since it was made (e.g. {examples}). Rebuild the "
                           f"split with `{rebuild}` and retrain with `python train.py`.")


def load_split(cfg, verify=True):
    """The persisted split: drawn and written on first use, checked against the disk afterwards."""
    path = lab.out_path(cfg, "results", "split.csv")
    if cfg.rebuild_split or not path.exists():
        lab.ensure_output_dirs(cfg, ("results",))
        return make_split(cfg)
    split = pd.read_csv(path, dtype=str, keep_default_na=False)
    if list(split.columns) != SPLIT_COLUMNS:
        raise lab.LabError(f"{path} is not a split file of this lab (columns {list(split.columns)}). Delete it or "
                           f"rebuild it with `python dataloader.py --rebuild_split=True`.")
    if verify:
        verify_split(cfg, split)
    return split


def split_digest(cfg):
    return lab.file_digest(lab.out_path(cfg, "results", "split.csv"))


def absolute_paths(cfg, relative_paths):
    root = lab.resolve(cfg.data_root)
    return [str(root / p) for p in relative_paths]


# --------------------------------------------------------------------------- embedding DataFrames
def embedding_frame(cfg, rows, vectors, class_names):
    """label, label_idx (index in class_names), split, absolute path, emb_0 ... emb_<d-1> (float32)."""
    index = {c: i for i, c in enumerate(class_names)}
    frame = pd.DataFrame({"label": rows["label"].values, "label_idx": [index[c] for c in rows["label"]],
                          "split": rows["split"].values, "path": absolute_paths(cfg, rows["path"])})
    emb = pd.DataFrame(vectors.astype(np.float32), columns=[f"emb_{i}" for i in range(vectors.shape[1])])
    return pd.concat([frame, emb], axis=1)


def embedding_columns(frame):
    return [c for c in frame.columns if c.startswith("emb_")]


def load_embeddings(cfg, split_name):
    """(frame, float64 vectors) of one embeddings file; a missing one names embed.py."""
    path = lab.require(lab.out_path(cfg, "embeddings", f"embeddings_{split_name}.pkl"), "embed.py",
                       "embeddings file")
    frame = pd.read_pickle(path)
    return frame, frame[embedding_columns(frame)].to_numpy(np.float64)


def main(argv=None):
    cfg = lab.load_config(argv, __doc__)
    lab.print_config(cfg)
    existed = lab.out_path(cfg, "results", "split.csv").exists() and not cfg.rebuild_split
    split = load_split(cfg)
    if existed:
        summary = pd.read_csv(lab.out_path(cfg, "results", "dataset_summary.csv"))
        print_summary(summary, split)
    print(f"split written to {lab.out_path(cfg, 'results', 'split.csv')}")


if __name__ == "__main__":
    lab.run_main(lambda: main(sys.argv[1:]))
