"""Checkpoints: the one place that knows their format, how to save and load them, and what they rebuild.

A checkpoint (`checkpoints/best.pth`, `checkpoints/last.pth`, written by train.py) is a dict saved with
torch.save and loaded with `weights_only=True`, so a foreign file is never executed. It carries the resolved
config, the class names, the split's digest and the trunk weights used, so every later script rebuilds the
model and its settings from the checkpoint alone, whatever configfile.py says today (as nanoGPT's sample.py).
Reads and writes nothing by itself.
"""

import sys
import time
from dataclasses import dataclass
from types import SimpleNamespace

import torch

import backbone
import lab
from lab import artifacts, config, manifest, precision, runtime, splitting

FORMAT = "plankton-lab-checkpoint/1"
# Settings that define the data, the split and the model: later scripts take them from the checkpoint so
# that they analyse what was trained, whatever configfile.py says today.
MODEL_KEYS = (
    "data_root",
    "seen_classes",
    "unseen_classes",
    "val_fraction",
    "test_fraction",
    "min_images_per_class",
    "max_images_per_class",
    "image_size",
    "backbone_weights",
    "dropout",
    "embedding_dim",
    "seed",
    "precision",
    "labels_file",
    "labels_columns",
    "labels_statuses",
    "labels_map",
    "near_copies",
    "trunk_views",
)
# Model settings a checkpoint of an earlier lab lacks, and the value it was trained with.
BEFORE_THE_SETTING = {"trunk_views": 1}
# Settings that may differ when resuming; everything else must match the interrupted run.
RESUMABLE = {"epochs", "patience", "resume", "device", "num_workers", "cpu_threads", "output_dir", "rebuild_split"}


def payload(cfg, model, weights_id, split_digest, trunk_precision, **extra):
    return {
        "format": FORMAT,
        "model_state": model.state_dict(),
        "classes": list(cfg.seen_classes),
        "config": vars(cfg).copy(),
        "weights": weights_id,
        "random_trunk": cfg.backbone_weights is None,
        "split_digest": split_digest,
        "trunk_precision": trunk_precision,
        "saved_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "versions": manifest.package_versions(),
        **extra,
    }


def random_trunk(ckpt):
    """Whether the checkpoint's trunk was random (backbone_weights=None), not ImageNet-pretrained. Checkpoints
    saved before the flag existed say so in their weights' description."""
    if "random_trunk" in ckpt:
        return bool(ckpt["random_trunk"])
    return str(ckpt.get("weights", "")).startswith("RANDOM")


def trunk_dtype(ckpt, device):
    """The trunk precision the head was trained on: later scripts must feed it the same features."""
    name = ckpt.get("trunk_precision")
    if name is None:  # a checkpoint of an earlier version of the lab: resolve its setting as it did
        return precision.trunk_dtype(ckpt["config"].get("precision", "fp32"), device)
    if name == "fp16" and device.type == "cpu":
        raise lab.LabError(
            "This model's head was trained on fp16 trunk features (on a GPU), and the CPU has no "
            "fp16: its features here would differ from those it learned on. Run this script on a "
            "GPU (--device=cuda), or retrain with --precision=fp32 or bf16."
        )
    if name == "bf16" and device.type == "cpu" and not precision.cpu_supports_bf16():
        print(
            "[checkpoint] note: the head was trained on bf16 trunk features; this CPU has no native bf16, so "
            "they are computed in emulation (slower, same values)",
            file=sys.stderr,
        )
    return precision.PRECISIONS[name]


def save(path, content):
    return artifacts.atomic_write(path, lambda p: torch.save(content, p))


