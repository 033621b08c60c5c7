"""Labels from tables (the `labels_file` setting): CSV or TSV files of image paths and labels, read beside the class
folders. EcoTaxa's export is recognised by its columns (with or without its `[t]`/`[f]` type row); its rows are
chosen by `object_annotation_status` (`labels_statuses`), and its categories turned into the lab's classes by
`labels_map`. Every row that does not become a training label is counted with its reason, never dropped silently.
Reads the tables and the map; writes nothing (splitting.py writes results/label_sources.csv and unused_labels.csv).
"""

import difflib
import io
import os
import sys
import unicodedata
from dataclasses import dataclass, field

import pandas as pd

import lab
from lab import artifacts, config

TABLE_SUFFIXES = (".csv", ".tsv", ".tab", ".txt")  # the files a folder named in labels_file contributes
ECOTAXA_PATH, ECOTAXA_LABEL = "img_file_name", "object_annotation_category"
ECOTAXA_STATUS = "object_annotation_status"
UNCLASSIFIED = "unclassified"  # what an empty status (an object never classified) is counted as
# Column names of the common layouts (compared in lower case, spaces and hyphens read as '_'), in order of
# preference: the first one present is used.
PATH_NAMES = (
    "path",
    "file",
    "filename",
    "file_name",
    "image",
    "image_path",
    "image_file",
    "image_name",
    "img",
    "img_path",
    "filepath",
    "file_path",
    "relative_path",
    "img_file_name",
    "roi",
    "pid",
)
LABEL_NAMES = (
    "label",
    "class",
    "class_name",
    "category",
    "taxon",
    "taxa",
    "species",
    "annotation",
    "label_name",
    "object_annotation_category",
    "target",
)
ENTRY_COLUMNS = ["source", "line", "path", "category", "status", "label", "reason"]
SOURCE_COLUMNS = ["source", "kind", "sha256", "status", "rows", "used"]
UNUSED_COLUMNS = ["source", "category", "status", "reason", "rows"]
# Why a row of a table gives no label ("" in the entries: it does).
STATUS_LEFT_OUT = "status not in labels_statuses"
NOT_IN_MAP = "category not in labels_map"
MAPPED_OUT = "left out by labels_map (mapped to an empty cell)"
NOT_A_CLASS = "not in seen_classes or unseen_classes"


@dataclass
class Tables:
    """The rows of every labels table (ENTRY_COLUMNS; reason "" where the row gives a label) and each table's
    description: path, kind, sha256 (16 hex digits), the columns read."""

    entries: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=ENTRY_COLUMNS))
    sources: list = field(default_factory=list)

    def labelled(self):
        """{class: sorted split.csv paths} of the rows that give a label, each (path, class) once."""
        used = self.entries[self.entries["reason"] == ""].drop_duplicates(["path", "label"])
        return {c: sorted(group["path"]) for c, group in used.groupby("label", sort=False)}

    def pairs(self):
        used = self.entries[self.entries["reason"] == ""]
        return set(zip(used["path"], used["label"]))


# --------------------------------------------------------------------------- which tables
def table_paths(cfg):
    """The tables labels_file names, in order: a file, or every table in a folder (recursively, hidden entries
    left out), or a list of both."""
    if cfg.labels_file is None:
        return []
    named = [cfg.labels_file] if isinstance(cfg.labels_file, str) else list(cfg.labels_file)
    tables = []
    for name in named:
        path = artifacts.resolve(name)
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.suffix.lower() in TABLE_SUFFIXES
                and p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not found:
                raise lab.LabError(
                    f"labels_file names the folder {path}, which holds no table "
                    f"({', '.join(TABLE_SUFFIXES)} files, searched in its sub-folders too). Put the "
                    f"exported tables there, or name the table files themselves."
                )
            tables += found
        elif path.is_file():
            tables.append(path)
        else:
            raise lab.LabError(
                f"The labels table {path} (labels_file={name!r}) does not exist. Give the path of a CSV "
                f"or TSV file, or of a folder of them; a relative path is taken relative to the "
                f"repository, like data_root."
            )
    return list(dict.fromkeys(tables))


