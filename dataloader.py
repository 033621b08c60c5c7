"""Data: scan the folder-per-class data root, report the classes, make and check the split, load images.

Reads `data_root` (one sub-folder of images per class). Writes, once:
  results/split.csv            path (relative to data_root), label, split (train / val / test / unseen)
  results/split.json           what the split was drawn from (data root, classes, fractions, seed)
  results/dataset_summary.csv  per class: images, share of its group, skipped and ignored files; a total row
                               per group (group 'seen total' / 'unseen total')
  results/skipped_files.csv    unreadable image files (empty, truncated, corrupt, too large), with the stage
                               that found them (scan, or trunk pass for a file that broke after the split)
  results/ignored_files.csv    files and folders in the class folders that are not images, with the reason
  results/image_notes.csv      images used with a remark (first frame of a multi-frame file, very large)
  results/duplicates.csv       byte-identical files: every copy, its label, all labels of that image
Images in sub-folders of a class folder belong to the class. Byte-identical copies share a split.
Every later script reads split.csv, so all of them use the same split; a split.csv that no longer matches
the files on disk stops the run with the command that rebuilds it. Also reads and builds the embedding
DataFrames (`embeddings/embeddings_<split>.pkl`, written by embed.py) for every script after it.

    python dataloader.py                      # tasks 1-2: report the classes and write the split
    python dataloader.py --rebuild_split=True
"""
import contextlib
import difflib
import errno
import functools
import hashlib
import json
import os
import sys
import unicodedata
import warnings
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageFile

from lab import artifacts, config, demo_data, output_lock, provenance, runtime
import lab

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the statistics torchvision's ImageNet weights were trained with
IMAGENET_STD = (0.229, 0.224, 0.225)
ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error to report, not grey pixels to learn from
Image.MAX_IMAGE_PIXELS = 200_000_000     # above it Pillow warns of a decompression bomb (a note), above 2x it refuses
# The most pixels ever decoded at full resolution: 50 MP (e.g. 7000 x 7000, or a 40,000 x 1,250 strip) stays
# under 1 GB of memory in any mode. JPEGs above it are decoded at 1/2, 1/4 or 1/8 scale; other formats are refused.
DECODE_PIXEL_BOUND = 50_000_000
REDUCING_GAP = 3  # images are reduced to no less than 3x the output side before the final resize: no aliasing
SPLIT_COLUMNS = ["path", "label", "split", "bytes"]  # bytes: to recognise the same files after a move
SKIPPED_COLUMNS = ["path", "label", "stage", "reason"]
TRUNK_STAGE = "trunk pass"
# The common formats Pillow reads, by extension (any case); a format whose codec this Pillow lacks is left out.
COMMON_FORMATS = {"JPEG": None, "PNG": None, "TIFF": None, "BMP": None, "DIB": None, "GIF": None, "PPM": None,
                  "WEBP": "webp", "JPEG2000": "jpg_2000", "AVIF": "avif"}
EXIF_ORIENTATION = 0x0112
ORIENTATION_FIX = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                   4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270,
                   7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


def readable_extensions():
    from PIL import features as pil_features
    Image.init()
    return {ext for ext, fmt in Image.registered_extensions().items()
            if fmt in COMMON_FORMATS and fmt in Image.OPEN
            and (COMMON_FORMATS[fmt] is None or pil_features.check(COMMON_FORMATS[fmt]))}


IMAGE_EXTENSIONS = readable_extensions()


class ImageTooLarge(Exception):
    """An image that cannot be decoded within DECODE_PIXEL_BOUND."""


# --------------------------------------------------------------------------- image decoding
def value_range(img):
    """(low, high) of a 16-bit, 32-bit integer or float image, from the whole image: the scale of every band."""
    low, high = img.getextrema()
    if not (np.isfinite(low) and np.isfinite(high)):  # NaN pixels in a float image
        pixels = np.asarray(img)
        low, high = float(np.nanmin(pixels)), float(np.nanmax(pixels))
    return float(low), float(high)


