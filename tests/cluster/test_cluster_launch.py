"""`mpirt launch` across network-namespace hosts running `mpirt worker`: real sshd, real
mpirun (the system MPI), real ranks on every host."""

import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from mpirt import checkpoint
from netns import cluster  # noqa: F401  (the fixture)


pytestmark = [pytest.mark.e2e, pytest.mark.mpi]


WHERE = str(Path(__file__).parent / "ranks" / "where.py")
ENV_REPORT = str(Path(__file__).parent / "ranks" / "env_report.py")


def ranks_report(stdout: str) -> list[dict]:
    """Rank 0's report, and each rank's line in one piece, tagged "[RANK] " under every MPI."""
    report = json.loads(next((line[4:] for line in stdout.splitlines() if line.startswith("[0] [{")), "null"))
    assert report, f"no rank report in:\n{stdout}"
    said = sorted(line for line in stdout.splitlines() if " on " in line)
    assert said == [f"[{r['rank']}] rank {r['rank']} on {r['host']}" for r in report], stdout
    return report


def test_three_hosts_every_rank_on_its_host(cluster):
    c = cluster(3)
    for w in ("w0", "w1", "w2"):
        c.start_worker(w)
    proc = c.launch(["w0", "w1", "w2"], [sys.executable, WHERE])
    assert proc.returncode == 0, proc.stderr
    assert ranks_report(proc.stdout) == [{"rank": r, "size": 3, "host": f"w{r}"} for r in range(3)]
    assert "hosts ready 3/3" in proc.stderr
    # every host probed over ssh; each namespace's interface has its own name, so none is imposed
    assert "mpirt: tier tcp (3 hosts), interface left to the libraries" in proc.stderr, proc.stderr
    assert "interfaces differ (" in proc.stderr


