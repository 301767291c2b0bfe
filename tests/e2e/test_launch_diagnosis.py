"""What `mpirt launch` says when ranks die without a word: an OOM kill at the memory limit of
the cgroup the ranks run in (a pod's container), told apart from a plain kill -9; and the
outcome written where Kubernetes keeps it (the termination message)."""

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import killed_outright

pytestmark = [pytest.mark.e2e, pytest.mark.mpi]

HOG = str(Path(__file__).parents[1] / "cluster" / "ranks" / "hog.py")


def launch(*args, wrap=lambda argv: argv, timeout=180, env=None):
    argv = wrap(["mpirt", "launch", *args])
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **env} if env else None)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"mpirt launch hung past {timeout} s:\n{e.stdout}\n{e.stderr}")


def test_oom_kill_of_a_local_rank_is_named_and_kept_in_the_termination_message(memory_cgroup, tmp_path):
    cg = memory_cgroup(384 << 20)
    message = tmp_path / "termination-log"
    proc = launch("-np", "2", "--termination-log", str(message), "--", sys.executable, HOG, "1", "oom",
                  wrap=cg.wrap)
    assert proc.returncode == 137, proc.stderr
    cause = proc.stderr.split("Root cause: out of memory: ", 1)[1].splitlines()[0]
    assert cause.startswith("the kernel's OOM killer killed 1 process on ") and "(oom_kill 0 -> 1 in " in cause
    assert str(cg.path) in cause and "resources.limits.memory" in cause
    assert "also: rank 1 on " in proc.stderr  # mpirun's own account follows
    assert message.read_text().startswith("mpirt: job failed (exit 137 (SIGKILL)). Root cause: out of memory: ")


def test_kill_9_in_the_same_cgroup_is_not_called_out_of_memory(memory_cgroup):
    cg = memory_cgroup(384 << 20)
    proc = launch("-np", "2", "--", sys.executable, HOG, "1", "kill", wrap=cg.wrap)
    assert proc.returncode == 137, proc.stderr
    assert "out of memory" not in proc.stderr
    cause = proc.stderr.split("Root cause (from mpirun's output): ", 1)[1].splitlines()[0]
    assert cause.startswith("rank 1 on ") and "killed by signal 9 (SIGKILL); usually the OOM killer" in cause


def test_termination_message_says_success_failure_and_bad_input(tmp_path):
    message = tmp_path / "termination-log"
    ok = launch("-np", "1", "--termination-log", str(message), "--", sys.executable, "-c", "pass")
    assert ok.returncode == 0, ok.stderr
    assert message.read_text() == "mpirt: job succeeded (mpirun exited 0)\n"
    failed = launch("-np", "1", "--termination-log", str(message), "--", sys.executable, "-m", "mpirt", "-c",
                    "raise KeyError('batch')")
    assert failed.returncode != 0
    assert message.read_text().startswith(f"mpirt: job failed (exit {failed.returncode}). Root cause (first "
                                          "failure): rank 0 on ")
    assert "KeyError: 'batch'" in message.read_text()
    bad_hosts = launch("--hostfile", str(tmp_path / "none"), "--termination-log", str(message), "--", "true")
    assert bad_hosts.returncode == 2 and "(--hostfile)" in bad_hosts.stderr
    assert message.read_text().startswith(f"mpirt launch: {tmp_path / 'none'} (--hostfile): ")
    relative = launch("--termination-log", "termination-log", "--", "true")
    assert relative.returncode == 2 and "give an absolute path" in relative.stderr
    unwritable = launch("-np", "1", "--termination-log", str(tmp_path / "no" / "such" / "dir"), "--", "true")
    assert unwritable.returncode == 0 and "could not write the termination message" in unwritable.stderr


