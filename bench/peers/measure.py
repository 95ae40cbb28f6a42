#!/usr/bin/env python3
"""Runs one command and records its wall time and peak resident memory.

  measure.py --out RESULT.json --log LOG [--label K=V ...] -- COMMAND [ARGS...]

Wall time: from just before the process is started until it has exited (the whole process:
interpreter or binary start, model load, quantization, writing the output).
Peak RSS: the larger of (a) the kernel's high-water mark of the process and of its largest
waited-for descendant (getrusage ru_maxrss, what /usr/bin/time -v reports as "Maximum resident
set size") and (b) the largest sum of the RSS of the whole process tree, sampled every 20 ms
with psutil (which covers several processes alive at once).
The command's stdout and stderr go to LOG; the exit status is recorded and returned.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time

import psutil


def tree_rss(proc):
    total = 0
    try:
        procs = [proc] + proc.children(recursive=True)
    except psutil.Error:
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def main():
    argv = sys.argv[1:]
    if "--" not in argv:
        sys.exit("usage: measure.py --out RESULT.json --log LOG [--label K=V ...] -- COMMAND ...")
    cut = argv.index("--")
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--label", action="append", default=[])
    args = p.parse_args(argv[:cut])
    cmd = argv[cut + 1:]

    with open(args.log, "wb") as log:
        t0 = time.perf_counter()
        child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        ps = psutil.Process(child.pid)
        peak_sampled = 0
        done = threading.Event()

        def sample():
            nonlocal peak_sampled
            while not done.is_set():
                peak_sampled = max(peak_sampled, tree_rss(ps))
                done.wait(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - t0
        done.set()
        sampler.join()
        child.returncode = os.waitstatus_to_exitcode(status)
    # ru_maxrss of wait4 is the child's own peak; RUSAGE_CHILDREN adds its descendants' largest.
    maxrss_kib = max(usage.ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    result = {
        "command": cmd,
        "returncode": child.returncode,
        "wall_s": wall,
        "user_s": usage.ru_utime,
        "sys_s": usage.ru_stime,
        "peak_rss_bytes": max(maxrss_kib * 1024, peak_sampled),
        "peak_rss_maxrss_bytes": maxrss_kib * 1024,
        "peak_rss_sampled_bytes": peak_sampled,
        "log": args.log,
    }
    for kv in args.label:
        k, _, v = kv.partition("=")
        result[k] = v
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    return child.returncode


if __name__ == "__main__":
    sys.exit(main())
