"""The report's cruise section: predict.py's samples x taxa table (results/sample_abundances.csv) as a bokeh heatmap
of the corrected shares, with each cell's 95 % interval, count and concentration on hover, the samples along time
or station when the metadata has one, and the taxa with the highest concentrations. The page already carries
bokeh's JavaScript (the interactive map's), so the chart adds only its data: the report stays one file.

Reads results/sample_abundances.csv and results/sample_summary.csv (of the run's predict set); writes nothing.
"""

import html

import numpy as np
import pandas as pd

from lab import artifacts, report_tables

TIME_NAMES = ("datetime", "date", "time", "timestamp", "date_time", "sampling_date")  # a time axis, first found
PLACE_NAMES = ("station", "site", "depth", "depth_m")  # else a station axis: ordered by these, in this order
TOP_TAXA = 10
TEXT = ("sample", "class", "method", "calibration", "note")


def axis_order(summary):
    """(the samples in axis order, what orders them: 'time (date)', 'station', or 'the run's order'): by the first
    time column that parses as dates, else by the station columns, else as predict.py listed them."""
    columns = {c.lower(): c for c in summary.columns}
    for name in TIME_NAMES:
        if name in columns:
            when = pd.to_datetime(summary[columns[name]], errors="coerce", format="mixed")
            if when.notna().any():
                order = summary.assign(_when=when).sort_values("_when", kind="stable", na_position="last")
                return list(order["sample"]), f"time ({columns[name]})"
    places = [columns[n] for n in PLACE_NAMES if n in columns]
    if places:
        order = summary.sort_values(places, kind="stable", key=numbers_then_text)
        return list(order["sample"]), "station (" + ", ".join(places) + ")"
    return list(summary["sample"]), "the run's order"


def numbers_then_text(column):
    """A sort key for a station or depth column: numbers in numeric order, then text (S3, surface) in text order;
    never a number compared with a text."""
    numbers = pd.to_numeric(column, errors="coerce")
    return pd.Series(
        [(0, n, "") if pd.notna(n) else (1, 0.0, str(v)) for n, v in zip(numbers, column)], index=column.index
    )


def heatmap(table, order):
    """The bokeh figure: one cell per (sample, seen taxon), coloured by the corrected share, the interval, count
    and concentration on hover."""
    from bokeh.models import ColorBar, HoverTool, LinearColorMapper
    from bokeh.palettes import Blues256
    from bokeh.plotting import figure

    seen = table[~table["possibly_new"].astype(bool)].copy()
    seen["x"] = seen["sample"].map(artifacts.printable)
    seen["y"] = seen["class"].astype(str)
    for column in ("proportion", "proportion_low", "proportion_high", "count", "concentration_per_l"):
        seen[column] = pd.to_numeric(seen[column], errors="coerce")
    seen["share"] = seen.apply(
        lambda r: f"{r['proportion']:.3f} ({r['proportion_low']:.3f} to {r['proportion_high']:.3f})", axis=1
    )
    seen["per_litre"] = seen.apply(
        lambda r: (
            f"{r['concentration_per_l']:.4g} ({r['concentration_per_l_low']:.4g} to "
            f"{r['concentration_per_l_high']:.4g})"
            if np.isfinite(r["concentration_per_l"])
            else "no volume"
        ),
        axis=1,
    )
    x_range = [artifacts.printable(s) for s in order if s in set(seen["sample"])]
    y_range = list(dict.fromkeys(seen["y"]))[::-1]
    mapper = LinearColorMapper(palette=Blues256[::-1], low=0, high=max(float(seen["proportion"].max()), 1e-9))
    plot = figure(
        x_range=x_range,
        y_range=y_range,
        width=max(500, min(1150, 28 * len(x_range) + 250)),
        height=max(250, 26 * len(y_range) + 160),
        toolbar_location="right",
        tools="pan,box_zoom,reset,save",
    )
    source = seen[["x", "y", "proportion", "share", "count", "per_litre", "method"]]
    plot.rect("x", "y", 1, 1, source=source, fill_color={"field": "proportion", "transform": mapper}, line_color=None)
    plot.add_tools(
        HoverTool(
            tooltips=[
                ("sample", "@x"),
                ("taxon", "@y"),
                ("corrected share (95 % interval)", "@share"),
                ("images", "@count{0.0}"),
                ("per litre (95 % interval)", "@per_litre"),
                ("method", "@method"),
            ]
        )
    )
    plot.add_layout(ColorBar(color_mapper=mapper, title="share"), "right")
    plot.xaxis.major_label_orientation = 1.0
    return plot


def top_taxa(table):
    """The taxa with the highest mean concentration per litre over the samples with a volume (or, with none, the
    highest mean share), possibly new images included."""
    by = "concentration_per_l" if table["concentration_per_l"].notna().any() else "proportion"
    frame = table.assign(**{by: pd.to_numeric(table[by], errors="coerce")})
    means = frame.groupby("class", sort=False)[by].agg(["mean", "max"]).sort_values("mean", ascending=False)
    means = means.rename(columns={"mean": f"mean {by}", "max": f"highest {by}"}).reset_index()
    return means.head(TOP_TAXA), by


def cruise_section(results):
    """(HTML before the chart, the bokeh chart, HTML after it) of the cruise; the chart is embedded by the caller."""
    table = artifacts.read_csv(results / "sample_abundances.csv", TEXT)
    summary = artifacts.read_csv(results / "sample_summary.csv", TEXT)
    order, by = axis_order(summary)
    without = summary[summary["read"] == 0]
    top, measure = top_taxa(table)
    intro = (
        f"<h2>A cruise: {int((summary['read'] > 0).sum())} samples</h2><p>Each taxon's corrected share of each "
        f"sample's images not flagged possibly new (one calibration for the whole run, each sample bootstrapped "
        f"on its own images); hover a cell for its 95 % interval, its count and its concentration per litre "
        f"(count over the sample's volume_l: the interval leaves out the Poisson counting error). Samples along "
        f"{html.escape(by)}. {len(without)} sample(s) have no rows (results/sample_summary.csv says why). Cite "
        f"<code>results/sample_abundances.csv</code> (docs/cruise.md).</p>"
    )
    after = (
        f"<h3>The top taxa by {'concentration per litre' if measure != 'proportion' else 'share (no volume given)'}"
        f"</h3>"
        + report_tables.table(top, floats="{:.4g}")
        + "<h3>The samples</h3>"
        + report_tables.short_table(
            summary.assign(sample=summary["sample"].map(artifacts.printable)), "sample_summary.csv"
        )
    )
    return intro, heatmap(table, order), after


def cruise_html(results):
    """The whole section as HTML: the chart's div and script from bokeh's components (BokehJS is the page's)."""
    from bokeh.embed import components

    intro, plot, after = cruise_section(results)
    script, div = components(plot)
    return intro + div + script + after
