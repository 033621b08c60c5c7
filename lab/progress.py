"""Progress that speaks when a person waits: a tqdm bar on a terminal, and in a log (make demo > log, a batch job)
a plain line at most every few seconds, so that no long step is silent. Reads and writes nothing but stdout.
"""

import contextlib
import sys
import threading
import time

from tqdm import tqdm

LOG_EVERY_S = 5.0  # in a log: one line per this many seconds at most; no step stays silent for longer


def progress(iterable, total, desc, unit="items", stream=None):
    """Iterate over iterable, showing how far it got: tqdm where stdout is a terminal, lines otherwise."""
    stream = stream or sys.stdout
    if stream.isatty():
        yield from tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, file=stream)
        return
    started = last = time.perf_counter()
    for done, item in enumerate(iterable, 1):
        yield item
        now = time.perf_counter()
        if now - last >= LOG_EVERY_S and done < total:
            stream.write(f"[{desc}] {done}/{total} {unit}, {now - started:.0f} s\n")
            stream.flush()
            last = now


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
            stream.write(f"[{desc}] still working, {time.perf_counter() - started:.0f} s\n")
            stream.flush()

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
