"""Data: scan the folder-per-class data root and the labels tables, report the classes, make and check the split.

Reads `data_root` (one sub-folder of images per class) and the `labels_file` tables, if any (see
lab/label_tables.py). Writes, once:
  results/split.csv            path (relative to data_root; absolute for a table's image outside it), label,
                               split (train / val / test / unseen), bytes, round (0: the first draw; k: added when
                               the data grew the k-th time, the rows already split keeping their split)
  results/split.json           what the split was drawn from (data root, classes, fractions, seed, the tables)
  results/dataset_summary.csv  per class: images, share of its group, skipped and ignored files; a total row
                               per group (group 'seen total' / 'unseen total')
  results/label_sources.csv    where the labels came from: per source (the class folders, each table with its
                               sha256) and status (EcoTaxa's validated, predicted ...), its rows and those used
  results/unused_labels.csv    the tables' rows that gave no label, per category, status and reason
  results/skipped_files.csv    unreadable or missing image files (empty, truncated, corrupt, too large), with the stage
                               that found them (scan, or trunk pass for a file that broke after the split)
  results/ignored_files.csv    files and folders in the class folders that are not images, with the reason
  results/image_notes.csv      images used with a remark (first frame of a multi-frame file, very large)
  results/duplicates.csv       byte-identical files: every copy, its label, all labels of that image
Images in sub-folders of a class folder belong to the class. Byte-identical copies share a split.
Every later script reads split.csv, so all of them use the same split. New images join it here and in train.py
(the rows already split keep their split); a removed or relabelled image stops the run with the command that
rebuilds it.

    python dataloader.py                      # tasks 1-2: report the classes and write the split
    python dataloader.py --rebuild_split=True
"""

import sys

from lab import artifacts, config, data_folders, demo_data, label_tables, runtime, splitting


def main(argv=None):
    cfg = config.load_config(argv, __doc__)
    config.print_settings(cfg)
    demo_data.ensure_demo_data(cfg)  # the entry point generates the demo on first use; the data layer only reads
    existed = artifacts.out_path(cfg, "results", "split.csv").exists() and not cfg.rebuild_split
    before = existed and splitting.split_digest(cfg)
    split = splitting.read_or_draw_split(cfg)
    existed = existed and splitting.split_digest(cfg) == before  # else: it grew, and the scan printed its summary
    if existed:
        summary = artifacts.read_csv(artifacts.out_path(cfg, "results", "dataset_summary.csv"), ("group", "class"))
        data_folders.print_summary(summary, split)
        sources = artifacts.out_path(cfg, "results", "label_sources.csv")
        if sources.exists():
            label_tables.print_sources(artifacts.read_csv(sources, ("source", "kind", "sha256", "status")))
        ignored = artifacts.out_path(cfg, "results", "ignored_files.csv")
        notes = artifacts.out_path(cfg, "results", "image_notes.csv")
        if ignored.exists() and notes.exists():
            data_folders.print_file_report(
                artifacts.read_csv(ignored, data_folders.IGNORED_COLUMNS),
                artifacts.read_csv(notes, data_folders.NOTE_COLUMNS),
            )
    print(f"split {'read from' if existed else 'written to'} {artifacts.out_path(cfg, 'results', 'split.csv')}")


if __name__ == "__main__":
    runtime.run_main(lambda: main(sys.argv[1:]))
