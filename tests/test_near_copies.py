"""Near-copies: synthetic copies (JPEG at quality 70, a 2-pixel shift, brightness +10 %; made as the benchmark makes
them) are found, distinct images of one class are not, nor look-alikes whose faint parts differ; candidate pairs
equal a brute-force search; the indexed search finds every pair the all-pairs search finds (copies planted in the
demo's images and in ndsb9's); 'group' keeps a near-copy group in one split; the accuracy without the test images
that have a near-copy in train."""

import itertools
import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageEnhance

from bench.bench_near_copies import synthetic_copies
from lab import near_copies, near_copy_index, particle_match, report_sections, splitting


def saved(images, folder):
    """The images as PNG files: (paths, thumbnail pixels, decoded sizes), as near_copies.search reads them."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, img in enumerate(images):
        paths.append(str(folder / f"{k}.png"))
        img.save(paths[-1])
    made = [near_copies.thumbnail(p) for p in paths]
    return paths, np.stack([m[0] for m in made]), np.array([m[1] for m in made])


@pytest.fixture(scope="module")
def demo_class(tiny_demo):
    return [Image.open(p).convert("L") for p in sorted((tiny_demo / "Odontella").iterdir())]


def textured_particle(seed, size=60):
    """A round particle with a texture of its own (smoothed noise, as a real cell's granules), on a light ground."""
    from PIL import ImageDraw
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    disc = Image.new("L", (size, size), 0)
    ImageDraw.Draw(disc).ellipse((6, 6, size - 6, size - 6), fill=255)
    texture = gaussian_filter(rng.normal(0, 1, (size, size)), 1.2)
    pixels = np.where(np.asarray(disc) > 0, 90 + 40 * texture / texture.std(), 225) + rng.normal(0, 3, (size, size))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def test_synthetic_near_copies_are_found(demo_class, tmp_path):
    """The demo's flat drawings, shifted or brightened; textured particles re-saved as JPEG at quality 70 (it blurs
    a flat drawing's noise, the only thing that tells two drawings apart: docs/similar.md)."""
    drawings, textured = demo_class[:12], [textured_particle(seed) for seed in range(12)]
    for kind, originals in (("jpeg70", textured), ("shift2", drawings), ("bright10", drawings)):
        copies = [synthetic_copies(img) for img in originals]
        paths, pixels, sizes = saved(originals, tmp_path / f"originals_{kind}")
        copy_paths, copy_pixels, copy_sizes = saved([c[kind] for c in copies], tmp_path / kind)
        assert np.array_equal(copy_sizes, sizes)  # same decoded sizes: every copy is a candidate pair
        coarse = near_copies.coarse_similarity(near_copies.coarse_grids(pixels), near_copies.coarse_grids(copy_pixels))
        assert (coarse >= near_copies.COARSE_MIN).all(), (kind, coarse)
        for a, b in zip(paths, copy_paths):
            texture, shape, noise, dy, dx = particle_match.confirm(*(particle_match.full_grey(p) for p in (a, b)))
            assert particle_match.is_near_copy(texture, shape, noise), (kind, texture, shape, noise)
            if kind == "shift2":
                assert (dy, dx) == (-2, -2)  # the alignment undoes the shift
        # and the search over originals and copies together finds exactly the 12 pairs
        (i, j, *_), _ = near_copies.find_pairs(
            paths + copy_paths, np.concatenate([pixels, copy_pixels]), np.concatenate([sizes, copy_sizes])
        )
        assert sorted(zip(i.tolist(), j.tolist())) == [(k, k + 12) for k in range(12)], kind


def test_distinct_images_of_one_class_are_not_flagged(demo_class, tmp_path):
    paths, pixels, sizes = saved(demo_class, tmp_path / "distinct")
    assert len(near_copies.find_pairs(paths, pixels, sizes)[0][0]) == 0
    greys = [particle_match.full_grey(p) for p in paths]  # every pair at full resolution, past the coarse step too
    decisions = [
        particle_match.is_near_copy(*particle_match.confirm(greys[a], greys[b])[:3])
        for a, b in itertools.combinations(range(len(paths)), 2)
    ]
    assert len(decisions) == 630 and not any(decisions)
    # and the same images with one re-saved copy among them: exactly that pair is found
    copy = synthetic_copies(demo_class[3])["jpeg70"]
    paths, pixels, sizes = saved(demo_class + [copy], tmp_path / "with_copy")
    (i, j, *_), _ = near_copies.find_pairs(paths, pixels, sizes)
    assert list(zip(i.tolist(), j.tolist())) == [(3, len(demo_class))]


def test_spines_at_other_angles_are_another_individual(tmp_path):
    """Two drawn 'Acantharia': one dark core, faint spines at other angles. Their cores match in texture; the
    shape mismatch (each one's spines on the other's background) tells them apart. The same particle brightened
    by 10 % loses its faintest pixels, never gains any elsewhere, and stays a near-copy."""
    from PIL import ImageDraw

    def acantharia(angles):
        img = Image.new("L", (60, 60), 255)
        draw = ImageDraw.Draw(img)
        for angle in angles:
            x, y = 30 + 28 * np.cos(angle), 30 + 28 * np.sin(angle)
            draw.line((30, 30, x, y), fill=200, width=2)
        draw.ellipse((20, 20, 40, 40), fill=40)
        noise = np.random.default_rng(0).integers(-6, 7, (60, 60))
        return Image.fromarray(np.clip(np.asarray(img, np.int16) + noise, 0, 255).astype(np.uint8))

    one, other = acantharia(np.arange(0, 6.28, 0.8)), acantharia(np.arange(0.4, 6.28, 0.8))
    brighter = ImageEnhance.Brightness(one).enhance(1.1)
    paths, _, _ = saved([one, other, brighter], tmp_path)
    greys = [particle_match.full_grey(p) for p in paths]
    texture, shape, _, _, _ = particle_match.confirm(greys[0], greys[1])
    assert texture <= particle_match.TEXTURE_MAX and shape > particle_match.SHAPE_MAX  # the core alone would pass
    assert particle_match.is_near_copy(*particle_match.confirm(greys[0], greys[2])[:3])


@pytest.mark.parametrize("fill, noise", [(70, 5), (0, 5), (70, 2), (0, 2)])
def test_two_featureless_discs_are_told_apart_by_their_own_noise(tmp_path, fill, noise):
    """Two drawings of one dark disc, each with its own pixel noise (the demo's darksphere class), from grey to
    black and from faint to strong noise: alike in texture and shape, so only the noise tells them apart, the
    blurred rim (alike in both) left out; a shifted or brightened copy of one keeps its noise and is found. (A JPEG
    re-save at quality 70 blurs such a disc's noise away and may be missed: docs/similar.md.)"""
    from PIL import ImageDraw, ImageFilter

    def disc(seed):
        img = Image.new("L", (40, 40), 230)
        ImageDraw.Draw(img).ellipse((5, 5, 35, 35), fill=fill)
        pixels = np.asarray(img.filter(ImageFilter.GaussianBlur(0.8)), np.float32)
        pixels = pixels + np.random.default_rng(seed).normal(0, noise, pixels.shape)
        return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))

    one, other = disc(1), disc(2)
    copies = synthetic_copies(one)
    paths, _, _ = saved([one, other, copies["shift2"], copies["bright10"]], tmp_path)
    greys = [particle_match.full_grey(p) for p in paths]
    texture, shape, noise, _, _ = particle_match.confirm(greys[0], greys[1])
    assert texture <= particle_match.TEXTURE_MAX and shape <= particle_match.SHAPE_MAX  # texture and shape would pass
    assert noise < particle_match.NOISE_MIN and not particle_match.is_near_copy(texture, shape, noise)
    for copy in greys[2:]:
        assert particle_match.is_near_copy(*particle_match.confirm(greys[0], copy)[:3])


