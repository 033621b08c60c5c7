"""The data root's class folders, and the images the labels tables list (lab/label_tables.py): which files are
images, which are ignored or skipped and why, byte-identical copies, each class's count and share. Reads data_root
and the labels tables; writes nothing (splitting.py writes the reports).
"""

import contextlib
import difflib
import errno
import functools
import json
import os
import sys
import unicodedata
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pandas as pd

import lab
from lab import artifacts, config, image_io, label_tables, progress

# --------------------------------------------------------------------------- scanning
SYSTEM_NAMES = {"thumbs.db", "desktop.ini", "__macosx", "icon\r"}  # made by file managers, never data


HIDDEN = "hidden or system file (.DS_Store, ._*, Thumbs.db, __MACOSX)"


NOT_IMAGE = "not an image file type"


LOOP = "symlink loop (a folder linked into itself)"


BROKEN_LINK = "broken link"


DENIED = "permission denied"


NOT_REGULAR = "not a regular file (socket, device, pipe)"


MISSING = "listed in a labels table, but no such file"


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
        raise lab.LabError(
            f"Cannot list the data root {root} ({exc.strerror or exc}). Check its permissions, or "
            f"point data_root at another folder."
        ) from None
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
            elif os.path.splitext(entry.name)[1].lower() in image_io.IMAGE_EXTENSIONS:
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
    """{configured class: its folder's name on disk}; a missing or ambiguous folder is a clear error (a missing one
    is not, with labels tables: they may hold the class). Names match in composed Unicode, so a decomposed folder
    name (as macOS zips write it) is the same class."""
    existing = class_folders(root)
    names = {}
    seen = [] if config.every_class(cfg) else cfg.seen_classes  # "all": every folder, so none can be missing
    for name in seen + cfg.unseen_classes:
        on_disk = existing.get(unicodedata.normalize("NFC", name), [])
        if not on_disk and cfg.labels_file is not None:
            continue
        if not on_disk:
            close = difflib.get_close_matches(name, list(existing), n=1, cutoff=0.5)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            listing = ", ".join(sorted(existing)[:40]) + (" ..." if len(existing) > 40 else "")
            raise lab.LabError(
                f"The class folder {name!r} is not in {root}.{hint} The classes there are: "
                f"{listing or '(none)'}. Fix seen_classes / unseen_classes in configfile.py."
            )
        if len(on_disk) > 1:
            raise lab.LabError(
                f"{root} holds {len(on_disk)} folders spelt {name!r}, in different Unicode forms "
                f"(composed and decomposed: {', '.join(map(ascii, on_disk))}), so the class is "
                f"ambiguous. Merge them into one folder, or rename one."
            )
        names[name] = on_disk[0]
    return names


def candidate_classes(cfg, root, tables):
    """seen_classes="all": every class folder of root (composed Unicode) and every label the tables give, that is not
    an unseen class, sorted; the scan then leaves out those with too few images (scan's left_out)."""
    names = set(class_folders(root)) | set(tables.labelled())
    return sorted(names - set(cfg.unseen_classes))


def check_data_root(cfg):
    """Clear errors for a missing root or class folder; returns the resolved root. A check, so it writes nothing:
    a missing demo data set is generated by the entry points (dataloader.py, run_pipeline.py), not here."""
    root = artifacts.resolve(cfg.data_root)
    if artifacts.is_demo_root(cfg) and not root.exists():
        raise lab.LabError(
            f"The demo data set {root} has not been generated yet (data_root is the demo's folder). Run "
            f"`python dataloader.py`, which generates it and draws the split, or the whole pipeline with "
            f"`python run_pipeline.py`; `python -m lab.demo_data` generates the demo data alone."
        )
    if not root.is_dir():
        raise lab.LabError(
            f"The data root {root} does not exist or is not a folder. Point data_root in "
            f"configfile.py (or --data_root=...) at a folder with one sub-folder of images per class, "
            f"e.g. .../FlowCamNet/imgs."
        )
    folder_names(cfg, root)
    return root


def listed_images(cfg, root, tables=None):
    """{class: (image paths as split.csv holds them, capped by max_images_per_class; ignored (path, reason)
    pairs)}: the class folder's images (relative to root), then those the labels tables give the class (relative
    to root where they are under it, else absolute), each once; tables: label_tables.read_labels's, read here
    when not given."""
    tables = label_tables.read_labels(cfg, root) if tables is None else tables
    from_tables = tables.labelled()
    folders = folder_names(cfg, root)
    listing = {}
    for name in cfg.seen_classes + cfg.unseen_classes:
        images, ignored = list_class_files(root / folders[name]) if name in folders else ([], [])
        images = [f"{folders[name]}/{f}" for f in images]
        in_folder = set(images)
        images += [p for p in from_tables.get(name, []) if p not in in_folder]
        listing[name] = (cap_images(images, cfg), [(f"{folders[name]}/{f}", r) for f, r in ignored])
    return listing


