"""torchrun (issue #13): train.py, evaluate.py, embed.py and predict.py under `torchrun --nproc_per_node=2` (gloo,
CPU) write the single-process run's files; a rank that fails or is killed stops the whole run, with one message,
and leaves nothing that looks complete. The shards themselves are checked in-process against the single-process
writer."""

import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import FAST, lock_is_free

import backbone
import lab
from lab import artifacts, distributed, near_copies, runtime, splitting, trunk_cache

# torchrun's module form; --standalone takes a free port, so that other torchrun runs on this machine do not clash
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
SCRIPTS = ("train.py", "evaluate.py", "embed.py")


def environment(**extra):
    # One thread per process on both sides, as torchrun gives each rank: the head's training sums floats in
    # another order with another thread count, which alone would change its weights in the last digits.
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def run(command, env=None):
    return subprocess.run(command, cwd=lab.ROOT, capture_output=True, text=True, env=env or environment(), timeout=600)


def argv(data_root, output_dir):
    return [f"--data_root={str(data_root)!r}", f"--output_dir={str(output_dir)!r}", *FAST, "--epochs=3"]


@pytest.fixture(scope="module")
def both_runs(tiny_demo, tmp_path_factory):
    """The same three scripts, once as single processes and once under torchrun with 2 ranks: (single, torchrun)."""
    single, shared = tmp_path_factory.mktemp("single"), tmp_path_factory.mktemp("torchrun")
    for script in SCRIPTS:
        alone = run([sys.executable, script, *argv(tiny_demo, single)])
        assert alone.returncode == 0, alone.stderr[-3000:]
        ranks = run([*TORCHRUN, script, *argv(tiny_demo, shared)])
        assert ranks.returncode == 0, ranks.stderr[-3000:]
        assert "shared by 2 ranks" in ranks.stdout  # each script computed at least one split's trunk pass
    sample = [f"--predict_dir={str(tiny_demo / 'Retaria')!r}"]  # new images: no trunk cache, sharded chunks
    for folder, launcher in ((single, [sys.executable]), (shared, TORCHRUN)):
        for script, extra in (("novelty.py", []), ("predict.py", sample)):
            result = run([*launcher, script, *argv(tiny_demo, folder), *extra])
            assert result.returncode == 0, result.stderr[-3000:]
    return single, shared


def files(folder, pattern):
    return sorted(p.name for p in folder.glob(pattern))


@pytest.mark.slow
def test_torchrun_predicts_as_the_single_process(both_runs):
    single, shared = both_runs
    mine = pd.read_csv(shared / "results" / "predictions.csv")
    theirs = pd.read_csv(single / "results" / "predictions.csv")
    assert len(mine) == 36 and list(mine["path"]) == list(theirs["path"])
    assert list(mine["predicted"]) == list(theirs["predicted"])
    p_columns = [c for c in theirs.columns if c.startswith("p_")]
    # the same batches on both sides (shards aligned to batch_size), so the same bits
    np.testing.assert_array_equal(mine[p_columns].to_numpy(), theirs[p_columns].to_numpy())


@pytest.mark.slow
def test_torchrun_writes_the_files_of_the_single_process_run(both_runs):
    single, shared = both_runs
    assert (shared / "results" / "split.csv").read_bytes() == (single / "results" / "split.csv").read_bytes()
    names = files(single / "cache", "trunk_*")
    assert len(names) == 8 and files(shared / "cache", "trunk_*") == names  # 4 splits x (features, ok flags)
    for name in names:  # equal by construction: shards start on a batch boundary (distributed.shard_bounds)
        assert (shared / "cache" / name).read_bytes() == (single / "cache" / name).read_bytes(), name
    heads = [torch.load(folder / "checkpoints" / "best.pth", weights_only=True) for folder in (single, shared)]
    for field in ("epoch", "trunk_precision", "head_precision", "classes", "split_digest", "weights"):
        assert heads[0].get(field) == heads[1].get(field), field
    assert heads[0]["model_state"].keys() == heads[1]["model_state"].keys()
    for key, value in heads[0]["model_state"].items():  # bit for bit: the same features train the same head
        assert torch.equal(heads[1]["model_state"][key], value), key
    for split in ("train", "val", "test", "unseen"):
        mine = pd.read_pickle(shared / "embeddings" / f"embeddings_{split}.pkl")
        theirs = pd.read_pickle(single / "embeddings" / f"embeddings_{split}.pkl")
        assert len(mine) > 0
        pd.testing.assert_frame_equal(mine, theirs, check_exact=True)
    predictions = [
        artifacts.read_csv(folder / "results" / "test_predictions.csv", ("path", "label", "predicted"))
        for folder in (single, shared)
    ]
    assert predictions[1][["path", "label", "predicted"]].equals(predictions[0][["path", "label", "predicted"]])
    metrics = [json.loads((folder / "results" / "test_metrics.json").read_text()) for folder in (single, shared)]
    assert metrics[1]["accuracy"] == metrics[0]["accuracy"] and metrics[1]["n_test"] == metrics[0]["n_test"]
    assert lock_is_free(shared)  # rank 0 took the folder's lock, and gave it back


