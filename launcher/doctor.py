"""`mpirt doctor`: every check a job depends on, each pass / warn / fail with what to do.

Runs without MPI in this process: what needs MPI (mpi4py's library, the compiled core) is
asked of a child Python, the way a rank would see it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from launcher import guard, mpi
from launcher.detect import memcg
from launcher.detect.rdma import memlock_ok

SCHEMA = "mpirt.doctor/1"
FAMILY_WORDS = {"openmpi": "Open MPI", "mpich": "MPICH", "intel": "Intel(R) MPI"}


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # pass | warn | fail
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class DoctorConfig:
    hostfile: str | None = None
    ssh_dir: str = "/root/.ssh"
    ssh_port: int = 2222
    wait_s: float = 10.0
    root: str = "/"
    mpirun: str | None = None


_RANK_VIEW = (
    "import json\n"
    "from mpi4py import MPI\n"
    "out = {'library': MPI.Get_library_version().replace(chr(0), '').strip().splitlines()[0]}\n"
    "try:\n"
    "    from mpirt.comm import core\n"
    "    info = core().info()\n"
    "    out.update(core='ok', cuda_aware=bool(info['cuda_aware']), cuda_built=bool(info['cuda_built']))\n"
    "except Exception as e:\n"
    "    out['core'] = f'{type(e).__name__}: {e}'\n"
    "try:\n"
    "    import torch, torch.distributed as dist\n"
    "    nccl = dist.is_available() and dist.is_nccl_available() and torch.cuda.is_available()\n"
    "    out['torch'] = {'version': torch.__version__, 'gpus': torch.cuda.device_count() if torch.cuda.is_available()"
    " else 0, 'nccl': '.'.join(map(str, torch.cuda.nccl.version())) if nccl else None}\n"
    "except Exception as e:\n"
    "    out['torch'] = {'error': f'{type(e).__name__}: {e}'}\n"
    "print(json.dumps(out))\n"
)


def _rank_view() -> dict:
    # -P: the installed package, never a source tree in the current directory
    proc = subprocess.run([sys.executable, "-P", "-c", _RANK_VIEW], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_checks(cfg: DoctorConfig) -> list[Check]:
    from launcher.detect.gpu import device_nodes
    from launcher.detect.gpu import local as gpu_local
    from launcher.detect.probe import probe

    checks: list[Check] = []
    impl = None
    try:
        impl = mpi.detect(mpi.find_mpirun(cfg.mpirun))
        checks.append(Check("mpi", "pass", f"{impl.label} at {impl.mpirun}"))
        checks += [Check("mpi known fault", "warn", text, fix) for text, fix in mpi.known_faults(impl)]
    except mpi.MpiError as e:
        checks.append(Check("mpi", "fail", str(e), "install an MPI (apt-get install openmpi-bin) or set MPIRT_MPIRUN"))
    view = _rank_view()
    if "error" in view:
        checks.append(Check("mpi4py", "fail", f"a rank cannot load MPI: {view['error']}",
                            "pip install mpi4py in this environment, built for the MPI above"))
    else:
        same = impl is None or FAMILY_WORDS[impl.family] in view["library"]
        checks.append(Check("mpi4py", "pass" if same else "fail", f"loads {view['library']}",
                            "" if same else "mpi4py must load the MPI that mpirun belongs to: reinstall mpi4py, or "
                            "point MPI4PY_LIBMPI at that MPI's libmpi"))
        core = view.get("core")
        checks.append(Check("core", "pass" if core == "ok" else "fail",
                            "compiled allreduce core loads and matches mpi4py's MPI; MPI CUDA-aware: "
                            f"{'yes' if view.get('cuda_aware') else 'no'}" if core == "ok" else core,
                            "" if core == "ok" else "pip install --force-reinstall --no-deps . (rebuild the core)"))
    gpus = gpu_local()
    checks += _build_checks(impl, bool(gpus.gpus))
    checks.append(torch_check(view.get("torch"), len(gpus.gpus)))
    checks += python_checks(os.environ.get("PATH"))
    checks.append(tmp_check(os.environ))
    if gpus.gpus:
        checks.append(Check("gpus", "pass", f"{len(gpus.gpus)} x {gpus.gpus[0].name}; P2P "
                            f"{'ok' if gpus.p2p_ok else 'not available (NCCL P2P/SHM get disabled)'}"
                            f"{'; NVLink' if gpus.nvlink_any else ''}{'; MIG' if gpus.mig else ''}"))
        aware = view.get("cuda_aware")
        checks.append(Check("cuda-aware mpi", "pass" if aware else "warn",
                            "MPI takes device pointers" if aware else
                            "MPI is not CUDA-aware: device buffers are staged through pinned host memory",
                            "" if aware else "use an MPI built with CUDA (UCX with cuda) for GPU buffers"))
    else:
        devs = device_nodes(Path(cfg.root))
        checks.append(Check("gpus", "warn" if devs else "pass",
                            f"no GPUs ({gpus.error or 'none visible'})" + (f" but {devs} /dev/nvidia* devices"
                                                                            if devs else ""),
                            "install the driver's user-space libraries (libnvidia-ml) in the image" if devs else ""))
    try:
        found = probe(Path(cfg.root))
        status = "warn" if found.notes else "pass"
        checks.append(Check("network", status, f"tier {found.tier}, interface {found.iface or 'unknown'}, "
                            f"RDMA ports {', '.join(found.hcas) or 'none'}" + "".join(f"; {n}" for n in found.notes)))
        checks.append(memlock_check(found.memlock, any(p["kind"] != "none" or "ACTIVE" in p["state"]
                                                       for p in found.ports)))
        crowded = found.gpus > found.cpus  # a rank per GPU, the default, outnumbers the CPUs
        checks.append(Check("cpus", "warn" if crowded else "pass",
                            f"{found.cpus} for the ranks here ({found.cpus_why})" +
                            (f", fewer than the {found.gpus} GPUs: a rank per GPU would take turns on them"
                             if crowded else ""),
                            "raise the pod's resources.limits.cpu (a rank's data loading and launches need a CPU "
                            "each)" if crowded else ""))
        shm_mib = found.shm_bytes >> 20
        checks.append(Check("/dev/shm", "pass" if found.shm_bytes >= 1 << 30 else "warn", f"{shm_mib} MiB",
                            "" if found.shm_bytes >= 1 << 30 else "give the pod a larger /dev/shm (an emptyDir with "
                            "medium: Memory) — NCCL, the shm allreduce and data_parallel's shared buckets "
                            "(twice a node's gradient bytes) use it"))
    except ValueError as e:
        checks.append(Check("network", "fail", str(e)))
    checks.append(_memory_check(Path(cfg.root)))
    checks += _ssh_checks(cfg)
    return checks


def torch_check(seen: dict | None, gpus: int) -> Check:
    """What torch sees on this host (from a rank's view) against the GPUs NVML found: a CPU
    build of torch in a GPU image would train every rank on the CPU without a word."""
    if not seen or "error" in seen:
        return Check("torch", "warn", f"torch does not load ({(seen or {}).get('error', 'not reported')}): the "
                     "training runtime needs it", "pip install torch (a CUDA build on GPU hosts)")
    version, visible, nccl = seen["version"], seen["gpus"], seen["nccl"]
    if gpus and not visible:
        return Check("torch", "fail", f"torch {version} sees no GPU where this host has {gpus}: every rank would "
                     "train on the CPU", "install a CUDA build of torch matching the driver (the +cpu wheels have no "
                     "CUDA), or check CUDA_VISIBLE_DEVICES")
    seen_gpus = f"torch {version}, {visible} GPU{'s' if visible != 1 else ''} visible"
    if visible and nccl:
        return Check("torch", "pass", f"{seen_gpus}; data_parallel reduces a model on GPUs over NCCL {nccl} with up "
                     f"to {visible} rank{'s' if visible != 1 else ''} here (more share GPUs, which NCCL refuses: the "
                     "core then stages through host memory)")
    return Check("torch", "pass", f"{seen_gpus}; data_parallel reduces with the compiled core "
                 f"(with algo='torch': over gloo{'; no NCCL in this torch' if visible else ''})")


def python_checks(path: str | None) -> list[Check]:
    """The `python3` and `python` a command names, as the ranks find them (`mpirt launch` keeps
    this PATH): whether a script given to them runs under ``python -m mpirt``. Without mpirt it
    runs as given, and a rank that raises neither stops the others at once nor leaves the record
    the root cause is read from."""
    checks = []
    for name in ("python3", "python"):
        found = shutil.which(name, path=path)
        if found is None:
            continue
        if guard.has_mpirt(name, path):
            checks.append(Check(name, "pass", f"{found}: `mpirt launch -- {name} train.py` runs the script under "
                                "python -m mpirt"))
        else:
            checks.append(Check(name, "warn", f"{found} has no mpirt: `mpirt launch -- {name} train.py` runs the "
                                "script as given, so a rank that raises does not stop the others at once and leaves "
                                "no record for the root cause",
                                f"install mpirt into that Python, or put {os.path.dirname(sys.executable)} first on "
                                "PATH"))
    return checks


def memlock_check(limit: int, rdma: bool) -> Check:
    """The locked-memory limit (bytes, < 0 unlimited) matters to RDMA only, which registers
    memory: too small there fails (NCCL and UCX fall back or abort); without RDMA ports it is
    no concern (TCP, shared memory and CUDA's pinned buffers do not count against it)."""
    if memlock_ok(limit):
        return Check("memlock", "pass", f"locked-memory limit {'unlimited' if limit < 0 else _mib(limit)}")
    if not rdma:
        return Check("memlock", "pass", f"locked-memory limit {_mib(limit)}: enough without RDMA ports")
    return Check("memlock", "fail", f"locked-memory limit {_mib(limit)}: too small for the RDMA ports here",
                 "run the pod with an unlimited memlock limit (`ulimit -l unlimited`; a container runtime's "
                 "default ulimits, e.g. containerd's LimitMEMLOCK=infinity, or the IPC_LOCK capability)")


def _mib(size: int) -> str:
    return f"{size >> 20} MiB" if size >= 1 << 20 else f"{size >> 10} KiB"


def tmp_check(env) -> Check:
    """Where Open MPI keeps its session directory (PMIx too): TMPDIR, TEMP or TMP, else /tmp.
    Where it cannot make one (a pod with readOnlyRootFilesystem and no /tmp mounted), mpirun
    cannot start."""
    name = next((n for n in ("TMPDIR", "TEMP", "TMP") if env.get(n)), None)
    base = env[name] if name else "/tmp"
    where = f"{name}={base}" if name else "/tmp"
    try:
        os.rmdir(tempfile.mkdtemp(prefix="mpirt-doctor-", dir=base))
    except OSError as e:
        return Check("tmp", "fail", f"{where}: no directory can be made there ({e.strerror}), and Open MPI keeps its "
                     "session directory there", mpi.TMP_FIX)
    return Check("tmp", "pass", f"{where} is writable (Open MPI's session directory)")


def _memory_check(root: Path) -> Check:
    """The container's memory limit, and whether the OOM killer has already struck in it."""
    counter = memcg.read(root)
    if counter is None:
        return Check("memory", "pass", "no memory cgroup to read (no limit known, no OOM counter)")
    cap = memcg.limit(counter)
    where = f"limit {cap / (1 << 30):.1f} GiB" if cap else "no limit"
    if counter.kills:
        return Check("memory", "warn", f"{where}; the OOM killer has killed {counter.kills} process"
                     f"{'es' if counter.kills > 1 else ''} in this cgroup ({counter.path})",
                     "raise the pod's resources.limits.memory or use less per rank (a smaller batch or model)")
    return Check("memory", "pass", f"{where}, no OOM kills so far ({counter.path})")


def _ssh_checks(cfg: DoctorConfig) -> list[Check]:
    from launcher.ssh import SshSetupError, find_key, prepare

    needed = bool(cfg.hostfile)
    try:
        key = find_key(Path(cfg.ssh_dir))
        key.read_bytes()
    except (SshSetupError, OSError) as e:
        msg = str(e) if isinstance(e, SshSetupError) else f"cannot read the key in {cfg.ssh_dir}: {e}"
        if needed:
            return [Check("ssh key", "fail", msg, "mount the job's ssh Secret or point --ssh-dir at it")]
        return [Check("ssh key", "pass", f"no ssh key in {cfg.ssh_dir} (only jobs across hosts need one)")]
    checks = [Check("ssh key", "pass", f"{key} is readable (a private 0600 copy is used)")]
    if not cfg.hostfile:
        return checks
    from launcher.hosts import HostError
    from launcher.launch import read_hostfile
    from launcher.ready import release, report, wait_ready
    from launcher.sshd import nss_wrapper_env

    try:
        hosts = read_hostfile(cfg.hostfile, "--hostfile", 1)
    except HostError as e:
        return checks + [Check("hosts", "fail", str(e))]
    from launcher import fleet

    try:
        scratch = tempfile.TemporaryDirectory(prefix="mpirt-doctor-")
    except OSError as e:  # no usable temporary directory
        return checks + [Check("hosts", "fail", f"no directory for the ssh files ({e.strerror})", mpi.TMP_FIX)]
    with scratch as state:
        setup = prepare(Path(cfg.ssh_dir), Path(state), cfg.ssh_port)
        env = {**os.environ, **nss_wrapper_env(Path(state))}
        names = [h.name for h in hosts]
        try:
            results = wait_ready(names, setup, cfg.wait_s, command=fleet.probe_command(None), env=env)
        finally:
            release(names, setup, env)
    probes = {r.host: fleet.from_output(r.host, r.output) for r in results if r.stage == "ready"}
    for r in results:
        p = probes.get(r.host)
        seen = ("" if p is None else f"; tier {p.probe.tier}, interface {p.probe.iface or 'unknown'}" if p.probe
                else f"; no probe ({p.error})")
        checks.append(Check(f"host {r.host}", "pass" if r.stage == "ready" else "fail",
                            f"ready in {r.seconds:.2f} s{seen}" if r.stage == "ready" else f"{r.stage}: {r.detail}",
                            "" if r.stage == "ready" else report([r], cfg.wait_s).splitlines()[-1].strip()))
    if probes:
        plan = fleet.combine(list(probes.values()))
        checks.append(Check("network (all hosts)", "warn" if plan.notes else "pass",
                            f"tier {plan.tier}, interface {plan.iface or 'left to the libraries'}"
                            + "".join(f"; {n}" for n in plan.notes),
                            "a host below the others' tier slows every collective: check its RDMA devices with "
                            "mpirt env --explain there" if plan.notes else ""))
    return checks


def _build_checks(impl: mpi.MpiImpl | None, gpus: bool) -> list[Check]:
    """What this install is (image builders check it): the core's build options, and UCX: an Open MPI
    built with CUDA over a UCX without it breaks on device buffers (a fail where GPUs are visible)."""
    from mpirt import build_info

    b = build_info()
    cuda = f"CUDA built (sm {b['cuda_architectures']})" if b["cuda_built"] else "CPU only (no nvcc at build)"
    checks = [Check("build", "pass", f"commit {b['git_commit']}, {cuda}, {b['compiler'] or 'compiler unknown'}, "
                                     f"MPI from {b['mpi_source']} {b['mpi_library']}".rstrip())]
    ucx = shutil.which("ucx_info")
    if not ucx:
        checks.append(Check("ucx", "pass", "ucx_info not installed: MPI uses its own TCP and shared-memory transports"))
    else:
        version = _output([ucx, "-v"])
        line = next((x.strip("# ").strip() for x in version.splitlines() if "version" in x.lower()), "version unknown")
        ucx_cuda = ucx_has_cuda(_output([ucx, "-b"]))
        checks.append(Check("ucx", "pass", f"{line}, {'with' if ucx_cuda else 'without'} CUDA transports ({ucx})"))
    return checks + _cuda_over_ucx(impl, gpus)


def _cuda_over_ucx(impl: mpi.MpiImpl | None, gpus: bool) -> list[Check]:
    """An Open MPI built with CUDA hands device pointers to UCX: the UCX its pml loads here must
    carry the cuda transports (a module beside libucs), or device buffers are read as host memory."""
    ompi_info = Path(impl.mpirun).with_name("ompi_info") if impl and impl.family == "openmpi" else None
    if not ompi_info or not ompi_info.exists() or not ompi_has_cuda(_output([str(ompi_info), "--parsable", "--all"])):
        return []
    paths = [_output([str(ompi_info), "--path", where, "--parsable"]).strip().rpartition(":")[2]
             for where in ("pkglibdir", "libdir")]
    pml = next((f for f in (Path(paths[0]) / "mca_pml_ucx.so", Path(paths[1]) / "libmpi.so") if f.exists()), None)
    ucx_dir = libucs_dir(_output(["ldd", str(pml)])) if pml else None
    if ucx_dir is None:
        return []  # no pml ucx here (none built, or it cannot load UCX): ob1 carries device buffers
    if any((ucx_dir / "ucx").glob("libuct_cuda.so*")):
        return [Check("cuda over ucx", "pass", f"{impl.label} is built with CUDA and loads UCX from {ucx_dir}, "
                                                "which has its cuda transports")]
    return [Check("cuda over ucx", "fail" if gpus else "warn",
                  f"{impl.label} is built with CUDA but loads UCX from {ucx_dir}, which has no cuda transports "
                  f"({ucx_dir / 'ucx'}/libuct_cuda.so): device buffers it hands to UCX are read as host memory "
                  "(a crash or wrong values)",
                  "put a UCX built --with-cuda first on the library path (the image's MPI=openmpi-ucx flavour on a "
                  "CUDA devel base builds one), or run with OMPI_MCA_pml=ob1")]


def libucs_dir(ldd: str) -> Path | None:
    """From `ldd` of a library: the directory of the libucs it loads (UCX's modules are in its ucx/)."""
    for line in ldd.splitlines():
        name, _, where = line.strip().partition(" => ")
        if name.startswith("libucs.so") and where.startswith("/"):
            return Path(where.split(" (")[0]).parent
    return None


def _output(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def ucx_has_cuda(build_config: str) -> bool:
    """From `ucx_info -b` (the build's config.h): were UCX's cuda transports compiled?"""
    return any(line.split()[:3] == ["#define", "HAVE_CUDA", "1"] for line in build_config.splitlines())


def ompi_has_cuda(parsable: str) -> bool:
    """From `ompi_info --parsable --all`: was Open MPI built with CUDA?"""
    return any(line.endswith("_built_with_cuda_support:value:true") for line in parsable.splitlines())


def render(checks: list[Check]) -> str:
    mark = {"pass": "ok  ", "warn": "WARN", "fail": "FAIL"}
    lines = [f"{mark[c.status]}  {c.name}: {c.detail}" + (f"\n        fix: {c.fix}" if c.fix else "") for c in checks]
    return "\n".join(lines)


def run(cfg: DoctorConfig, as_json: bool) -> int:
    checks = run_checks(cfg)
    ok = all(c.status != "fail" for c in checks)
    if as_json:
        print(json.dumps({"schema": SCHEMA, "ok": ok, "checks": [asdict(c) for c in checks]}, indent=1))
    else:
        print(render(checks))
    return 0 if ok else 1
