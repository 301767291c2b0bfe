"""The compiled core across network-namespace hosts: `ordered` gives a serial fold's bits
whatever the layout (one rank per host, two per host), through the path it takes across nodes;
every algorithm is right on two hosts of two ranks (`hier`'s node phases and rings between
real nodes); `auto` follows the launcher's TCP-tier threshold for `ring`, `hier` with several
ranks a host."""

import json
import sys
from pathlib import Path

import pytest

from netns import cluster  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.mpi]

ORDERED = str(Path(__file__).parents[1] / "mpi" / "ranks" / "ordered_bits.py")
AUTO_CHOICE = str(Path(__file__).parent / "ranks" / "auto_choice.py")
MATRIX = str(Path(__file__).parents[1] / "mpi" / "ranks" / "allreduce_matrix.py")
SHARED_ONE_NODE = str(Path(__file__).parents[1] / "mpi" / "ranks" / "shared_one_node.py")


@pytest.mark.parametrize("hosts,slots", [(3, 1), (2, 2)], ids=["3x1", "2x2"])
def test_ordered_across_hosts_gives_the_serial_folds_bits(cluster, hosts, slots):
    c = cluster(hosts)
    names = [f"w{i}" for i in range(hosts)]
    for w in names:
        c.start_worker(w)
    proc = c.launch(names, [sys.executable, ORDERED], slots=slots, timeout=300)
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if '{"size"' in x)
    report = json.loads(line[line.index('{"size"'):])
    assert report["size"] == hosts * slots and report["cases"] == 4 * 3 * 3
    assert report["n_failures"] == 0, "\n".join(report["failures"])


def test_auto_runs_ring_across_tcp_hosts_from_the_launchers_threshold(cluster):
    """On the TCP tier the launcher sets MPIRT_AUTO_RING_MIN_BYTES (1 MiB): `auto` runs `ring`
    (in 60 KiB segments, sleeping between tests) across hosts from there and MPI_Allreduce below; what the user sets wins."""
    c = cluster(3)
    names = ["w0", "w1", "w2"]
    for w in names:
        c.start_worker(w)

    def choice(*extra):
        proc = c.launch(names, [sys.executable, AUTO_CHOICE], *extra, timeout=120)
        assert proc.returncode == 0, proc.stderr
        line = next(x for x in proc.stdout.splitlines() if '{"threshold"' in x)
        return json.loads(line[line.index('{"threshold"'):])

    assert choice() == {"threshold": "1048576", "segment": "61440", "wait": "50",
                        "chosen": {"1048572": "mpi", "1048576": "ring"}, "hier": "ran"}
    assert choice("--env", "MPIRT_AUTO_RING_MIN_BYTES=off", "--env", "MPIRT_RING_SEGMENT_BYTES=8192", "--env",
                  "MPIRT_RING_WAIT_US=0") == {
        "threshold": "off", "segment": "8192", "wait": "0", "chosen": {"1048572": "mpi", "1048576": "mpi"},
        "hier": "ran"}


def test_every_algorithm_on_two_hosts_of_two_ranks_and_auto_picks_hier(cluster):
    """In 4 KiB rounds, so `hier` and `shm` take many rounds with short last ones, and with
    every buffer shared by the ranks of a host (`shm` reduces its slice from both, allreduces
    it across hosts and writes it into both); `auto` runs `hier` from the launcher's threshold
    when every host has several ranks, and `ring` where the hosts hold different numbers."""
    c = cluster(2)
    names = ["w0", "w1"]
    for w in names:
        c.start_worker(w)
    for setting in ("MPIRT_SHM_CHUNK=4096", "MPIRT_TEST_SHARED_BUFFERS=1"):
        proc = c.launch(names, [sys.executable, MATRIX], "--env", setting, slots=2, timeout=600)
        assert proc.returncode == 0, proc.stderr
        line = next(x for x in proc.stdout.splitlines() if '{"size"' in x)
        report = json.loads(line[line.index('{"size"'):])
        assert report["size"] == 4 and report["cases"] == 6 * 5 * 4 * 5 * 2 + 6
        assert report["n_failures"] == 0, "\n".join(report["failures"])
    # one host's ranks with shared buffers, the other's staging: the hosts' calls still pair up (shm, hier)
    proc = c.launch(names, [sys.executable, SHARED_ONE_NODE], "--env", "MPIRT_SHM_CHUNK=4096", slots=2, timeout=120)
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if '{"size"' in x)
    report = json.loads(line[line.index('{"size"'):])
    assert report["cases"] == 2 * 4 * 2 * 3 and report["n_failures"] == 0, "\n".join(report["failures"])

    def choice(slots):
        proc = c.launch(names, [sys.executable, AUTO_CHOICE], slots=slots, timeout=120)
        assert proc.returncode == 0, proc.stderr
        line = next(x for x in proc.stdout.splitlines() if '{"threshold"' in x)
        report = json.loads(line[line.index('{"threshold"'):])
        return report["chosen"], report["hier"]

    assert choice(2) == ({"1048572": "mpi", "1048576": "hier"}, "ran")
    # two ranks on one host and one on the other: `auto` keeps the flat ring, `hier` says why not
    assert choice([2, 1]) == ({"1048572": "mpi", "1048576": "ring"}, "algorithm hier needs the same number of ranks "
                                                                       "on every node; use ring, mpi or auto")
