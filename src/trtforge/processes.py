"""Processes we start and must end: `OwnedProcess`, one owner for a command and everything it starts (Linux).

    with OwnedProcess(argv, stdout=log_path) as owned:   # its own session; __exit__ ends everything
        ...
        report = owned.stop(grace_s=2.0)                  # TERM → grace → KILL; idempotent, any thread

Builders and tritonserver run in sessions of their own, but their children may leave the process group or even
the session (MPI workers, python-backend stubs call `setsid`), so `killpg` alone orphans them. The owner ends
the union of what it can find: the session's members, and every descendant it has seen while the command ran
(a background scan of /proc records them, since a descendant whose parent exits is re-parented and no longer
looks like ours). A pid is always checked against the start time recorded with it and signalled through a pidfd
opened before that check, so a pid reused by an unrelated process is never signalled.

The session leader is not reaped until the end is over: while it is an unreaped zombie its pid cannot be reused,
so the session id keeps naming our session. `end_orphaned_session` ends a session whose owner died (it was
SIGKILLed) from a record of the leader's pid and start time, on the same signalling code.
"""

from __future__ import annotations

import contextlib
import enum
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

__all__ = [
    "EndReport",
    "OwnedProcess",
    "ProcessError",
    "ProcessState",
    "descendant_processes",
    "end_orphaned_session",
    "session_members",
    "start_time",
    "stat_fields",
]

DEFAULT_GRACE_S = 2.0
# How often the owner records the command's descendants while it runs (one pass over /proc each time, ~20 ms
# for ~100 processes on a busy 2-core machine). Processes are mostly started early (MPI workers, python-backend
# stubs at model load): a scan that finds nothing new doubles the interval up to the maximum, a new one resets it.
DEFAULT_TRACK_INTERVAL_S = 0.5
_TRACK_MAX_INTERVAL_S = 8.0
# Longest wait between checks while ending: a pidfd wakes us at once when a process exits; this bounds how late
# a process forked during the end is noticed (and how often we rescan without pidfds).
_END_POLL_S = 0.05
# After SIGKILL a process still needs the kernel to tear it down (longer in uninterruptible sleep); past this the
# survivors are reported instead of waited for.
_KILL_WAIT_S = 5.0


# -- reading /proc ----------------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class _Entry:
    ppid: int
    sid: int
    start: str | None  # None: a zombie


def _process_table() -> dict[int, _Entry]:
    """Every process on the machine, in one pass over /proc (a process may vanish while we read: skipped)."""
    table = {}
    for pid in _pids():
        fields = stat_fields(pid)
        if fields and len(fields) > 19:
            start = None if fields[0] == "Z" else fields[19]
            table[pid] = _Entry(ppid=int(fields[1]), sid=int(fields[3]), start=start)
    return table


def _descendants(table: Mapping[int, _Entry], roots: Sequence[int]) -> dict[int, str]:
    """Live descendants of `roots` in `table`, as pid -> start time (the roots themselves excluded)."""
    children: dict[int, list[int]] = {}
    for pid, entry in table.items():
        children.setdefault(entry.ppid, []).append(pid)
    found: dict[int, str] = {}
    pending = [child for root in roots for child in children.get(root, [])]
    while pending:
        pid = pending.pop()
        start = table[pid].start
        if start is not None and pid not in found:
            found[pid] = start
            pending.extend(children.get(pid, []))
    return found


def _session(table: Mapping[int, _Entry], sid: int) -> dict[int, str]:
    """Live members of session `sid` in `table` (children that left the process group are still in it)."""
    return {pid: e.start for pid, e in table.items() if e.sid == sid and e.start is not None}


def session_members(sid: int) -> list[int]:
    """Live (non-zombie) processes of session `sid`; children that left the process group are still in it."""
    return sorted(_session(_process_table(), sid))


def descendant_processes(root_pid: int) -> dict[int, str]:
    """Every live descendant of `root_pid`, as pid -> start time."""
    return _descendants(_process_table(), [root_pid])


