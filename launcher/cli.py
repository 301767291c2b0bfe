"""The `mpirt` command. It only translates: options (each also read from an MPIRT_* variable)
become a frozen config, then one run(config) call. Subcommands import their modules lazily,
so `mpirt --help` stays fast and never loads MPI."""

from __future__ import annotations

import sys

import click

from mpirt import __version__


class CliError(click.ClickException):
    exit_code = 2


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="mpirt")
def main() -> None:
    """MPI training runtime and launcher for Kubernetes MPIJobs."""


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


if __name__ == "__main__":
    main()
