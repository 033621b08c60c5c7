"""How many torch threads the trunk pass and the head's epochs run on (the setting cpu_threads): a number, fixed,
or "auto", the faster of one thread and torch's own count, measured on their own batches as they run. Reads and
writes nothing.

Why measured and not fixed (docs/performance.md, "The head under load"): the head's products are small, so
torch's OpenMP threads meet at a barrier hundreds of times per batch. On the project's idle 2-core machine a second
thread made an epoch 1.5x faster; beside one other busy process the two threads waited for each other's turns on
the cores and the epoch was 3-7x slower than on one thread (docs/performance.md's table). The trunk pass, beside
its own decoding workers, lost 2x likewise. Which of the two holds changes while a long run trains (a laptop, a
shared server), so "auto" times a few batches on each count, keeps the faster for
KEEP_SECONDS (longer where timing the slower count is costly: MAX_PROBE_SHARE) and then times them again. The
price: the thread count changes the order of the sums, so an "auto" run does not repeat bit for bit; a fixed
number does (on one machine).
"""

import contextlib
import time

import torch

from lab import runtime

AUTO = "auto"
# Batches timed per thread count in each probe, after one warm-up batch on it (the first batch after a change of
# count pays for waking threads and oneDNN's kernels for that count). The counts are compared by throughput, the
# timed batches' images over their seconds, not by the median batch: beside busy processes two threads' batches
# have a heavy tail (one thread descheduled, its partner spinning at the barrier). Beside two busy processes on the
# project's Xeon, the median of 5 batches put two threads at 1,613 images/s against one's 1,152, their throughput at
# 1,119 against 1,276, and 50 batches ran at 831 against 1,816 (`/tmp` script, commit c6e139a).
PROBE_BATCHES = 5
# How long a choice holds at least before both counts are timed again (so a load that comes or goes is followed
# within about half a minute), and the most of a run that timing the slower count may cost: where it is far
# slower (two threads beside a busy process: 7x on the project's machine), the choice holds longer, as long as
# it takes for the time lost in the probe to be MAX_PROBE_SHARE of the time between probes.
KEEP_SECONDS = 30.0
MAX_PROBE_SHARE = 0.01
MAX_KEEP_SECONDS = 600.0  # but a load that leaves is followed within 10 minutes whatever the probe cost


def thread_counts(setting, available):
    """The counts a setting chooses among: a number, at most torch's `available` threads; "auto", torch's count
    and one thread (one count alone where torch has one thread: then nothing is timed)."""
    if setting == AUTO:
        return sorted({available, 1}, reverse=True)
    return [max(1, min(int(setting), available))]


class _Pass:
    """The choice for one kind of pass (training batches and evaluation batches differ in cost per image, so
    each is timed against its own kind): the counts still to time, the seconds per image seen, the choice."""

    def __init__(self, counts):
        self.chosen, self.until = counts[0], -float("inf")
        self.start(counts)

    def start(self, counts):
        self.to_time, self.warming = list(counts), True
        self.timed = {c: [0.0, 0, 0] for c in counts}  # seconds, images and batches of the timed batches
        self.spent = {c: [0.0, 0] for c in counts}  # seconds and images of every probe batch, warm-up included

    def seconds_per_image(self, count):
        seconds, images, _ = self.timed[count]
        return seconds / images

    def lost(self):
        """The seconds the probe lost against running every probe batch at the chosen count's rate."""
        per_image = self.seconds_per_image(self.chosen)
        return sum(seconds - images * per_image for c, (seconds, images) in self.spent.items() if c != self.chosen)