def test_a_particle_too_thin_for_an_interior_is_judged_on_texture_and_shape_alone():
    """A 3-px rod has no pixel 5 px in from its rim: its noise is not measured (NaN), and the decision is texture
    and shape's, as for every thin particle (a diatom chain); a measured noise below the threshold refuses."""
    from PIL import ImageDraw

    img = Image.new("L", (40, 40), 230)
    ImageDraw.Draw(img).line((5, 20, 35, 20), fill=40, width=3)
    rod = particle_match.white_background(np.asarray(img) + np.random.default_rng(0).integers(-4, 5, (40, 40)))
    assert np.isnan(particle_match.confirm(rod, rod.copy())[2])
    assert particle_match.is_near_copy(0.01, 0.0, float("nan"))
    assert not particle_match.is_near_copy(0.01, 0.0, particle_match.NOISE_MIN - 0.01)
    assert not particle_match.is_near_copy(particle_match.TEXTURE_MAX + 0.01, 0.0, float("nan"))


def test_a_large_crop_keeps_its_own_size_and_its_resave_is_found(tmp_path):
    """A large JPEG is decoded reduced for its thumbnail; the size check must still compare the files' sizes (a
    600-px JPEG and its PNG re-save are one candidate pair), and both are compared at one scale."""
    from PIL import ImageDraw

    img = Image.new("L", (600, 430), 250)
    draw = ImageDraw.Draw(img)
    for k in range(12):
        draw.ellipse((40 + 40 * k, 100 + 15 * (k % 5), 90 + 40 * k, 180 + 15 * (k % 5)), fill=30 + 15 * k)
    original, resaved = tmp_path / "large.jpg", tmp_path / "large_resaved.png"
    img.save(original, quality=90)
    Image.open(original).save(resaved)
    made = [near_copies.thumbnail(str(p)) for p in (original, resaved)]
    assert [m[1] for m in made] == [(600, 430), (600, 430)]
    (i, j, *_), _ = near_copies.find_pairs(
        [str(original), str(resaved)], np.stack([m[0] for m in made]), np.array([m[1] for m in made])
    )
    assert list(zip(i.tolist(), j.tolist())) == [(0, 1)]


