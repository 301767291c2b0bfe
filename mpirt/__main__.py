"""``python -m mpirt script.py [args]`` / ``-m module`` / ``-c code``: run a program on a rank so
that an uncaught exception on any rank stops the whole job (instead of leaving the others
hanging in a collective) after writing that rank's error record for the launcher (an exit
with 143 or 130, or a KeyboardInterrupt, is a rank that was told to stop: it ends only that
rank, once every rank is done, as MPI_Finalize waits for them), and that a
SIGTERM (a time limit, a deleted pod) leaves a dump of where the rank was (``mpirt.stacks``).
It also sets torchrun's RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE (``mpirt.rankenv``),
so that a script written for torchrun runs unchanged."""

from __future__ import annotations

import runpy
import sys

USAGE = "usage: python -m mpirt (SCRIPT | -m MODULE | -c CODE) [ARGS...]"
# 128 + SIGINT, 128 + SIGTERM: the exit of a program that was told to stop (a deleted pod, a
# time limit), not a failure. Such a rank does not abort the job: the others may still be
# writing their part of a checkpoint.
STOPPED = (130, 143)
_HANDOVER_S = 0.05  # many GIL switch intervals (5 ms): a thread waiting for the GIL gets it


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] in ("-m", "-c") and len(argv) < 2:
        print(f"python -m mpirt: {argv[0]} needs an argument\n{USAGE}", file=sys.stderr)
        return 2
    import atexit
    import os

    from mpirt import stacks
    from mpirt.errors import ENV, abort_on_exception, env_rank
    from mpirt.rankenv import torch_env

    atexit.register(_let_threads_finish)  # the first registered runs last, after the program's own
    stacks.arm(os.environ.get(ENV), env_rank())
    add, warnings = torch_env(os.environ)
    os.environ.update(add)
    for warning in warnings:
        print(f"mpirt: rank {env_rank()}: warning: {warning}", file=sys.stderr, flush=True)
    try:
        if argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        elif argv[0] == "-c":
            sys.argv = ["-c", *argv[2:]]
            exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__"})
        else:
            sys.argv = list(argv)
            if not sys.flags.safe_path:  # as `python SCRIPT` has it: the script's modules import each other
                sys.path[0] = os.path.dirname(os.path.realpath(argv[0]))
            runpy.run_path(argv[0], run_name="__main__")
    except KeyboardInterrupt:  # SIGINT: told to stop, as below
        return STOPPED[0]
    except SystemExit as e:
        if e.code in (None, 0):
            return 0
        if e.code in STOPPED:  # its own stop handler is done: the others finish theirs (MPI_Finalize waits)
            return e.code
        if isinstance(e.code, int):
            abort_on_exception(e, code=e.code)
        abort_on_exception(e)
    except BaseException as e:  # noqa: BLE001 - any escape must stop every rank
        abort_on_exception(e)
    return 0


def _let_threads_finish() -> None:
    """Give the GIL away for a moment before the interpreter finalizes. A torch.distributed
    backend thread that just completed a collective still has to drop its Python tensors,
    for which it takes the GIL; once the interpreter is finalizing, Python ends a thread that
    asks for the GIL, from inside a C++ destructor: "terminate called without an active
    exception", SIGABRT, and a whole run reported failed (gloo's threads under DDP: a process
    group the program's objects hold outlives destroy_process_group)."""
    if "torch.distributed" in sys.modules:
        import time

        time.sleep(_HANDOVER_S)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
