"""One HTML page with every result of the pipeline, readable in a browser, offline, as one file.

Reads checkpoints/best.pth (train.py), the artifacts of all earlier scripts (results/*.csv, results/*.json,
figs/*.png) as the output sets their manifests prove whole (results/<set>_manifest.json, see lab/manifest.py),
and the images of the 2-D map's points for their thumbnails; the novelty results, predict.py's results
(abundances.csv too) and the label audit's (results/label_issues.csv, figs/label_issues.png: audit.py) when they
exist. Writes
results/report.html: one self-contained file (figures, thumbnails and the map's JavaScript inlined, no server, no
network), so it can be mailed or opened from a USB stick. Its interactive 2-D map shows each point's image, class,
split, file name and prediction on hover (see interactive_map.py).

One run, one story: the page describes the run of the checkpoint (its split, its classes, its data root), and
everything it shows or joins together is proven to come from that run by the digests the manifests record, never
by file names or the current settings (docs/provenance.md lists every join). A section of another model is refused
with the commands to run again; a split or a sample of another run is left out, with the command that brings it.

The page's parts live in lab/: report_run.py (what run it describes, and the proof), report_sections.py (sections
1 to 7), report_optional.py (novelty, predictions, abundances, the label audit), report_tables.py (tables,
inlined figures, style) and report_charts.py (the charts it draws).
"""

import sys

from lab import (
    artifacts,
    config,
    interactive_map,
    report_many,
    report_optional,
    report_run,
    report_sections,
    report_tables,
    runtime,
)


def build(cfg, explicit_root=None):
    """The page: sections 1 to 7, then the optional ones (numbered on from 8), around the interactive map."""
    run = report_run.the_run(cfg, explicit_root)
    print("[report] sections 1 to 4: data, training, test metrics, distances")
    results, figs = artifacts.out_path(cfg, "results"), artifacts.out_path(cfg, "figs")
    sections = report_sections
    before = sections.first_sections(cfg, results, figs, run) + [sections.distances_section(results, figs)]
    print("[report] 5: the interactive map")
    intro, layout, static_map = sections.map_section(cfg, results, figs, run)
    print("[report] 6 on: galleries, transfer learning and the optional sections")
    after = [static_map, sections.galleries_section(results, figs), sections.transfer_section(results, figs)]
    extra = report_optional.optional_sections(cfg, results, figs, run)
    after += [part.replace("<h2>", f"<h2>{8 + i}. ", 1) for i, part in enumerate(extra)]
    style = report_tables.STYLE
    if report_many.many(len(run.trained.ckpt["classes"])):  # sortable tables and the gallery picker
        style += report_many.STYLE
        after.append(report_many.SORT_SCRIPT)
    page = interactive_map.standalone_page(
        layout, "Plankton embedding lab", style, "".join(before + [intro]), "".join(after)
    )
    return artifacts.save_text(results / "report.html", page)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    cfg = config.load_config(argv, __doc__)
    config.print_settings(cfg)
    artifacts.ensure_output_dirs(cfg, ("results",))
    given = any(a.startswith("--data_root=") for a in argv)  # asked for on the command line: refused if not the same
    path = build(cfg, cfg.data_root if given else None)
    print(f"[report] {path} ({path.stat().st_size / 1e6:.1f} MB, one file: open it in any browser, offline)")
    return path


if __name__ == "__main__":
    runtime.run_main(lambda: main(sys.argv[1:]))
