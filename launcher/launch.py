"""`mpirt launch`: start a command on MPI ranks and report how it ended.

Two roles. Local: N ranks on this machine, no ssh (no hosts given and no cluster detected).
Launcher: hosts from --hostfile / -H or from the pod (mpi-operator, Trainer V2, Volcano;
launcher.roles), then: our own hostfile in the MPI's dialect, the ssh setup from the mounted
key, a readiness wait for every host under one deadline, and mpirun from the table. Every
rank gets ``MPIRT_ERROR_DIR`` so a failing rank's record reaches the root-cause report, and
``MPIRT_JOB_ID`` so a stop can signal the job's ranks on every host (launcher.ranks). After a
failure each host's OOM
counter is read again (launcher.postmortem); the outcome also goes to the pod's termination
message (launcher.termination).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

from launcher import fleet
from launcher import hosts as hostlib
from launcher import guard, limits, mpi, postmortem, ranks, sidecar, termination, where
from launcher.detect import memcg
from launcher.envdefaults import load_profiles, resolve
from launcher.detect.gpu import device_nodes
from launcher.detect.netif import bootstrap_interface
from launcher.roles import detect as detect_role
from launcher.relay import parse_ranks
from launcher.run import report, supervise
from mpirt import divert, stacks


@dataclass(frozen=True)
class LaunchConfig:
    command: tuple[str, ...]
    np: int | None = None  # default: 1 locally, every slot on remote hosts
    mpirun: str | None = None
    dry_run: bool = False
    grace_s: float = 10.0
    tag_output: bool = True
    hostfile: str | None = None
    hosts: str | None = None  # -H h1:2,h2
    slots: str = "auto"
    ssh_dir: str = "/root/.ssh"
    ssh_port: int = 2222
    wait_s: float = 300.0
    state_dir: str = ""
    log_dir: str | None = None
    profile: str | None = None
    env_defaults: bool = True
    sidecar_quit: str = "auto"  # auto | none | URL (launcher.sidecar)
    termination_log: str = "auto"  # auto | none | path (launcher.termination)
    time_limit_s: float | None = None  # stop the job (SIGTERM, then SIGKILL after grace_s) past this
    max_restarts: int = 0  # run the job again after a failure, this many times at most
    env: tuple[str, ...] = ()  # --env NAME[=VALUE]: to every rank, even a name like a secret's
    output_ranks: str = "all"  # whose output reaches the console: all, or ranks like 0,4-7 (relay.parse_ranks)
    timestamp_output: bool = False  # each output line starts with the UTC time it arrived
    guard: bool = True  # a Python command runs under python -m mpirt where that Python has it (launcher.guard)


def read_hostfile(path: str, why: str, slots: int) -> list[hostlib.Host]:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise hostlib.HostError(f"{path} ({why}): {e.strerror}") from e
    return hostlib.parse_hostfile(text, path, slots)


def resolve_hosts(cfg: LaunchConfig, env, root: Path = Path("/")) -> tuple[list[hostlib.Host], str]:
    """(hosts, where they came from); no hosts means the local role."""
    slots, _why = hostlib.default_slots(cfg.slots, env, lambda: device_nodes(root))
    if cfg.hostfile:
        return read_hostfile(cfg.hostfile, "--hostfile", slots), f"--hostfile {cfg.hostfile}"
    if cfg.hosts:
        return hostlib.parse_list(cfg.hosts, "-H", slots), "-H"
    role = detect_role(env, root, socket.gethostname(), slots)
    if role.kind == "worker":
        raise hostlib.HostError(f"this pod is a worker ({role.reason}); its command is `mpirt worker`, "
                                "and `mpirt launch` belongs in the launcher")
    if role.kind == "local":
        return [], "local"
    if role.hostfile:
        return read_hostfile(role.hostfile, role.reason, slots), f"{role.system}: {role.reason}"
    return list(role.hosts), f"{role.system}: {role.reason}"


def is_this_host(name: str, hostname: str | None = None) -> bool:
    """Whether a hostfile entry is this pod: the operators list the launcher by its FQDN
    (``<job>-launcher.<job>.<ns>.svc``) while its host name is the first label."""
    me = (hostname or socket.gethostname()).lower().rstrip(".")
    entry = name.lower().rstrip(".")
    return entry == me or entry.split(".")[0] == me.split(".")[0]


def start_own_sshd(cfg: LaunchConfig, state: Path) -> subprocess.Popen:
    """This pod is also a worker (runLauncherAsWorker / runLauncherAsNode): serve ssh here too."""
    return subprocess.Popen([sys.executable, "-m", "launcher.cli", "worker", "--port", str(cfg.ssh_port),
                             "--ssh-dir", cfg.ssh_dir, "--state-dir", str(state / "sshd")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _progress(ready: int, total: int) -> None:
    end = "\n" if ready == total or not sys.stderr.isatty() else "\r"
    sys.stderr.write(f"mpirt: hosts ready {ready}/{total}{end}")
    sys.stderr.flush()


def run(cfg: LaunchConfig) -> int:
    target = termination.path_for(cfg.termination_log)  # a bad value fails before anything starts
    limits.raise_open_files()  # a log file per rank, a socket per host: 1024 is too few for large jobs
    asked = signal.signal(signal.SIGUSR1, _nothing_to_say)  # `mpirt where` must never end the launcher
    try:
        with ExitStack() as undo:  # our own sshd, the ssh connections kept open for mpirun
            code, message = _run(cfg, undo)
    except Exception as e:
        termination.write(target, f"mpirt launch: {e}")
        raise
    finally:
        signal.signal(signal.SIGUSR1, asked)
    if not cfg.dry_run:
        termination.write(target, message)
    return code


def _error_dir() -> str:
    """This launch's directory for the ranks' error records (on this host; other hosts' are
    fetched into it)."""
    try:
        return tempfile.mkdtemp(prefix="mpirt-errors-")
    except OSError as e:  # no usable temporary directory: TMPDIR, /tmp, /var/tmp and the current one tried
        raise ValueError(f"no temporary directory can be made here ({e.strerror}): {mpi.TMP_FIX}") from e


def terminal_env(env: dict, named: dict, np: int, columns: int) -> dict[str, str]:
    """For ranks whose output reaches a terminal through the relay, which redraws a bar in
    place (launcher.relay): mpirt train's bar (unless MPIRT_PROGRESS says otherwise), and the
    terminal's width (``columns``) less the "[RANK] " tag as COLUMNS, which tqdm and Python's
    shutil read, so a bar does not wrap; a COLUMNS given with --env stays."""
    out = {} if "MPIRT_PROGRESS" in env else {"MPIRT_PROGRESS": "bar"}
    if "COLUMNS" not in named:
        out["COLUMNS"] = str(max(20, columns - len(f"[{max(np - 1, 0)}] ") - 1))
    return out


def _stop(child: subprocess.Popen) -> None:
    child.terminate()
    child.wait()


def env_defaults(cfg: LaunchConfig, impl: mpi.MpiImpl, env: dict, probes: list[fleet.HostProbe],
                 ranks: dict[str, int]) -> dict[str, str]:
    """The tier defaults every rank gets, with the one-line summary. What the user set wins:
    on the launcher (forwarded to every rank) or on a host (its ranks see it, launcher.sshd).
    ``ranks``: how many each host runs."""
    if not cfg.env_defaults:
        return {}
    plan = fleet.combine(probes, ranks)
    values = resolve(plan.tier, ["nccl", "ucx", impl.key], {**plan.host_env, **env}, iface=plan.iface, hcas=plan.hcas,
                     topology=plan.topology, profile=cfg.profile, profiles=load_profiles(env.get("MPIRT_PROFILES")),
                     hosts=sum(p.runs_ranks for p in probes), cpus=plan.cpus)
    chosen = {v.name: v.value for v in values if v.source != "user"}
    left = tuple(v.name for v in values if v.source == "user" and v.name not in env)
    print(fleet.summary(plan, probes, cfg.profile, len(chosen), left), file=sys.stderr, flush=True)
    return chosen


def _peer(hosts: list[hostlib.Host]) -> str | None:
    """An address of the first host: every host probes the interface that routes there."""
    try:
        return socket.gethostbyname(hosts[0].name)
    except OSError:
        return None


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _source_address(peer: str | None) -> str | None:
    """This host's address on the route to ``peer`` (a UDP socket's connect sends nothing)."""
    if not peer:
        return None
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((peer, 9))
            return s.getsockname()[0]
    except OSError:
        return None


# torchrun's default MASTER_PORT, for rank 0 on another host, whose free ports this one cannot see
TORCHRUN_PORT = 29500


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def rendezvous_env(env: dict, address: str, port: int) -> dict[str, str]:
    """MASTER_ADDR and MASTER_PORT, where rank 0 runs, for code written for torchrun
    (``python -m mpirt`` gives each rank RANK, WORLD_SIZE, ...: ``mpirt.rankenv``); what the
    user set stays."""
    return {k: v for k, v in (("MASTER_ADDR", address), ("MASTER_PORT", str(port))) if k not in env}


def _stop_sidecar(url: str) -> None:
    print(f"mpirt: {sidecar.ask_to_quit(url)}", file=sys.stderr, flush=True)


def _read_here(_host: str, counter: memcg.OomCounter) -> int | None:
    try:
        return memcg.parse(Path(counter.path).read_text())
    except OSError:
        return None


def _nothing_to_say(_signum, _frame) -> None:
    print("mpirt: SIGUSR1 asks where the ranks are; no ranks are running now", file=sys.stderr, flush=True)


def _say_where(dumps: str, size: int, error_dir: str) -> None:
    """Where every one of ``size`` ranks is now, from ``dumps`` (mpirt.stacks files): on stderr,
    and in ``error_dir``/where.txt for ``mpirt where``."""
    text = where.answer(dumps, size)
    print(text, end="", file=sys.stderr, flush=True)
    path = Path(error_dir) / where.ANSWER
    path.parent.mkdir(parents=True, exist_ok=True)  # no rank may run on this host to have made it
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)  # whole or not at all: mpirt where reads it as soon as it appears


def _stop_here(job_id: str, sig: int) -> int:
    return len(ranks.send(ranks.find(ranks.table(), job=job_id), sig))


def _wait_gone(job_id: str, timeout: float = 3.0) -> None:
    """Until the job's ranks here have ended: Open MPI 4's mpirun exits as soon as it has sent
    its SIGKILLs, and a rank on a busy host may still be writing its stack dump."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(ranks.alive(p) for p in ranks.find(ranks.table(), job=job_id)):
        time.sleep(0.05)


