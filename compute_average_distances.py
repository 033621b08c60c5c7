"""Average Euclidean and angular distances between classes, for the test set and the unseen classes
(mission tasks 4-5).

Reads embeddings/embeddings_test.pkl and embeddings_unseen.pkl (embed.py). Writes, for each set S in
{test, unseen}:
  figs/average_euclidean_distances_S.png, figs/average_angular_distances_S.png   heatmaps
  results/average_distances_S.csv     per class pair: counts, mean Euclidean, angular and cosine distance
and, written last, results/compute_average_distances_manifest.json (manifest.py: the files and the embeddings set).
Angular distance is the angle between two embeddings, arccos(cosine similarity) / pi, in [0, 1]; the cosine
distance is 1 - cosine similarity. Within a class the averages run over distinct pairs (a sample's distance
to itself is left out). Embeddings that are all zeros (every ReLU off) have no direction: they are left out
of the angular and cosine averages, and counted. The computation is exact (float64) and blockwise on BLAS,
so memory stays bounded however large a class is. A class of more than distance_max_per_class images is
represented by a seeded sample of that many (the CSV's used_a says how many): the pairs grow with the square of
the class sizes, the sample keeps the time bounded (README, Performance) at a sampling error well below the
differences the heatmaps show.
"""

import sys

import numpy as np
import pandas as pd

from lab import artifacts, class_matrices, config, embedding_files, manifest, plotting, runtime

BLOCK = 1024  # rows per block: a few 8 MB temporaries whatever the class sizes


def _pair_sums(a, b, same):
    """Sums over pairs of (Euclidean, angle/pi, 1 - cos) and the pair counts, block by block. In place and without
    masks (about twice as fast as masking, measured): an all-zero embedding gets cosine 0 with everything, i.e.
    exactly 1/2 and 1 in the sums, which are then taken out by count; a sample with itself gets cosine 1, i.e. 0."""
    norm_a, norm_b = np.einsum("ij,ij->i", a, a), np.einsum("ij,ij->i", b, b)
    len_a, len_b = np.sqrt(norm_a), np.sqrt(norm_b)
    inv_a = np.divide(1.0, len_a, out=np.zeros_like(len_a), where=len_a > 0)
    inv_b = np.divide(1.0, len_b, out=np.zeros_like(len_b), where=len_b > 0)
    directed_a, directed_b = len_a > 0, len_b > 0
    sums = np.zeros(3)
    for i in range(0, len(a), BLOCK):
        for j in range(i if same else 0, len(b), BLOCK):
            ab = a[i : i + BLOCK] @ b[j : j + BLOCK].T
            cos = ab * inv_a[i : i + BLOCK, None]
            cos *= inv_b[None, j : j + BLOCK]
            np.clip(cos, -1.0, 1.0, out=cos)
            ab *= -2.0  # from here on ab becomes the squared distance, then the distance
            ab += norm_a[i : i + BLOCK, None]
            ab += norm_b[None, j : j + BLOCK]
            np.maximum(ab, 0.0, out=ab)
            euclid = np.sqrt(ab, out=ab)
            rows, cols = int(directed_a[i : i + BLOCK].sum()), int(directed_b[j : j + BLOCK].sum())
            undirected = cos.size - rows * cols  # pairs with an all-zero embedding
            if same and i == j:  # leave each sample's pair with itself out
                np.fill_diagonal(euclid, 0.0)
                np.fill_diagonal(cos, 1.0)
                undirected -= len(cos) - rows  # those of a zero embedding with itself were counted above
            cos_sum = cos.sum()
            angle_sum = np.arccos(cos, out=cos).sum() / np.pi
            weight = 2.0 if same and j != i else 1.0  # an off-diagonal block stands for its mirror too
            sums += weight * np.array([euclid.sum(), angle_sum - 0.5 * undirected, cos.size - cos_sum - undirected])
    n_dir_a, n_dir_b = int(directed_a.sum()), int(directed_b.sum())
    pairs = len(a) * (len(a) - 1) if same else len(a) * len(b)
    directed_pairs = n_dir_a * (n_dir_a - 1) if same else n_dir_a * n_dir_b
    return sums, pairs, directed_pairs


def sampled_groups(groups, limit, seed):
    """Each group, or a seeded sample of `limit` of its rows where it has more (limit 0: every row)."""
    rng = np.random.default_rng(seed)
    return [
        g if not limit or len(g) <= limit else g[np.sort(rng.choice(len(g), size=limit, replace=False))] for g in groups
    ]


