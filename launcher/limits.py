"""The open-files limit, raised to what the container allows before anything starts.

A container often starts with a soft limit of 1024 (containerd 2 and Docker 25 give 1024
soft, the hard limit much higher). The launcher keeps a log file per rank under --log-dir and
Open MPI's mpirun a socket per host; a data loader's workers, NCCL and a checkpoint's shards
open many more in each rank. mpirun, sshd and the ranks inherit the raised limit."""

from __future__ import annotations

import resource

_CAP = 1 << 20  # a hard limit of "unlimited" is taken as this many


def raise_open_files() -> tuple[int, int]:
    """Set the soft RLIMIT_NOFILE to the hard one (at most _CAP); the (before, after) soft."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = _CAP if hard == resource.RLIM_INFINITY else min(hard, _CAP)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):  # a kernel's nr_open below the hard limit: keep what there is
            return soft, soft
        return soft, want
    return soft, soft
