"""A cruise: which sample each image of predict_dir belongs to (the `samples` setting), and each sample's metadata
(`sample_metadata`: its imaged volume in litres, its date, station ...), checked before any trunk pass.

samples=None         predict_dir is one sample, as predict.py always had it
samples="subfolders" each first-level sub-folder of predict_dir is a sample, named after it; an image at the top
                     level of predict_dir belongs to none and is listed in predict_skipped.csv
samples=<table>      a CSV/TSV table: a `sample` column (an EcoTaxa export's `sample_id` too) and the images'
                     paths relative to predict_dir, in the column labels_file's tables would use (path, file,
                     img_file_name ...: label_tables.PATH_NAMES); an image the table does not name is listed in
                     predict_skipped.csv, and so is a row naming a file that is not there
A sample's name is only ever a cell of a table: never a file or folder name that the lab writes, so `..`, a slash
or a name that is not UTF-8 traps nothing.

Reads the two tables (never writes them); writes nothing (predict.py writes sample_summary.csv and
sample_abundances.csv: lab/cruise_abundances.py).
"""

import math
import os
import sys
from typing import NamedTuple

import numpy as np
import pandas as pd

import lab
from lab import abundances, artifacts, label_tables

SUBFOLDERS = "subfolders"
SAMPLE_NAMES = ("sample", "sample_id")  # the sample column, in order of preference (compared as label_tables does)
VOLUME = "volume_l"  # the metadata column of the litres of water each sample imaged
# The columns the lab computes for sample_abundances.csv and sample_summary.csv: a metadata column may not take one's
# name (it would overwrite it there, or be overwritten); tests/test_cruise.py checks the two tables' columns are here.
COMPUTED_COLUMNS = {
    *abundances.COLUMNS,
    *("concentration_per_l", "concentration_per_l_low", "concentration_per_l_high", "accepted", "to_review"),
    *("images", "read", "skipped", "possibly_new", "note"),
}
OUTSIDE_SUBFOLDERS = "at the top level of predict_dir, outside every sample folder (samples='subfolders')"
OUTSIDE_TABLE = "not named in the samples table (the `samples` setting): it belongs to no sample"
NOT_FOUND = "named in the samples table, line {line}, but no image file of that path is under predict_dir"


class Cruise(NamedTuple):
    """The images of a cruise, ordered by sample (in `samples`' order), then by path: images (relative to
    predict_dir), sample_of (each image's sample), skipped ({path, reason} of the images and rows left out),
    samples (every sample's name, those without image files too), empty ({sample: why it has no image file}) and
    source (what says which image is of which sample: 'subfolders' or the table's path)."""

    images: list
    sample_of: list
    skipped: list
    samples: list
    empty: dict
    source: str


def _column(columns, names, table, what):
    normal = {label_tables._normal(c): c for c in columns}
    found = next((normal[n] for n in names if n in normal), None)
    if found is None:
        raise lab.LabError(
            f"The {what} {table} has no {names[0]!r} column (its columns: {', '.join(map(str, columns)) or 'none'}). "
            f"Name the column of the sample names {names[0]!r} (an EcoTaxa export's sample_id is read too)."
        )
    return found


def _lines(first_line, mask):
    at = np.flatnonzero(np.asarray(mask)) + first_line
    return ", ".join(map(str, at[:8])) + (" ..." if len(at) > 8 else "")


# --------------------------------------------------------------------------- which image is of which sample
def by_subfolders(folder, images):
    """(sample of each image or None, every sample folder's name): the first part of each image's path."""
    folders = sorted(
        p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")
    )  # hidden folders are not entered by the scan either
    return [p.split("/", 1)[0] if "/" in p else None for p in images], folders


