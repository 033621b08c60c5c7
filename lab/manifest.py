"""Output sets: the files one run of a script writes together, published at once, and the manifest that proves
they belong together and what they were computed from.

A script writes every file of its set under a temporary name beside it (`.name.tmp<pid>.ext`, which
artifacts.remove_leftovers sweeps when a run was killed). Only when every file is whole are they moved into place,
and the set's manifest, results/<set>_manifest.json, is written last: the digest of each output and the digests of
the inputs they were computed from (the checkpoint, the split, the embeddings set, the sample ...). A reader trusts a
set only when its manifest is there and every output still has the digest it records (`check`). So after any failure
the folder holds the previous complete set (the failure came while writing: nothing had been moved) or none (it came
while moving: the previous manifest had been withdrawn first), and the message says which. Files of the previous set
that the new one lacks are removed when it is published: a stale EcoTaxa table never stays beside another sample's
predictions.
Writes the sets' files and results/<set>_manifest.json; reads the manifests for every script that checks its inputs.
Also what each artifact was computed from, for the scripts that record it: an artifact's short digest
(`artifact_digest`), a set's recorded inputs (`recorded_inputs`) and the package versions (`package_versions`).
"""

import contextlib
import hashlib
import json
import os
import re
import sys
import time

import lab
from lab import artifacts

# The script that makes each set (a set is named after its script, except the split, which dataloader.py makes).
MADE_BY = {"split": "dataloader.py", "embed": "embed.py", "predict": "predict.py"}


def made_by(set_name):
    return MADE_BY.get(set_name, f"{set_name}.py")


def manifest_path(cfg, set_name):
    return artifacts.out_path(cfg, "results", f"{set_name}_manifest.json")


_DIGESTS = {}