def inspect_all(cfg, root, paths):
    """inspect_file of every path (relative to root, or absolute), in worker processes when there are many; a
    file listed by a table that does not exist is said so plainly."""
    check = functools.partial(image_io.inspect_file, side=cfg.image_size)
    absolute = [str(root / p) for p in paths]
    present = absolute if cfg.labels_file is None else [p for p in absolute if os.path.lexists(p)]
    workers = max(1, min(cfg.num_workers, os.cpu_count() or 1))
    if workers > 1 and len(present) > 2000:
        with ProcessPoolExecutor(workers) as pool:
            results = list(progress.progress(pool.map(check, present, chunksize=256), len(present), "scan", "images"))
    else:
        results = list(progress.progress(map(check, present), len(present), "scan", "images"))
    if present is absolute:
        return results
    found = dict(zip(present, results))
    return [found.get(p, (MISSING, [], None)) for p in absolute]


def scan(cfg, tables=None, left_out=None):
    """Check every image of the configured classes (tables: label_tables.read_labels's, read here when not
    given). Returns (files per class, skipped rows, ignored rows, note rows, sha256 per readable file). left_out:
    a dict for seen_classes="all", where a seen class with fewer than min_images_per_class readable images is left
    out ({class: readable images}, its files not returned) instead of stopping the run."""
    root = check_data_root(cfg)
    listing = listed_images(cfg, root, tables)
    paths = [p for images, _ in listing.values() for p in images]
    results = dict(zip(paths, inspect_all(cfg, root, paths)))
    files, skipped, ignored, notes, digests = {}, [], [], [], {}
    for name, (images, others) in listing.items():
        files[name] = [p for p in images if results[p][0] is None]
        skipped += [
            {"path": p, "label": name, "stage": "scan", "reason": results[p][0]} for p in images if results[p][0]
        ]
        ignored += [{"path": p, "label": name, "reason": r} for p, r in others]
        notes += [{"path": p, "label": name, "note": n, "detail": d} for p in images for n, d in results[p][1]]
        if left_out is not None and name not in cfg.unseen_classes and len(files[name]) < cfg.min_images_per_class:
            left_out[name] = len(files.pop(name))
            continue
        digests.update({p: results[p][2] for p in files[name]})
        if not files[name] and cfg.labels_file is not None:
            raise lab.LabError(
                f"The class {name!r} has no readable images: {len(images)} image file(s) in its class "
                f"folder under {root} and the labels tables together, {len(others)} other entries. "
                f"Check its spelling against the tables' labels (or the labels_map), add images, or "
                f"remove {name!r} from the class lists in configfile.py."
            )
        if not files[name]:
            raise lab.LabError(
                f"The class folder {root / name} holds no readable images ({len(images)} image "
                f"files, {len(others)} other entries). Put its images there (jpg, png, tif, bmp, "
                f"webp, gif...) or remove {name!r} from the class lists in configfile.py."
            )
        if len(files[name]) < cfg.min_images_per_class:
            raise lab.LabError(
                f"The class {name!r} has only {len(files[name])} readable images, fewer than "
                f"min_images_per_class={cfg.min_images_per_class}: too few to give the train, "
                f"validation and test splits (or the transfer-learning splits) some of each. Add "
                f"images, remove the class from configfile.py, or lower min_images_per_class."
            )
    if skipped:
        names = artifacts.printable(", ".join(s["path"] for s in skipped[:5])) + (" ..." if len(skipped) > 5 else "")
        print(
            f"warning: skipping {len(skipped)} unreadable image file(s) (listed in results/skipped_files.csv): {names}",
            file=sys.stderr,
        )
    return files, skipped, ignored, notes, digests


SUMMARY_COLUMNS = ["group", "class", "images", "share", "skipped_unreadable", "ignored_non_image", "note"]


