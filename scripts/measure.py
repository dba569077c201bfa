#!/usr/bin/env python3
"""Runs a command and prints what it cost, as one line of JSON:

    {"seconds": wall time, "cpu_seconds": user + system time,
     "written_bytes": bytes it wrote to storage}

`written_bytes` is the kernel's count of the bytes the process dirtied in
files (getrusage's ru_oublock, in 512-byte blocks): SQLite's WAL and
database pages as they are written, not what a later checkpoint rewrites
after the process ended. The command's stdout goes to stderr, so the line
is the only output; a failing command fails this.
"""
import json
import os
import subprocess
import sys
import time

start = time.monotonic()
child = subprocess.Popen(sys.argv[1:], stdout=sys.stderr)
_, status, usage = os.wait4(child.pid, 0)
seconds = time.monotonic() - start
if os.waitstatus_to_exitcode(status) != 0:
    sys.exit(f"{sys.argv[1]} failed: exit status {os.waitstatus_to_exitcode(status)}")
print(json.dumps({
    "seconds": round(seconds, 3),
    "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 3),
    "written_bytes": usage.ru_oublock * 512,
}))
