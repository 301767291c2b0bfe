"""What mpirt.world reports and exports on each rank, gathered to rank 0 as one JSON line."""

import json
import os

from mpirt.comm import MPI
from mpirt.world import export_torch_env, world

os.environ["MASTER_PORT"] = "31337"  # set by the user: must win
w = world()
set_now = export_torch_env(w)
mine = {"world": w.__dict__, "set": set_now,
        "env": {k: os.environ[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                                           "MASTER_PORT")}}
everyone = MPI.COMM_WORLD.gather(mine, root=0)
if w.rank == 0:
    print(json.dumps(everyone))
