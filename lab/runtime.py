"""A script's entry point and its machine: run_main (user errors in one paragraph, Ctrl-C, torchrun's ranks),
seeding and the choice of device.
"""

import contextlib
import random
import sys
import traceback

import numpy as np

import lab
from lab import output_lock


# --------------------------------------------------------------------------- device & seeds
def seed_everything(seed):
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def torch_threads_kept():
    """Run a block that may reset OpenMP's thread count (UMAP's numba code sets it to the number of cores), then
    give torch back the count it had: the stages after it in one process (run_pipeline.py) then compute as they
    do in a process of their own, also under OMP_NUM_THREADS=1 (torchrun's ranks, the tests)."""
    import torch

    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def select_device(name):
    """The device the setting names; under torchrun, a GPU is this rank's own (cuda:LOCAL_RANK)."""
    import torch

    from lab import distributed

    if name == "auto":
        if torch.cuda.is_available():
            return distributed.rank_device(torch.device("cuda"))
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise lab.LabError(
            f"device={name!r} was asked for but CUDA is not available on this machine; "
            f"use --device=auto or --device=cpu."
        )
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise lab.LabError("device='mps' was asked for but MPS is not available; use --device=auto or --device=cpu.")
    return distributed.rank_device(torch.device(name))


# --------------------------------------------------------------------------- entry point
def run_main(main):
    """Run a script's main: user errors become one paragraph and exit code 2, Ctrl-C exit code 130. Under torchrun
    (distributed.py) rank 0 runs main and the other ranks compute the trunk-pass shards it hands out."""
    from lab import distributed  # under torchrun: rank 0 runs main, the other ranks compute trunk-pass shards for it

    with contextlib.suppress(AttributeError, ValueError):  # a file name that is not UTF-8 never stops a print
        sys.stdout.reconfigure(errors="backslashreplace")
    try:
        distributed.start()
        if distributed.is_main():
            main()
        else:
            distributed.serve()
        output_lock.release_locks()
    except lab.LabError as exc:
        _fail(f"error: {exc}", 2)
    except KeyboardInterrupt:
        _fail("Interrupted by the user (Ctrl-C); finished artifacts are intact.", 130)
    except distributed.Terminated:
        _fail(
            "error: torchrun stopped this run because another rank failed: its report below names the rank and "
            "how it ended. Nothing half-written was kept as complete; run the same command again once the cause "
            "is fixed.",
            143,
        )
    except MemoryError:
        _fail(
            "error: out of memory. Lower batch_size or num_workers (or umap_samples_per_split for the 2-D map) "
            "and run again.",
            2,
        )
    except Exception as exc:  # an unexpected failure: a researcher must see where the code failed
        traceback.print_exc(file=sys.stderr)
        _fail(
            f"error: unexpected failure ({type(exc).__name__}: {exc}). This is likely a bug in the lab, not in "
            f"your data: the traceback above shows where it happened; please report it with that traceback.",
            1,
        )
    finally:
        distributed.stop()


def _fail(message, code):
    """One message on stderr, then the exit code. Under torchrun, only rank 0 speaks for a run that it stops (the
    other ranks' failures reach it as reasons); a SIGTERM from torchrun must not cut the message short."""
    from lab import distributed

    distributed.stopping()
    if distributed.is_main() or code not in (130, 143):  # Ctrl-C and torchrun's stop reach every rank at once
        print("\n" + distributed.report_failure(message), file=sys.stderr)
    distributed.stop()
    raise SystemExit(code) from None