def test_a_worker_that_cannot_start_says_why_in_the_termination_message(tmp_path):
    """The pod entrypoint as a worker with no ssh Secret mounted: a crash loop that
    `kubectl describe pod` explains."""
    import os

    message = tmp_path / "termination-log"
    proc = subprocess.run(["mpirt", "pod"], capture_output=True, text=True, timeout=60,  # the image's CMD
                          env={**os.environ, "K_MPI_JOB_ROLE": "worker", "MPIRT_SSH_DIR": str(tmp_path / "secret"),
                               "MPIRT_TERMINATION_LOG": str(message)})
    assert proc.returncode == 2
    assert message.read_text() == (f"mpirt worker: {tmp_path / 'secret' / 'authorized_keys'} not found: mount the "
                                   f"job's ssh Secret at {tmp_path / 'secret'} (sshAuthMountPath) or point --ssh-dir "
                                   "(MPIRT_SSH_DIR) at it\n")


CRASH = """import os, sys
from mpi4py import MPI
if MPI.COMM_WORLD.rank == 1:
    print("loading shard 7", flush=True)
    print("CUDA error: an illegal memory access was encountered", file=sys.stderr, flush=True)
    os.abort()
MPI.COMM_WORLD.Barrier()
"""


def test_local_ranks_run_the_python_first_on_the_users_path(user_venv):
    """The venv first on PATH is the ranks' `python3`, wherever mpirun lies (Open MPI started
    as /usr/bin/mpirun would put /usr/bin first on theirs, and the system's python3)."""
    proc = launch("-np", "2", "--", "python3", "-c", "import sys; print('ran', sys.executable)",
                  env={"PATH": f"{user_venv}:{os.environ['PATH']}"})
    assert proc.returncode == 0, proc.stderr
    assert sorted(x for x in proc.stdout.splitlines() if " ran " in x) == [
        f"[0] ran {user_venv}/python3", f"[1] ran {user_venv}/python3"], proc.stdout


def test_no_writable_temporary_directory_is_said_with_the_fix():
    """A pod with readOnlyRootFilesystem and no emptyDir at /tmp: /tmp, /var/tmp and the current
    directory read-only (bind mounts in a mount namespace of its own)."""
    ro = "for d in /tmp /var/tmp; do mount --bind $d $d && mount -o remount,bind,ro $d || exit 97; done; cd /tmp && " \
         'exec "$@"'
    proc = launch("-np", "1", "--", "true", wrap=lambda argv: ["unshare", "-m", "sh", "-c", ro, "sh", sys.executable,
                                                              "-m", "launcher.cli", *argv[1:]])
    if proc.returncode == 97 or "unshare: " in proc.stderr:
        pytest.skip(f"cannot make /tmp read-only in a mount namespace here: {proc.stderr.strip()}")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("Error: no temporary directory can be made here (No usable temporary directory "
                                  "found in "), proc.stderr
    assert "mount a writable emptyDir at /tmp (a pod with readOnlyRootFilesystem has none)" in proc.stderr
    assert "Traceback" not in proc.stderr


FD_FIX = "\n  fix: the rank ran out of file descriptors (DataLoader workers hand each tensor over as one)"


def batches_of_300(roomy_worker: bool) -> str:
    """A rank's code: a DataLoader worker hands over batches of 300 tensors (a file descriptor
    each) under an open-files limit of 128. With ``roomy_worker`` the worker keeps the hard
    limit and the rank fails to take a batch; else the worker fails to send one, and the rank
    waits for it for ever."""
    return ("import resource, torch\nfrom torch.utils.data import DataLoader\n"
            "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
            f"resource.setrlimit(resource.RLIMIT_NOFILE, (128, {'hard' if roomy_worker else '128'}))\n"
            "class Batches(torch.utils.data.Dataset):\n"
            "    def __len__(self): return 4\n"
            "    def __getitem__(self, i): return [torch.ones(4) for _ in range(300)]\n"
            "def roomy(_): resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))\n"
            f"for x in DataLoader(Batches(), batch_size=None, num_workers=1, "
            f"worker_init_fn={'roomy' if roomy_worker else 'None'}): pass\n")


