"""Finding a job's ranks among this host's processes: the topmost process with an MPI rank
variable (never its DataLoader workers), of the given job, below a given ancestor."""

import os
import signal
import subprocess
import sys

import pytest

from launcher import ranks

JOB, OTHER = "0123456789abcdef", "fedcba9876543210"


def env(job=None, rank=None, var=b"OMPI_COMM_WORLD_RANK"):
    found = {b"PATH": b"/usr/bin"}
    if job:
        found[b"MPIRT_JOB_ID"] = job.encode()
    if rank is not None:
        found[var] = str(rank).encode()
    return found


# pid: (parent, environment): an Open MPI daemon (10) with two ranks of JOB (11, 12), rank 11
# with a DataLoader worker (13); a Hydra proxy (20) with a rank of JOB (21); another job's rank
# under the same daemon (14); a process with the job's id and no rank variable (mpirun, 2).
PROCS = {
    1: (0, env()), 2: (1, env(JOB)), 10: (1, env()), 11: (10, env(JOB, 0)), 12: (10, env(JOB, 1)),
    13: (11, env(JOB, 0)), 14: (10, env(OTHER, 0)), 20: (1, env()), 21: (20, env(JOB, 2, b"PMI_RANK")),
}


def test_ranks_are_the_topmost_processes_with_a_rank_variable():
    assert ranks.find(PROCS, job=JOB) == [11, 12, 21]
    assert ranks.find(PROCS) == [11, 12, 14, 21]
    assert ranks.find(PROCS, job=OTHER) == [14]
    assert ranks.find(PROCS, below=20) == [21]
    assert ranks.find(PROCS, job=JOB, below=10) == [11, 12]
    assert ranks.find(PROCS, below=11) == []  # the DataLoader worker is part of its rank


def test_job_ids_are_checked_before_they_reach_a_shell_line():
    assert ranks.remote_command(JOB) == f"exec mpirt signal-ranks --signal TERM {JOB}"
    assert ranks.remote_command(JOB, signal.SIGKILL).endswith(f"--signal KILL {JOB}")
    for bad in ("", "0123; rm -rf /", JOB.upper(), JOB + "0", JOB + "\n"):
        with pytest.raises(ValueError, match="expected 16 lowercase hex digits"):
            ranks.remote_command(bad)
    assert len(ranks.new_job_id()) == 16 and ranks.new_job_id() != ranks.new_job_id()


def test_real_processes_are_found_signalled_and_seen_to_end():
    """A rank of this job with a child of its own, and a rank of another job: the signal reaches
    the first rank only."""
    code = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); " \
           "print('up', flush=True); time.sleep(60)"
    mine = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "MPIRT_JOB_ID": JOB, "PMI_RANK": "0"})
    other = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "MPIRT_JOB_ID": OTHER, "PMI_RANK": "0"})
    children = []
    try:
        assert mine.stdout.readline() == "up\n" and other.stdout.readline() == "up\n"
        children = ranks.children(mine.pid) + ranks.children(other.pid)
        found = ranks.find(ranks.table(), job=JOB)
        assert found == [mine.pid]
        assert len(children) == 2 and ranks.alive(mine.pid)
        child = ranks.children(mine.pid)[0]
        assert ranks.send(found) == [mine.pid]
        assert mine.wait(timeout=10) == -signal.SIGTERM
        assert other.poll() is None and ranks.alive(child)  # the rank's own child is the rank's business
        assert not ranks.alive(mine.pid) and ranks.send([mine.pid]) == []
    finally:
        for p in (mine, other):
            p.kill()
            p.wait()
        ranks.send(children, signal.SIGKILL)


def test_a_sigterm_comes_after_each_armed_ranks_stack_dump(tmp_path):
    """A rank under ``python -m mpirt`` writes a whole dump on the dump signal and goes on; the
    SIGTERM then writes another and ends it. A process that only holds such a file open, with no
    handler, gets the SIGTERM alone: the dump signal would have killed it."""
    from mpirt.stacks import END, parse

    errors = tmp_path / "errors"
    errors.mkdir()
    armed = subprocess.Popen([sys.executable, "-m", "mpirt", "-c", "import time\nprint('up', flush=True); time.sleep(60)"],
                             stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "MPIRT_ERROR_DIR": str(errors), "OMPI_COMM_WORLD_RANK": "0"})
    bare = subprocess.Popen([sys.executable, "-c", f"import time; f = open({str(errors / 'rank-1.stacks')!r}, 'w'); "
                             "print('up', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert armed.stdout.readline() == "up\n" and bare.stdout.readline() == "up\n"
        dump = errors / "rank-0.stacks"
        assert ranks.dump_first([armed.pid, bare.pid]) == [armed.pid]
        assert dump.read_text().count(END) == 1 and armed.poll() is None and bare.poll() is None
        assert ranks.send([armed.pid, bare.pid]) == [armed.pid, bare.pid]
        assert armed.wait(timeout=10) == -signal.SIGTERM and bare.wait(timeout=10) == -signal.SIGTERM
        assert dump.read_text().count(END) == 3  # the send's own dump first, then the SIGTERM's
        [where] = parse(dump.read_text())
        assert where.line == "<string>:2 in <module>"
    finally:
        for p in (armed, bare):
            p.kill()
            p.wait()
