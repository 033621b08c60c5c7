"""The split: drawn once (stratified, seeded, byte-identical copies together, and near-copies too with
near_copies="group"), written to results/, and checked against the files and labels on disk by every later
script. When the data grows, the rows already split keep their split and the new ones are split by the same rule
(`round` counts the growths); a changed or removed row asks for the rebuild command. Writes results/split.csv,
split.json, dataset_summary.csv, label_sources.csv, unused_labels.csv, skipped_files.csv, ignored_files.csv,
image_notes.csv, duplicates.csv, near_copies.csv and near_copies.json (lab/near_copies.py), as one output set.
"""

import os
import sys

import numpy as np
import pandas as pd

import lab
from lab import artifacts, config, data_folders, image_io, label_tables, manifest, near_copies

# bytes: to recognise the same files after a move; round: 0 for the rows of the first draw, k for those added when
# the data grew the k-th time. path: relative to data_root, or absolute for a table's image outside it.
SPLIT_COLUMNS = ["path", "label", "split", "bytes", "round"]


SKIPPED_COLUMNS = ["path", "label", "stage", "reason"]


TRUNK_STAGE = "trunk pass"


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
            raise lab.LabError(
                f"The class {c!r} has {n} images: with val_fraction={cfg.val_fraction} and "
                f"test_fraction={cfg.test_fraction} none would be left for training. Add images, lower "
                f"the fractions, or raise min_images_per_class to keep such classes out."
            )
        taken = {"val": 0, "test": 0, "train": 0}
        for g in [free[i] for i in rng.permutation(len(free))]:
            part = "val" if taken["val"] < n_val else "test" if taken["test"] < n_test else "train"
            taken[part] += len(g)
            rows += [{"path": paths[i], "label": c, "split": part} for i in g]
        pinned = [i for g, is_shared in zip(groups, shared) if is_shared for i in g]
        taken["train"] += len(pinned)
        rows += [{"path": paths[i], "label": c, "split": "train"} for i in pinned]
        if not (taken["val"] and taken["test"] and taken["train"]):
            raise lab.LabError(
                f"The class {c!r} cannot be split into train, validation and test images: of its {n} "
                f"images, {len(pinned)} are byte-identical to images of other classes and the "
                f"rest are copies of too few distinct images (see results/duplicates.csv). Delete "
                f"the duplicates, add images, or remove the class."
            )
    for c in cfg.unseen_classes:
        rows += [{"path": p, "label": c, "split": "unseen"} for p in files[c]]
    for row in rows:
        row["bytes"] = os.path.getsize(root / row["path"])
    return pd.DataFrame(rows, columns=SPLIT_COLUMNS[:4]).assign(round=0)


