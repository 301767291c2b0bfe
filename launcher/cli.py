"""The `mpirt` command. It only translates: options (each also read from an MPIRT_* variable)
become a frozen config, then one run(config) call. Subcommands import their modules lazily,
so `mpirt --help` stays fast and never loads MPI."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click



def _version(ctx: click.Context, _param, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        import mpirt

        click.echo(f"mpirt, version {mpirt.__version__}")
        ctx.exit()


class CliError(click.ClickException):
    """A bad input or setup: said on stderr, and kept in the pod's termination message (a
    worker in a crash loop then shows why in `kubectl describe pod`)."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(message)
        ctx = click.get_current_context(silent=True)  # gone by the time show() runs
        self.command = ctx.command_path if ctx else "mpirt"

    def show(self, file=None) -> None:
        super().show(file)
        from launcher import termination

        try:
            target = termination.path_for(os.environ.get("MPIRT_TERMINATION_LOG", "auto"))
        except ValueError:
            return
        termination.write(target, f"{self.command}: {self.format_message()}")


class _Entrypoint(click.Group):
    """`mpirt CMD...` where CMD is not one of ours: the image entrypoint form (ENTRYPOINT
    ["mpirt"], the pod's args are the job), which goes to `mpirt pod`."""

    def resolve_command(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["pod", "--", *args]
        return super().resolve_command(ctx, args)


@click.group(cls=_Entrypoint, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-V", "--version", is_flag=True, expose_value=False, is_eager=True, callback=_version,
              help="Show the version and exit.")
def main() -> None:
    """MPI training runtime and launcher for Kubernetes MPIJobs.

    As an image entrypoint, `mpirt COMMAND...` finds the pod's role: the launcher of an
    mpi-operator MPIJob, Kubeflow Trainer job or Volcano job runs COMMAND on every host
    (`mpirt launch`), a worker runs sshd (`mpirt worker`), elsewhere COMMAND runs on local
    ranks."""


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def pod(command: tuple[str, ...]) -> None:
    """Act on the role this pod has (what `mpirt COMMAND...` does); options come from MPIRT_* variables."""
    import os
    import socket
    from pathlib import Path

    from launcher.hosts import HostError
    from launcher.roles import detect

    try:
        role = detect(os.environ, Path("/"), socket.gethostname())
    except HostError as e:
        raise CliError(str(e)) from e
    print(f"mpirt: role {role.kind} ({role.reason})", file=sys.stderr, flush=True)
    home = os.environ.get("HOME", "")
    if home and not os.access(home, os.W_OK):  # ranks and their tools write there (outputs, caches)
        raise CliError(f"HOME={home} is not writable by uid {os.getuid()} gid {os.getgid()}: run the pod with group 0 "
                       "(runAsGroup: 0; the image's home is group-0 writable) or set HOME to a writable directory "
                       "(an emptyDir)")
    if role.kind == "worker":
        worker.main(args=[], prog_name="mpirt worker")
    if not command:
        raise CliError(f"this pod is the {role.kind}, and there is no command to run: give it as the container's "
                       "args (e.g. python train.py)")
    launch.main(args=["--", *command], prog_name="mpirt launch")


@main.group()
def bench() -> None:
    """Benchmarks whose results are JSON first."""


@bench.command(
    "allreduce",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
)
@click.option("--np", "np_", type=click.IntRange(min=1), envvar="MPIRT_NP",
              help="Start this many local ranks with mpirun (omit when already under mpirun).")
@click.option("--mpirun", envvar="MPIRT_MPIRUN", help="mpirun to use (default: the one matching mpi4py's MPI).")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench_allreduce(np_: int | None, mpirun: str | None, args: tuple[str, ...]) -> None:
    """Allreduce bandwidth and latency for every core algorithm (nccl-tests style).

    All other options go to mpirt-allreduce-perf; `mpirt bench allreduce --help` lists them."""
    from launcher.mpi import MpiError
    from mpirt.bench.allreduce import AllreduceBenchConfig, run

    if "--help" in args or "-h" in args:
        np_ = None  # help comes from the executable itself, no ranks needed
        args = ("--help",)
    try:
        sys.exit(run(AllreduceBenchConfig(np=np_, mpirun=mpirun, args=args)))
    except MpiError as e:
        raise CliError(str(e)) from e


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


@bench.command("scaling")
@click.option("--out", "-o", required=True, envvar="MPIRT_BENCH_OUT", help="Results file (mpirt.bench/1 JSON).")
@click.option("--max-np", type=click.IntRange(min=1), envvar="MPIRT_BENCH_MAX_NP",
              help="Largest world size; the sweep runs 1, 2, 4, ... up to it (default: every slot).")
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True, envvar="MPIRT_BENCH_REPEATS",
              help="Times each measurement is repeated (median, min, max; cv > 10% is flagged noisy).")