def digest(path):
    """The short sha256 (16 hex digits) that artifacts record, remembered while the file's size, times and inode are
    unchanged (as git's index does): checking a set twice in one run reads its files once."""
    st = os.stat(path)
    key = (os.fspath(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    if key not in _DIGESTS:
        _DIGESTS[key] = artifacts.file_digest(path)[:16]
    return _DIGESTS[key]


def artifact_digest(cfg, kind, name):
    """A short sha256 of one artifact (what later artifacts record they were computed from), or None if absent."""
    path = artifacts.out_path(cfg, kind, name)
    return digest(path) if path.is_file() else None


def set_id(inputs, outputs):
    """One digest for the whole set: its inputs and the digest of every output (not when it was written)."""
    text = json.dumps({"inputs": inputs, "outputs": outputs}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


OUTPUT_KEY = re.compile(rf"(?:{'|'.join(artifacts.ARTIFACT_DIRS)})/[^/\\]+")


def _final(cfg, key):
    """The file a manifest's output key ("figs/gallery_x.png") names; only a file in an artifact folder."""
    if not OUTPUT_KEY.fullmatch(key) or key.split("/", 1)[1] in (".", ".."):
        raise ValueError(f"not an output of this lab: {key!r}")
    kind, name = key.split("/", 1)
    return artifacts.out_path(cfg, kind, name)


def _write_manifest(path, body):
    artifacts.replace_whole(path, lambda p: artifacts.write_json(p, body))


class SetFile:
    """One file of an output set, for functions that write to a path (plotting.save_figure)."""

    def __init__(self, output_set, kind, name):
        self.output_set, self.kind, self.name = output_set, kind, name

    def stage(self, write):
        return self.output_set.write(self.kind, self.name, write)


class OutputSet:
    """The files of one run of a script, written under temporary names and published together:

        with manifest.OutputSet(cfg, "evaluate") as out:
            out.save_csv("results", "test_predictions.csv", frame)
            plot_confusion(matrix, classes, out.file("figs", "confusion_matrix.png"))
            out.publish(checkpoint=digest, split=split_digest)

    `members`: (kind, name) of every file the set may hold; one the new set lacks is removed when it is published
    (as is any file of the previous set's manifest). `about`: what the set is of, for messages ("the predictions of
    /data/A"). Leaving the block without publishing (an error, Ctrl-C) removes the temporary files: the previous
    set stays as it was."""

    def __init__(self, cfg, set_name, members=(), about=""):
        self.cfg, self.set_name, self.about = cfg, set_name, about
        self.made_by = made_by(set_name)
        self.members = {f"{kind}/{name}" for kind, name in members}
        self.staged = {}  # "kind/name" -> temporary path
        self.published = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if self.published is None:
            self.discard()
        return False

    def discard(self):
        for tmp in self.staged.values():
            with contextlib.suppress(OSError):
                tmp.unlink()
        self.staged.clear()

    def staged_path(self, kind, name):
        """Where this run's kind/name lies until the set is published (to read back what was written)."""
        return self.staged[f"{kind}/{name}"]

    def file(self, kind, name):
        return SetFile(self, kind, name)

    def write(self, kind, name, write):
        """Call write(temporary path) for the set's file kind/name; a failure leaves the previous set as it was."""
        path = artifacts.out_path(self.cfg, kind, name)
        self.staged[f"{kind}/{name}"] = artifacts.temporary_path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return artifacts.stage(path, write)
        except OSError as exc:
            self.discard()
            raise artifacts.save_failed(path, exc, self.kept(), f"`python {self.made_by}`") from None

    def save_csv(self, kind, name, frame):
        return self.write(kind, name, lambda p: artifacts.write_csv(p, frame))

    def save_json(self, kind, name, obj):
        return self.write(kind, name, lambda p: artifacts.write_json(p, obj))

    def kept(self):
        """What the output folder holds after a failure before publishing: the previous complete set, or nothing."""
        previous, _ = check(self.cfg, self.set_name)
        if previous is None:
            return f"Nothing was written: the output folder holds no complete results of {self.made_by}."
        about = f" ({previous['about']})" if previous.get("about") else ""
        return (
            f"The previous complete set of {self.made_by}'s results{about}, written {previous.get('written')}, "
            f"is intact: nothing of this run was kept."
        )

    def publish(self, **inputs):
        """Move every file into place, remove the previous set's files the new one lacks, then write the manifest
        (last). Returns the manifest."""
        outputs = {key: digest(tmp) for key, tmp in self.staged.items()}
        body = {
            "set": self.set_name,
            "made_by": self.made_by,
            "about": self.about,
            "id": set_id(inputs, outputs),
            "inputs": inputs,
            "outputs": outputs,
            "written": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        previous = read(self.cfg, self.set_name) or {}
        old = previous.get("outputs") if isinstance(previous.get("outputs"), dict) else {}
        stale = [key for key in sorted((self.members | set(old)) - set(outputs)) if OUTPUT_KEY.fullmatch(key)]
        path = manifest_path(self.cfg, self.set_name)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)  # from here on the previous set is no longer complete
            for key in list(self.staged):
                final = _final(self.cfg, key)
                os.replace(self.staged[key], final)
                del self.staged[key]
                digest(final)  # remembered: the next check reads nothing again
            for key in stale:
                _final(self.cfg, key).unlink(missing_ok=True)
            _write_manifest(path, body)
        except OSError as exc:
            self.discard()
            raise lab.LabError(
                f"Could not publish the results of {self.made_by} ({artifacts.failure_reason(exc)}) while moving them "
                f"into place: the previous set had been withdrawn, so the output folder now holds "
                f"none of them (nothing): no later script will take the files there for a complete "
                f"set. Free some space or fix the folder, then run `python {self.made_by}` "
                f"again."
            ) from None
        self.published = body
        return body


# --------------------------------------------------------------------------- reading
def read(cfg, set_name):
    """The manifest as written, or None when there is none or it is damaged (not a JSON object)."""
    try:
        body = json.loads(manifest_path(cfg, set_name).read_text())
    except (OSError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def check(cfg, set_name):
    """(manifest, None) when the set is complete: its manifest is there and every output still has its recorded
    digest; else (None, what is wrong, in words)."""
    path = manifest_path(cfg, set_name)
    if not path.exists():
        return None, f"results/{path.name} does not exist"
    body = read(cfg, set_name)
    if body is None or not isinstance(body.get("outputs"), dict) or not isinstance(body.get("inputs"), dict):
        return None, f"results/{path.name} is damaged"
    for key, recorded in body["outputs"].items():
        try:
            final = _final(cfg, key)
        except ValueError:
            return None, f"results/{path.name} is damaged"
        if not final.is_file():
            return None, f"{key} is missing"
        if digest(final) != recorded:
            return None, f"{key} was changed or replaced since the set was written"
    return body, None


def complete(cfg, set_name):
    """The manifest of a complete set, or None."""
    return check(cfg, set_name)[0]


def recorded_inputs(cfg, set_name):
    """What a script's outputs were computed from (its manifest's inputs), or None when they are not there as one
    complete set (not run in this output folder, interrupted, a file changed since)."""
    body = complete(cfg, set_name)
    return body["inputs"] if body else None


def require(cfg, set_name):
    """The manifest of a complete set; else the error that names the script to run again."""
    body, problem = check(cfg, set_name)
    if body is None:
        raise lab.LabError(
            f"The results of {made_by(set_name)} in {artifacts.out_path(cfg, 'results')} are "
            f"missing or incomplete ({problem}). Run `python {made_by(set_name)}` (again), then this "
            f"script."
        )
    return body


def replace_output(cfg, set_name, kind, name, write):
    """Rewrite one file of a published set and its digest in the manifest (skipped_files.csv gains the images that
    fail in a later trunk pass). A crash in between leaves a set that check() finds changed, never a silent mix."""
    path = artifacts.atomic_write(artifacts.out_path(cfg, kind, name), write)
    body = read(cfg, set_name)
    key = f"{kind}/{name}"
    if body and isinstance(body.get("outputs"), dict) and key in body["outputs"]:
        body["outputs"][key] = digest(path)
        body["id"] = set_id(body.get("inputs", {}), body["outputs"])
        try:
            _write_manifest(manifest_path(cfg, set_name), body)
        except OSError as exc:
            raise lab.LabError(
                f"Could not update results/{set_name}_manifest.json ({artifacts.failure_reason(exc)}): the set of "
                f"{made_by(set_name)} is now incomplete. Free some space, then run "
                f"`python {made_by(set_name)}` again."
            ) from None
    return path


def package_versions():
    """The versions of Python and the packages a result depends on (a checkpoint and predict.py's meta record them)."""
    import importlib.metadata as md

    versions = {"python": sys.version.split()[0]}
    for name in ("torch", "torchvision", "numpy", "pandas", "scikit-learn", "umap-learn"):
        with contextlib.suppress(md.PackageNotFoundError):
            versions[name] = md.version(name)
    return versions
