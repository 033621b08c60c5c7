"""The report's interactive 2-D map: every mapped point with its image, in one HTML file that opens offline.

Turns the points of results/umap_coordinates.csv (plus the classifier's predictions, where there are any) into a
bokeh figure: pan and zoom, a tooltip with the point's thumbnail, class, split, file name and prediction (with the
novelty score and the possibly-new flag for predict.py's images), a legend whose entries hide or show a class, and
buttons that show the splits together or apart. `standalone_page` writes it into one HTML page with bokeh's
JavaScript and every thumbnail inlined: no server, no network, no files beside it.
Where the label audit (audit.py) has run, the tooltip of a labelled image also shows its label quality.
Reads the image files the points name (for the thumbnails); writes nothing itself.
"""

import base64
import html
import io
from pathlib import PurePath

import numpy as np
import pandas as pd

from lab import artifacts, image_io, plotting, progress

THUMBNAIL_PX = 64
# Grey thumbnails stored grey, with optimised Huffman tables (the same pixels): 0.73 kB of base64 a thumbnail on ndsb112
# instead of 1.35 kB in RGB with the default tables (300 images); 7,500 of them are half the report at 110 classes.
THUMBNAIL_JPEG_QUALITY = 80
SPLIT_ORDER = ("train", "test", "unseen", "predict")
SPLIT_MARKERS = {"train": "circle", "test": "triangle", "unseen": "square", "predict": "diamond"}
SPLIT_SYMBOLS = {"train": "\u25cf", "test": "\u25b2", "unseen": "\u25a0", "predict": "\u25c6"}
NO_LABEL = "no label"
AUDITED_SPLITS = ("train", "val", "test")  # the splits whose labels audit.py scores
TOOLTIP = """
<div style="display:flex;gap:8px;align-items:flex-start;max-width:340px;font:12px sans-serif">
  <img src="@thumbnail" width="64" height="64" alt="@file" style="border:1px solid #bbb;flex:none">
  <div>
    <div style="font-size:13px"><b>@label</b> &middot; @split</div>
    <div style="color:#555;word-break:break-all">@file</div>
    <div>@{prediction}{safe}</div>
    <div>@{audit}{safe}</div>
  </div>
</div>
"""


def thumbnail_uri(path, size=THUMBNAIL_PX):
    """A small JPEG of the image as a data: URI, or "" when the file can no longer be read."""
    try:
        image = image_io.letterbox(image_io.load_rgb(path), size)
    except Exception:  # a file moved or damaged since it was embedded: the point stays, without its picture
        return ""
    pixels = np.asarray(image)
    if pixels.ndim == 3 and (pixels == pixels[..., :1]).all():
        image = image.convert("L")  # a grey image (most plankton cameras): no colour channels to store
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=THUMBNAIL_JPEG_QUALITY, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def rows_by_path(paths, table):
    """Row of `table` for each path in `paths`, or None: an exact match of the absolute path. The caller proves by
    the sets' digests (report.py) that both come from the same run and sample, and makes the table's paths, which
    are relative to that run's own root (data_root, predict_dir), absolute; a file name alone never joins them."""
    row_of = {p: i for i, p in enumerate(table["path"])}
    return [row_of.get(p) for p in paths]


def prediction_text(row):
    if pd.isna(row.get("predicted")):
        return ""
    text = f"predicted <b>{html.escape(str(row['predicted']))}</b>"  # shown as HTML: names are escaped
    if pd.notna(row.get("probability")):
        text += f", p = {row['probability']:.2f}"
    if row.get("split") == "test" and pd.notna(row.get("label")):
        text += " \u2713" if row["predicted"] == row["label"] else " \u2717"
    if pd.notna(row.get("novelty")):  # predict.py's images: the ones flagged possibly new are to be looked at first
        flag = "<b>possibly new</b>" if row.get("possibly_new") is True else "not flagged as new"
        text += (
            f"<br>{flag}: novelty {html.escape(str(row.get('novelty_score')))} = {row['novelty']:.3g} "
            f"({'above' if row.get('possibly_new') is True else 'at or below'} its validation threshold)"
        )
    return text


