"""`mpirt train --verify-every`'s check at any world size: identical replicas pass; a buffer or
a weight changed on the last rank is named, with the rank. Prints one JSON line on rank 0."""

import json

import torch

from mpirt.comm import MPI
from mpirt.models import ConvNet
from mpirt.train import _verify_replicas

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
torch.manual_seed(0)
model = ConvNet(8, 4, 1, 3)
_verify_replicas(comm, model, 1)
messages = []
for name, tensor in (("blocks.0.1.running_mean", model.blocks[0][1].running_mean), ("head.bias", model.head.bias)):
    with torch.no_grad():
        if rank == size - 1 and size > 1:
            tensor.add_(1.0)
        try:
            _verify_replicas(comm, model, 2)
            messages.append(None)
        except RuntimeError as e:
            messages.append(str(e))
        if rank == size - 1 and size > 1:
            tensor.sub_(1.0)
if rank == 0:
    print(json.dumps({"ranks": size, "messages": messages}), flush=True)