@click.option("--parts", default="collective,train", show_default=True, envvar="MPIRT_BENCH_PARTS",
              help="What to sweep: collective, train.")
@click.option("-b", "--minbytes", default="1K", show_default=True, envvar="MPIRT_BENCH_MINBYTES")
@click.option("-e", "--maxbytes", default="16M", show_default=True, envvar="MPIRT_BENCH_MAXBYTES")
@click.option("-f", "--factor", type=click.IntRange(min=2), default=4, show_default=True, envvar="MPIRT_BENCH_FACTOR")
@click.option("--algos", default="all", show_default=True, envvar="MPIRT_BENCH_ALGOS",
              help="Core algorithms: comma list of mpi, ring, shm, auto, ordered, hier, or all.")
@click.option("-n", "--iters", type=click.IntRange(min=1), envvar="MPIRT_BENCH_ITERS",
              help="Collective iterations per size (default: the harness's, by size).")
@click.option("--shared-buffers", is_flag=True, envvar="MPIRT_BENCH_SHARED_BUFFERS",
              help="Collective sweep on buffers the local ranks share (the harness's -R), as training's buckets are.")
@click.option("--model", type=click.Choice(["comm", "compute", "deep", "cnn"]), default="comm", show_default=True,
              envvar="MPIRT_BENCH_MODEL",
              help="comm: few FLOPs per gradient byte; compute: many; deep: many small layers; "
                   "cnn: a small ResNet with BatchNorm.")
@click.option("--scaling", default="weak,strong", show_default=True, envvar="MPIRT_BENCH_SCALING",
              help="weak: fixed per-rank batch; strong: fixed global batch.")
@click.option("--batch", type=click.IntRange(min=1), default=32, show_default=True, envvar="MPIRT_BENCH_BATCH",
              help="Per-rank batch for weak scaling.")
@click.option("--global-batch", type=click.IntRange(min=1), envvar="MPIRT_BENCH_GLOBAL_BATCH",
              help="Global batch for strong scaling (default: batch x max-np).")
