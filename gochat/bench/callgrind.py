"""Instructions the node spends on a run's deliveries, counted by callgrind.

Seconds of CPU on a shared two-core machine move ±15–25 % from one minute to
the next (the other core's load slows this one), so a 5 % difference between
two builds cannot be seen in them. An instruction count can: it is the same
for the same work, whatever else the machine does. Start the node under
``valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=OUT``
and give ``gochat-bench --callgrind OUT --pid PID``: counting is switched on
after every client has logged in and off once the last push arrived, so the
figure leaves out start-up, sign-up and login.
"""

from __future__ import annotations

import glob
import os
import subprocess


def _control(pid: int, *args: str) -> None:
    try:
        subprocess.run(
            ["callgrind_control", *args, str(pid)], check=True, capture_output=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeError(f"callgrind_control {' '.join(args)} {pid} failed: {exc}") from None


def start(pid: int) -> None:
    """Zero the node's counters and start counting."""
    _control(pid, "--zero")
    _control(pid, "--instr=on")


def stop(pid: int, out_file: str) -> int:
    """Stop counting, dump, and return the instructions counted since :func:`start`."""
    _control(pid, "--instr=off")
    before = set(glob.glob(glob.escape(out_file) + ".*"))
    _control(pid, "--dump=gochat-bench")
    dumps = set(glob.glob(glob.escape(out_file) + ".*")) - before
    if not dumps:
        raise RuntimeError(f"callgrind wrote no dump next to {out_file}")
    return total_instructions(max(dumps, key=os.path.getmtime))


def total_instructions(path: str) -> int:
    """The ``totals:`` line of a callgrind output file: every cost line added up.

    (Its ``summary:`` line reads 0 in a dump taken while counting was
    switched on and off by ``callgrind_control``.)
    """
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("totals:"):
                return int(line.split()[1])
    raise RuntimeError(f"{path} has no totals line")
