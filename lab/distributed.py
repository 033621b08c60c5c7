"""torchrun: the trunk pass shared by several processes, GPUs or machines; everything else on rank 0.

Under `torchrun --nproc_per_node=N script.py ...` (and `--nnodes=M` for several machines) every rank starts the
same script. Rank 0 runs it exactly as a single process would: it alone takes the output folder's lock and writes
results/, checkpoints/, embeddings/, figs/ and the cache. The other ranks serve (`serve`): each trunk pass rank 0
meets is split into one contiguous shard per rank (`map_shards`; whole batches, about N/W items each), which
every rank computes on its own device (cuda:LOCAL_RANK on GPUs) and writes into the shared cache folder; rank 0
then assembles the parts into the very file a single process writes (lab/trunk_cache.py). Without torchrun (no
WORLD_SIZE above 1 in the environment) nothing here does anything.

The ranks exchange only small messages, over gloo: which shard to compute, and whether it worked. The features
themselves travel through the cache folder, so gloo serves on GPUs too (no tensor ever crosses between ranks,
which is what NCCL is for), and output_dir and data_root must be visible at the same path on every machine.
A rank whose shard fails reports why, and rank 0 stops the run with one message naming it; a rank that dies
(killed, crashed) is noticed by gloo or torchrun at once; a rank whose shard is not done
PLANKTON_LAB_RANK_TIMEOUT_MINUTES (120) after the others' stops the run as stuck.

Reads the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT, TORCHELASTIC_ERROR_FILE).
Writes nothing of the lab's; on rank 0, when the run fails, torchrun's error file, so that torchrun's closing
report carries the lab's message instead of a pointer to its documentation.
"""

import datetime
import json
import os
import signal
import socket
import sys
import time
import traceback
from dataclasses import dataclass

import lab

# Machines of one job can start minutes apart (a scheduler, a slow file system at import).
START_WAIT = datetime.timedelta(minutes=30)
# Waiting for the next shard is no sign of trouble (rank 0 may be scanning a folder or training the head for
# hours); a dead rank 0 is noticed by gloo (closed connection) or torchrun (which stops every rank).
JOB_WAIT = datetime.timedelta(days=7)
# Waiting for the other ranks' shards is bounded: shards are equal, so the slowest rank should finish soon after
# the fastest; one that has not answered after this long is stuck (e.g. on an unreachable network file system).
TIMEOUT_VARIABLE = "PLANKTON_LAB_RANK_TIMEOUT_MINUTES"
DEFAULT_TIMEOUT_MINUTES = 120

_state = {"started": False, "jobs": None, "shards": None, "broken": False, "released": False, "stopping": False}


class Terminated(BaseException):
    """torchrun (or a scheduler) asked this rank to stop: raised from SIGTERM so that cleanups run."""


# --------------------------------------------------------------------------- who am I
def world_size():
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank():
    return int(os.environ.get("RANK", "0"))


def local_rank():
    return int(os.environ.get("LOCAL_RANK", "0"))


def active():
    """True under torchrun with more than one rank."""
    return world_size() > 1


def is_main():
    return rank() == 0


def whoami():
    return f"rank {rank()} of {world_size()} (host {socket.gethostname()}, pid {os.getpid()})"