RESTART_PAUSE_S = 1.0


def _pause(seconds: float) -> int:
    """Wait between attempts; returns the signal that asked us to stop meanwhile, or 0."""
    got = threading.Event()
    which = []

    def note(signum, _frame):
        which.append(signum)
        got.set()

    previous = {s: signal.signal(s, note) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        got.wait(seconds)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return which[0] if which else 0


def _check_shown(show: frozenset[int] | None, np: int, text: str) -> None:
    """``--output-ranks`` must name a rank the job has: else the console stays silent, as if hung."""
    if show is not None and min(show) >= np:
        span = "0" if np == 1 else f"0-{np - 1}"
        raise ValueError(f"--output-ranks {text} names none of this job's ranks ({span}); name one of them, or write all")


def _run(cfg: LaunchConfig, undo: ExitStack) -> tuple[int, str]:
    mpi.check_command(list(cfg.command))  # a mistyped option is said before anything starts
    named = mpi.user_env(cfg.env, os.environ)
    show = parse_ranks(cfg.output_ranks)
    if cfg.log_dir:  # made now, not after the hosts were waited for
        try:
            Path(cfg.log_dir).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"--log-dir {cfg.log_dir}: cannot make it ({e.strerror}); give a writable directory") from e
    if show is not None and not cfg.tag_output:
        raise ValueError("--output-ranks needs each line tagged with its rank: drop --no-tag-output")
    if cfg.np:  # said now, not after the hosts were waited for
        _check_shown(show, cfg.np, cfg.output_ranks)
    env = {**os.environ, **named}
    if cfg.guard:
        path = env.get("PATH")
        cfg = replace(cfg, command=tuple(guard.guarded(list(cfg.command), lambda python: guard.has_mpirt(python, path))))
    quit_url = sidecar.quit_url(cfg.sidecar_quit, env)
    if quit_url and not cfg.dry_run:  # first in, so last out: on every way this launch ends
        undo.callback(_stop_sidecar, quit_url)
    impl = mpi.detect(mpi.find_mpirun(cfg.mpirun))
    if cfg.profile:  # an unknown profile fails before anything starts
        resolve("tcp", [], {}, profile=cfg.profile, profiles=load_profiles(env.get("MPIRT_PROFILES")))
    hosts, source = resolve_hosts(cfg, env)
    own_dir = "MPIRT_ERROR_DIR" not in env
    error_dir = env.get("MPIRT_ERROR_DIR") or _error_dir()
    job_id = ranks.new_job_id()  # marks this job's ranks on every host: a stop signals them (launcher.ranks)
    base = {"MPIRT_ERROR_DIR": error_dir, ranks.JOB_ENV: job_id, **named}
    info: dict = {"mpi": impl.label, "hosts_from": source}
    try:
        job = _Local(cfg, impl, env, info) if not hosts else _Remote(cfg, impl, env, hosts, source, undo, base, info,
                                                                     named)
        _check_shown(show, job.np, cfg.output_ranks)
    except BaseException:  # nothing ran: no records to keep
        if own_dir:
            shutil.rmtree(error_dir, ignore_errors=True)
        raise
    if sys.stdout.isatty():
        base.update(terminal_env(env, named, job.np, shutil.get_terminal_size().columns))
    if cfg.dry_run:
        added, argv = job.dry_run(base, info)
        print(json.dumps({**info, "argv": argv, "env": mpi.masked(added)}, indent=1))
        if own_dir:
            shutil.rmtree(error_dir, ignore_errors=True)
        return 0, ""
    job.start()
    for attempt in range(cfg.max_restarts + 1):
        added = dict(base)
        if cfg.max_restarts:  # torchrun's name too, for code written for it
            added.update(MPIRT_RESTART=str(attempt), TORCHELASTIC_RESTART_COUNT=str(attempt))
        if attempt:  # each attempt's records apart: the root cause is this attempt's
            added["MPIRT_ERROR_DIR"] = os.path.join(error_dir, f"restart-{attempt}")
            os.makedirs(added["MPIRT_ERROR_DIR"], exist_ok=True)
        ready = job.prepare(added)
        if isinstance(ready, str):  # a host is not ready: nothing to run on
            print(ready, file=sys.stderr, flush=True)
            return 1, ready
        end = supervise(ready, {**env, **added}, cfg.grace_s, log_dir=cfg.log_dir, time_limit_s=cfg.time_limit_s,
                        show=show, timestamps=cfg.timestamp_output,
                        tag=mpi.rank_tag(impl) if cfg.tag_output else None,
                        stop_ranks=lambda sig: job.stop_ranks(job_id, sig),
                        where=lambda: _say_where(job.dumps(job_id), job.np, added["MPIRT_ERROR_DIR"]))
        failed = end.code != 0 and not end.stopped_by and not end.timed_out
        error_dir, oom, places = added["MPIRT_ERROR_DIR"], [], []
        if failed:  # the hosts are asked for records and OOM counters at once: a lost host costs its timeout once
            with ThreadPoolExecutor(max_workers=1) as pool:
                texts = pool.submit(job.fetch, error_dir, "json")
                oom = postmortem.findings(job.oom_before, job.read_oom)
                postmortem.keep_records(texts.result(), error_dir)
        if end.timed_out or end.stopped_by:  # where each rank was when stopped (python -m mpirt dumps it)
            _wait_gone(job_id)
            places = stacks.summary(stacks.read_all(error_dir) +
                                    [w for text in job.fetch(error_dir, "stacks") for w in stacks.parse(text)])
            said = divert.summary(divert.read_all(error_dir) + "".join(job.fetch(error_dir, "out")))
            if said:  # what ranks printed once mpirun had stopped relaying it (mpirt.divert)
                print("\n".join(["mpirt: the ranks' output after the stop:", *said]), file=sys.stderr, flush=True)
        code, message = report(end.code, error_dir, end.stopped_by, end.tail, oom,
                               cfg.time_limit_s if end.timed_out else None, end.ranks, places, end.raised)
        if not failed or attempt == cfg.max_restarts:
            break
        print(f"mpirt: attempt {attempt + 1} of {cfg.max_restarts + 1} failed; restarting the job "
              f"(MPIRT_RESTART={attempt + 1})", file=sys.stderr, flush=True)
        stopped = _pause(RESTART_PAUSE_S)
        if stopped:
            message = f"mpirt: stopped by {signal.Signals(stopped).name} before restarting the job"
            print(message, file=sys.stderr, flush=True)
            code = 128 + stopped
            break
    if own_dir and code == 0:
        shutil.rmtree(error_dir, ignore_errors=True)
    return code, message