@click.option("--steps", type=click.IntRange(min=1), default=10, show_default=True, envvar="MPIRT_BENCH_STEPS",
              help="Timed training steps per repeat.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              envvar="MPIRT_BENCH_DEVICE")
@click.option("--hostfile", envvar="MPIRT_HOSTFILE", help="Hosts to run on (default: the pod's, else this machine).")
@click.option("-H", "--hosts", envvar="MPIRT_HOSTS", help="Comma-separated hosts, e.g. w0:2,w1:2.")
@click.option("--slots", default="auto", show_default=True, envvar="MPIRT_SLOTS",
              help="Slots per host that does not say (on this machine: its cores).")
@click.option("--oversubscribe", is_flag=True, envvar="MPIRT_BENCH_OVERSUBSCRIBE",
              help="Allow more local ranks than cores (recorded in the results).")
@click.option("--mpirun", envvar="MPIRT_MPIRUN", help="mpirun to use (default: the one matching mpi4py's MPI).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=1), default=1800.0, show_default=True,
              envvar="MPIRT_BENCH_TIMEOUT_S", help="Seconds one job of the sweep may take.")
def bench_scaling(out, max_np, repeats, parts, minbytes, maxbytes, factor, algos, iters, shared_buffers, model, scaling,
                  batch, global_batch, steps, device, hostfile, hosts, slots, oversubscribe, mpirun, timeout_s) -> None:
    """Collective sweep and training throughput (mpirt and torch DDP) at 1, 2, 4, ... ranks.

    Every job starts through `mpirt launch` (ssh settings from MPIRT_SSH_DIR, MPIRT_SSH_PORT);
    the results hold the environment that produced them. Then: `mpirt bench report`."""
    from launcher.hosts import HostError
    from launcher.mpi import MpiError
    from mpirt.bench.report import summary
    from mpirt.bench.scaling import ScalingConfig, ScalingError, run

    cfg = ScalingConfig(out=out, max_np=max_np, repeats=repeats, parts=_csv(parts), minbytes=minbytes,
                        maxbytes=maxbytes, factor=factor, algos=algos, iters=iters, shared_buffers=shared_buffers,
                        model=model,
                        scalings=_csv(scaling), batch=batch, global_batch=global_batch, steps=steps, device=device,
                        hostfile=hostfile, hosts=hosts, slots=slots, oversubscribe=oversubscribe, mpirun=mpirun,
                        timeout_s=timeout_s)
    try:
        doc = run(cfg)
    except (ScalingError, HostError, MpiError) as e:
        raise CliError(str(e)) from e
    click.echo(summary([(Path(out).stem, doc)]))
    click.echo(f"results: {out}  (plots: mpirt bench report {out} --out DIR)")


@bench.command("report")
@click.argument("results", nargs=-1, required=True)
@click.option("--out", "-o", required=True, envvar="MPIRT_REPORT_OUT", help="Directory for the PNGs and summary.md.")
def bench_report(results: tuple[str, ...], out: str) -> None:
    """Plots (busbw per algorithm, efficiency, mpirt vs DDP) and a Markdown summary of RESULTS."""
    from mpirt.bench.report import ReportConfig, ReportError, run
    from mpirt.bench.schema import ResultsError

    try:
        for path in run(ReportConfig(results=results, out=out)):
            click.echo(path)
    except (ResultsError, ReportError) as e:
        raise CliError(str(e)) from e


@bench.command("compare")
@click.argument("base")
@click.argument("new")
@click.option("--threshold", default="5%", show_default=True, envvar="MPIRT_COMPARE_THRESHOLD",
              help="Slowdown that counts as a regression when it is also beyond the measured noise.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of the table.")
def bench_compare(base: str, new: str, threshold: str, as_json: bool) -> None:
    """Per-row ratios NEW/BASE; exit 1 on a regression beyond the threshold and the noise."""
    from mpirt.bench.compare import CompareConfig, run
    from mpirt.bench.schema import ResultsError

    try:
        sys.exit(run(CompareConfig(base=base, new=new, threshold=threshold, as_json=as_json)))
    except (ResultsError, ValueError) as e:
        raise CliError(str(e)) from e


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("-np", "--np", "np_", type=click.IntRange(min=1), envvar="MPIRT_NP",
              help="Ranks to start (default: every slot; locally one per GPU, or --slots, else 1).")
@click.option("--hostfile", envvar="MPIRT_HOSTFILE", help="Hostfile ('host slots=N' or 'host:N' lines).")
@click.option("-H", "--hosts", envvar="MPIRT_HOSTS", help="Comma-separated hosts, e.g. w0:2,w1:2.")
@click.option("--slots", default="auto", show_default=True, envvar="MPIRT_SLOTS",
              help="Slots for hosts that do not say: a number, or auto (operator variable, GPUs, 1).")
@click.option("--ssh-dir", default="/root/.ssh", show_default=True, envvar="MPIRT_SSH_DIR",
              help="Where the job's ssh Secret is mounted.")
@click.option("--ssh-port", type=int, default=2222, show_default=True, envvar="MPIRT_SSH_PORT")
@click.option("--wait", "wait_s", type=click.FloatRange(min=0), default=300.0, show_default=True,
              envvar="MPIRT_WAIT_S", help="Seconds to wait for every host (DNS, TCP, ssh) before giving up.")
@click.option("--state-dir", default="", envvar="MPIRT_STATE_DIR",
              help="Private directory for the hostfile and ssh files (default mpirt-launch-<uid> under $TMPDIR, else /tmp).")
@click.option("--log-dir", envvar="MPIRT_LOG_DIR", help="Write each rank's output to LOG_DIR/rank-<r>.log too.")
@click.option("--mpirun", envvar="MPIRT_MPIRUN", help="mpirun to use (default: the one matching mpi4py's MPI).")
@click.option("--dry-run", is_flag=True, envvar="MPIRT_DRY_RUN", help="Print the mpirun argv and env as JSON; run nothing.")
@click.option("--grace", "grace_s", type=click.FloatRange(min=0), default=10.0, show_default=True,
              envvar="MPIRT_GRACE_S", help="On SIGTERM/SIGINT (or the time limit), seconds every rank gets to end "
                                             "after its SIGTERM, before the kill.")
@click.option("--tag-output/--no-tag-output", default=True, envvar="MPIRT_TAG_OUTPUT",
              help="Prefix each output line with its rank, as \"[RANK] \" under every MPI (--no-tag-output: lines "
                   "as the ranks wrote them; --log-dir then keeps them all in rank-launcher.log).")
@click.option("--profile", envvar="MPIRT_PROFILE", help="Algorithm profile: rl, debug, or one from MPIRT_PROFILES.")
@click.option("--env-defaults/--no-env-defaults", default=True, envvar="MPIRT_ENV_DEFAULTS",
              help="Set NCCL/UCX/MPI defaults for the network tier found on every host (mpirt env --explain).")
@click.option("--sidecar-quit", default="auto", show_default=True, envvar="MPIRT_SIDECAR_QUIT",
              help="When the job ends, stop the pod's mesh sidecar so the Job can complete: auto (Istio's, where "
                   "its agent listens in a pod), none, or the URL to POST to.")
@click.option("--termination-log", default="auto", show_default=True, envvar="MPIRT_TERMINATION_LOG",
              help="Where to write how the job ended, for the pod's status (kubectl describe pod): auto "
                   "(/dev/termination-log where Kubernetes mounted it), none, or the container's "
                   "terminationMessagePath.")
@click.option("--time-limit", "time_limit_s", type=click.FloatRange(min=0, min_open=True), envvar="MPIRT_TIME_LIMIT",
              help="Seconds the job may run (after every host is ready); past it, SIGTERM to every rank, "
                   "SIGKILL after --grace, exit 124. Default: no limit.")
@click.option("--max-restarts", type=click.IntRange(min=0), default=0, show_default=True, envvar="MPIRT_MAX_RESTARTS",
              help="Run the job again after a failure (not after SIGTERM or the time limit), this many times at "
                   "most; ranks see MPIRT_RESTART (and TORCHELASTIC_RESTART_COUNT), and `mpirt train` resumes.")
@click.option("-x", "--env", "env", multiple=True, envvar="MPIRT_ENV", metavar="NAME[=VALUE]",
              help="Give every rank this variable, with VALUE or the value it has here (repeatable; "
                   "MPIRT_ENV: space-separated). Without it ranks get PATH, LD_LIBRARY_PATH, PYTHONPATH, "
                   "MPIRT_*, NCCL_*, UCX_*, TORCH_*, OMP_*, MKL_* from here and what their own host's "
                   "container sets.")
@click.option("--output-ranks", default="all", show_default=True, envvar="MPIRT_OUTPUT_RANKS",
              help="Whose output to show: all, or ranks such as 0 or 0,4-7 (the others' still goes to --log-dir "
                   "and into the root cause of a failure).")
@click.option("--timestamp-output", is_flag=True, envvar="MPIRT_TIMESTAMP_OUTPUT",
              help="Start each output line (console and --log-dir) with the UTC time it arrived.")
@click.option("--guard/--no-guard", default=True, envvar="MPIRT_GUARD",
              help="Run a Python command (python SCRIPT, -m MODULE, -c CODE) as python -m mpirt ..., where that "
                   "Python has mpirt: one rank's exception stops the job and is its root cause, a stop leaves "
                   "each rank's stack, torchrun's RANK... are set (--no-guard: the command as given).")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def launch(np_, hostfile, hosts, slots, ssh_dir, ssh_port, wait_s, state_dir, log_dir, mpirun, dry_run, grace_s,
           tag_output, profile, env_defaults, sidecar_quit, termination_log, time_limit_s, max_restarts, env,
           output_ranks, timestamp_output, guard, command) -> None:
    """Run COMMAND on MPI ranks and report the root cause if it fails.

    Hosts come from --hostfile / -H, else from the pod (mpi-operator, Kubeflow Trainer,
    Volcano); with none, ranks run on this machine without ssh.

    \b
    mpirt launch -np 2 -- mpirt train --model mlp --steps 200"""
    from launcher.hosts import HostError
    from launcher.launch import LaunchConfig, run
    from launcher.mpi import MpiError
    from launcher.ssh import SshSetupError

    try:
        sys.exit(run(LaunchConfig(command=command, np=np_, mpirun=mpirun, dry_run=dry_run, grace_s=grace_s,
                                  tag_output=tag_output, hostfile=hostfile, hosts=hosts, slots=slots,
                                  ssh_dir=ssh_dir, ssh_port=ssh_port, wait_s=wait_s, state_dir=state_dir,
                                  log_dir=log_dir, profile=profile, env_defaults=env_defaults,
                                  sidecar_quit=sidecar_quit, termination_log=termination_log,
                                  time_limit_s=time_limit_s, max_restarts=max_restarts, env=env,
                                  output_ranks=output_ranks, timestamp_output=timestamp_output, guard=guard)))
    except (MpiError, HostError, SshSetupError, ValueError) as e:
        raise CliError(str(e)) from e


@main.command("probe", hidden=True)
@click.option("--peer", help="An address or name of another host (picks the interface routing to it).")
@click.option("--root", default="/", show_default=True, envvar="MPIRT_SYSFS_ROOT")
def probe_cmd(peer, root) -> None:
    """This host's detection result as JSON (`mpirt launch` runs it on every host over ssh)."""
    import json
    import socket
    from pathlib import Path

    from launcher import fleet

    if peer:
        try:
            peer = socket.gethostbyname(peer)
        except OSError as e:
            raise CliError(f"--peer {peer}: cannot resolve it ({e})") from e
    found = fleet.local(socket.gethostname(), Path(root), peer, env=os.environ)
    if found.probe is None:
        raise CliError(found.error)
    click.echo(json.dumps(fleet.to_json(found)))


@main.command("where")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=1), default=20.0, show_default=True,
              envvar="MPIRT_WHERE_TIMEOUT", help="Seconds to wait for the launcher's answer.")