def test_dataloader_batches_past_the_open_files_limit_are_named_with_the_fix():
    """A container's open-files limit (128 here, the rank's soft limit; its DataLoader worker
    keeps the hard one) against a batch of 300 tensors, which a worker hands over as a file
    descriptor each: the rank gets torch's classic "received 0 items of ancdata"."""
    proc = launch("-np", "2", "--", sys.executable, "-m", "mpirt", "-c", batches_of_300(roomy_worker=True),
                  timeout=120)
    assert proc.returncode == 1, proc.stderr
    cause = proc.stderr[proc.stderr.index("mpirt: job failed"):]
    assert "received 0 items of ancdata" in cause
    assert FD_FIX in cause, cause


def test_a_job_that_hangs_after_saying_why_gets_the_fix_when_stopped():
    """A DataLoader worker out of file descriptors prints its error and its rank waits for the
    batch for ever: the report at the time limit names where each rank was and the fix."""
    proc = launch("-np", "2", "--time-limit", "15", "--", sys.executable, "-m", "mpirt", "-c",
                  batches_of_300(roomy_worker=False), timeout=120)
    assert proc.returncode == 124, proc.stderr
    report = proc.stderr[proc.stderr.index("mpirt: job stopped: it ran past its time limit"):]
    assert "\n  where the ranks were when it was stopped:\n" in report
    assert FD_FIX in report, report


def test_a_job_whose_launcher_is_killed_ends_with_it():
    """SIGKILL to mpirt launch (outside a pod, whose end would take the job with it): the
    kernel gives mpirun SIGTERM, and mpirun stops the ranks, instead of a job going on without
    its launcher."""
    program = "import time; print('up', flush=True); time.sleep(600)"
    left = killed_outright(["mpirt", "launch", "-np", "2", "--", sys.executable, "-c", program], up=4)
    assert not left, "the job outlived its launcher"


def test_a_master_port_of_the_users_that_is_taken_is_named_with_the_fix():
    code = ("import torch, torch.distributed as dist; dist.init_process_group('gloo'); "
            "dist.all_reduce(torch.ones(1))")
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = launch("-np", "2", "--env", f"MASTER_PORT={port}", "--", sys.executable, "-m", "mpirt", "-c", code)
    assert proc.returncode == 1, proc.stderr
    cause = proc.stderr[proc.stderr.index("mpirt: job failed"):]
    assert f"\n  fix: MASTER_PORT {port} is taken on rank 0's host (by another job, or one still ending): leave " \
           "MASTER_PORT unset, and mpirt launch picks a free port" in cause, cause


def test_dataloader_workers_on_a_containers_small_dev_shm_are_named_with_the_fix():
    """A container's /dev/shm (64 MiB unless an emptyDir replaces it; 1 MiB here, a tmpfs in a
    mount namespace of its own) is too small for the batches DataLoader workers hand over."""
    code = ("import torch\nfrom torch.utils.data import DataLoader\n"
            "for x in DataLoader([torch.ones(1 << 20)] * 2, num_workers=1): pass\n")
    small = 'mount -t tmpfs -o size=1m tmpfs /dev/shm || exit 97; exec "$@"'
    proc = launch("-np", "2", "--", sys.executable, "-m", "mpirt", "-c", code,
                  wrap=lambda argv: ["unshare", "-m", "sh", "-c", small, "sh", sys.executable, "-m", "launcher.cli",
                                     *argv[1:]])
    if proc.returncode == 97 or "unshare: " in proc.stderr:
        pytest.skip(f"cannot mount a small /dev/shm in a mount namespace here: {proc.stderr.strip()}")
    assert proc.returncode == 1, proc.stderr
    cause = proc.stderr[proc.stderr.index("mpirt: job failed"):]
    assert "DataLoader worker" in cause
    assert "\n  fix: /dev/shm is full (a container gets 64 MiB; NCCL and DataLoader workers pass data through it)" \
        in cause, cause


