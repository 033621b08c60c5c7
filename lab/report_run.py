"""What a report describes, and the proof that everything it shows belongs to it (One run, one story,
docs/provenance.md): the checkpoint's run, the inputs every section's manifest must record, the data roots, and
predict.py's set when it is of this run. A section of another model stops the report with the commands to run
again.

Reads checkpoints/best.pth (train.py), the output sets' manifests (results/<set>_manifest.json) and the embeddings'
meta; writes nothing.
"""

import shlex
from types import SimpleNamespace

import lab
from lab import artifacts, checkpoint, embedding_files, manifest, splitting

# The sets each section shows, and which input of the checkpoint's run their manifest must record.
SECTION_INPUTS = {
    "train": "checkpoint",
    "evaluate": "checkpoint",
    "compute_average_distances": "embeddings",
    "dimensionality_reduction": "embeddings",
    "transfer_learning": "embeddings",
}


def audit_ran(cfg):
    return (
        manifest.manifest_path(cfg, "audit").exists() or artifacts.out_path(cfg, "results", "label_issues.csv").exists()
    )


def novelty_ran(cfg):
    return manifest.manifest_path(cfg, "novelty").exists() or artifacts.out_path(cfg, "results", "novelty.csv").exists()


def check_results_belong_together(cfg, checkpoint_digest):
    """Every section must be a whole set made from the current checkpoint and its embeddings: never a page mixing
    two runs. Says at once everything that must be re-run, in order, and why. Returns the current inputs."""
    current = {"checkpoint": checkpoint_digest, "embeddings": None, "embeddings_meta": None}
    problems = {}
    try:
        current["embeddings_meta"] = embedding_files.embedding_set(cfg)  # itself checked against the checkpoint
        current["embeddings"] = current["embeddings_meta"]["set"]
    except lab.LabError:
        problems["embed"] = "made from another checkpoint, or not one whole set"
    sections = dict(
        SECTION_INPUTS,
        **({"novelty": "embeddings"} if novelty_ran(cfg) else {}),
        **({"audit": "checkpoint"} if audit_ran(cfg) else {}),
    )
    for script, needs in sections.items():
        published, problem = manifest.check(cfg, script)
        if published is None:
            problems[script] = problem
        elif current[needs] is None or published["inputs"].get(needs) != current[needs]:
            problems[script] = f"made from another {'checkpoint' if needs == 'checkpoint' else 'embeddings set'}"
    if problems:
        commands = "; ".join(f"python {manifest.made_by(script)}" for script in problems)
        reasons = "; ".join(f"{script}: {why}" for script, why in problems.items())
        raise lab.LabError(
            f"The results of {', '.join(problems)} cannot be shown with the current checkpoint (sha256 "
            f"{checkpoint_digest}) and its embeddings ({reasons}): a report of them would mix runs. "
            f"Re-run, in this order, with the settings of this model: {commands}; then report.py."
        )
    return current


def data_roots(trained, embeddings_meta, explicit_root):
    """(the data root the checkpoint was trained on, the root the map's images are read from). The second differs
    only for a root that holds the same files (the data moved: checkpoint.config_from_checkpoint checks that). A
    data_root given on the command line that does not hold them is refused: the report describes the model's run."""
    own = artifacts.resolve(trained.ckpt["config"]["data_root"])
    verified = artifacts.resolve(trained.cfg.data_root)
    if explicit_root is not None and artifacts.resolve(explicit_root) != verified:
        raise lab.LabError(
            f"--data_root={artifacts.printable(explicit_root)!r} does not hold the files that "
            f"checkpoints/best.pth was trained on (the same relative paths and sizes as in {own}): "
            f"the report describes that model's run and reads its images. Drop --data_root, or give a "
            f"folder holding the same files (the data moved or copied)."
        )
    return own, verified if verified != own else embedded_root(embeddings_meta, own)


def embedded_root(embeddings_meta, default):
    """The data root embed.py read the images from: the embeddings' absolute paths lie under it."""
    return artifacts.resolve(embeddings_meta.get("config", {}).get("data_root", default))


def split_command(ckpt, identity):
    """The command that draws the checkpoint's split again (it is seeded: the same settings and files give the same
    split), or None when only the files changed (then the model's split cannot be drawn again)."""
    wanted = {
        **splitting.split_identity(SimpleNamespace(**ckpt["config"])),
        "data_root": str(artifacts.resolve(ckpt["config"]["data_root"])),
    }
    overrides = []
    for name, value in wanted.items():
        if identity.get(name) != value:
            text = (
                f'"{value!r}"'
                if isinstance(value, list)
                else shlex.quote(value)
                if isinstance(value, str)
                else repr(value)
            )
            overrides.append(f"--{name}={text}")
    return " ".join(["python dataloader.py", *overrides]) if overrides else None


def the_run(cfg, explicit_root=None):
    """What the page describes: the checkpoint's run, the inputs every section must share, its data roots, and
    predict.py's set when it belongs to this run (and whether the map's "predict" points are that very sample)."""
    trained = checkpoint.load_trained(cfg, model=False, split=False, made_for="results")
    inputs = check_results_belong_together(cfg, trained.digest)
    data_root, image_root = data_roots(trained, inputs["embeddings_meta"], explicit_root)
    predict = embedding_files.current_predict_set(cfg)
    mapped = (
        predict is not None
        and (manifest.recorded_inputs(cfg, "dimensionality_reduction") or {}).get("predict") == predict["id"]
    )
    return SimpleNamespace(
        trained=trained, inputs=inputs, data_root=data_root, image_root=image_root, predict=predict, mapped=mapped
    )