PREDICTION_COLUMNS = ("predicted", "probability", "novelty", "novelty_score", "possibly_new")


def attach_predictions(points, split, table):
    """Copy a predictions table's predicted class, probability and, for predict.py's images, novelty score and
    possibly_new flag onto the points of one split, row by row on the exact (absolute) path."""
    if table is None or table.empty:
        return points
    table = table.copy()
    score = next((c for c in table.columns if c.startswith("novelty_")), None)
    if score is not None:
        table["novelty"], table["novelty_score"] = table[score], score[len("novelty_") :]
    if "possibly_new" in table:
        table["possibly_new"] = table["possibly_new"].map(lambda v: str(v).strip().lower() in ("true", "1"))
    chosen = np.flatnonzero(points["split"].to_numpy() == split)
    matches = rows_by_path(points["path"].iloc[chosen], table)
    for column in PREDICTION_COLUMNS:
        if column in table.columns:
            values = [table[column].iloc[m] if m is not None else None for m in matches]
            points.loc[points.index[chosen], column] = pd.Series(values, index=points.index[chosen], dtype=object)
    return points


def attach_label_quality(points, issues):
    """The label audit's text (results/label_issues.csv, audit.py) on the labelled points it scored: the
    label-quality score, and for a label cleanlab flags, the class the image looks like."""
    points["audit"] = ""
    if issues is None or issues.empty:
        return points
    chosen = np.flatnonzero(points["split"].isin(AUDITED_SPLITS).to_numpy())
    matches = rows_by_path(points["path"].iloc[chosen], issues)  # absolute paths, as the others
    quality, flagged, suggested = (issues[c].to_numpy() for c in ("label_quality", "flagged", "suggested_label"))
    texts = [
        ""
        if m is None
        else f"label quality {quality[m]:.2f}"
        + (f" &middot; <b>label suspect</b>: looks like {html.escape(str(suggested[m]))}" if flagged[m] else "")
        for m in matches
    ]
    points.loc[points.index[chosen], "audit"] = pd.Series(texts, index=points.index[chosen], dtype=object)
    return points


def map_points(coords, test_predictions=None, predictions=None, issues=None):
    """One row per mapped point: x, y, split, label, colour_class, file, prediction, audit (label quality, with
    issues: the label audit's table), thumbnail (data: URI). The tables' paths are absolute (see rows_by_path); a
    thumbnail is read from coords' `image` column where it has one (the same files under another root), else from
    `path`."""
    points = coords[["x", "y", "split", "label", "path"]].copy().reset_index(drop=True)
    images = coords["image"].to_list() if "image" in coords else points["path"].to_list()
    points["label"] = points["label"].astype(object).where(points["label"].notna() & (points["label"] != ""), None)
    for column in PREDICTION_COLUMNS:
        points[column] = None
    points = attach_predictions(points, "test", test_predictions)
    points = attach_predictions(points, "predict", predictions)
    points = attach_label_quality(points, issues)
    # Unlabelled images (predict) take the colour of the class they were predicted as.
    points["colour_class"] = points["label"].where(points["split"] != "predict", points["predicted"])
    points["colour_class"] = points["colour_class"].fillna(points["label"]).fillna(NO_LABEL)
    points["label"] = points["label"].fillna(NO_LABEL)
    points["prediction"] = [prediction_text(row) for row in points.to_dict("records")]
    points["file"] = [artifacts.printable(PurePath(str(p)).name) for p in points["path"]]  # shown: never raw bytes
    points["thumbnail"] = [thumbnail_uri(p) for p in progress.progress(images, len(images), "map thumbnails", "images")]
    rank = {s: i for i, s in enumerate(SPLIT_ORDER)}
    order = points["split"].map(rank).fillna(len(rank)).to_numpy()
    return points.iloc[np.argsort(order, kind="stable")].reset_index(drop=True)  # test drawn over train