def test_a_rank_that_dies_without_a_record_shows_its_last_words():
    """A native crash: no Python exception, only a signal; what the rank printed before it is the
    clue (Open MPI's own backtrace of the signal is left out)."""
    proc = launch("-np", "2", "--", sys.executable, "-c", CRASH)
    assert proc.returncode == 134, proc.stderr
    report = proc.stderr.split("mpirt: job failed: ", 1)[1].splitlines()
    assert report[0].endswith("Root cause (from mpirun's output): rank 1 on " + report[0].split(" on ")[1].split()[0]
                              + " was killed by signal 6 (SIGABRT)")
    assert report[1] == "  last output of rank 1:"  # its stdout and stderr, in the order they reached us
    assert sorted(report[2:4]) == ["    CUDA error: an illegal memory access was encountered",
                                   "    loading shard 7"]


def test_a_gloo_interface_of_the_users_that_the_host_lacks_is_named_with_the_fix():
    """What the user set wins over the launcher's defaults, and so can be wrong: torch's own
    error for it comes with what to do."""
    code = ("import torch, torch.distributed as dist; dist.init_process_group('gloo'); "
            "dist.all_reduce(torch.ones(1))")
    proc = launch("-np", "2", "--env", "GLOO_SOCKET_IFNAME=nope0", "--", sys.executable, "-m", "mpirt", "-c", code)
    assert proc.returncode == 1, proc.stderr
    cause = proc.stderr[proc.stderr.index("mpirt: job failed"):]
    assert "Unable to find address for: nope0" in cause
    assert "\n  fix: Gloo found no address on nope0, the interface GLOO_SOCKET_IFNAME names. mpirt launch" in cause, cause


