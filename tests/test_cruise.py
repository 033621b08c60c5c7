"""A cruise (predict.py with `samples`): which image is of which sample, bad metadata, per-sample counts and
concentrations against the images and volumes, empty and one-image samples, names that are path traps, one trunk
pass and one calibration in all, a resumed run byte-equal to an uninterrupted one, and the report's chart."""

import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

import evaluate
import lab
import predict
from lab import abundances, artifacts, checkpoint, config, cruise_abundances, report_cruise, samples, trunk_cache

NOT_UTF8 = os.fsdecode(b"st\xe9_latin1")  # a folder name as an old archive writes it: not valid UTF-8


def cfg_of(**settings):
    return SimpleNamespace(**{"samples": None, "sample_metadata": None, **settings})


def write(path, text):
    path.write_text(text)
    return str(path)


# --------------------------------------------------------------------------- samples and metadata, no model
def test_subfolders_are_the_samples_and_images_outside_them_are_listed(tmp_path):
    for folder in ("b_station", "a_station", "empty", ".hidden"):
        (tmp_path / folder).mkdir()
    images = ["a_station/x.png", "a_station/deep/y.png", "b_station/z.png", "top.png"]
    cruise = samples.assign(cfg_of(samples="subfolders"), tmp_path, images)
    assert cruise.samples == ["a_station", "b_station", "empty"]  # sorted, hidden folders not entered
    assert cruise.images == ["a_station/x.png", "a_station/deep/y.png", "b_station/z.png"]
    assert cruise.sample_of == ["a_station", "a_station", "b_station"]
    assert cruise.skipped == [{"path": "top.png", "reason": samples.OUTSIDE_SUBFOLDERS}]
    assert set(cruise.empty) == {"empty"}
    assert samples.assign(cfg_of(), tmp_path, images) is None  # samples=None: one sample, as before
    with pytest.raises(lab.LabError, match="puts none of the 1 image files"):
        samples.assign(cfg_of(samples="subfolders"), tmp_path, ["top.png"])


def test_a_table_names_the_samples_and_an_image_in_two_samples_is_refused(tmp_path):
    images = ["r/1.png", "r/2.png", "r/3.png", "4.png"]
    table = write(
        tmp_path / "s.tsv",
        "img_file_name\tsample_id\n[t]\t[t]\nr/3.png\t..\nr\\1.png\ta/b\nr/./2.png\t..\nr/9.png\ta/b\nr/1.png\ta/b\n",
    )  # an EcoTaxa export: its type row, sample_id, a Windows separator, a repeated row, a row of no file
    cruise = samples.assign(cfg_of(samples=table), tmp_path, images)
    assert cruise.samples == ["..", "a/b"] and cruise.images == ["r/2.png", "r/3.png", "r/1.png"]
    assert cruise.sample_of == ["..", "..", "a/b"]
    reasons = {s["path"]: s["reason"] for s in cruise.skipped}
    assert reasons == {"4.png": samples.OUTSIDE_TABLE, "r/9.png": samples.NOT_FOUND.format(line=6)}
    twice = write(tmp_path / "twice.csv", "path,sample\nr/1.png,A\nr/2.png,A\nr/1.png,B\n")
    with pytest.raises(lab.LabError, match=r"1 image\(s\) in two samples.*r/1.png; line\(s\) 2, 4\)"):
        samples.assign(cfg_of(samples=twice), tmp_path, images)
    with pytest.raises(lab.LabError, match="empty sample cell"):
        samples.assign(cfg_of(samples=write(tmp_path / "e.csv", "path,sample\nr/1.png,\n")), tmp_path, images)
    with pytest.raises(lab.LabError, match="no 'sample' column"):
        samples.assign(cfg_of(samples=write(tmp_path / "n.csv", "path,station\nr/1.png,A\n")), tmp_path, images)