# -- signalling -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EndReport:
    """What ending a command did: whether it had to signal, whether TERM was enough, and whom it signalled."""

    signalled: bool  # False: the command and everything it started had exited by themselves
    killed: bool  # some process outlived the grace and got SIGKILL
    grace_s: (
        float  # the TERM → KILL grace this end allowed (shortened by `after_leader_s` once the leader exited)
    )
    terminated: tuple[int, ...] = ()  # pids sent SIGTERM
    kill_sent: tuple[int, ...] = ()  # pids sent SIGKILL
    survivors: tuple[int, ...] = ()  # still running after SIGKILL and `_KILL_WAIT_S` (uninterruptible sleep)
    duration_s: float = 0.0  # from the start of the end until every process was gone
    leader_exit_s: float | None = None  # from the start of the end until the leader was seen gone


class _Signaller:
    """Signals processes by (pid, start time) through pidfds: a pid is opened, then its start time checked.

    A pidfd refers to the process that had the pid when it was opened; if the start time read afterwards is
    the recorded one, that process is ours, and no later reuse of the pid can redirect the signal. Without
    pidfd support (old kernels) it falls back to kill() right after the check. The pidfds also let the end
    sleep until some process exits instead of polling.
    """

    def __init__(self) -> None:
        self._fds: dict[int, int] = {}  # pid -> pidfd of the process we checked
        self._pidfd = hasattr(os, "pidfd_open")

    def send(self, targets: Mapping[int, str], sig: signal.Signals) -> tuple[int, ...]:
        """Send `sig` to each target still running with its recorded start time; the pids signalled."""
        sent = []
        for pid, start in sorted(targets.items()):
            if self._send(pid, start, sig):
                sent.append(pid)
        return tuple(sent)

    def _send(self, pid: int, start: str, sig: signal.Signals) -> bool:
        fd = self._open(pid, start)
        try:
            if fd is None:
                if start_time(pid) != start:
                    return False
                os.kill(pid, sig)
            else:
                signal.pidfd_send_signal(fd, sig)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def _open(self, pid: int, start: str) -> int | None:
        if not self._pidfd:
            return None
        fd = self._fds.get(pid)
        if fd is not None:
            return fd
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return None  # gone: the start-time check below will not match either
        except OSError:
            self._pidfd = False  # not supported here (ENOSYS, EPERM in some sandboxes)
            return None
        if start_time(pid) != start:
            os.close(fd)
            return None
        self._fds[pid] = fd
        return fd

    def wait_any(self, pids: Sequence[int], timeout_s: float) -> None:
        """Sleep until one of `pids` exits or `timeout_s` passes (early return only with pidfds)."""
        fds = [self._fds[pid] for pid in pids if pid in self._fds]
        if not fds:
            time.sleep(max(timeout_s, 0.0))
            return
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        poller.poll(max(int(timeout_s * 1000), 0))

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def _end_processes(
    find: Callable[[], dict[int, str]],
    *,
    grace_s: float,
    leader_running: Callable[[], bool] | None = None,
    after_leader_s: float | None = None,
    on_signal: Callable[[signal.Signals], None] = lambda _sig: None,
) -> EndReport:
    """TERM everything `find()` returns (and whatever it finds later), KILL what is left after `grace_s`.

    `find` is called again on every check, so a process forked while we end is found and ended too.
    `leader_running()` says whether the leader (watched through its own handle) still runs (None: no leader of
    ours to watch, as for an orphaned session); once it has exited, what is left gets at most `after_leader_s`
    more. `on_signal` also signals by other means (the process group,
    while the leader pins its id).
    """
    began = time.monotonic()
    signaller = _Signaller()
    leader_exit_s: float | None = None
    deadline = began + grace_s

    def report(*, signalled: bool, killed: bool, **pids: tuple[int, ...]) -> EndReport:
        return EndReport(
            signalled=signalled,
            killed=killed,
            grace_s=round(deadline - began, 6),
            duration_s=time.monotonic() - began,
            leader_exit_s=leader_exit_s,
            **pids,
        )

    def leader_gone() -> bool:
        nonlocal leader_exit_s, deadline
        if leader_running is None:
            return True
        if leader_running():
            return False
        if leader_exit_s is None:
            leader_exit_s = time.monotonic() - began
            if after_leader_s is not None:
                deadline = min(deadline, began + leader_exit_s + after_leader_s)
        return True

    try:
        targets = find()
        if not targets and leader_gone():
            return report(signalled=False, killed=False)
        terminated = set(signaller.send(targets, signal.SIGTERM))
        on_signal(signal.SIGTERM)
        while True:
            remaining = find()
            if leader_gone() and not remaining:
                return report(signalled=True, killed=False, terminated=tuple(sorted(terminated)))
            newcomers = {pid: start for pid, start in remaining.items() if pid not in terminated}
            terminated.update(signaller.send(newcomers, signal.SIGTERM))
            left_s = deadline - time.monotonic()
            if left_s <= 0:
                break
            signaller.wait_any(list(remaining), min(left_s, _END_POLL_S))
        kill_sent: set[int] = set()
        kill_deadline = time.monotonic() + _KILL_WAIT_S
        while not leader_gone() or remaining:
            kill_sent.update(signaller.send(remaining, signal.SIGKILL))
            on_signal(signal.SIGKILL)
            if time.monotonic() >= kill_deadline:
                break
            signaller.wait_any(list(remaining), _END_POLL_S)
            remaining = find()
        return report(
            signalled=True,
            killed=True,
            terminated=tuple(sorted(terminated)),
            kill_sent=tuple(sorted(kill_sent)),
            survivors=tuple(sorted(remaining)),
        )
    finally:
        signaller.close()