def test_hosts_on_one_machine_share_its_cores(cluster):
    """The namespace hosts are one machine (one kernel boot id), each seeing all its cores: the
    launcher counts their ranks together, gives each rank its share of threads, and from more
    ranks than cores has Open MPI yield while it waits (polling, its small allreduces took
    milliseconds here)."""
    c = cluster(3)
    for w in ("w0", "w1", "w2"):
        c.start_worker(w)
    names = ["OMP_NUM_THREADS", "OMPI_MCA_mpi_yield_when_idle"]
    proc = c.launch(["w0", "w1", "w2"], [sys.executable, ENV_REPORT, *names],
                    env={k: v for k, v in os.environ.items() if k not in names})
    assert proc.returncode == 0, proc.stderr
    cores = os.cpu_count()
    expect = {"OMP_NUM_THREADS": str(max(1, cores // 3)), "OMPI_MCA_mpi_yield_when_idle": "1" if 3 > cores else None}
    assert [{n: r[n] for n in names} for r in ranks_report(proc.stdout)] == [expect] * 3
    crowded = f"mpirt:   w0, w1, w2 (one machine) runs 3 ranks on {cores} CPUs"
    assert (crowded in proc.stderr) == (3 > cores), proc.stderr


def test_three_hosts_with_mpich(cluster, tmp_path):
    mpiexec = shutil.which("mpiexec.mpich")
    libmpich = Path("/usr/lib/x86_64-linux-gnu/libmpich.so.12")
    if not mpiexec or not libmpich.exists():
        pytest.skip("MPICH is not installed (apt-get install mpich)")
    abi = tmp_path / "mpich-abi"  # mpi4py's MPICH-ABI module wants the library by the name libmpi.so.12
    abi.mkdir()
    (abi / "libmpi.so.12").symlink_to(libmpich)
    os.chmod(tmp_path, 0o755)
    c = cluster(3)
    for w in ("w0", "w1", "w2"):
        c.start_worker(w)
    proc = c.launch(["w0", "w1", "w2"], [sys.executable, WHERE], "--mpirun", mpiexec,
                    env={"LD_LIBRARY_PATH": str(abi), "MPI4PY_LIBMPI": "libmpi.so.12"})
    assert proc.returncode == 0, proc.stderr
    assert ranks_report(proc.stdout) == [{"rank": r, "size": 3, "host": f"w{r}"} for r in range(3)]
    version = subprocess.run([mpiexec, "--version"], capture_output=True, text=True).stdout
    if re.search(r"Version:\s+4\.[01]\.", version):  # Debian 12's 4.0.2: the finalize hang is said up front
        assert "warning: MPICH 4." in proc.stderr and "MPI_Finalize" in proc.stderr, proc.stderr


MPIS = [  # (id, the environment variable naming its venv or None for the system's, mpirun, extra env)
    ("open-mpi-4", None, "mpirun", {}),
    ("open-mpi-5", "MPIRT_TEST_OMPI5", "mpirun", {}),
    ("intel-mpi", "MPIRT_TEST_IMPI", "mpiexec", {}),
    ("mpich-wheel", "MPIRT_TEST_MPICH", "mpiexec", {"UCX_TLS": "tcp,self"}),
]
EACH_MPI = pytest.mark.parametrize("variable,mpirun,env", [m[1:] for m in MPIS], ids=[m[0] for m in MPIS])


def mpi_under_test(variable: str | None, mpirun: str) -> tuple[str, list[str]]:
    """(the ranks' Python, launch options) for the system MPI or the venv ``variable`` names."""
    if not variable:
        return sys.executable, []
    prefix = Path(os.environ.get(variable, "/nonexistent"))
    if not (prefix / "bin" / mpirun).exists():
        pytest.skip(f"no such MPI environment: set {variable} to a venv with its MPI and mpi4py wheels "
                    "(.ci/run makes one)")
    return str(prefix / "bin" / "python"), ["--mpirun", str(prefix / "bin" / mpirun)]


@EACH_MPI
def test_the_rank_that_raised_is_the_root_cause_under_every_mpi(variable, mpirun, env):
    """A script run without python -m mpirt (--no-guard here; the MPIs' venvs have no mpirt)
    leaves no record. Open MPI names the rank that exited with a code, each version in its own
    form; Hydra names none, and the rank that printed a traceback is taken. Local ranks: no
    cluster needed."""
    python, extra = mpi_under_test(variable, mpirun)
    proc = subprocess.run(["mpirt", "launch", "-np", "3", "--no-guard", *extra, "--", python, WHERE, "raise", "1"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, **env})
    assert proc.returncode == 1, proc.stderr
    cause = proc.stderr[proc.stderr.index("mpirt: job failed"):].splitlines()
    assert re.fullmatch(r"mpirt: job failed: mpirun exited 1\. Root cause \(from (mpirun's|the ranks') output\): "
                        r"rank 1 (exited with code 1|ended with a Python exception)", cause[0]), cause
    assert cause[1] == "  last output of rank 1:" and cause[-1] == "    RuntimeError: shard 1 is corrupt", cause


@EACH_MPI
def test_a_flood_of_output_reaches_the_console_and_the_logs_whole_under_every_mpi(variable, mpirun, env, tmp_path):
    """2 ranks each write 30,000 lines as fast as they can, block-buffered and with pieces
    of lines in between: every line reaches the console once, whole, under its rank's tag,
    and each rank's log has its own. (Lines of 20 bytes and more: Open MPI 4.1's tagging
    drops shorter ones written in bulk, docs/launcher.md.)"""
    python, extra = mpi_under_test(variable, mpirun)
    flood = ("import os, sys\n"
             "r = os.environ.get('OMPI_COMM_WORLD_RANK') or os.environ['PMI_RANK']\n"
             "for i in range(30000):\n"
             "    sys.stdout.write(f'rank {r} line {i:06d} end\\n')\n"
             "    if i % 5000 == 0:\n"
             "        sys.stdout.flush(); sys.stdout.write('a piece'); sys.stdout.flush(); sys.stdout.write(' and more\\n')\n")
    proc = subprocess.run(["mpirt", "launch", "-np", "2", "--log-dir", str(tmp_path), *extra, "--", python, "-c",
                           flood], capture_output=True, text=True, timeout=180, env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr[-3000:]
    for r in (0, 1):
        mine = [line for line in proc.stdout.splitlines() if line.startswith(f"[{r}] ")]
        expected = []
        for i in range(30000):
            expected.append(f"rank {r} line {i:06d} end")
            if i % 5000 == 0:
                expected.append("a piece and more")
        assert [line[len(f"[{r}] "):] for line in mine] == expected
        assert (tmp_path / f"rank-{r}.log").read_text().splitlines() == expected


@pytest.mark.parametrize("variable,mpirun,env", [
    # Open MPI 5 (PRRTE) ignores the ORTE variables operators set and would run every rank on
    # the launcher; the explicit hostfile and PRTE_MCA_plm_ssh_args put one rank on each host.
    ("MPIRT_TEST_OMPI5", "mpirun", {}),
    # Intel MPI's Hydra keeps per-host counts only from a -machinefile (with -f, ranks 0 and 1
    # shared the first host). A branch count of 1 stands for the hierarchical launch Intel turns
    # on for large jobs: w0 would ssh to w1 on port 22, without our config; the launcher must
    # keep every ssh to itself.
    ("MPIRT_TEST_IMPI", "mpiexec", {"I_MPI_HYDRA_BRANCH_COUNT": "1"}),
    # MPICH 5 from its wheel, the image's mpich flavour, over TCP only as between pods (UCX
    # would otherwise find these namespaces share a kernel): no known fault to warn of.
    ("MPIRT_TEST_MPICH", "mpiexec", {"UCX_TLS": "tcp,self"}),
], ids=["open-mpi-5", "intel-mpi", "mpich-wheel"])
def test_three_hosts_with_an_mpi_from_its_wheel(cluster, variable, mpirun, env):
    python, extra = mpi_under_test(variable, mpirun)
    c = cluster(3)
    for w in ("w0", "w1", "w2"):
        c.start_worker(w)
    proc = c.launch(["w0", "w1", "w2"], [python, WHERE], *extra, env=env)
    assert proc.returncode == 0, proc.stderr
    assert ranks_report(proc.stdout) == [{"rank": r, "size": 3, "host": f"w{r}"} for r in range(3)]
    assert "MPI_Finalize" not in proc.stderr  # no known-fault warning for these versions


@EACH_MPI
def test_ranks_see_their_hosts_environment_and_the_variables_named_at_launch(cluster, variable, mpirun, env):
    """What a worker's pod spec sets reaches the ranks on that worker (mpirun forwards only what
    it is told to); a library variable set there is not replaced by a default from the
    launcher; --env / -x sends one to every rank, even one named like a secret. Hydra (Intel
    MPI, MPICH) forwards the launcher's whole environment as well. The ranks have the open
    files the worker's container allows, not its low starting limit."""
    python, extra = mpi_under_test(variable, mpirun)
    c = cluster(3)
    for w in ("w0", "w1", "w2"):  # each pod's container starts with 256 open files, 4096 allowed
        c.start_worker(w, env={"HOST_TAG": f"tag {w}", **({"NCCL_DEBUG": "INFO"} if w == "w1" else {})},
                       preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, 4096)))
    names = ["HOST_TAG", "NCCL_DEBUG", "DATA_DIR", "HF_TOKEN", "ONLY_HERE"]
    proc = c.launch(["w0", "w1", "w2"], [python, ENV_REPORT, *names], *extra, "--env", "DATA_DIR=/data/a b",
                    "-x", "HF_TOKEN", env={**env, "HF_TOKEN": "hf_abc", "ONLY_HERE": "launcher"})
    assert proc.returncode == 0, proc.stderr
    report = ranks_report(proc.stdout)
    assert [r["host"] for r in report] == ["w0", "w1", "w2"]
    assert [r["HOST_TAG"] for r in report] == ["tag w0", "tag w1", "tag w2"]
    assert [r["NCCL_DEBUG"] for r in report] == [None, "INFO", None]
    assert [r["nofile"] for r in report] == [[4096, 4096]] * 3  # raised by mpirt worker, inherited
    hydra = mpirun == "mpiexec"
    assert {(r["DATA_DIR"], r["HF_TOKEN"], r["ONLY_HERE"]) for r in report} == {
        ("/data/a b", "hf_abc", "launcher" if hydra else None)}
    assert "set on the hosts, so not by mpirt: NCCL_DEBUG (w1)" in proc.stderr, proc.stderr
    hint = "mpirt: set on the launcher only, so no rank sees it: ONLY_HERE; send one with --env NAME"
    assert (hint in proc.stderr) != hydra, proc.stderr  # Hydra sends everything


def test_ranks_on_every_host_run_the_python_first_on_the_users_path(cluster, user_venv):
    """An image's venv (or conda) first on PATH, Open MPI in /usr/bin: `python3` in the command
    is the venv's on every host, not the system's, which Open MPI started by an absolute path
    would put first on the ranks' PATH."""
    c = cluster(2)
    for w in ("w0", "w1"):
        c.start_worker(w)
    proc = c.launch(["w0", "w1"], ["python3", "-c", "import socket, sys; print('ran', socket.gethostname(), "
                                   "sys.executable)"], env={"PATH": f"{user_venv}:{os.environ['PATH']}"})
    assert proc.returncode == 0, proc.stderr
    assert sorted(x for x in proc.stdout.splitlines() if " ran " in x) == [
        f"[0] ran w0 {user_venv}/python3", f"[1] ran w1 {user_venv}/python3"], proc.stdout


@EACH_MPI
def test_workers_that_cannot_resolve_the_launchers_name(cluster, variable, mpirun, env):
    """Hydra's proxies connect back to the launcher by its host name, which workers of a
    Trainer V2 or Volcano job cannot resolve (nor anyone before the launcher pod is Ready):
    getaddrinfo failed on both workers until the launcher gave its address instead."""
    python, extra = mpi_under_test(variable, mpirun)
    c = cluster(2)
    for w in ("w0", "w1"):
        hosts = Path("/etc/netns") / c.ns(w) / "hosts"
        hosts.write_text("".join(f"{line}\n" for line in hosts.read_text().splitlines() if "launcher" not in line))
        c.start_worker(w)
    proc = c.launch(["w0", "w1"], [python, WHERE], *extra, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert ranks_report(proc.stdout) == [{"rank": r, "size": 2, "host": f"w{r}"} for r in range(2)]


def test_hosts_without_a_slot_count_take_one_per_gpu_of_their_own(cluster, tmp_path):
    """Volcano lists hosts without counts, and the launcher pod (like a CPU-only master task, or
    mpi-operator #476's blank NVIDIA_VISIBLE_DEVICES) sees no GPU: each worker's own count
    decides. The workers' GPUs are device nodes in a fixture root, the hardware boundary."""
    c = cluster(2)
    for w, gpus in (("w0", 3), ("w1", 2)):
        root = tmp_path / f"root-{w}"
        (root / "sys").mkdir(parents=True)
        (root / "dev").mkdir()
        for i in range(gpus):
            (root / "dev" / f"nvidia{i}").touch()
        c.start_worker(w, env={"MPIRT_SYSFS_ROOT": str(root)})
    proc = c.launch(["w0", "w1"], [sys.executable, WHERE], slots=None)
    assert proc.returncode == 0, proc.stderr
    assert [r["host"] for r in ranks_report(proc.stdout)] == ["w0", "w0", "w0", "w1", "w1"]
    assert "mpirt: slots from each host's GPUs: w0 3, w1 2" in proc.stderr


def test_late_sshd_is_waited_for(cluster):
    c = cluster(2)
    c.start_worker("w0")
    c.start_worker("w1", delay=15)
    t0 = time.time()
    proc = c.launch(["w0", "w1"], [sys.executable, WHERE], "--wait", "60")
    assert proc.returncode == 0, proc.stderr
    assert time.time() - t0 >= 15
    assert [r["host"] for r in ranks_report(proc.stdout)] == ["w0", "w1"]


def test_host_that_never_resolves_fails_before_the_deadline_naming_it(cluster):
    c = cluster(1)
    c.start_worker("w0")
    t0 = time.time()
    proc = c.launch(["w0", "w7"], [sys.executable, WHERE], "--wait", "5")
    assert proc.returncode != 0
    assert time.time() - t0 < 20
    assert "1 of 2 hosts not ready after 5 s" in proc.stderr
    assert "w7" in proc.stderr and "no DNS record" in proc.stderr and "w0 " not in proc.stderr.split("HOST")[1]


def test_rank_exit_code_3_names_rank_and_host(cluster):
    c = cluster(2)
    c.start_worker("w0")
    c.start_worker("w1")
    proc = c.launch(["w0", "w1"], [sys.executable, "-m", "mpirt", WHERE, "1"])
    assert proc.returncode == 3, proc.stderr
    assert re.search(r"Root cause \(first failure\): rank 1 on w1 \(pid \d+\) exited with code 3 \(sys.exit at "
                     r"\S*where.py:\d+\)", proc.stderr), proc.stderr


def test_a_program_missing_on_the_workers_is_named_with_the_host(cluster):
    c = cluster(1)
    c.start_worker("w0")
    proc = c.launch(["w0"], ["no-such-trainer", "--epochs", "3"])
    assert proc.returncode != 0
    assert "Root cause (from mpirun's output): no-such-trainer could not be started on w0 (not found)" in proc.stderr
    assert "SIG" not in proc.stderr.split("mpirt: job failed", 1)[1].split(".")[0]


def test_a_hung_job_says_where_each_rank_on_each_host_was(cluster):
    """At the time limit each rank dumps its stack on its own host; the launcher fetches them."""
    c = cluster(3)
    for w in ("w0", "w1", "w2"):
        c.start_worker(w)
    proc = c.launch(["w0", "w1", "w2"], [sys.executable, "-m", "mpirt", WHERE, "hang", "1"], "--time-limit", "10",
                    "--grace", "3")
    assert proc.returncode == 124, proc.stderr
    lines = Path(WHERE).read_text().splitlines()
    sleep = lines.index("        time.sleep(600)") + 1
    barrier = sleep + 1
    assert lines[barrier - 1] == "    comm.Barrier()"
    where = proc.stderr.split("where the ranks were when it was stopped:\n", 1)[1].splitlines()
    assert where[:2] == [f"    ranks 0, 2 (w0, w2): {WHERE}:{barrier} in <module>",
                         f"    rank 1 (w1): {WHERE}:{sleep} in <module>"]


def test_mpirt_where_in_the_launcher_pod_says_where_every_rank_on_every_host_is_now(cluster):
    """`kubectl exec LAUNCHER-POD -- mpirt where`, here nsenter into the launcher's namespaces:
    each host's ranks dump their stacks over ssh and go on. In a worker pod, the ranks there
    answer themselves (its MPI daemon, which carries the job id, is not taken for a launch)."""
    c = cluster(3)
    for w in ("w0", "w1", "w2"):
        c.start_worker(w)
    proc = c.start_launch(["w0", "w1", "w2"], [sys.executable, "-m", "mpirt", WHERE, "hang", "1"],
                          "--time-limit", "120", "--grace", "3")
    try:
        assert len(json.loads(proc.stdout.readline().removeprefix("[0] "))) == 3  # rank 0 heard from all
        asked, on_w1 = (subprocess.run(["nsenter", "-t", str(pid), "-m", "-n", "-u", "mpirt", "where"],
                                       capture_output=True, text=True, timeout=60)
                        for pid in (proc.pid, c.procs["w1"].pid))
        assert proc.poll() is None  # the ranks go on
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = Path(WHERE).read_text().splitlines()
    sleep = lines.index("        time.sleep(600)") + 1
    assert asked.returncode == 0, asked.stderr + err
    assert asked.stdout.splitlines() == ["mpirt: where the ranks are now (3 of 3 answered; the job goes on):",
                                         f"  ranks 0, 2 (w0, w2): {WHERE}:{sleep + 1} in <module>",
                                         f"  rank 1 (w1): {WHERE}:{sleep} in <module>"]
    assert on_w1.returncode == 0, on_w1.stderr
    assert on_w1.stdout.splitlines() == ["mpirt: where this host's ranks are now (1 answered; the job goes on):",
                                         f"  rank 1 (w1): {WHERE}:{sleep} in <module>"]
    assert proc.returncode == 143, err


def test_rank_oom_killed_on_a_worker_is_named_with_its_host(cluster, memory_cgroup):
    """w1 is a pod with a memory limit: its worker, sshd and ranks run in one memory cgroup.
    mpirun says only "signal 9"; the launcher reads w1's OOM counter over ssh and says why."""
    c = cluster(2)
    c.start_worker("w0")
    c.start_worker("w1", cgroup=memory_cgroup(384 << 20))
    proc = c.launch(["w0", "w1"], [sys.executable, str(Path(__file__).parent / "ranks" / "hog.py"), "1", "oom"])
    assert proc.returncode == 137, proc.stderr
    cause = proc.stderr.split("Root cause: out of memory: ", 1)[1].splitlines()[0]
    assert cause.startswith("the kernel's OOM killer killed 1 process on w1 during this job (oom_kill 0 -> 1 in ")
    assert "also: rank 1 on w1 was killed by signal 9" in proc.stderr


def test_failed_job_is_restarted_across_the_hosts(cluster, tmp_path):
    """--max-restarts across hosts: every host checked again, then the job runs again on all."""
    c = cluster(2)
    c.start_worker("w0")
    c.start_worker("w1")
    flaky = tmp_path / "flaky.py"
    flaky.write_text("import os, socket, sys\nprint(f\"attempt {os.environ['MPIRT_RESTART']} {socket.gethostname()}\", "
                     "flush=True)\nsys.exit(3 if os.environ['MPIRT_RESTART'] == '0' and socket.gethostname() == 'w1' "
                     "else 0)\n")
    os.chmod(tmp_path, 0o755)
    proc = c.launch(["w0", "w1"], [sys.executable, str(flaky)], "--max-restarts", "1")
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"rank 1 on w1 \(pid \d+\) exited with code 3 \(sys.exit at .*flaky.py:3\)", proc.stderr)
    assert "attempt 1 of 2 failed; restarting the job" in proc.stderr
    assert proc.stderr.count("hosts ready 2/2") == 2
    assert {"attempt 1 w0", "attempt 1 w1"} <= {line.split("]")[-1].split(":")[-1].strip()
                                                for line in proc.stdout.splitlines()}


def test_worker_lost_mid_run_ends_the_job_naming_the_host(cluster):
    c = cluster(2)
    c.start_worker("w0")
    c.start_worker("w1")
    proc = c.start_launch(["w0", "w1"], [sys.executable, WHERE, "sleep", "120"])
    try:
        for line in proc.stdout:  # the job is running on both hosts once rank 0 reports
            if '"host": "w1"' in line:
                break
        c.kill_host("w1")
        t0 = time.time()
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert time.time() - t0 < 30, "the launcher took 30 s or more to notice the lost host"
    cause = err.split("Root cause (from mpirun's output): ", 1)[-1].splitlines()[0]
    assert cause.startswith("host w1 "), err


STOP = str(Path(__file__).parent / "ranks" / "stop.py")


def _wait_for(paths: list[Path], proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while not all(p.exists() for p in paths):
        if proc.poll() is not None or time.time() > deadline:
            out, err = proc.communicate()
            pytest.fail(f"the ranks never all started:\n{out}\n{err}")
        time.sleep(0.05)


def _stopped_on_two_hosts(cluster, tmp_path: Path, command: list[str], *options: str,
                          env: dict) -> tuple[subprocess.Popen, str]:
    """``command`` on w0 and w1, stopped with SIGTERM to the launcher once each rank wrote
    tmp_path/rank-<r>.started; the launch and what it said on stderr."""
    c = cluster(2)
    c.start_worker("w0")
    c.start_worker("w1")
    proc = c.start_launch(["w0", "w1"], command, *options, env=env)
    try:
        _wait_for([tmp_path / "rank-0.started", tmp_path / "rank-1.started"], proc)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc, err


@EACH_MPI
def test_a_stopped_job_gives_every_rank_on_every_host_its_grace_period(cluster, tmp_path, variable, mpirun, env):
    """SIGTERM to the launcher (its pod deleted): each rank on each host gets SIGTERM at once and
    its 4 s of work after it fit in --grace 8, whatever the MPI. Left to themselves, Open MPI 4
    would send SIGTERM only after half the grace period, Open MPI 5 and Intel MPI kill within
    about a second."""
    python, extra = mpi_under_test(variable, mpirun)
    proc, err = _stopped_on_two_hosts(cluster, tmp_path, [python, STOP, str(tmp_path), "4"], "--grace", "8", *extra,
                                      env=env)
    assert proc.returncode == 143, err
    assert "mpirt: stopped by SIGTERM" in err
    assert [(tmp_path / f"rank-{r}.done").exists() for r in range(2)] == [True, True], err
    assert [(tmp_path / f"rank-{r}.done").read_text() for r in range(2)] == ["w0", "w1"]


SHARDS = str(Path(__file__).parent / "ranks" / "shards.py")


@EACH_MPI
def test_a_rank_done_with_its_stop_does_not_cut_the_others_short(cluster, tmp_path, variable, mpirun, env):
    """Under `python -m mpirt`, a rank that exits 143 after its own stop handler is a stopped
    rank, not a failed one: no MPI_Abort, which would kill rank 0 in the middle of its 3 s shard."""
    python, extra = mpi_under_test(variable, mpirun)
    installed = tmp_path / "installed"  # mpirt for the ranks' Python, without the packages beside it
    installed.mkdir()
    (installed / "mpirt").symlink_to(Path(sysconfig.get_paths()["platlib"]) / "mpirt")
    proc, err = _stopped_on_two_hosts(cluster, tmp_path, [python, "-m", "mpirt", SHARDS, str(tmp_path), "3"],
                                      "--grace", "15", "--env", f"PYTHONPATH={installed}", *extra, env=env)
    assert [(tmp_path / f"rank-{r}.done").exists() for r in range(2)] == [True, True], err
    assert proc.returncode == 143 and "failed" not in err, err


def test_a_worker_told_to_stop_stops_its_ranks_before_itself(cluster, tmp_path):
    """A worker pod's SIGTERM (evicted, drained): `mpirt worker` is PID 1 there, and its exit
    would SIGKILL every process in the container. It gives its rank SIGTERM and its time, and
    exits only after the rank has ended; the job then ends, naming the rank."""
    c = cluster(2)
    c.start_worker("w0")
    c.start_worker("w1")
    proc = c.start_launch(["w0", "w1"], [sys.executable, STOP, str(tmp_path), "4"], "--grace", "20")
    worker = c.procs["w1"]
    try:
        _wait_for([tmp_path / "rank-0.started", tmp_path / "rank-1.started"], proc)
        worker.send_signal(signal.SIGTERM)
        deadline = time.time() + 60
        while worker.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        worker_ended = time.time()
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert worker.returncode == 0
    done = tmp_path / "rank-1.done"
    assert done.read_text() == "w1", "the rank on w1 never got its SIGTERM, or not the time to act on it"
    assert worker_ended >= done.stat().st_mtime, "the worker exited while its rank was still working"
    assert proc.returncode != 0
    assert "rank 1 exited with code 143 (128 + SIGTERM: it was told to stop" in err, err


def test_a_drained_worker_checkpoints_and_the_job_resumes_when_it_is_back(cluster, tmp_path):
    """The MLOps story of a node drain: w1's pod gets SIGTERM mid-training; its rank learns of
    it, every rank stops at the same step, rank 0 writes a checkpoint, and the job fails with
    code 143. With --max-restarts the launcher waits for w1 to be back (the operator makes a
    new pod under the same name) and runs the job again, which resumes from that step."""
    c = cluster(2)
    c.start_worker("w0")
    c.start_worker("w1")
    proc = c.start_launch(["w0", "w1"], ["mpirt", "train", "--out", str(tmp_path), "--steps", "1000000",
                                         "--checkpoint-every", "0", "--log-every", "1"],
                          "--max-restarts", "1", "--grace", "20")
    metrics = tmp_path / "metrics.jsonl"
    try:
        deadline = time.time() + 120
        while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 5):
            assert proc.poll() is None and time.time() < deadline, "training never got going"
            time.sleep(0.05)
        c.procs["w1"].send_signal(signal.SIGTERM)
        assert c.procs["w1"].wait(timeout=60) == 0
        c.start_worker("w1")  # the new pod
        resumed = None
        for line in proc.stdout:
            if "resuming from step " in line:
                resumed = int(line.split("resuming from step ")[1].split()[0])
                break
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "mpirt: attempt 1 of 2 failed; restarting the job" in err, err
    assert "exited with code 143 (128 + SIGTERM" in err
    step, state = checkpoint.load_latest(tmp_path / "checkpoints")
    assert resumed is not None and resumed >= 5, err
    assert step >= resumed  # the checkpoint written at the drain, then the one at the final stop


@EACH_MPI
def test_launcher_listed_as_a_worker_serves_ssh_itself(cluster, variable, mpirun, env):
    """runLauncherAsWorker: the launcher pod runs ranks too (under Hydra, told the launcher's
    address, it reaches itself over ssh like any host)."""
    python, extra = mpi_under_test(variable, mpirun)
    c = cluster(1)
    c.start_worker("w0")
    proc = c.launch(["launcher", "w0"], [python, WHERE], *extra, env=env)
    assert proc.returncode == 0, proc.stderr
    assert [r["host"] for r in ranks_report(proc.stdout)] == ["launcher", "w0"]


def test_job_under_a_uid_without_passwd_entry(cluster):
    uid = 43210
    probe = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", sys.executable, "-c",
                            "import launcher, mpi4py"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"this Python is not usable by another uid here: {probe.stderr.strip()[-200:]}")
    c = cluster(2, uid=uid)
    c.start_worker("w0")
    c.start_worker("w1")
    proc = c.launch(["w0", "w1"], [sys.executable, "-c", "import os, socket; print('UID', os.getuid(), "
                                   "socket.gethostname(), flush=True)"])
    assert proc.returncode == 0, proc.stderr
    seen = sorted(line.split("UID ", 1)[1] for line in proc.stdout.splitlines() if "UID " in line)
    assert seen == [f"{uid} w0", f"{uid} w1"]


def test_mpijob_pods_with_the_same_entrypoint_and_args(cluster, tmp_path):
    """mpi-operator's contract: one image, ENTRYPOINT mpirt, the same args on every replica;
    K_MPI_JOB_ROLE and the launcher's hostfile variable decide what each pod does."""
    c = cluster(2)
    hostfile = tmp_path / "operator-hostfile"
    hostfile.write_text("w0 slots=1\nw1 slots=1\n")
    args = ["mpirt", sys.executable, WHERE]
    common = {**os.environ, "MPIRT_SSH_DIR": str(c.secret)}
    for w in ("w0", "w1"):
        c.procs[w] = c.run_in(w, args, env={**common, "K_MPI_JOB_ROLE": "worker",
                                            "MPIRT_STATE_DIR": str(tmp_path / f"state-{w}")},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    launcher = c.run_in("launcher", args, env={**common, "K_MPI_JOB_ROLE": "launcher",
                                               "OMPI_MCA_orte_default_hostfile": str(hostfile),
                                               "MPIRT_STATE_DIR": str(tmp_path / "state-launcher")},
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = launcher.communicate(timeout=120)
    assert launcher.returncode == 0, err
    assert "role launcher (K_MPI_JOB_ROLE=launcher)" in err
    assert [r["host"] for r in ranks_report(out)] == ["w0", "w1"]


TORCHRUN_SCRIPT = str(Path(__file__).parents[1] / "mpi" / "ranks" / "torchrun_script.py")


@pytest.mark.parametrize("hosts,mpirun", [(["w0", "w1", "w2"], "mpirun"), (["launcher", "w0"], "mpiexec.mpich"),
                                          (["launcher"], "mpirun")],
                         ids=["open-mpi-4", "mpich-launcher-first", "launcher-only"])
def test_a_torchrun_script_runs_unchanged_across_hosts(cluster, hosts, mpirun):
    """MASTER_ADDR is rank 0's host as an address (no DNS on the workers): a worker's, or,
    with the launcher listed first, the launcher's on the route to the others (loopback when
    it is the only host); RANK and the rest come from Open MPI's variables or Hydra's. MPI
    never starts in the ranks."""
    found = shutil.which(mpirun)
    if not found:
        pytest.skip(f"{mpirun} is not installed")
    c = cluster(len([h for h in hosts if h != "launcher"]))
    for w in hosts:
        if w != "launcher":
            c.start_worker(w)
    proc = c.launch(hosts, [sys.executable, "-m", "mpirt", TORCHRUN_SCRIPT], "--mpirun", found, timeout=150)
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if '{"ranks"' in x)
    report = json.JSONDecoder().raw_decode(line[line.index("{"):])[0]
    n = len(hosts)
    assert [(r["host"], r["env"]) for r in report["ranks"]] == [
        (h, {"RANK": str(i), "WORLD_SIZE": str(n), "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"})
        for i, h in enumerate(hosts)]
    assert report["spread"] == 0.0 and all(r["from_reference"] < 1e-12 for r in report["ranks"])
    assert not any(r["mpi_started"] for r in report["ranks"])


HOROVOD_SCRIPT = str(Path(__file__).parents[1] / "mpi" / "ranks" / "horovod_script.py")


def test_a_horovod_script_across_hosts(cluster):
    """`import mpirt.horovod as hvd` on 2 hosts of 2 ranks: local and cross ranks as Horovod
    gives them, training equal to one process, every collective checked."""
    c = cluster(2)
    for w in ("w0", "w1"):
        c.start_worker(w)
    proc = c.launch(["w0", "w1"], [sys.executable, "-m", "mpirt", HOROVOD_SCRIPT], slots=2, timeout=240)
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if '{"ranks"' in x)
    report = json.JSONDecoder().raw_decode(line[line.index("{"):])[0]
    assert report["placement"] == [["w0", 0, 0], ["w0", 1, 0], ["w1", 0, 1], ["w1", 1, 1]]
    assert {"horovod script, backward_passes_per_step=2", "rank queries", "allgather of uneven first dimensions",
            "broadcast_parameters of different models"} <= set(report["checked"])
