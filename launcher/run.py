"""Run mpirun and stay in charge of it: relay its output (only the ranks asked for, split per
rank into --log-dir), stop the job on SIGTERM/SIGINT or at its time limit (a hung sshd or
rank can stall an mpirun for ever, mpi-operator #152): SIGTERM to every rank, the grace
period, then mpirun's own teardown and the kill; return its exit code, and explain a
failure: the earliest rank error record (``mpirt.errors``) when there is one, else what
mpirun itself said (which rank, host, exit code or signal; a lost host)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from typing import Callable, NamedTuple

from launcher import mpi
from launcher.relay import Heard, Relay
from mpirt import errors
from mpirt.console import ranges

# How long an mpirun may go on after an ssh failure (launcher.relay) before it is stopped:
# Hydra would wait forever.
FATAL_GRACE_S = 15.0
# After mpirun is told to stop, how long its teardown may take (Open MPI 4's: twice its 1 s
# kill timeout) before everything left is killed.
BACKSTOP_S = 5.0
# What a signal that killed a rank usually means in a pod.
_SIGNAL_HINTS = {
    signal.SIGKILL: "the OOM killer at a memory limit (kubectl describe pod: OOMKilled), or a kill -9",
    signal.SIGBUS: "/dev/shm full or too small (a container gets 64 MiB: mount an emptyDir with medium: Memory "
                   "at /dev/shm)",
}


def _killed(rank: str | None, host: str, num: int) -> str:
    who = f"rank {rank}" if rank is not None else "a rank"
    hint = _SIGNAL_HINTS.get(num)
    return f"{who} on {host} was killed by signal {num}{_signame(num)}" + (f"; usually {hint}" if hint else "")


def _code_hint(code: int) -> str:
    """143 is how a program that stops on SIGTERM ends (mpirt train after its checkpoint): the
    rank was told to stop, usually because its worker pod was deleted, evicted or drained."""
    return (" (128 + SIGTERM: it was told to stop, usually because its pod was deleted, evicted or its node "
            "drained)") if code == 128 + signal.SIGTERM else ""


def _not_started(program: str, host: str, why: str) -> str:
    return (f"{program} could not be started on {host} ({why}): check the name, and that the image on {host} has "
            "it (a bare name is looked up on that host's PATH)")


# mpirun's own words for a failure, most specific first; Open MPI 5 wraps its lines, Hydra
# (MPICH, Intel MPI) frames them in '=' banners.
_PATTERNS = (
    (re.compile(r"process\s+rank\s+(\d+)\s+with\s+PID\s+\d+\s+on\s+node\s+(\S+)\s+exited\s+on\s+signal\s+(\d+)"),
     lambda m: _killed(m[1], m[2], int(m[3]))),
    (re.compile(r"RANK (\d+) PID \d+ RUNNING AT (\S+)\s*\n=\s+KILLED BY SIGNAL: (\d+)"),
     lambda m: _killed(m[1], m[2], int(m[3]))),
    (re.compile(r"PID \d+ RUNNING AT (\S+)\s*\n=\s+EXIT CODE: \d+[\s\S]*?EXIT STRING: [^\n]*\(signal (\d+)\)"),
     lambda m: _killed(None, m[1], int(m[2]))),
    (re.compile(r"call to mkdir was unable to create the desired directory:\s+Directory:\s+(\S+)\s+Error:\s+([^\n]+)"),
     lambda m: f"mpirun could not create its session directory {m[1]} ({m[2].strip()}): Open MPI keeps it under "
               f"TMPDIR, else /tmp, on every host; {mpi.TMP_FIX}"),
    (re.compile(r"Remote daemon:.*? on node (\S+)"),
     lambda m: f"host {m[1]} stopped answering (its pod died, was evicted or OOM-killed, or lost the network)"),
    (re.compile(r"Connection to (\S+) closed by remote host"),
     lambda m: f"host {m[1]} dropped its ssh connection (its pod died or its sshd was stopped)"),
    (re.compile(r"(\S+): Permission denied \(publickey"),
     lambda m: f"ssh to {m[1]} was refused (the worker does not accept this job's key)"),
    (re.compile(r"Host key verification failed"),
     lambda m: "a worker's host key is not the one pinned in the Secret"),
    (re.compile(r"ssh: Could not resolve hostname ([^:\s]+)"),
     lambda m: f"host {m[1]} has no DNS record (ssh could not resolve it)"),
    (re.compile(r"ssh: connect to host (\S+) port (\d+): (.+)"),
     lambda m: f"ssh to {m[1]} port {m[2]} failed: {m[3]}"),
    (re.compile(r"unable to launch the specified application as it could not\s+access(?:\s+or\s+execute)?\s+"
                r"an\s+executable:\s+Executable: (\S+)\s+Node: (\S+)"),
     lambda m: _not_started(m[1], m[2], "not there, or not executable")),
    (re.compile(r"unable to find the specified executable file[\s\S]*?Node:\s+(\S+)\s+Executable:\s+(\S+)"),
     lambda m: _not_started(m[2], m[1], "not found")),
    (re.compile(r"\[proxy:[^\]@]*@([^\]]+)\]\s+HYDU_create_process \([^)]*\): execvp error on file (\S+) \(([^)]+)\)"),
     lambda m: _not_started(m[2], m[1], m[3])),
    # Open MPI 4 names a process [[JOB,1],RANK], Open MPI 5 [NAMESPACE@1,RANK]
    (re.compile(r"Process name: \[(?:\[\d+,\d+\]|[^\s\],]+),(\d+)\]\s*\n\s*Exit code:\s+(\d+)"),
     lambda m: f"rank {m[1]} exited with code {m[2]}{_code_hint(int(m[2]))}"),
    (re.compile(r"RANK (\d+) PID \d+ RUNNING AT (\S+)\s*\n=\s+EXIT CODE: (\d+)"),
     lambda m: f"rank {m[1]} on {m[2]} exited with code {m[3]}{_code_hint(int(m[3]))}"),
)


TIME_LIMIT_EXIT = 124  # as timeout(1)


class Outcome(NamedTuple):
    code: int  # mpirun's exit status, 128 + signal when a signal ended it
    stopped_by: int  # the signal that asked us to stop, or 0
    tail: list[str]  # mpirun's last output lines
    timed_out: bool = False  # stopped at the time limit
    ranks: dict[str, list[str]] | None = None  # each rank's last output lines, without the rank tag
    raised: list[str] = ()  # the ranks that printed a Python traceback, first first


def exit_code(returncode: int) -> int:
    """A shell-style exit status: 128 + signal number for a process killed by a signal."""
    return 128 - returncode if returncode < 0 else returncode


# A launcher killed outright (SIGKILL: no handler runs; outside a pod, whose end takes all with
# it) must take the job along. This sentinel, a one-thread Python the launcher starts beside
# mpirun, asks the kernel for SIGTERM when its parent dies (PR_SET_PDEATHSIG), and then gives
# mpirun's process group one SIGTERM: mpirun's own teardown, which stops the ranks. Set on
# mpirun itself, the signal came once per mpirun thread, and Open MPI 4 takes a second SIGTERM
# as "exit now", leaving its ranks running.
_SENTINEL = """
import ctypes, os, signal, sys
group, parent = int(sys.argv[1]), int(sys.argv[2])
def stop(*_):
    try:
        os.killpg(group, signal.SIGTERM)
    except OSError:
        pass
    os._exit(0)
