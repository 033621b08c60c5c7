"""What each artifact was computed from: short digests of artifacts, the inputs each output set's manifest records
(results/<set>_manifest.json, written by manifest.OutputSet), and the package versions a checkpoint records.
"""

import contextlib
import sys

from lab import artifacts, manifest


def artifact_digest(cfg, kind, name):
    """A short sha256 of one artifact (what later artifacts record they were computed from), or None if absent."""
    path = artifacts.out_path(cfg, kind, name)
    return manifest.digest(path) if path.is_file() else None


def recorded_inputs(cfg, set_name):
    """What a script's outputs were computed from (its manifest's inputs), or None when they are not there as one
    complete set (not run in this output folder, interrupted, a file changed since)."""
    body = manifest.complete(cfg, set_name)
    return body["inputs"] if body else None


def package_versions():
    import importlib.metadata as md

    versions = {"python": sys.version.split()[0]}
    for name in ("torch", "torchvision", "numpy", "pandas", "scikit-learn", "umap-learn"):
        with contextlib.suppress(md.PackageNotFoundError):
            versions[name] = md.version(name)
    return versions
