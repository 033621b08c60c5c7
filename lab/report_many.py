"""The report's parts that change with the number of classes: past MANY classes (a research group's data set, 100+
classes and a long tail) the per-class metrics become one sortable table, worst classes first, in a scrolling box;
the galleries become a class picker that shows one class at a time (inlined as JPEG, to keep the page small); a
list of class names collapses under its count. Up to MANY classes the report is as it always was.

Reads the PNG files it inlines; writes nothing.
"""

import base64
import html
import io

import pandas as pd

from lab import artifacts, class_matrices, progress, report_tables

MANY = class_matrices.NUMBERED_UP_TO  # classes: past this many, the layout for many classes (as the figures')
MIN_SUPPORT_TO_RANK = class_matrices.MIN_SUPPORT_TO_RANK  # a class with fewer test images follows the ranked ones
GALLERY_JPEG_QUALITY = 70
GALLERY_MAX_SIDE = 800  # px: a picked gallery is read one at a time on a screen; 110 of them keep the page < 25 MB
# Sorting a table by a click on its header, in the page itself (no network): numbers as numbers, text as text.
SORT_SCRIPT = """<script>
function sortTable(th) {
  const table = th.closest("table"), body = table.tBodies[0], column = th.cellIndex;
  const ascending = th.dataset.order !== "asc";
  th.dataset.order = ascending ? "asc" : "desc";
  const key = (row) => { const text = row.cells[column].innerText; const n = parseFloat(text);
                         return isNaN(n) ? text.toLowerCase() : n; };
  const rows = [...body.rows].sort((a, b) => (key(a) > key(b) ? 1 : key(a) < key(b) ? -1 : 0) * (ascending ? 1 : -1));
  rows.forEach((row) => body.appendChild(row));
}
function showGallery(select) {
  document.querySelectorAll(".gallery").forEach((g) => { g.style.display = g.id === select.value ? "" : "none"; });
}
</script>"""
STYLE = (
    ".scroll{max-height:480px;overflow-y:auto;border:1px solid #ddd;display:inline-block}"
    ".scroll th{position:sticky;top:0;background:#fff;cursor:pointer}"
)


def many(n_classes):
    return n_classes > MANY


def names_html(names):
    """Class names for the page: all of them up to MANY; past that their count, opening to the whole list."""
    escaped = html.escape(", ".join(names))
    if not many(len(names)):
        return escaped
    return f"<details style='display:inline'><summary>{len(names)} classes (show)</summary>{escaped}</details>"


def ranked(per_class):
    """The per-class metrics, worst F1 first among classes with at least MIN_SUPPORT_TO_RANK test images, then the
    classes with fewer (too few test images to rank), each group by F1."""
    per_class = per_class.copy()
    per_class["ranked"] = per_class["support"] >= MIN_SUPPORT_TO_RANK
    order = per_class.sort_values(["ranked", "f1", "class"], ascending=[False, True, True], kind="stable")
    return order.drop(columns="ranked").reset_index(drop=True)


def sortable_table(frame, caption):
    """A table whose columns sort on a click of their header, in a scrolling box with the header kept in sight."""
    head = "".join(f'<th onclick="sortTable(this)" title="sort">{html.escape(str(c))}</th>' for c in frame.columns)
    rows = []
    for record in frame.itertuples(index=False):
        cells = "".join(
            f"<td>{v:.3f}</td>" if isinstance(v, float) else f"<td>{html.escape(str(v))}</td>" for v in record
        )
        rows.append(f"<tr>{cells}</tr>")
    return (
        f'<p class="note">{html.escape(caption)}</p><div class="scroll"><table class="t"><thead><tr>{head}</tr>'
        f"</thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def per_class_html(results, metrics):
    """3. Test set's per-class table: as always up to MANY classes; past that results/per_class_metrics.csv as a
    sortable table, worst first, support beside every number."""
    per_class = pd.DataFrame([{"class": c, **m} for c, m in metrics["per_class"].items()])
    if not many(len(per_class)):
        return report_tables.table(per_class)
    path = results / "per_class_metrics.csv"
    if path.exists():
        per_class = artifacts.read_csv(path, ("class", "top_confusion"))
    else:  # an evaluate.py from before the file: the JSON's numbers
        per_class = per_class[["class", "precision", "recall", "f1", "support"]]
    few = int((per_class["support"] < MIN_SUPPORT_TO_RANK).sum())
    caption = (
        f"Per class, worst F1 first among the classes with at least {MIN_SUPPORT_TO_RANK} test images"
        + (f"; the {few} with fewer follow (too few to rank)" if few else "")
        + ". Click a column's name to sort by it. All numbers: results/per_class_metrics.csv."
    )
    return sortable_table(ranked(per_class).fillna(""), caption)


def headline_html(metrics):
    """The headline metrics together, and over the taxa alone when some classes are catch-alls."""
    line = (
        f"<p>Accuracy {100 * metrics['accuracy']:.2f} %, balanced accuracy {100 * metrics['balanced_accuracy']:.2f} %, "
        f"macro F1 {metrics['macro_f1']:.3f} on {metrics['n_test']} test images.</p>"
    )
    taxa = metrics.get("without_catch_all")
    if taxa:
        line += (
            f"<p>Without the {len(taxa['catch_all_classes'])} catch-all classes "
            f"({html.escape(', '.join(taxa['catch_all_classes']))}), as the ESSD 2026 benchmark also reports: accuracy "
            f"{100 * taxa['accuracy']:.2f} %, balanced accuracy {100 * taxa['balanced_accuracy']:.2f} %, macro F1 "
            f"{taxa['macro_f1']:.3f} on {taxa['n_test']} test images.</p>"
        )
    return line


def jpeg_figure(path, caption, made_by, element_id, hidden):
    """A PNG figure inlined as JPEG, at most GALLERY_MAX_SIDE px (a photo gallery is several times smaller so), shown
    or hidden."""
    from PIL import Image

    with Image.open(artifacts.require(path, made_by, "figure")) as image:
        image = image.convert("RGB")
        image.thumbnail((GALLERY_MAX_SIDE, GALLERY_MAX_SIDE), Image.Resampling.LANCZOS)  # never enlarged
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=GALLERY_JPEG_QUALITY, optimize=True)  # the same pixels, fewer bytes
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    style = ' style="display:none"' if hidden else ""
    return (
        f'<figure class="gallery" id="{html.escape(element_id)}"{style}><img src="data:image/jpeg;base64,{data}" '
        f'alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}</figcaption></figure>'
    )


def gallery_picker(figs, tiles):
    """6. Galleries past MANY classes: a list to pick one class's gallery from, the first one shown."""
    options, figures = [], []
    for i, (cls, set_name, figure) in progress.progress(enumerate(tiles), len(tiles), "galleries", "figures"):
        element_id = f"gallery-{i}"
        options.append(f'<option value="{element_id}">{html.escape(f"{cls} ({set_name})")}</option>')
        figures.append(jpeg_figure(figs / figure, f"{cls} ({set_name})", "dimensionality_reduction.py", element_id, i))
    return (
        f'<p><label>Class: <select onchange="showGallery(this)">{"".join(options)}</select></label> '
        f'<span class="note">{len(options)} galleries; one shown at a time</span></p>' + "".join(figures)
    )