def test_unbuffered_prints_of_several_values_stay_whole_lines():
    """PYTHONUNBUFFERED=1 (set in many images) makes print() write each value apart."""
    import os

    proc = subprocess.run(["mpirt", "launch", "-np", "2", "--", sys.executable, "-c",
                           "print('step', 3, 'loss', 0.5, flush=True)"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stdout.splitlines()) == ["[0] step 3 loss 0.5", "[1] step 3 loss 0.5"]


HANG = """import sys, time
from mpi4py import MPI
comm = MPI.COMM_WORLD
print("started", flush=True)
if comm.Get_rank() == comm.Get_size() - 1:
    time.sleep(600)  # the rank that does not come
comm.Barrier()  # where the others wait, inside MPI
"""


@pytest.mark.parametrize("np_", [2, 4])
def test_a_hung_job_stopped_at_its_time_limit_says_where_each_rank_was(tmp_path, np_):
    """A hang in the program's own MPI calls, which no stall inspector watches: the SIGTERM of
    the time limit makes each rank under python -m mpirt dump its stack, even from inside
    MPI_Barrier, and the launcher groups the ranks by their line. Open MPI 4's mpirun SIGKILLs
    every rank 3 ms after the first has died of its SIGTERM: with 4 ranks on 2 cores, one rank
    not yet scheduled lost its dump 1 run in 5, until every rank had written a dump before any
    had its SIGTERM (launcher.ranks.dump_first)."""
    script = tmp_path / "hang.py"
    script.write_text(HANG)
    message = tmp_path / "termination-log"
    errors = tmp_path / "errors"
    proc = launch("-np", str(np_), "--time-limit", "6", "--termination-log", str(message), "--",
                  sys.executable, "-m", "mpirt", str(script), timeout=120, env={"MPIRT_ERROR_DIR": str(errors)})
    assert proc.returncode == 124, proc.stderr
    last = np_ - 1
    others = "rank 0" if np_ == 2 else f"ranks 0-{last - 1}"
    where = proc.stderr.split("where the ranks were when it was stopped:\n", 1)[1].splitlines()
    hosts = [w.split("(")[1].split(")")[0] for w in where[:2]]
    assert where[:2] == [f"    {others} ({hosts[0]}): {script}:7 in <module>",
                         f"    rank {last} ({hosts[1]}): {script}:6 in <module>"], (
        proc.stderr + "".join(f"\n{p.name}:\n{p.read_text()}" for p in sorted(errors.iterdir())))
    assert "where the ranks were when it was stopped:" in message.read_text()


def test_a_job_stopped_by_sigterm_says_where_each_rank_was(tmp_path):
    """A deleted pod's SIGTERM reaches the launcher, which passes it on to every rank; it still says where."""
    import signal
    import time

    script = tmp_path / "hang.py"
    script.write_text(HANG)
    proc = subprocess.Popen(["mpirt", "launch", "-np", "2", "--grace", "3", "--", sys.executable, "-m", "mpirt",
                             str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started = 0
    while started < 2:
        line = proc.stdout.readline()
        assert line, "the ranks never started"
        started += line.endswith("started\n")
    time.sleep(0.5)  # into the sleep and the barrier
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "mpirt: stopped by SIGTERM (forwarded to the ranks)" in err
    where = err.split("where the ranks were when it was stopped:\n", 1)[1].splitlines()
    assert where[0].startswith("    rank 0 (") and where[0].endswith(f"): {script}:7 in <module>")
    assert where[1].startswith("    rank 1 (") and where[1].endswith(f"): {script}:6 in <module>")


def test_mpirt_where_says_where_each_rank_of_a_running_job_is_and_the_job_goes_on(tmp_path):
    """A job that seems hung, long before its time limit: `mpirt where` (kubectl exec into the
    launcher's pod) asks the launcher, which has every rank dump its stack and says where each
    is, grouped by line; the ranks go on, and the stop later still says where they were. A rank
    that cannot answer (here stopped with SIGSTOP, as one stuck in the kernel would be) is named."""
    from launcher import ranks

    script, errors = tmp_path / "hang.py", tmp_path / "errors"
    script.write_text(HANG)
    proc = subprocess.Popen(["mpirt", "launch", "-np", "4", "--", sys.executable, "-m", "mpirt", str(script)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "MPIRT_ERROR_DIR": str(errors)})
    try:
        started = 0
        while started < 4:
            line = proc.stdout.readline()
            assert line, "the job ended before its ranks started"
            started += line.endswith("started\n")
        asked = subprocess.run(["mpirt", "where"], capture_output=True, text=True, timeout=60)
        procs = ranks.table()
        [last] = [pid for pid in ranks.find(procs) if procs[pid][1].get(b"MPIRT_ERROR_DIR") == str(errors).encode()
                  and procs[pid][1].get(b"OMPI_COMM_WORLD_RANK") == b"3"]
        os.kill(last, signal.SIGSTOP)
        stuck = subprocess.run(["mpirt", "where"], capture_output=True, text=True, timeout=60)
        os.kill(last, signal.SIGCONT)
        assert proc.poll() is None  # the ranks go on
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    host = socket.gethostname()
    where = [f"  ranks 0-2 ({host}): {script}:7 in <module>", f"  rank 3 ({host}): {script}:6 in <module>"]
    assert asked.returncode == 0, asked.stderr
    assert asked.stdout.splitlines() == ["mpirt: where the ranks are now (4 of 4 answered; the job goes on):", *where]
    assert stuck.returncode == 0, stuck.stderr
    assert stuck.stdout.splitlines() == [
        "mpirt: where the ranks are now (3 of 4 answered; the job goes on):", where[0],
        "  no answer from rank 3: not run under python -m mpirt, or in a wait no signal ends (state D in ps on its "
        "host: a network filesystem, a device driver)"]
    assert asked.stdout in err and stuck.stdout in err, err  # the job's log says it too
    assert proc.returncode == 143, err
    assert "where the ranks were when it was stopped:\n" + "\n".join("  " + w for w in where) in err, err


def test_mpirt_where_without_a_running_launch_says_where_to_run_it():
    proc = subprocess.run(["mpirt", "where"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.startswith("Error: no running mpirt launch or rank in this container: run mpirt where where the "
                                  "launcher runs (kubectl exec LAUNCHER-POD -- mpirt where)")