def by_table(table_path, images):
    """(sample of each image or None, the table's samples in order of first appearance, the rows naming no file)."""
    table_path = artifacts.resolve(table_path)
    if not table_path.is_file():
        raise lab.LabError(
            f"The samples table {table_path} (the `samples` setting) does not exist. Give --samples=subfolders "
            f"(each sub-folder of predict_dir a sample) or the path of a CSV/TSV table with a `sample` column "
            f"and the images' paths relative to predict_dir."
        )
    frame, first_line = label_tables.read_table(table_path, "samples table")
    sample_column = _column(frame.columns, SAMPLE_NAMES, table_path, "samples table")
    path_column = _column(frame.columns, label_tables.PATH_NAMES, table_path, "samples table")
    names = frame[sample_column].str.strip()
    cells = frame[path_column].str.strip().str.replace("\\", "/", regex=False)
    for what, column in (("sample", names), ("image path", cells)):
        if (column == "").any():
            raise lab.LabError(
                f"The samples table {table_path} has {int((column == '').sum())} row(s) with an empty {what} "
                f"cell (line(s) {_lines(first_line, column == '')}). Fill them in or delete those rows."
            )
    paths = cells.map(lambda c: os.path.normpath(c).replace(os.sep, "/"))
    pairs = pd.DataFrame({"path": paths, "sample": names})
    distinct = pairs.drop_duplicates()  # the same row twice is harmless; one path in two samples is not
    in_two = set(distinct["path"][distinct["path"].duplicated()])
    if in_two:
        raise lab.LabError(
            f"The samples table {table_path} puts {len(in_two)} image(s) in two samples or more (e.g. "
            f"{artifacts.printable(sorted(in_two)[0])}; line(s) {_lines(first_line, pairs['path'].isin(in_two))}). "
            f"An image belongs to one sample: correct those rows."
        )
    sample_of_path = dict(zip(pairs["path"], pairs["sample"]))
    present = set(images)
    missing = [
        {"path": p, "reason": NOT_FOUND.format(line=first_line + i)}
        for i, p in enumerate(pairs["path"])
        if p not in present
    ]
    return [sample_of_path.get(p) for p in images], list(dict.fromkeys(names)), missing


def assign(cfg, folder, images):
    """The Cruise of predict_dir's images (the scan's list, relative to folder) under cfg.samples; None when
    samples is None (one sample, as before). Every image outside a sample is listed with its reason."""
    if cfg.samples is None:
        return None
    missing = []
    if cfg.samples == SUBFOLDERS:
        sample_of, samples = by_subfolders(folder, images)
        source, outside = SUBFOLDERS, OUTSIDE_SUBFOLDERS
    else:
        sample_of, samples, missing = by_table(cfg.samples, images)
        source, outside = str(artifacts.resolve(cfg.samples)), OUTSIDE_TABLE
    order = {name: i for i, name in enumerate(samples)}
    kept = sorted((i for i, s in enumerate(sample_of) if s is not None), key=lambda i: (order[sample_of[i]], i))
    skipped = [{"path": p, "reason": outside} for p, s in zip(images, sample_of) if s is None] + missing
    with_images = {sample_of[i] for i in kept}
    empty = {
        s: "no image file in its folder" if source == SUBFOLDERS else "no image file of its rows is under predict_dir"
        for s in samples
        if s not in with_images
    }
    if not kept:
        raise lab.LabError(
            f"samples={cfg.samples!r} puts none of the {len(images)} image files under {artifacts.printable(folder)} "
            f"in a sample ({'they lie at its top level' if source == SUBFOLDERS else 'the table names none of them'}"
            f"). With --samples=subfolders each sub-folder of predict_dir is a sample; a table names each image's "
            f"path relative to predict_dir."
        )
    return Cruise([images[i] for i in kept], [sample_of[i] for i in kept], skipped, samples, empty, source)


# --------------------------------------------------------------------------- the samples' metadata
def read_metadata(cfg):
    """sample_metadata's table: one row per sample, `sample` and `volume_l` (litres, NaN where not given) first,
    then its other columns as text. None without sample_metadata. A sample named twice, or a volume that is not a
    positive number, stops the run with the lines to correct."""
    if cfg.sample_metadata is None:
        return None
    path = artifacts.resolve(cfg.sample_metadata)
    if not path.is_file():
        raise lab.LabError(
            f"The sample metadata table {path} (sample_metadata) does not exist. Give the path of a CSV/TSV "
            f"table with a `sample` column and a `volume_l` column (litres imaged), or leave sample_metadata out."
        )
    frame, first_line = label_tables.read_table(path, "sample metadata table")
    sample_column = _column(frame.columns, SAMPLE_NAMES, path, "sample metadata table")
    frame = frame.rename(columns={sample_column: "sample"})
    frame["sample"] = frame["sample"].str.strip()
    twice = frame["sample"].duplicated(keep=False)
    if twice.any():
        raise lab.LabError(
            f"The sample metadata table {path} names {frame['sample'][twice].nunique()} sample(s) twice or more "
            f"({', '.join(sorted(frame['sample'][twice].unique())[:5])}; lines {_lines(first_line, twice)}). "
            f"Each sample needs one row: merge or delete the repeated rows."
        )
    clash = [c for c in frame.columns if c != "sample" and c in COMPUTED_COLUMNS]
    if clash:
        raise lab.LabError(
            f"The sample metadata table {path} has column(s) named as columns the lab computes "
            f"({', '.join(map(repr, clash))}): they would be mistaken for each other in sample_abundances.csv and "
            f"sample_summary.csv. Rename them (e.g. net_method, station_note) and run predict.py again."
        )
    volume_column = next((c for c in frame.columns if label_tables._normal(c) == VOLUME), None)
    text = frame[volume_column].str.strip() if volume_column else pd.Series("", index=frame.index)
    volume = pd.to_numeric(text, errors="coerce")
    bad = (text != "") & ~(volume.map(lambda v: math.isfinite(v) and v > 0))
    if bad.any():
        examples = ", ".join(f"{s!r}: {v!r}" for s, v in list(zip(frame["sample"][bad], text[bad]))[:5])
        raise lab.LabError(
            f"The sample metadata table {path} has {int(bad.sum())} volume(s) that are not a positive number of "
            f"litres ({examples}; lines {_lines(first_line, bad)}). Give each sample's imaged volume in litres "
            f"(an IFCB's ml_analyzed / 1000), or leave the cell empty: that sample then gets no concentration."
        )
    frame = frame.drop(columns=[volume_column] if volume_column else [])
    frame.insert(1, VOLUME, volume.where(text != "", np.nan).astype(float))
    return frame.reset_index(drop=True)