def summarise(cfg, files, skipped, ignored, left_out=None):
    """Tasks 1-2: each class's image count and share of its group, with totals; with seen_classes="all", the classes
    left out for too few readable images (group 'left out', not in the seen total, the reason in `note`)."""
    rows = []
    for group, classes in (("seen", cfg.seen_classes), ("unseen", cfg.unseen_classes)):
        total = sum(len(files[c]) for c in classes)
        for c in classes:
            rows.append(
                {
                    "group": group,
                    "class": c,
                    "images": len(files[c]),
                    "share": len(files[c]) / total,
                    "skipped_unreadable": sum(s["label"] == c for s in skipped),
                    "ignored_non_image": sum(i["label"] == c for i in ignored),
                }
            )
        # the total's own group, so that no class name (a class may be called TOTAL) can be mistaken for it
        rows.append(
            {
                "group": f"{group} total",
                "class": f"all {group} classes",
                "images": total,
                "share": 1.0,
                "skipped_unreadable": sum(r["skipped_unreadable"] for r in rows if r["group"] == group),
                "ignored_non_image": sum(r["ignored_non_image"] for r in rows if r["group"] == group),
            }
        )
    for c, readable in (left_out or {}).items():
        rows.append(
            {
                "group": "left out",
                "class": c,
                "images": readable,
                "share": None,
                "skipped_unreadable": sum(s["label"] == c for s in skipped),
                "ignored_non_image": sum(i["label"] == c for i in ignored),
                "note": f"fewer than min_images_per_class={cfg.min_images_per_class} readable images",
            }
        )
    frame = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    frame["note"] = frame["note"].astype(object).where(frame["note"].notna(), "")  # the classes kept have no note
    return frame


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
            rows += [
                {
                    "path": p,
                    "label": c,
                    "digest": digest,
                    "copies": len(copies),
                    "labels": json.dumps(labels, ensure_ascii=False),
                    "kind": kind,
                }
                for p, c in copies
            ]
    return pd.DataFrame(rows, columns=DUPLICATE_COLUMNS)


def report_duplicates(duplicates):
    """One warning line naming the images filed under two or more classes; one note for copies within a class."""
    across = duplicates[duplicates["kind"] == "across classes"].drop_duplicates("digest")
    if len(across):
        named = ", ".join(
            f"{p!r} {', '.join(json.loads(labels))}" for p, labels in zip(across["path"][:5], across["labels"][:5])
        ) + (" ..." if len(across) > 5 else "")
        print(
            f"warning: {len(across)} image(s) are byte-identical files filed under two or more classes ({named}): "
            f"listed with all their labels in results/duplicates.csv. Each copy keeps its class and the copies of "
            f"one image share a split (train, where two seen classes disagree); decide which label is right and "
            f"delete the other copies.",
            file=sys.stderr,
        )
    within = duplicates[duplicates["kind"] == "same class"]
    if len(within):
        print(
            f"note: {len(within)} files are byte-identical copies within their class ({within['digest'].nunique()} "
            f"distinct images): each image's copies are kept together in one split (results/duplicates.csv)"
        )


def _reason_lines(reasons, examples=None):
    lines = []
    for reason, count in reasons.value_counts().items():
        detail = f" ({examples[reason]})" if examples and reason in examples else ""
        lines.append(f"  {count:>7}  {reason}{detail}")
    return lines


def print_file_report(ignored, notes):
    """One line per reason a file in the class folders was ignored, and per remark on an image used."""
    if len(ignored):
        types = ignored.loc[ignored["reason"] == NOT_IMAGE, "path"].map(
            lambda p: os.path.splitext(p)[1].lower() or "no extension"
        )
        examples = {NOT_IMAGE: ", ".join(f"{ext} {n}" for ext, n in types.value_counts().head(6).items())}
        print(
            f"ignored {len(ignored)} file(s) or folder(s) in the class folders (listed in results/ignored_files.csv):"
        )
        print(artifacts.printable("\n".join(_reason_lines(ignored["reason"], examples))))  # names' bytes shown
    if len(notes):
        print(f"note: {notes['path'].nunique()} image(s) used with a remark (listed in results/image_notes.csv):")
        print("\n".join(_reason_lines(notes["note"])))


def print_summary(summary, split):
    print("\nclasses (images, share of their group):")
    left_out = summary[summary["group"] == "left out"]
    for _, r in summary.drop(left_out.index).iterrows():
        print(f"  {r['group']:<12} {r['class']:<32} {r['images']:>7}  {100 * r['share']:6.2f} %")
    if len(left_out):
        print(
            f"  {len(left_out)} class(es) left out of seen_classes='all', with fewer readable images than "
            f"min_images_per_class (group 'left out' in results/dataset_summary.csv): "
            + config.names_text(list(left_out["class"]), "results/dataset_summary.csv")
        )
    counts = split.groupby(["split"]).size().to_dict()
    print("split sizes: " + ", ".join(f"{k} {counts.get(k, 0)}" for k in ("train", "val", "test", "unseen")))
    rounds = pd.to_numeric(split["round"]) if "round" in split else pd.Series(0, index=split.index)
    if rounds.max() > 0:
        grown = split[rounds > 0].groupby("split").size().to_dict()
        print(
            f"  of them added since the first draw, as the data grew ({rounds.max()} time(s)): "
            + ", ".join(f"{k} {grown.get(k, 0)}" for k in ("train", "val", "test", "unseen"))
        )
