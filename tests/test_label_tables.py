"""Labels from tables (labels_file): the layouts found, EcoTaxa's export with its statuses, the labels_map, clear
errors for bad tables, missing and conflicting rows, the split that keeps its rows when the data grows, and the
round trip predict -> validate in EcoTaxa -> retrain."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import FAST

import lab
from lab import artifacts, config, data_folders, demo_data, label_tables, splitting

SEEN = ["chainthin", "darksphere", "Rhabdonellidae", "Odontella", "Codonellopsis", "Neoceratium"]
# EcoTaxa's export (the general TSV export, one per sample), in its order: the columns the lab reads, and the others
# a real export carries (where, when, who annotated, the taxonomy, measurements, sample, process, acquisition).
ECOTAXA_COLUMNS = [
    "object_id",
    "object_lat",
    "object_lon",
    "object_date",
    "object_time",
    "object_link",
    "object_depth_min",
    "object_depth_max",
    "object_annotation_status",
    "object_annotation_person_name",
    "object_annotation_person_email",
    "object_annotation_date",
    "object_annotation_time",
    "object_annotation_category",
    "object_annotation_hierarchy",
    "img_file_name",
    "img_rank",
    "object_area",
    "object_mean",
    "object_major",
    "object_minor",
    "sample_id",
    "sample_cruise",
    "sample_station",
    "process_id",
    "acq_id",
    "acq_instrument",
]
NUMBERS = {
    "object_lat",
    "object_lon",
    "object_depth_min",
    "object_depth_max",
    "img_rank",
    "object_area",
    "object_mean",
    "object_major",
    "object_minor",
}
LINEAGE = {
    "Odontella": "living>Eukaryota>Harosa>Stramenopiles>Ochrophyta>Bacillariophyta>Odontella",
    "Neoceratium": "living>Eukaryota>Harosa>Alveolata>Myzozoa>Dinophyceae>Ceratiaceae>Neoceratium",
}


def ecotaxa_export(path, objects, type_row=True, sample="cruise42_st3"):
    """An EcoTaxa export TSV: objects are (img_file_name, category, status) triples; every other column filled as
    a real export fills it."""
    rows = []
    for i, (image, category, status) in enumerate(objects):
        annotated = status in ("validated", "dubious")
        rows.append(
            {
                "object_id": f"{sample}_{i:05d}",
                "object_lat": "43.685",
                "object_lon": "7.315",
                "object_date": "20230514",
                "object_time": "101500",
                "object_link": "",
                "object_depth_min": "0",
                "object_depth_max": "5",
                "object_annotation_status": status,
                "object_annotation_person_name": "A. Taxonomist" if annotated else "",
                "object_annotation_person_email": "a.taxonomist@example.org" if annotated else "",
                "object_annotation_date": "20240102" if annotated else "",
                "object_annotation_time": "093000" if annotated else "",
                "object_annotation_category": category,
                "object_annotation_hierarchy": LINEAGE.get(category, f"living>Eukaryota>{category}"),
                "img_file_name": image,
                "img_rank": "0",
                "object_area": str(120 + i),
                "object_mean": "201.5",
                "object_major": "18.2",
                "object_minor": "7.9",
                "sample_id": sample,
                "sample_cruise": "cruise42",
                "sample_station": "st3",
                "process_id": f"{sample}_process",
                "acq_id": f"{sample}_acq",
                "acq_instrument": "FlowCam",
            }
        )
    frame = pd.DataFrame(rows, columns=ECOTAXA_COLUMNS)
    with open(path, "w", newline="") as f:
        f.write("\t".join(ECOTAXA_COLUMNS) + "\n")
        if type_row:
            f.write("\t".join("[f]" if c in NUMBERS else "[t]" for c in ECOTAXA_COLUMNS) + "\n")
        frame.to_csv(f, sep="\t", header=False, index=False)
    return path


def demo_images(tiny_demo, classes=SEEN, per_class=36):
    return [(c, p) for c in classes for p in sorted((tiny_demo / c).iterdir())[:per_class]]


# --------------------------------------------------------------------------- layouts
@pytest.mark.parametrize(
    "header, sep, suffix, columns",
    [
        ("file,label", ",", ".csv", None),
        ("Image Path;Taxon", ";", ".csv", None),
        ("filename\tclass", "\t", ".tsv", None),
        ("roi\tspecies\tnotes", "\t", ".txt", None),
        ("my_file,my_class,other", ",", ".csv", ["my_file", "my_class"]),
    ],
)
def test_the_common_layouts_are_found_with_paths_relative_to_the_table(
    make_cfg, tmp_path, header, sep, suffix, columns
):
    folder = tmp_path / "sample"
    folder.mkdir()
    names = header.split(sep)
    lines = [header] + [
        sep.join([f"img/{i}.png", "chainthin" if i % 2 else "NA"] + ["x"] * (len(names) - 2)) for i in range(4)
    ]
    (folder / f"labels{suffix}").write_text("\n".join(lines) + "\n")
    extra = [f"--labels_columns={columns!r}"] if columns else []
    cfg, _ = make_cfg(
        f"--labels_file={str(folder / f'labels{suffix}')!r}", "--unseen_classes=['NA', 'Retaria']", *extra
    )
    tables = label_tables.read_labels(cfg, tmp_path)
    assert list(tables.entries["path"]) == [f"sample/img/{i}.png" for i in range(4)]  # relative to data_root
    assert list(tables.entries["label"]) == ["NA", "chainthin", "NA", "chainthin"]  # NA stays a name
    assert (tables.entries["reason"] == "").all() and tables.sources[0]["kind"] == "table"
    outside = label_tables.read_labels(cfg, tmp_path / "elsewhere")
    assert list(outside.entries["path"]) == [str(folder / "img" / f"{i}.png") for i in range(4)]  # absolute


def test_an_ecotaxa_export_is_recognised_with_or_without_its_type_row(make_cfg, tmp_path, capsys):
    objects = [
        ("a.png", "chainthin", "validated"),
        ("b.png", "Odontella", "validated"),
        ("c.png", "darksphere", "predicted"),
        ("d.png", "Odontella", "dubious"),
        ("e.png", "", ""),
    ]
    for type_row in (True, False):
        export = ecotaxa_export(tmp_path / f"export_{type_row}.tsv", objects, type_row)
        cfg, _ = make_cfg(f"--labels_file={str(export)!r}")
        tables = label_tables.read_labels(cfg, tmp_path, announce=True)
        entries = tables.entries.set_index("path")
        assert tables.sources[0]["kind"] == "EcoTaxa export" and len(entries) == 5  # the type row is no object
        assert list(entries["status"]) == ["validated", "validated", "predicted", "dubious", "unclassified"]
        assert tables.labelled() == {"chainthin": ["a.png"], "Odontella": ["b.png"]}
        assert set(entries.loc[["c.png", "d.png", "e.png"], "reason"]) == {label_tables.STATUS_LEFT_OUT}
        assert int(tables.entries.loc[0, "line"]) == (3 if type_row else 2)
    assert "warning" not in capsys.readouterr().err
    cfg, _ = make_cfg(f"--labels_file={str(export)!r}", "--labels_statuses=['validated', 'predicted']")
    tables = label_tables.read_labels(cfg, tmp_path, announce=True)
    assert tables.labelled()["darksphere"] == ["c.png"]
    assert "labels_statuses includes 'predicted': 1 row(s)" in capsys.readouterr().err


def test_the_labels_map_merges_categories_and_every_category_left_out_is_counted(make_cfg, tmp_path, capsys):
    objects = [
        ("1.png", "Neoceratium<Ceratiaceae", "validated"),
        ("2.png", "Tripos<Ceratiaceae", "validated"),
        ("3.png", "chainthin", "validated"),
        ("4.png", "detritus", "validated"),
        ("5.png", "detritus", "validated"),
        ("6.png", "badfocus<artefact", "validated"),
        ("7.png", "Calanoida<Copepoda", "validated"),
        ("8.png", "Tripos<Ceratiaceae", "predicted"),
    ]
    export = ecotaxa_export(tmp_path / "export.tsv", objects)
    (tmp_path / "map.csv").write_text(
        "category,class\nNeoceratium<Ceratiaceae,Neoceratium\nTripos<Ceratiaceae,"
        "Neoceratium\nbadfocus<artefact,\nCalanoida<Copepoda,Copepoda\n"
    )
    cfg, _ = make_cfg(f"--labels_file={str(export)!r}", f"--labels_map={str(tmp_path / 'map.csv')!r}")
    tables = label_tables.read_labels(cfg, tmp_path, announce=True)
    assert tables.labelled() == {"Neoceratium": ["1.png", "2.png"], "chainthin": ["3.png"]}  # many to one, and as is
    unused = label_tables.unused_rows(tables).set_index("category")
    assert unused.loc["detritus", "rows"] == 2 and unused.loc["detritus", "reason"] == label_tables.NOT_IN_MAP
    assert unused.loc["badfocus<artefact", "reason"] == label_tables.MAPPED_OUT
    assert unused.loc["Calanoida<Copepoda", "reason"] == label_tables.NOT_A_CLASS  # mapped to no configured class
    assert unused.loc["Tripos<Ceratiaceae", "reason"] == label_tables.STATUS_LEFT_OUT
    assert unused["rows"].sum() + 3 == len(objects)  # no row vanishes
    err = capsys.readouterr().err
    assert "3 row(s) of the labels tables give no class, 2 categories: 2 'detritus'" in err
    assert "unused_labels.csv" in err


# --------------------------------------------------------------------------- clear errors
BAD_TABLES = {
    "empty label": ("file,label\na.png,chainthin\nb.png,\n", [], r"1 row\(s\) with an empty label cell.*line\(s\) 3"),
    "empty path": ("file,label\n,chainthin\n", [], r"empty image path cell.*line\(s\) 2"),
    "unknown columns": (
        "image_id,annotation_group\na.png,chainthin\n",
        ["--labels_columns=['image', 'annotation']"],
        r"names the column\(s\) \['image', 'annotation'\].*Did you mean 'image_id' for 'image'",
    ),
    "no known columns": ("foo,bar\na.png,chainthin\n", [], r"no image-path and label column.*'foo', 'bar'"),
    "ragged": ('file,label\na.png,chainthin\nb.png,"x",y,z\n', [], r"Cannot read .* as a CSV or TSV table"),
    "empty file": ("", [], r"is empty: it needs a header line"),
}


@pytest.mark.parametrize("case", sorted(BAD_TABLES))
def test_bad_tables_get_clear_errors(make_cfg, tmp_path, case):
    text, extra, message = BAD_TABLES[case]
    (tmp_path / "labels.csv").write_text(text)
    cfg, _ = make_cfg(f"--labels_file={str(tmp_path / 'labels.csv')!r}", *extra)
    with pytest.raises(lab.LabError, match=message):
        label_tables.read_labels(cfg, tmp_path)


def test_unreadable_tables_and_maps_get_clear_errors(make_cfg, tmp_path):
    def refused(message, *overrides):
        cfg, _ = make_cfg(*overrides)
        with pytest.raises(lab.LabError, match=message):
            label_tables.read_labels(cfg, tmp_path)

    (tmp_path / "book.xlsx").write_bytes(b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + bytes(40))
    refused(r"not a text table .*Save it as CSV", f"--labels_file={str(tmp_path / 'book.xlsx')!r}")
    (tmp_path / "latin1.csv").write_bytes("file,label\na.png,Cératium\n".encode("latin-1"))
    refused(r"not UTF-8 text", f"--labels_file={str(tmp_path / 'latin1.csv')!r}")
    refused(r"labels table .*nowhere.csv.* does not exist", f"--labels_file={str(tmp_path / 'nowhere.csv')!r}")
    (tmp_path / "empty_folder").mkdir()
    refused(r"holds no table", f"--labels_file={str(tmp_path / 'empty_folder')!r}")
    (tmp_path / "good.csv").write_text("file,label\na.png,Neoceratium<Ceratiaceae\n")
    good = f"--labels_file={str(tmp_path / 'good.csv')!r}"
    (tmp_path / "map3.csv").write_text("category,class,note\nx,y,z\n")
    refused(r"has 3 columns.*exactly two", good, f"--labels_map={str(tmp_path / 'map3.csv')!r}")
    (tmp_path / "twice.csv").write_text("category,class\nx,Odontella\nx,chainthin\n")
    refused(r"maps the category 'x' to two classes", good, f"--labels_map={str(tmp_path / 'twice.csv')!r}")
    refused(r"labels_map table .* does not exist", good, f"--labels_map={str(tmp_path / 'nomap.csv')!r}")


@pytest.mark.parametrize(
    "arg, fragment",
    [
        ("--labels_file=3", "a string or a list of strings"),
        ("--labels_file=[]", "labels_file"),
        ("--labels_columns='file'", "a list of strings"),
        ("--labels_columns=['file']", "two different column names"),
        ("--labels_columns=['f', 'f']", "two different"),
        ("--labels_statuses=['Validated']", "EcoTaxa statuses"),
        ("--labels_statuses=[]", "non-empty"),
        ("--labels_map=' '", "labels_map"),
    ],
)
def test_bad_label_settings_are_refused_before_work(arg, fragment):
    with pytest.raises(lab.LabError, match=fragment):
        config.load_config([arg])


def test_the_label_settings_read_lists_and_every_ecotaxa_status():
    cfg = config.load_config(
        [
            "--labels_file=['a.tsv', 'exports/']",
            "--labels_columns=['file', 'taxon']",
            "--labels_statuses=['validated', 'predicted', 'dubious']",
        ]
    )
    assert cfg.labels_file == ["a.tsv", "exports/"] and cfg.labels_columns == ["file", "taxon"]
    assert cfg.labels_statuses == ["validated", "predicted", "dubious"]


# --------------------------------------------------------------------------- the split from tables
def flat_copy(tiny_demo, root, per_class=36):
    """The demo's seen and unseen images in one folder, root/images/, labelled by root/labels.csv."""
    (root / "images").mkdir(parents=True)
    rows = []
    for c in demo_data.CLASSES:
        for image in sorted((tiny_demo / c).iterdir())[:per_class]:
            shutil.copy(image, root / "images" / image.name)
            rows.append({"file": f"images/{image.name}", "label": c})
    pd.DataFrame(rows).sample(frac=1, random_state=0).to_csv(root / "labels.csv", index=False)  # any row order
    return root / "labels.csv"