class ThreadChoice:
    """The thread count per batch. `batch(kind, images)` is a context manager around one batch's work: it sets
    torch's thread count for it and, while a probe runs, times it. `batches` counts the batches run on each count
    (train.py reports the shares). clock: a monotonic clock in seconds (the tests pass a fake one)."""

    def __init__(self, counts, probe_batches=PROBE_BATCHES, keep_seconds=KEEP_SECONDS, clock=time.perf_counter):
        self.counts, self.probe_batches, self.keep_seconds, self.clock = (
            list(counts),
            probe_batches,
            keep_seconds,
            clock,
        )
        self.passes = {}
        self.batches = {}  # (kind, count): batches run

    def count_for(self, kind):
        """The count the next batch of this kind runs on: the one being timed during a probe, else the choice
        (a probe starts when the choice has held KEEP_SECONDS)."""
        if len(self.counts) == 1:
            return self.counts[0]
        state = self.passes.setdefault(kind, _Pass(self.counts))
        if not state.to_time and self.clock() >= state.until:
            state.start(self.counts)
        return state.to_time[0] if state.to_time else state.chosen

    def record(self, kind, count, seconds, images):
        """One batch of `images` on `count` threads took `seconds`: a sample of the probe, if one runs on it."""
        self.batches[kind, count] = self.batches.get((kind, count), 0) + 1
        state = self.passes.get(kind)
        if state is None or not state.to_time or state.to_time[0] != count or images == 0:
            return
        state.spent[count][0] += seconds
        state.spent[count][1] += images
        if state.warming:
            state.warming = False
            return
        timed = state.timed[count]
        timed[0], timed[1], timed[2] = timed[0] + seconds, timed[1] + images, timed[2] + 1
        if timed[2] < self.probe_batches:
            return
        state.to_time.pop(0)
        state.warming = True
        if not state.to_time:  # every count timed: keep the fastest (ties to the most threads, first in counts)
            state.chosen = min(self.counts, key=state.seconds_per_image)
            state.until = self.clock() + keep_seconds_after(state.lost(), self.keep_seconds)

    @contextlib.contextmanager
    def batch(self, kind, images):
        count = self.count_for(kind)
        if torch.get_num_threads() != count:
            torch.set_num_threads(count)
        start = self.clock()
        yield
        self.record(kind, count, self.clock() - start, images)

    def shares(self, kinds=None):
        """{count: share of the batches (of `kinds`, default every kind) run on it}, for the counts used."""
        counts = {}
        for (kind, count), n in self.batches.items():
            if kinds is None or kind in kinds:
                counts[count] = counts.get(count, 0) + n
        total = sum(counts.values())
        return {c: n / total for c, n in counts.items()} if total else {}

    def describe(self, kinds=None):
        """One phrase on the counts used: '1 thread' or 'auto: 2 threads for 80 % of batches, 1 thread for 20 %'."""
        if len(self.counts) == 1:
            return threads_text(self.counts[0])
        shares = sorted(self.shares(kinds).items(), key=lambda item: -item[1])
        parts = [f"{threads_text(c)} for {100 * s:.0f} % of batches" for c, s in shares]
        return "auto: " + (", ".join(parts) if parts else "no batch yet")


def keep_seconds_after(lost, keep_seconds=KEEP_SECONDS):
    """How long a choice holds after a probe that lost `lost` seconds: KEEP_SECONDS, or longer where the probe's
    loss would otherwise be more than MAX_PROBE_SHARE of the run."""
    return min(max(keep_seconds, lost / MAX_PROBE_SHARE), MAX_KEEP_SECONDS)


def threads_text(count):
    return f"{count} thread{'s' if count != 1 else ''}"


# The choice in force while a `chosen` block runs (None: torch's count as it is, as outside the lab's loops), and
# every choice made in this process, by (setting, torch's count): a block opened again (predict.py's next chunk of
# 1,000 images, the next split's trunk pass, the audit's next fold) goes on with the timings it has, instead of
# probing anew on a few batches.
_active = None
_made = {}


@contextlib.contextmanager
def chosen(setting):
    """Run the block's batches (those inside `batch_threads`) on the setting's thread counts, then give torch back
    the count it had (runtime.torch_threads_kept): the stages after it keep theirs. Inside a
    block already running, the outer choice goes on (its counts, its timings). Yields the ThreadChoice (its
    `describe(kinds)` says which counts ran), the same one each time for a setting in this process."""
    global _active
    if _active is not None:
        yield _active
        return
    threads = torch.get_num_threads()
    _active = _made.setdefault((setting, threads), ThreadChoice(thread_counts(setting, threads)))
    with runtime.torch_threads_kept():
        try:
            yield _active
        finally:
            _active = None


def batch_threads(device, kind, images):
    """The block of one batch of `kind` ("trunk", "train", "eval"): on the CPU inside a `chosen` block, on the
    thread count chosen for it; elsewhere (a GPU, or no block) as it is."""
    if _active is None or device.type != "cpu":
        return contextlib.nullcontext()
    return _active.batch(kind, images)