def extend_split(cfg, previous, files, digests):
    """previous (split.csv as read) grown by the scanned files it lacks: every row of previous keeps its split and
    the new rows get round = previous's last round + 1. The draw's rule, seeded by (seed, round): the new images
    of a seen class fill its val and test parts up to the shares of the grown class (at least one each), in a
    seeded order, the rest go to train; a copy of an image already split goes where it is, an image new to two
    seen classes to train, an unseen class's images to unseen."""
    old = previous.assign(round=previous["round"] if "round" in previous else "0").astype(str)
    this_round = int(pd.to_numeric(old["round"]).max()) + 1
    known = set(zip(old["path"], old["label"]))
    placed = {}
    for p, part in zip(old["path"], old["split"]):
        if part != "unseen":
            placed.setdefault(digests.get(p) or p, part)
    new = {c: [p for p in files[c] if (p, c) not in known] for c in cfg.seen_classes + cfg.unseen_classes}
    owners = {}
    for c in cfg.seen_classes:
        for p in new[c]:
            owners.setdefault(digests.get(p) or p, set()).add(c)
    rng = np.random.default_rng([cfg.seed, this_round])
    rows = []
    for c in cfg.seen_classes:
        paths, free = new[c], []
        before = old.loc[old["label"] == c, "split"].value_counts()
        total = int(before.sum()) + len(paths)
        wanted = {
            "val": max(1, round(total * cfg.val_fraction)) - before.get("val", 0),
            "test": max(1, round(total * cfg.test_fraction)) - before.get("test", 0),
            "train": len(paths),
        }
        for g in _duplicate_groups(paths, digests):
            key = digests.get(paths[g[0]]) or paths[g[0]]
            part = placed.get(key) or ("train" if len(owners[key]) > 1 else None)
            if part:
                rows += [{"path": paths[i], "label": c, "split": part} for i in g]
            else:
                free.append(g)
        taken = {"val": 0, "test": 0, "train": 0}
        for g in [free[i] for i in rng.permutation(len(free))]:
            part = next(part for part in ("val", "test", "train") if taken[part] < wanted[part])
            taken[part] += len(g)
            rows += [{"path": paths[i], "label": c, "split": part} for i in g]
    for c in cfg.unseen_classes:
        rows += [{"path": p, "label": c, "split": "unseen"} for p in new[c]]
    root = artifacts.resolve(cfg.data_root)
    for row in rows:
        row.update(bytes=os.path.getsize(root / row["path"]), round=this_round)
    added = pd.DataFrame(rows, columns=SPLIT_COLUMNS).astype(str)
    return pd.concat([old, added], ignore_index=True), added


def split_identity(cfg):
    """The settings that define a split. Where the files live is not one of them: moved data keeps its split
    (verify_split checks that the files are the same)."""
    identity = {
        "max_images_per_class": cfg.max_images_per_class,
        "seen_classes": cfg.seen_classes,
        "unseen_classes": cfg.unseen_classes,
        "val_fraction": cfg.val_fraction,
        "test_fraction": cfg.test_fraction,
        "seed": cfg.seed,
    }
    # only with "group": the splits drawn with "report" (or before the setting, whose checkpoints lack it) stay valid
    if getattr(cfg, "near_copies", "report") == "group":
        identity["near_copies"] = "group"
    return identity


