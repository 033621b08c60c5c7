"""Are two runs' outputs the same? A refactoring check: run the pipeline at two commits into two output folders,
then compare every file of one with the other's, masking only what holds a time, a duration or a digest of those.

Reads two output folders (each a run_pipeline.py `--output_dir`); writes nothing. Prints each file that differs,
with the first difference, and exits 1 if any does (0 when all are equal).

    git worktree add /tmp/before <old commit>            # then, in each checkout, with the same venv:
    python run_pipeline.py --output_dir=/tmp/out-before   # (in /tmp/before)
    python run_pipeline.py --output_dir=/tmp/out-after    # (here)
    python tools/same_outputs.py /tmp/out-before /tmp/out-after

What is masked, and why it is safe to mask:
- the values of keys that hold a time or a duration (`written`, `saved_at`, `seconds`, ...), and the columns of
  that name in CSVs;
- timestamps (YYYY-MM-DD HH:MM:SS), 16-hex-digit digests and UUIDs (bokeh's element ids) inside strings: a digest
  is a function of a file, and every file is compared here in full, so masking a digest hides nothing;
- each folder's own path (the checkpoint and the manifests record `output_dir`).
The output folder's lock and the record naming its holder (lab/output_lock.py) are not outputs, and are left out:
the lock file stays after a run since the lock is the operating system's, and earlier versions removed theirs.
Everything else must be equal: PNGs and pickles byte for byte or frame for frame, checkpoints tensor for tensor.
"""

import io
import json
import re
import sys
from pathlib import Path

TIME_KEYS = {"written", "saved_at", "checkpoint_saved_at", "seconds", "epoch_seconds", "wall_seconds", "elapsed"}
MASKS = (
    (re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(\.\d+)?"), "<time>"),
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "<uuid>"),
    (re.compile(r"\b[0-9a-f]{16}\b"), "<digest>"),
)


def mask_text(text, root):
    text = text.replace(str(root), "<output_dir>")
    for pattern, replacement in MASKS:
        text = pattern.sub(replacement, text)
    return text


def normalise(value, root):
    """A JSON-like value with times, durations, digests and the folder's path masked; tensors as nested lists."""
    if isinstance(value, dict):
        return {k: "<masked>" if k in TIME_KEYS else normalise(v, root) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [normalise(v, root) for v in value]
    if isinstance(value, (str, Path)):
        return mask_text(str(value), root)
    if hasattr(value, "detach"):  # a tensor: compared in full
        return ("tensor", str(value.dtype), value.detach().cpu().float().numpy().tobytes().hex())
    if hasattr(value, "tolist"):  # a numpy array or scalar
        return normalise(value.tolist(), root)
    if hasattr(value, "__dict__") and not isinstance(value, type):  # a namespace (the checkpoint's config)
        return normalise(vars(value), root)
    return value


def frame_text(frame, root):
    frame = frame.drop(columns=[c for c in frame.columns if str(c) in TIME_KEYS])
    return mask_text(frame.to_csv(index=False), root)


def content(path, root):
    """What is compared of one file."""
    import pandas as pd

    suffix = path.suffix
    if suffix == ".json":
        return normalise(json.loads(path.read_text()), root)
    if suffix in (".csv", ".tsv"):
        sep = "\t" if suffix == ".tsv" else ","
        try:
            return frame_text(pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False), root)
        except (pd.errors.ParserError, pd.errors.EmptyDataError):
            return mask_text(path.read_text(), root)
    if suffix in (".html", ".txt", ".md"):
        return mask_text(path.read_text(), root)
    if suffix == ".pkl":
        obj = pd.read_pickle(path)
        return frame_text(obj, root) if isinstance(obj, pd.DataFrame) else normalise(obj, root)
    if suffix == ".pth":
        import torch

        return normalise(torch.load(path, map_location="cpu", weights_only=False), root)
    return path.read_bytes()


def first_difference(a, b):
    if isinstance(a, str) and isinstance(b, str):
        i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        return f"at character {i}: {a[max(0, i - 60) : i + 60]!r} vs {b[max(0, i - 60) : i + 60]!r}"
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            if a.get(key) != b.get(key):
                return f"[{key!r}] " + first_difference(a.get(key), b.get(key))
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return f"[{i}] " + first_difference(x, y)
    return f"{str(a)[:120]!r} vs {str(b)[:120]!r}"


NOT_OUTPUTS = {Path(".plankton-lab.lock"), Path(".plankton-lab.owner.json")}  # the run's lock, in the folder's root


def compare(before, after):
    files_a = {p.relative_to(before) for p in before.rglob("*") if p.is_file()} - NOT_OUTPUTS
    files_b = {p.relative_to(after) for p in after.rglob("*") if p.is_file()} - NOT_OUTPUTS
    problems = [f"only in {before}: {p}" for p in sorted(files_a - files_b)]
    problems += [f"only in {after}: {p}" for p in sorted(files_b - files_a)]
    for rel in sorted(files_a & files_b):
        if (before / rel).read_bytes() == (after / rel).read_bytes():
            continue
        a, b = content(before / rel, before), content(after / rel, after)
        if a != b:
            problems.append(f"{rel} differs {first_difference(a, b)}")
    return sorted(files_a & files_b), problems


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or not all(Path(a).is_dir() for a in argv):
        print("usage: python tools/same_outputs.py OUTPUT_DIR_BEFORE OUTPUT_DIR_AFTER (two existing folders)")
        return 2
    before, after = (Path(a).resolve() for a in argv)
    compared, problems = compare(before, after)
    for problem in problems:
        print(problem)
    print(f"{len(compared)} files compared, {len(problems)} differences")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.stdout = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", line_buffering=True)
    sys.exit(main())
