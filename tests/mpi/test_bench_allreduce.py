"""mpirt-allreduce-perf end to end: real ranks, its JSON/CSV, the checker and the gates."""

import csv
import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import killed_outright
from launcher.detect.cpus import budget

pytestmark = pytest.mark.mpi

PERF = "mpirt-allreduce-perf"


def run_bench(mpiexec, np_, *args, check=True):
    return mpiexec(np_, [PERF, *args], check=check)


@pytest.mark.parametrize("np_", [1, 2, 4])
def test_json_rows_follow_the_nccl_tests_formulas(mpiexec, np_, tmp_path):
    out = tmp_path / "r.json"
    run_bench(mpiexec, np_, "-b", "8", "-e", "64K", "-f", "8", "-n", "5", "-w", "1", "-a", "all", "--memcpy",
              "-J", str(out))
    doc = json.loads(out.read_text())
    assert doc["schema"] == "mpirt.bench.allreduce/1"
    assert doc["world"]["size"] == np_
    assert doc["config"]["timeout_s"] is None  # -T not given
    cpus = budget(affinity=os.cpu_count()).count  # the launcher's count, which the core's must match
    assert (doc["world"]["cpus_per_node"], doc["world"]["oversubscribed"]) == (cpus, np_ > cpus)
    sizes = sorted({r["size"] for r in doc["results"]})
    assert sizes == [8, 64, 512, 4096, 32768]
    assert {(r["algo"], r["mode"]) for r in doc["results"]} == {
        (a, m) for a in ("mpi", "ring", "shm", "auto", "ordered", "hier") for m in ("out-of-place", "in-place")}
    for r in doc["results"]:
        t = r["time_us"]
        assert 0 < t["min"] <= t["avg"] <= t["max"]
        assert t["p50"] <= t["p99"]
        assert r["count"] == r["size"] // 4
        assert r["algbw_gbs"] == pytest.approx(r["size"] / (t["avg"] * 1e-6) / 1e9, rel=1e-3)
        assert r["busbw_gbs"] == pytest.approx(r["algbw_gbs"] * 2 * (np_ - 1) / np_, rel=1e-3, abs=1e-9)
        assert r["wrong"] == 0
        assert r["algo_used"] in ("mpi", "ring", "shm", "ordered", "hier")
    assert len(doc["memcpy"]) == len(sizes)
    assert doc["summary"]["passed"] is True