def where_cmd(timeout_s) -> None:
    """Where every rank of the job running here is now, without stopping it: run it where the
    launcher runs (kubectl exec LAUNCHER-POD -- mpirt where; in a worker pod, that pod's ranks).
    Ranks run under `python -m mpirt` answer, grouped by the line of their own code they are in;
    the job's log says it too."""
    from launcher import where

    try:
        click.echo(where.ask(timeout_s), nl=False)
    except ValueError as e:  # not CliError: this pod's termination message is the job's, not ours
        raise click.ClickException(str(e)) from e


@main.command("signal-ranks", hidden=True)
@click.option("--signal", "sig", type=click.Choice(["TERM", "KILL"]), default="TERM", show_default=True)
@click.option("--dump", is_flag=True, help="Ask for stack dumps instead, and print them; the ranks go on.")
@click.argument("job")
def signal_ranks_cmd(sig, dump, job) -> None:
    """Signal this host's ranks of JOB (`mpirt launch` runs it on every host when it stops a job);
    prints how many it signalled, or with --dump what they dumped."""
    import signal

    from launcher import ranks

    try:
        ranks.check_job_id(job)
    except ValueError as e:
        raise CliError(str(e)) from e
    if dump:
        click.echo(ranks.dumps_now(job), nl=False)
    else:
        click.echo(len(ranks.send(ranks.find(ranks.table(), job=job), signal.Signals[f"SIG{sig}"])))


