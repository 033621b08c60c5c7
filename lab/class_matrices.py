"""Class-by-class matrices as figures that read at 6 classes and at 120: the confusion matrix and the average-distance
heatmaps. Up to NUMBERED_UP_TO classes a figure keeps the classes' own order and a number in every cell, as it always
did. Past that, similar classes are drawn side by side (hierarchical clustering with scipy, optimal leaf order), no
cell carries a number (the CSVs hold them all), and the figure's side is bounded so that no PNG exceeds MAX_SIDE_PX.

Reads and writes nothing: the scripts hand in matrices and an Axes.
"""

import numpy as np

NUMBERED_UP_TO = 20  # classes: up to this many, every cell is numbered and the order is the classes' own; past it,
# every output's layout for many classes (the report's tables and galleries, the static map's legend) too
MIN_SUPPORT_TO_RANK = 5  # test images: a class with fewer is never ranked among the worst (one error is 20 points)
INCHES_PER_CLASS = 0.7  # up to NUMBERED_UP_TO classes (room for a number in each cell)
INCHES_PER_CLASS_LARGE = 0.25  # past it: room for an 8-pt class name per row
MAX_MATRIX_INCHES = 26.0  # the matrix's side at most: with names, colour bar and title, under MAX_SIDE_PX at 110 dpi
MAX_SIDE_PX = 4000
LONG_NAME = 40  # characters: a longer class name is shortened on the axes of a large matrix (never in the CSVs)


def numbered(n_classes):
    return n_classes <= NUMBERED_UP_TO


def matrix_inches(n_classes, per_class=INCHES_PER_CLASS):
    """The side of one matrix panel, in inches: `per_class` per class up to NUMBERED_UP_TO classes, then 0.25 per
    class, bounded by MAX_MATRIX_INCHES."""
    if numbered(n_classes):
        return 3 + per_class * n_classes
    return min(3 + INCHES_PER_CLASS_LARGE * n_classes, MAX_MATRIX_INCHES)


def label_fontsize(n_classes):
    """Points for the class names past NUMBERED_UP_TO classes: 8 while a row is tall enough for it, smaller (4 at
    least) when the side bound squeezes the rows. (Up to NUMBERED_UP_TO, matplotlib's default, as always.)"""
    row_points = 72 * (matrix_inches(n_classes) - 3) / n_classes
    return float(np.clip(0.8 * row_points, 4, 8))


def _cluster_order(distance):
    """Leaf order of an average-linkage tree over a symmetric distance matrix (optimal leaf ordering)."""
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    distance = np.array(distance, dtype=float)
    finite = np.isfinite(distance)
    fill = distance[finite].max() if finite.any() else 1.0
    distance[~finite] = fill  # a class without pairs (an empty row) sits with the farthest
    distance = (distance + distance.T) / 2
    np.fill_diagonal(distance, 0.0)
    distance = np.maximum(distance, 0.0)
    tree = linkage(squareform(distance, checks=False), method="average", optimal_ordering=True)
    return leaves_list(tree)


def confusion_order(matrix):
    """The order in which to draw a confusion matrix's classes: their own up to NUMBERED_UP_TO classes; past that,
    classes confused with each other side by side: clustering of C + C^T on the row-normalised matrix (the share of
    each class taken for the other, both ways), as distance max - (C + C^T)."""
    matrix = np.asarray(matrix, dtype=float)
    n = len(matrix)
    if numbered(n):
        return np.arange(n)
    rates = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    np.fill_diagonal(rates, 0.0)
    similarity = rates + rates.T
    return _cluster_order(similarity.max() - similarity)


def distance_order(distance):
    """The order in which to draw a class-distance heatmap: the classes' own up to NUMBERED_UP_TO, else clustered on
    the (between-class) distances themselves."""
    distance = np.asarray(distance, dtype=float)
    return np.arange(len(distance)) if numbered(len(distance)) else _cluster_order(distance)


def axis_names(names):
    """Class names for a matrix's axes: as they are up to NUMBERED_UP_TO classes, past it shortened to LONG_NAME
    characters (the middle elided, so that two names with one prefix stay apart)."""
    if numbered(len(names)):
        return list(names)
    half = (LONG_NAME - 1) // 2
    return [n if len(n) <= LONG_NAME else f"{n[:half]}…{n[-half:]}" for n in names]


def draw(ax, values, names, fmt, cmap, high_is_dark=True):
    """Draw a class-by-class matrix (already in drawing order) on ax: ticks with every class name, a number in each
    cell up to NUMBERED_UP_TO classes. Returns the image, for a colour bar."""
    from lab import plotting

    n = len(names)
    image = ax.imshow(values, cmap=cmap)
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    shown = plotting.drawable_names(axis_names(names))
    if numbered(n):
        ax.set_xticklabels(shown, rotation=45, ha="right")
        ax.set_yticklabels(shown)
    else:
        ax.set_xticklabels(shown, rotation=90, fontsize=label_fontsize(n))
        ax.set_yticklabels(shown, fontsize=label_fontsize(n))
        return image
    finite = values[np.isfinite(values)]
    middle = (finite.max() / 2 if high_is_dark else np.nanmean(values)) if finite.size else 0
    for i in range(n):
        for j in range(n):
            dark = values[i, j] > middle if high_is_dark else values[i, j] < middle
            color = "white" if dark else "black"
            ax.text(j, i, format(values[i, j], fmt), ha="center", va="center", fontsize=8, color=color)
    return image
