"""The lab's plumbing, shared by the scripts at the top of the repository; one single-purpose module each.

Configuration (config), the output folder (artifacts: paths and atomic writes; output_lock; manifest: output sets
published whole, and what each artifact was computed from), figures (plotting), a script's entry point (runtime),
progress lines (progress), torchrun (distributed), the CPU's bf16 (hardware), the trunk's and the head's precision
(precision), images (image_io), the class folders (data_folders), labels from tables (label_tables), the split
(splitting), embedding files (embedding_files), the frozen trunk's cache (trunk_cache), the head's training
(head_training), checkpoints and the one loader of the trained model (checkpoint), novelty scores, the label audit
(label_audit), EcoTaxa's table layout (ecotaxa), the report's parts (report_*), the interactive map and the demo
data. Scripts import these modules, `backbone` and `configfile`, never another script; no module imports another in
a circle, and every import points down the layers of docs/layout.md (tests/test_layout.py). This file holds only
what every module shares, and imports none of them.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repository: every relative path hangs on it (tested)


class LabError(Exception):
    """A problem the user can fix; printed as one paragraph, without a traceback."""