def test_bad_metadata_stops_the_run_naming_the_rows(tmp_path):
    def metadata(text):
        return samples.read_metadata(cfg_of(sample_metadata=write(tmp_path / "m.csv", text)))

    good = metadata("sample,volume_l,station,date\nA,0.5,S1,2024-05-01\nB,,S2,2024-05-02\nNA,2e-3,S3,\n")
    assert list(good.columns) == ["sample", "volume_l", "station", "date"]
    assert good["sample"].tolist() == ["A", "B", "NA"]  # a sample called NA stays that name
    assert good["volume_l"].tolist()[0] == 0.5 and np.isnan(good["volume_l"][1]) and good["volume_l"][2] == 0.002
    with pytest.raises(lab.LabError, match=r"names 1 sample\(s\) twice or more \(A; lines 2, 4\)"):
        metadata("sample,volume_l\nA,1\nB,1\nA,2\n")
    for volume in ("-0.5", "0", "inf", "nan", "half a litre"):
        with pytest.raises(lab.LabError, match=rf"1 volume\(s\) that are not a positive number.*'B': '{volume}'.*3"):
            metadata(f"sample,volume_l\nA,1\nB,{volume}\n")
    assert metadata("sample_id,station\nA,S1\n")["volume_l"].isna().all()  # no volume column: no concentrations
    with pytest.raises(lab.LabError, match="sample_metadata=.* but samples=None"):
        config.load_config(["--sample_metadata=m.csv"])
    for column in ("method", "count", "note"):  # a metadata column named as a computed one is refused
        with pytest.raises(lab.LabError, match=f"named as columns the lab computes \\('{column}'\\)"):
            metadata(f"sample,volume_l,{column}\nA,1,x\n")
    computed = set(cruise_abundances.SAMPLE_COLUMNS + cruise_abundances.SUMMARY_COLUMNS) - {"sample", "volume_l"}
    assert computed <= samples.COMPUTED_COLUMNS


def test_progress_names_each_sample_once_its_last_image_is_through():
    said = []
    stream = SimpleNamespace(write=said.append, flush=lambda: None)
    progress = samples.SampleProgress(["a", "a", "a", "b", "c", "c"])
    for n in (2, 4, 6):
        progress.reached(n, stream)
    assert said == [
        "[predict] sample 1/3 a: 3 image files through the trunk\n",
        "[predict] sample 2/3 b: 1 image files through the trunk\n",
        "[predict] sample 3/3 c: 2 image files through the trunk\n",
    ]


def test_a_concentration_is_the_count_over_the_volume():
    frame = pd.DataFrame({"count": [10.0, 0.0], "count_low": [6.0, 0.0], "count_high": [15.0, 2.0]})
    done = cruise_abundances.with_concentrations(frame.copy(), 0.25)
    assert done["concentration_per_l"].tolist() == [40.0, 0.0] and done["concentration_per_l_high"].tolist() == [60, 8]
    assert cruise_abundances.with_concentrations(frame.copy(), np.nan)["concentration_per_l"].isna().all()
    keys = {cruise_abundances.stream_key(n) for n in ("..", "a/b", NOT_UTF8, "A")}
    assert len(keys) == 4  # every sample its own bootstrap stream


def test_the_axis_follows_time_or_station():
    summary = pd.DataFrame({"sample": ["x", "y", "z"], "date": ["2024-05-03", "2024-05-01", ""]})
    assert report_cruise.axis_order(summary) == (["y", "x", "z"], "time (date)")
    summary = pd.DataFrame({"sample": ["x", "y", "z"], "station": ["10", "9", "11"]})
    assert report_cruise.axis_order(summary) == (["y", "x", "z"], "station (station)")
    mixed = pd.DataFrame({"sample": ["a", "b", "c", "d"], "station": ["S3", "2", "surface", "1"]})
    assert report_cruise.axis_order(mixed)[0] == ["d", "b", "a", "c"]  # numbers in order, then text
    assert report_cruise.axis_order(summary[["sample"]])[0] == ["x", "y", "z"]