def class_order(points):
    """Seen classes in the order the static map lists them (train first), then the unseen ones, then the rest."""
    names = []
    for split in SPLIT_ORDER + tuple(sorted(set(points["split"]) - set(SPLIT_ORDER))):
        names += list(dict.fromkeys(points.loc[points["split"] == split, "colour_class"]))
    return list(dict.fromkeys(names))


# Shows the splits whose buttons are on, and lets the hover layer see only points that are shown: of a shown split
# and of a class the legend has not hidden.
SHOW_POINTS = """
    const shown = new Set(toggle.active.map((i) => splits[i]))
    const visible = new Set(class_renderers.filter((r) => r.visible).map((r) => r.name))
    const {split, colour_class} = source.data
    split_filter.booleans = split.map((s) => shown.has(s))
    hover_filter.booleans = split.map((s, i) => shown.has(s) && visible.has(colour_class[i]))
    source.change.emit()
"""
# Points overlap in dense clusters: the tooltip shows the one nearest the pointer, not a column of all of them.
NEAREST_ONLY = """
export default (args, tool, {vars}) => {
    const {glyph_view: glyph, indices, sx, sy, snap_sx, snap_sy} = vars
    let nearest = Infinity
    for (const i of indices)
        nearest = Math.min(nearest, (glyph.sx[i] - sx) ** 2 + (glyph.sy[i] - sy) ** 2)
    return (snap_sx - sx) ** 2 + (snap_sy - sy) ** 2 <= nearest
}
"""
# The class filter: a class is shown when its name holds the typed text (any case); the legend's clicks still work.
FILTER_CLASSES = """
const query = box.value_input.trim().toLowerCase()
for (const r of class_renderers)
    r.visible = query === "" || r.name.toLowerCase().includes(query)
"""
LEGEND_BESIDE_UP_TO = 30  # classes: up to this many the legend is one column beside the map; past it, below it,
# in columns, with a box to find a class
LEGEND_COLUMNS = 4
MAP_COLUMNS = ["x", "y", "split", "label", "colour_class", "file", "prediction", "audit", "thumbnail"]


def splits_present(points):
    splits = [s for s in SPLIT_ORDER if s in set(points["split"])]
    return splits + sorted(set(points["split"]) - set(splits))


def legend_label(cls, points, splits):
    counts = points.loc[points["colour_class"] == cls, "split"].value_counts()
    return f"{cls} ({', '.join(f'{s} {counts[s]}' for s in splits if s in counts)})"


