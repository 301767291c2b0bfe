"""torchrun's variables from each MPI launcher's own (mpirt.rankenv), and the MASTER_ADDR and
MASTER_PORT `mpirt launch` sends (launcher.launch.rendezvous_env, the dry run)."""

import json
import os
import subprocess
import sys

from launcher.launch import rendezvous_env
from mpirt.rankenv import from_launcher, torch_env

OPEN_MPI = {"OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_SIZE": "8", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
            "OMPI_COMM_WORLD_LOCAL_SIZE": "4", "PMIX_RANK": "5"}
HYDRA = {"PMI_RANK": "3", "PMI_SIZE": "4", "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "2", "PMI_FD": "9"}


def test_each_launchers_family():
    assert from_launcher(OPEN_MPI) == {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"}
    assert from_launcher(HYDRA) == {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}


def test_an_incomplete_or_impossible_family_gives_nothing():
    assert from_launcher({}) == {}
    assert from_launcher({"PMI_RANK": "0", "PMI_SIZE": "2"}) == {}  # Hydra without its local variables
    assert from_launcher({**HYDRA, "PMI_RANK": "4"}) == {}  # rank not below size
    assert from_launcher({**HYDRA, "MPI_LOCALNRANKS": "9"}) == {}  # more local ranks than ranks
    assert from_launcher({**HYDRA, "PMI_SIZE": "four"}) == {}
    # a stray variable of the other family never mixes in
    mixed = {"OMPI_COMM_WORLD_RANK": "7", "PMI_SIZE": "2", "PMI_RANK": "1", "MPI_LOCALRANKID": "1",
             "MPI_LOCALNRANKS": "2"}
    assert from_launcher(mixed)["RANK"] == "1"


def test_what_is_set_stays_and_a_contradiction_is_said():
    add, warnings = torch_env({**OPEN_MPI, "LOCAL_RANK": "1", "WORLD_SIZE": "2"})
    assert add == {"RANK": "5", "LOCAL_WORLD_SIZE": "4"}
    assert len(warnings) == 1 and warnings[0].startswith("WORLD_SIZE=2 is set, but the MPI launcher says 8")
    assert torch_env({"PATH": "/bin"}) == ({}, [])


def test_rendezvous_keeps_what_the_user_set():
    assert rendezvous_env({}, "10.0.0.2", 29500) == {"MASTER_ADDR": "10.0.0.2", "MASTER_PORT": "29500"}
    assert rendezvous_env({"MASTER_PORT": "1234"}, "10.0.0.2", 29500) == {"MASTER_ADDR": "10.0.0.2"}


def test_local_launch_sends_loopback_and_a_free_port():
    def dry(env=None):
        proc = subprocess.run([sys.executable, "-m", "launcher.cli", "launch", "-np", "2", "--dry-run", "--", "true"],
                              capture_output=True, text=True, timeout=60, env=env)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)["env"]

    env = dry()
    assert env["MASTER_ADDR"] == "127.0.0.1" and 0 < int(env["MASTER_PORT"]) < 65536
    mine = dry({**os.environ, "MASTER_ADDR": "10.1.2.3"})
    assert "MASTER_ADDR" not in mine and "MASTER_PORT" in mine
