"""What the launcher says when a job fails: built from the ranks' error records."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.run import exit_code, report, root_cause
from mpirt import errors


def test_earliest_record_is_the_root_cause(tmp_path):
    late = errors.record("exception", "RuntimeError", "peer gone", "Traceback...\nRuntimeError: peer gone\n", rank=0)
    early = errors.record("exception", "ValueError", "bad batch", "Traceback...\n  File x.py\nValueError: bad batch\n",
                          rank=3)
    early["time"], late["time"] = 100.0, 105.0
    errors.write(late, str(tmp_path))
    errors.write(early, str(tmp_path))
    text = root_cause(1, str(tmp_path))
    assert text.startswith("mpirt: job failed (exit 1). Root cause (first failure): rank 3 on ")
    assert "ValueError: bad batch" in text and "    ValueError: bad batch" in text
    assert "later failures on rank(s) 0" in text


# What torch and NCCL say for the failures data scientists meet most (their messages' forms).
KNOWN_FAILURES = [
    ("OutOfMemoryError", "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.11 GiB",
     "the GPU's memory is full"),
    ("RuntimeError", "NCCL error in: ProcessGroupNCCL.cpp:1970, unhandled system error (run with NCCL_DEBUG=INFO "
     "for details), NCCL version 2.21.5", "NCCL failed in a system call: rerun with --profile debug"),
    ("RuntimeError", "Expected to have finished reduction in the prior iteration before starting a new one. This "
     "error indicates that your module has parameters that were not used in producing loss.",
     "pass find_unused_parameters=True, or use mpirt.data_parallel"),
    ("ModuleNotFoundError", "No module named 'timm'", "the ranks' Python cannot import timm"),
    ("torch.distributed.DistBackendError", "NCCL error in: ../torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp:1691, "
     "invalid usage (run with NCCL_DEBUG=WARN for details), NCCL version 2.19.3\nncclInvalidUsage: This usually "
     "reflects invalid usage of NCCL library.\nLast error:\nDuplicate GPU detected : rank 1 and rank 0 both on CUDA "
     "device 2000", "ranks 1 and 0 are on one GPU, which NCCL refuses: give each rank its own"),
    ("torch.distributed.DistBackendError", "[Rank 2] Watchdog caught collective operation timeout: WorkNCCL(SeqNum="
     "808, OpType=ALLREDUCE, NumelIn=9801523, NumelOut=9801523, Timeout(ms)=600000) ran for 600061 milliseconds "
     "before timing out.", "NCCL's ALLREDUCE number 808 waited past torch.distributed's timeout"),
    ("torch.distributed.DistBackendError", "NCCL error in: ../torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp:1970, "
     "internal error - please report this issue to the NCCL developers, NCCL version 2.21.5\nncclInternalError: "
     "Internal check failed.\nLast error:\nBootstrap : no socket interface found",
     "NCCL found no network interface to use: NCCL_SOCKET_IFNAME names none this host has"),
    ("torch.AcceleratorError", "CUDA error: no kernel image is available for execution on the device\nCUDA kernel "
     "errors might be asynchronously reported at some other API call, so the stacktrace below might be incorrect.",
     "this torch has no kernels for this GPU's architecture"),
    ("RuntimeError", "The NVIDIA driver on your system is too old (found version 11040). Please update your GPU "
     "driver by downloading and installing a new version from the URL: http://www.nvidia.com/Download/index.aspx",
     "the NVIDIA driver this container sees is older than this CUDA build needs, or none is mounted"),
    ("RuntimeError", "[../third_party/gloo/gloo/transport/tcp/pair.cc:144] Gloo connectFullMesh failed with "
     "[../third_party/gloo/gloo/transport/tcp/pair.cc:144] no error",
     "Gloo's ranks could not connect: each takes its address from GLOO_SOCKET_IFNAME"),
]


@pytest.mark.parametrize("exception,message,fix", KNOWN_FAILURES, ids=["cuda-oom", "nccl-system-error",
                         "ddp-unused-parameters", "missing-module", "nccl-duplicate-gpu", "nccl-watchdog-timeout",
                         "cuda-no-kernel-image", "cuda-driver-too-old", "nccl-no-interface",
                         "gloo-no-connection"])
def test_a_known_failure_in_a_record_comes_with_its_fix(tmp_path, exception, message, fix):
    errors.write(errors.record("exception", exception, message, f"Traceback...\n{exception}: {message}\n", rank=1),
                 str(tmp_path))
    text = root_cause(1, str(tmp_path)).splitlines()
    assert text[0].endswith(f"{exception}: {message.splitlines()[0]}") and text[-1].startswith("  fix: ")
    assert fix in text[-1]
    assert len([line for line in text if line.startswith("  fix: ")]) == 1


def test_a_message_of_several_lines_heads_with_its_first_and_the_traceback_has_the_rest(tmp_path):
    message = "NCCL error in: x.cpp:1691, invalid usage\nLast error:\nDuplicate GPU detected : rank 1 and rank 0 both on"
    tb = f"Traceback (most recent call last):\n  File \"t.py\", line 3\nDistBackendError: {message}\n"
    errors.write(errors.record("exception", "DistBackendError", message, tb, rank=1), str(tmp_path))
    text = root_cause(1, str(tmp_path)).splitlines()
    assert text[0].endswith("(pid %d): DistBackendError: NCCL error in: x.cpp:1691, invalid usage" % os.getpid())
    assert text[1:6] == ["    Traceback (most recent call last):", '      File "t.py", line 3',
                         "    DistBackendError: NCCL error in: x.cpp:1691, invalid usage", "    Last error:",
                         "    Duplicate GPU detected : rank 1 and rank 0 both on"]


def test_a_program_that_called_sys_exit_is_named_with_its_code_line_and_last_output(tmp_path):
    """Under python -m mpirt (the launcher's guard), sys.exit(3) on one rank leaves a record; its
    traceback says nothing a user needs, the line and what the rank printed last do."""
    tb = 'Traceback (most recent call last):\n  File "/job/train.py", line 41, in <module>\nSystemExit: 3\n'
    errors.write(errors.record("exception", "SystemExit", "3", tb, rank=1), str(tmp_path))
    text = root_cause(3, str(tmp_path), ranks={"1": ["epoch 2", "validation loss nan: giving up"]}).splitlines()
    assert text == [f"mpirt: job failed (exit 3). Root cause (first failure): rank 1 on {socket.gethostname()} "
                    f"(pid {os.getpid()}) exited with code 3 (sys.exit at /job/train.py:41)",
                    "  last output of rank 1:", "    epoch 2", "    validation loss nan: giving up"]
    (tmp_path / "rank-1.json").unlink()
    errors.write(errors.record("exception", "SystemExit", "no data in /data", tb, rank=1), str(tmp_path))
    assert root_cause(1, str(tmp_path)).endswith("exited with 'no data in /data' (sys.exit at /job/train.py:41)")


def test_a_full_dev_shm_in_a_ranks_last_words_comes_with_its_fix(tmp_path):
    said = {"3": ["misc/shmutils.cc:72 NCCL WARN Error: failed to extend /dev/shm/nccl-0aNhQB to 9637892 bytes"]}
    text = root_cause(1, str(tmp_path), [OMPI_EXIT.replace("],2]", "],3]")], ranks=said)
    assert ("fix: /dev/shm is full (a container gets 64 MiB; NCCL and DataLoader workers pass data through it): "
            "mount an emptyDir with medium: Memory") in text
    assert "fix:" not in root_cause(1, str(tmp_path), [OMPI_EXIT], ranks={"2": ["step 7 loss 0.1"]})


def test_first_record_of_a_rank_wins_and_files_are_whole(tmp_path):
    errors.write(errors.record("exception", "A", "first", "", rank=2), str(tmp_path))
    errors.write(errors.record("exception", "B", "second", "", rank=2), str(tmp_path))
    assert [r["exception"] for r in errors.read_all(tmp_path)] == ["A"]
    assert [p.name for p in tmp_path.iterdir()] == ["rank-2.json"]


def test_no_records_names_the_signal(tmp_path):
    assert exit_code(-9) == 137
    text = root_cause(137, str(tmp_path))
    assert "mpirun exited 137 (SIGKILL); no rank left an error record" in text


@pytest.mark.parametrize("guard,program", [("--guard", [sys.executable, "-m", "mpirt", "-c", "raise SystemExit(7)"]),
                                           ("--no-guard", [sys.executable, "-c", "raise SystemExit(7)"])])
def test_dry_run_prints_argv_and_env_without_running(tmp_path, guard, program):
    proc = subprocess.run([sys.executable, "-m", "launcher.cli", "launch", "-np", "3", "--dry-run", guard, "--",
                           sys.executable, "-c", "raise SystemExit(7)"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["argv"][-len(program):] == program
    assert "-np" in doc["argv"] or "-n" in doc["argv"]
    assert "MPIRT_ERROR_DIR" in doc["env"]


def test_local_ranks_default_to_this_machines_slots():
    """Without -np, local ranks fill the machine's slots (one per GPU, or --slots), as on hosts."""
    dry = subprocess.run([sys.executable, "-m", "launcher.cli", "launch", "--slots", "3", "--dry-run", "--", "true"],
                         capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    doc = json.loads(dry.stdout)
    assert doc["np"] == "3 (--slots)" and doc["argv"][doc["argv"].index("-np") + 1] == "3"
    code = "import os; print('size', os.environ['OMPI_COMM_WORLD_SIZE'])"
    proc = subprocess.run([sys.executable, "-m", "launcher.cli", "launch", "--slots", "2", "--no-env-defaults", "--",
                           sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("size 2") == 2 and "mpirt: 2 local ranks (--slots; -np sets another number)" in proc.stderr
    one = subprocess.run([sys.executable, "-m", "launcher.cli", "launch", "--dry-run", "--", "true"],
                         capture_output=True, text=True, timeout=60)
    gpus = len(list(Path("/dev").glob("nvidia[0-9]*")))
    assert json.loads(one.stdout)["np"] == (f"{gpus} ({gpus} GPU(s) on this machine)" if gpus else "1 (default)")


def test_launch_without_command_is_a_usage_error():
    proc = subprocess.run([sys.executable, "-m", "launcher.cli", "launch", "-np", "2"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "put it after --" in proc.stderr


OMPI_LOST = """Connection to w1 closed by remote host.
--------------------------------------------------------------------------
ORTE has lost communication with a remote daemon.
  HNP daemon   : [[47643,0],0] on node launcher
  Remote daemon: [[47643,0],2] on node w1
"""
OMPI_SIGNAL = "mpirun noticed that process rank 1 with PID 0 on node w1 exited on signal 9 (Killed).\n"
OMPI_EXIT = """mpirun detected that one or more processes exited with non-zero status, thus causing
the job to be terminated. The first process to do so was:

  Process name: [[8196,1],2]
  Exit code:    3
"""


def test_mpirun_messages_become_the_root_cause_when_no_rank_left_a_record(tmp_path):
    text = root_cause(205, str(tmp_path), OMPI_LOST.splitlines(keepends=True))
    assert "Root cause (from mpirun's output): host w1 stopped answering" in text
    assert "also: host w1 dropped its ssh connection" in text
    assert "rank 1 on w1 was killed by signal 9 (SIGKILL)" in root_cause(137, str(tmp_path), [OMPI_SIGNAL])
    assert "rank 2 exited with code 3" in root_cause(3, str(tmp_path), [OMPI_EXIT])
    assert "rank 2 exited with code 3 (" not in root_cause(3, str(tmp_path), [OMPI_EXIT])
    stopped = root_cause(143, str(tmp_path), [OMPI_EXIT.replace("Exit code:    3", "Exit code:    143")])
    assert "rank 2 exited with code 143 (128 + SIGTERM: it was told to stop, usually because its pod " in stopped
    assert "ssh to w3 port 2222 failed: Connection refused" in root_cause(
        255, str(tmp_path), ["ssh: connect to host w3 port 2222: Connection refused\n"])


def test_an_mpirun_that_waits_forever_after_ssh_fails_is_stopped(tmp_path):
    """Hydra keeps waiting when ssh to a host fails; the launcher must not."""
    import time

    from launcher.run import supervise

    stuck = [sys.executable, "-c", "import sys, time; print('ssh: connect to host w9 port 2222: Connection refused', "
             "file=sys.stderr, flush=True); time.sleep(600)"]
    t0 = time.time()
    code, stopped_by, tail = supervise(stuck, dict(os.environ), grace_s=5, log_dir=str(tmp_path),
                                       fatal_grace_s=1)[:3]
    assert time.time() - t0 < 10 and code == 137 and stopped_by == 0
    assert "ssh to w9 port 2222 failed: Connection refused" in root_cause(code, str(tmp_path), tail)
    assert (tmp_path / "rank-launcher.log").read_text().startswith("ssh: connect to host w9")


def test_a_rank_that_says_an_ssh_error_is_not_taken_for_mpirun_saying_it(tmp_path):
    """A rank fetching its data over ssh may print ssh's errors and go on: only mpirun's own
    lines (untagged) make the launcher stop a job that cannot start, nor become its root cause."""
    from launcher.mpi import MpiImpl, rank_tag
    from launcher.run import supervise

    rank = [sys.executable, "-c", "import sys, time; print('[1,0]<stderr>:ssh: connect to host data port 22: "
            "Connection refused', file=sys.stderr, flush=True); time.sleep(3); sys.exit(5)"]
    end = supervise(rank, dict(os.environ), grace_s=5, fatal_grace_s=0.5,
                    tag=rank_tag(MpiImpl("openmpi", (4, 1), "mpirun")))
    assert end.code == 5 and end.ranks == {"0": ["ssh: connect to host data port 22: Connection refused"]}
    assert "ssh to data" not in root_cause(end.code, str(tmp_path), end.tail, ranks=end.ranks)


# Real outputs from this machine: a rank killed by SIGBUS under Open MPI 5's prterun (which
# wraps its lines), by SIGKILL under Intel MPI's Hydra (which also lists the ranks it cleaned
# up) and under the MPICH 5 wheel's Hydra (no rank number at all).
OMPI5_SIGBUS = """--------------------------------------------------------------------------
prterun noticed that process rank 1 with PID 4607 on node vm exited on
signal 7 (Bus error).
--------------------------------------------------------------------------
"""
IMPI_KILLED = """
===================================================================================
=   BAD TERMINATION OF ONE OF YOUR APPLICATION PROCESSES
=   RANK 1 PID 4602 RUNNING AT w1
=   KILLED BY SIGNAL: 9 (Killed)
===================================================================================
"""
MPICH_KILLED = """
===================================================================================
=   BAD TERMINATION OF ONE OF YOUR APPLICATION PROCESSES
=   PID 4575 RUNNING AT w2
=   EXIT CODE: 9
=   CLEANING UP REMAINING PROCESSES
=   YOU CAN IGNORE THE BELOW CLEANUP MESSAGES
===================================================================================
YOUR APPLICATION TERMINATED WITH THE EXIT STRING: Killed (signal 9)
"""


def test_signals_from_every_mpirun_are_named_with_what_they_usually_mean(tmp_path):
    bus = root_cause(135, str(tmp_path), OMPI5_SIGBUS.splitlines(keepends=True))
    assert "Root cause (from mpirun's output): rank 1 on vm was killed by signal 7 (SIGBUS); usually /dev/shm " \
           "full or too small" in bus
    assert "rank 1 on w1 was killed by signal 9 (SIGKILL); usually the OOM killer" in root_cause(
        255, str(tmp_path), IMPI_KILLED.splitlines(keepends=True))
    assert "a rank on w2 was killed by signal 9 (SIGKILL)" in root_cause(
        9, str(tmp_path), MPICH_KILLED.splitlines(keepends=True))


# Real outputs from this machine for a program that is not there: Open MPI 4 (exit 132; 131
# for a file without the execute bit; 134 for a name not found on a namespace host's PATH),
# Open MPI 5 (exit 183), and the Hydra of MPICH 4, of
# Intel MPI and of the MPICH 5 wheel (which writes its tag twice).
OMPI4_NO_PROGRAM = """--------------------------------------------------------------------------
mpirun was unable to launch the specified application as it could not access
or execute an executable:

Executable: /opt/app/train
Node: w1

while attempting to start process rank 0.
--------------------------------------------------------------------------
2 total processes failed to start
"""
OMPI5_NO_PROGRAM = """--------------------------------------------------------------------------
prterun was unable to launch the specified application as it could not
access an executable:

   Executable: pyhton
   Node: vm

while attempting to start process rank 0.
--------------------------------------------------------------------------
"""
OMPI4_NOT_ON_WORKER = """--------------------------------------------------------------------------
mpirun was unable to find the specified executable file, and therefore
did not launch the job.  This error was first reported for process
rank 0; it may have occurred for other processes as well.

NOTE: A common cause for this error is misspelling a mpirun command
      line parameter option (remember that mpirun interprets the first
      unrecognized command line token as the executable).

Node:       w0
Executable: nooverlap
--------------------------------------------------------------------------
"""
HYDRA_NO_PROGRAM = ("[proxy:0:0@w2] HYDU_create_process (utils/launch/launch.c:73): execvp error on file pyhton "
                    "(No such file or directory)\n")
MPICH5_NO_PROGRAM = ("[proxy:0@vm] [proxy:0@vm] HYDU_create_process (/mpich-5.0.2/src/pm/hydra/lib/utils/launch.c:73):"
                     " execvp error on file /nonexist (No such file or directory)\n")


def test_a_program_mpirun_cannot_start_is_named_with_its_host_and_no_signal_is_guessed(tmp_path):
    text = root_cause(132, str(tmp_path), OMPI4_NO_PROGRAM.splitlines(keepends=True))
    assert text.startswith("mpirt: job failed: mpirun exited 132. Root cause (from mpirun's output): /opt/app/train "
                           "could not be started on w1 (not there, or not executable): check the name, and that the "
                           "image on w1 has it")
    assert "SIGILL" not in text
    remote = root_cause(134, str(tmp_path), OMPI4_NOT_ON_WORKER.splitlines(keepends=True))
    assert remote.startswith("mpirt: job failed: mpirun exited 134. Root cause (from mpirun's output): nooverlap "
                             "could not be started on w0 (not found)")
    assert "pyhton could not be started on vm (not there, or not executable)" in root_cause(
        183, str(tmp_path), OMPI5_NO_PROGRAM.splitlines(keepends=True))
    assert "pyhton could not be started on w2 (No such file or directory)" in root_cause(
        255, str(tmp_path), [HYDRA_NO_PROGRAM])
    assert "/nonexist could not be started on vm (No such file or directory)" in root_cause(
        255, str(tmp_path), [MPICH5_NO_PROGRAM])


OMPI4_NO_SESSION_DIR = """--------------------------------------------------------------------------
A call to mkdir was unable to create the desired directory:

  Directory: /tmp/ompi.w0.0/pid.26544
  Error:     Read-only file system

Please check to ensure you have adequate permissions to perform
the desired operation.
--------------------------------------------------------------------------
[w0:26544] [[2894,0],0] ORTE_ERROR_LOG: Error in file ../../../orte/util/session_dir.c at line 107
"""
OMPI5_NO_SESSION_DIR = """--------------------------------------------------------------------------
PMIx detected a call to mkdir was unable to create the desired directory:

  Directory: /tmp/ompi.26642
  Error:     Read-only file system

Please check to ensure you have adequate permissions to perform
the desired operation.
--------------------------------------------------------------------------
"""


def test_a_session_directory_mpirun_cannot_create_is_named_with_the_fix(tmp_path):
    """A pod with readOnlyRootFilesystem and no /tmp mounted: Open MPI cannot start at all."""
    for text, where in ((OMPI4_NO_SESSION_DIR, "/tmp/ompi.w0.0/pid.26544"), (OMPI5_NO_SESSION_DIR, "/tmp/ompi.26642")):
        said = root_cause(1, str(tmp_path), text.splitlines(keepends=True))
        assert said.startswith(f"mpirt: job failed: mpirun exited 1. Root cause (from mpirun's output): mpirun could "
                               f"not create its session directory {where} (Read-only file system): Open MPI keeps it "
                               "under TMPDIR, else /tmp, on every host; mount a writable emptyDir at /tmp"), said


def test_a_session_directory_under_a_file_fails_the_real_job_with_the_fix(tmp_path):
    """The same with the real mpirun: TMPDIR under a file, where no directory can be made."""
    from launcher.mpi import detect, find_mpirun

    if detect(find_mpirun()).family != "openmpi":
        pytest.skip("only Open MPI keeps a session directory (Hydra has none)")
    (tmp_path / "file").write_text("")
    proc = subprocess.run([sys.executable, "-m", "launcher.cli", "launch", "-np", "2", "--", sys.executable, "-c",
                           "pass"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TMPDIR": str(tmp_path / "file" / "tmp")})
    assert proc.returncode != 0
    assert "Root cause (from mpirun's output): mpirun could not create its session directory " \
           f"{tmp_path}/file/tmp" in proc.stderr, proc.stderr
    assert "(Not a directory): Open MPI keeps it under TMPDIR, else /tmp" in proc.stderr, proc.stderr


def test_a_log_dir_that_cannot_be_made_is_said_before_anything_starts(tmp_path):
    (tmp_path / "file").write_text("")
    proc = subprocess.run([sys.executable, "-m", "launcher.cli", "launch", "-np", "1", "--log-dir",
                           str(tmp_path / "file" / "logs"), "--", "true"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr == f"Error: --log-dir {tmp_path}/file/logs: cannot make it (Not a directory); give a writable " \
                          "directory\n", proc.stderr


@pytest.mark.parametrize("program", ["pyhton", "script.sh"])
def test_a_local_program_that_cannot_run_is_said_before_mpirun_starts(tmp_path, program):
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")  # no execute bit
    program = str(script) if program == "script.sh" else program
    proc = subprocess.run([sys.executable, "-m", "launcher.cli", "launch", "-np", "2", "--", program, "x"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    says = f"{script}': it is not an executable file" if program == str(script) else "pyhton': it is not on PATH"
    assert f"cannot run '{says}" in proc.stderr and "check the name, or give its full path" in proc.stderr
    assert "mpirun" not in proc.stderr



def test_a_local_python_script_that_is_not_there_is_said_before_mpirun_starts(tmp_path):
    """Not every rank's Python saying it cannot open the file, with a root cause after them."""
    (tmp_path / "train.py").write_text("print('hi')\n")
    for script, says in (("trian.py", f"there is no 'trian.py' in {tmp_path}, where the ranks start"),
                         (str(tmp_path / "x" / "train.py"), f"there is no '{tmp_path}/x/train.py';")):
        proc = subprocess.run([sys.executable, "-m", "launcher.cli", "launch", "-np", "2", "--", "python3", "-u",
                               script, "x"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert proc.returncode == 2
        assert f"the ranks' Python has no script to run: {says}" in proc.stderr and "mpirun" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "launcher.cli", "launch", "-np", "1", "--no-tag-output", "--",
                           "python3", "train.py"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout == "hi\n", proc.stderr

def test_out_of_memory_comes_before_the_records_it_caused(tmp_path):
    errors.write(errors.record("exception", "RuntimeError", "peer gone", "", rank=0), str(tmp_path))
    text = root_cause(137, str(tmp_path), [OMPI_SIGNAL], oom=["the kernel's OOM killer killed 1 process on w1"])
    lines = text.splitlines()
    assert lines[0] == ("mpirt: job failed (exit 137 (SIGKILL)). Root cause: out of memory: the kernel's OOM killer "
                        "killed 1 process on w1")
    assert lines[1].startswith("  also: rank 1 on w1 was killed by signal 9")
    assert lines[2].startswith("  also: rank 0 on ") and lines[2].endswith("RuntimeError: peer gone")


def test_termination_message_is_clipped_at_a_character_boundary():
    from launcher import termination

    assert termination.clip("x" + "é" * 3000) == ("x" + "é" * 2045).encode() + b" ..."  # no half character
    assert len(termination.clip("x" * 5000)) == 4096 and termination.clip("short") == b"short"
    assert termination.path_for("none") is None
    assert termination.path_for("auto") in (None, termination.DEFAULT)


def test_last_output_of_the_rank_mpirun_names(tmp_path):
    ranks = {"0": ["step 3"], "1": ["loading shard 7", "Segmentation fault in libfoo"]}
    text = root_cause(139, str(tmp_path), ["mpirun noticed that process rank 1 with PID 9 on node w1 exited on "
                                           "signal 11 (Segmentation fault).\n"], ranks=ranks)
    assert text.splitlines()[1:] == ["  last output of rank 1:", "    loading shard 7",
                                     "    Segmentation fault in libfoo"]
    assert "last output" not in root_cause(3, str(tmp_path), [OMPI_EXIT], ranks={"0": ["x"]})  # rank 2 said nothing


# Open MPI 5's words for a rank that exited with a code (from prterun here).
OMPI5_EXIT = """prterun detected that one or more processes exited with non-zero status,
thus causing the job to be terminated. The first process to do so was:

   Process name: [prterun-vm-2268@1,1]
   Exit code:    1
"""
TRACEBACK = ["Traceback (most recent call last):", '  File "/tmp/t.py", line 5, in <module>',
             '    raise RuntimeError("bad shard 7")', "RuntimeError: bad shard 7"]


def test_the_rank_that_failed_is_named_without_a_record_under_every_mpi(tmp_path):
    """A script not run under python -m mpirt leaves no record: Open MPI 5 names the rank in
    its own form; Hydra names none, so the first rank to print a Python traceback is taken."""
    ranks = {"0": ["rank 0 starting"], "1": ["rank 1 starting", *TRACEBACK]}
    text = root_cause(1, str(tmp_path), [OMPI5_EXIT], ranks=ranks)
    assert "Root cause (from mpirun's output): rank 1 exited with code 1" in text
    assert text.endswith("    RuntimeError: bad shard 7")
    text = root_cause(1, str(tmp_path), [], ranks={**ranks, "2": TRACEBACK}, raised=["1", "2"])
    assert text.splitlines()[0] == ("mpirt: job failed: mpirun exited 1. Root cause (from the ranks' output): rank 1 "
                                    "ended with a Python exception")
    assert text.splitlines()[1:3] == ["  last output of rank 1:", "    rank 1 starting"]


def test_a_failure_nothing_names_shows_what_the_ranks_said_last_once_with_the_fix(tmp_path):
    """Hydra names no rank that exited with a code: every rank of a job started with a Python
    that lacks mpirt says the same, once; different endings are counted past two."""
    missing = {str(r): ["/opt/venv/bin/python: No module named mpirt"] for r in range(4)}
    text = root_cause(1, str(tmp_path), [], ranks=missing).splitlines()
    assert text[0] == "mpirt: job failed: mpirun exited 1; no rank left an error record, and mpirun named no rank"
    assert text[1:3] == ["  last output of ranks 0-3:", "    /opt/venv/bin/python: No module named mpirt"]
    assert text[3].startswith("  fix: /opt/venv/bin/python has no mpirt: install mpirt into the Python the ranks run")
    text = root_cause(1, str(tmp_path), [], ranks={"0": ["a"], "1": ["b"], "2": ["a"], "3": ["c"], "4": ["d"]})
    assert text.splitlines()[1:] == ["  last output of ranks 0,2:", "    a", "  last output of rank 1:", "    b",
                                     "  (2 other endings among the ranks: --log-dir keeps each rank's output)"]
    text = root_cause(1, str(tmp_path), [OMPI_EXIT], ranks={"2": ["ModuleNotFoundError: No module named 'timm'"]})
    assert "fix: the ranks' Python cannot import timm: install it into the image" in text


def test_records_left_on_other_hosts_are_copied_here_and_the_first_of_a_rank_wins(tmp_path):
    """Each pod has its own filesystem: the launcher fetches the records ranks wrote on theirs."""
    from launcher.postmortem import fetch, keep_records, listing_command

    early = errors.record("exception", "ValueError", "bad batch", "tb", rank=3)
    late = errors.record("exception", "RuntimeError", "peer gone", "tb", rank=0)
    early["time"], late["time"] = 100.0, 105.0
    here = errors.record("exception", "KeyError", "already here", "tb", rank=0)
    errors.write(here, str(tmp_path))
    printed = {"w1": json.dumps(early, indent=1) + "\n" + json.dumps(late, indent=1),
               "w2": "", "w3": json.dumps({"rank": "../x", "time": 1.0}) + json.dumps(early)}
    keep_records(fetch(["w1", "w2", "w3"], printed.__getitem__), str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rank-0.json", "rank-3.json"]
    assert [r["exception"] for r in errors.read_all(tmp_path)] == ["ValueError", "KeyError"]
    assert listing_command("/tmp/mpirt errors;x", "json") == ("cat -- '/tmp/mpirt errors;x'/rank-*.json 2>/dev/null "
                                                              "|| true")


def test_only_whole_records_are_read_from_a_hosts_output():
    rec = errors.record("exception", "E", "m", "tb", rank=2)
    text = json.dumps(rec) + "\n" + json.dumps(rec)[:-5]
    assert errors.parse_many(text) == [rec]
    assert errors.parse_many("") == [] and errors.parse_many("Permission denied\n") == []
    assert errors.parse_many(json.dumps([rec])) == [] and errors.parse_many(json.dumps({**rec, "rank": -1})) == []


def test_a_stopped_job_gets_the_fix_for_what_its_ranks_said_last(tmp_path, capsys):
    """A job that hung after saying why (a DataLoader worker out of file descriptors) and was
    stopped at its time limit, or by a signal; a job whose ranks said nothing known gets none."""
    said = {"1": ["OSError: [Errno 24] Too many open files"]}
    code, text = report(143, str(tmp_path), time_limit_s=60, ranks=said)
    assert code == 124 and "(run the program under python -m mpirt to learn where each rank was" in text
    assert text.endswith("\n  fix: the rank ran out of file descriptors (DataLoader workers hand each tensor over as "
                         "one): raise the container's open-files limit (ulimit -n; the container runtime's default "
                         "ulimits), or call torch.multiprocessing.set_sharing_strategy('file_system') in the script")
    code, text = report(143, str(tmp_path), stopped_by=15, ranks=said, where=["ranks 0-1 (w0): x.py:3 in <module>"])
    assert code == 143 and "where the ranks were when it was stopped:\n    ranks 0-1 (w0): x.py:3 in <module>\n  fix: " \
        "the rank ran out of file descriptors" in text
    assert "fix:" not in report(143, str(tmp_path), stopped_by=15, ranks={"0": ["step 7 loss 0.1"]})[1]
    capsys.readouterr()