# --------------------------------------------------------------------------- a cruise through predict.py
@pytest.fixture
def cruise(tiny_demo, tmp_path):
    """cruise/<sample>/ of demo images: st01 (6 images of 3 classes), st02 (one image), empty, broken (one corrupt
    file), a folder whose name is not UTF-8 (2 images), an image at the top level; and its metadata table."""
    root = tmp_path / "cruise"
    classes = ("Retaria", "chainthin", "Odontella")
    sources = [sorted((tiny_demo / c).iterdir())[i] for i in range(2) for c in classes]
    layout = {"st01": sources, "st02": sources[:1], NOT_UTF8: sources[1:3], "empty": [], "broken": []}
    for name, files in layout.items():
        (root / name).mkdir(parents=True)
        for src in files:
            shutil.copy(src, root / name / src.name)
    (root / "broken" / "cut.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    shutil.copy(sources[4], root / "outside.png")
    metadata = write(
        tmp_path / "metadata.csv",
        "sample,volume_l,date,station\nst01,0.5,2024-05-02,S1\nst02,,2024-05-01,S2\nghost,1.0,2024-05-03,S3\n",
    )
    return root, metadata


def predict_cruise(argv, root, metadata, *more):
    return predict.main(
        argv + [f"--predict_dir={str(root)!r}", "--samples=subfolders", f"--sample_metadata={metadata!r}", *more]
    )


def results(cfg, name, text=("sample", "class", "path", "note", "predicted", "img_file_name", "sample_id")):
    return artifacts.read_csv(artifacts.out_path(cfg, "results", name), text)


def test_a_cruise_in_one_run(novelty_ready_copy, cruise, monkeypatch, capsys):
    cfg, argv = novelty_ready_copy
    root, metadata = cruise
    through_trunk, loads, fits = [], [], []
    real_outputs, real_load, real_fits = trunk_cache.image_outputs, checkpoint.load_trained, abundances.Fits.__init__
    monkeypatch.setattr(
        trunk_cache,
        "image_outputs",
        lambda m, paths, *a, **k: (through_trunk.extend(paths), real_outputs(m, paths, *a, **k))[1],
    )
    monkeypatch.setattr(checkpoint, "load_trained", lambda *a, **k: (loads.append(1), real_load(*a, **k))[1])
    monkeypatch.setattr(abundances.Fits, "__init__", lambda self, *a: (fits.append(1), real_fits(self, *a))[1])
    evaluate.main(argv)  # operating_points.csv: the accepted and to_review counts
    through_trunk.clear(), loads.clear()
    capsys.readouterr()
    predict_cruise(argv, root, metadata, "--abundance_bootstrap=20", "--ecotaxa=True")
    said = capsys.readouterr().out
    # the header counts the samples the per-sample progress will count ("sample i/4"), and the one without images
    assert "a cruise of 5 samples (" in said and "; 4 with image files, 1 without (named at the end)" in said
    assert "[predict] sample 4/4 " in said and "sample 5/" not in said

    # one model load, one trunk pass (every image of a sample once, nothing else), one calibration
    assigned = sorted(str(p) for p in root.rglob("*") if p.is_file() and p.parent != root)
    assert sorted(through_trunk) == assigned and len(loads) == 1 and len(fits) == 1
    predictions = results(cfg, "predictions.csv")
    by_sample = results(cfg, "sample_abundances.csv")
    summary = results(cfg, "sample_summary.csv").set_index("sample")
    read = predictions["sample"].value_counts()
    assert read.to_dict() == {"st01": 6, "st02": 1, NOT_UTF8: 2}
    # per-sample counts make each sample's images; CC's counts its images predicted and not flagged
    for name, rows in by_sample.groupby("sample"):
        assert rows["count"].sum() == pytest.approx(read[name]) and rows["cc_count"].sum() == read[name]
        images = predictions[predictions["sample"] == name]
        predicted = images[~images["possibly_new"]]["predicted"].value_counts()
        seen = rows[~rows["possibly_new"]].set_index("class")["cc_count"]
        assert seen.to_dict() == predicted.reindex(seen.index, fill_value=0).to_dict()
    st01 = by_sample[by_sample["sample"] == "st01"].reset_index(drop=True)
    # concentration = count / volume; a sample without volume has none; empty, broken and ghost samples no rows
    assert st01["concentration_per_l"].to_numpy() == pytest.approx(st01["count"].to_numpy() / 0.5)
    high = st01["count_high"].to_numpy() / 0.5  # NaN where the bootstrap found no interval (6 images): NaN there too
    assert st01["concentration_per_l_high"].to_numpy() == pytest.approx(high, nan_ok=True)
    assert (st01["date"] == "2024-05-02").all() and (st01["station"] == "S1").all()
    st02 = by_sample[by_sample["sample"] == "st02"]
    assert st02["concentration_per_l"].isna().all() and st02["count"].sum() == pytest.approx(1)
    for name, rows in by_sample.groupby("sample"):  # each image accepted or to review, as predictions.csv says
        images = predictions[predictions["sample"] == name]
        accepted = images["accepted"].astype(str).eq("True")
        assert rows["accepted"].sum() + rows["to_review"].sum() == read[name]
        assert rows["accepted"].sum() == accepted.sum()
        assert rows.loc[rows["possibly_new"], "accepted"].sum() == 0
    assert set(by_sample["sample"]) == {"st01", "st02", NOT_UTF8}
    assert summary.loc["empty", "note"] == "no image file in its folder" and summary.loc["empty", "images"] == 0
    assert summary.loc["broken", ["images", "read", "skipped"]].tolist() == [1, 0, 1]
    assert "could not be decoded" in summary.loc["broken", "note"]
    assert summary.loc["ghost", "note"].startswith("in sample_metadata") and summary.loc["ghost", "volume_l"] == 1
    assert summary.loc["st02", "note"] == cruise_abundances.NO_VOLUME and summary.loc[NOT_UTF8, "read"] == 2
    skipped = results(cfg, "predict_skipped.csv").set_index("path")["reason"]
    assert skipped["outside.png"] == samples.OUTSIDE_SUBFOLDERS and "broken/cut.jpg" in skipped
    # the pool: abundances.csv and prediction_counts.csv hold the whole cruise as one sample
    assert results(cfg, "abundances.csv")["count"].sum() == pytest.approx(9)
    assert results(cfg, "prediction_counts.csv")["images"].sum() == 9
    # EcoTaxa: each object's sample_id; the sample whose name is not UTF-8 is left out, as such file names are
    ecotaxa = pd.read_csv(artifacts.out_path(cfg, "results", "ecotaxa_predictions.tsv"), sep="\t", skiprows=[1])
    assert ecotaxa["sample_id"].value_counts().to_dict() == {"st01": 6, "st02": 1}
    assert len(results(cfg, "ecotaxa_left_out.csv")) == 2
    # the non-UTF-8 name is its own bytes in the CSV files, and no sample name became a file name
    assert b"st\xe9_latin1" in artifacts.out_path(cfg, "results", "sample_abundances.csv").read_bytes()
    written = {p.name for p in Path(artifacts.resolve(cfg.output_dir)).rglob("*")}
    assert not written & {"st01", "st02", "empty", "broken", "ghost", NOT_UTF8}


def test_each_sample_is_its_images_through_the_runs_one_calibration(novelty_ready_copy, cruise, monkeypatch):
    """The brute-force reference: a sample's table equals abundance_frame on its own images alone, with the run's
    calibration and the sample's own bootstrap stream; samples named `..` and `a/b` (a table) write no file."""
    cfg, argv = novelty_ready_copy
    root, _ = cruise
    kept = []
    real_fits = abundances.Fits.__init__
    monkeypatch.setattr(abundances.Fits, "__init__", lambda self, *a: (kept.append(self), real_fits(self, *a))[1])
    rows = [("..", f"st01/{p.name}") for p in sorted((root / "st01").iterdir())[:4]]
    rows.append(("a/b", f"st02/{next((root / 'st02').iterdir()).name}"))
    table = write(root.parent / "samples.csv", "sample,path\n" + "".join(f"{s},{p}\n" for s, p in rows))

    def beside():  # the cruise's files and what lies beside its folder (the output folder is one of them)
        return set(root.rglob("*")) | set(root.parent.iterdir())

    before = beside()
    predict.main(argv + [f"--predict_dir={str(root)!r}", f"--samples={table!r}", "--abundance_bootstrap=20"])
    assert beside() == before  # nothing written among or beside the images
    predictions, by_sample = results(cfg, "predictions.csv"), results(cfg, "sample_abundances.csv")
    assert predictions["sample"].value_counts().to_dict() == {"..": 4, "a/b": 1}
    assert not artifacts.out_path(cfg, "results", "..").with_name("a").exists()
    columns = [f"p_{c}" for c in cfg.seen_classes]
    for name in ("..", "a/b"):
        images = predictions[predictions["sample"] == name]
        probabilities = images[columns].to_numpy(np.float64)
        expected = abundances.abundance_frame(
            cfg.seen_classes,
            probabilities / probabilities.sum(1, keepdims=True),
            images["possibly_new"].to_numpy(bool),
            kept[0].calibration,
            cfg.abundance_method,
            20,
            cfg.seed,
            stream_key=cruise_abundances.stream_key(name),
        )
        got = by_sample[by_sample["sample"] == name].reset_index(drop=True)[list(abundances.COLUMNS)]
        pd.testing.assert_frame_equal(got, expected.astype(got.dtypes.to_dict()), check_exact=False, rtol=1e-9)


def test_a_cruise_resumed_after_a_crash_equals_an_uninterrupted_run(novelty_ready_copy, cruise, monkeypatch):
    cfg, argv = novelty_ready_copy
    root, metadata = cruise
    monkeypatch.setattr(predict, "CHUNK", 3)  # 10 image files: 4 chunks
    real_run_trunk, calls = trunk_cache.run_trunk, []

    def failing_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_run_trunk(*args, **kwargs)

    monkeypatch.setattr(trunk_cache, "run_trunk", failing_third)
    with pytest.raises(KeyboardInterrupt):
        predict_cruise(argv, root, metadata, "--abundance_bootstrap=20", "--ecotaxa=True")
    monkeypatch.setattr(trunk_cache, "run_trunk", real_run_trunk)
    predict_cruise(argv, root, metadata, "--abundance_bootstrap=20", "--ecotaxa=True")
    tables = sorted(
        p
        for p in artifacts.out_path(cfg, "results").iterdir()
        if p.suffix in (".csv", ".tsv") and "manifest" not in p.name
    )
    assert {"sample_abundances.csv", "sample_summary.csv", "ecotaxa_predictions.tsv"} <= {p.name for p in tables}
    resumed = {p.name: p.read_bytes() for p in tables if p.name in predict_outputs()}
    for done in artifacts.out_path(cfg, "cache").glob("predict_*.npz"):
        done.unlink()
    predict_cruise(argv, root, metadata, "--abundance_bootstrap=20", "--ecotaxa=True")
    for name, content in resumed.items():
        assert artifacts.out_path(cfg, "results", name).read_bytes() == content, name


def test_the_report_draws_the_samples_by_taxa_chart_along_time(tiny_pipeline, cruise, tmp_path):
    """The fresh-clone criterion, on the tiny demo: the whole pipeline, then a cruise, then the report."""
    import report

    cfg, argv, _ = tiny_pipeline
    out = tmp_path / "with-cruise"
    shutil.copytree(artifacts.resolve(cfg.output_dir), out)
    argv = [a for a in argv if not a.startswith("--output_dir=")] + [f"--output_dir={str(out)!r}"]
    root, metadata = cruise
    predict_cruise(argv, root, metadata, "--abundance_bootstrap=20")
    page = report.main(argv).read_text()
    section = page[page.index("A cruise: 3 samples") :]
    assert "Samples along time (date)" in section and "per litre (95 % interval)" in section
    assert section.count('class="bk-root"') + section.count("data-root-id") >= 1  # the bokeh chart's own div
    # the chart's data lists the samples in time order: st02 (May 1) before st01 (May 2)
    assert section.index('"st02"') < section.index('"st01"')
    assert "The top taxa by concentration per litre" in section


def predict_outputs():
    return {name for kind, name in predict.PREDICT_OUTPUTS if kind == "results"}


# --------------------------------------------------------------------------- fixtures
