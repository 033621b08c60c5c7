"""EcoTaxa's import layout, shared by predict.py (its predictions) and audit.py (labels to review): unique object
ids made from image paths, column names EcoTaxa accepts, and the TSV with its type row.

An EcoTaxa import table is tab-separated: a header row of lower-case `table_field` names (img_file_name,
object_id, object_annotation_category, object_annotation_status, object_<anything>), then a type row ([t] text,
[f] number), then one row per image. Writes only the file it is handed (a set's temporary file).
"""

import re

import pandas as pd


def object_ids(paths, used_ids):
    """A unique object_id per image path: the path without its extension, folders joined by '__' (a.jpg and a.png
    in one folder get a_2 for the second). used_ids: the ids given so far, across the blocks of one table."""
    ids = []
    for path in paths:
        base = re.sub(r"\.[^./]*$", "", str(path)).replace("/", "__")
        object_id, n = base, 1
        while object_id in used_ids:
            n += 1
            object_id = f"{base}_{n}"
        used_ids.add(object_id)
        ids.append(object_id)
    return ids


def probability_columns(classes):
    """{class: column}: object_p_<class>, the class made lower case and safe; two classes that become the same
    name keep apart by their place in the list."""
    names, seen = {}, set()
    for i, c in enumerate(classes):
        name = "object_p_" + re.sub(r"[^a-z0-9_]+", "_", c.lower()).strip("_")
        name = name if name not in seen else f"{name}_{i}"
        seen.add(name)
        names[c] = name
    return names


def type_row(frame):
    """EcoTaxa's second row: [f] for a numeric column, [t] for any other."""
    return [
        "[f]" if pd.api.types.is_numeric_dtype(frame[c]) and frame[c].dtype != bool else "[t]" for c in frame.columns
    ]


def write_table(path, frames):
    """The frames (an iterable of blocks with the same columns, streamed) as one EcoTaxa import table at path (a
    set's temporary file: manifest.OutputSet publishes it): header and type row from the first block, then every
    block's rows. UTF-8 only, as EcoTaxa reads nothing else."""
    with open(path, "w", newline="") as f:
        first = True
        for frame in frames:
            if first:
                f.write("\t".join(frame.columns) + "\n" + "\t".join(type_row(frame)) + "\n")
                first = False
            frame.to_csv(f, sep="\t", header=False, index=False)
    return path
