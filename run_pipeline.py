"""Run the whole mission in order: demo data, split, train, evaluate, embed, distances, 2-D map and galleries,
transfer learning, novelty (telling unseen taxa from seen ones), the label audit (which labels look wrong),
report. predict.py is not a stage: it needs a folder of new images (`python predict.py --predict_dir=...` after
this).

Reads what configfile.py and `--name=value` overrides say (the same overrides reach every stage). Writes every
artifact of every script (see each script's docstring) and results/pipeline_timings.csv; ends with
results/report.html. On the demo data, when the ImageNet weights cannot be had (offline), the trunk is
random and every stage says so loudly; on any other data set the missing weights stop the run.

    python run_pipeline.py
    python run_pipeline.py --data_root=/data/FlowCamNet/imgs --seen_classes="[...]" --unseen_classes="[...]"
"""

import sys
import time

import pandas as pd

import audit
import backbone
import compute_average_distances
import dataloader
import dimensionality_reduction
import embed
import evaluate
import lab
import novelty
import report
import train
import transfer_learning
from lab import artifacts, config, demo_data, runtime

STAGES = (
    ("split", dataloader),
    ("train", train),
    ("evaluate", evaluate),
    ("embed", embed),
    ("distances", compute_average_distances),
    ("reduction", dimensionality_reduction),
    ("transfer", transfer_learning),
    ("novelty", novelty),
    ("audit", audit),
    ("report", report),
)
ONCE = {"split": "--rebuild_split=", "train": "--resume="}  # acted on by that stage alone, not by the later ones


def weights_overrides(cfg):
    """[] if the configured weights load; on the demo data offline, an explicit random trunk, loudly."""
    if cfg.backbone_weights is None:
        return []
    try:
        backbone.build_trunk(cfg.backbone_weights, backbone.RANDOM_TRUNK_SEED)
        return []
    except lab.LabError as exc:
        if not demo_data.is_demo_root(cfg):
            raise
        print(
            "\n" + "!" * 100 + f"\nDEMO ON A RANDOM TRUNK: {exc}\nThe demo goes on with backbone_weights=None: the "
            "pipeline runs end to end, but the embeddings are not ImageNet features. To run the scripts one by "
            "one on the demo offline, add --backbone_weights=None to each, as this run does.\n" + "!" * 100 + "\n",
            file=sys.stderr,
        )
        return ["--backbone_weights=None"]


def run(argv):
    cfg = config.load_config(argv, __doc__)
    config.print_config(cfg)  # once: each stage then prints only what it changes (the checkpoint's settings)
    demo_data.ensure_demo_data(cfg)
    argv = list(argv) + weights_overrides(cfg)
    timings = []
    for name, module in STAGES:
        print(f"\n=== {name}: python {module.__name__}.py {' '.join(argv)}".rstrip(), flush=True)
        start = time.perf_counter()
        module.main(argv)
        timings.append({"stage": name, "seconds": round(time.perf_counter() - start, 2)})
        if name in ONCE:
            argv = [a for a in argv if not a.startswith(ONCE[name])]
    timings.append({"stage": "total", "seconds": round(sum(t["seconds"] for t in timings), 2)})
    frame = pd.DataFrame(timings)
    artifacts.save_csv(artifacts.out_path(cfg, "results", "pipeline_timings.csv"), frame)
    print("\nstage timings (s): " + ", ".join(f"{t['stage']} {t['seconds']}" for t in timings))
    print(f"Done. Open {artifacts.out_path(cfg, 'results', 'report.html')} in a browser.")
    return frame


def main(argv=None):
    return run(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    runtime.run_main(main)