class _Local:
    """Ranks on this machine: no ssh; they share this process's memory cgroup."""

    def __init__(self, cfg: LaunchConfig, impl: mpi.MpiImpl, env: dict, info: dict):
        mpi.check_local_program(list(cfg.command), env.get("PATH"))
        self.cfg, self.impl, self.env = cfg, impl, env
        # Without -np, as many ranks as this machine has slots: one per GPU (torchrun's
        # --nproc-per-node gpu), or --slots N; 1 on a machine without GPUs.
        self.np, why = (cfg.np, "-np") if cfg.np else hostlib.default_slots(cfg.slots, env,
                                                                          lambda: device_nodes(Path("/")))
        info["np"] = f"{self.np} ({why})"
        if not cfg.np and self.np > 1 and not cfg.dry_run:
            print(f"mpirt: {self.np} local ranks ({why}; -np sets another number)", file=sys.stderr, flush=True)
        self.oom_before: dict[str, memcg.OomCounter] = {}
        self.read_oom = _read_here

    def _argv(self, added: dict) -> list[str]:
        added.update(rendezvous_env(self.env, "127.0.0.1", _free_port()))
        if self.cfg.env_defaults:
            added.update(env_defaults(self.cfg, self.impl, self.env, [fleet.local("localhost")], {"localhost": self.np}))
        return mpi.launch_argv(self.impl, self.np, list(self.cfg.command), cores=os.cpu_count() or 1,
                               uid=os.getuid(), tag_output=self.cfg.tag_output)

    def dry_run(self, base: dict, info: dict) -> tuple[dict, list[str]]:
        added = dict(base)
        return added, self._argv(added)

    def start(self) -> None:
        pass

    def fetch(self, error_dir: str, suffix: str) -> list[str]:
        return []  # the ranks wrote their files here

    def stop_ranks(self, job_id: str, sig: int) -> int:
        return _stop_here(job_id, sig)

    def dumps(self, job_id: str) -> str:
        return ranks.dumps_now(job_id)

    def prepare(self, added: dict) -> list[str]:
        here = memcg.read()
        self.oom_before = {socket.gethostname(): here} if here else {}
        return self._argv(added)