@main.command("env")
@click.option("--profile", envvar="MPIRT_PROFILE", help="Algorithm profile: rl, debug, or one from MPIRT_PROFILES.")
@click.option("--explain", is_flag=True, help="Show each value's source and reason.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document: the probe and the variables.")
@click.option("--peer", envvar="MASTER_ADDR", help="An address of another host (picks the interface routing to it).")
@click.option("--root", default="/", show_default=True, envvar="MPIRT_SYSFS_ROOT",
              help="Root of the sysfs/dev/proc trees to read (a fixture tree in tests).")
@click.option("--mpirun", envvar="MPIRT_MPIRUN", help="mpirun whose variables to include (default: the one found).")
@click.option("--ranks", type=click.IntRange(min=1), envvar="MPIRT_ENV_RANKS",
              help="Ranks this host would run: adds what follows from its CPUs (OMP_NUM_THREADS, MPI's waiting).")
def env_cmd(profile, explain, as_json, peer, root, mpirun, ranks) -> None:
    """The environment mpirt sets for this host: network tier, interface, NCCL/UCX/MPI defaults."""
    import json
    import os
    import socket
    from pathlib import Path

    from launcher import fleet
    from launcher.envdefaults import EnvError, load_profiles, resolve
    from launcher.mpi import MpiError, detect, find_mpirun

    here = fleet.local(socket.gethostname(), Path(root), peer)
    if here.probe is None:
        raise CliError(here.error)
    found = here.probe
    libs = ["nccl", "ucx"]
    try:
        libs.append(detect(find_mpirun(mpirun)).key)
    except MpiError:
        pass
    try:
        values = resolve(found.tier, libs, os.environ, iface=found.iface, hcas=found.hcas, topology=here.topology,
                         profile=profile, profiles=load_profiles(os.environ.get("MPIRT_PROFILES")),
                         cpus=fleet.crowded([here], {here.host: ranks}) if ranks else None)
    except EnvError as e:
        raise CliError(str(e)) from e
    if as_json:
        click.echo(json.dumps({"probe": found.to_json(), "profile": profile, "libraries": libs,
                               "variables": [v.__dict__ for v in values]}, indent=1))
        return
    click.echo(f"# tier {found.tier}, interface {found.iface or 'unknown'}, profile {profile or 'none'}, "
               f"{len(values)} variables", err=True)
    for note in found.notes:
        click.echo(f"# {note}", err=True)
    width = max((len(f"{v.name}={v.value}") for v in values), default=0)
    for v in values:
        line = f"{v.name}={v.value}"
        click.echo(f"{line.ljust(width)}  # {v.source}: {v.reason}" if explain else line)


