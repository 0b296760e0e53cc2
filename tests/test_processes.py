"""No orphans: `OwnedProcess` and `end_orphaned_session` end a command and everything it started.

Real processes only (python -c, sh). Each test learns pids through a FIFO the processes write to (opening a FIFO
for reading blocks until a writer has written: an event, not a delay) and judges by /proc.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from trtforge.processes import (
    EndReport,
    OwnedProcess,
    ProcessError,
    ProcessState,
    end_orphaned_session,
    session_members,
    start_time,
    stat_fields,
)

# A tree for the tests: the leader forks CHILD, which may leave the session (setsid) and may fork a grandchild
# (double fork: the child exits once told to, the grandchild is re-parented away from us); the child and the
# grandchild may ignore SIGTERM, the leader never does. Every process that should be ended writes "<role> <pid>"
# to the FIFO; the child exits when a line arrives on the GO FIFO.
TREE = textwrap.dedent(
    """
    import os, signal, sys, time

    report, go, setsid, grandchild, ignore_term = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])

    def say(role):
        with open(report, "w") as fifo:
            fifo.write(f"{role} {os.getpid()}\\n")

    def stay():
        while True:
            time.sleep(3600)

    child = os.fork()
    if child == 0:
        if ignore_term:  # before saying so: the test may signal as soon as it has read the pid
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if setsid:
            os.setsid()
        if grandchild:
            if os.fork() == 0:
                say("grandchild")
                stay()
            say("child")
            with open(go) as fifo:
                fifo.read()
            os._exit(0)
        say("child")
        stay()
    say("leader")
    os.waitpid(child, 0)  # reaps the child when it exits, so /proc shows it gone
    stay()
    """
)


@pytest.fixture
def fifos(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    report, go = tmp_path / "report.fifo", tmp_path / "go.fifo"
    os.mkfifo(report)
    os.mkfifo(go)
    yield report, go


def _tree(fifos: tuple[Path, Path], *, setsid: bool, grandchild: bool, ignore_term: bool) -> list[str]:
    report, go = fifos
    flags = [str(int(flag)) for flag in (setsid, grandchild, ignore_term)]
    return [sys.executable, "-c", TREE, str(report), str(go), *flags]


def _read_roles(report: Path, count: int) -> dict[str, int]:
    roles: dict[str, int] = {}
    while len(roles) < count:
        with open(report) as fifo:
            for line in fifo.read().split("\n"):
                if line:
                    role, pid = line.split()
                    roles[role] = int(pid)
    return roles


def _running(pids: list[int]) -> list[int]:
    return [pid for pid in pids if start_time(pid) is not None]


def _sid(pid: int) -> int:
    fields = stat_fields(pid)
    assert fields is not None
    return int(fields[3])


def test_a_child_that_left_the_session_and_ignores_term_is_ended(fifos: tuple[Path, Path]) -> None:
    argv = _tree(fifos, setsid=True, grandchild=False, ignore_term=True)
    with OwnedProcess(argv, grace_s=0.2) as owned:
        roles = _read_roles(fifos[0], 2)
        assert _sid(roles["child"]) == roles["child"] != owned.pid  # not in our session any more
        report = owned.stop()
    assert owned.state is ProcessState.ENDED
    assert report.signalled and report.killed and report.grace_s == 0.2
    assert roles["child"] in report.terminated and roles["child"] in report.kill_sent
    assert report.survivors == ()
    assert _running(list(roles.values())) == []


def test_a_term_ignoring_leader_is_killed_after_the_grace(tmp_path: Path) -> None:
    ready = tmp_path / "ready.fifo"
    os.mkfifo(ready)
    code = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "open(sys.argv[1], 'w').close()\n"
        "time.sleep(3600)\n"
    )
    owned = OwnedProcess([sys.executable, "-c", code, str(ready)])
    owned.start()
    try:
        ready.read_text()  # the TERM handler is installed
        report = owned.stop(grace_s=0.3)
    finally:
        owned.stop()
    assert report.signalled and report.killed
    assert report.grace_s == 0.3 and report.duration_s >= 0.3
    assert owned.pid in report.terminated and owned.pid in report.kill_sent
    assert owned.poll() == -signal.SIGKILL
    assert owned.stop() is report  # idempotent: the same end, not a second one


def test_a_leader_that_obeys_term_is_not_killed(tmp_path: Path) -> None:
    with OwnedProcess(["sleep", "3600"]) as owned:
        report = owned.stop(grace_s=60)
    assert report.signalled and not report.killed and report.kill_sent == ()
    assert owned.poll() == -signal.SIGTERM


def test_what_outlives_the_leader_gets_only_the_after_leader_grace(fifos: tuple[Path, Path]) -> None:
    # The leader obeys TERM, its child ignores it: once the leader is gone, the child is not waited for.
    argv = _tree(fifos, setsid=False, grandchild=False, ignore_term=True)
    with OwnedProcess(argv) as owned:
        roles = _read_roles(fifos[0], 2)
        report = owned.stop(grace_s=3600, after_leader_s=0.1)
    assert report.killed and report.kill_sent == (roles["child"],)
    assert report.leader_exit_s is not None and report.grace_s == pytest.approx(
        report.leader_exit_s + 0.1, abs=1e-5
    )
    assert _running(list(roles.values())) == []


def test_a_command_that_exited_by_itself_is_not_signalled() -> None:
    with OwnedProcess(["true"]) as owned:
        assert owned.wait() == 0
        assert owned.state is ProcessState.EXITED
    report = owned.report
    assert report is not None and not report.signalled and not report.killed and report.terminated == ()


def test_a_double_forked_grandchild_is_ended_after_its_parent_exits(fifos: tuple[Path, Path]) -> None:
    argv = _tree(fifos, setsid=True, grandchild=True, ignore_term=False)
    with OwnedProcess(argv) as owned:
        roles = _read_roles(fifos[0], 3)
        assert roles["grandchild"] in owned.track()  # recorded while it is still our descendant
        with open(fifos[1], "w") as go:
            go.write("exit\n")
        while start_time(roles["child"]) is not None:  # the leader reaps it: /proc shows it gone
            time.sleep(0.01)
        fields = stat_fields(roles["grandchild"])
        assert fields is not None and int(fields[1]) != roles["child"]  # re-parented, outside our session
        assert owned.pid is not None and roles["grandchild"] not in session_members(owned.pid)
        report = owned.stop()
    assert roles["grandchild"] in report.terminated and not report.killed
    assert _running([roles["leader"], roles["grandchild"]]) == []


def test_an_exception_inside_the_block_ends_everything(fifos: tuple[Path, Path]) -> None:
    argv = _tree(fifos, setsid=False, grandchild=False, ignore_term=True)
    roles: dict[str, int] = {}
    with pytest.raises(RuntimeError, match="boom"), OwnedProcess(argv, grace_s=0.1) as owned:
        roles = _read_roles(fifos[0], 2)
        raise RuntimeError("boom")
    assert owned.state is ProcessState.ENDED
    assert owned.report is not None and owned.report.killed
    assert _running(list(roles.values())) == []


def _start_racing(owned: OwnedProcess, barrier: threading.Barrier, errors: list[BaseException]) -> None:
    barrier.wait()
    try:
        owned.start()
    except ProcessError as exc:
        errors.append(exc)


def test_stop_from_another_thread_while_starting_leaves_nothing() -> None:
    # Whichever wins, nothing runs afterwards: either the command never starts, or it is ended.
    outcomes = set()
    for _ in range(20):
        owned = OwnedProcess(["sh", "-c", "sleep 3600 & sleep 3600 & wait"])
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []
        starter = threading.Thread(target=_start_racing, args=(owned, barrier, errors))
        starter.start()
        barrier.wait()
        report = owned.stop()
        starter.join()
        assert owned.stop() is report
        assert owned.state is ProcessState.ENDED
        if owned.pid is None:
            assert errors and "ended" in str(errors[0])
            outcomes.add("never started")
        else:
            assert errors == []
            assert start_time(owned.pid) is None and session_members(owned.pid) == []
            outcomes.add("ended")
    assert outcomes  # at least one interleaving ran; both are correct


def test_start_after_stop_is_refused() -> None:
    owned = OwnedProcess(["true"])
    owned.stop()
    with pytest.raises(ProcessError, match="cannot start"):
        owned.start()


def test_output_goes_to_a_file_in_the_working_directory(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "out.log"
    with OwnedProcess(
        ["sh", "-c", "pwd; echo $GREETING >&2"], env={"GREETING": "hi"}, cwd=tmp_path, stdout=log
    ) as p:
        assert p.wait() == 0
    assert log.read_text().split() == [str(tmp_path), "hi"]


# -- sessions whose owner died ----------------------------------------------------------------------------


def _orphan_session(fifos: tuple[Path, Path]) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    """A tree in a session of its own, as a SIGKILLed owner leaves it: a leader and a TERM-ignoring child."""
    argv = _tree(fifos, setsid=False, grandchild=False, ignore_term=True)
    leader = subprocess.Popen(argv, start_new_session=True)
    return leader, _read_roles(fifos[0], 2)


def test_an_orphaned_session_is_ended_from_its_record(fifos: tuple[Path, Path]) -> None:
    leader, roles = _orphan_session(fifos)
    try:
        report = end_orphaned_session(leader.pid, start_time(leader.pid), grace_s=0.1)
        assert report.signalled and report.killed
        assert set(report.terminated) == {roles["leader"], roles["child"]}
        assert _running(list(roles.values())) == []
    finally:
        leader.kill()
        leader.wait()


def test_a_session_whose_leader_pid_was_reused_is_not_signalled(fifos: tuple[Path, Path]) -> None:
    # The record's start time no longer matches the process at that pid: it is someone else's now.
    leader, roles = _orphan_session(fifos)
    try:
        recorded = str(int(start_time(leader.pid) or "0") - 1)
        report = end_orphaned_session(leader.pid, recorded, grace_s=0.1)
        assert report == EndReport(signalled=False, killed=False, grace_s=0.1, duration_s=report.duration_s)
        assert _running(list(roles.values())) == list(roles.values())
    finally:
        end_orphaned_session(leader.pid, start_time(leader.pid), grace_s=0.1)
        leader.wait()


def test_a_recorded_pid_whose_start_time_differs_is_not_signalled() -> None:
    # What every signal goes through: the process at the pid must still have the start time recorded with it.
    from trtforge.processes import _Signaller

    stranger = subprocess.Popen(["sleep", "3600"])
    signaller = _Signaller()
    try:
        start = start_time(stranger.pid)
        assert start is not None
        assert signaller.send({stranger.pid: str(int(start) - 1)}, signal.SIGKILL) == ()
        assert start_time(stranger.pid) == start  # untouched
        assert signaller.send({stranger.pid: start}, signal.SIGKILL) == (stranger.pid,)
        assert stranger.wait() == -signal.SIGKILL
    finally:
        signaller.close()
        stranger.kill()
        stranger.wait()


def test_a_session_that_is_gone_is_not_signalled() -> None:
    leader = subprocess.Popen(["true"], start_new_session=True)
    start = start_time(leader.pid)
    leader.wait()
    assert not end_orphaned_session(leader.pid, start).signalled