def default_shm_chunk(local_size: int) -> int:
    """`shm`'s rounds where MPIRT_SHM_CHUNK is unset: two rounds' staging in half the L3 that
    sysfs gives, from 64 KiB to 1 MiB (8 MiB of cache assumed where sysfs does not say)."""
    cache = 8 << 20
    for d in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level, size = (d / "level").read_text().strip(), (d / "size").read_text().strip()
        except OSError:
            continue
        if level == "3" and size.endswith("K"):
            cache = int(size[:-1]) << 10
            break
    return min(max(cache // (4 * (local_size + 1)), 64 << 10), 1 << 20) // 64 * 64


def test_header_and_json_say_how_shm_and_the_ring_run(mpiexec, tmp_path):
    """The settings change the speed: a result must carry them (here set, and default; `shm`
    rounds are whole cache lines)."""
    out = tmp_path / "r.json"
    env = {"MPIRT_RING_SEGMENT_BYTES": "8192", "MPIRT_RING_WAIT_US": "20", "MPIRT_AUTO_RING_MIN_BYTES": "65536",
           "MPIRT_SHM_CHUNK": "65636"}
    proc = mpiexec(2, [PERF, "-b", "64K", "-e", "64K", "-a", "ring,shm", "-n", "3", "-J", str(out)], env=env)
    assert ("# shm: 65600 B rounds | ring: 8192 B segments, waits in 20 us sleeps | auto: ring across nodes from "
            "65536 B") in proc.stdout
    assert json.loads(out.read_text())["settings"] == {"shm_chunk_bytes": 65600, "ring_segment_bytes": 8192,
                                                       "ring_wait_us": 20, "auto_ring_min_bytes": 65536}
    unset = {k: "" for k in env}
    proc = mpiexec(2, [PERF, "-b", "64K", "-e", "64K", "-a", "ring,shm", "-n", "3", "-J", str(out)], env=unset)
    chunk = default_shm_chunk(2)
    assert f"# shm: {chunk} B rounds | ring: 262144 B segments, polls | auto: ring across nodes never" in proc.stdout
    assert json.loads(out.read_text())["settings"] == {"shm_chunk_bytes": chunk, "ring_segment_bytes": 262144,
                                                       "ring_wait_us": 0, "auto_ring_min_bytes": None}


@pytest.mark.parametrize("stores", ["auto", "cached", "streaming"])
def test_json_says_how_shm_staged(mpiexec, tmp_path, stores):
    """From 256 KiB `shm` measures which stores stage faster and keeps trying the other every
    32nd call of a size, so by default a row mixes both; forced, it holds one; below 256 KiB it caches;
    an algorithm that never runs `shm` says nothing."""
    out = tmp_path / "r.json"
    mpiexec(2, [PERF, "-b", "64K", "-e", "1M", "-f", "16", "-a", "shm,ring", "-m", "out-of-place", "-n", "40",
                "-J", str(out)], env={"MPIRT_SHM_STORES": stores})
    rows = {(r["algo"], r["size"]): r["shm_streamed"] for r in json.loads(out.read_text())["results"]}
    share = rows[("shm", 1 << 20)]
    assert {"auto": 0 < share < 1, "cached": share == 0, "streaming": share == 1}[stores], share
    assert rows[("shm", 64 << 10)] == (1 if stores == "streaming" else 0)
    assert rows[("ring", 1 << 20)] is None


@pytest.mark.parametrize("np_", [1, 2, 4])
def test_shared_buffers_are_reduced_without_staging(mpiexec, tmp_path, np_):
    """-R: buffers the local ranks share (nccl-tests' registered buffers). Every timed `shm`
    call then reads the others' inputs and writes their outputs directly, as do `ordered` and
    `auto` where they run `shm` on one node; the checked values are right for counts the ranks
    do not divide (1, 7, 49 ... elements); the other algorithms take the same memory as any."""
    out = tmp_path / "r.json"
    for dtype, op in [("float32", "sum"), ("bfloat16", "avg"), ("int32", "max")]:
        proc = run_bench(mpiexec, np_, "-R", "-b", "4", "-e", "300K", "-f", "7", "-n", "3", "-w", "1", "-a", "all",
                         "-c", "2", "-d", dtype, "-o", op, "-J", str(out))
        assert "# buffers: shared by the ranks of a node (-R)" in proc.stdout
        doc = json.loads(out.read_text())
        assert doc["config"]["shared_buffers"] is True
        for r in doc["results"]:
            assert r["wrong"] == 0, r
            through_shm = r["algo_used"] == "shm" or (r["algo_used"] == "ordered" and np_ > 1)  # 1 rank: a copy
            assert r["shm_direct"] == (1 if through_shm else None), r
    plain = tmp_path / "plain.json"
    run_bench(mpiexec, np_, "-b", "4K", "-e", "4K", "-a", "shm", "-n", "3", "-J", str(plain))
    doc = json.loads(plain.read_text())
    assert doc["config"]["shared_buffers"] is False and all(r["shm_direct"] == 0 for r in doc["results"])


@pytest.mark.parametrize("np_", [1, 2, 4])
def test_it_says_how_far_apart_the_ranks_cores_are(mpiexec, tmp_path, np_):
    """`shm` depends on where the ranks run (sharing an L3 or not): the harness times a cache
    line's round trip between local ranks 0 and 1 before and after the sweep; with one rank,
    or more ranks than cores, there is nothing to time."""
    out = tmp_path / "r.json"
    proc = mpiexec(np_, [PERF, "-b", "4K", "-e", "4K", "-a", "shm", "-n", "5", "-J", str(out)])
    trips = json.loads(out.read_text())["core_round_trip_ns"]
    if np_ == 2:
        assert len(trips) == 2 and all(0 < t < 1e6 for t in trips), trips
        assert f"a cache line's round trip {trips[0]:.0f} ns before, {trips[1]:.0f} ns after" in proc.stdout
    else:
        assert trips is None and "Core to core" not in proc.stdout


def test_csv_has_one_row_per_measurement(mpiexec, tmp_path):
    out = tmp_path / "r.csv"
    run_bench(mpiexec, 2, "-b", "1K", "-e", "4K", "-a", "shm,mpi", "-m", "in-place", "-d", "bfloat16",
              "-o", "max", "--csv", str(out))
    rows = list(csv.DictReader(out.open()))
    assert [(r["size"], r["algo"], r["mode"], r["dtype"], r["op"]) for r in rows] == [
        (s, a, "in-place", "bfloat16", "max") for s in ("1024", "2048", "4096") for a in ("shm", "mpi")]
    assert all(r["wrong"] == "0" for r in rows)


@pytest.mark.parametrize("dtype,op", [("float16", "avg"), ("int32", "min"), ("float64", "sum")])
def test_check_passes_for_other_types(mpiexec, dtype, op):
    proc = run_bench(mpiexec, 4, "-b", "8", "-e", "1M", "-f", "16", "-n", "2", "-w", "1", "-d", dtype, "-o", op)
    assert "# Out of bounds values : 0 OK" in proc.stdout


def test_a_corrupted_result_is_counted_wrong_and_fails_the_run(mpiexec, tmp_path):
    out = tmp_path / "r.json"
    proc = run_bench(mpiexec, 2, "-b", "64", "-e", "64", "-a", "shm", "-m", "out-of-place", "--corrupt",
                     "-J", str(out), check=False)
    assert proc.returncode != 0
    doc = json.loads(out.read_text())
    assert doc["results"][0]["wrong"] == 1  # one element on rank 0, one check iteration
    assert doc["summary"]["passed"] is False
    assert "FAILED" in proc.stdout


def test_min_busbw_gate(mpiexec, tmp_path):
    out = tmp_path / "r.json"
    proc = run_bench(mpiexec, 2, "-b", "1K", "-e", "1K", "-a", "mpi", "--min-busbw", "100000", "-J", str(out),
                     check=False)
    assert proc.returncode != 0
    assert "below --min-busbw" in json.loads(out.read_text())["summary"]["failures"][0]
    ok = run_bench(mpiexec, 2, "-b", "1K", "-e", "1K", "-a", "mpi", "--min-busbw", "0.000001")
    assert ok.returncode == 0


def test_timeout_ends_a_run_that_a_stopped_rank_holds_up_and_names_the_test(mpiexec, tmp_path):
    """-T (nccl-tests' option): rank 1 stopped mid-test (SIGSTOP, as a rank starved or a link
    stuck) leaves rank 0 waiting; its watchdog ends it with exit 124 and names the test, and
    mpirun ends the job, instead of a hang that says nothing."""
    import signal
    import time
    import uuid

    mark = uuid.uuid4().hex
    cmd = mpiexec.argv(2) + [PERF, "-b", "8", "-e", "8", "-a", "mpi", "-m", "out-of-place", "-n", "10000000",
                             "-w", "0", "-c", "0", "-T", "3"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "MPIRT_TEST_MARK": mark})
    stopped = None
    try:
        assert "# Collective test starting" in proc.stdout.readline() + proc.stdout.readline()
        stopped = rank_pid(mark, 1)
        os.kill(stopped, signal.SIGSTOP)
        begun = time.monotonic()
        rc = proc.wait(timeout=60)
        waited = time.monotonic() - begun
    finally:
        proc.kill()
        if stopped and Path(f"/proc/{stopped}").exists():
            os.kill(stopped, signal.SIGKILL)
    err = proc.stderr.read()
    assert rc == 124, err
    assert "rank 0 on " in err and ("stuck for 3 s (--timeout) in the allreduce of 8 bytes (float32, sum) by algo "
                                    "mpi, out of place: a rank stopped") in err, err
    assert waited < 30, waited


def rank_pid(mark: str, rank: int, timeout: float = 30) -> int:
    """The pid of ``rank`` of the job whose environment carries MPIRT_TEST_MARK=``mark``."""
    import time

    want = {f"MPIRT_TEST_MARK={mark}".encode(), *(f"{name}={rank}".encode()
                                                  for name in ("OMPI_COMM_WORLD_RANK", "PMI_RANK"))}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for d in Path("/proc").iterdir():
            try:
                env = set((d / "environ").read_bytes().split(b"\0"))
                exe = os.readlink(d / "exe")
            except (OSError, ValueError):
                continue
            if exe.endswith(PERF) and f"MPIRT_TEST_MARK={mark}".encode() in env and len(want & env) >= 2:
                return int(d.name)
        time.sleep(0.1)
    raise AssertionError(f"no rank {rank} of the job found")


def test_a_cpu_quota_above_the_ranks_cgroup_makes_the_node_oversubscribed(mpiexec, cpu_cgroup, tmp_path):
    """The core counts a node's CPUs as the launcher does (launcher.detect.cpus): those online,
    capped by the smallest quota up the cgroup tree, here a parent's above the ranks' own
    cgroup (a pod's limit above its container's). Two ranks on half a CPU are oversubscribed
    (the core's waits yield instead of spinning), and the benchmark says so."""
    import sys

    cg = cpu_cgroup(0.5)
    out = tmp_path / "r.json"
    proc = subprocess.run(cg.wrap(mpiexec.argv(2) + [PERF, "-b", "8", "-e", "8", "-a", "mpi", "-n", "5", "-w", "1",
                                                     "-T", "60", "-J", str(out)]), capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    world = doc["world"]
    assert doc["config"]["timeout_s"] == 60  # a run that -T watched and let finish
    assert world["cpus_per_node"] == 1 and world["oversubscribed"] is True, world
    assert "2 rank(s) and 1 CPU(s) on this node (oversubscribed: the core's waits yield)" in proc.stdout
    launcher = subprocess.run(cg.wrap([sys.executable, "-c", "import os; from launcher.detect import cpus; "
                                       "print(cpus.budget(affinity=os.cpu_count()).count)"]),
                              capture_output=True, text=True, timeout=60)
    assert launcher.stdout.strip() == "1", launcher.stderr


def test_only_rank_0_prints(mpiexec):
    proc = run_bench(mpiexec, 4, "-b", "8", "-e", "8", "-a", "mpi")
    assert proc.stdout.count("# Collective test starting") == 1


@pytest.mark.parametrize("args,message", [
    (["-b", "8X"], "unknown size suffix 'X'"),
    (["-b", "1M", "-e", "1K"], "is larger than -e/--maxbytes"),
    (["-b", "6", "-e", "6"], "not a multiple of the float32 element size"),
    (["-d", "complex64"], "unknown type; use float32"),
    (["-o", "prod"], "unknown op; use sum, min, max or avg"),
    (["-a", "tree"], "unknown algorithm; use mpi, ring, shm, auto, ordered, hier or all"),
    (["-D", "cuda"], "; use --device cpu"),
    (["-R", "-D", "cuda"], "-R/--shared-buffers: shared buffers are host memory; use --device cpu"),
    (["-f", "1"], "must be greater than 1"),
    (["--bogus"], "unknown option --bogus"),
    (["--check"], "--check needs a value: -c, --check N check N results against locally computed values [1]"),
    (["-b"], "-b needs a value: -b, --minbytes SIZE smallest buffer per rank"),
    (["-J", "/nonexistent/r.json"], "/nonexistent/r.json: cannot write into /nonexistent (No such file or directory); "
                                    "give a file in an existing, writable directory"),
    (["--csv", "/etc/hostname/r.csv"], "/etc/hostname/r.csv: cannot write into /etc/hostname (Not a directory)"),
])
def test_bad_input_is_one_line_and_exit_2(args, message):
    # Run as a single rank (MPI singleton): what a user typing the command sees.
    proc = subprocess.run([PERF, *args], capture_output=True, text=True, timeout=60)
    if args == ["-D", "cuda"] and proc.returncode == 0:
        pytest.skip("a CUDA device is present, so --device cuda is valid here")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mpirt-allreduce-perf: error: ")
    assert message in lines[0]


def test_a_result_file_rank_0_cannot_write_stops_every_rank_before_the_run(mpiexec):
    """Rank 0 writes the files: its check goes for all ranks, said once, before any measurement
    (it used to come after the whole sweep)."""
    proc = run_bench(mpiexec, 2, "-b", "8", "-e", "8", "-J", "/nonexistent/r.json", check=False)
    assert proc.returncode != 0
    assert proc.stderr.count("/nonexistent/r.json: cannot write into /nonexistent") == 1, proc.stderr
    assert "# Collective test starting" not in proc.stdout


def test_cli_wrapper_starts_local_ranks(tmp_path):
    out = tmp_path / "r.json"
    proc = subprocess.run(["mpirt", "bench", "allreduce", "--np", "2", "-b", "4K", "-e", "4K", "-a", "auto",
                           "-J", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["world"]["size"] == 2



def test_cli_wrapper_killed_outright_ends_its_ranks():
    """`mpirt bench allreduce --np` runs mpirun as `mpirt launch` does: killed outright, it takes
    the benchmark's ranks along instead of leaving them measuring unwatched."""
    argv = ["mpirt", "bench", "allreduce", "--np", "2", "-b", "64M", "-e", "64M", "-n", "100000", "-a", "ring"]
    assert not killed_outright(argv, up=4), "the benchmark's ranks outlived mpirt bench allreduce"

def test_cli_wrapper_passes_bad_input_through():
    proc = subprocess.run(["mpirt", "bench", "allreduce", "-e", "12Q"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "unknown size suffix 'Q'" in proc.stderr


@pytest.mark.parametrize("args,message", [
    (["-b", "1", "-d", "float16"], "smaller than one float16 element (2 bytes); use -b 2 or more"),
    (["-a", "tree"], "unknown algorithm"),
    (["-J", "/nonexistent/r.json"], "/nonexistent/r.json: cannot write into /nonexistent"),
])
def test_bad_input_with_np_is_said_once_before_any_rank_starts(args, message):
    """Checked by one process without MPI (--check-args) before mpirun starts ranks that would
    each fail, followed by mpirun's report of a failed job."""
    proc = subprocess.run(["mpirt", "bench", "allreduce", "--np", "4", *args], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mpirt-allreduce-perf: error: "), proc.stderr
    assert message in lines[0] and not proc.stdout