@main.command()
@click.option("--hostfile", envvar="MPIRT_HOSTFILE", help="Also check that every host in it is ready for ssh.")
@click.option("--ssh-dir", default="/root/.ssh", show_default=True, envvar="MPIRT_SSH_DIR")
@click.option("--ssh-port", type=int, default=2222, show_default=True, envvar="MPIRT_SSH_PORT")
@click.option("--wait", "wait_s", type=click.FloatRange(min=0), default=10.0, show_default=True,
              envvar="MPIRT_DOCTOR_WAIT_S", help="Seconds to wait for the hosts.")
@click.option("--root", default="/", show_default=True, envvar="MPIRT_SYSFS_ROOT",
              help="Root of the sysfs/dev/proc trees to read (a fixture tree in tests).")
@click.option("--mpirun", envvar="MPIRT_MPIRUN")
@click.option("--json", "as_json", is_flag=True, help="One JSON document (schema mpirt.doctor/1).")
def doctor(hostfile, ssh_dir, ssh_port, wait_s, root, mpirun, as_json) -> None:
    """Check everything a job depends on; each failure says what to do. Exit 1 on any failure."""
    from launcher.doctor import DoctorConfig, run

    sys.exit(run(DoctorConfig(hostfile=hostfile, ssh_dir=ssh_dir, ssh_port=ssh_port, wait_s=wait_s, root=root,
                              mpirun=mpirun), as_json))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="GPUs, NICs and the matrix as JSON.")
@click.option("--root", default="/", show_default=True, envvar="MPIRT_SYSFS_ROOT",
              help="Root of the sysfs/dev trees to read (a fixture tree in tests).")
def topo(as_json: bool, root: str) -> None:
    """GPUs, RDMA NICs and their affinity matrix, in `nvidia-smi topo -m` notation."""
    import json
    from dataclasses import asdict
    from pathlib import Path

    from launcher.detect.gpu import local, pci_level
    from launcher.detect.rdma import ports

    gpus = local()
    nics = sorted({p.dev for p in ports(Path(root))})
    matrix = [list(row) + [pci_level(Path(root), g.bus_id, n) for n in nics] for g, row in zip(gpus.gpus, gpus.matrix)]
    if as_json:
        click.echo(json.dumps({"gpus": [asdict(g) for g in gpus.gpus], "nics": nics, "matrix": matrix,
                               "p2p_ok": gpus.p2p_ok, "nvlink": gpus.nvlink_any, "mig": gpus.mig,
                               "error": gpus.error}, indent=1))
        return
    if not gpus.gpus:
        click.echo(f"no GPUs ({gpus.error or 'none visible'})")
    else:
        head = [f"GPU{g.index}" for g in gpus.gpus] + [f"NIC{i}" for i in range(len(nics))]
        click.echo("\t" + "\t".join(head) + "\tCPU Affinity\tNUMA Affinity")
        for g, row in zip(gpus.gpus, matrix):
            click.echo(f"GPU{g.index}\t" + "\t".join(row) + f"\t{g.cpu_affinity}\t{g.numa_node}")
        click.echo("\nLegend: X = self, NV# = # NVLinks, PIX = one PCIe switch, PXB = several switches, "
                   "PHB = host bridge, NODE = same NUMA node, SYS = across sockets")
    for i, n in enumerate(nics):
        click.echo(f"NIC{i}: {n}")


