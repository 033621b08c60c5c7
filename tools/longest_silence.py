"""How long does a command stay silent? Runs a command, passes its output through line by line (stdout and stderr
together), and at the end prints the longest gap between two output lines (and from the start to the first line,
and from the last line to the end), with the line that ended it. The lab's rule: no stage is silent for more than
10 seconds (DEVELOPERS.md); this is the committed check of that rule.

Reads nothing of its own; writes a CSV of every line's time when --log=FILE is given. Exits with the command's own
exit status, or 3 when the command succeeded but a gap exceeded --limit (default 10 s).

    python tools/longest_silence.py -- python run_pipeline.py --data_root=../shared/data/ndsb112 --seen_classes=all
    python tools/longest_silence.py --limit=10 --log=/tmp/lines.csv -- python evaluate.py
"""

import csv
import os
import subprocess
import sys
import time


def parse(argv):
    if "--" not in argv:
        raise SystemExit("usage: python tools/longest_silence.py [--limit=SECONDS] [--log=FILE] -- COMMAND ...")
    split = argv.index("--")
    options, command = argv[:split], argv[split + 1 :]
    limit, log = 10.0, None
    for option in options:
        name, _, value = option.partition("=")
        if name == "--limit":
            limit = float(value)
        elif name == "--log":
            log = value
        else:
            raise SystemExit(f"unknown option {option!r}: --limit=SECONDS and --log=FILE are known")
    if not command:
        raise SystemExit("no command after --")
    return limit, log, command


def watch(command, stream=sys.stdout):
    """Run command; echo its lines; return (exit status, [(seconds since start, line)], total seconds)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")  # Python children print as they go, not at exit
    start = time.monotonic()
    lines = []
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True, errors="replace", bufsize=1
    ) as process:
        for line in process.stdout:
            lines.append((time.monotonic() - start, line.rstrip("\n")))
            stream.write(line)
            stream.flush()
        status = process.wait()
    return status, lines, time.monotonic() - start


def longest_gap(lines, total):
    """(gap in seconds, the line that ended it or '<end>', that line's number) over start, lines and end."""
    times = [0.0] + [t for t, _ in lines] + [total]
    texts = [text for _, text in lines] + ["<end of the command>"]
    gaps = [(times[i + 1] - times[i], texts[i], i + 1) for i in range(len(times) - 1)]
    return max(gaps)


def main(argv=None):
    limit, log, command = parse(sys.argv[1:] if argv is None else argv)
    status, lines, total = watch(command)
    gap, text, number = longest_gap(lines, total)
    if log:
        with open(log, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["seconds", "line"])
            writer.writerows((f"{t:.2f}", line) for t, line in lines)
    verdict = "within" if gap <= limit else "OVER"
    print(
        f"\n[longest_silence] {len(lines)} lines in {total:.1f} s; the longest silence was {gap:.1f} s ({verdict} the "
        f"{limit:g} s limit), ended by line {number}: {text[:160]!r}"
    )
    if status != 0:
        return status
    return 0 if gap <= limit else 3


if __name__ == "__main__":
    sys.exit(main())
