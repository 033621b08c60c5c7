"""How a fresh process runs dimensionality_reduction.py for the benchmark's 2-D map rows: each variant is a
function that adjusts the script's module before its main runs. Imported only in that child process, so it imports
nothing beyond what the script itself does (and the original approach, bench/legacy.py).
"""

import dimensionality_reduction
from bench import legacy

LEGACY_MAP = "UMAP's own search"


def ours(stage):
    """The script as it is: exact neighbours, numba's on-disk cache (warm on every run after the first)."""


def ours_first_run(stage):
    """The very first run after an install: numba compiles UMAP's code instead of reading its cache."""
    stage.cache_umap_compilation = lambda: None


def umaps_own_search(stage):
    """The original approach: UMAP finds the neighbours itself, compiled in every new process."""
    stage.reduce_to_2d = legacy.reduce_to_2d


VARIANTS = {"ours": ours, "ours, first run": ours_first_run, LEGACY_MAP: umaps_own_search}


def run(variant, argv):
    VARIANTS[variant](dimensionality_reduction)
    dimensionality_reduction.main(argv)