@main.command()
@click.option("--port", type=int, default=2222, show_default=True, envvar="MPIRT_SSH_PORT", help="Port sshd listens on.")
@click.option("--ssh-dir", default="/root/.ssh", show_default=True, envvar="MPIRT_SSH_DIR",
              help="Where the job's ssh Secret is mounted (authorized_keys; optional ssh_host_*_key).")
@click.option("--state-dir", default="", envvar="MPIRT_STATE_DIR",
              help="Private writable directory for sshd's files (default mpirt-sshd-<uid> under $TMPDIR, else /tmp).")
@click.option("--listen", default="0.0.0.0", show_default=True, envvar="MPIRT_SSH_LISTEN")
@click.option("--sshd", default="/usr/sbin/sshd", show_default=True, envvar="MPIRT_SSHD")
@click.option("--grace", "grace_s", type=click.FloatRange(min=0), default=10.0, show_default=True,
              envvar="MPIRT_GRACE_S", help="On SIGTERM, seconds the ranks running here get to end (they get "
                                             "SIGTERM at once, SIGKILL after) while sshd serves on.")
@click.option("--check", "check_only", is_flag=True, help="Write the config, validate it with sshd -t, exit.")
def worker(port: int, ssh_dir: str, state_dir: str, listen: str, sshd: str, grace_s: float, check_only: bool) -> None:
    """Run a hardened sshd in the foreground (the worker pod's command), as root or any UID."""
    from launcher.ssh import SshSetupError
    from launcher.sshd import WorkerConfig, run

    try:
        sys.exit(run(WorkerConfig(port=port, ssh_dir=ssh_dir, state_dir=state_dir, listen=listen, sshd=sshd,
                                  grace_s=grace_s, check_only=check_only)))
    except SshSetupError as e:
        raise CliError(str(e)) from e


@main.command()
@click.option("--model", type=click.Choice(["mlp", "transformer", "cnn"]), default="mlp", show_default=True,
              envvar="MPIRT_TRAIN_MODEL", help="cnn: a small ResNet with BatchNorm on 16 x 16 images.")
@click.option("--steps", type=int, default=200, show_default=True, envvar="MPIRT_TRAIN_STEPS")
@click.option("--batch-size", type=int, default=64, show_default=True, envvar="MPIRT_TRAIN_BATCH_SIZE",
              help="Global batch, split across ranks.")
@click.option("--lr", type=float, default=3e-3, show_default=True, envvar="MPIRT_TRAIN_LR")
@click.option("--optimizer", type=click.Choice(["adam", "sgd"]), default="adam", show_default=True,
              envvar="MPIRT_TRAIN_OPTIMIZER")
@click.option("--seed", type=int, default=0, show_default=True, envvar="MPIRT_TRAIN_SEED")
@click.option("--samples", type=int, default=8192, show_default=True, envvar="MPIRT_TRAIN_SAMPLES",
              help="Size of the synthetic dataset.")
@click.option("--hidden", type=click.IntRange(min=1), envvar="MPIRT_TRAIN_HIDDEN",
              help="Model width (the cnn's channels).")
@click.option("--layers", type=click.IntRange(min=1), envvar="MPIRT_TRAIN_LAYERS",
              help="Model depth (the cnn's residual blocks).")
@click.option("--out", default="mpirt-train", show_default=True, envvar="MPIRT_TRAIN_OUT",
              help="Directory for metrics.jsonl, summary.json and checkpoints/.")
@click.option("--checkpoint-every", type=int, default=50, show_default=True, envvar="MPIRT_TRAIN_CHECKPOINT_EVERY",
              help="Checkpoint every K steps (0: only at the end and on SIGTERM).")
@click.option("--keep", type=int, default=3, show_default=True, envvar="MPIRT_TRAIN_KEEP",
              help="Complete checkpoints to keep.")
