"""The frozen trunk's output, computed once per image and cached on disk.

The trunk is frozen and deterministic, so its output for an image never changes: train.py, evaluate.py
and embed.py share one pass (`prepare` -> one `cached_features.CachedSplit` per split). Writes
`cache/trunk_<split>_<precision>_<key>.npy` (float16, N x 64 x s/8 x s/8, read back memory-mapped so memory stays
flat as the data grows) and `..._<key>.ok.npy` (images that decoded), and
lists images that fail to decode here in results/skipped_files.csv. The key covers the image list (paths,
sizes, modification times and a fingerprint of each file's content), the image size, the trunk weights and
the precision, so a change to any of them recomputes; features of another precision are kept apart. The
folder can be deleted at any time. With trunk_views=k > 1 (the first k dihedral views of image_io.VIEW_TURNS) each
view has its own pair of files, `cache/trunk_<split>_<precision>_view<v>_<view key>.npy` for views 1 .. k-1, the
view key a digest of the images' key and the view: view 0's files are the cache of a run without views, named and
keyed as before, and a cache of one view is never read as another's. Both files are written under temporary names
(`.npy.tmp<pid>`) and renamed when whole. Under torchrun (distributed.py) each rank writes its contiguous shard to
`..._<key>.npy.part<rank>` and rank 0 assembles them, in order, into the same two files.
"""

import contextlib
import copy
import glob
import hashlib
import json
import os
import re
import shutil
import socket
import time

import numpy as np
import torch

import backbone
import lab
from lab import artifacts, cached_features, distributed, image_io, progress, runtime, splitting, thread_choice
from lab.cached_features import CachedSplit
from lab.precision import PRECISIONS, precision_name

FP16_MAX = 65504.0
FINGERPRINT_BYTES = 64 * 1024  # read from each end of a file: the whole of a typical crop, a sample of a big one


def content_fingerprint(path, size):
    """A cheap digest of a file's first and last 64 KB: notices a file replaced by one of the same size and
    modification time (a restore with `cp -p` or `rsync -t`) without reading big files whole."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        h.update(f.read(FINGERPRINT_BYTES))
        if size > FINGERPRINT_BYTES:
            f.seek(max(FINGERPRINT_BYTES, size - FINGERPRINT_BYTES))
            h.update(f.read(FINGERPRINT_BYTES))
    return h.hexdigest()


def cache_key(cfg, abs_paths, weights_id, dtype):
    h = hashlib.sha256()
    h.update(json.dumps({"size": cfg.image_size, "weights": weights_id, "dtype": str(dtype), "v": 4}).encode())
    for p in abs_paths:
        st = os.stat(p)
        # the name's own bytes: a name that is not UTF-8 (an old zip's) has no UTF-8 form; a UTF-8 name keeps its key
        h.update(os.fsencode(p) + f"\0{st.st_size}\0{st.st_mtime_ns}\0{content_fingerprint(p, st.st_size)}\n".encode())
    return h.hexdigest()[:16]


def view_key(key, view):
    """The cache key of a view's features: the images' key itself for view 0 (the upright images: the cache of a
    run without views, unchanged), else a digest of it and the view's number."""
    return key if view == 0 else hashlib.sha256(f"{key}:view {view}".encode()).hexdigest()[:16]


def trunk_loader(abs_paths, image_size, batch_size, num_workers, device):
    """Batches of uint8 pixels and ok flags, in order. The loader has a generator of its own: iterating a
    DataLoader draws its workers' base seed from the generator it is given, by default torch's global one, and
    a draw there would make a run whose trunk cache was cold train another model than one whose cache was warm."""
    dataset = image_io.ImageDataset(abs_paths, image_size)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        generator=torch.Generator(),
    )


@torch.no_grad()
def run_trunk(trunk, loader, device, dtype, write, desc="trunk pass", views=(0,)):
    """Feed every batch through the trunk (BN folded, channels-last, autocast to dtype), in each of the dihedral
    views given (image_io.dihedral_view); hand its output to write: (batch, ...) for one view, (views, batch, ...)
    for several (each image decoded once)."""
    trunk = backbone.inference_trunk(trunk).to(device)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    for images, ok in progress.progress(loader, len(loader), desc, unit="batches"):
        with thread_choice.batch_threads(device, "trunk", len(ok)):  # the count chosen (thread_choice.chosen)
            images = image_io.normalise(images.to(device, non_blocking=True))
            outs = []
            for view in views:
                viewed = image_io.dihedral_view(images, view).contiguous(memory_format=torch.channels_last)
                with autocast:
                    out = trunk(viewed)
                outs.append(out.float().clamp_(-FP16_MAX, FP16_MAX).cpu().numpy().astype(np.float16))
        write(outs[0] if len(views) == 1 else np.stack(outs), ok.numpy())


