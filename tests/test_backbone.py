"""The mission's architecture, the frozen trunk, and loading ImageNet weights offline."""

from pathlib import Path

import pytest
import torch
import torchvision

import backbone
import lab


@pytest.mark.parametrize("size, side", [(128, 16), (64, 8), (100, 13)])
def test_output_shapes(size, side):
    model = backbone.PlanktonNet(6, size, None, seed=0).eval()
    x = torch.randn(2, 3, size, size)
    assert model.trunk(x).shape == (2, 64, side, side)
    logits, embedding = model(x)
    assert logits.shape == (2, 6) and embedding.shape == (2, 128)
    assert (embedding >= 0).all()  # the activation after ReLU
    assert model.embedding[1].in_features == 64 * (side // 2) ** 2


def test_head_layers_are_the_missions():
    model = backbone.PlanktonNet(6, 128, None)
    convs = [m for m in model.head_conv if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(64, 64, (3, 3))] * 2
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.head_conv) == 2
    assert isinstance(model.head_conv[-1], torch.nn.MaxPool2d) and model.dropout.p == 0.2
    assert len(model.trunk) == 4


def test_trunk_frozen_and_its_batchnorm_never_moves():
    model = backbone.PlanktonNet(3, 64, None, seed=1)
    trunk_before = {k: v.clone() for k, v in model.trunk.state_dict().items()}
    head_before = model.head_conv[1].running_mean.clone()
    model.train()
    assert not model.trunk.training and model.head_conv.training
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.01)
    logits, _ = model(torch.randn(8, 3, 64, 64) * 3 + 1)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2] * 2 + [0, 1])).backward()
    opt.step()
    assert all(not p.requires_grad for p in model.trunk.parameters())
    for k, v in model.trunk.state_dict().items():
        assert torch.equal(v, trunk_before[k]), k
    assert not torch.equal(model.head_conv[1].running_mean, head_before)  # the head's BN does learn


def test_random_trunk_is_reproducible_from_the_seed():
    a, b = backbone.build_trunk(None, 5), backbone.build_trunk(None, 5)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_a_random_trunk_is_the_same_whatever_the_seed_and_the_head_is_not(make_cfg):
    """The seed varies the head (and the split), never a random trunk's features (issue 34); the default seed's
    trunk is the one it always was."""
    models = []
    for seed in (1, 2):
        cfg, _ = make_cfg(f"--seed={seed}")
        torch.manual_seed(seed)  # as train.py seeds everything before building the model
        models.append(backbone.build_model(cfg, 6))
    trunks = [m.trunk.state_dict() for m in models]
    assert all(torch.equal(trunks[0][k], trunks[1][k]) for k in trunks[0])
    assert not torch.equal(models[0].classifier.weight, models[1].classifier.weight)
    always = backbone.build_trunk(None, 42).state_dict()  # the trunk of seed 42 before the seed was fixed
    assert all(torch.equal(always[k], trunks[0][k]) for k in always) and backbone.RANDOM_TRUNK_SEED == 42


def _fake_imagenet_file(torch_home):
    """A state dict of the real architecture where torchvision looks for the downloaded weights."""
    weights = torchvision.models.EfficientNet_V2_S_Weights.IMAGENET1K_V1
    target = Path(torch_home) / "hub" / "checkpoints" / Path(weights.url).name
    target.parent.mkdir(parents=True)
    torch.manual_seed(123)
    state = torchvision.models.efficientnet_v2_s().state_dict()
    torch.save(state, target)
    return state, target


def test_imagenet_weights_load_through_torchvision_from_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    state, target = _fake_imagenet_file(tmp_path)
    trunk = backbone.build_trunk("IMAGENET1K_V1", seed=0)
    assert torch.equal(trunk[0][0].weight, state["features.0.0.weight"])
    assert torch.equal(trunk[3][0].block[0][1].running_var, state["features.3.0.block.0.1.running_var"])
    from_file = backbone.build_trunk(str(target), seed=0)  # the same file given as a path
    assert torch.equal(from_file[2][0].block[0][0].weight, state["features.2.0.block.0.0.weight"])
    assert "sha256" in backbone.describe_weights(str(target), 0)


def test_offline_without_weights_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(
        torch.hub, "download_url_to_file", lambda *a, **k: (_ for _ in ()).throw(OSError("Name or service not known"))
    )
    with pytest.raises(lab.LabError) as err:
        backbone.build_trunk("IMAGENET1K_V1", seed=0)
    message = str(err.value)
    assert "efficientnet_v2_s-dd5fe13b.pth" in message and str(tmp_path) in message
    assert "TORCH_HOME" in message and "backbone_weights=None" in message


def test_wrong_weights_name_or_file_is_a_clear_error(tmp_path):
    with pytest.raises(lab.LabError, match="neither a file nor a torchvision weights name"):
        backbone.build_trunk("IMAGENET_V9", 0)
    bad = tmp_path / "w.pth"
    bad.write_text("not a state dict")
    with pytest.raises(lab.LabError, match="cannot be read as a PyTorch state dict"):
        backbone.build_trunk(str(bad), 0)
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(lab.LabError, match="do not fit torchvision's efficientnet_v2_s"):
        backbone.build_trunk(str(bad), 0)


def test_inference_trunk_gives_the_same_features():
    trunk = backbone.build_trunk(None, 3)
    for m in trunk.modules():  # non-trivial BN statistics, as ImageNet weights have
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        ref, fused = trunk(x), backbone.inference_trunk(trunk)(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.inference_trunk(trunk).modules())
    torch.testing.assert_close(fused, ref, rtol=1e-4, atol=1e-4)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in trunk.modules())  # the original is untouched
