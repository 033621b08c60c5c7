"""What the benchmark's modules share: the CPU's features, rates measured side by side, peak memory, child
processes and the rows of the table. Reads /proc/cpuinfo and /proc/self/status; writes nothing.
"""

import contextlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lab
from lab import hardware, progress

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- the machine


def machine():
    import torch

    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        cpu = platform.processor()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cpu_features": hardware.cpu_features(),
        "precision_rule": hardware.describe(),
        "load_average": load_average(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
    }


def load_average():
    """The 1, 5 and 15 minute load averages: above the core count, other processes share the machine."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def feature_summary(features):
    present = [flag for flag, on in features.items() if on]
    return ", ".join(present) or "none of " + ", ".join(features)


# --------------------------------------------------------------------------- rates, side by side
def best_rates(variants, items, rounds, single_thread=False, sync=None):
    """{name: best items per second} of each variant (a callable doing the work on `items` items), measured in
    turn round after round, so that every variant meets the same machine load; the best round is the least
    disturbed. single_thread: on one torch thread, timed in that thread's CPU time, which other processes on a
    shared machine cannot inflate (they take turns on the core, not work from this thread)."""
    import torch

    threads = torch.get_num_threads()
    clock = time.thread_time if single_thread else time.perf_counter
    if single_thread:
        torch.set_num_threads(1)
    best = dict.fromkeys(variants, 0.0)
    try:
        for fn in variants.values():
            fn()  # warm-up: oneDNN picks and caches its kernels
        for _ in range(rounds):
            for name, fn in variants.items():
                start = clock()
                fn()
                if sync:
                    sync()
                best[name] = max(best[name], items / max(clock() - start, 1e-9))
    finally:
        torch.set_num_threads(threads)
    return best


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


# --------------------------------------------------------------------------- memory
def reset_peak_rss():
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets VmHWM to the current resident size
    except OSError:
        pass


def rss_mb(field):
    """VmRSS or VmHWM of this process in MB (Linux), else the lifetime peak from getrusage."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def children_peak_mb():
    """The largest peak resident memory of this process's finished children (e.g. decoding workers), in MB."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


# --------------------------------------------------------------------------- child processes
def _child(args, env, what, failed):
    """Run `python args...` at the repository root with its output captured, under a heartbeat (a line `[what]
    still working, N s` every few seconds, lab/progress.py); raise naming `failed` where it exits non-zero."""
    with progress.heartbeat(what):
        proc = subprocess.run(
            [sys.executable, *args], capture_output=True, text=True, cwd=ROOT, env={**os.environ, **(env or {})}
        )
    if proc.returncode:
        raise RuntimeError(f"benchmark child failed ({failed[:200]}):\n{proc.stderr[-3000:]}")
    return proc


def run_child(code, env=None, what="benchmark child"):
    """Run `code` in a fresh Python process at the repository root; its last stdout line, as JSON."""
    proc = _child(["-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); {code}"], env, what, code)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def wall_of_child(args, env=None, what="benchmark child"):
    """Seconds a fresh process running `python args...` at the repository root takes, start to exit."""
    start = time.perf_counter()
    _child(args, env, what, " ".join(args))
    return time.perf_counter() - start


# --------------------------------------------------------------------------- the command line
def measurement_options(argv, measurements):
    """(--quick given, the names --only=a,b chose or None, the other arguments) of a benchmark's command line;
    measurements: its (name, function) pairs. An unknown name is an error that lists the known ones."""
    quick = "--quick" in argv
    only = next((a.split("=", 1)[1].split(",") for a in argv if a.startswith("--only=")), None)
    rest = [a for a in argv if a != "--quick" and not a.startswith("--only=")]
    unknown = set(only or ()) - {name for name, _ in measurements}
    if unknown:
        raise lab.LabError(
            f"--only names unknown measurements {sorted(unknown)}; choose from {[name for name, _ in measurements]}."
        )
    return quick, only, rest


# --------------------------------------------------------------------------- rows of the table
def verdict(name, compared, value, target, ok, unit, reason=""):
    """A target measured here: met, or missed with its reason."""
    return {
        "what": name,
        "compared": compared,
        "measured": value,
        "unit": unit,
        "target": target,
        "status": "met" if ok else "MISSED",
        "met": bool(ok),
        "reason": "" if ok else reason,
    }


def not_here(name, compared, value, target, unit, reason):
    """A target that does not apply on this machine (or in --quick): the figure is shown, the verdict is not."""
    return {
        "what": name,
        "compared": compared,
        "measured": value,
        "unit": unit,
        "target": target,
        "status": "n/a",
        "met": None,
        "reason": f"n/a here: {reason}",
    }


def information(name, compared, value, unit, note=""):
    return {
        "what": name,
        "compared": compared,
        "measured": value,
        "unit": unit,
        "target": "(information)",
        "status": "info",
        "met": None,
        "reason": note,
    }


def save_result(base, file_name, result, print_table):
    """Write a benchmark's result JSON under results/ of the config `base` (the folder created, and locked, as every
    script's), print its table and where it went; returns the result."""
    from lab import artifacts

    artifacts.ensure_output_dirs(base, ("results",))
    path = artifacts.save_json(artifacts.out_path(base, "results", file_name), result)
    print_table(result)
    print(f"written to {path}")
    return result


@contextlib.contextmanager
def trained_model(trained_dir, argv, lab_argv, prefix, train):
    """The lab's argv of a trained model: of trained_dir's when given, else of a model `train(run_argv)` trains in a
    scratch folder, removed at the end (also when training or the measurement fails). lab_argv(argv, folder) makes
    the run's argv for an output folder."""
    from lab import artifacts

    if trained_dir:
        yield lab_argv(argv, artifacts.resolve(trained_dir))
        return
    scratch = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        run_argv = lab_argv(argv, scratch)
        train(run_argv)
        yield run_argv
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