def make_split(cfg, previous=None, candidates=None):
    """Scan, draw the split (or grow previous, split.csv as read, by the new images) and write every report.
    candidates: seen_classes="all"'s classes (cfg.seen_classes holds them too): those with too few readable images
    are left out, cfg.seen_classes becomes the rest, and split.json records both."""
    root = data_folders.check_data_root(cfg)
    tables = label_tables.read_labels(cfg, root, announce=True)
    left_out = None if candidates is None else {}
    files, skipped, ignored, notes, digests = data_folders.scan(cfg, tables, left_out)
    if left_out:
        cfg.seen_classes = [c for c in candidates if c not in left_out]
        config.validate_config(cfg)  # the rules that count classes, now that "all" is a list
    summary = data_folders.summarise(cfg, files, skipped, ignored, left_out)
    duplicates = data_folders.find_duplicates(cfg, files, digests)
    data_folders.report_duplicates(duplicates)
    copies, compared = near_copies.search(cfg, files)
    # with near_copies="group", a near-copy group shares one key, as byte-identical copies do: one split
    keys = near_copies.group_keys(copies, digests) if cfg.near_copies == "group" else digests
    added = None
    if previous is None:
        split = draw_split(cfg, files, keys)
    else:
        split, added = extend_split(cfg, previous, files, keys)
    copies, copies_summary = near_copies.report_frames(cfg, copies, split, compared)
    ignored = pd.DataFrame(ignored, columns=data_folders.IGNORED_COLUMNS)
    notes = pd.DataFrame(notes, columns=data_folders.NOTE_COLUMNS)
    labels = [{k: s[k] for k in ("source", "kind", "sha256")} for s in tables.sources]
    identity = {**split_identity(cfg), "data_root": str(root), "labels_tables": labels}
    if candidates is not None:
        identity.update(seen_classes_setting=config.ALL_CLASSES, all_candidates=candidates, left_out=left_out)
    sources = label_tables.source_counts(root, tables, files, skipped)
    with manifest.OutputSet(cfg, "split") as out:
        out.save_csv("results", "duplicates.csv", duplicates)
        out.save_csv("results", "dataset_summary.csv", summary)
        out.save_csv("results", "label_sources.csv", sources)
        out.save_csv("results", "unused_labels.csv", label_tables.unused_rows(tables))
        out.save_csv("results", "skipped_files.csv", pd.DataFrame(skipped, columns=SKIPPED_COLUMNS))
        out.save_csv("results", "ignored_files.csv", ignored)
        out.save_csv("results", "image_notes.csv", notes)
        out.save_csv("results", "near_copies.csv", copies)
        out.save_json("results", "near_copies.json", copies_summary)
        out.save_json("results", "split.json", identity)
        out.save_csv("results", "split.csv", split)
        out.publish(**identity)
    data_folders.print_summary(summary, split)
    label_tables.print_sources(sources)
    data_folders.print_file_report(ignored, notes)
    if added is not None:
        parts = ", ".join(f"{k} {n}" for k, n in added["split"].value_counts().items()) or "none readable"
        print(
            f"[split] the data grew: {len(added)} new image(s) added to results/split.csv ({parts}); the "
            f"{len(previous)} rows already split keep their split"
        )
    return split


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
    new = pd.DataFrame(
        {
            "path": failed["path"].values,
            "label": failed["label"].values,
            "stage": TRUNK_STAGE,
            "reason": "decoded at the scan, but not in the trunk pass (the file changed since?)",
        }
    )
    if set(skipped.loc[mine, "path"]) != set(new["path"]):
        changed = pd.concat([skipped[~mine], new], ignore_index=True)
        manifest.replace_output(cfg, "split", "results", "skipped_files.csv", lambda p: artifacts.write_csv(p, changed))
    if len(new):
        print(
            f"warning: {len(new)} image(s) could not be decoded and are left out (listed in "
            f"results/skipped_files.csv): {artifacts.printable(', '.join(new['path'][:5]))}",
            file=sys.stderr,
        )


def verify_split(cfg, split):
    """The (path, label) pairs on disk that split.csv lacks (the data grew), sorted; stops with the rebuild command
    when rows of split.csv were removed or relabelled since it was made."""
    rebuild = "python dataloader.py --rebuild_split=True"
    root = data_folders.check_data_root(cfg)  # a missing folder is the clearer message
    on_disk = {(p, c) for c, (images, _) in data_folders.listed_images(cfg, root).items() for p in images}
    skipped = read_skipped(cfg)
    unreadable_paths = set(skipped.loc[skipped["stage"] == "scan", "path"])
    unreadable = {pair for pair in on_disk if pair[0] in unreadable_paths}
    repaired = {pair for pair in unreadable if image_io.check_image(root / pair[0]) is None}  # fixed since: back
    on_disk -= unreadable - repaired
    in_split = set(zip(split["path"], split["label"]))
    added, removed = sorted(on_disk - in_split), sorted(in_split - on_disk)
    where = f"{root}{' and the labels tables' if cfg.labels_file is not None else ''}"
    fixed = f" ({len(repaired & set(added))} of them unreadable before and readable now)" if repaired else ""
    if removed:
        relabelled = len({p for p, _ in removed} & {p for p, _ in added})
        changed = f" ({relabelled} of them relabelled: listed under another class now)" if relabelled else ""
        examples = ", ".join(p for p, _ in (removed + added)[:4])
        raise lab.LabError(
            f"results/split.csv no longer matches the files in {where}: {len(added)} image(s) were "
            f"added{fixed} and {len(removed)} removed{changed} since it was made (e.g. {examples}). "
            f"Rebuild the split with `{rebuild}` and retrain with `python train.py`."
        )
    return added, f"{len(added)} image(s) were added to {where}{fixed} since results/split.csv was made"