def sample_table(cruise, metadata):
    """One row per sample (the cruise's, then metadata's samples without images): sample, volume_l and the other
    metadata columns; says, one line each, which samples have no volume and which metadata rows no images."""
    names = pd.DataFrame({"sample": cruise.samples})
    if metadata is None:
        table = names.assign(**{VOLUME: np.nan})
    else:
        extra = metadata[~metadata["sample"].isin(set(cruise.samples))]
        table = pd.concat([names.merge(metadata, on="sample", how="left"), extra], ignore_index=True)
        if len(extra):
            print(
                f"note: {len(extra)} sample(s) of sample_metadata have no image under predict_dir: "
                f"{artifacts.printable(', '.join(extra['sample'][:8]))}{' ...' if len(extra) > 8 else ''} (listed "
                f"in results/sample_summary.csv)",
                file=sys.stderr,
            )
    no_volume = table["sample"][table[VOLUME].isna() & table["sample"].isin(set(cruise.samples))]
    if len(no_volume):
        print(
            f"note: {len(no_volume)} sample(s) have no volume_l, so no concentration: "
            f"{artifacts.printable(', '.join(no_volume[:8]))}{' ...' if len(no_volume) > 8 else ''}",
            file=sys.stderr,
        )
    return table


# --------------------------------------------------------------------------- progress, per sample
class SampleProgress:
    """Says each sample's name as soon as the trunk pass has gone past its last image (the images are ordered by
    sample). reached(n): the first n images are done."""

    def __init__(self, sample_of):
        self.sample_of, self.done, self.said = list(sample_of), 0, 0
        last = len(self.sample_of) - 1
        self.ends = [i + 1 for i in range(last + 1) if i == last or self.sample_of[i + 1] != self.sample_of[i]]

    def reached(self, n, stream=None):
        stream = stream or sys.stdout
        while self.said < len(self.ends) and self.ends[self.said] <= n:
            end = self.ends[self.said]
            start = self.ends[self.said - 1] if self.said else 0
            self.said += 1
            stream.write(
                f"[predict] sample {self.said}/{len(self.ends)} "
                f"{artifacts.printable(self.sample_of[end - 1])}: {end - start} image files through the trunk\n"
            )
            stream.flush()


# --------------------------------------------------------------------------- the record and the last words
def provenance(cfg):
    """What the cruise's outputs were computed from besides the images: the samples setting, and the digest of each
    table (manifest.py records them in predict_manifest.json)."""
    record = {"samples": cfg.samples}
    if cfg.samples != SUBFOLDERS:
        record["samples_table"] = artifacts.file_digest(artifacts.resolve(cfg.samples))[:16]
    if cfg.sample_metadata is not None:
        record["sample_metadata"] = artifacts.file_digest(artifacts.resolve(cfg.sample_metadata))[:16]
    return record


def print_cruise(summary, outside):
    """The samples classified, and those that got no rows (with why): predict.py's last words on a cruise."""
    without = summary[summary["read"] == 0]
    print(
        f"\n[predict] {int((summary['read'] > 0).sum())} sample(s) classified: results/sample_abundances.csv "
        f"(abundances and concentrations per sample), results/sample_summary.csv (one row per sample); "
        f"{outside} image file(s) or table row(s) outside every sample (results/predict_skipped.csv)"
    )
    for _, row in without.iterrows():
        print(f"  no rows for sample {artifacts.printable(row['sample'])}: {row['note']}", file=sys.stderr)
