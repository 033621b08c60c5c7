"""The report's charts drawn from result tables (the pipeline's own figures are drawn by their scripts): the
abundances' bar chart of predict.py's results/abundances.csv. Reads nothing; returns PNG bytes, which the report
inlines, and writes no file.
"""

import io

import numpy as np

from lab import plotting

CHART_ROWS = 30  # classes: a chart of more shows the largest shares (half an inch a class)


def abundance_chart(table):
    """PNG bytes of a bar chart: each seen class's share of the sample's images not flagged, as classify-and-count
    gives it beside the correction with its 95 % interval (the report's section; nothing is written)."""
    plt = plotting.pyplot()
    rows = table[~table["possibly_new"].astype(bool)]
    left_out = max(0, len(rows) - CHART_ROWS)
    if left_out:  # the largest shares, so that the chart stays readable at 100+ classes; the CSV holds every class
        rows = rows.sort_values(["proportion", "cc_proportion"], ascending=False, kind="stable").head(CHART_ROWS)
    names = plotting.drawable_names([str(c) for c in rows["class"]])
    y = np.arange(len(rows))
    corrected = rows["proportion"].to_numpy(np.float64)
    errors = np.clip(
        [
            corrected - rows["proportion_low"].to_numpy(np.float64),
            rows["proportion_high"].to_numpy(np.float64) - corrected,
        ],
        0,
        None,
    )
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(rows) + 1.4))
    ax.barh(y - 0.2, rows["cc_proportion"], height=0.4, color="#bbbbbb", label="classify and count")
    ax.barh(
        y + 0.2,
        corrected,
        height=0.4,
        xerr=errors,
        color="#2a7ab0",
        capsize=3,
        label=f"corrected ({rows['method'].iloc[0] if len(rows) else ''}), 95 % interval",
    )
    ax.set_yticks(y)
    ax.set_yticklabels(names)
    ax.invert_yaxis()
    ax.set_xlabel("share of the images not flagged possibly new")
    if left_out:
        ax.set_title(f"the {CHART_ROWS} largest corrected shares; {left_out} more classes in results/abundances.csv")
    ax.legend(loc="lower right", fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()