@pytest.mark.slow
def test_torchrun_trains_the_single_process_model_bit_for_bit(tiny_demo, tmp_path):
    """train.py alone and under 2 ranks, trunk precision "auto" (bf16 where native, fp32 on a CPU held to AVX2):
    the same trunk cache bytes and the same head, bit for bit. Run under each CPU setting by test_cpu_settings.py;
    the fp32 case is test_torchrun_writes_the_files_of_the_single_process_run (which, without the shards'
    alignment to batch_size, fails on an AMD EPYC with AVX512: oneDNN rounds an image differently in a batch of
    another size)."""
    precision = "auto"
    runs = {}
    for name, launcher in (("single", [sys.executable]), ("ranks", TORCHRUN)):
        out = tmp_path / name
        result = run([*launcher, "train.py", *argv(tiny_demo, out), "--epochs=2", f"--precision={precision!r}"])
        assert result.returncode == 0, result.stderr[-3000:]
        runs[name] = out
    assert "shared by 2 ranks" in result.stdout
    names = files(runs["single"] / "cache", "trunk_*")
    assert len(names) == 4 and files(runs["ranks"] / "cache", "trunk_*") == names  # train and val
    for name in names:
        assert (runs["ranks"] / "cache" / name).read_bytes() == (runs["single"] / "cache" / name).read_bytes(), name
    heads = [torch.load(runs[name] / "checkpoints" / "best.pth", weights_only=True) for name in ("single", "ranks")]
    assert heads[0]["trunk_precision"] == heads[1]["trunk_precision"]
    assert heads[0]["head_precision"] == heads[1]["head_precision"]
    for key, value in heads[0]["model_state"].items():
        assert torch.equal(heads[1]["model_state"][key], value), key


# A realistic failure of one rank, injected without a hook in the lab's code: Python imports sitecustomize from
# PYTHONPATH at start-up, and an audit hook there sees every file rank 1 opens.
FAULTS = textwrap.dedent("""
    import errno, os, signal, sys, time
    if os.environ.get("RANK") == "1":
        opened = []
        def fault(event, args):
            if event != "open" or not isinstance(args[0], str):
                return
            if args[0].endswith(".part1"):
                if os.environ["FAULT"] == "disk full":
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), args[0])
                if os.environ["FAULT"] == "stuck":
                    time.sleep(3600)  # as on a file system that stopped answering
                opened.append(args[0])
            elif opened and args[0].endswith(".png") and len(opened) == 40:
                os.kill(os.getpid(), signal.SIGKILL)  # as the out-of-memory killer would, mid-way through its part
            elif opened and args[0].endswith(".png"):
                opened.append(args[0])
        sys.addaudithook(fault)
""")


def run_with_fault(tiny_demo, tmp_path, fault, **env):
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(FAULTS)
    out = tmp_path / "out"
    result = run(
        [*TORCHRUN, "train.py", *argv(tiny_demo, out)], env=environment(PYTHONPATH=str(hooks), FAULT=fault, **env)
    )
    return out, result


def cache_files(out):
    """The files in out/cache but the split's near-copy thumbnails (made before the trunk pass, kept on purpose)."""
    return [name for name in files(out / "cache", "*") if name != near_copies.THUMBNAIL_CACHE]


def assert_nothing_looks_complete(out):
    left = cache_files(out)
    assert all(artifacts.LEFTOVER.fullmatch(name) for name in left), left  # removed by the next run, if any
    assert not (out / "checkpoints" / "best.pth").exists() and not (out / "results" / "train_history.csv").exists()
    assert lock_is_free(out)


@pytest.mark.slow
def test_a_rank_that_fails_stops_the_run_with_one_message_naming_it(tiny_demo, tmp_path):
    out, result = run_with_fault(tiny_demo, tmp_path, "disk full")
    assert result.returncode != 0
    ours = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(ours) == 1 and "Traceback" not in result.stderr.split(ours[0])[0], result.stderr[-3000:]
    assert "Rank 1 of 2" in ours[0] and "No space left on device" in ours[0] and ".part1" in ours[0]
    assert "traceback : " + ours[0] in result.stderr  # torchrun's closing report carries it too
    assert cache_files(out) == []  # rank 0 removed every part of the failed pass
    assert_nothing_looks_complete(out)


@pytest.mark.slow
def test_a_rank_that_is_killed_stops_the_run_and_leaves_nothing_that_looks_complete(tiny_demo, tmp_path):
    out, result = run_with_fault(tiny_demo, tmp_path, "killed")
    assert result.returncode != 0
    assert "Signal 9 (SIGKILL)" in result.stderr and "rank      : 1" in result.stderr  # torchrun's report
    ours = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(ours) == 1 and ("another rank failed" in ours[0] or "stopped answering" in ours[0]), result.stderr
    assert_nothing_looks_complete(out)