def test_a_checkpoint_from_before_the_setting_still_names_its_split():
    old_config = SimpleNamespace(
        max_images_per_class=0,
        seen_classes=["a", "b"],
        unseen_classes=["c", "d"],
        val_fraction=0.05,
        test_fraction=0.2,
        seed=42,
    )  # no near_copies
    assert "near_copies" not in splitting.split_identity(old_config)


def test_candidate_pairs_equal_a_brute_force_search():
    sizes = np.random.default_rng(0).integers(20, 60, (300, 2))
    i, j = near_copies.candidate_pairs(sizes, chunk=500)  # small blocks: the chunking is exercised too
    found = set(zip(i.tolist(), j.tolist()))
    brute = {
        (a, b)
        for a in range(300)
        for b in range(a + 1, 300)
        if abs(sizes[a, 0] - sizes[b, 0]) <= near_copies.SIZE_SLACK
        and abs(sizes[a, 1] - sizes[b, 1]) <= near_copies.SIZE_SLACK
    }
    assert found == brute and len(found) == len(i) and len(brute) > 100


def test_group_mode_keeps_a_near_copy_group_in_one_split(tmp_path):
    root = tmp_path / "data"
    files = {}
    for c in ("a", "b", "u1", "u2"):
        (root / c).mkdir(parents=True)
        files[c] = []
        for k in range(20):
            (root / c / f"{k}.png").write_bytes(bytes([k]))
            files[c].append(f"{c}/{k}.png")
    cfg = SimpleNamespace(
        seed=0,
        data_root=str(root),
        seen_classes=["a", "b"],
        unseen_classes=["u1", "u2"],
        val_fraction=0.1,
        test_fraction=0.2,
    )
    digests = {p: p for c in files for p in files[c]}
    digests["a/7.png"] = digests["a/8.png"] = "same bytes"
    pairs = pd.DataFrame(
        {"group": [0, 0, 1], "path_a": ["a/1.png", "a/2.png", "b/4.png"], "path_b": ["a/2.png", "a/7.png", "b/5.png"]}
    )  # a/1 ~ a/2 ~ a/7 == a/8 (bytes)
    keys = near_copies.group_keys(pairs, digests)
    assert len({keys[p] for p in ("a/1.png", "a/2.png", "a/7.png", "a/8.png")}) == 1
    assert keys["b/4.png"] == keys["b/5.png"]
    assert keys["a/3.png"] != keys["a/1.png"]
    for seed in range(6):
        cfg.seed = seed
        split = splitting.draw_split(cfg, files, keys).set_index("path")["split"]
        assert split[["a/1.png", "a/2.png", "a/7.png", "a/8.png"]].nunique() == 1
        assert split["b/4.png"] == split["b/5.png"]


