"""Scanning, the class summary, the persisted split, and every kind of messy plankton folder."""

import io
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY_COUNTS, shared_dataset
from PIL import Image

import dataloader
import lab
import train
from lab import artifacts, config, data_folders, demo_data, image_io, splitting


def copy_demo(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_split_is_stratified_seeded_and_persisted(make_cfg):
    cfg, _ = make_cfg()
    split = splitting.read_or_draw_split(cfg)
    assert set(split["split"]) == {"train", "val", "test", "unseen"}
    for c in cfg.seen_classes:
        parts = split[split["label"] == c]["split"].value_counts()
        n = TINY_COUNTS[c]
        assert parts["test"] == round(n * 0.2) and parts["val"] == max(1, round(n * 0.05))
        assert parts["train"] == n - parts["test"] - parts["val"]
    assert (split[split["label"].isin(cfg.unseen_classes)]["split"] == "unseen").all()
    assert not split["path"].duplicated().any()
    again = splitting.draw_split(cfg, data_folders.scan(cfg)[0])
    pd.testing.assert_frame_equal(split, again)  # same seed, same split
    other = splitting.draw_split(config.load_config([*_argv(cfg), "--seed=7"]), data_folders.scan(cfg)[0])
    by_path = lambda frame: frame.set_index("path")["split"].sort_index()  # noqa: E731
    assert (by_path(split) != by_path(other)).sum() > 10  # another seed, another split
    on_disk = pd.read_csv(artifacts.out_path(cfg, "results", "split.csv"), dtype=str)
    pd.testing.assert_frame_equal(on_disk, split.astype(str))
    summary = pd.read_csv(artifacts.out_path(cfg, "results", "dataset_summary.csv"))
    seen_total = summary[summary["group"] == "seen total"]["images"].item()
    assert seen_total == sum(TINY_COUNTS[c] for c in cfg.seen_classes)
    assert summary[~summary["group"].str.endswith(" total")].groupby("group")["share"].sum().round(6).eq(1.0).all()


def _argv(cfg):
    return [f"--data_root={cfg.data_root!r}", f"--output_dir={cfg.output_dir!r}"]


def test_changed_files_are_reported_with_the_rebuild_command(make_cfg, tiny_demo, tmp_path):
    root = copy_demo(tiny_demo, tmp_path / "data")
    cfg, argv = make_cfg(data_root=root)
    splitting.read_or_draw_split(cfg)
    (root / "Odontella" / "Odontella_0000.png").unlink()
    shutil.copy(root / "Odontella" / "Odontella_0001.png", root / "Odontella" / "new.png")
    with pytest.raises(lab.LabError, match=r"1 image\(s\) were added and 1 removed.*--rebuild_split=True"):
        splitting.read_or_draw_split(cfg)
    rebuilt = splitting.read_or_draw_split(config.load_config(argv + ["--rebuild_split=True"]))
    assert "Odontella/new.png" in set(rebuilt["path"])
    other_seed = splitting.read_or_draw_split(config.load_config(argv + ["--seed=3"]))  # other settings: own split
    assert set(other_seed["path"]) == set(rebuilt["path"]) and not other_seed.equals(rebuilt)


def test_missing_root_and_missing_class_name_the_fix(make_cfg, tmp_path):
    cfg, argv = make_cfg(data_root=tmp_path / "nowhere")
    with pytest.raises(lab.LabError, match="does not exist"):
        splitting.read_or_draw_split(cfg)
    cfg, _ = make_cfg("--seen_classes=['chainthn', 'darksphere']")
    with pytest.raises(lab.LabError, match=r"'chainthn' is not in .*Did you mean 'chainthin'\?.*Retaria"):
        splitting.read_or_draw_split(cfg)


def test_the_demo_is_generated_by_the_entry_point_and_a_later_script_names_the_command(make_cfg, tmp_path, monkeypatch):
    demo_root = tmp_path / "data" / "demo"  # the demo's folder for this test, not the repository's data/demo
    monkeypatch.setattr(artifacts, "DEMO_ROOT", demo_root)
    monkeypatch.setattr(demo_data, "DEMO_ROOT", demo_root)
    monkeypatch.setattr(demo_data, "DEFAULT_COUNTS", {c: 12 for c in demo_data.CLASSES})  # a second, not seven
    cfg, argv = make_cfg(data_root=demo_root)
    command = r"not been generated yet.*`python dataloader\.py`.*`python -m lab\.demo_data`"
    with pytest.raises(lab.LabError, match=command):
        data_folders.check_data_root(cfg)  # a check: it writes nothing
    with pytest.raises(lab.LabError, match=command):
        train.main(argv)  # a script after dataloader.py: the message, not a traceback, and no demo drawn
    assert not demo_root.exists()
    dataloader.main(argv)  # the entry point generates it on first use, then draws the split
    assert sorted(p.name for p in demo_root.iterdir() if p.is_dir()) == sorted(demo_data.CLASSES)
    split = artifacts.read_csv(artifacts.out_path(cfg, "results", "split.csv"), ("path", "label", "split"))
    assert split["label"].value_counts().to_dict() == {c: 12 for c in cfg.seen_classes + cfg.unseen_classes}


def test_empty_and_too_small_classes_are_refused(make_cfg, tiny_demo, tmp_path):
    root = copy_demo(tiny_demo, tmp_path / "data")
    for f in (root / "Retaria").iterdir():
        f.unlink()
    (root / "Retaria" / "notes.txt").write_text("no images here")
    cfg, _ = make_cfg(data_root=root)
    with pytest.raises(lab.LabError, match="holds no readable images"):
        splitting.read_or_draw_split(cfg)
    shutil.rmtree(root / "Retaria")
    shutil.copytree(tiny_demo / "Retaria", root / "Retaria")
    for f in sorted((root / "Odontella").iterdir())[3:]:
        f.unlink()
    with pytest.raises(lab.LabError, match="only 3 readable images.*min_images_per_class"):
        splitting.read_or_draw_split(cfg)
    cfg3, _ = make_cfg("--min_images_per_class=3", data_root=root)  # documented: 3 is the floor, one per split
    split = splitting.read_or_draw_split(cfg3)
    assert split[split["label"] == "Odontella"]["split"].value_counts().to_dict() == {"val": 1, "test": 1, "train": 1}
    greedy, _ = make_cfg(
        "--min_images_per_class=3", "--val_fraction=0.45", "--test_fraction=0.5", "--rebuild_split=True", data_root=root
    )
    with pytest.raises(lab.LabError, match="none would be left for training"):
        splitting.read_or_draw_split(greedy)


def test_junk_and_broken_files_are_skipped_listed_and_counted(make_cfg, tiny_demo, tmp_path):
    root = copy_demo(tiny_demo, tmp_path / "data")
    folder = root / "darksphere"
    for name in (".DS_Store", "Thumbs.db", "readme.txt", "export.csv"):
        (folder / name).write_bytes(b"junk")
    (folder / "subfolder").mkdir()
    (folder / "empty.png").write_bytes(b"")
    good = (folder / "darksphere_0000.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    (folder / "text_pretending.jpg").write_text("this is not a jpeg")
    buf = io.BytesIO()
    Image.new("L", (40, 30), 128).save(buf, format="PNG")
    (folder / "png_named.jpg").write_bytes(buf.getvalue())  # a real image with the wrong extension: loads
    cfg, _ = make_cfg(data_root=root)
    split = splitting.read_or_draw_split(cfg)
    skipped = pd.read_csv(artifacts.out_path(cfg, "results", "skipped_files.csv"))
    broken = {"darksphere/empty.png", "darksphere/truncated.png", "darksphere/text_pretending.jpg"}
    assert set(skipped["path"]) == broken
    assert not set(skipped["path"]) & set(split["path"])
    assert "darksphere/png_named.jpg" in set(split["path"])
    summary = pd.read_csv(artifacts.out_path(cfg, "results", "dataset_summary.csv")).set_index("class")
    # 4: the empty sub-folder holds nothing to ignore (sub-folders belong to their class: tests/test_folders.py)
    assert summary.loc["darksphere", "ignored_non_image"] == 4 and summary.loc["darksphere", "skipped_unreadable"] == 3
    assert summary.loc["darksphere", "images"] == TINY_COUNTS["darksphere"] + 1
    splitting.read_or_draw_split(cfg)  # the skipped files do not count as 'changed' on the next run


def _save(img, fmt=None):
    fmt = fmt or ("JPEG" if img.mode == "CMYK" else "PNG")
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return Image.open(io.BytesIO(buf.getvalue()))


@pytest.mark.parametrize(
    "make",
    [
        lambda: Image.new("1", (50, 40), 1),
        lambda: Image.new("L", (50, 40), 200),
        lambda: Image.new("LA", (50, 40), (10, 0)),
        lambda: Image.new("P", (50, 40), 3),
        lambda: Image.new("RGBA", (50, 40), (0, 0, 0, 0)),
        lambda: Image.new("CMYK", (50, 40), (0, 0, 0, 0)),
        lambda: Image.new("RGB", (1, 1), (5, 5, 5)),
        lambda: Image.new("RGB", (1000, 3), (5, 5, 5)),
        lambda: Image.new("L", (5000, 5000), 250),
    ],
)
def test_every_mode_and_shape_becomes_a_normalised_rgb_tensor(make):
    tensor = image_io.image_tensor(image_io.to_rgb(_save(make())), 64)
    assert tensor.shape == (3, 64, 64) and tensor.dtype == torch.float32 and torch.isfinite(tensor).all()


def test_uint8_pixels_normalised_on_the_device_equal_the_imagenet_formula():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (40, 70, 3), dtype=np.uint8))
    pixels = image_io.image_pixels(img, 32)
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, 32, 32)
    expected = (np.asarray(image_io.letterbox(img, 32), np.float64) / 255.0 - (0.485, 0.456, 0.406)) / (
        0.229,
        0.224,
        0.225,
    )  # torchvision's ImageNet statistics, written out
    batch = image_io.normalise(torch.stack([pixels, pixels]))
    assert batch.dtype == torch.float32 and batch.shape == (2, 3, 32, 32)
    np.testing.assert_allclose(batch[1].numpy(), expected.transpose(2, 0, 1), atol=1e-6)
    assert torch.equal(image_io.image_tensor(img, 32), batch[0])


def test_transparent_pixels_become_white_background():
    rgb = image_io.to_rgb(_save(Image.new("RGBA", (8, 8), (0, 0, 0, 0))))
    assert np.asarray(rgb).min() == 255


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_images_are_scaled_by_their_bit_depth(fmt):
    pixels = np.full((20, 30), 4095, dtype=np.uint16)  # a 12-bit sensor's white
    pixels[5:10, 5:10] = 0
    img = _save(Image.fromarray(pixels), fmt)
    assert img.mode.startswith("I")
    rgb = np.asarray(image_io.to_rgb(img))
    assert rgb.max() == 255 and rgb.min() == 0 and rgb.shape == (20, 30, 3)


@pytest.mark.slow
def test_real_flowcam_files_of_mixed_modes_load():
    root = shared_dataset("flowcam-vliz-demo")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in image_io.IMAGE_EXTENSIONS)
    modes = {Image.open(p).mode for p in files}
    assert len(files) == 105 and {"RGB", "L"} <= modes
    for p in files:
        assert image_io.check_image(p) is None
        tensor = image_io.image_tensor(image_io.load_rgb(p), 64)
        assert tensor.shape == (3, 64, 64) and torch.isfinite(tensor).all()