class _Remote:
    """Ranks on hosts over ssh: our hostfile and ssh setup once; before every attempt the
    readiness check of every host, which also reads each host's probe and OOM counter."""

    def __init__(self, cfg: LaunchConfig, impl: mpi.MpiImpl, env: dict, hosts: list[hostlib.Host], source: str,
                 undo: ExitStack, base: dict, info: dict, named: dict):
        for text, fix in mpi.known_faults(impl):
            print(f"mpirt: warning: {text}; {fix}", file=sys.stderr, flush=True)
        # the ssh modules only where there are remote hosts: a local launch stays light
        from launcher.ssh import make_dir, prepare, state_default
        from launcher.sshd import nss_wrapper_env

        self.cfg, self.impl, self.env, self.undo, self.source = cfg, impl, env, undo, source
        # Hosts that give no count and no --slots or operator variable for them: one slot per
        # GPU of that host, known once its probe is read (hostlib.slots_from_gpus).
        self.per_host = (cfg.slots in (None, "", "auto") and not any(env.get(n) for n in hostlib.SLOTS_ENV)
                         and not all(h.slots_given for h in hosts))
        self.state = make_dir(Path(cfg.state_dir) if cfg.state_dir else state_default("mpirt-launch"))
        self.hostfile = self.state / "hostfile"
        info["hostfile"] = self._use(hosts, check=not self.per_host)
        if self.per_host:
            info["slots"] = "hosts with no slot count get one per GPU they have, read at launch from their probe"
        self.setup = prepare(Path(cfg.ssh_dir), self.state / "ssh", cfg.ssh_port)
        nss = nss_wrapper_env(self.state)
        base.update(nss)
        base.update(mpi.ssh_env(impl, self.setup.ssh_args()))
        self.names, self.ssh_env = [h.name for h in hosts], {**env, **nss}
        self.named = list(named)
        self.hinted, self.export = False, []
        self.oom_before: dict[str, memcg.OomCounter] = {}

    def _use(self, hosts: list[hostlib.Host], check: bool = True) -> str:
        """Run on ``hosts``: their hostfile in the MPI's dialect, -np (every slot unless given)."""
        total = sum(h.slots for h in hosts)
        self.hosts, self.np = hosts, self.cfg.np or total
        if check and self.np > total:
            raise hostlib.HostError(f"-np {self.np} is more than the {total} slots on {len(hosts)} hosts "
                                    f"({self.source}); lower -np or give hosts more slots (--slots, slots=N)")
        text = hostlib.render(hosts, mpi.TABLE[self.impl.key].dialect)
        self.hostfile.write_text(text)
        return text

    def _argv(self, added: dict, peer: str | None) -> list[str]:
        """``peer``: an address of the first host (``_peer``), looked up once per attempt."""
        iface = bootstrap_interface(_read("/proc/net/route"), peer) if peer else None
        added.update({k: v for k, v in mpi.control_env(self.impl, iface).items() if k not in self.env})
        added.update(self._rendezvous(peer))
        self.export = mpi.forwarded({**self.env, **added}, also=added, named=self.named)
        return mpi.build_argv(self.impl, self.np, str(self.hostfile), list(self.cfg.command), uid=os.getuid(),
                              tag_output=self.cfg.tag_output, export=self.export, control=_source_address(peer))

    def _rendezvous(self, peer: str | None) -> dict[str, str]:
        """Rank 0 runs on the first host: its address as looked up here (no DNS needed on the
        workers, which may not resolve the launcher's name), or, where that host is this one,
        this host's address on the route to the other hosts (loopback if there are none: a
        Trainer launcher that runs every rank, and may not resolve its own name) and a port
        free here."""
        first = self.hosts[0].name
        if not is_this_host(first):
            return rendezvous_env(self.env, peer or first, TORCHRUN_PORT)
        others = [h for h in self.hosts if not is_this_host(h.name)]
        address = _source_address(_peer(others)) if others else "127.0.0.1"
        return rendezvous_env(self.env, address or peer or first, _free_port())

    def dry_run(self, base: dict, info: dict) -> tuple[dict, list[str]]:
        if self.cfg.env_defaults:
            info["env_defaults"] = "set at launch from every host's probe (read during the readiness check)"
        added = dict(base)
        return added, self._argv(added, _peer(self.hosts))

    def start(self) -> None:
        from launcher.ready import release

        if any(is_this_host(h.name) for h in self.hosts):
            self.undo.callback(_stop, start_own_sshd(self.cfg, self.state))
        self.undo.callback(release, self.names, self.setup, self.ssh_env)

    def _on_others(self, command: str) -> list[str]:
        """What ``command`` printed on each of the other hosts (asked in parallel; "" where it failed)."""
        from launcher.ready import output_of

        return postmortem.fetch([h for h in self.names if not is_this_host(h)],
                                lambda h: output_of(h, self.setup, command, self.ssh_env, timeout=5))

    def fetch(self, error_dir: str, suffix: str) -> list[str]:
        """The ``rank-*.<suffix>`` files ranks left in ``error_dir`` on the other hosts: each pod
        has its own filesystem."""
        return self._on_others(postmortem.listing_command(error_dir, suffix))

    def stop_ranks(self, job_id: str, sig: int) -> int:
        """Signal the job's ranks here, then on the other hosts; how many."""
        here = _stop_here(job_id, sig)
        said = self._on_others(ranks.remote_command(job_id, sig))
        return here + sum(int(text) for text in said if text.strip().isdigit())

    def dumps(self, job_id: str) -> str:
        """The stack dumps the job's ranks write now, here and on the other hosts at once."""
        with ThreadPoolExecutor(max_workers=1) as pool:
            others = pool.submit(self._on_others, ranks.remote_dump_command(job_id))
            return ranks.dumps_now(job_id) + "".join(others.result())

    def read_oom(self, host: str, counter: memcg.OomCounter) -> int | None:
        from launcher.ready import output_of

        return memcg.parse(output_of(host, self.setup, postmortem.read_command(counter), self.ssh_env, timeout=5))

    def prepare(self, added: dict) -> list[str] | str:
        """mpirun's argv once every host is ready, else the readiness report."""
        from launcher.ready import report as readiness_report
        from launcher.ready import wait_ready

        cfg = self.cfg
        peer = _peer(self.hosts)
        with ThreadPoolExecutor(max_workers=1) as pool:  # this host's probe while the hosts are checked
            own = pool.submit(fleet.local, f"{socket.gethostname()} (launcher)", Path("/"), peer, False) \
                if cfg.env_defaults else None
            results = wait_ready(self.names, self.setup, cfg.wait_s, _progress, command=fleet.probe_command(peer),
                                 env=self.ssh_env)
        text = readiness_report(results, cfg.wait_s)
        if text:
            return text
        found = [fleet.from_output(r.host, r.output) for r in results]
        self.oom_before = {p.host: p.oom for p in found if p.oom}
        if self.per_host:
            self._use(hostlib.slots_from_gpus(self.hosts, {p.host: p.probe.gpus for p in found if p.probe}))
            print("mpirt: slots from each host's GPUs: " + ", ".join(
                f"{h.name} {h.slots}" for h in self.hosts if not h.slots_given), file=sys.stderr, flush=True)
        if cfg.env_defaults:
            added.update(env_defaults(cfg, self.impl, self.env, [own.result()] + found,
                                      hostlib.placement(self.hosts, self.np)))
        argv = self._argv(added, peer)
        if mpi.TABLE[self.impl.key].export and not self.hinted:  # Open MPI sends only what it is told to
            self.hinted = True
            from launcher.sshd import LOGIN_OWN

            missing = fleet.launcher_only(self.env, set(self.export), found, LOGIN_OWN)
            if missing:
                more = f" and {len(missing) - 8} more" if len(missing) > 8 else ""
                print(f"mpirt: set on the launcher only, so no rank sees it: {', '.join(missing[:8])}{more}; "
                      "send one with --env NAME, or set it on the workers", file=sys.stderr, flush=True)
        return argv