def shard_bounds(n, shard, shards, align=1):
    """[start, stop) of shard `shard` of `shards` over n items: contiguous, in order, starting on a multiple of
    `align`. With align = the batch size, every item falls in the same batch as in one process (batch b holds
    items [b*align, (b+1)*align) either way), so a rank computes it with the same kernels on the same batch
    shape, and the shards equal the single process's output byte for byte. Shards differ by one batch at most."""
    batches = -(-n // align)
    return min(n, batches * shard // shards * align), min(n, batches * (shard + 1) // shards * align)


def rank_device(device):
    """This rank's device: under torchrun, one GPU per rank (cuda:LOCAL_RANK) whatever index the setting names."""
    import torch

    if not active() or device.type != "cuda":
        return device
    index = local_rank()
    if index >= torch.cuda.device_count():
        raise lab.LabError(
            f"This is local rank {index} on {socket.gethostname()}, which has only "
            f"{torch.cuda.device_count()} GPU(s) visible: each rank computes on its own GPU, so "
            f"--nproc_per_node must not exceed the GPUs of one machine (or use --device=cpu)."
        )
    torch.cuda.set_device(index)  # pinned memory and CUDA contexts on this rank's GPU, not on GPU 0
    return torch.device("cuda", index)


# --------------------------------------------------------------------------- start and stop
def timeout():
    text = os.environ.get(TIMEOUT_VARIABLE, str(DEFAULT_TIMEOUT_MINUTES))
    try:
        minutes = float(text)
        if minutes <= 0:
            raise ValueError
    except ValueError:
        raise lab.LabError(
            f"{TIMEOUT_VARIABLE}={text!r} must be a positive number of minutes (how long the ranks "
            f"wait for one that is stuck; default {DEFAULT_TIMEOUT_MINUTES})."
        ) from None
    return datetime.timedelta(minutes=minutes)


def start():
    """Join the process group (gloo) when started by torchrun with several ranks; no-op otherwise."""
    if not active() or _state["started"]:
        return
    import torch.distributed as dist

    wait = timeout()
    signal.signal(signal.SIGTERM, _terminate)
    dist.init_process_group("gloo", timeout=START_WAIT)
    _state["jobs"] = dist.new_group(backend="gloo", timeout=JOB_WAIT)
    _state["shards"] = dist.new_group(backend="gloo", timeout=wait)
    _state["started"] = True
    if is_main():
        print(
            f"[torchrun] {world_size()} ranks: each computes a shard of every trunk pass; rank 0 (this one) runs "
            f"everything else and writes every output",
            flush=True,
        )


def _terminate(signum, frame):
    _state["broken"] = True  # torchrun is stopping every rank: no more messages between them
    if not _state["stopping"]:  # already on the way out: let the cleanup that runs finish
        _state["stopping"] = True
        raise Terminated()


def stopping():
    """The run is ending (an error is being reported): a SIGTERM from torchrun must not cut it short."""
    _state["stopping"] = True


def stop():
    """Rank 0 releases the serving ranks (they exit 0); every rank leaves the process group."""
    if not _state["started"]:
        return
    import torch.distributed as dist

    _state["started"] = False
    if is_main() and not _state["broken"] and not _state["released"]:
        _state["released"] = True
        try:
            dist.broadcast_object_list([None], src=0, group=_state["jobs"])
        except RuntimeError:
            pass  # a rank is gone already; torchrun stops the rest
    try:
        dist.destroy_process_group()
    except RuntimeError:
        pass


# --------------------------------------------------------------------------- the shards
@dataclass
class Outcome:
    """What one rank's shard came to: its result, or why it failed."""

    rank: int
    host: str
    ok: bool
    result: object = None
    reason: str = ""


def _attempt(task, n, align, kwargs):
    """Run this rank's shard of task; any failure becomes a reason for rank 0 to report."""
    start_, stop_ = shard_bounds(n, rank(), world_size(), align)
    host = socket.gethostname()
    try:
        return Outcome(rank(), host, True, task(rank(), start_, stop_, **kwargs))
    except lab.LabError as exc:
        return Outcome(rank(), host, False, reason=str(exc))
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        return Outcome(rank(), host, False, reason=f"{exc.strerror or exc}{where}")
    except Exception as exc:  # a bug: its traceback is wanted, on the stderr of the rank where it happened
        print(f"[{whoami()}] unexpected failure:", file=sys.stderr)
        traceback.print_exc(file=sys.stderr)
        return Outcome(
            rank(),
            host,
            False,
            reason=f"unexpected failure ({type(exc).__name__}: {exc}), traceback printed by that rank",
        )


def map_shards(task, n, what, align=1, **kwargs):
    """On rank 0: run task(rank, start, stop, **kwargs) on every rank, each on its shard of n items (shard_bounds,
    aligned to `align` items), and return the results in rank order (so in item order). Single-process:
    task(0, 0, n, **kwargs) alone. A rank that fails stops the run with one LabError naming it; tasks clean up
    after themselves."""
    if not _state["started"]:
        return [task(0, 0, n, **kwargs)]
    import torch.distributed as dist

    assert is_main(), "only rank 0 hands out shards"
    job = (task, n, align, kwargs)
    try:
        dist.broadcast_object_list([job], src=0, group=_state["jobs"])
        mine = _attempt(task, n, align, kwargs)
        outcomes = [None] * world_size()
        dist.gather_object(mine, outcomes, dst=0, group=_state["shards"])
    except RuntimeError as exc:  # gloo: a rank died, or did not answer within the timeout
        _state["broken"] = True
        stopping()
        raise lab.LabError(_lost_rank(exc, what)) from None
    failed = [o for o in outcomes if not o.ok]
    if failed:
        stopping()
        reasons = " ".join(f"Rank {o.rank} of {world_size()} (host {o.host}): {o.reason.rstrip('.')}." for o in failed)
        raise lab.LabError(
            f"{what[0].upper()}{what[1:]} failed on {len(failed)} of {world_size()} ranks. {reasons} "
            f"Nothing of it was kept as complete (the next run computes it again); fix the cause on "
            f"that machine and run the same command again."
        )
    return [o.result for o in outcomes]


def _lost_rank(exc, what):
    first_line = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    if "timed out" in first_line.lower():
        cause = (
            f"A rank did not finish its shard within {TIMEOUT_VARIABLE}={timeout().total_seconds() / 60:g} "
            f"minutes of the others: it is stuck (e.g. on an unreachable file system), or merely slower (then "
            f"raise {TIMEOUT_VARIABLE})."
        )
    else:
        cause = (
            "A rank that is killed (e.g. by the out-of-memory killer: lower batch_size or num_workers) or "
            "crashes ends a run like this; torchrun's report names it and how it ended."
        )
    return (
        f"A rank stopped answering during {what} ({first_line}). {cause} Nothing of {what} was kept as "
        f"complete; run the same command again once the cause is fixed."
    )


def serve():
    """On ranks other than 0: compute the shards rank 0 hands out until it releases this rank."""
    import torch.distributed as dist

    while True:
        box = [None]
        try:
            dist.broadcast_object_list(box, src=0, group=_state["jobs"])
            if box[0] is None:
                _state["released"] = True
                stopping()
                return
            task, n, align, kwargs = box[0]
            dist.gather_object(_attempt(task, n, align, kwargs), None, dst=0, group=_state["shards"])
        except RuntimeError as exc:  # gloo: rank 0 is gone
            _state["broken"] = True
            stopping()
            raise lab.LabError(
                f"lost rank 0 ({str(exc).strip()[:200]}); torchrun's report says why it stopped."
            ) from None


# --------------------------------------------------------------------------- how a rank ends
def report_failure(message):
    """Rank 0's closing message also goes into torchrun's error file, so that torchrun's own report (printed after
    it) shows the lab's message; other ranks prefix theirs with who they are."""
    if not active():
        return message
    if not is_main():
        return f"[{whoami()}] {message}"
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if error_file:
        try:
            with open(error_file, "w") as f:
                json.dump(
                    {
                        "message": {
                            "message": message,
                            "extraInfo": {"py_callstack": message, "timestamp": str(int(time.time()))},
                        }
                    },
                    f,
                )
        except OSError:
            pass  # torchrun's report then points at its documentation, and the message above stands alone
    return message
