"""The model: a frozen ImageNet EfficientNetV2-S trunk and a small trainable head.

    trunk  efficientnet_v2_s().features[:4]  (stem + three Fused-MBConv stages; 64 x 16 x 16 at 128 x 128)
           frozen, and kept in eval mode so its BatchNorm statistics never move
    head   2 x (conv 3x3 64->64, BN, ReLU), max-pool 2, FC(embedding_dim) + ReLU  -> embedding
           dropout, FC(classes)                                                    -> logits

`forward(images)` returns `(logits, embedding)`; `head(trunk_features)` does the same from cached trunk
outputs, which is how train.py and embed.py use it. The model and nothing else: the precision the trunk pass and
the head's training run in is lab/precision.py's, the data and the caches lab/'s stage modules'.
Reads the ImageNet weights through torchvision (`$TORCH_HOME/hub/checkpoints/`), or a state-dict file;
writes nothing.
"""

import copy
import math
from pathlib import Path

import torch
import torchvision
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

import lab
from lab import artifacts

TRUNK_BLOCKS = 4
TRUNK_CHANNELS = 64
TRUNK_STRIDE = 8
# The seed of a random trunk (backbone_weights=None), whatever `seed` says: the seed varies the head's initialisation,
# its shuffles and the split, never the features they learn from (issue 34: a random trunk's seed is not a user's
# concern, and it was a third of the seed-to-seed spread). 42, the default seed's value, so that runs with the
# default seed (the demo, the tests) keep the trunk they always had.
RANDOM_TRUNK_SEED = 42


def trunk_side(image_size):
    """Spatial side of the trunk output: three stride-2 convolutions with padding 1 each halve (ceil)."""
    side = image_size
    for _ in range(int(math.log2(TRUNK_STRIDE))):
        side = (side + 1) // 2
    return side


def describe_weights(spec, seed=RANDOM_TRUNK_SEED):
    """What the trunk's weights are, as stored in checkpoints and printed by every later script."""
    if spec is None:
        return f"RANDOM trunk (seed {seed}), not ImageNet-pretrained: embeddings are only for testing the code"
    path = artifacts.resolve(spec)
    if path.is_file():
        return f"state dict {path} (sha256 {artifacts.file_digest(path)[:16]})"
    return f"torchvision EfficientNet_V2_S_Weights.{spec}"


def _imagenet_state_dict(name):
    enum = torchvision.models.EfficientNet_V2_S_Weights
    try:
        weights = enum[name]
    except KeyError:
        raise lab.LabError(
            f"backbone_weights={name!r} is neither a file nor a torchvision weights name; use one of "
            f"{[w.name for w in enum]}, a path to a state-dict file, or None."
        ) from None
    file_name = Path(weights.url).name
    cached = Path(torch.hub.get_dir()) / "checkpoints" / file_name
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except Exception as exc:  # URLError, socket errors, HTTP errors, a damaged download...
        raise lab.LabError(
            f"Could not load the ImageNet weights {name} ({type(exc).__name__}: {str(exc)[:150]}). This machine "
            f"seems to be offline. On a machine with internet, download {weights.url} and copy the file to "
            f"{cached} (set the TORCH_HOME environment variable to use another folder than "
            f"{Path(torch.hub.get_dir()).parent}), or set backbone_weights to the path of that file. Only for "
            f"testing the code (the offline demo does this), --backbone_weights=None trains on a random, "
            f"untrained trunk."
        ) from None


def _state_dict_from_file(path):
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise lab.LabError(
            f"backbone_weights={str(path)!r} cannot be read as a PyTorch state dict "
            f"({type(exc).__name__}: {str(exc)[:150]}). Give the .pth file of torchvision's "
            f"efficientnet_v2_s weights."
        ) from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return state


def build_trunk(spec, seed):
    """The first four blocks of EfficientNetV2-S's features, with weights per backbone_weights."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # a random trunk must be the same in every script that rebuilds it
        full = torchvision.models.efficientnet_v2_s(weights=None)
    if spec is not None:
        path = artifacts.resolve(spec)
        state = _state_dict_from_file(path) if path.is_file() else _imagenet_state_dict(spec)
        try:
            full.load_state_dict(state)
        except RuntimeError as exc:
            raise lab.LabError(
                f"The weights {spec!r} do not fit torchvision's efficientnet_v2_s "
                f"({str(exc).splitlines()[0][:200]}). Use the state dict of that exact "
                f"architecture, e.g. efficientnet_v2_s-dd5fe13b.pth."
            ) from None
    trunk = full.features[:TRUNK_BLOCKS]
    for p in trunk.parameters():
        p.requires_grad_(False)
    return trunk.eval()


def inference_trunk(trunk):
    """A copy of the frozen trunk for the cached pass: each BatchNorm folded into its convolution and
    channels-last layout (same outputs to ~1e-5, faster on CPU: one oneDNN kernel per block, no BN pass; measured
    in docs/performance.md)."""
    fused = copy.deepcopy(trunk).eval()

    def fold(module):
        for child in module.children():
            if (
                isinstance(child, nn.Sequential)
                and len(child) >= 2
                and isinstance(child[0], nn.Conv2d)
                and isinstance(child[1], nn.BatchNorm2d)
            ):
                child[0] = fuse_conv_bn_eval(child[0], child[1])
                child[1] = nn.Identity()
            else:
                fold(child)

    fold(fused)
    return fused.to(memory_format=torch.channels_last)


class PlanktonNet(nn.Module):
    def __init__(
        self, num_classes, image_size=128, backbone_weights="IMAGENET1K_V1", seed=0, embedding_dim=128, dropout=0.2
    ):
        super().__init__()
        self.trunk = build_trunk(backbone_weights, seed)
        c = TRUNK_CHANNELS
        self.head_conv = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1),
            nn.BatchNorm2d(c),
            nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, padding=1),
            nn.BatchNorm2d(c),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        side = trunk_side(image_size) // 2
        self.embedding = nn.Sequential(nn.Flatten(), nn.Linear(c * side * side, embedding_dim), nn.ReLU(inplace=True))
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(embedding_dim, num_classes)

    def train(self, mode=True):
        super().train(mode)
        self.trunk.eval()  # frozen means frozen: BatchNorm running statistics must not drift either
        return self

    def head(self, trunk_features):
        embedding = self.embedding(self.head_conv(trunk_features))
        return self.classifier(self.dropout(embedding)), embedding

    def forward(self, images):
        return self.head(self.trunk(images))


def build_model(cfg, num_classes):
    return PlanktonNet(
        num_classes, cfg.image_size, cfg.backbone_weights, RANDOM_TRUNK_SEED, cfg.embedding_dim, cfg.dropout
    )


def print_model_summary(model, image_size):
    from torchsummary import summary

    summary(model, (3, image_size, image_size), device="cpu")