def average_distances(groups):
    """groups: list of (n_i x d) arrays -> dict of k x k matrices: euclidean, angular, cosine."""
    k = len(groups)
    out = {m: np.full((k, k), np.nan) for m in ("euclidean", "angular", "cosine")}
    for p in range(k):
        for q in range(p, k):
            sums, pairs, directed_pairs = _pair_sums(groups[p], groups[q], same=p == q)
            for m, value, count in zip(out, sums, (pairs, directed_pairs, directed_pairs)):
                out[m][p, q] = out[m][q, p] = value / count if count else np.nan
    return out


def distance_table(classes, groups, result, used):
    rows = []
    for p, a in enumerate(classes):
        for q, b in enumerate(classes):
            rows.append(
                {
                    "class_a": a,
                    "class_b": b,
                    "n_a": len(groups[p]),
                    "n_b": len(groups[q]),
                    "used_a": len(used[p]),
                    "used_b": len(used[q]),
                    "zero_embeddings_a": int((np.abs(groups[p]).sum(1) == 0).sum()),
                    "mean_euclidean": result["euclidean"][p, q],
                    "mean_angular": result["angular"][p, q],
                    "mean_cosine_distance": result["cosine"][p, q],
                }
            )
    return pd.DataFrame(rows)


def plot_heatmap(matrix, classes, title, note, path):
    """Up to class_matrices.NUMBERED_UP_TO classes in their order with a number in each cell; past that, similar
    classes together (clustered on the distances), no numbers (the CSV holds them), within the size bound."""
    plt = plotting.pyplot()
    size = class_matrices.matrix_inches(len(classes), per_class=0.75)
    if not class_matrices.numbered(len(classes)):
        order = class_matrices.distance_order(matrix)
        matrix, classes = matrix[np.ix_(order, order)], [classes[i] for i in order]
        note += "; similar classes together (clustered), values in the CSV"
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = class_matrices.draw(ax, matrix, classes, ".3g", "viridis", high_is_dark=False)
    ax.set_title(title + "\n" + note, fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046)
    plotting.save_figure(path, fig)


def analyse(cfg, set_name, out):
    frame, vectors = embedding_files.load_embeddings(cfg, set_name)
    classes = list(dict.fromkeys(frame.sort_values("label_idx")["label"]))
    groups = [vectors[(frame["label"] == c).to_numpy()] for c in classes]
    used = sampled_groups(groups, cfg.distance_max_per_class, cfg.seed)
    result = average_distances(used)
    table = distance_table(classes, groups, result, used)
    out.save_csv("results", f"average_distances_{set_name}.csv", table)
    notes = {
        "euclidean": "mean Euclidean distance between 128-d embeddings; diagonal: distinct pairs within a class",
        "angular": "mean angular distance = arccos(cosine similarity) / pi, in [0, 1]; diagonal: distinct pairs",
    }
    for metric, note in notes.items():
        plot_heatmap(
            result[metric],
            classes,
            f"Average {metric} distance between classes ({set_name} set)",
            note,
            out.file("figs", f"average_{metric}_distances_{set_name}.png"),
        )
        if class_matrices.numbered(len(classes)):
            print(f"\naverage {metric} distance, {set_name} set:")
            print(pd.DataFrame(result[metric], index=classes, columns=classes).round(4).to_string())
    if not class_matrices.numbered(len(classes)):
        print(
            f"average distances between the {len(classes)} classes of the {set_name} set: "
            f"results/average_distances_{set_name}.csv and the heatmaps in figs/"
        )
    sampled = [c for c, g, u in zip(classes, groups, used) if len(u) < len(g)]
    if sampled:
        print(
            f"note: {len(sampled)} class(es) of the {set_name} set have more than distance_max_per_class="
            f"{cfg.distance_max_per_class} images and are represented by a seeded sample of that many: "
            f"{', '.join(sampled[:5])}{' ...' if len(sampled) > 5 else ''}"
        )
    zeros = int(table.drop_duplicates("class_a")["zero_embeddings_a"].sum())
    if zeros:
        print(
            f"note: {zeros} all-zero embeddings in the {set_name} set have no direction and are left out of "
            f"the angular averages",
            file=sys.stderr,
        )
    return result


def main(argv=None):
    cfg = config.load_config(argv, __doc__)
    config.print_settings(cfg)
    artifacts.ensure_output_dirs(cfg, ("results", "figs"))
    with manifest.OutputSet(cfg, "compute_average_distances") as out:
        results = {name: analyse(cfg, name, out) for name in ("test", "unseen")}
        out.publish(**embedding_files.embedding_inputs(cfg))
    return results


if __name__ == "__main__":
    runtime.run_main(lambda: main(sys.argv[1:]))