@pytest.mark.slow
def test_a_rank_that_is_stuck_stops_the_run_after_the_timeout(tiny_demo, tmp_path):
    started = time.monotonic()
    out, result = run_with_fault(tiny_demo, tmp_path, "stuck", PLANKTON_LAB_RANK_TIMEOUT_MINUTES="0.1")
    assert result.returncode != 0 and time.monotonic() - started < 300  # not the hour rank 1 would sleep
    ours = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(ours) == 1 and "did not finish its shard within PLANKTON_LAB_RANK_TIMEOUT_MINUTES=0.1" in ours[0]
    assert_nothing_looks_complete(out)


# ---------------------------------------------------------------- the shards, in one process
@pytest.mark.parametrize(
    ("n", "shards", "align"),
    [(10, 3, 1), (2, 3, 1), (0, 2, 1), (162, 2, 1), (162, 2, 32), (100, 3, 32), (5, 7, 2), (64, 2, 64), (1000, 4, 64)],
)
def test_shards_are_contiguous_in_order_aligned_and_cover_every_item(n, shards, align):
    bounds = [distributed.shard_bounds(n, r, shards, align) for r in range(shards)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(stop == start for (_, stop), (start, _) in zip(bounds, bounds[1:]))
    assert all(start % align == 0 for start, stop in bounds if stop > start)  # each batch stays whole on one rank
    full_batches = [-(-(b - a) // align) for a, b in bounds]
    assert max(full_batches) - min(full_batches) <= 1


def test_parts_assembled_in_rank_order_are_the_single_process_file(make_cfg):
    """Every rank's task and rank 0's assembly, run here one after the other for 3 and 7 ranks (some with no
    images): the file is byte for byte the one a single process writes, and no part is left. The shards are aligned
    to the batch size, so each image is computed in the same batch as in one process (oneDNN's result for an image
    may differ in the last bit with the size of the batch around it)."""
    cfg, _ = make_cfg("--batch_size=2")
    split = splitting.read_or_draw_split(cfg)
    rows = split[split["split"] == "val"].reset_index(drop=True).iloc[:5]
    paths = splitting.absolute_paths(cfg, rows["path"])
    trunk = backbone.build_trunk(None, backbone.RANDOM_TRUNK_SEED)
    device = torch.device("cpu")
    single, _ = trunk_cache.trunk_features(cfg, trunk, rows, "val", "random", device, None)
    single_path = next(artifacts.out_path(cfg, "cache").glob("trunk_val_fp32_*[0-9a-f].npy"))
    single_bytes = single_path.read_bytes()
    ok_bytes = single_path.with_name(single_path.stem + ".ok.npy").read_bytes()
    for shards in (3, 7):  # 7 ranks for 5 images: two ranks have nothing to do
        target = artifacts.out_path(cfg, "cache") / f"assembled_{shards}.npy"
        oks = [
            trunk_cache.trunk_shard(
                r,
                *distributed.shard_bounds(len(paths), r, shards, cfg.batch_size),
                cache_path=target,
                abs_paths=paths,
                image_size=cfg.image_size,
                batch_size=cfg.batch_size,
                num_workers=0,
                trunk=trunk,
                precision="fp32",
                device_type="cpu",
                data_root=str(artifacts.resolve(cfg.data_root)),
                desc="test",
            )
            for r in range(shards)
        ]
        assert sum(len(ok) for ok in oks) == len(paths)
        side = backbone.trunk_side(cfg.image_size)
        ok_path = target.with_name(f"assembled_{shards}.ok.npy")
        trunk_cache.assemble_parts(target, ok_path, len(paths), (backbone.TRUNK_CHANNELS, side, side), oks)
        assert target.read_bytes() == single_bytes and ok_path.read_bytes() == ok_bytes
        assert not list(target.parent.glob("*.part*")) and not list(target.parent.glob("*.tmp*"))
    assert single.shape[0] == len(paths)


def test_leftover_parts_of_a_killed_run_are_removed_and_nothing_else(make_cfg):
    cfg, _ = make_cfg()
    artifacts.ensure_output_dirs(cfg)
    cache = artifacts.out_path(cfg, "cache")
    names = {
        "trunk_train_fp32_0123456789abcdef.npy.part0": True,
        "trunk_train_fp32_0123456789abcdef.npy.part12": True,
        "trunk_train_fp32_0123456789abcdef.npy": False,
        "my.part1": False,
        "trunk_train_fp32_x.npy.partial": False,
    }
    for name in names:
        (cache / name).write_bytes(b"x")
    assert artifacts.remove_leftovers(cfg) == 2
    assert files(cache, "*") == sorted(n for n, leftover in names.items() if not leftover)


def test_without_torchrun_nothing_is_distributed(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not distributed.active() and distributed.is_main()
    assert distributed.map_shards(lambda rank, start, stop: (rank, start, stop), 7, "a test") == [(0, 0, 7)]
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun --nproc_per_node=1: one process, as without torchrun
    assert not distributed.active()
    assert runtime.select_device("cpu") == torch.device("cpu")