def _stream_features(target, n, shape, fill):
    """Stream fill's batches into target as an .npy of n rows (no memory map while writing: resident memory stays
    flat); returns the ok flags of the rows."""
    ok = np.zeros(n, dtype=bool)
    position = [0]
    with open(target, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": np.dtype(np.float16).str, "fortran_order": False, "shape": (n, *shape)}
        )

        def write(batch, batch_ok):
            f.write(np.ascontiguousarray(batch).tobytes())
            ok[position[0] : position[0] + len(batch)] = batch_ok
            position[0] += len(batch)

        fill(write)
        if position[0] != n:  # a loader that ended early must not leave a file that looks whole
            raise RuntimeError(f"the trunk pass gave {position[0]} rows, {n} were expected")
        f.flush()
        os.fsync(f.fileno())
    return ok


def _temporary(path):
    return path.with_name(path.name + f".tmp{os.getpid()}")


def _publish(tmp, path, ok_path, ok):
    """The ok flags, then the features, each renamed into place whole: the cache is complete only once both are."""
    ok_tmp = _temporary(ok_path)
    try:
        with open(ok_tmp, "wb") as f:  # a file object: np.save would append .npy to the temporary name
            np.save(f, ok)
        os.replace(ok_tmp, ok_path)
    finally:
        with contextlib.suppress(OSError):
            ok_tmp.unlink()
    os.replace(tmp, path)


def _write_cache(path, ok_path, n, shape, fill):
    """One process: stream the features into a temporary file, then publish it."""
    tmp = _temporary(path)
    try:
        _publish(tmp, path, ok_path, _stream_features(tmp, n, shape, fill))
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def part_path(path, rank):
    """Where a torchrun rank writes its shard of the cache file path (a leftover for artifacts.remove_leftovers)."""
    return path.with_name(f"{path.name}.part{rank}")


def trunk_shard(
    rank,
    start,
    stop,
    *,
    cache_path,
    abs_paths,
    image_size,
    batch_size,
    num_workers,
    trunk,
    precision,
    device_type,
    data_root,
    desc,
    view=0,
):
    """On one torchrun rank: the trunk's output (in one dihedral view) for abs_paths[start:stop], written to
    part_path(cache_path, rank);
    returns their ok flags. The part is removed if this fails."""
    if not os.path.isdir(data_root):
        raise lab.LabError(
            f"data_root {data_root} is not a folder on this machine. Every machine of the run must see "
            f"the images at the same path (a shared or identically mounted file system)."
        )
    if not cache_path.parent.is_dir():
        raise lab.LabError(
            f"the cache folder {cache_path.parent} does not exist on this machine. output_dir must be "
            f"on a file system every machine of the run sees at the same path."
        )
    paths = abs_paths[start:stop]
    if not paths:
        return np.zeros(0, dtype=bool)
    device = runtime.select_device(device_type)  # this rank's own GPU under torchrun
    dtype = PRECISIONS[precision]
    side = backbone.trunk_side(image_size)
    loader = trunk_loader(paths, image_size, batch_size, num_workers, device)
    part = part_path(cache_path, rank)
    try:
        return _stream_features(
            part,
            len(paths),
            (backbone.TRUNK_CHANNELS, side, side),
            lambda write: run_trunk(trunk, loader, device, dtype, write, desc, (view,)),
        )
    except BaseException:
        with contextlib.suppress(OSError):
            part.unlink()
        raise


def assemble_parts(path, ok_path, n, shape, oks):
    """Rank 0: the ranks' parts, in rank order, copied into one file (streamed: memory stays flat), published as a
    single process publishes its file; each part is deleted once copied."""
    tmp = _temporary(path)
    row_bytes = int(np.prod(shape)) * 2
    with open(tmp, "wb") as out:
        np.lib.format.write_array_header_1_0(
            out, {"descr": np.dtype(np.float16).str, "fortran_order": False, "shape": (n, *shape)}
        )
        for rank, ok in enumerate(oks):
            if not len(ok):
                continue
            part = part_path(path, rank)
            if not part.exists():
                raise lab.LabError(
                    f"Rank {rank} wrote its part of the trunk cache to {part}, which this machine "
                    f"({socket.gethostname()}) does not see. output_dir must be on a file system every "
                    f"machine of the run shares, at the same path."
                )
            with open(part, "rb") as source:
                np.lib.format.read_magic(source)
                part_shape, _, _ = np.lib.format.read_array_header_1_0(source)
                whole = os.fstat(source.fileno()).st_size == source.tell() + len(ok) * row_bytes
                if part_shape != (len(ok), *shape) or not whole:
                    raise RuntimeError(f"{part} holds {part_shape}, not the {(len(ok), *shape)} rank {rank} reported")
                shutil.copyfileobj(source, out, 16 << 20)
            part.unlink()
        out.flush()
        os.fsync(out.fileno())
    _publish(tmp, path, ok_path, np.concatenate(oks))