def end_orphaned_session(
    sid: int, leader_start: str | None, *, grace_s: float = DEFAULT_GRACE_S
) -> EndReport:
    """End the session of a command whose owner died without ending it (the owner was SIGKILLed).

    `leader_start` is the leader's start time recorded when it started. Linux does not reuse a pid while it
    names a live session, so the session's members are the command's own unless its leader pid now belongs to a
    different process (start time differs): then nothing is signalled. Descendants of the members that left the
    session are ended too; those that were already re-parented away cannot be told apart from strangers.
    """

    def find() -> dict[int, str]:
        current = start_time(sid)
        if current is not None and current != leader_start:
            return {}  # the pid was reused by an unrelated process; the old session is long gone
        table = _process_table()
        members = _session(table, sid)
        return {**members, **_descendants(table, list(members))}

    return _end_processes(find, grace_s=grace_s)


# -- the owner --------------------------------------------------------------------------------------------


class ProcessError(RuntimeError):
    """An `OwnedProcess` used out of order (started twice, or started after it was stopped)."""


class ProcessState(enum.Enum):
    CREATED = "created"  # not started
    RUNNING = "running"  # the command runs
    EXITED = "exited"  # the command exited by itself; what it started may still run until `stop()`
    STOPPING = "stopping"  # `stop()` is ending everything
    ENDED = "ended"  # everything is gone (or never started)


