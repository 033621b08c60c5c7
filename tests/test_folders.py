"""Real-world folders (issue #9): free-text class names, folders as they come, huge crops, duplicates, small
unseen classes and a trunk cache that notices changed files."""

import base64
import html
import io
import json
import os
import shutil
import subprocess
import sys
import unicodedata
import warnings
import zlib

import numpy as np
import pandas as pd
import pytest
from conftest import FAST
from PIL import Image

import dataloader
import lab
import transfer_learning
from lab import artifacts, config, data_folders, embedding_files, image_io, plotting, splitting


def class_root(tiny_demo, root, names, per_class=20):
    """A data root whose class folders are named `names` (on disk exactly as given), each holding the first
    per_class images of a demo class: different classes stay different."""
    sources = sorted(p for p in tiny_demo.iterdir() if p.is_dir())
    root.mkdir(parents=True, exist_ok=True)
    for name, source in zip(names, sources):
        (root / name).mkdir()
        for image in sorted(source.iterdir())[:per_class]:
            shutil.copy(image, root / name / image.name)
    return root


def argv_for(root, out, seen, unseen, *extra):
    return [
        f"--data_root={str(root)!r}",
        f"--output_dir={str(out)!r}",
        f"--seen_classes={seen!r}",
        f"--unseen_classes={unseen!r}",
        *FAST,
        *extra,
    ]