def _write_sharded_cache(cfg, trunk, path, ok_path, abs_paths, shape, device, dtype, split_name, view=0):
    """torchrun: every rank computes a contiguous shard and writes it beside the cache file; rank 0 assembles the
    file a single process would write. On any failure, no part and no temporary file is left behind."""
    job = {
        "cache_path": path,
        "abs_paths": abs_paths,
        "image_size": cfg.image_size,
        "batch_size": cfg.batch_size,
        "num_workers": cfg.num_workers,
        "trunk": copy.deepcopy(trunk).cpu(),
        "device_type": device.type,
        "precision": precision_name(dtype),
        "data_root": str(artifacts.resolve(cfg.data_root)),
        "desc": f"trunk {split_name}",
        "view": view,
    }
    try:
        oks = distributed.map_shards(
            trunk_shard, len(abs_paths), f"the trunk pass of the {split_name} split", align=cfg.batch_size, **job
        )
        assemble_parts(path, ok_path, len(abs_paths), shape, oks)
    except BaseException:
        for leftover in (*path.parent.glob(glob.escape(path.name) + ".part*"), _temporary(path)):
            with contextlib.suppress(OSError):
                leftover.unlink()
        raise


def image_outputs(
    model, abs_paths, image_size, batch_size, num_workers, device, dtype, desc="images", views=1, cpu_threads="auto"
):
    """Logits, embeddings and decoded flags of images that have no trunk cache (predict.py's new sample): the
    trunk's float16 output goes through the head exactly as it does from the cache, so the results equal
    evaluate.py's and embed.py's; with views > 1 (the checkpoint's trunk_views) the trunk sees each image in its
    first `views` dihedral views and the outputs are their average, as cached_features.head_outputs averages
    them. On a CPU, on cpu_threads (thread_choice.chosen). Under torchrun every rank computes a contiguous shard;
    rank 0 joins them."""
    job = {
        "model": copy.deepcopy(model).cpu(),
        "abs_paths": abs_paths,
        "image_size": image_size,
        "batch_size": batch_size,
        "num_workers": num_workers,
        "device_type": device.type,
        "precision": precision_name(dtype),
        "desc": desc,
        "views": views,
        "cpu_threads": cpu_threads,
    }
    parts = distributed.map_shards(
        image_outputs_shard, len(abs_paths), f"the pass over {desc}", align=batch_size, **job
    )
    return {name: np.concatenate([part[name] for part in parts]) for name in ("logits", "embeddings", "ok")}


def image_outputs_shard(
    rank,
    start,
    stop,
    *,
    model,
    abs_paths,
    image_size,
    batch_size,
    num_workers,
    device_type,
    precision,
    desc,
    views=1,
    cpu_threads="auto",
):
    """On one rank (or the single process): image_outputs of abs_paths[start:stop]."""
    device = runtime.select_device(device_type)  # this rank's own GPU under torchrun
    model = model.to(device).eval()
    outputs = {
        "logits": [np.zeros((0, model.classifier.out_features), np.float32)],
        "embeddings": [np.zeros((0, model.classifier.in_features), np.float32)],
        "ok": [np.zeros(0, bool)],
    }

    def head(trunk_out, ok):
        x = torch.from_numpy(trunk_out.astype(np.float32)).to(device)
        with torch.no_grad():
            logits, embedding = cached_features.head_of_views(model, x)
        outputs["logits"].append(logits.float().cpu().numpy())
        outputs["embeddings"].append(embedding.float().cpu().numpy())
        outputs["ok"].append(ok)

    paths = abs_paths[start:stop]
    if paths:
        loader = trunk_loader(paths, image_size, batch_size, num_workers, device)
        with thread_choice.chosen(cpu_threads):
            run_trunk(model.trunk, loader, device, PRECISIONS[precision], head, desc, tuple(range(views)))
    return {name: np.concatenate(values) for name, values in outputs.items()}


def cache_prefix(split_name, dtype, view=0):
    """The cache files' names before their key: view 0's as the lab named them before views, a view's own after."""
    return f"trunk_{split_name}_{precision_name(dtype)}_" + (f"view{view}_" if view else "")