class OwnedProcess:
    """A command in its own session and everything it starts, ended together; a context manager.

    Args:
        argv: the command.
        env: its whole environment (default: ours).
        cwd: its working directory (default: ours).
        stdout: where its stdout and stderr go: a path (appended to; closed at the end), `subprocess.PIPE`
            (read `self.stdout`; the reader closes it), `subprocess.DEVNULL`, an open binary file, or None
            to inherit ours.
        grace_s: the default TERM → KILL grace of `stop()`.
        track_interval_s: how often descendants are recorded while it runs, at first and after each new one
            (the interval doubles while nothing new appears, up to 8 s).
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        stdout: Path | int | IO[bytes] | None = None,
        grace_s: float = DEFAULT_GRACE_S,
        track_interval_s: float = DEFAULT_TRACK_INTERVAL_S,
    ) -> None:
        self.argv = [str(arg) for arg in argv]
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.grace_s = grace_s
        self.track_interval_s = track_interval_s
        self._stdout_target = stdout
        self._state = ProcessState.CREATED
        self._lock = threading.Lock()  # state transitions and the start
        # One end at a time; later stop() calls wait for it and share its report.
        self._end_lock = threading.Lock()
        self._seen_lock = threading.Lock()
        self._popen: subprocess.Popen[bytes] | None = None
        self._leader_start: str | None = None
        self._leader_fd: int | None = None
        self._log: IO[bytes] | None = None
        self._seen: dict[int, str] = {}  # every descendant recorded while running: pid -> start time
        self._tracking = threading.Event()  # set: stop tracking
        self._tracker: threading.Thread | None = None
        self._returncode: int | None = None
        self._report: EndReport | None = None

    # -- properties -------------------------------------------------------------------------------------

    @property
    def state(self) -> ProcessState:
        return self._state

    @property
    def pid(self) -> int | None:
        """The leader's pid, which is also the session and process group id."""
        return self._popen.pid if self._popen is not None else None

    @property
    def leader_start(self) -> str | None:
        """The leader's /proc start time (recorded at start), for `end_orphaned_session` records."""
        return self._leader_start

    @property
    def stdout(self) -> IO[bytes] | None:
        """The read end of the output pipe when started with `stdout=subprocess.PIPE`."""
        return self._popen.stdout if self._popen is not None else None

    @property
    def report(self) -> EndReport | None:
        """What the end did, once `stop()` ran (None before)."""
        return self._report

    def __repr__(self) -> str:
        return f"OwnedProcess({self.argv[0]!r}, pid={self.pid}, state={self._state.value})"

    # -- lifecycle --------------------------------------------------------------------------------------

    def __enter__(self) -> OwnedProcess:
        if self._state is ProcessState.CREATED:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start the command in a new session and begin recording its descendants.

        Raises:
            ProcessError: already started, or stopped before it started.
            OSError: the command could not be started (the state becomes ENDED).
        """
        with self._lock:
            if self._state is not ProcessState.CREATED:
                raise ProcessError(f"{self!r} cannot start: it is {self._state.value}")
            stdout: int | IO[bytes] | None
            if isinstance(self._stdout_target, Path):
                self._stdout_target.parent.mkdir(parents=True, exist_ok=True)
                self._log = stdout = open(self._stdout_target, "ab")  # noqa: SIM115 -- closed at the end
            else:
                stdout = self._stdout_target
            try:
                self._popen = subprocess.Popen(
                    self.argv,
                    env=self.env,
                    cwd=self.cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=stdout,
                    stderr=subprocess.STDOUT if stdout is not None else None,
                    start_new_session=True,  # its own session and process group: we can find all of it
                )
            except BaseException:
                self._close_log()
                self._state = ProcessState.ENDED
                self._report = EndReport(signalled=False, killed=False, grace_s=0.0)
                raise
            pid = self._popen.pid
            # Unreaped, the child keeps its pid: its start time and pidfd are surely its own (a zombie has both).
            fields = stat_fields(pid)
            self._leader_start = fields[19] if fields and len(fields) > 19 else None
            with contextlib.suppress(OSError):
                self._leader_fd = os.pidfd_open(pid)
            self._state = ProcessState.RUNNING
            self._tracker = threading.Thread(target=self._track_loop, name=f"track-{pid}", daemon=True)
            self._tracker.start()

    def poll(self) -> int | None:
        """The leader's exit status once it has exited (negative: the signal that killed it), else None.

        The leader is not reaped here (see the module docstring), only looked at.
        """
        if self._returncode is not None or self._popen is None:
            return self._returncode
        if self._popen.returncode is not None:
            return self._popen.returncode
        try:
            info = os.waitid(os.P_PID, self._popen.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # reaped by the end in another thread (Popen's lock makes this wait for its
            # status), or by a stray waitpid(-1), after which Popen reports 0
            self._returncode = self._popen.wait()
            return self._returncode
        if info is None or info.si_pid == 0:
            return None
        code = info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
        self._returncode = code
        with self._lock:
            if self._state is ProcessState.RUNNING:
                self._state = ProcessState.EXITED
        return code

    def wait(self, timeout_s: float | None = None) -> int | None:
        """Wait for the leader to exit; its status, or None if it still runs after `timeout_s`."""
        if self._popen is None:
            raise ProcessError(f"{self!r} was not started")
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while (code := self.poll()) is None:
            left_s = None if deadline is None else deadline - time.monotonic()
            if left_s is not None and left_s <= 0:
                return None
            step_s = 1.0 if left_s is None else min(left_s, 1.0)
            fd = self._leader_fd
            if fd is not None:
                with contextlib.suppress(OSError, ValueError):  # closed by a concurrent end: poll() says
                    select.select([fd], [], [], step_s)
                    continue
            time.sleep(min(step_s, _END_POLL_S))
        return code

    def track(self) -> dict[int, str]:
        """Record the command's current descendants and session members now; all recorded so far.

        Runs every `track_interval_s` on its own; call it to be sure a process just started is recorded.
        """
        if self._popen is None:
            return {}
        found = self._live(_process_table())
        with self._seen_lock:
            self._seen.update(found)
            return dict(self._seen)

    def stop(self, grace_s: float | None = None, *, after_leader_s: float | None = None) -> EndReport:
        """End the command and everything it started: TERM, then KILL what is left after the grace.

        Args:
            grace_s: TERM → KILL grace (default `self.grace_s`).
            after_leader_s: once the leader has exited (before the end or during it), what is left gets at most
                this much more of the grace: for commands whose children only end when the leader tells them
                to (tritonserver's python-backend stubs), a gone leader means no one will.

        Idempotent and safe from any state and any thread: a call while another ends waits for it and returns
        the same report; a call before `start()` means the command never starts.
        """
        with self._lock:
            if self._state is ProcessState.CREATED:
                self._state = ProcessState.ENDED
                self._report = EndReport(signalled=False, killed=False, grace_s=0.0)
        with self._end_lock:
            if self._report is not None:
                return self._report
            with self._lock:
                self._state = ProcessState.STOPPING
            grace = self.grace_s if grace_s is None else grace_s
            try:
                self._report = self._end(grace, after_leader_s)
            finally:
                with self._lock:
                    self._state = ProcessState.ENDED
            return self._report

    # -- internals --------------------------------------------------------------------------------------

    def _track_loop(self) -> None:
        interval_s = self.track_interval_s
        known = 0
        while not self._tracking.wait(interval_s):
            seen = len(self.track())
            grew = seen > known
            interval_s = self.track_interval_s if grew else min(interval_s * 2, _TRACK_MAX_INTERVAL_S)
            known = seen

    def _live(self, table: Mapping[int, _Entry]) -> dict[int, str]:
        """Everything of ours still running in `table`: session members, recorded pids, their descendants."""
        assert self._popen is not None
        sid = self._popen.pid
        leader = table.get(sid)
        # The leader is unreaped until the end, so `sid` is ours: unless someone else reaped it and the pid was
        # reused, which a different start time shows (then only recorded pids count).
        ours = leader is None or leader.start is None or leader.start == self._leader_start
        found = _session(table, sid) if ours else {}
        with self._seen_lock:
            seen = dict(self._seen)
        found.update(
            {pid: start for pid, start in seen.items() if (e := table.get(pid)) and e.start == start}
        )
        return {**found, **_descendants(table, [sid, *found] if ours else list(found))}

    def _end(self, grace_s: float, after_leader_s: float | None) -> EndReport:
        assert self._popen is not None
        popen = self._popen
        self._tracking.set()
        if self._tracker is not None:
            self._tracker.join()
        self.track()  # the latest descendants, before any of them can be re-parented by the signals

        def find() -> dict[int, str]:
            return self._live(_process_table())

        def signal_group(sig: signal.Signals) -> None:
            if self.poll() is None:  # the group id is ours only while the leader runs or is unreaped
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(popen.pid, sig)

        try:
            return _end_processes(
                find,
                grace_s=grace_s,
                leader_running=lambda: self.poll() is None,
                after_leader_s=after_leader_s,
                on_signal=signal_group,
            )
        except BaseException:
            # Interrupted mid-end (a second Ctrl-C): no grace any more, but nothing is left running either,
            # and the leader can then be reaped below without waiting on it.
            killer = _Signaller()
            try:
                signal_group(signal.SIGKILL)
                killer.send(find(), signal.SIGKILL)
            finally:
                killer.close()
            raise
        finally:
            with contextlib.suppress(ChildProcessError):
                popen.wait()  # reap the leader (exited, or killed above)
            if self._returncode is None:
                self._returncode = popen.returncode
            if self._leader_fd is not None:
                os.close(self._leader_fd)
                self._leader_fd = None
            self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