def to_rgb(img, scale=None):
    """Any PIL mode -> 8-bit RGB: transparency onto white (the crops' background), 16-bit scaled by bit depth.
    scale: value_range of the whole image, when img is a band of it."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        low, high = scale or value_range(img)
        pixels = np.array(img, dtype=np.float32)
        if img.mode == "F":
            pixels -= low
            pixels *= 255.0 / (high - low or 1.0)
        else:  # 12- or 16-bit sensors: scale by the bit depth actually used, not by the image's own max
            bits = max(8, int(np.ceil(np.log2(max(high, 1.0) + 1))))
            pixels *= 255.0 / (2 ** bits - 1)
        img = Image.fromarray(np.clip(pixels, 0, 255, out=pixels).astype(np.uint8), mode="L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def reduced_rgb(img, side):
    """to_rgb, then reduce by a whole factor (box average) while the longer side stays >= REDUCING_GAP x side,
    band by band: memory beyond the decoded image stays a few MB whatever its size and mode. The factor is
    the first step Pillow's own resize would take; compositing before averaging keeps transparent edges white."""
    factor = max(img.size) // (REDUCING_GAP * side) if side else 0
    if factor < 2:
        return to_rgb(img)
    scale = value_range(img) if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F") else None
    w, h = img.size
    rows = max(1, 4_000_000 // (w * factor)) * factor  # bands of about 4 MP, whole blocks of the reduction
    out = Image.new("RGB", (-(-w // factor), -(-h // factor)))
    for top in range(0, h, rows):
        band = to_rgb(img.crop((0, top, w, min(h, top + rows))), scale)
        out.paste(band.reduce(int(factor)), (0, top // factor))
    return out


def decode(path, side=None):
    """(8-bit RGB image, notes) of one file, in bounded memory. side: the output side it is meant for (the
    image is reduced toward REDUCING_GAP x side; None keeps the full size). EXIF orientation is applied; a
    multi-frame file gives its first frame; Pillow's decompression-bomb warning becomes a note. Raises
    ImageTooLarge, or Pillow's errors for broken files."""
    notes = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Image.open(path) as img:
            if getattr(img, "is_animated", False) or getattr(img, "n_frames", 1) > 1:
                notes.append(("multi-frame file: first frame used", f"{img.n_frames} frames"))
                img.seek(0)
            full_size = img.size
            if side and img.format == "JPEG" and max(img.size) >= 2 * REDUCING_GAP * side:
                scale = REDUCING_GAP * side / max(img.size)  # libjpeg decodes at 1/2, 1/4 or 1/8 directly
                img.draft(None, (max(1, int(img.size[0] * scale)), max(1, int(img.size[1] * scale))))
            if img.size[0] * img.size[1] > DECODE_PIXEL_BOUND:
                raise ImageTooLarge(f"too large to decode within memory: {full_size[0]} x {full_size[1]} px "
                                    f"({full_size[0] * full_size[1] / 1e6:.0f} MP), above the lab's bound of "
                                    f"{DECODE_PIXEL_BOUND / 1e6:.0f} MP for {img.format} files (only JPEGs are "
                                    f"decoded at reduced size); downscale it or save it as JPEG")
            img.load()
            orientation = img.getexif().get(EXIF_ORIENTATION, 1)
            rgb = reduced_rgb(img, side)
        if orientation in ORIENTATION_FIX:
            rgb = rgb.transpose(ORIENTATION_FIX[orientation])
    if any(issubclass(w.category, Image.DecompressionBombWarning) for w in caught):
        notes.append(("very large image (Pillow's decompression-bomb warning)",
                      f"{full_size[0]} x {full_size[1]} px, decoded at {rgb.size[0]} x {rgb.size[1]}"))
    return rgb, notes


def load_rgb(path, side=None):
    return decode(path, side)[0]


def letterbox(img, size):
    """Reduce, then pad to a square with the border's median colour, then resize: the organism keeps its
    aspect ratio, and padding happens after downsizing (a 40,000 x 400 strip is never a 40,000 px square)."""
    img = reduced_rgb(img, size)
    w, h = img.size
    if w != h:
        pixels = np.asarray(img)
        border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
        fill = tuple(int(v) for v in np.median(border, axis=0))
        side = max(w, h)
        square = Image.new("RGB", (side, side), fill)
        square.paste(img, ((side - w) // 2, (side - h) // 2))
        img = square
    return img.resize((size, size), Image.BILINEAR, reducing_gap=REDUCING_GAP)


def image_pixels(img, size):
    """The letterboxed image as a uint8 tensor (3 x size x size): what decoding workers hand over (a quarter of the
    bytes of float32, and no arithmetic in the workers); `normalise` turns a batch of them into the trunk's input."""
    return torch.from_numpy(np.array(letterbox(img, size), dtype=np.uint8).transpose(2, 0, 1).copy())


# x / 255 then (x - mean) / std, as one multiply-add per pixel: x * _SCALE + _SHIFT
_SCALE = torch.tensor([1.0 / (255.0 * s) for s in IMAGENET_STD], dtype=torch.float32).view(1, 3, 1, 1)
_SHIFT = torch.tensor([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)], dtype=torch.float32).view(1, 3, 1, 1)


def normalise(pixels):
    """uint8 batch (n x 3 x h x w, on any device) -> float32, scaled to [0, 1] and standardised by the ImageNet
    statistics the trunk was trained with; done on the trunk's device, in one pass over the batch."""
    return torch.addcmul(_SHIFT.to(pixels.device), pixels.float(), _SCALE.to(pixels.device))


def image_tensor(img, size):
    """One image as the trunk sees it (float32, normalised): image_pixels then normalise."""
    return normalise(image_pixels(img, size)[None])[0]


def inspect_file(path, side=None):
    """(reason it cannot be used or None, notes, sha256 of its bytes) of one image file. The file is decoded
    as the trunk pass will decode it (bounded: see decode), so what passes here loads later."""
    try:
        if os.path.getsize(path) == 0:
            return "empty file (0 bytes)", [], None
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        notes = decode(path, side)[1]
        return None, notes, digest
    except ImageTooLarge as exc:
        return str(exc), [], None
    except Image.DecompressionBombError as exc:
        return f"refused by Pillow as a possible decompression bomb: {str(exc)[:160]}", [], None
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError... for broken files
        return f"{type(exc).__name__}: {str(exc)[:120]}", [], None


def check_image(path, side=None):
    """None if the file decodes, else the reason it cannot be used."""
    return inspect_file(path, side)[0]


class ImageDataset(torch.utils.data.Dataset):
    """Images by absolute path -> (uint8 pixels, see image_pixels; ok flag); a file that fails to decode gives
    ok=False. Batches go through `normalise` on the trunk's device."""

    def __init__(self, paths, image_size):
        self.paths, self.image_size = list(paths), image_size

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            return image_pixels(load_rgb(self.paths[i], self.image_size), self.image_size), True
        except Exception:
            return torch.zeros(3, self.image_size, self.image_size, dtype=torch.uint8), False


# --------------------------------------------------------------------------- scanning
SYSTEM_NAMES = {"thumbs.db", "desktop.ini", "__macosx", "icon\r"}  # made by file managers, never data
HIDDEN = "hidden or system file (.DS_Store, ._*, Thumbs.db, __MACOSX)"
NOT_IMAGE = "not an image file type"
LOOP = "symlink loop (a folder linked into itself)"
BROKEN_LINK = "broken link"
DENIED = "permission denied"
NOT_REGULAR = "not a regular file (socket, device, pipe)"
IGNORED_COLUMNS = ["path", "label", "reason"]
NOTE_COLUMNS = ["path", "label", "note", "detail"]
DUPLICATE_COLUMNS = ["path", "label", "digest", "copies", "labels", "kind"]


def _os_reason(exc):
    if exc.errno == errno.ELOOP:
        return LOOP
    if exc.errno in (errno.EACCES, errno.EPERM):
        return DENIED
    if exc.errno == errno.ENOENT:
        return BROKEN_LINK
    return f"unreadable entry ({exc.strerror or exc})"


def _is_hidden(name):
    return name.startswith(".") or name.lower() in SYSTEM_NAMES


def class_folders(root):
    """{name in composed Unicode (NFC): [folder names on disk]} of root's class folders. A symlink loop or an
    unreadable entry beside the classes is left out: it is no class, and it must not stop the run."""
    folders = {}
    try:
        with os.scandir(root) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    if entry.is_dir() and not _is_hidden(entry.name):
                        folders.setdefault(unicodedata.normalize("NFC", entry.name), []).append(entry.name)
    except OSError as exc:
        raise lab.LabError(f"Cannot list the data root {root} ({exc.strerror or exc}). Check its permissions, or "
                           f"point data_root at another folder.") from None
    return folders


def list_class_files(folder):
    """(image files, ignored (path, reason) pairs) under one class folder, paths relative to it with '/',
    sorted. Images in sub-folders belong to the class. Symlinked folders are followed, each real folder once,
    except a link to the class folder itself or to a folder holding it (a loop: it would pull every class in);
    hidden and system files, other file types, loops, broken links and unreadable folders are ignored with
    their reason."""
    top = os.path.realpath(folder)
    images, ignored, visited = [], [], set()
    stack = [(str(folder), "")]
    while stack:
        directory, prefix = stack.pop()
        try:
            real = os.path.realpath(directory, strict=True)
            if real in visited or (prefix and (top == real or top.startswith(real.rstrip(os.sep) + os.sep))):
                ignored.append((prefix.rstrip("/"), LOOP))
                continue
            visited.add(real)
            with os.scandir(directory) as found:
                entries = list(found)
        except OSError as exc:
            ignored.append((prefix.rstrip("/") or ".", _os_reason(exc)))
            continue
        for entry in entries:
            relative = prefix + entry.name
            if _is_hidden(entry.name):
                ignored.append((relative, HIDDEN))
                continue
            try:
                is_dir, is_file = entry.is_dir(), entry.is_file()
            except OSError as exc:
                ignored.append((relative, _os_reason(exc)))
                continue
            if is_dir:
                stack.append((entry.path, relative + "/"))
            elif not is_file:
                ignored.append((relative, BROKEN_LINK if entry.is_symlink() else NOT_REGULAR))
            elif os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
                images.append(relative)
            else:
                ignored.append((relative, NOT_IMAGE))
    return sorted(images), sorted(ignored)


def cap_images(images, cfg):
    """At most max_images_per_class of a class's files, a seeded sample, in sorted order."""
    if not cfg.max_images_per_class or len(images) <= cfg.max_images_per_class:
        return images
    keep = np.random.default_rng(cfg.seed).choice(len(images), cfg.max_images_per_class, replace=False)
    return [images[i] for i in sorted(keep)]


def folder_names(cfg, root):
    """{configured class: its folder's name on disk}; a missing or ambiguous folder is a clear error. Names
    match in composed Unicode, so a decomposed folder name (as macOS zips write it) is the same class."""
    existing = class_folders(root)
    names = {}
    for name in cfg.seen_classes + cfg.unseen_classes:
        on_disk = existing.get(unicodedata.normalize("NFC", name), [])
        if not on_disk:
            close = difflib.get_close_matches(name, list(existing), n=1, cutoff=0.5)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            listing = ", ".join(sorted(existing)[:40]) + (" ..." if len(existing) > 40 else "")
            raise lab.LabError(f"The class folder {name!r} is not in {root}.{hint} The classes there are: "
                               f"{listing or '(none)'}. Fix seen_classes / unseen_classes in configfile.py.")
        if len(on_disk) > 1:
            raise lab.LabError(f"{root} holds {len(on_disk)} folders spelt {name!r}, in different Unicode forms "
                               f"(composed and decomposed: {', '.join(map(ascii, on_disk))}), so the class is "
                               f"ambiguous. Merge them into one folder, or rename one.")
        names[name] = on_disk[0]
    return names


def check_data_root(cfg):
    """Clear errors for a missing root or class folder; returns the resolved root."""
    demo_data.ensure_demo_data(cfg)
    root = artifacts.resolve(cfg.data_root)
    if not root.is_dir():
        raise lab.LabError(f"The data root {root} does not exist or is not a folder. Point data_root in "
                           f"configfile.py (or --data_root=...) at a folder with one sub-folder of images per class, "
                           f"e.g. .../FlowCamNet/imgs.")
    folder_names(cfg, root)
    return root


def listed_images(cfg, root):
    """{class: (image paths relative to root, capped by max_images_per_class; ignored (path, reason) pairs)}."""
    listing = {}
    for name, folder in folder_names(cfg, root).items():
        images, ignored = list_class_files(root / folder)
        listing[name] = (cap_images([f"{folder}/{f}" for f in images], cfg), [(f"{folder}/{f}", r) for f, r in ignored])
    return listing


def inspect_all(cfg, root, paths):
    """inspect_file of every path (relative to root), in worker processes when there are many."""
    check = functools.partial(inspect_file, side=cfg.image_size)
    absolute = [str(root / p) for p in paths]
    workers = max(1, min(cfg.num_workers, os.cpu_count() or 1))
    if workers > 1 and len(paths) > 2000:
        with ProcessPoolExecutor(workers) as pool:
            return list(pool.map(check, absolute, chunksize=256))
    return [check(p) for p in absolute]


def scan(cfg):
    """Check every image of the configured classes. Returns (files per class, skipped rows, ignored rows,
    note rows, sha256 per readable file)."""
    root = check_data_root(cfg)
    listing = listed_images(cfg, root)
    paths = [p for images, _ in listing.values() for p in images]
    results = dict(zip(paths, inspect_all(cfg, root, paths)))
    files, skipped, ignored, notes, digests = {}, [], [], [], {}
    for name, (images, others) in listing.items():
        files[name] = [p for p in images if results[p][0] is None]
        skipped += [{"path": p, "label": name, "stage": "scan", "reason": results[p][0]}
                    for p in images if results[p][0]]
        ignored += [{"path": p, "label": name, "reason": r} for p, r in others]
        notes += [{"path": p, "label": name, "note": n, "detail": d} for p in images for n, d in results[p][1]]
        digests.update({p: results[p][2] for p in files[name]})
        if not files[name]:
            raise lab.LabError(f"The class folder {root / name} holds no readable images ({len(images)} image "
                               f"files, {len(others)} other entries). Put its images there (jpg, png, tif, bmp, "
                               f"webp, gif...) or remove {name!r} from the class lists in configfile.py.")
        if len(files[name]) < cfg.min_images_per_class:
            raise lab.LabError(f"The class {name!r} has only {len(files[name])} readable images, fewer than "
                               f"min_images_per_class={cfg.min_images_per_class}: too few to give the train, "
                               f"validation and test splits (or the transfer-learning splits) some of each. Add "
                               f"images, remove the class from configfile.py, or lower min_images_per_class.")
    if skipped:
        names = ", ".join(s["path"] for s in skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        print(f"warning: skipping {len(skipped)} unreadable image file(s) (listed in results/skipped_files.csv): "
              f"{names}", file=sys.stderr)
    return files, skipped, ignored, notes, digests


def summarise(cfg, files, skipped, ignored):
    """Tasks 1-2: each class's image count and share of its group, with totals."""
    rows = []
    for group, classes in (("seen", cfg.seen_classes), ("unseen", cfg.unseen_classes)):
        total = sum(len(files[c]) for c in classes)
        for c in classes:
            rows.append({"group": group, "class": c, "images": len(files[c]), "share": len(files[c]) / total,
                         "skipped_unreadable": sum(s["label"] == c for s in skipped),
                         "ignored_non_image": sum(i["label"] == c for i in ignored)})
        # the total's own group, so that no class name (a class may be called TOTAL) can be mistaken for it
        rows.append({"group": f"{group} total", "class": f"all {group} classes", "images": total, "share": 1.0,
                     "skipped_unreadable": sum(r["skipped_unreadable"] for r in rows if r["group"] == group),
                     "ignored_non_image": sum(r["ignored_non_image"] for r in rows if r["group"] == group)})
    return pd.DataFrame(rows)


def find_duplicates(cfg, files, digests):
    """Rows of every readable file whose bytes occur more than once among the configured classes: its
    digest, number of copies, all the labels it is filed under, and whether they differ."""
    by_digest = {}
    for c in cfg.seen_classes + cfg.unseen_classes:
        for p in files[c]:
            by_digest.setdefault(digests[p], []).append((p, c))
    rows = []
    for digest, copies in by_digest.items():
        if len(copies) > 1:
            labels = list(dict.fromkeys(c for _, c in copies))
            kind = "across classes" if len(labels) > 1 else "same class"
            rows += [{"path": p, "label": c, "digest": digest, "copies": len(copies),
                      "labels": json.dumps(labels, ensure_ascii=False), "kind": kind} for p, c in copies]
    return pd.DataFrame(rows, columns=DUPLICATE_COLUMNS)


def report_duplicates(duplicates):
    """One warning line naming the images filed under two or more classes; one note for copies within a class."""
    across = duplicates[duplicates["kind"] == "across classes"].drop_duplicates("digest")
    if len(across):
        named = ", ".join(f"{p!r} {', '.join(json.loads(labels))}" for p, labels in
                          zip(across["path"][:5], across["labels"][:5])) + (" ..." if len(across) > 5 else "")
        print(f"warning: {len(across)} image(s) are byte-identical files filed under two or more classes ({named}): "
              f"listed with all their labels in results/duplicates.csv. Each copy keeps its class and the copies of "
              f"one image share a split (train, where two seen classes disagree); decide which label is right and "
              f"delete the other copies.", file=sys.stderr)
    within = duplicates[duplicates["kind"] == "same class"]
    if len(within):
        print(f"note: {len(within)} files are byte-identical copies within their class ({within['digest'].nunique()} "
              f"distinct images): each image's copies are kept together in one split (results/duplicates.csv)")


def _duplicate_groups(paths, digests):
    """Indices of paths grouped by identical bytes, in order of first appearance."""
    groups = {}
    for i, p in enumerate(paths):
        groups.setdefault(digests.get(p) or p, []).append(i)
    return list(groups.values())


def draw_split(cfg, files, digests=None):
    """Stratified, seeded split: per seen class val/test by rounding (at least one each), the rest train.
    Byte-identical copies (digests given) share a split, so no test image equals a training image; an image
    filed under two seen classes goes to train in both, where its conflicting labels cannot distort the scores."""
    digests = digests or {}
    rng = np.random.default_rng(cfg.seed)
    root = artifacts.resolve(cfg.data_root)
    owners = {}
    for c in cfg.seen_classes:
        for p in files[c]:
            owners.setdefault(digests.get(p) or p, set()).add(c)
    rows = []
    for c in cfg.seen_classes:
        paths = files[c]
        groups = _duplicate_groups(paths, digests)
        shared = [len(owners[digests.get(paths[g[0]]) or paths[g[0]]]) > 1 for g in groups]
        free = [g for g, pinned in zip(groups, shared) if not pinned]
        n = len(paths)
        n_val = max(1, round(n * cfg.val_fraction))
        n_test = max(1, round(n * cfg.test_fraction))
        if n - n_val - n_test < 1:
            raise lab.LabError(f"The class {c!r} has {n} images: with val_fraction={cfg.val_fraction} and "
                               f"test_fraction={cfg.test_fraction} none would be left for training. Add images, lower "
                               f"the fractions, or raise min_images_per_class to keep such classes out.")
        taken = {"val": 0, "test": 0, "train": 0}
        for g in [free[i] for i in rng.permutation(len(free))]:
            part = "val" if taken["val"] < n_val else "test" if taken["test"] < n_test else "train"
            taken[part] += len(g)
            rows += [{"path": paths[i], "label": c, "split": part} for i in g]
        pinned = [i for g, is_shared in zip(groups, shared) if is_shared for i in g]
        taken["train"] += len(pinned)
        rows += [{"path": paths[i], "label": c, "split": "train"} for i in pinned]
        if not (taken["val"] and taken["test"] and taken["train"]):
            raise lab.LabError(f"The class {c!r} cannot be split into train, validation and test images: of its {n} "
                               f"images, {len(pinned)} are byte-identical to images of other classes and the "
                               f"rest are copies of too few distinct images (see results/duplicates.csv). Delete "
                               f"the duplicates, add images, or remove the class.")
    for c in cfg.unseen_classes:
        rows += [{"path": p, "label": c, "split": "unseen"} for p in files[c]]
    for row in rows:
        row["bytes"] = os.path.getsize(root / row["path"])
    return pd.DataFrame(rows, columns=SPLIT_COLUMNS)


def split_identity(cfg):
    """The settings that define a split. Where the files live is not one of them: moved data keeps its split
    (verify_split checks that the files are the same)."""
    return {"max_images_per_class": cfg.max_images_per_class, "seen_classes": cfg.seen_classes,
            "unseen_classes": cfg.unseen_classes, "val_fraction": cfg.val_fraction,
            "test_fraction": cfg.test_fraction, "seed": cfg.seed}


def make_split(cfg):
    files, skipped, ignored, notes, digests = scan(cfg)
    summary = summarise(cfg, files, skipped, ignored)
    duplicates = find_duplicates(cfg, files, digests)
    artifacts.save_csv(artifacts.out_path(cfg, "results", "duplicates.csv"), duplicates)
    report_duplicates(duplicates)
    split = draw_split(cfg, files, digests)
    artifacts.save_csv(artifacts.out_path(cfg, "results", "dataset_summary.csv"), summary)
    artifacts.save_csv(artifacts.out_path(cfg, "results", "skipped_files.csv"), pd.DataFrame(skipped, columns=SKIPPED_COLUMNS))
    artifacts.save_csv(artifacts.out_path(cfg, "results", "ignored_files.csv"), pd.DataFrame(ignored, columns=IGNORED_COLUMNS))
    artifacts.save_csv(artifacts.out_path(cfg, "results", "image_notes.csv"), pd.DataFrame(notes, columns=NOTE_COLUMNS))
    artifacts.save_json(artifacts.out_path(cfg, "results", "split.json"),
                  {**split_identity(cfg), "data_root": str(artifacts.resolve(cfg.data_root))})
    artifacts.save_csv(artifacts.out_path(cfg, "results", "split.csv"), split)
    print_summary(summary, split)
    print_file_report(pd.DataFrame(ignored, columns=IGNORED_COLUMNS), pd.DataFrame(notes, columns=NOTE_COLUMNS))
    return split


def _reason_lines(reasons, examples=None):
    lines = []
    for reason, count in reasons.value_counts().items():
        detail = f" ({examples[reason]})" if examples and reason in examples else ""
        lines.append(f"  {count:>7}  {reason}{detail}")
    return lines


def print_file_report(ignored, notes):
    """One line per reason a file in the class folders was ignored, and per remark on an image used."""
    if len(ignored):
        types = ignored.loc[ignored["reason"] == NOT_IMAGE, "path"].map(lambda p: os.path.splitext(p)[1].lower() or
                                                                        "no extension")
        examples = {NOT_IMAGE: ", ".join(f"{ext} {n}" for ext, n in types.value_counts().head(6).items())}
        print(f"ignored {len(ignored)} file(s) or folder(s) in the class folders (listed in "
              f"results/ignored_files.csv):")
        print("\n".join(_reason_lines(ignored["reason"], examples)))
    if len(notes):
        print(f"note: {notes['path'].nunique()} image(s) used with a remark (listed in results/image_notes.csv):")
        print("\n".join(_reason_lines(notes["note"])))


def print_summary(summary, split):
    print("\nclasses (images, share of their group):")
    for _, r in summary.iterrows():
        print(f"  {r['group']:<12} {r['class']:<32} {r['images']:>7}  {100 * r['share']:6.2f} %")
    counts = split.groupby(["split"]).size().to_dict()
    print("split sizes: " + ", ".join(f"{k} {counts.get(k, 0)}" for k in ("train", "val", "test", "unseen")))


def read_skipped(cfg):
    """results/skipped_files.csv as strings (a class named 'NA' or '01' stays a name)."""
    csv = artifacts.out_path(cfg, "results", "skipped_files.csv")
    if not csv.exists() or csv.stat().st_size == 0:
        return pd.DataFrame(columns=SKIPPED_COLUMNS)
    frame = artifacts.read_csv(csv, SKIPPED_COLUMNS)
    if "stage" not in frame:  # written by an earlier version of the lab
        frame["stage"] = np.where(frame["reason"].str.contains("trunk pass"), TRUNK_STAGE, "scan")
    return frame[SKIPPED_COLUMNS]


def record_trunk_failures(cfg, split_rows, ok):
    """Images of a split that decoded at the scan but fail in the trunk pass: listed once in skipped_files.csv
    (and left out by every script through the cache's ok flags); a file that reads again leaves the list."""
    skipped = read_skipped(cfg)
    mine = (skipped["stage"] == TRUNK_STAGE) & skipped["path"].isin(set(split_rows["path"]))
    failed = split_rows[~np.asarray(ok, dtype=bool)]
    new = pd.DataFrame({"path": failed["path"].values, "label": failed["label"].values, "stage": TRUNK_STAGE,
                        "reason": "decoded at the scan, but not in the trunk pass (the file changed since?)"})
    if set(skipped.loc[mine, "path"]) != set(new["path"]):
        artifacts.save_csv(artifacts.out_path(cfg, "results", "skipped_files.csv"),
                     pd.concat([skipped[~mine], new], ignore_index=True))
    if len(new):
        print(f"warning: {len(new)} image(s) could not be decoded and are left out (listed in "
              f"results/skipped_files.csv): {', '.join(new['path'][:5])}", file=sys.stderr)


def verify_split(cfg, split):
    """Stop with the rebuild command if the files on disk are no longer those split.csv was drawn from."""
    rebuild = "python dataloader.py --rebuild_split=True"
    root = check_data_root(cfg)  # a missing folder is the clearer message
    on_disk = {p for images, _ in listed_images(cfg, root).values() for p in images}
    skipped = read_skipped(cfg)
    unreadable = set(skipped.loc[skipped["stage"] == "scan", "path"]) & on_disk
    repaired = {p for p in unreadable if check_image(root / p) is None}  # fixed since: it comes back
    on_disk -= unreadable - repaired
    in_split = set(split["path"])
    added, removed = sorted(on_disk - in_split), sorted(in_split - on_disk)
    if added or removed:
        examples = ", ".join((removed + added)[:4])
        fixed = f" ({len(repaired)} of them unreadable before and readable now)" if repaired else ""
        raise lab.LabError(f"results/split.csv no longer matches the files in {root}: {len(added)} image(s) were "
                           f"added{fixed} and {len(removed)} removed since it was made (e.g. {examples}). Rebuild "
                           f"the split with `{rebuild}` and retrain with `python train.py`.")


def read_split_file(cfg):
    """results/split.csv as written (strings, so that a class named 'NA' stays a name), or None if absent."""
    path = artifacts.out_path(cfg, "results", "split.csv")
    if not path.exists():
        return None
    split = pd.read_csv(path, dtype=str, keep_default_na=False)
    if list(split.columns) not in (SPLIT_COLUMNS, SPLIT_COLUMNS[:3]):  # an earlier version had no bytes column
        raise lab.LabError(f"{path} is not a split file of this lab (columns {list(split.columns)}). Delete it or "
                           f"rebuild it with `python dataloader.py --rebuild_split=True`.")
    return split


def same_files(root, split):
    """True when root holds every file of the split (same relative path and size): the data moved, unchanged."""
    sizes = split["bytes"] if "bytes" in split else [None] * len(split)
    for relative, size in zip(split["path"], sizes):
        try:
            actual = os.path.getsize(os.path.join(root, relative))
        except OSError:
            return False
        if size is not None and actual != int(size):
            return False
    return True


def load_split(cfg, verify=True):
    """The persisted split: drawn and written on first use or for other settings, checked against the disk."""
    split = None if cfg.rebuild_split else read_split_file(cfg)
    if split is not None:
        identity_path = artifacts.out_path(cfg, "results", "split.json")
        identity = json.loads(identity_path.read_text()) if identity_path.exists() else {}
        wanted = split_identity(cfg)
        changed = [k for k in wanted if identity.get(k) != wanted[k]]
        if changed:
            print(f"[split] {', '.join(changed)} differ from the settings of results/split.csv: drawing the split "
                  f"of the current settings (a checkpoint records the split it was trained on, so the later "
                  f"scripts stay safe)")
            split = None
    if split is None:
        output_lock.ensure_output_dirs(cfg, ("results",))
        return make_split(cfg)
    if verify:
        verify_split(cfg, split)
    return split


def split_digest(cfg):
    return artifacts.file_digest(artifacts.out_path(cfg, "results", "split.csv"))


def absolute_paths(cfg, relative_paths):
    root = artifacts.resolve(cfg.data_root)
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


EMBEDDINGS_META = "embeddings_meta.json"            # embed.py's set: train, val, test, unseen
PREDICT_META = "embeddings_predict_meta.json"        # predict.py's set: the new images it classified


def meta_name_of(split_name):
    return PREDICT_META if split_name == "predict" else EMBEDDINGS_META


def save_embedding_set(cfg, frames, meta, meta_name=EMBEDDINGS_META):
    """Write embeddings_<split>.pkl for every split of frames, then embeddings_meta.json with each file's digest
    and the digest of the checkpoint they came from. The meta is written last: a run killed in between leaves
    files that do not match it, which load_embeddings refuses, so a set never mixes two models."""
    digests = {}
    for name, frame in frames.items():
        path = artifacts.atomic_write(artifacts.out_path(cfg, "embeddings", f"embeddings_{name}.pkl"), frame.to_pickle)
        digests[name] = artifacts.file_digest(path)[:16]
        print(f"[embed] {name}: {len(frame)} images x {len(embedding_columns(frame))} dims -> {path}")
    set_id = hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()[:16]
    artifacts.save_json(artifacts.out_path(cfg, "embeddings", meta_name), {**meta, "files": digests, "set": set_id})
    return set_id


def embedding_set(cfg, meta_name=EMBEDDINGS_META):
    """The meta of the current embeddings, checked against the checkpoint they must come from."""
    made_by = "predict.py" if meta_name == PREDICT_META else "embed.py"
    meta_path = artifacts.require(artifacts.out_path(cfg, "embeddings", meta_name), made_by, "embeddings set")
    meta = json.loads(meta_path.read_text())
    current = provenance.artifact_digest(cfg, "checkpoints", "best.pth")
    if "set" not in meta or meta.get("checkpoint_sha256") != current:
        made = f"epoch {meta.get('checkpoint_epoch')} of a checkpoint saved {meta.get('checkpoint_saved_at')}"
        raise lab.LabError(f"The embeddings in {meta_path.parent} were computed from another model ({made}) than "
                           f"checkpoints/best.pth now holds{' (none)' if current is None else ''}: using them would "
                           f"mix two runs. Re-run `python {made_by}` (it is quick: the trunk features are cached), "
                           f"then this script.")
    return meta


def current_predict_set(cfg):
    """predict.py's embeddings set when it exists and comes from the current checkpoint, else None (with a note:
    an older sample's predictions are optional, they never block the pipeline)."""
    if not artifacts.out_path(cfg, "embeddings", PREDICT_META).exists():
        return None
    try:
        meta = embedding_set(cfg, PREDICT_META)
    except lab.LabError:
        meta = json.loads(artifacts.out_path(cfg, "embeddings", PREDICT_META).read_text())
        print(f"note: leaving out the predictions of {meta.get('predict_dir')}: predict.py made them with another "
              f"model. Run `python predict.py --predict_dir={meta.get('predict_dir')!r}` again to have them with "
              f"this one.", file=sys.stderr)
        return None
    path = artifacts.out_path(cfg, "embeddings", "embeddings_predict.pkl")
    return meta if path.exists() and meta["files"].get("predict") == artifacts.file_digest(path)[:16] else None


def record_embedding_inputs(cfg, script):
    """An analysis script's outputs belong to the embeddings set (and so the checkpoint) they were computed from."""
    meta = embedding_set(cfg)
    predict = current_predict_set(cfg) if script == "dimensionality_reduction" else None
    provenance.record_inputs(cfg, script, embeddings=meta["set"], checkpoint=meta["checkpoint_sha256"],
                      predict=predict and predict["set"])


def load_embeddings(cfg, split_name):
    """(frame, float64 vectors) of one embeddings file of the current set; a missing, stale or half-written set
    names embed.py."""
    meta_name = meta_name_of(split_name)
    meta = embedding_set(cfg, meta_name)
    made_by = "predict.py" if meta_name == PREDICT_META else "embed.py"
    path = artifacts.require(artifacts.out_path(cfg, "embeddings", f"embeddings_{split_name}.pkl"), made_by, "embeddings file")
    if meta["files"].get(split_name) != artifacts.file_digest(path)[:16]:
        raise lab.LabError(f"{path} does not belong to the embeddings set in {meta_name} ({made_by} was "
                           f"interrupted while writing, or the file was replaced). Re-run `python {made_by}`.")
    frame = pd.read_pickle(path)
    return frame, frame[embedding_columns(frame)].to_numpy(np.float64)


def main(argv=None):
    cfg = config.load_config(argv, __doc__)
    config.print_config(cfg)
    existed = artifacts.out_path(cfg, "results", "split.csv").exists() and not cfg.rebuild_split
    split = load_split(cfg)
    if existed:
        summary = artifacts.read_csv(artifacts.out_path(cfg, "results", "dataset_summary.csv"), ("group", "class"))
        print_summary(summary, split)
        ignored = artifacts.out_path(cfg, "results", "ignored_files.csv")
        notes = artifacts.out_path(cfg, "results", "image_notes.csv")
        if ignored.exists() and notes.exists():
            print_file_report(artifacts.read_csv(ignored, IGNORED_COLUMNS), artifacts.read_csv(notes, NOTE_COLUMNS))
    print(f"split {'read from' if existed else 'written to'} {artifacts.out_path(cfg, 'results', 'split.csv')}")


if __name__ == "__main__":
    runtime.run_main(lambda: main(sys.argv[1:]))
