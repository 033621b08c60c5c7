"""The report's HTML building blocks: tables (cut to TABLE_ROWS in the page), figures inlined as data: URIs so that
the page needs no file beside it, code, the page's style, and the free-text columns of the tables it reads back.
Reads the PNG files it inlines; writes nothing.
"""

import base64
import html

from lab import artifacts, prediction_table

# Free-text columns (class names, paths) of the optional tables, read back exactly as written.
PREDICTION_TEXT = (*prediction_table.TEXT_COLUMNS, "class")  # predictions.csv and prediction_counts.csv
NOVELTY_TEXT = ("score", "unseen_class", "group", "class")
AUDIT_TEXT = ("path", "split", "label", "suggested_label", "corrected_label")
TABLE_ROWS = 30  # longer optional tables are cut in the page; the CSV holds them all
STYLE = (
    "body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}img{max-width:100%;max-height:560px}"
    "figure{display:inline-block;margin:.5em;vertical-align:top}figcaption{font-size:.85em;color:#555}"
    ".t td,.t th{padding:2px 8px;text-align:right}.warn{background:#fee;border:1px solid #c00;padding:.5em}"
    ".note{color:#555;font-size:.9em}"
)


def table(frame, floats="{:.3f}"):
    return frame.to_html(index=False, border=0, classes="t", float_format=lambda v: floats.format(v))


def png_figure(png, alt, caption):
    """PNG bytes inlined as a data: URI, with its caption."""
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def figure(path, caption, made_by):
    """The PNG file inlined; a missing one names its script."""
    return png_figure(artifacts.require(path, made_by, "figure").read_bytes(), caption, caption)


def short_table(frame, name):
    if len(frame) <= TABLE_ROWS:
        return table(frame)
    return (
        table(frame.head(TABLE_ROWS)) + f'<p class="note">The first {TABLE_ROWS} of {len(frame)} rows; '
        f"all of them are in results/{html.escape(name)}.</p>"
    )


def code(text):
    return f"<code>{html.escape(artifacts.printable(text))}</code>"