@click.option("--resume", is_flag=True, envvar="MPIRT_TRAIN_RESUME",
              help="Continue from the newest complete checkpoint in --out (implied in a job that "
                   "`mpirt launch --max-restarts` restarted).")
@click.option("--bucket-mb", type=click.FloatRange(min=0, min_open=True), default=None, envvar="MPIRT_BUCKET_MB",
              help="Gradient bucket size in MiB (default: 2 on CPUs, 25 on GPUs or with PowerSGD; "
                   "benchmarks/buckets.py).")
@click.option("--first-bucket-mb", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              envvar="MPIRT_FIRST_BUCKET_MB")
@click.option("--compression", type=click.Choice(["none", "fp16", "bf16", "powersgd"]), default="none",
              show_default=True, envvar="MPIRT_COMPRESSION",
              help="Gradients on the wire: as they are, in 16 bits, or as PowerSGD's low-rank factors.")
@click.option("--powersgd-rank", type=click.IntRange(min=1), default=4, show_default=True,
              envvar="MPIRT_POWERSGD_RANK", help="Rank of PowerSGD's approximation (--compression powersgd).")
@click.option("--powersgd-start", type=click.IntRange(min=0), default=10, show_default=True,
              envvar="MPIRT_POWERSGD_START", help="Steps averaged exactly before PowerSGD starts.")
@click.option("--algo", type=click.Choice(["auto", "core", "mpi", "ring", "shm", "ordered", "hier", "mpi4py", "torch"]),
              default="auto",
              show_default=True, envvar="MPIRT_ALGO",
              help="How gradients are reduced: auto (NCCL on GPUs where each rank has its own, else core), core "
                   "(the compiled core, its algorithm chosen per size), one of the core's algorithms, mpi4py (no "
                   "core), or torch (torch.distributed).")
@click.option("--overlap/--no-overlap", default=True, envvar="MPIRT_OVERLAP",
              help="Reduce buckets on a communication thread during backward.")
@click.option("--threads", type=click.IntRange(min=1), envvar="MPIRT_TRAIN_THREADS",
              help="torch intra-op threads per rank (default: OMP_NUM_THREADS, which mpirt launch sets, else the "
                   "CPUs this host allows / local ranks).")
@click.option("--verify-every", type=int, default=0, show_default=True, envvar="MPIRT_TRAIN_VERIFY_EVERY",
              help="Check every K steps that all ranks hold identical weights (0: never).")
@click.option("--log-every", type=click.IntRange(min=1), default=10, show_default=True, envvar="MPIRT_TRAIN_LOG_EVERY")
@click.option("--timeline", envvar="MPIRT_TIMELINE",
              help="Write a Chrome-trace timeline of every rank's gradient communication to this file.")
@click.option("--compile", "compile_mode", type=click.Choice(["none", "whole", "split"]), default="none",
              show_default=True, envvar="MPIRT_TRAIN_COMPILE",
              help="torch.compile the model: whole, or split at the gradient buckets (dp.compile(), so reductions "
                   "overlap backward: faster across hosts).")
@click.option("--accumulate", type=click.IntRange(min=1), default=1, show_default=True, envvar="MPIRT_TRAIN_ACCUMULATE",
              help="Backward passes a step, each over a part of the rank's batch, averaged once after the last "
                   "(gradient accumulation: the same step in less memory).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              envvar="MPIRT_TRAIN_DEVICE",
              help="Where each rank trains: auto (its local rank's GPU where torch sees one, else the CPU).")
def train(**options) -> None:
    """Train a built-in model on synthetic data, data-parallel over the ranks of this job.

    Start it under mpirun or `mpirt launch`; alone it runs as one rank. An uncaught error on
    any rank stops every rank and leaves an error record for the launcher."""
    from mpirt.train import TrainConfig

    options["resume"] = options["resume"] or os.environ.get("MPIRT_RESTART", "0") not in ("", "0")
    config = TrainConfig(**options)
    try:
        config.check()
    except ValueError as e:
        raise CliError(str(e)) from e
    from mpirt.errors import abort_on_exception
    from mpirt.train import run

    try:
        code = run(config)
    except Exception as e:  # noqa: BLE001 - one failing rank stops the job
        abort_on_exception(e)
    sys.exit(code)


if __name__ == "__main__":
    main()