def by_name(split):
    return split.assign(name=split["path"].str.rsplit("/", n=1).str[-1]).set_index("name")[["label", "split"]]


def test_a_table_labelled_copy_is_split_exactly_as_the_folders(make_cfg, tiny_demo, tmp_path):
    table = flat_copy(tiny_demo, tmp_path / "flat")
    folders = splitting.read_or_draw_split(make_cfg(output_dir=tmp_path / "a")[0])
    cfg, _ = make_cfg(f"--labels_file={str(table)!r}", data_root=tmp_path / "flat", output_dir=tmp_path / "b")
    from_table = splitting.read_or_draw_split(cfg)
    assert from_table["path"].str.startswith("images/").all()
    pd.testing.assert_frame_equal(by_name(from_table), by_name(folders))
    sources = pd.read_csv(artifacts.out_path(cfg, "results", "label_sources.csv"), dtype={"sha256": str})
    assert sources[["source", "kind", "rows", "used"]].values.tolist() == [[str(table), "table", 324, 324]]
    assert sources["sha256"].item() == artifacts.file_digest(table)[:16]
    assert (
        json.loads(artifacts.out_path(cfg, "results", "split.json").read_text())["labels_tables"][0]["sha256"]
        == sources["sha256"].item()
    )


def test_missing_unreadable_and_twice_listed_files(make_cfg, tiny_demo, tmp_path, capsys):
    table = flat_copy(tiny_demo, tmp_path / "flat", per_class=12)
    frame = pd.read_csv(table, dtype=str)
    (tmp_path / "flat" / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    conflicting = "images/chainthin_0001.png"
    frame = pd.concat(
        [
            frame,
            pd.DataFrame(
                {
                    "file": ["images/gone.png", "images/broken.png", conflicting, "images/chainthin_0002.png"],
                    "label": ["Odontella", "Odontella", "darksphere", "chainthin"],
                }
            ),
        ]
    )
    frame.to_csv(table, index=False)
    cfg, _ = make_cfg(f"--labels_file={str(table)!r}", "--min_images_per_class=5", data_root=tmp_path / "flat")
    split = splitting.read_or_draw_split(cfg)
    skipped = pd.read_csv(artifacts.out_path(cfg, "results", "skipped_files.csv")).set_index("path")["reason"]
    assert skipped["images/gone.png"] == data_folders.MISSING and "images/broken.png" in skipped.index
    assert "skipping 2 unreadable image file(s)" in capsys.readouterr().err
    twice = split[split["path"] == conflicting]  # kept under both labels, in train, as cross-class copies are
    assert sorted(twice["label"]) == ["chainthin", "darksphere"] and set(twice["split"]) == {"train"}
    assert (split["path"] == "images/chainthin_0002.png").sum() == 1  # listed twice with one label: once
    duplicates = pd.read_csv(artifacts.out_path(cfg, "results", "duplicates.csv"))
    assert set(duplicates.loc[duplicates["kind"] == "across classes", "path"]) == {conflicting}
    splitting.read_or_draw_split(cfg)  # the missing and broken files are no change


# --------------------------------------------------------------------------- a split that grows
def test_new_rows_join_the_split_and_old_rows_keep_theirs(make_cfg, tiny_demo, tmp_path, capsys):
    cfg, argv = make_cfg()
    first = splitting.read_or_draw_split(cfg)
    sample = tmp_path / "sample"
    sample.mkdir()
    new = demo_images(demo_data.generate(tmp_path / "more", {c: 10 for c in SEEN}, seed=3))
    for _, p in new:
        shutil.copy(p, sample / f"new_{p.name}")
    table = sample / "validated.tsv"
    ecotaxa_export(table, [(f"new_{p.name}", c, "validated") for c, p in new])
    grown_argv = argv + [f"--labels_file={str(table)!r}"]
    with pytest.raises(lab.LabError, match=r"60 image\(s\) were added to .* `python train.py` adds them"):
        splitting.read_or_draw_split(config.load_config(grown_argv), grow=False)  # the scripts after training
    capsys.readouterr()
    grown = splitting.read_or_draw_split(config.load_config(grown_argv))
    assert "the data grew: 60 new image(s) added" in capsys.readouterr().out
    old = grown[grown["round"] == "0"].reset_index(drop=True)
    pd.testing.assert_frame_equal(old[["path", "label", "split"]], first[["path", "label", "split"]].astype(str))
    added = grown[grown["round"] == "1"]
    assert sorted(added["path"]) == sorted(str(sample / f"new_{p.name}") for _, p in new)  # outside data_root
    for c in SEEN:
        parts = grown[grown["label"] == c]["split"].value_counts()
        assert parts["test"] == round(46 * 0.2) and parts["val"] == max(1, round(46 * 0.05))  # the grown class
    reread = splitting.read_or_draw_split(config.load_config(grown_argv))  # no change now
    pd.testing.assert_frame_equal(reread, grown.astype(str))
    export = pd.read_csv(table, sep="\t", dtype=str, keep_default_na=False)
    assert export.loc[2, "img_file_name"] == f"new_{new[1][1].name}" and new[1][0] == "chainthin"
    export.loc[2, "object_annotation_category"] = "Odontella"
    export.to_csv(table, sep="\t", index=False)  # a taxonomist's correction after the split was drawn
    with pytest.raises(lab.LabError, match=r"1 removed \(1 of them relabelled.*--rebuild_split=True"):
        splitting.read_or_draw_split(config.load_config(grown_argv))
    with pytest.raises(lab.LabError, match=r"0 image\(s\) were added and 60 removed.*--rebuild_split=True"):
        splitting.read_or_draw_split(config.load_config(argv))  # the table left out: its rows are removed


def test_a_copy_of_an_image_already_split_joins_its_copys_split(make_cfg, tiny_demo, tmp_path):
    cfg, argv = make_cfg()
    first = splitting.read_or_draw_split(cfg)
    tested = first[first["split"] == "test"].iloc[0]
    (tmp_path / "sample").mkdir()
    shutil.copy(tiny_demo / tested["path"], tmp_path / "sample" / "copy.png")
    (tmp_path / "sample" / "labels.csv").write_text(f"file,label\ncopy.png,{tested['label']}\n")
    grown = splitting.read_or_draw_split(config.load_config(argv + [f"--labels_file={str(tmp_path / 'sample')!r}"]))
    assert grown.set_index("path").loc[str(tmp_path / "sample" / "copy.png"), "split"] == "test"  # never train


# --------------------------------------------------------------------------- end to end
def ecotaxa_copy_of_the_demo(tiny_demo, root):
    """The tiny demo as an EcoTaxa export of two samples (each a TSV with its images), plus objects a taxonomist
    has not validated (predicted, dubious) that must not join."""
    extra = demo_data.generate(root / "unvalidated", {c: 2 for c in SEEN}, seed=11)
    for half, sample in enumerate(("sample_a", "sample_b")):
        (root / sample).mkdir(parents=True)
        objects = []
        for c in demo_data.CLASSES:
            for image in sorted((tiny_demo / c).iterdir())[18 * half : 18 * (half + 1)]:
                shutil.copy(image, root / sample / image.name)
                objects.append((image.name, c, "validated"))
        for c, image in demo_images(extra, per_class=1 + half):
            shutil.copy(image, root / sample / f"x_{image.name}")
            objects.append((f"x_{image.name}", c, "predicted" if half else "dubious"))
        ecotaxa_export(root / sample / f"ecotaxa_{sample}.tsv", objects, type_row=bool(half), sample=sample)
    shutil.rmtree(extra)
    return root


@pytest.mark.slow
def test_the_whole_pipeline_on_an_ecotaxa_export_equals_the_folder_layout(tiny_pipeline, tiny_demo, tmp_path):
    import run_pipeline

    folder_cfg = tiny_pipeline[0]
    root = ecotaxa_copy_of_the_demo(tiny_demo, tmp_path / "export")
    argv = [
        f"--data_root={str(root)!r}",
        f"--output_dir={str(tmp_path / 'out')!r}",
        *FAST,
        f"--labels_file={str(root)!r}",
    ]
    run_pipeline.main(argv)
    cfg = config.load_config(argv)
    split, folder_split = splitting.read_split_file(cfg), splitting.read_split_file(folder_cfg)
    pd.testing.assert_frame_equal(by_name(split).sort_index(), by_name(folder_split).sort_index())
    metrics = json.loads(artifacts.out_path(cfg, "results", "test_metrics.json").read_text())
    folder_metrics = json.loads(artifacts.out_path(folder_cfg, "results", "test_metrics.json").read_text())
    assert metrics["accuracy"] == folder_metrics["accuracy"] and metrics["n_test"] == folder_metrics["n_test"]
    assert metrics["per_class"] == folder_metrics["per_class"]
    sources = pd.read_csv(artifacts.out_path(cfg, "results", "label_sources.csv"), dtype={"sha256": str})
    counts = {
        (s.split("/")[-1], status): (n, used)
        for s, status, n, used in sources[["source", "status", "rows", "used"]].itertuples(index=False)
    }
    assert counts == {
        ("ecotaxa_sample_a.tsv", "validated"): (162, 162),
        ("ecotaxa_sample_a.tsv", "dubious"): (6, 0),
        ("ecotaxa_sample_b.tsv", "validated"): (162, 162),
        ("ecotaxa_sample_b.tsv", "predicted"): (12, 0),
    }
    page = artifacts.out_path(cfg, "results", "report.html").read_text()
    for source, digest in zip(sources["source"], sources["sha256"]):
        assert source in page and digest in page  # the report says where the labels came from


@pytest.mark.slow
def test_torchrun_resume_and_evaluate_run_on_a_table_of_images_outside_data_root(tiny_demo, tmp_path):
    import os
    import subprocess
    import sys

    import evaluate
    import train

    table = flat_copy(tiny_demo, tmp_path / "elsewhere", per_class=12)
    (tmp_path / "root").mkdir()  # no class folder: every label comes from the table
    argv = [
        f"--data_root={str(tmp_path / 'root')!r}",
        f"--output_dir={str(tmp_path / 'out')!r}",
        *FAST,
        f"--labels_file={str(table)!r}",
        "--min_images_per_class=5",
    ]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py"]
    ranks = subprocess.run(
        [*torchrun, *argv, "--epochs=2"],
        cwd=lab.ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=600,
    )
    assert ranks.returncode == 0, ranks.stderr[-3000:]
    assert "shared by 2 ranks" in ranks.stdout
    split = splitting.read_split_file(config.load_config(argv))
    assert split["path"].str.startswith(str(tmp_path / "elsewhere" / "images") + "/").all()  # absolute paths
    history = train.main(argv + ["--resume=True", "--epochs=3"])
    assert [h["epoch"] for h in history] == [1, 2, 3]
    without = [a for a in argv if not a.startswith(("--labels_file=", "--min_images_per_class="))]
    assert evaluate.main(without)["n_test"] == 6 * 2  # the checkpoint's labels_file and class sizes


def corrected_export(ecotaxa_tsv, sample, truth, renames):
    """What a taxonomist's validation in EcoTaxa returns for predict.py's table: two objects in three validated
    under their true category (some in EcoTaxa's names), the first as detritus, the others left predicted with
    the model's guess."""
    frame = pd.read_csv(ecotaxa_tsv, sep="\t", dtype=str, keep_default_na=False).iloc[1:]  # the [t]/[f] row
    objects, validated = [], {}
    for i, (image, guess) in enumerate(zip(frame["img_file_name"], frame["object_annotation_category"])):
        if i % 3 != 2:
            category = "detritus" if i == 0 else renames.get(truth(image), truth(image))
            objects.append((image, category, "validated"))
            if i:
                validated[str(sample / image)] = truth(image)
        else:
            objects.append((image, guess, "predicted"))
    return ecotaxa_export(sample / "ecotaxa_export.tsv", objects, type_row=False), validated


@pytest.mark.slow
def test_the_round_trip_train_predict_validate_in_ecotaxa_and_retrain(novelty_ready, tmp_path):
    import evaluate
    import predict
    import train

    ready_cfg, ready_argv = novelty_ready
    out = tmp_path / "out"
    shutil.copytree(artifacts.resolve(ready_cfg.output_dir), out)  # other tests read novelty_ready's folder
    argv = [a for a in ready_argv if not a.startswith("--output_dir=")] + [f"--output_dir={str(out)!r}"]
    cfg = config.load_config(argv)
    before = splitting.read_split_file(cfg)
    sample = demo_data.generate(tmp_path / "cruise42", {c: 6 for c in SEEN}, seed=7)  # new images, same taxa
    predict.main(argv + [f"--predict_dir={str(sample)!r}", "--ecotaxa=True"])
    renames = {"Neoceratium": "Neoceratium<Ceratiaceae", "Odontella": "Odontella<Eupodiscaceae"}
    export, validated = corrected_export(
        artifacts.out_path(cfg, "results", "ecotaxa_predictions.tsv"),
        sample,
        lambda image: image.split("/")[0],
        renames,
    )
    (tmp_path / "map.tsv").write_text(
        "category\tclass\n" + "".join(f"{e}\t{c}\n" for c, e in renames.items()) + "Tripos<Ceratiaceae\tNeoceratium\n"
    )
    retrain = argv + [f"--labels_file={str(export)!r}", f"--labels_map={str(tmp_path / 'map.tsv')!r}"]
    train.main(retrain)
    after = splitting.read_split_file(cfg)
    joined = after[after["round"] == "1"]
    assert dict(zip(joined["path"], joined["label"])) == validated  # the validated images and only they
    old = after[after["round"] == "0"][["path", "label", "split"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(old, before[["path", "label", "split"]])  # old rows, old test images kept
    assert {"Neoceratium", "Odontella"} <= set(joined["label"]) and set(joined["split"]) >= {"train", "test"}
    unused = pd.read_csv(artifacts.out_path(cfg, "results", "unused_labels.csv")).set_index("category")
    assert unused.loc["detritus", "rows"] == 1 and unused.loc["detritus", "reason"] == label_tables.NOT_IN_MAP
    metrics = evaluate.main(argv)  # the checkpoint's labels settings: nothing to repeat
    first_draw = int((before["split"] == "test").sum())
    assert metrics["by_round"]["0"]["n_test"] == first_draw
    assert metrics["by_round"]["1"]["n_test"] == int((joined["split"] == "test").sum())
    assert metrics["n_test"] == first_draw + metrics["by_round"]["1"]["n_test"]
    assert np.isclose(
        sum(m["n_test"] * m["accuracy"] for m in metrics["by_round"].values()), metrics["accuracy"] * metrics["n_test"]
    )
