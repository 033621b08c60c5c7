"""Progress that speaks when a person waits: a tqdm bar on a terminal, and in a log (make demo > log, a batch job)
a plain line at most every few seconds, so that no long step is silent. Reads and writes nothing but stdout.
"""

import contextlib
import os
import sys
import threading
import time

from tqdm import tqdm

LOG_EVERY_S = 5.0  # in a log: one line per this many seconds at most; no step stays silent for longer
WATCH_EVERY_S = 1.0  # a loop's watcher looks this often; it speaks after LOG_EVERY_S + this without a line
# Every line of this module is written holding this lock, and a fork (a DataLoader starting its workers inside a
# watched loop) waits for it: a child never starts with a watcher thread caught halfway through writing to stdout,
# whose own lock it would then inherit held.
_SAYING = threading.Lock()
os.register_at_fork(before=_SAYING.acquire, after_in_parent=_SAYING.release, after_in_child=_SAYING.release)


def _say(stream, text):
    with _SAYING:
        stream.write(text + "\n")
        stream.flush()


def progress(iterable, total, desc, unit="items", stream=None):
    """Iterate over iterable, showing how far it got: tqdm where stdout is a terminal, lines otherwise. In a log, a
    watcher thread also speaks when one item takes longer than LOG_EVERY_S (a large class, a slow file), so the loop
    is never silent for longer, however uneven its items."""
    stream = stream or sys.stdout
    if stream.isatty():
        yield from tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, file=stream)
        return
    started = last = time.perf_counter()
    begun = time.monotonic()
    state = {"done": 0, "said": begun, "item_at": begun, "watcher_spoke": False}
    stop = threading.Event()

    def say(text):
        _say(stream, text)
        state["said"] = time.monotonic()

    def watch():  # its own clock (monotonic): the loop's lines keep theirs
        while not stop.wait(WATCH_EVERY_S):
            now = time.monotonic()
            if now - state["said"] >= LOG_EVERY_S + WATCH_EVERY_S:  # later than the loop's own line would have come
                running = now - state["item_at"]
                say(f"[{desc}] {state['done']}/{total} {unit}, {now - begun:.0f} s; the next one for {running:.0f} s")
                state["watcher_spoke"] = True

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        for done, item in enumerate(iterable, 1):
            yield item
            state["done"], state["item_at"] = done, time.monotonic()
            now = time.perf_counter()
            if state["watcher_spoke"]:  # it just spoke: the loop's next line comes LOG_EVERY_S after it
                state["watcher_spoke"], last = False, now
            elif now - last >= LOG_EVERY_S and done < total:
                say(f"[{desc}] {done}/{total} {unit}, {now - started:.0f} s")
                last = now
    finally:
        stop.set()
        watcher.join()


@contextlib.contextmanager
def heartbeat(desc, every=LOG_EVERY_S, stream=None):
    """`with heartbeat("audit fold 2/5"):` a step that cannot report on itself (a library's fit, a large file being
    written) prints `[desc] still working, N s` every `every` seconds from a background thread until it ends; a step
    shorter than that prints nothing. The thread only prints: the step and its results are untouched."""
    stream = stream or sys.stdout
    stop = threading.Event()
    started = time.perf_counter()

    def beat():
        while not stop.wait(every):
            _say(stream, f"[{desc}] still working, {time.perf_counter() - started:.0f} s")

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
