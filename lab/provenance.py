"""What each artifact was computed from: short digests of artifacts, results/provenance_<script>.json, and the
package versions a checkpoint records.
"""
import contextlib
import json
import sys
import time

from lab import artifacts


def artifact_digest(cfg, kind, name):
    """A short sha256 of one artifact (what later artifacts record they were computed from), or None if absent."""
    path = artifacts.out_path(cfg, kind, name)
    return artifacts.file_digest(path)[:16] if path.is_file() else None


def record_inputs(cfg, script, **inputs):
    """results/provenance_<script>.json: the digests of what this script's outputs were computed from, so that
    report.py (and the user) can tell results of different runs apart."""
    return artifacts.save_json(artifacts.out_path(cfg, "results", f"provenance_{script}.json"),
                               {"script": script, "inputs": inputs, "written": time.strftime("%Y-%m-%d %H:%M:%S")})


def recorded_inputs(cfg, script):
    """What a script's outputs were computed from, or None when it has not run in this output folder."""
    path = artifacts.out_path(cfg, "results", f"provenance_{script}.json")
    try:
        return json.loads(path.read_text())["inputs"]
    except (OSError, ValueError, KeyError):
        return None


def package_versions():
    import importlib.metadata as md
    versions = {"python": sys.version.split()[0]}
    for name in ("torch", "torchvision", "numpy", "pandas", "scikit-learn", "umap-learn"):
        with contextlib.suppress(md.PackageNotFoundError):
            versions[name] = md.version(name)
    return versions
