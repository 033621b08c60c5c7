"""The frozen trunk's output, computed once per image and cached on disk.

The trunk is frozen and deterministic, so its output for an image never changes: train.py, evaluate.py
and embed.py share one pass. Writes `cache/trunk_<split>_<key>.npy` (float16, N x 64 x s/8 x s/8, read
back memory-mapped so memory stays flat as the data grows) and `..._<key>.ok.npy` (images that decoded).
The key covers the image list (paths, sizes, modification times), the image size, the trunk weights and
the precision, so a change to any of them recomputes; the folder can be deleted at any time.
"""
import contextlib
import hashlib
import json
import os
import re
import sys

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

import backbone
import dataloader
import lab

FP16_MAX = 65504.0


def cache_key(cfg, abs_paths, weights_id, dtype):
    h = hashlib.sha256()
    h.update(json.dumps({"size": cfg.image_size, "weights": weights_id, "dtype": str(dtype), "v": 2}).encode())
    for p in abs_paths:
        st = os.stat(p)
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def trunk_loader(abs_paths, image_size, batch_size, num_workers, device):
    dataset = dataloader.ImageDataset(abs_paths, image_size)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                       pin_memory=device.type == "cuda", persistent_workers=False)


@torch.no_grad()
def run_trunk(trunk, loader, device, dtype, write, desc="trunk pass"):
    """Feed every batch through the trunk (BN folded, channels-last, autocast to dtype); hand its output to write."""
    trunk = backbone.inference_trunk(trunk).to(device)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    for images, ok in tqdm(loader, desc=desc, unit="batch", leave=False, disable=None):
        images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with autocast:
            out = trunk(images)
        write(out.float().clamp_(-FP16_MAX, FP16_MAX).cpu().numpy().astype(np.float16), ok.numpy())


def _write_cache(path, ok_path, n, shape, fill):
    """Stream the features into an .npy file (no memory map while writing: resident memory stays flat)."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    ok = np.zeros(n, dtype=bool)
    position = [0]
    try:
        with open(tmp, "wb") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": np.dtype(np.float16).str, "fortran_order": False,
                                                     "shape": (n, *shape)})

            def write(batch, batch_ok):
                f.write(np.ascontiguousarray(batch).tobytes())
                ok[position[0]:position[0] + len(batch)] = batch_ok
                position[0] += len(batch)
            fill(write)
            f.flush()
            os.fsync(f.fileno())
        np.save(ok_path, ok)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def record_unreadable(cfg, rel_paths, labels):
    """Images that failed to decode during the trunk pass join results/skipped_files.csv."""
    csv = lab.out_path(cfg, "results", "skipped_files.csv")
    old = pd.read_csv(csv) if csv.exists() and csv.stat().st_size > 0 else pd.DataFrame(columns=["path", "label", "reason"])
    new = pd.DataFrame({"path": rel_paths, "label": labels, "reason": "failed to decode during the trunk pass"})
    lab.save_csv(csv, pd.concat([old, new]).drop_duplicates("path"))
    print(f"warning: {len(rel_paths)} image(s) could not be decoded and are left out (see {csv}): "
          f"{', '.join(rel_paths[:5])}", file=sys.stderr)


def trunk_features(cfg, trunk, split_rows, split_name, weights_id, device, dtype):
    """(features memmap float16 [N, 64, s, s], ok bool [N]) for the rows of split.csv given, cached."""
    abs_paths = dataloader.absolute_paths(cfg, split_rows["path"])
    key = cache_key(cfg, abs_paths, weights_id, dtype)
    folder = lab.out_path(cfg, "cache")
    path, ok_path = folder / f"trunk_{split_name}_{key}.npy", folder / f"trunk_{split_name}_{key}.ok.npy"
    if not (path.exists() and ok_path.exists()):
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(f"trunk_{split_name}_*.npy"):
            if re.fullmatch(rf"trunk_{re.escape(split_name)}_[0-9a-f]{{16}}(\.ok)?\.npy", stale.name):
                stale.unlink()  # an older key of this split: its images, size, weights or precision changed
        side = backbone.trunk_side(cfg.image_size)
        loader = trunk_loader(abs_paths, cfg.image_size, cfg.batch_size, cfg.num_workers, device)
        print(f"[trunk] computing the frozen trunk's output for {len(abs_paths)} {split_name} images "
              f"({'fp32' if dtype is None else str(dtype).replace('torch.', '')}, cached in {folder})")
        try:
            _write_cache(path, ok_path, len(abs_paths), (64, side, side),
                         lambda write: run_trunk(trunk, loader, device, dtype, write, f"trunk {split_name}"))
        except OSError as exc:
            raise lab.LabError(f"Could not write the trunk cache in {folder} ({exc.strerror or exc}). Free some "
                               f"disk space (it needs about {len(abs_paths) * 64 * side * side * 2 / 1e6:.0f} MB) "
                               f"or choose another --output_dir.") from None
    features = np.load(path, mmap_mode="r")
    ok = np.load(ok_path)
    if not ok.all():
        bad = np.flatnonzero(~ok)
        record_unreadable(cfg, list(split_rows["path"].iloc[bad]), list(split_rows["label"].iloc[bad]))
    return features, ok