def read_split_file(cfg):
    """results/split.csv as written (strings, so that a class named 'NA' stays a name), or None if absent."""
    path = artifacts.out_path(cfg, "results", "split.csv")
    if not path.exists():
        return None
    split = pd.read_csv(path, dtype=str, keep_default_na=False, encoding_errors="surrogateescape")
    if list(split.columns) not in (SPLIT_COLUMNS, SPLIT_COLUMNS[:4], SPLIT_COLUMNS[:3]):  # earlier versions' too
        raise lab.LabError(
            f"{path} is not a split file of this lab (columns {list(split.columns)}). Delete it or "
            f"rebuild it with `python dataloader.py --rebuild_split=True`."
        )
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


def read_or_draw_split(cfg, verify=True, grow=True):
    """The persisted split, checked against the disk; or, on first use and for other settings, drawn and written:
    then it takes the output folder's lock, scans every image and runs the near-copy search (minutes on a large
    data set), as dataloader.py does. New images join it (grow, train.py and dataloader.py), every row already
    split keeping its split; without grow (the scripts after training) they stop the run with the command that
    adds them."""
    split = None if cfg.rebuild_split else read_split_file(cfg)
    identity = {}
    if split is not None:
        identity_path = artifacts.out_path(cfg, "results", "split.json")
        try:
            identity = artifacts.read_json(identity_path, "dataloader.py", "split file")
        except lab.LabError:  # missing or damaged: what the split was drawn from is unknown, so it is drawn anew
            identity = {}
    candidates = every_class_candidates(cfg, identity) if config.every_class(cfg) else None
    if split is not None:
        wanted = split_identity(cfg)
        changed = [k for k in wanted if identity.get(k) != wanted[k]]
        if changed:
            print(
                f"[split] {', '.join(changed)} differ from the settings of results/split.csv: drawing the split "
                f"of the current settings (a checkpoint records the split it was trained on, so the later "
                f"scripts stay safe)"
            )
            split = None
    if split is None:
        artifacts.ensure_output_dirs(cfg, ("results",))
        return make_split(cfg, candidates=candidates)
    if verify:
        added, what = verify_split(cfg, split)
        if added and not grow:
            raise lab.LabError(
                f"{what} (e.g. {', '.join(p for p, _ in added[:4])}); the model was trained "
                f"without them. `python train.py` adds them to the split, every row already split "
                f"keeping its split, and retrains; or remove them to use this model as it is."
            )
        if added:
            artifacts.ensure_output_dirs(cfg, ("results",))
            return make_split(cfg, previous=split, candidates=candidates)
    return split


def every_class_candidates(cfg, identity):
    """seen_classes="all": the classes it means today (every class folder and table label not unseen). When they are
    those the persisted split was drawn from, cfg.seen_classes becomes that split's list (the classes left out then
    stay out); otherwise it becomes the new candidates, the split is drawn anew, and a line names what changed."""
    root = data_folders.check_data_root(cfg)
    candidates = data_folders.candidate_classes(cfg, root, label_tables.read_labels(cfg, root))
    before = identity.get("all_candidates") if identity.get("seen_classes_setting") == config.ALL_CLASSES else None
    if before == candidates:
        cfg.seen_classes = list(identity["seen_classes"])
    else:
        cfg.seen_classes = list(candidates)
        if before is not None:
            added, removed = sorted(set(candidates) - set(before)), sorted(set(before) - set(candidates))
            print(
                "[split] seen_classes='all': the class folders changed since the split was drawn ("
                + "; ".join(
                    f"{what}: {config.names_text(names, 'the data root')}"
                    for what, names in (("new", added), ("gone", removed))
                    if names
                )
                + "): drawing the split anew"
            )
    config.validate_config(cfg)
    return candidates


def split_digest(cfg):
    return artifacts.file_digest(artifacts.out_path(cfg, "results", "split.csv"))


def absolute_paths(cfg, relative_paths):
    root = artifacts.resolve(cfg.data_root)
    return [str(root / p) for p in relative_paths]