def test_group_keys_join_groups_linked_through_a_byte_identical_copy_under_another_class():
    """a/1 ~ a/2 (near-copies in class a); a/2 is also saved byte for byte as b/9, which is a near-copy of b/3 in
    class b: all four are one particle's images, whichever order the groups come in."""
    digests = {p: p for p in ("a/1.png", "a/2.png", "a/5.png", "b/3.png", "b/9.png", "b/6.png")}
    digests["a/2.png"] = digests["b/9.png"] = "same bytes"
    one = ["a/1.png", "a/2.png", "b/9.png", "b/3.png"]
    for order in ([0, 1], [1, 0]):
        pairs = pd.DataFrame(
            {"group": [0, 1], "path_a": ["a/1.png", "b/3.png"], "path_b": ["a/2.png", "b/9.png"]}
        ).iloc[order]
        keys = near_copies.group_keys(pairs, digests)
        assert len({keys[p] for p in one}) == 1
        assert keys["a/5.png"] == "a/5.png" and keys["b/6.png"] == "b/6.png"
        assert keys[one[0]] == min(digests[p] for p in one)


def test_accuracy_without_the_test_images_that_have_a_near_copy_in_train(tmp_path):
    from lab import manifest

    cfg = SimpleNamespace(output_dir=str(tmp_path), data_root=str(tmp_path / "data"), near_copies="report")
    split = pd.DataFrame(
        {
            "path": ["c/t1", "c/t2", "c/t3", "c/t4", "c/r1", "c/r2", "c/v1"],
            "label": "c",
            "split": ["test"] * 4 + ["train"] * 2 + ["val"],
        }
    )
    (tmp_path / "results").mkdir()
    pairs = pd.DataFrame(
        {
            "group": [0, 1, 2],
            "path_a": ["c/r1", "c/t2", "c/t3"],
            "label_a": "c",
            "path_b": ["c/t1", "c/v1", "c/t4"],
            "label_b": "c",
            "texture_distance": 0.01,
            "shape_mismatch": 0.0,
            "noise_correlation": 0.99,
            "shift_y": 0,
            "shift_x": 0,
        }
    )
    searched = {"pairs_compared_at_full_resolution": 3, "classes": {}}
    frame, summary = near_copies.report_frames(cfg, pairs, split, searched)
    assert list(frame["kind"]) == ["across splits", "across splits", "within a split"]
    assert summary["test_images_with_train_copy"] == 1 and summary["images_flagged"] == 6
    assert near_copies.test_images_with_train_copies(frame) == {"c/t1"}  # t2's copy is in val, t3's in test
    predictions = pd.DataFrame(
        {"path": ["c/t1", "c/t2", "c/t3", "c/t4"], "label": "c", "predicted": ["c", "c", "c", "x"]}
    )
    assert "not searched" in report_sections.accuracy_without_copies(cfg, predictions)  # no split set yet
    with manifest.OutputSet(cfg, "split") as out:  # as splitting.make_split writes them: one set
        out.save_csv("results", "split.csv", split)
        out.save_csv("results", "near_copies.csv", frame)
        out.publish()
    line = report_sections.accuracy_without_copies(cfg, predictions)
    assert "1 test image" in line and "66.67 % on 3 images" in line
    split.iloc[:1].to_csv(tmp_path / "results" / "split.csv", index=False)  # changed behind the set's back
    assert near_copies.current_report(cfg) is None and "not searched" in report_sections.accuracy_without_copies(
        cfg, predictions
    )


def test_the_split_lists_a_resaved_copy_and_group_keeps_it_with_its_original(make_cfg, tiny_demo, tmp_path, capsys):
    """dataloader's split: a JPEG re-save of one demo image, under another name in its class, is found (one pair in
    results/near_copies.csv, in the split's output set); with near_copies='group' both sit in one split."""
    import shutil

    from lab import artifacts, manifest

    root = tmp_path / "data"
    shutil.copytree(tiny_demo, root)
    original = sorted((root / "Odontella").iterdir())[5]
    Image.open(original).convert("RGB").save(root / "Odontella" / "resaved_copy.jpg", quality=70)
    pair = {f"Odontella/{original.name}", "Odontella/resaved_copy.jpg"}
    for mode in ("report", "group"):
        cfg, _ = make_cfg(f"--near_copies='{mode}'", "--rebuild_split=True", data_root=root, output_dir=tmp_path / mode)
        split = splitting.read_or_draw_split(cfg).set_index("path")["split"]
        copies = pd.read_csv(artifacts.out_path(cfg, "results", "near_copies.csv"))
        assert len(copies) == 1 and {copies["path_a"][0], copies["path_b"][0]} == pair
        assert "results/near_copies.csv" in manifest.complete(cfg, "split")["outputs"]
        index = json.loads(artifacts.out_path(cfg, "results", "near_copies.json").read_text())["index"]
        assert index["classes_at_cap"] == {} and index["k_index"] == near_copy_index.K_INDEX
        if mode == "group":
            assert split[sorted(pair)].nunique() == 1
        out = capsys.readouterr()
        assert ("cross splits" in out.err) == (split[sorted(pair)].nunique() > 1)