# --------------------------------------------------------------------------- reading one table
def _text(path, what="labels table"):
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise lab.LabError(f"Cannot read the {what} {path} ({exc.strerror or exc}). Check its permissions.") from None
    if b"\0" in raw[:65536]:
        raise lab.LabError(
            f"The {what} {path} is not a text table (it holds binary data: an Excel workbook, a zip?). "
            f"Save it as CSV (UTF-8) or TSV, or unzip the EcoTaxa export and name its .tsv files."
        )
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise lab.LabError(
            f"The {what} {path} is not UTF-8 text (byte {exc.start}). Save it as UTF-8 (in Excel: "
            f"'CSV UTF-8'), so that class names with accents read the same everywhere."
        ) from None


def _separator(path, header):
    if path.suffix.lower() in (".tsv", ".tab"):
        return "\t"
    return max(("\t", ",", ";"), key=header.count)  # the one the header line uses most


def _normal(name):
    return str(name).strip().lower().replace(" ", "_").replace("-", "_")


def read_table(path, what="labels table"):
    """Every cell of a CSV or TSV as text (a class called NA or 01 stays that string), the first line as the
    header; EcoTaxa's type row ([t] text, [f] number) is dropped. Returns (frame, line number of its first row)."""
    text = _text(path, what)
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise lab.LabError(
            f"The {what} {path} is empty: it needs a header line naming its columns, then one row per image."
        )
    try:
        frame = pd.read_csv(
            io.StringIO(text), sep=_separator(path, lines[0]), dtype=str, keep_default_na=False, skip_blank_lines=True
        )
    except (pd.errors.ParserError, ValueError) as exc:
        raise lab.LabError(
            f"Cannot read the {what} {path} as a CSV or TSV table ({str(exc).strip()[:200]}). Check "
            f"that every row has as many cells as the header, and that cells holding the separator "
            f"are quoted."
        ) from None
    first_line = 2
    if (
        len(frame)
        and all(v.strip().lower() in ("[t]", "[f]", "") for v in frame.iloc[0])
        and any(v.strip() for v in frame.iloc[0])
    ):
        frame, first_line = frame.iloc[1:].reset_index(drop=True), 3
    return frame, first_line


def detect_columns(columns, path, labels_columns=None):
    """(path column, label column, status column or None, kind) of a table with these columns: labels_columns when
    given, else EcoTaxa's columns, else the first of PATH_NAMES and of LABEL_NAMES present."""
    status = ECOTAXA_STATUS if ECOTAXA_STATUS in columns else None
    if labels_columns:
        missing = [c for c in labels_columns if c not in columns]
        if missing:
            hints = "".join(
                f" Did you mean {close[0]!r} for {c!r}?"
                for c in missing
                for close in [difflib.get_close_matches(c, columns, n=1, cutoff=0.5)]
                if close
            )
            raise lab.LabError(
                f"labels_columns={labels_columns!r} names the column(s) {missing}, which the labels "
                f"table {path} does not have.{hints} Its columns are: {_listing(columns)}. Fix "
                f"labels_columns (the path column, then the label column)."
            )
        return labels_columns[0], labels_columns[1], status, "table"
    if ECOTAXA_PATH in columns and ECOTAXA_LABEL in columns:
        return ECOTAXA_PATH, ECOTAXA_LABEL, status, "EcoTaxa export"
    normal = {}
    for c in columns:
        normal.setdefault(_normal(c), c)
    found = [next((normal[n] for n in names if n in normal), None) for names in (PATH_NAMES, LABEL_NAMES)]
    if None in found:
        which = " and ".join(w for w, f in zip(("image-path", "label"), found) if f is None)
        raise lab.LabError(
            f"The labels table {path} has no {which} column the lab knows (its columns: "
            f"{_listing(columns)}). Name them with labels_columns, e.g. "
            f"--labels_columns=\"['file', 'taxon']\" (the path column, then the label column); "
            f"known names are {', '.join(PATH_NAMES[:6])} ... and {', '.join(LABEL_NAMES[:6])} ..."
        )
    return found[0], found[1], status, "table"


def _listing(names, limit=30):
    return ", ".join(map(repr, names[:limit])) + (" ..." if len(names) > limit else "")