def remove_stale_caches(folder, split_name, dtype, current=None):
    """Delete this split's cache files, in this precision and in every view, whose key is not the current one of
    their view (current: the images' cache_key; None: every one): their images, size or weights changed. Only
    files named exactly as this module names them, so nothing else in the folder is ever touched, and never the
    features of another precision, which another checkpoint may have been trained on."""
    removed = []
    for view in range(image_io.VIEWS):
        prefix = cache_prefix(split_name, dtype, view)
        pattern = re.compile(rf"{re.escape(prefix)}([0-9a-f]{{16}})(\.ok)?\.npy")
        keep = None if current is None else view_key(current, view)
        for stale in folder.glob(f"{glob.escape(prefix)}*.npy"):
            found = pattern.fullmatch(stale.name)
            if found and found.group(1) != keep:
                stale.unlink()
                removed.append(stale.name)
    return removed


def trunk_features(cfg, trunk, split_rows, split_name, weights_id, device, dtype, view=0, key=None):
    """(features memmap float16 [N, channels, s, s], ok bool [N]) for the rows of split.csv given, in one dihedral
    view (image_io.dihedral_view; 0: the images as they are), cached; under torchrun the pass is shared by every
    rank and the file is the same. key: the images' cache_key, when the caller has it already."""
    abs_paths = splitting.absolute_paths(cfg, split_rows["path"])
    key = key or cache_key(cfg, abs_paths, weights_id, dtype)
    folder = artifacts.out_path(cfg, "cache")
    prefix, own_key = cache_prefix(split_name, dtype, view), view_key(key, view)
    path, ok_path = folder / f"{prefix}{own_key}.npy", folder / f"{prefix}{own_key}.ok.npy"
    if not (path.exists() and ok_path.exists()):
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_caches(folder, split_name, dtype, key)
        side = backbone.trunk_side(cfg.image_size)
        shared = f", shared by {distributed.world_size()} ranks" if distributed.active() else ""
        in_view = f" in dihedral view {view}" if view else ""
        print(
            f"[trunk] computing the frozen trunk's output for {len(abs_paths)} {split_name} images{in_view} "
            f"({precision_name(dtype)}{shared}, cached in {folder})"
        )
        shape = (backbone.TRUNK_CHANNELS, side, side)
        started = time.perf_counter()
        try:
            if distributed.active():
                _write_sharded_cache(cfg, trunk, path, ok_path, abs_paths, shape, device, dtype, split_name, view)
            else:
                loader = trunk_loader(abs_paths, cfg.image_size, cfg.batch_size, cfg.num_workers, device)
                with thread_choice.chosen(cfg.cpu_threads):
                    _write_cache(
                        path,
                        ok_path,
                        len(abs_paths),
                        shape,
                        lambda write: run_trunk(
                            trunk, loader, device, dtype, write, f"trunk {split_name}{in_view}", (view,)
                        ),
                    )
        except OSError as exc:
            raise lab.LabError(
                f"Could not write the trunk cache in {folder} ({exc.strerror or exc}). Free some "
                f"disk space (it needs about {len(abs_paths) * np.prod(shape) * 2 / 1e6:.0f} MB) "
                f"or choose another --output_dir."
            ) from None
        seconds = time.perf_counter() - started
        print(
            f"[trunk] {split_name}{in_view}: {len(abs_paths)} images in {seconds:.1f} s "
            f"({len(abs_paths) / max(seconds, 1e-9):.0f} images/s)"
        )
    features = np.load(path, mmap_mode="r")
    ok = np.load(ok_path)
    if view == 0:  # the decoding is the same in every view
        splitting.record_trunk_failures(cfg, split_rows, ok)
    return features, ok


def prepare(cfg, device, split, model, weights_id, dtype, names=("train", "val"), views=None):
    """CachedSplit per split name, computing the trunk pass (in dtype) where the cache misses, in the first `views`
    dihedral views (default: cfg.trunk_views)."""
    views = getattr(cfg, "trunk_views", 1) if views is None else views
    class_index = {c: i for i, c in enumerate(cfg.seen_classes)}
    out = {}
    for name in names:
        rows = split[split["split"] == name].reset_index(drop=True)
        key = cache_key(cfg, splitting.absolute_paths(cfg, rows["path"]), weights_id, dtype)
        feats, ok = zip(
            *(trunk_features(cfg, model.trunk, rows, name, weights_id, device, dtype, v, key) for v in range(views))
        )
        out[name] = CachedSplit(list(feats), ok[0], [class_index.get(label, -1) for label in rows["label"]], rows)
    return out
