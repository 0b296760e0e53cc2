"""What /proc says about processes we started (Linux): sessions, descendants, start times.

Builders and tritonserver run in sessions of their own; their children may leave the process group (MPI
workers, python-backend stubs), so ending "everything we started" needs /proc, not only `killpg`.
A pid is recognised by its start time as well, so a pid reused by an unrelated process is never signalled.
"""

from __future__ import annotations

import os


def stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (which may hold spaces and parentheses).

    Index 0 is the state, 1 the parent pid, 3 the session id, 19 the start time; None when the process is gone.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read().decode(errors="replace")
    except OSError:
        return None
    return stat[stat.rfind(")") + 2 :].split()


def _pids() -> list[int]:
    try:
        return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]
    except OSError:
        return []


def start_time(pid: int) -> str | None:
    """The start time of a live process (None when gone or a zombie, which is already dead)."""
    fields = stat_fields(pid)
    if not fields or fields[0] == "Z":
        return None
    return fields[19]


def session_members(sid: int) -> list[int]:
    """Live (non-zombie) processes of session `sid`; children that left the process group are still in it."""
    members = []
    for pid in _pids():
        fields = stat_fields(pid)
        if fields and len(fields) > 3 and fields[0] != "Z" and int(fields[3]) == sid:
            members.append(pid)
    return members


def descendant_processes(root_pid: int) -> dict[int, str]:
    """Every live descendant of `root_pid`, as pid -> start time."""
    children: dict[int, list[int]] = {}
    for pid in _pids():
        fields = stat_fields(pid)
        if fields:
            children.setdefault(int(fields[1]), []).append(pid)
    found: dict[int, str] = {}
    pending = list(children.get(root_pid, []))
    while pending:
        pid = pending.pop()
        start = start_time(pid)
        if start is not None and pid not in found:
            found[pid] = start
            pending.extend(children.get(pid, []))
    return found