# --------------------------------------------------------------------------- the map
def read_map(cfg):
    """{category: class} of labels_map (a 2-column table with a header line; many categories may map to one class,
    an empty class leaves the category out on purpose), or None."""
    if cfg.labels_map is None:
        return None
    path = artifacts.resolve(cfg.labels_map)
    if not path.is_file():
        raise lab.LabError(
            f"The labels_map table {path} does not exist. Give a CSV or TSV of two columns (with a "
            f"header line): a category of the labels tables, then the class it counts as."
        )
    frame, first_line = read_table(path, "labels_map table")
    if frame.shape[1] != 2:
        raise lab.LabError(
            f"The labels_map table {path} has {frame.shape[1]} columns ({_listing(list(frame.columns))})"
            f"; it needs exactly two, with a header line: the category, then the class it counts as."
        )
    mapping = {}
    for line, (category, target) in enumerate(zip(frame.iloc[:, 0], frame.iloc[:, 1]), start=first_line):
        category, target = _name(category), _name(target)
        if not category:
            raise lab.LabError(
                f"The labels_map table {path} has an empty category on line {line}. Fill it in or delete the line."
            )
        if mapping.get(category, target) != target:
            raise lab.LabError(
                f"The labels_map table {path} maps the category {category!r} to two classes, "
                f"{mapping[category]!r} and {target!r} (line {line}). A category counts as one class; "
                f"keep one of the lines."
            )
        mapping[category] = target
    return mapping


def _name(value):
    return unicodedata.normalize("NFC", str(value).strip())


# --------------------------------------------------------------------------- the rows
def split_paths(root, folder, cells):
    """The files that cells name (relative to folder, or absolute) as split.csv holds them: relative to data_root
    (with '/') when the file is under it, else absolute; splitting.absolute_paths turns both back into the file.
    (A string prefix of normalised paths, as os.path.relpath compares them, without its cost per row.)"""
    prefix = os.path.join(os.path.normpath(root), "")
    paths = []
    for cell in cells:
        path = os.path.normpath(os.path.join(folder, cell))
        paths.append(path[len(prefix) :].replace(os.sep, "/") if path.startswith(prefix) else path)
    return paths


def table_entries(cfg, table, root, mapping):
    """ENTRY_COLUMNS of one table, and its description. Rows of a status left out, categories the map or the class
    lists leave out, keep their reason; an empty path or label in a row that would be used is an error."""
    frame, first_line = read_table(table)  # every column: pandas' usecols would let a row with cells too many pass
    path_column, label_column, status_column, kind = detect_columns(list(frame.columns), table, cfg.labels_columns)
    lines = pd.RangeIndex(first_line, first_line + len(frame))
    status = (
        frame[status_column].str.strip().str.lower().replace("", UNCLASSIFIED)
        if status_column
        else pd.Series("", index=frame.index)
    )
    chosen = status.isin(cfg.labels_statuses) if status_column else pd.Series(True, index=frame.index)
    cells = frame[path_column].str.strip().str.replace("\\", "/", regex=False)
    category = frame[label_column].map(_name)
    for what, column in (("image path", cells), ("label", category)):
        empty = chosen & (column == "")
        if empty.any():
            at = ", ".join(map(str, lines[empty.to_numpy()][:8])) + (" ..." if empty.sum() > 8 else "")
            raise lab.LabError(
                f"The labels table {table} has {int(empty.sum())} row(s) with an empty {what} cell "
                f"(column {path_column if what == 'image path' else label_column!r}, line(s) {at}). "
                f"Fill them in or delete those rows: such a row names no image, or no class."
            )
    paths = split_paths(root, table.parent, cells)
    classes = None if config.every_class(cfg) else set(cfg.seen_classes + cfg.unseen_classes)  # None: any label
    label, reason = _labels(category, chosen, mapping, classes)
    entries = pd.DataFrame(
        {
            "source": str(table),
            "line": lines,
            "path": paths,
            "category": category.values,
            "status": status.values,
            "label": label,
            "reason": reason,
        },
        columns=ENTRY_COLUMNS,
    )
    info = {
        "source": str(table),
        "kind": kind,
        "sha256": artifacts.file_digest(table)[:16],
        "path_column": path_column,
        "label_column": label_column,
        "status_column": status_column,
    }
    return entries, info


def _labels(category, chosen, mapping, classes):
    labels, reasons = [], []
    for name, use in zip(category, chosen):
        target, why = name, ""
        if not use:
            why = STATUS_LEFT_OUT
        elif mapping is not None and name in mapping:
            target = mapping[name]
            why = MAPPED_OUT if not target else "" if classes is None or target in classes else NOT_A_CLASS
        elif classes is not None and name not in classes:
            why = NOT_IN_MAP if mapping is not None else NOT_A_CLASS
        labels.append(target if not why else "")
        reasons.append(why)
    return labels, reasons


