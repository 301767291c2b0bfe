"""torchrun's per-rank variables from the ones an MPI's launcher gives each process, read
before MPI starts (nothing here imports it).

``python -m mpirt`` sets RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE from them, and
``mpirt launch`` sends every rank MASTER_ADDR and MASTER_PORT: a script written for torchrun
(``dist.init_process_group()`` from the environment, DDP, Accelerate, Lightning, the HF
Trainer) then runs unchanged on the ranks mpirun starts, without starting MPI itself.
"""

from __future__ import annotations

# Each launcher's names for (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE), one family per
# launcher: Open MPI 4 and 5 (ORTE, PRRTE), then Hydra (MPICH, Intel MPI). A family is taken
# whole or not at all, so a leftover variable of another launcher never mixes in.
TORCH_NAMES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
FAMILIES = (
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"),
    ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"),
)


def from_launcher(env) -> dict[str, str]:
    """torch's four variables as this process's MPI launcher gives them; empty when no
    family is complete and consistent (not started by an MPI launcher we know)."""
    for family in FAMILIES:
        values = [env.get(name, "") for name in family]
        if not all(v.isdigit() for v in values):
            continue
        rank, size, local_rank, local_size = map(int, values)
        if rank < size and local_rank < local_size <= size:
            return dict(zip(TORCH_NAMES, (str(v) for v in (rank, size, local_rank, local_size))))
    return {}


def torch_env(env) -> tuple[dict[str, str], list[str]]:
    """(the variables to set, warnings): what the launcher says and ``env`` lacks; a value
    already set is kept, but one that disagrees with the launcher is warned about, since
    torch.distributed would then pair the wrong ranks or wait for ranks that never come."""
    found = from_launcher(env)
    add = {k: v for k, v in found.items() if k not in env}
    warnings = [f"{k}={env[k]} is set, but the MPI launcher says {v}: torch.distributed would use {env[k]} "
                f"and pair the wrong ranks or wait for ranks that never come; unset {k} (mpirt sets it)"
                for k, v in found.items() if k in env and env[k] != v]
    return add, warnings
