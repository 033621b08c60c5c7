"""A cruise's tables: each sample's abundances, corrected and bootstrapped on its own images with the one calibration
of the run (abundances.Fits, fitted once, not once per sample), its concentrations per litre, and one summary row
per sample.

results/sample_abundances.csv  abundances.csv's columns for each sample that has images read, `sample` first, then
                               volume_l, concentration_per_l, concentration_per_l_low, concentration_per_l_high (the
                               count and its interval bounds over volume_l: the bootstrap's uncertainty of the
                               shares, NOT the Poisson counting error of the images themselves, which a sample of
                               few images adds), accepted and to_review (operating_points.csv's counts, or empty)
                               and the metadata's other columns
results/sample_summary.csv     one row per sample: images (files assigned to it), read, skipped (could not be
                               decoded), possibly_new, volume_l, note (why a sample has no rows or no
                               concentration), then the metadata's other columns

Reads predict.py's staged predictions.csv (p_<class>, possibly_new and sample columns); writes nothing (predict.py
saves the tables in its output set).
"""

import hashlib

import numpy as np
import pandas as pd

from lab import abundances, progress
from lab.samples import VOLUME

CONCENTRATIONS = ("concentration_per_l", "concentration_per_l_low", "concentration_per_l_high")
# The operating points' counts per sample (images accepted at their class's threshold, and left to review): empty
# when predict.py applied no operating points (predictions.csv's `accepted` column empty).
OPERATING_POINT_COLUMNS = ("accepted", "to_review")
SAMPLE_COLUMNS = ["sample", *abundances.COLUMNS, VOLUME, *CONCENTRATIONS, *OPERATING_POINT_COLUMNS]
SUMMARY_COLUMNS = ["sample", "images", "read", "skipped", "possibly_new", VOLUME, "note"]
NO_VOLUME = "no volume_l in sample_metadata: no concentration"


def read_predictions(predictions_path, classes):
    """(probabilities, possibly_new, sample, predicted, accepted) of every image of predictions.csv: the sample and
    class names read as text, exactly as written (a sample called NA stays NA, a name that is not UTF-8 keeps its
    bytes); accepted as 1.0, 0.0, or NaN where no operating points applied."""
    columns = [f"p_{c}" for c in classes]
    frame = pd.read_csv(
        predictions_path,
        usecols=[*columns, "possibly_new", "sample", "predicted", "accepted"],
        dtype={"sample": str, "predicted": str, "accepted": str},
        keep_default_na=False,
        na_values={c: [""] for c in columns},
        encoding_errors="surrogateescape",
    )
    probabilities = frame[columns].to_numpy(np.float64)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    accepted = frame["accepted"].map({"True": 1.0, "False": 0.0}).to_numpy(np.float64)  # "" (no points): NaN
    flagged = frame["possibly_new"].astype(str).eq("True").to_numpy()
    return probabilities, flagged, frame["sample"].to_numpy(object), frame["predicted"].to_numpy(object), accepted


def operating_point_counts(frame, predicted, flagged, accepted):
    """Per row of a sample's abundance table: the images accepted without a look (operating_points.csv) and those
    to review (the rest of the images predicted as the class; every image flagged possibly new). NaN for both when
    no operating points applied to the run (predict.py left `accepted` empty)."""
    if np.isnan(accepted).all():
        return pd.array([pd.NA] * len(frame), dtype="Int64"), pd.array([pd.NA] * len(frame), dtype="Int64")
    taken = accepted == 1.0
    counted = [
        (0, int(flagged.sum()))
        if new
        else (int((taken & (predicted == c)).sum()), int(((predicted == c) & ~flagged & ~taken).sum()))
        for c, new in zip(frame["class"], frame["possibly_new"].astype(bool))
    ]
    return pd.array([a for a, _ in counted], dtype="Int64"), pd.array([r for _, r in counted], dtype="Int64")


def stream_key(name):
    """The integers that name a sample's bootstrap stream: a digest of its name, so that a sample's interval is the
    same whatever other samples the cruise holds, and two samples never share a stream."""
    digest = hashlib.sha256(str(name).encode("utf-8", "surrogateescape")).digest()
    return tuple(int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4))


def with_concentrations(frame, volume):
    """The count and its interval bounds per litre; NaN (an empty cell) where the volume is not known."""
    for column, count in zip(CONCENTRATIONS, ("count", "count_low", "count_high")):
        frame[column] = frame[count] / volume if np.isfinite(volume) and volume > 0 else np.nan
    return frame


def cruise_tables(cruise, samples_table, classes, fits, predictions_path, seed):
    """(sample_abundances, sample_summary) of the cruise. samples_table: samples.sample_table's one row per sample
    (sample, volume_l, metadata); fits: the run's abundances.Fits, shared by every sample."""
    probabilities, flagged, sample, predicted, accepted = read_predictions(predictions_path, classes)
    rows_of = pd.Series(np.arange(len(sample))).groupby(sample).indices if len(sample) else {}
    assigned = pd.Series(cruise.sample_of).value_counts()
    metadata = samples_table.set_index("sample")
    extra = [c for c in metadata.columns if c != VOLUME]
    tables, summary = [], []
    for name in progress.progress(cruise.samples, len(cruise.samples), "abundances", unit="samples"):
        rows = rows_of.get(name, np.array([], int))
        volume = float(metadata.at[name, VOLUME])
        note = cruise.empty.get(name, "")
        if not note and not len(rows):
            note = "only files that could not be decoded (listed in predict_skipped.csv)"
        if len(rows):
            frame = abundances.abundance_frame(
                classes,
                probabilities[rows],
                flagged[rows],
                fits.calibration,
                fits.method,
                fits.draws,
                seed,
                fits=fits,
                stream_key=stream_key(name),
            )
            frame.insert(0, "sample", name)
            frame[VOLUME] = volume
            frame = with_concentrations(frame, volume)
            frame["accepted"], frame["to_review"] = operating_point_counts(
                frame, predicted[rows], flagged[rows], accepted[rows]
            )
            tables.append(frame[SAMPLE_COLUMNS].assign(**{c: metadata.at[name, c] for c in extra}))
            note = note or ("" if np.isfinite(volume) else NO_VOLUME)
        summary.append(
            {
                "sample": name,
                "images": int(assigned.get(name, 0)),
                "read": len(rows),
                "skipped": int(assigned.get(name, 0)) - len(rows),
                "possibly_new": int(flagged[rows].sum()),
                VOLUME: volume,
                "note": note,
            }
        )
    for name in metadata.index.difference(pd.Index(cruise.samples), sort=False):  # metadata rows without images
        summary.append(
            {"sample": name, "images": 0, "read": 0, "skipped": 0, "possibly_new": 0}
            | {VOLUME: float(metadata.at[name, VOLUME]), "note": "in sample_metadata, but no image under predict_dir"}
        )
    summary = pd.DataFrame(summary, columns=SUMMARY_COLUMNS).merge(
        samples_table[["sample", *extra]], on="sample", how="left"
    )
    empty = pd.DataFrame(columns=SAMPLE_COLUMNS + extra)
    return (pd.concat(tables, ignore_index=True) if tables else empty), summary