def read_labels(cfg, root, announce=False):
    """Tables of every labels table (empty without labels_file); announce: print the notes and warnings that
    the split's scan prints once (predicted labels, rows left out, the demo's folders read too)."""
    paths = table_paths(cfg)
    if not paths:
        return Tables()
    mapping = read_map(cfg)
    parts, sources = [], []
    for table in paths:
        entries, info = table_entries(cfg, table, root, mapping)
        parts.append(entries)
        sources.append(info)
    tables = Tables(pd.concat(parts, ignore_index=True), sources)
    if announce:
        announce_tables(cfg, tables, mapping)
    return tables


def announce_tables(cfg, tables, mapping):
    entries = tables.entries
    used = entries[entries["reason"] == ""]
    kinds = ", ".join(f"{s['source']} ({s['kind']})" for s in tables.sources[:4])
    print(
        f"[labels] {len(used)} labelled row(s) of {len(entries)} in {len(tables.sources)} table(s): {kinds}"
        + (" ..." if len(tables.sources) > 4 else "")
        + (f"; labels_map: {len(mapping)} categories -> {len(set(mapping.values()) - {''})} classes" if mapping else "")
    )
    guessed = used[used["status"] == "predicted"]
    if len(guessed):
        print(
            f"warning: labels_statuses includes 'predicted': {len(guessed)} row(s) whose category is a classifier's "
            f"guess (EcoTaxa's, or this lab's own predictions), not a taxonomist's, are trained on and scored as "
            f"if true. Keep labels_statuses=['validated'] unless you mean it.",
            file=sys.stderr,
        )
    lost = entries[entries["reason"].isin([NOT_IN_MAP, NOT_A_CLASS])]
    if len(lost):
        counts = lost.groupby(["category", "reason"], sort=False).size().sort_values(ascending=False)
        named = ", ".join(f"{n} {c!r} ({r})" for (c, r), n in counts.head(6).items())
        print(
            f"warning: {len(lost)} row(s) of the labels tables give no class, {counts.size} categories: {named}"
            f"{' ...' if counts.size > 6 else ''} (all listed in results/unused_labels.csv). Map them with "
            f"labels_map, or add the class to seen_classes / unseen_classes.",
            file=sys.stderr,
        )
    if artifacts.is_demo_root(cfg):
        print(
            "note: data_root is the demo's folder, so the demo's class folders of the configured classes are read "
            "beside the labels tables; point data_root at your tables' folder to leave them out"
        )


def unused_rows(tables):
    """UNUSED_COLUMNS: the rows that give no label, counted per table, category, status and reason."""
    lost = tables.entries[tables.entries["reason"] != ""]
    if not len(lost):
        return pd.DataFrame(columns=UNUSED_COLUMNS)
    counts = lost.groupby(["source", "category", "status", "reason"], sort=False).size().rename("rows")
    return counts.reset_index().sort_values(["source", "rows"], ascending=[True, False])[UNUSED_COLUMNS]


def source_counts(root, tables, files, skipped):
    """SOURCE_COLUMNS: per source (the class folders, each table) and status, its rows and how many became images
    of the split's scan (the others: left out with a reason in unused_labels.csv or skipped_files.csv; a file both
    in a class folder and in a table counts under the table)."""
    used = {(p, c) for c, paths in files.items() for p in paths}
    from_tables = tables.pairs()
    found = {(s["path"], s["label"]) for s in skipped} | used
    rows = []
    folder_found = found - from_tables
    if folder_found or not tables.sources:
        rows.append(
            {
                "source": f"class folders in {root}",
                "kind": "class folders",
                "sha256": "",
                "status": "",
                "rows": len(folder_found),
                "used": len(used - from_tables),
            }
        )
    for info in tables.sources:
        mine = tables.entries[tables.entries["source"] == info["source"]]
        for status, group in mine.groupby("status", sort=False):
            labelled = set(zip(group["path"], group["label"])) & from_tables
            rows.append(
                {
                    "source": info["source"],
                    "kind": info["kind"],
                    "sha256": info["sha256"],
                    "status": status,
                    "rows": len(group),
                    "used": len(labelled & used),
                }
            )
    return pd.DataFrame(rows, columns=SOURCE_COLUMNS)


def print_sources(sources):
    print("labels from:")
    for _, r in sources.iterrows():
        status = f" {r['status']}" if r["status"] else ""
        digest = f", sha256 {r['sha256']}" if r["sha256"] else ""
        print(f"  {r['source']} ({r['kind']}{digest}){status}: {r['rows']} rows, {r['used']} used")