def load(path, made_by="train.py"):
    """Load one of our checkpoints safely (weights_only: no arbitrary objects are unpickled)."""
    artifacts.require(path, made_by, "checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for damaged or foreign files
        raise lab.LabError(
            f"The checkpoint {path} cannot be read ({type(exc).__name__}: {str(exc)[:200]}). It is "
            f"damaged or not a file made by this lab; delete it and run `python {made_by}` "
            f"again."
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise lab.LabError(
            f"{path} is not a checkpoint made by this lab's train.py (it lacks our format tag). "
            f"Run `python {made_by}` to make one, or point --output_dir at the right folder."
        )
    return ckpt


def config_from_checkpoint(ckpt, cfg):
    """The current config with the data/model settings replaced by those the checkpoint was made with; except a
    data_root that holds the very files of the split (the data moved): that one is used, and said so."""
    merged = SimpleNamespace(**vars(cfg))
    for key in MODEL_KEYS:
        if key in ckpt["config"] or key in BEFORE_THE_SETTING:
            theirs, ours = ckpt["config"].get(key, BEFORE_THE_SETTING.get(key)), getattr(cfg, key)
            if theirs != ours and key == "data_root" and _holds_the_split(cfg):
                print(
                    f"[checkpoint] data_root: the split's files are in {artifacts.resolve(ours)}, unchanged (the "
                    f"checkpoint was trained on {theirs!r}, which moved): using {ours!r}"
                )
                continue
            if theirs != ours and not (key == "seen_classes" and ours == config.ALL_CLASSES):  # what "all" meant then
                print(
                    f"[checkpoint] using the checkpoint's {config.setting_text(key, theirs)} (the current config "
                    f"says {config.setting_text(key, ours).partition('=')[2]})"
                )
            setattr(merged, key, theirs)
    return merged


def _holds_the_split(cfg):
    split = splitting.read_split_file(cfg)
    return split is not None and splitting.same_files(artifacts.resolve(cfg.data_root), split)


def model_from_checkpoint(ckpt, cfg):
    """Rebuild the trained model from the checkpoint alone (it holds the trunk too: no weights file needed)."""
    model = backbone.PlanktonNet(len(ckpt["classes"]), cfg.image_size, None, cfg.seed, cfg.embedding_dim, cfg.dropout)
    try:
        model.load_state_dict(ckpt["model_state"])
    except (RuntimeError, KeyError) as exc:
        raise lab.LabError(
            f"The checkpoint's weights do not fit the model it describes ({str(exc)[:200]}); it "
            f"was made by another version of the lab or is damaged. Retrain with "
            f"`python train.py`."
        ) from None
    return model.eval()


def resume_state(cfg):
    """checkpoints/last.pth, refused when the interrupted run's settings differ from the current ones."""
    last = load(artifacts.out_path(cfg, "checkpoints", "last.pth"))
    differs = [k for k, v in last["config"].items() if k not in RESUMABLE and getattr(cfg, k, v) != v]
    if differs:
        raise lab.LabError(
            f"Cannot resume: the settings {differs} differ from those of the interrupted run in "
            f"checkpoints/last.pth. Resume with the same settings, or start afresh without "
            f"--resume=True."
        )
    return last


@dataclass
class Trained:
    """The trained model as every script after train.py sees it."""

    cfg: SimpleNamespace  # the current config with the checkpoint's data and model settings
    ckpt: dict
    digest: str  # short sha256 of best.pth: what later artifacts record they came from
    model: object = None  # PlanktonNet in eval mode on `device` (None when not asked for)
    device: object = None
    split: object = None  # results/split.csv, checked against the checkpoint (None when not asked for)

    @property
    def random_trunk(self):
        return random_trunk(self.ckpt)

    @property
    def trunk_dtype(self):
        """The precision of the trunk features the head was trained on (and must be fed)."""
        return trunk_dtype(self.ckpt, self.device)


def load_trained(cfg, model=True, split=True, made_for=""):
    """The one loader of the trained model (checkpoints/best.pth), for every script after training: its config,
    the model on the configured device and the split it was trained on, each only when asked for. Says once what
    was loaded, and warns when the trunk was random."""
    ckpt = load(artifacts.out_path(cfg, "checkpoints", "best.pth"))
    cfg = config_from_checkpoint(ckpt, cfg)
    print(
        f"[checkpoint] epoch {ckpt['epoch']}, classes {config.names_text(ckpt['classes'])}; "
        f"trunk weights: {ckpt['weights']}"
    )
    if random_trunk(ckpt):
        print(
            f"[checkpoint] WARNING: this model was trained on a RANDOM trunk (backbone_weights=None): its "
            f"{made_for or 'embeddings'} say nothing about plankton beyond showing that the code runs.",
            file=sys.stderr,
        )
    trained = Trained(cfg, ckpt, manifest.artifact_digest(cfg, "checkpoints", "best.pth"))
    if split:
        # drawn here only when split.csv is missing or of other settings; the digest check below then refuses it
        trained.split = splitting.read_or_draw_split(cfg, grow=False)
        if splitting.split_digest(cfg) != ckpt["split_digest"]:
            raise lab.LabError(
                "results/split.csv has changed since the checkpoint was trained (it was rebuilt, or "
                "grew by new images). "
                "Retrain with `python train.py` so that the test set holds no training images."
            )
    if model:
        trained.device = runtime.select_device(cfg.device)
        trained.model = model_from_checkpoint(ckpt, cfg).to(trained.device)
    return trained