signal.signal(signal.SIGTERM, stop)
ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)
if os.getppid() != parent:
    stop()
while True:
    signal.pause()
"""


def _sentinel(proc: subprocess.Popen) -> subprocess.Popen | None:
    """The sentinel over ``proc`` (mpirun, a process group leader); None where none can start."""
    try:
        return subprocess.Popen([sys.executable, "-I", "-S", "-c", _SENTINEL, str(proc.pid), str(os.getpid())],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    except OSError:
        return None


def _signame(num: int) -> str:
    try:
        return f" ({signal.Signals(num).name})"
    except ValueError:
        return ""


def supervise(argv: list[str], env: dict[str, str], grace_s: float, log_dir: str | None = None,
              fatal_grace_s: float = FATAL_GRACE_S, time_limit_s: float | None = None,
              show: frozenset[int] | None = None, timestamps: bool = False,
              stop_ranks: Callable[[int], int] | None = None, where: Callable[[], None] | None = None,
              tag: re.Pattern[bytes] | None = None) -> Outcome:
    """Run ``argv`` to its end, or until a signal or ``time_limit_s`` stops it; ``tag``: how
    mpirun tags each rank's output (None: it does not); ``show``: the ranks whose output
    reaches our stdout and stderr (None: all; mpirun's own always does);
    ``timestamps``: each line relayed or logged starts with the time it arrived;
    ``stop_ranks(sig)``: signal every rank of the job, wherever it runs; how many it reached;
    ``where()``: say where the ranks are now, run on SIGUSR1 (one at a time, and not in the
    handler: it may use ssh).

    A stop gives every rank SIGTERM at once through ``stop_ranks`` and lets the job end within
    ``grace_s``; then mpirun is told to stop (its own teardown), and BACKSTOP_S later whatever
    is left is killed. A second stop signal cuts the grace period short. Where no rank was
    reached, mpirun is told at once."""
    lock = threading.Lock()
    doomed = threading.Event()
    timers: list[threading.Timer] = []

    def later(seconds: float, action) -> None:
        timer = threading.Timer(seconds, action)
        timer.daemon = True
        timers.append(timer)
        timer.start()

    def kill_all() -> None:
        _kill_group(proc)
        if stop_ranks:
            stop_ranks(signal.SIGKILL)

    def on_fatal():  # the job cannot start everywhere; some mpiruns would wait forever
        if not doomed.is_set():
            doomed.set()
            later(fatal_grace_s, kill_all)

    heard = Heard(log_dir, show, timestamps, tag, on_fatal)  # the log directory made before anything starts
    proc = subprocess.Popen(argv, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    sentinel = _sentinel(proc)
    relays = [Relay(src, dst, heard) for src, dst in ((proc.stdout, sys.stdout.buffer),
                                                       (proc.stderr, sys.stderr.buffer))]
    for r in relays:
        r.start()
    stopping = threading.Event()
    told = threading.Event()
    stopped_by = 0
    timed_out = threading.Event()

    def tell_mpirun() -> None:
        with lock:
            if told.is_set() or proc.poll() is not None:
                return
            told.set()
        _signal_group(proc, signal.SIGTERM)
        later(BACKSTOP_S, kill_all)

    def stop_ranks_or_mpirun() -> None:
        if not (stop_ranks and stop_ranks(signal.SIGTERM)):
            tell_mpirun()

    def stop() -> bool:
        """True for the first stop."""
        if proc.poll() is not None:
            return False
        if stopping.is_set():
            tell_mpirun()
            return False
        stopping.set()
        later(grace_s, tell_mpirun)  # counted from now, however long a lost host keeps ssh waiting
        threading.Thread(target=stop_ranks_or_mpirun, daemon=True).start()  # not in the handler: it may use ssh
        return True

    def forward(signum, _frame):
        nonlocal stopped_by
        if stop():
            stopped_by = signum

    def expire():
        if stop():
            timed_out.set()
            print(f"mpirt: time limit of {time_limit_s:g} s reached; stopping the job (SIGTERM to every rank, "
                  f"SIGKILL after {grace_s:g} s)", file=sys.stderr, flush=True)

    asking = threading.Lock()

    def answer() -> None:
        try:
            where()
        finally:
            asking.release()

    def ask_where(_signum, _frame):
        if where and asking.acquire(blocking=False):
            threading.Thread(target=answer, daemon=True).start()

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, ask_where)
    if time_limit_s:
        later(time_limit_s, expire)
    try:
        code = exit_code(proc.wait())
        for r in relays:
            r.join(timeout=5)
        with heard.lock:
            return Outcome(code, stopped_by, list(heard.tail), timed_out.is_set(),
                           {r: list(d) for r, d in heard.ranks.items()}, list(heard.raised))
    finally:
        for timer in timers:
            timer.cancel()
        for s, handler in previous.items():
            signal.signal(s, handler)
        if proc.poll() is None:
            _kill_group(proc)
        if sentinel:
            sentinel.kill()
            sentinel.wait()
        heard.close()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    """mpirun and what shares its process group (the mpiexec under a wrapper script's)."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _kill_group(proc: subprocess.Popen) -> None:
    _signal_group(proc, signal.SIGKILL)


def from_output(tail: list[str]) -> list[str]:
    """What mpirun's own messages say went wrong, most specific first, without repeats."""
    text = "".join(tail)
    found: list[str] = []
    for pattern, say in _PATTERNS:
        for m in pattern.finditer(text):
            line = say(m)
            if line not in found:
                found.append(line)
    return found


# The advice every wrong-interface fix ends with: what the launcher set, and that the user's wins.
_ROUTED = ("to the interface that routes to the other hosts (mpirt env --explain shows it); a value you set wins "
           "over that: name an interface every host has")
# What a rank's last words mean, when they say it: (a pattern in them, the fix; \1: its group).
_OUTPUT_FIXES = (
    (re.compile(r"env:// rendezvous: environment variable RANK expected"),
     "torch.distributed found no RANK: run the script as `python -m mpirt SCRIPT`, which sets RANK, WORLD_SIZE, "
     "LOCAL_RANK and LOCAL_WORLD_SIZE from MPI (mpirt launch sends MASTER_ADDR and MASTER_PORT)"),
    (re.compile(r"^(\S*python[\d.]*): No module named mpirt\b"),
     r"\1 has no mpirt: install mpirt into the Python the ranks run (the same image on every host), or name "
     "that Python in the command: mpirt launch -- /path/to/python -m mpirt ... (where the launcher's own Python "
     "has mpirt and the hosts' has not, mpirt launch --no-guard runs a script as given)"),
    (re.compile(r"No module named '([\w.]+)'"),
     r"the ranks' Python cannot import \1: install it into the image every host runs (pip install in the "
     "Containerfile), or add its directory with mpirt launch --env PYTHONPATH=DIR"),
    (re.compile(r"failed to extend /dev/shm|No space left on device.*/dev/shm|/dev/shm.*No space left|"
                r"unable to allocate shared memory\(shm\)|out of shared memory"),
     "/dev/shm is full (a container gets 64 MiB; NCCL and DataLoader workers pass data through it): mount an "
     "emptyDir with medium: Memory at /dev/shm, sizeLimit 1Gi or more, on every replica (mpirt doctor shows its "
     "size)"),
    (re.compile(r"Too many open files|received 0 items of ancdata"),
     "the rank ran out of file descriptors (DataLoader workers hand each tensor over as one): raise the "
     "container's open-files limit (ulimit -n; the container runtime's default ulimits), or call "
     "torch.multiprocessing.set_sharing_strategy('file_system') in the script"),
    (re.compile(r"CUDA out of memory"),
     "the GPU's memory is full: a smaller per-rank batch (with gradient accumulation to keep the global batch), "
     "bf16, or PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True against fragmentation"),
    (re.compile(r"no kernel image is available for execution on the device"),
     "this torch has no kernels for this GPU's architecture (torch.cuda.get_arch_list() lists those it has): "
     "install a torch built for it (the newest GPUs need a wheel of a recent CUDA) into the image"),
    (re.compile(r"NVIDIA driver on your system is too old|CUDA driver version is insufficient"),
     "the NVIDIA driver this container sees is older than this CUDA build needs, or none is mounted: a pod gets "
     "the node's driver when it requests a GPU (resources.limits nvidia.com/gpu) and NVIDIA_VISIBLE_DEVICES is not "
     "blank; else use a torch whose CUDA the node's driver supports (nvidia-smi shows its version)"),
    (re.compile(r"Expected to have finished reduction in the prior iteration"),
     "DistributedDataParallel found parameters that got no gradient: pass find_unused_parameters=True, or use "
     "mpirt.data_parallel, which reduces such parameters without being told"),
    (re.compile(r"Duplicate GPU detected : rank (\d+) and rank (\d+) both on CUDA device"),
     r"ranks \1 and \2 are on one GPU, which NCCL refuses: give each rank its own, torch.cuda.set_device("
     "int(os.environ['LOCAL_RANK'])) before init_process_group (python -m mpirt sets LOCAL_RANK), and start at "
     "most one rank per GPU on a host (mpirt launch without -np starts one per GPU)"),
    (re.compile(r"Watchdog caught collective operation timeout: WorkNCCL\(SeqNum=(\d+), OpType=(\w+)"),
     r"NCCL's \2 number \1 waited past torch.distributed's timeout: a rank was slow or never came to it; the "
     "first failure of another kind, a stall report, or `mpirt where` while a job waits names that rank and its "
     "line; a long pause on purpose (evaluation or saving on one rank) needs timeout= in init_process_group"),
    (re.compile(r"failed to listen on any local network address\. port: (\d+).*EADDRINUSE"),
     r"MASTER_PORT \1 is taken on rank 0's host (by another job, or one still ending): leave MASTER_PORT unset, and "
     "mpirt launch picks a free port for each job, or set another"),
    (re.compile(r"no socket interface found"),
     "NCCL found no network interface to use: NCCL_SOCKET_IFNAME names none this host has. mpirt launch sets it "
     + _ROUTED + " (eth matches eth0, eth1, ...; =eth0 that one only), or leave it unset"),
    (re.compile(r"Unable to find address for: (\S+)"),
     r"Gloo found no address on \1, the interface GLOO_SOCKET_IFNAME names. mpirt launch sets it " + _ROUTED +
     ", or leave it unset"),
    (re.compile(r"Gloo connectFullMesh failed"),
     "Gloo's ranks could not connect: each takes its address from GLOO_SOCKET_IFNAME, else from its host name, "
     "which must not resolve to 127.x (an /etc/hosts line of 127.0.1.1). mpirt launch sets GLOO_SOCKET_IFNAME " +
     _ROUTED + ", or leave it unset"),
    (re.compile(r"NCCL.*unhandled system error"),
     "NCCL failed in a system call: rerun with --profile debug (NCCL_DEBUG=INFO) to see which; in a pod it is "
     "most often /dev/shm too small or the locked-memory limit for RDMA (mpirt doctor checks both)"),
)


def _fixes(lines: list[str]) -> str:
    found: list[str] = []
    for pattern, fix in _OUTPUT_FIXES:
        m = next(filter(None, map(pattern.search, lines)), None)
        said = m.expand(fix) if m else None
        if said and said not in found:
            found.append(said)
    return "".join(f"\n  fix: {fix}" for fix in found)


def _last_words(ranks: dict[str, list[str]], shown: int = 2, lines: int = 5) -> str:
    """The last output of the ranks, each text once with the ranks that said it (every rank
    of a job started wrongly says the same), for a failure nothing else explains."""
    said: dict[tuple[str, ...], list[int]] = {}
    for rank, last in sorted(ranks.items(), key=lambda item: int(item[0])):
        said.setdefault(tuple(last[-lines:]), []).append(int(rank))
    out = [f"\n  last output of rank{'s' if len(who) > 1 else ''} {','.join(ranges(who))}:" +
           "".join(f"\n    {line}" for line in text) for text, who in list(said.items())[:shown]]
    if len(said) > shown:
        out.append(f"\n  ({len(said) - shown} other endings among the ranks: --log-dir keeps each rank's output)")
    return "".join(out)


def root_cause(code: int, error_dir: str, tail: list[str] = (), lines: int = 12, oom: list[str] = (),
               ranks: dict[str, list[str]] | None = None, raised: list[str] = ()) -> str:
    """What to tell the user when the job exited with ``code``. ``oom``: hosts' out-of-memory
    findings (launcher.postmortem); a rank the kernel killed leaves no record, and the
    records of the ranks that lost it are consequences, so these come first. ``ranks``: each
    rank's last output lines, shown for the rank mpirun names when there is no record (what
    a native crash or a CUDA error printed before the signal); ``raised``: the ranks that
    printed a Python traceback, first first (Hydra names no rank that exited with a code)."""
    records = errors.read_all(error_dir)
    clues = from_output(list(tail))
    # 128 + N is how a shell reports signal N, but not always mpirun: Open MPI 4 exits 131, 132
    # or 134 when it cannot start a program. Named only where nothing else explains the code.
    sig = _signame(code - 128) if code > 128 and (not clues or "signal" in clues[0]) else ""
    if oom:
        also = clues + [f"rank {r['rank']} on {r['host']}: {r['exception']}: {r['message']}" for r in records]
        return "\n".join([f"mpirt: job failed (exit {code}{sig}). Root cause: out of memory: {oom[0]}"] +
                         [f"  also: {x}" for x in list(oom[1:]) + also[:4]])
    if not records:
        text = f"mpirt: job failed: mpirun exited {code}{sig}"
        ranks = ranks or {}
        named = re.match(r"rank (\d+) ", clues[0]) if clues else None
        source = "mpirun's output"
        if not named and raised:
            clues.insert(0, f"rank {raised[0]} ended with a Python exception")
            named, source = re.match(r"rank (\d+) ", clues[0]), "the ranks' output"
        if clues:
            last = ranks.get(named[1], []) if named else []
            shown = f"\n  last output of rank {named[1]}:" + "".join(f"\n    {ln}" for ln in last) if last else ""
            return (text + f". Root cause (from {source}): " + clues[0] +
                    "".join(f"\n  also: {c}" for c in clues[1:4]) + shown + _fixes(last))
        if ranks:
            return (text + "; no rank left an error record, and mpirun named no rank" + _last_words(ranks) +
                    _fixes([line for last in ranks.values() for line in last]))
        return text + ("; no rank left an error record (a rank was killed by a signal or exited without a "
                       "Python exception; see its output above)")
    first = records[0]
    tb = first.get("traceback", "").rstrip().splitlines()[-lines:]
    others = [r["rank"] for r in records[1:]]
    who = f"rank {first['rank']} on {first['host']} (pid {first['pid']})"
    if first["exception"] == "SystemExit":  # the program's own sys.exit(N): where, and what it printed last
        sites = re.findall(r'File "([^"]*)", line (\d+)', first.get("traceback", ""))
        said = first["message"]
        out = [f"mpirt: job failed (exit {code}{sig}). Root cause (first failure): {who} exited with "
               f"{'code ' + said if re.fullmatch(r'-?[0-9]+', said) else repr(said)}"
               f"{' (sys.exit at %s:%s)' % sites[-1] if sites else ''}"]
        last = (ranks or {}).get(str(first["rank"]), [])
        out += [f"  last output of rank {first['rank']}:", *(f"    {line}" for line in last)] if last else []
    else:
        # a message of several lines (NCCL's, torch's) heads with its first; the rest ends the traceback
        headline = next((line for line in first["message"].splitlines() if line.strip()), "")
        out = [f"mpirt: job failed (exit {code}{sig}). Root cause (first failure): {who}: {first['exception']}: "
               f"{headline}"]
        out += ["    " + line for line in tb]
    if others:
        out.append(f"  later failures on rank(s) {', '.join(map(str, others))}; records in {error_dir}")
    return "\n".join(out) + _fixes([first["message"], *tb])


def report(code: int, error_dir: str, stopped_by: int = 0, tail: list[str] = (),
           oom: list[str] = (), time_limit_s: float | None = None,
           ranks: dict[str, list[str]] | None = None, where: list[str] = (),
           raised: list[str] = ()) -> tuple[int, str]:
    """Say how the job ended: (the launcher's exit status, 128 + signal when stopped, 124 at
    the time limit; the message). ``time_limit_s``: given when the job ran past it; ``where``:
    then, where the ranks were (``mpirt.stacks.summary``), and the fix for what the ranks'
    last words say where they name a known failure."""
    places = "".join(["\n  where the ranks were when it was stopped:"] + [f"\n    {w}" for w in where]) if where else ""
    # a job that hung may have said why before it did (a DataLoader worker out of file descriptors)
    said = _fixes([line for last in (ranks or {}).values() for line in last])
    if time_limit_s:
        text = (f"mpirt: job stopped: it ran past its time limit (--time-limit {time_limit_s:g} s); mpirun exited "
                f"{code}. A stall report above names the ranks that stopped progressing, if any did")
        text += (places or " (run the program under python -m mpirt to learn where each rank was when it was "
                 "stopped)") + said
        code = TIME_LIMIT_EXIT
    elif stopped_by:
        text = (f"mpirt: stopped by {signal.Signals(stopped_by).name} (forwarded to the ranks); mpirun exited {code}"
                + places + said)
        code = 128 + stopped_by
    elif code != 0:
        text = root_cause(code, error_dir, tail, oom=oom, ranks=ranks, raised=raised)
    else:
        text = "mpirt: job succeeded (mpirun exited 0)"
    print(text, file=sys.stderr, flush=True)
    return code, text