@pytest.mark.slow
def test_the_benchmark_finds_copies_of_real_flowcam_images_and_flags_none_of_them_alone(tmp_path):
    from conftest import shared_dataset

    from bench import bench_near_copies

    root = shared_dataset("flowcam-vliz-demo")
    result = bench_near_copies.main(
        [f"--data_root={root}", "--copies=6", f"--output_dir={tmp_path}", "--false_pair_roots=", "--timing_root="]
    )
    assert (tmp_path / "results" / "near_copies_benchmark.json").is_file()
    copies = result["copies"]
    assert copies["images"] == 6
    for kind in ("jpeg70", "shift2"):
        assert copies[kind]["all_pairs"] == copies[kind]["indexed"] == 1.0
    search = result["searches"][0]
    assert search["images"] == 105 and search["pairs"] == 0  # real, distinct FlowCam crops
    assert search["all_pairs"]["pairs"] == 0 and search["all_pairs"]["new_pairs"] == 0
    assert {r["what"] for r in result["rows"]} >= {"near-copies: jpeg70", "near-copies: flowcam-vliz-demo"}


def planted(images, kinds, seed=0):
    """The images with a copy of some of them appended (each kind of synthetic copy in turn): (images, the indices of
    the planted pairs)."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(images), 3 * len(kinds), replace=False)
    copies = [synthetic_copies(images[k])[kinds[r % len(kinds)]] for r, k in enumerate(chosen)]
    return images + copies, {(int(k), len(images) + r) for r, k in enumerate(chosen)}


def both_searches(paths, pixels, sizes, classes):
    """(pairs found by the indexed search, pairs found by the all-pairs search) as sets of (i, j)."""
    found = []
    for all_pairs in (False, True):
        (i, j, *_), _ = near_copies.find_pairs(paths, pixels, sizes, classes, all_pairs=all_pairs)
        found.append(set(zip(i.tolist(), j.tolist())))
    return found


def test_the_indexed_search_finds_every_pair_the_all_pairs_search_finds_among_the_demo_images(
    tiny_demo, tmp_path, monkeypatch
):
    """Copies planted among the tiny demo's 36 images of each of three classes; the index asked for 4 neighbours
    and 1 confirmed candidate per image, so that its neighbours and its ranking decide (with the defaults, 36 images
    are all each other's neighbours)."""
    monkeypatch.setattr(near_copy_index, "K_INDEX", 4)
    monkeypatch.setattr(near_copy_index, "K_CONFIRM", 1)
    images, classes = [], []
    for c in ("Odontella", "Neoceratium", "Retaria"):
        drawn = [Image.open(p).convert("L") for p in sorted((tiny_demo / c).iterdir())]
        with_copies, _ = planted(drawn, ("shift2", "recrop2", "bright10"), seed=len(images))
        images += with_copies
        classes += [c] * len(with_copies)
    paths, pixels, sizes = saved(images, tmp_path)
    indexed, reference = both_searches(paths, pixels, sizes, classes)
    assert len(reference) >= 20 and indexed == reference  # the drawings' copies, found alike
    (_, _, _, stats) = near_copies.indexed_candidates(pixels, sizes, classes)
    assert sum(s["ranked_out"] for s in stats.values()) > 0  # the ranking did leave candidates out
    assert sum(s["images_extended"] for s in stats.values()) > 0  # some were asked again, for more neighbours
    assert not any(s["images_at_cap"] for s in stats.values())  # and none was left at the cap


@pytest.mark.slow
def test_the_indexed_search_finds_every_pair_the_all_pairs_search_finds_inside_ndsb9(tmp_path):
    """Copies of every kind planted among three whole ndsb9 classes (1,336 real images)."""
    from conftest import shared_dataset

    root = shared_dataset("ndsb9")
    images, classes = [], []
    for c in ("diatom_chain_tube", "trichodesmium_tuft", "radiolarian_colony"):
        real = [Image.open(p).convert("RGB") for p in sorted((root / c).iterdir())]
        with_copies, pairs = planted(real, ("jpeg70", "shift2", "recrop2", "bright10"), seed=len(images))
        images += with_copies
        classes += [c] * len(with_copies)
    paths, pixels, sizes = saved(images, tmp_path)
    indexed, reference = both_searches(paths, pixels, sizes, classes)
    assert len(reference) >= 30 and indexed == reference


def test_the_fine_score_and_the_ranking_equal_a_brute_force_reference():
    rng = np.random.default_rng(0)
    centred = rng.random((6, near_copy_index.WINDOW, near_copy_index.WINDOW)).astype(np.float32)
    centred[:, :2], centred[:, -2:], centred[:, :, :2], centred[:, :, -2:] = 0, 0, 0, 0  # the canvas's empty rim
    i, j = np.array([0, 0, 1, 2, 3]), np.array([1, 4, 5, 5, 4])
    brute = [
        max(float((np.roll(centred[a], (dy, dx), (0, 1)) * centred[b]).sum()) for dy in (-1, 0, 1) for dx in (-1, 0, 1))
        for a, b in zip(i, j)
    ]
    assert np.allclose(near_copy_index.fine_scores(centred, i, j), brute, rtol=1e-5)
    scores = rng.random(40)
    i, j = rng.integers(0, 8, 40), rng.integers(8, 16, 40)
    kept = near_copy_index.best_per_image(i, j, scores, 2)
    for p in range(40):  # kept when among the 2 best of either of its images
        best_of = [sorted(scores[(i == x) | (j == x)], reverse=True)[:2] for x in (i[p], j[p])]
        assert kept[p] == any(scores[p] in best for best in best_of)


def test_the_index_asks_again_while_every_neighbour_passes_and_says_when_it_stops_at_the_cap(monkeypatch):
    """A run of 100 look-alikes (every pair passes) among 100 distinct images: each look-alike is asked for more
    neighbours until it has met all the others, as the all-pairs search would; with a cap smaller than the run, the
    look-alikes are counted at the cap."""
    rng = np.random.default_rng(0)
    points = np.vstack([rng.normal(0, 0.01, (100, 3)), rng.normal(0, 0.01, (100, 3)) + np.arange(1, 101)[:, None]])
    sizes = np.full((200, 2), 40)
    alike = np.arange(200) < 100

    def pair_similarity(i, j):
        return (alike[i] & alike[j]).astype(np.float32)

    i, j, similarity, stats = near_copy_index.neighbour_rounds(points, sizes, 4, 0.75, pair_similarity)
    passing = {(a, b) for a, b, s in zip(i.tolist(), j.tolist(), similarity) if s >= 0.75}
    assert passing == {(a, b) for a in range(100) for b in range(a + 1, 100)}  # brute force: every pair of the run
    assert stats["images_extended"] == 100 and stats["images_at_cap"] == 0
    assert stats["most_neighbours"] < near_copy_index.neighbour_cap(200)  # stopped before the cap
    monkeypatch.setattr(near_copy_index, "K_INDEX", 2)  # cap 2 x 8 = 16 neighbours, under the run's 99
    *_, stats = near_copy_index.neighbour_rounds(points, sizes, 4, 0.75, pair_similarity)
    assert stats["images_at_cap"] == 100 and stats["most_neighbours"] == 16


def test_the_fine_score_on_the_canvases_cut_to_their_support_is_the_same():
    rng = np.random.default_rng(1)
    centred = np.zeros((5, near_copy_index.WINDOW, near_copy_index.WINDOW), np.float32)
    centred[:, 30:60, 40:55] = rng.random((5, 30, 15))
    i, j = np.array([0, 0, 1, 3]), np.array([1, 2, 4, 4])
    cut = near_copy_index.support(centred)
    assert cut.shape == (5, 30, 15)
    assert np.allclose(near_copy_index.fine_scores(cut, i, j), near_copy_index.fine_scores(centred, i, j), rtol=1e-6)
