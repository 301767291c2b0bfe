"""`mpirt where` finds the launch running here from its process table: the parent of the
topmost process carrying a job id and no rank variable (its mpirun), itself an mpirt process."""

import pytest

from launcher import where
from mpirt.stacks import END

JOB = b"0123456789abcdef"


def env(*pairs: tuple[bytes, bytes]) -> dict[bytes, bytes]:
    return {b"PATH": b"/usr/bin", **dict(pairs)}


JOBS = ((b"MPIRT_JOB_ID", JOB), (b"MPIRT_ERROR_DIR", b"/tmp/mpirt-errors-x"))
# The launcher (5) under a shell (1); its mpirun (6) with a rank (7); on the same host an sshd
# (30) whose session started an MPI daemon that carries the job id (31) and a rank below it (32).
PROCS = {
    1: (0, env()), 5: (1, env()), 6: (5, env(*JOBS)), 7: (6, env(*JOBS, (b"OMPI_COMM_WORLD_RANK", b"0"))),
    30: (1, env()), 31: (30, env(*JOBS)), 32: (31, env(*JOBS, (b"OMPI_COMM_WORLD_RANK", b"1"))),
}


def test_the_launch_is_the_mpirt_parent_of_its_mpirun():
    assert where.launches(PROCS, is_mpirt=lambda pid: pid == 5) == [where.Launch(5, "/tmp/mpirt-errors-x")]
    assert where.launches({**PROCS, 40: (1, env()), 41: (40, env(*JOBS))}, is_mpirt=lambda pid: pid in (5, 40)) == [
        where.Launch(5, "/tmp/mpirt-errors-x"), where.Launch(40, "/tmp/mpirt-errors-x")]
    assert where.launches({1: PROCS[1], 7: PROCS[7]}, is_mpirt=lambda pid: True) == []  # a rank is not an mpirun


def test_no_launch_here_is_said_with_where_to_run_it():
    with pytest.raises(ValueError, match=r"no running mpirt launch or rank in this container: run mpirt where "
                                         r"where the launcher runs \(kubectl exec LAUNCHER-POD -- mpirt where\)"):
        where.ask(1, procs={})


def dump(rank: int, host: str, line: int) -> str:
    return (f"mpirt-stacks rank={rank} host={host} pid=9\nCurrent thread 0x01 (most recent call first):\n"
            f'  File "/app/train.py", line {line} in <module>\n' + END)


def test_the_answer_groups_the_ranks_by_line_and_counts_them():
    dumps = dump(0, "w0", 7) + dump(2, "w1", 7) + dump(1, "w0", 6)
    assert where.answer(dumps, 3) == ("mpirt: where the ranks are now (3 of 3 answered; the job goes on):\n"
                                      "  ranks 0, 2 (w0, w1): /app/train.py:7 in <module>\n"
                                      "  rank 1 (w0): /app/train.py:6 in <module>\n")
    assert where.answer(dumps, 6).splitlines()[-1] == (
        "  no answer from ranks 3-5: not run under python -m mpirt, or in a wait no signal ends (state D in ps on "
        "its host: a network filesystem, a device driver)")
    assert where.answer(dump(1, "w0", 6)).startswith("mpirt: where this host's ranks are now (1 answered; ")
    assert where.answer("").startswith("mpirt: no rank said where it is: only ranks run under python -m mpirt answer")