def no_glyph_warnings(draw):
    """Run draw() (which saves a figure) and return matplotlib's 'Glyph ... missing' warnings: empty boxes."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        draw()
    return [str(w.message) for w in caught if "missing from font" in str(w.message)]


# --------------------------------------------------------------------------- 1. class names are free text
@pytest.mark.slow
def test_class_names_that_read_as_numbers_missing_values_or_other_scripts_survive_the_whole_pipeline(
    tiny_demo, tmp_path
):
    import run_pipeline

    decomposed = unicodedata.normalize("NFD", "Cératium")  # as a macOS zip writes it
    seen_on_disk = ["01", "NA", "珪藻", "渦鞭毛藻", decomposed]
    unseen = ["None", "nan", "TOTAL"]
    root = class_root(tiny_demo, tmp_path / "data", seen_on_disk + unseen)
    seen = ["01", "NA", "珪藻", "渦鞭毛藻", "Cératium"]  # typed composed, as in a config file
    argv = argv_for(root, tmp_path / "out", seen, unseen, "--min_images_per_class=5", "--reduction_method=pca")
    run_pipeline.main(argv)
    cfg = config.load_config(argv)
    split = artifacts.read_csv(artifacts.out_path(cfg, "results", "split.csv"), splitting.SPLIT_COLUMNS)
    assert set(split["label"]) == set(seen + unseen)
    assert split.loc[split["label"] == "Cératium", "path"].str.startswith(decomposed + "/").all()  # the disk's name
    galleries = artifacts.read_csv(
        artifacts.out_path(cfg, "results", "galleries.csv"), ("set", "class", "row", "path", "label")
    )
    assert set(galleries["class"]) == set(seen + unseen)
    figures = {c: artifacts.out_path(cfg, "figs", f"gallery_{plotting.figure_slug(c)}.png") for c in seen + unseen}
    assert len(set(figures.values())) == 8 and all(f.stat().st_size > 1000 for f in figures.values())
    assert len(list(artifacts.out_path(cfg, "figs").glob("gallery_*.png"))) == 8  # no gallery overwrote another
    summary = artifacts.read_csv(artifacts.out_path(cfg, "results", "dataset_summary.csv"), ("group", "class"))
    by_group = summary.groupby("group")["images"].sum()
    assert summary.set_index("class").loc["TOTAL", "images"] == 20  # a class, not the total of its group
    assert by_group["unseen total"] == by_group["unseen"] == 60 and by_group["seen total"] == by_group["seen"]
    page = artifacts.out_path(cfg, "results", "report.html").read_text()
    for c in seen + unseen:  # each class's own gallery, inlined under its own caption
        data = base64.b64encode(figures[c].read_bytes()).decode("ascii")
        assert f'<img src="data:image/png;base64,{data}" alt="{html.escape(c)} (' in page


def test_figure_names_are_unique_stable_and_ascii():
    assert plotting.figure_slug("chainthin") == "chainthin" and plotting.figure_slug("01") == "01"
    assert plotting.figure_slug("NA") == "NA" and plotting.figure_slug("Rhabdonellidae") == "Rhabdonellidae"
    diatom, dinoflagellate = plotting.figure_slug("珪藻"), plotting.figure_slug("渦鞭毛藻")
    assert diatom != dinoflagellate and diatom.startswith("cls-") and len(diatom) == 12
    assert diatom == "cls-" + __import__("hashlib").sha256("珪藻".encode()).hexdigest()[:8]  # stable across runs
    assert plotting.figure_slug("Ceratium furca").startswith("Ceratium_furca-")
    assert plotting.figure_slug("Ceratium furca") != plotting.figure_slug("Ceratium_furca")  # lossy slugs never collide
    assert plotting.figure_slug("Cératium") == plotting.figure_slug(unicodedata.normalize("NFD", "Cératium"))
    assert all(plotting.figure_slug(n).isascii() for n in ("珪藻", "Cératium", "a/b", "x" * 300))
    assert len(plotting.figure_slug("x" * 300)) < 80
    twins = ["Odontella", "odontella", "Chaetoceros"]  # one file on a case-insensitive disk (macOS, Windows)
    slugs = [plotting.figure_slug(n, twins) for n in twins]
    assert len({s.casefold() for s in slugs}) == 3 and slugs[2] == "Chaetoceros"
    assert slugs[0].startswith("Odontella-") and slugs == [plotting.figure_slug(n, twins) for n in twins]


def test_csv_text_columns_read_back_exactly(tmp_path):
    path = tmp_path / "t.csv"
    artifacts.save_csv(
        path, pd.DataFrame({"class": ["01", "NA", "None", "nan"], "mean": [1.5, float("nan"), 2.0, 3.0]})
    )
    table = artifacts.read_csv(path, ("class",))
    assert list(table["class"]) == ["01", "NA", "None", "nan"]
    assert table["mean"].dtype == float and table["mean"].isna().tolist() == [False, True, False, False]


def test_names_no_installed_font_can_draw_are_escaped_with_one_note(monkeypatch, capsys):
    monkeypatch.setattr(plotting, "font_with", lambda code_points: None)  # a machine without any CJK font
    monkeypatch.setattr(plotting, "_NOTED_UNDRAWABLE", set())
    shown = plotting.drawable_names(["珪藻", "chainthin", "Cératium"])
    assert shown == ["\\u73ea\\u85fb", "chainthin", "Cératium"]  # DejaVu Sans has the accented Latin
    plotting.drawable_names(["珪藻"])
    err = capsys.readouterr().err
    assert err.count("note: no installed font has the characters") == 1 and "'珪藻'" in err

    def draw():
        plt = plotting.pyplot()
        fig, ax = plt.subplots()
        ax.set_title(shown[0])
        fig.canvas.draw()
        plt.close(fig)

    assert no_glyph_warnings(draw) == []


def test_an_installed_font_that_has_the_glyphs_is_used():
    import matplotlib

    name = "Ceratium ᶁ"  # U+1D81: not in DejaVu Sans, but in the STIX fonts matplotlib ships
    with matplotlib.rc_context():
        assert plotting.drawable_names([name]) == [name]
        fallback = matplotlib.rcParams["font.family"][-1]
        assert fallback not in ("sans-serif", "DejaVu Sans") and not fallback.startswith("Last Resort")

        def draw():
            plt = plotting.pyplot()
            fig, ax = plt.subplots()
            ax.set_title(name)
            fig.canvas.draw()
            plt.close(fig)

        assert no_glyph_warnings(draw) == []


def test_cjk_names_are_drawn_when_a_cjk_font_is_installed():
    import matplotlib

    if plotting.font_with({ord("珪"), ord("藻")}) is None:
        pytest.skip(
            "no installed font has CJK glyphs (e.g. apt install fonts-noto-cjk); the escaped fallback is tested above"
        )
    with matplotlib.rc_context():
        assert plotting.drawable_names(["珪藻"]) == ["珪藻"]


def test_composed_and_decomposed_folders_of_one_name_are_an_ambiguity(tiny_demo, tmp_path):
    composed = "Cératium"
    root = class_root(tiny_demo, tmp_path / "data", ["a", "b", "c", composed, unicodedata.normalize("NFD", composed)])
    cfg = config.load_config(argv_for(root, tmp_path / "out", ["a", composed], ["b", "c"]))
    with pytest.raises(lab.LabError, match="different Unicode forms"):
        splitting.read_or_draw_split(cfg)


# --------------------------------------------------------------------------- 2. folders as they are
def _png_bytes(img):
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_loops_links_sub_folders_and_other_formats_are_handled_and_reported(tiny_demo, tmp_path, capsys):
    root = class_root(tiny_demo, tmp_path / "data", ["a", "b", "c", "d"])
    os.symlink("loop", root / "loop")  # a self-loop beside the classes
    os.symlink(".", root / "here")  # a folder loop beside the classes
    folder = root / "a"
    os.symlink("self", folder / "self")  # a self-loop inside a class
    os.symlink("..", folder / "up")  # a link to the data root: would pull every class in
    os.symlink("missing.png", folder / "broken.png")
    (folder / "notes.txt").write_text("counts")
    (folder / ".DS_Store").write_bytes(b"junk")
    (folder / "sub" / "deeper").mkdir(parents=True)  # images in sub-folders belong to the class
    (folder / "sub" / "deeper" / "x.png").write_bytes(_png_bytes(Image.new("L", (30, 20), 90)))
    os.symlink("..", folder / "sub" / "back")  # a loop from a sub-folder to the class folder
    Image.new("RGB", (30, 20), (1, 2, 3)).save(folder / "crop.webp")
    frames = [Image.new("L", (30, 20), v) for v in (10, 120, 240)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:])
    frames[0].save(folder / "stack.tif", save_all=True, append_images=frames[1:])
    cfg = config.load_config(argv_for(root, tmp_path / "out", ["a", "b"], ["c", "d"], "--min_images_per_class=5"))
    dataloader.main(argv_for(root, tmp_path / "out", ["a", "b"], ["c", "d"], "--min_images_per_class=5"))
    split = artifacts.read_csv(artifacts.out_path(cfg, "results", "split.csv"), splitting.SPLIT_COLUMNS)
    paths = set(split["path"])
    assert {"a/sub/deeper/x.png", "a/crop.webp", "a/anim.gif", "a/stack.tif"} <= paths
    assert not any(p.startswith(("a/up/", "a/self", "a/sub/back")) for p in paths)
    assert (split["label"] == "a").sum() == 20 + 4
    ignored = artifacts.read_csv(artifacts.out_path(cfg, "results", "ignored_files.csv"), data_folders.IGNORED_COLUMNS)
    reasons = dict(zip(ignored["path"], ignored["reason"]))
    assert reasons == {
        "a/self": data_folders.LOOP,
        "a/up": data_folders.LOOP,
        "a/sub/back": data_folders.LOOP,
        "a/broken.png": data_folders.BROKEN_LINK,
        "a/notes.txt": data_folders.NOT_IMAGE,
        "a/.DS_Store": data_folders.HIDDEN,
    }
    notes = artifacts.read_csv(artifacts.out_path(cfg, "results", "image_notes.csv"), data_folders.NOTE_COLUMNS)
    assert set(notes["path"]) == {"a/anim.gif", "a/stack.tif"}
    assert (notes["note"] == "multi-frame file: first frame used").all() and set(notes["detail"]) == {"3 frames"}
    out = capsys.readouterr().out
    assert "ignored 6 file(s) or folder(s) in the class folders" in out
    for reason, count in ((data_folders.LOOP, 3), (data_folders.BROKEN_LINK, 1), (data_folders.HIDDEN, 1)):
        assert f"{count}  {reason}" in out
    assert f"1  {data_folders.NOT_IMAGE} (.txt 1)" in out and "2  multi-frame file: first frame used" in out
    summary = artifacts.read_csv(artifacts.out_path(cfg, "results", "dataset_summary.csv"), ("group", "class"))
    assert summary.set_index("class").loc["a", "ignored_non_image"] == 6
    first = np.asarray(image_io.load_rgb(root / "a" / "anim.gif"))
    assert (first == 10).all()  # the first frame, not the last one decoded


def test_common_formats_are_read():
    assert {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif"} <= image_io.IMAGE_EXTENSIONS
    assert not {".txt", ".csv", ".pdf", ".db"} & image_io.IMAGE_EXTENSIONS


@pytest.mark.parametrize("orientation, expected", [(1, (40, 20)), (6, (20, 40)), (3, (40, 20)), (8, (20, 40))])
def test_exif_orientation_is_applied(tmp_path, orientation, expected):
    pixels = np.full((20, 40, 3), 230, np.uint8)
    pixels[:, :10] = 20  # a dark left edge, as stored
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[image_io.EXIF_ORIENTATION] = orientation
    img.save(tmp_path / "x.jpg", exif=exif, quality=95)
    rgb = np.asarray(image_io.load_rgb(tmp_path / "x.jpg", 64)).mean(2)
    assert rgb.shape[::-1] == expected
    dark_edge = {1: rgb[:, :5], 3: rgb[:, -5:], 6: rgb[:5], 8: rgb[-5:]}[orientation]
    assert dark_edge.mean() < 60 and rgb.mean() > 120


# --------------------------------------------------------------------------- 3. huge and extreme crops
def write_blank_png(path, width, height):
    """A white grey-level PNG written row by row: 20,000 x 20,000 px in 0.4 MB without holding 400 MB."""

    def chunk(kind, data):
        return len(data).to_bytes(4, "big") + kind + data + (zlib.crc32(kind + data) & 0xFFFFFFFF).to_bytes(4, "big")

    compressor, row = zlib.compressobj(9), b"\x00" + b"\xff" * width
    data = b"".join([compressor.compress(row) for _ in range(height)] + [compressor.flush()])
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def run_measured(script, argv):
    """Run a script in a child process; (completed process, its peak resident memory in MB)."""
    wrapper = (
        "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
        "sys.stdout.write(r.stdout); sys.stderr.write(r.stderr); "
        "print(f'PEAK_RSS_KB={resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}'); sys.exit(r.returncode)"
    )
    result = subprocess.run(
        [sys.executable, "-c", wrapper, sys.executable, script, *argv],
        cwd=lab.ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    peak_kb = int(result.stdout.rsplit("PEAK_RSS_KB=", 1)[1])
    return result, peak_kb / 1024


@pytest.mark.slow
def test_huge_and_extreme_crops_stay_within_memory_and_are_reported(tiny_demo, tmp_path):
    from PIL import ImageDraw

    root = tmp_path / "data"
    shutil.copytree(tiny_demo, root)
    folder = root / "Odontella"
    write_blank_png(folder / "huge.png", 20_000, 20_000)  # 400 MP in 0.4 MB: refused before decoding
    strip = Image.new("RGB", (40_000, 400), (235, 235, 235))
    ImageDraw.Draw(strip).line([(0, 200), (40_000, 200)], fill=(30, 30, 30), width=60)
    strip.save(folder / "strip.png")  # a 40,000 x 400 chain: used, padded only after downsizing
    big = Image.new("L", (15_000, 15_000), 235)  # 225 MP: above Pillow's bomb-warning limit
    ImageDraw.Draw(big).ellipse([5000, 5000, 10_000, 10_000], fill=30)
    big.save(folder / "big.jpg", quality=85)
    del strip, big
    argv = [
        f"--data_root={str(root)!r}",
        f"--output_dir={str(tmp_path / 'out')!r}",
        *FAST,
        "--epochs=1",
        "--num_workers=0",
    ]  # every image decoded in the measured process
    scan, scan_mb = run_measured("dataloader.py", argv)
    assert scan.returncode == 0, scan.stderr
    assert scan_mb < 1024, f"the scan's peak resident memory is {scan_mb:.0f} MB"
    result, train_mb = run_measured("train.py", argv)  # the trunk pass over the same images
    plain = [f"--data_root={str(tiny_demo)!r}", f"--output_dir={str(tmp_path / 'plain')!r}", *argv[2:]]
    control, control_mb = run_measured("train.py", plain)  # the same run without the three images
    assert result.returncode == 0 and control.returncode == 0, result.stderr + control.stderr
    # torch and the model alone take about 1 GB in train.py; decoding the images must add little to that
    assert train_mb - control_mb < 200, f"trunk pass: {train_mb:.0f} MB against {control_mb:.0f} MB without them"
    assert "DecompressionBombWarning" not in scan.stdout + scan.stderr + result.stdout + result.stderr
    cfg = config.load_config(argv)
    skipped = artifacts.read_csv(artifacts.out_path(cfg, "results", "skipped_files.csv"), ("path", "label", "reason"))
    assert list(skipped["path"]) == ["Odontella/huge.png"]
    assert skipped["reason"].item().startswith("too large to decode within memory: 20000 x 20000 px (400 MP)")
    notes = artifacts.read_csv(artifacts.out_path(cfg, "results", "image_notes.csv"), data_folders.NOTE_COLUMNS)
    assert list(notes["path"]) == ["Odontella/big.jpg"] and "decompression-bomb" in notes["note"].item()
    assert "1  very large image (Pillow's decompression-bomb warning)" in scan.stdout
    split = artifacts.read_csv(artifacts.out_path(cfg, "results", "split.csv"), splitting.SPLIT_COLUMNS)
    assert {"Odontella/strip.png", "Odontella/big.jpg"} <= set(split["path"])
    reduced = image_io.load_rgb(folder / "strip.png", 64)  # reduced 208x (to >= 3 x 64 px), aspect kept
    assert reduced.size == (193, 2) and np.asarray(image_io.letterbox(reduced, 64)).shape == (64, 64, 3)
    disk = np.asarray(image_io.letterbox(image_io.load_rgb(folder / "big.jpg", 64), 64)).mean(2)
    assert disk[32, 32] < 80 and disk[2, 2] > 200  # the drafted JPEG still shows its dark disk


# --------------------------------------------------------------------------- 4. duplicates do not leak
def test_byte_identical_files_share_a_split_and_cross_class_copies_are_listed(tiny_demo, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(tiny_demo, root)
    backup = root / "Odontella" / "backup"  # a copy of the folder inside itself, as zips and syncs leave them
    backup.mkdir()
    for image in sorted((root / "Odontella").glob("*.png")):
        shutil.copy(image, backup / image.name)
    shutil.copy(root / "darksphere" / "darksphere_0003.png", root / "Neoceratium" / "misfiled.png")
    shutil.copy(root / "Retaria" / "Retaria_0001.png", root / "chainthin" / "unseen_twin.png")
    argv = [f"--data_root={str(root)!r}", f"--output_dir={str(tmp_path / 'out')!r}", *FAST]
    dataloader.main(argv)
    cfg = config.load_config(argv)
    printed = capsys.readouterr()
    err = printed.err
    assert err.count("byte-identical files filed under two or more classes") == 1  # one warning line
    assert "72 files are byte-identical copies within their class (36 distinct images)" in printed.out
    assert "'darksphere/darksphere_0003.png' darksphere, Neoceratium" in err
    twins = ("'Retaria/Retaria_0001.png' chainthin, Retaria", "'chainthin/unseen_twin.png' chainthin, Retaria")
    assert any(twin in err for twin in twins)
    split = artifacts.read_csv(artifacts.out_path(cfg, "results", "split.csv"), splitting.SPLIT_COLUMNS)
    digests = {p: artifacts.file_digest(root / p) for p in split["path"]}
    seen = split[split["split"] != "unseen"].assign(digest=lambda f: f["path"].map(digests))
    assert (seen.groupby("digest")["split"].nunique() == 1).all()  # no test image equals a training image
    odontella = seen[seen["label"] == "Odontella"]
    assert len(odontella) == 72 and set(odontella["split"]) == {"train", "val", "test"}
    assert odontella.groupby("split").size()["test"] == 2 * round(36 * 0.2)  # whole pairs, stratified as before
    text = ("path", "label", "digest", "labels", "kind")
    duplicates = artifacts.read_csv(artifacts.out_path(cfg, "results", "duplicates.csv"), text)
    across = duplicates[duplicates["kind"] == "across classes"].set_index("path")
    assert set(across.index) == {
        "darksphere/darksphere_0003.png",
        "Neoceratium/misfiled.png",
        "Retaria/Retaria_0001.png",
        "chainthin/unseen_twin.png",
    }
    assert json.loads(across.loc["Neoceratium/misfiled.png", "labels"]) == ["darksphere", "Neoceratium"]
    assert across.loc["Neoceratium/misfiled.png", "label"] == "Neoceratium"
    misfiled = ["darksphere/darksphere_0003.png", "Neoceratium/misfiled.png"]
    assert set(seen.loc[seen["path"].isin(misfiled), "split"]) == {"train"}  # two seen labels: train only
    within = duplicates[duplicates["kind"] == "same class"]
    assert len(within) == 72 and (within["copies"] == 2).all()


def test_a_class_made_only_of_another_classes_images_is_a_clear_error(make_cfg):
    cfg, _ = make_cfg("--seen_classes=['a', 'b', 'c']", "--unseen_classes=['x', 'y']")
    files = {
        "a": [f"a/{i}.png" for i in range(20)],
        "b": [f"b/{i}.png" for i in range(20)],
        "c": [f"c/{i}.png" for i in range(20)],
        "x": [],
        "y": [],
    }
    digests = {p: p.split("/")[1] for paths in files.values() for p in paths}  # c's images are a's and b's too
    digests.update({p: f"own {p}" for p in files["b"]})
    with pytest.raises(lab.LabError, match=r"'a' cannot be split.*20 are byte-identical to images of other classes"):
        splitting.draw_split(cfg, files, digests)


# --------------------------------------------------------------------------- 7. small unseen classes
def test_every_unseen_class_has_images_on_both_sides_of_the_held_out_split():
    y = np.repeat(np.arange(10), 3)
    x = np.random.default_rng(0).normal(size=(30, 8))
    for fraction in (0.05, 0.3, 0.9):
        train_idx, test_idx = transfer_learning.held_out_split(x, y, fraction, seed=1)
        assert sorted(np.concatenate([train_idx, test_idx])) == list(range(30))
        assert (np.bincount(y[test_idx], minlength=10) >= 1).all()
        assert (np.bincount(y[train_idx], minlength=10) >= 1).all()
    y = np.repeat([0, 1], [100, 40])
    test_idx = transfer_learning.held_out_split(np.random.default_rng(1).normal(size=(140, 8)), y, 0.3, seed=1)[1]
    assert np.bincount(y[test_idx]).tolist() == [30, 12]  # stratified: round(n x fraction) per class


def test_copies_of_one_image_stay_on_one_side_of_the_held_out_split():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(20, 8))
    x[1] = x[2] = x[3] = x[0]  # four copies of one file: identical embeddings
    y = np.zeros(20, dtype=int)
    for seed in range(10):
        train_idx, test_idx = transfer_learning.held_out_split(x, y, 0.3, seed)
        assert {0, 1, 2, 3} <= set(train_idx) or {0, 1, 2, 3} <= set(test_idx)


@pytest.mark.parametrize("fraction", [0.3, 0.05])
def test_transfer_learning_runs_with_ten_unseen_classes_of_three_images(tmp_path, fraction):
    classes = [f"class_{i}" for i in range(10)]
    argv = [
        f"--output_dir={str(tmp_path)!r}",
        f"--unseen_classes={classes!r}",
        "--min_images_per_class=3",
        f"--transfer_test_fraction={fraction}",
        *FAST,
    ]
    cfg = config.load_config(argv)
    rng = np.random.default_rng(3)
    labels = np.repeat(classes, 3)
    rows = pd.DataFrame({"label": labels, "split": "unseen", "path": [f"{c}/{i}.png" for i, c in enumerate(labels)]})
    vectors = rng.normal(size=(10, 128))[np.repeat(np.arange(10), 3)] * 4 + rng.normal(size=(30, 128))
    artifacts.ensure_output_dirs(cfg, ("embeddings",))
    frame = embedding_files.embedding_frame(cfg, rows, vectors, classes)
    embedding_files.save_embedding_set(cfg, {"unseen": frame}, {"checkpoint_sha256": None})  # no checkpoint here
    table = transfer_learning.main(argv)  # scikit-learn's stratified split refused this: 3 held out < 10 classes
    assert (table["n_test"] == 10).all() and set(table["per_class"]) == {1, "all"}
    assert table[table["per_class"] == "all"]["train_size"].eq(20).all()
    assert artifacts.out_path(cfg, "figs", "accuracy_all.png").stat().st_size > 1000


# --------------------------------------------------------------------------- 10. the trunk cache notices changed files
def same_size_png(size, value):
    """A valid PNG of exactly `size` bytes (a uniform image, padded with a text chunk)."""
    data = _png_bytes(Image.new("L", (16, 16), value))
    pad = size - len(data) - 12 - len(b"pad\0")
    assert pad >= 0
    body = b"tEXt" + b"pad\0" + b"x" * pad
    chunk = len(body[4:]).to_bytes(4, "big") + body + (zlib.crc32(body) & 0xFFFFFFFF).to_bytes(4, "big")
    return data[:-12] + chunk + data[-12:]  # before IEND


def test_trunk_cache_notices_a_file_restored_with_its_old_size_and_time(tiny_demo, tmp_path, capsys):
    import evaluate
    import train

    root = tmp_path / "data"
    shutil.copytree(tiny_demo, root)
    argv = [f"--data_root={str(root)!r}", f"--output_dir={str(tmp_path / 'out')!r}", *FAST, "--epochs=1"]
    train.main(argv)
    evaluate.main(argv)
    capsys.readouterr()
    evaluate.main(argv)
    assert "[trunk] computing" not in capsys.readouterr().out  # nothing changed: the cache is used
    cfg = config.load_config(argv)
    split = artifacts.read_csv(artifacts.out_path(cfg, "results", "split.csv"), splitting.SPLIT_COLUMNS)
    victim = root / split.loc[split["split"] == "test", "path"].iloc[0]
    before = victim.stat()
    victim.write_bytes(same_size_png(before.st_size, 7))  # another image, same size ...
    os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns))  # ... and modification time: cp -p, rsync -t
    assert (victim.stat().st_size, victim.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    evaluate.main(argv)
    assert "[trunk] computing the frozen trunk's output for" in capsys.readouterr().out


def test_content_fingerprint_reads_both_ends_of_a_big_file(tmp_path):
    from lab import trunk_cache

    path = tmp_path / "big.bin"
    data = bytearray(os.urandom(300_000))
    path.write_bytes(data)
    first = trunk_cache.content_fingerprint(path, len(data))
    data[-5] ^= 1  # a change near the end of a big file
    path.write_bytes(data)
    assert trunk_cache.content_fingerprint(path, len(data)) != first
    data[150_000] ^= 1  # the middle of a big file is not read: size and time must catch such a change
    path.write_bytes(data)
    second = trunk_cache.content_fingerprint(path, len(data))
    data[150_000] ^= 1
    path.write_bytes(data)
    assert trunk_cache.content_fingerprint(path, len(data)) == second
