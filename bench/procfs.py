"""What /proc says about a process: its children, CPU time and resident memory."""

from __future__ import annotations

import os
from pathlib import Path

TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """The direct children of `pid` (for a gunicorn master: its workers), in start order."""
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def cpu_seconds_from_stat(stat: str, ticks_per_s: int = TICKS_PER_S) -> float:
    """utime + stime (fields 14 and 15 of /proc/PID/stat, all threads) in seconds.

    The command name (field 2) may contain spaces and parentheses, so fields are counted after its last ')'.
    """
    after_name = stat.rsplit(")", 1)[1].split()
    return (int(after_name[11]) + int(after_name[12])) / ticks_per_s


def cpu_seconds(pid: int) -> float:
    return cpu_seconds_from_stat(Path(f"/proc/{pid}/stat").read_text())


def rss_bytes_from_status(status: str) -> int:
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            value, unit = line.split()[1:3]
            if unit != "kB":
                raise ValueError(f"VmRSS in {unit!r}, expected kB")
            return int(value) * 1024
    raise ValueError("no VmRSS line")


def rss_bytes(pid: int) -> int:
    return rss_bytes_from_status(Path(f"/proc/{pid}/status").read_text())