def build_map(points, method="umap", width=1100, height=700):
    """The bokeh layout: split buttons above a scatter plot with one legend entry (and renderer) per class.

    All renderers share one data source, so each thumbnail is stored once; an invisible layer on top of the
    class renderers carries the tooltip, so a point shows one tooltip whatever the number of classes under it.
    """
    from bokeh.layouts import column
    from bokeh.models import (
        BooleanFilter,
        CDSView,
        CheckboxButtonGroup,
        ColumnDataSource,
        CustomJS,
        Div,
        GroupFilter,
        HoverTool,
        Legend,
        LegendItem,
        TextInput,
    )
    from bokeh.plotting import figure
    from bokeh.transform import factor_mark

    splits = splits_present(points)
    source = ColumnDataSource(points[MAP_COLUMNS])
    split_filter, hover_filter = (BooleanFilter(booleans=[True] * len(points)) for _ in range(2))
    plot = figure(
        width=width,
        height=height,
        name="embedding_map",
        tools="pan,wheel_zoom,box_zoom,reset,save",
        active_scroll="wheel_zoom",
        title=f"{method.upper()} of the 128-d embeddings",
        match_aspect=True,
        toolbar_location="above",
    )
    plot.xaxis.visible = plot.yaxis.visible = False
    plot.grid.visible = False
    plot.scatter(points["x"], points["y"], size=3, color="#d9d9d9", level="underlay")  # all points, for orientation
    markers = factor_mark("split", [SPLIT_MARKERS.get(s, "circle") for s in splits], splits)
    palette = plotting.class_palette(len(class_order(points)))  # figs/umap_embeddings.png's colours
    class_renderers = [
        plot.scatter(
            "x",
            "y",
            source=source,
            marker=markers,
            size=8,
            fill_color=palette[i],
            line_color="white",
            line_width=0.5,
            fill_alpha=0.85,
            name=cls,
            view=CDSView(filter=GroupFilter(column_name="colour_class", group=cls) & split_filter),
        )
        for i, cls in enumerate(class_order(points))
    ]
    hover_layer = plot.scatter(
        "x",
        "y",
        source=source,
        view=CDSView(filter=hover_filter),
        marker=markers,
        size=8,
        fill_alpha=0,
        line_alpha=0,
        hover_fill_alpha=0,
        hover_line_alpha=1,
        hover_line_color="black",
        hover_line_width=2,
        name="hover_layer",
    )
    plot.add_tools(
        HoverTool(
            renderers=[hover_layer],
            tooltips=TOOLTIP,
            point_policy="snap_to_data",
            limit=1,
            filters={"@x": CustomJS(code=NEAREST_ONLY)},
        )
    )
    many = len(class_renderers) > LEGEND_BESIDE_UP_TO
    plot.add_layout(
        Legend(
            items=[LegendItem(label=legend_label(r.name, points, splits), renderers=[r]) for r in class_renderers],
            click_policy="hide",
            title="class (click to hide or show)",
            label_text_font_size="8pt" if many else "9pt",
            glyph_height=14,
            spacing=1,
            ncols=LEGEND_COLUMNS if many else 1,
        ),
        "below" if many else "right",
    )
    if many:  # the legend's rows below the plot
        plot.height = height + 16 * -(-len(class_renderers) // LEGEND_COLUMNS) + 40
    toggle = CheckboxButtonGroup(
        labels=[f"{SPLIT_SYMBOLS.get(s, '')} {s} ({(points['split'] == s).sum()})".strip() for s in splits],
        active=list(range(len(splits))),
        button_type="primary",
        name="split_toggle",
    )
    show_points = CustomJS(
        args={
            "toggle": toggle,
            "splits": splits,
            "class_renderers": class_renderers,
            "source": source,
            "split_filter": split_filter,
            "hover_filter": hover_filter,
        },
        code=SHOW_POINTS,
    )
    toggle.js_on_change("active", show_points)
    for renderer in class_renderers:
        renderer.js_on_change("visible", show_points)
    help_text = Div(
        text="Splits shown (click to show together or apart); grey dots are all mapped points, kept for "
        "orientation. Drag to pan, scroll to zoom, hover a point for its image.",
        styles={"font-size": "13px", "color": "#444"},
    )
    if not many:
        return column(help_text, toggle, plot)
    class_filter = TextInput(
        title=f"Find a class among {len(class_renderers)}: type part of its name to show only the classes that match "
        "(empty: all)",
        placeholder="e.g. copepod",
        name="class_filter",
        width=500,
    )
    class_filter.js_on_change(
        "value_input", CustomJS(args={"class_renderers": class_renderers, "box": class_filter}, code=FILTER_CLASSES)
    )
    return column(help_text, toggle, class_filter, plot)


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title | e }}</title>
<style>{{ style }}</style>
{{ bokeh_css }}
{{ bokeh_js }}
</head><body>
{{ before }}
{{ plot_div }}
{{ after }}
{{ plot_script }}
</body></html>
"""


def standalone_page(layout, title, style, before, after):
    """One HTML page: `before`, the bokeh layout, `after`; bokeh's JavaScript and the data inlined."""
    from bokeh.embed import file_html
    from bokeh.resources import INLINE
    from jinja2 import Template

    with progress.heartbeat("page: bokeh writing the map's data"):
        return file_html(
            layout,
            INLINE,
            title,
            template=Template(PAGE),
            template_variables={"style": style, "before": before, "after": after},
        )
