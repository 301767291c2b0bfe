"""A training loop of your own on mpirt, whole: a map-style Dataset read by DataLoader workers
through mpirt's sampler, gradients averaged by `data_parallel`, a checkpoint every
`--checkpoint-every` steps and when the job is stopped, and `--resume` (or a job that
`mpirt launch --max-restarts` ran again) continuing from the newest one, on the same batches.

    mpirt launch -np 2 -- python -m mpirt examples/train_loop.py --steps 300 --out run

Only rank 0 needs to see the checkpoints: it loads one, and `data_parallel` hands its weights and
optimizer state to every rank, as the broadcast below does the rest.
"""

import argparse
import os
import sys

import torch
from torch import nn

from mpirt import checkpoint
from mpirt.comm import world as comm_world
from mpirt.data_parallel import data_parallel
from mpirt.sampler import DistributedSampler
from mpirt.stop import Stop
from mpirt.world import pick_device, world


class Waves(torch.utils.data.Dataset):
    """y = sin(x · a): made up from a seed, with the shape of any dataset (len, getitem)."""

    def __init__(self, samples: int, dim: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(samples, dim, generator=g)
        self.y = torch.sin(self.x @ torch.randn(dim, 1, generator=g))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=64, help="global batch, over all ranks")
    p.add_argument("--samples", type=int, default=4000)
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes per rank")
    p.add_argument("--out", default="train-loop")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--device", default="auto", help="auto (this rank's GPU where there is one), cpu or cuda")
    args = p.parse_args()

    w, comm = world(), comm_world()
    device = pick_device(args.device, w.local_rank)
    stop = Stop()  # SIGTERM from now on: every rank finishes the same step, then checkpoints
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // w.local_size))
    torch.manual_seed(0)
    data = Waves(args.samples, 16)
    model = nn.Sequential(nn.Linear(16, 128), nn.Tanh(), nn.Linear(128, 128), nn.Tanh(), nn.Linear(128, 1)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sampler = DistributedSampler(data, global_batch=args.batch, rank=w.rank, world=w.size, seed=0)
    ckpt_dir, step = os.path.join(args.out, "checkpoints"), 0
    if args.resume or int(os.environ.get("MPIRT_RESTART", "0")):
        found = checkpoint.load_latest(ckpt_dir) if w.rank == 0 else None
        if found:
            model.load_state_dict(found[1]["model"])
            opt.load_state_dict(found[1]["optimizer"])
        state = comm.bcast(found and {"step": found[0], "sampler": found[1]["sampler"]}, root=0)
        if state:
            step = state["step"]
            sampler.load_state_dict(state["sampler"])
    dp = data_parallel(model, opt)  # rank 0's weights and optimizer state on every rank
    loader = sampler.loader(data, num_workers=args.workers, persistent_workers=args.workers > 0,
                            pin_memory=device.type == "cuda")
    if w.rank == 0:
        print(f"training on {w.size} ranks ({device.type}) from step {step} to {args.steps}", flush=True)
    while step < args.steps:
        for shard, batch in loader:
            step += 1
            opt.zero_grad()
            if batch is not None:  # a rank whose part of a short last batch is empty only steps
                x, y = (t.to(device, non_blocking=True) for t in batch)
                loss = nn.functional.mse_loss(model(x), y)
                (loss * shard.weight(w.size)).backward()
            opt.step()
            if w.rank == 0 and step % 10 == 0:
                print(f"step {step} epoch {shard.epoch} loss {loss.item():.5f}", flush=True)
            stopping = stop.agreed()
            if stopping or step == args.steps or step % args.checkpoint_every == 0:
                if w.rank == 0:
                    checkpoint.save(ckpt_dir, step, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                                     "sampler": sampler.state_dict()})
            if stopping:
                print(f"rank {w.rank}: stopped after step {step}", flush=True)
                return stop.exit_code
            if step == args.steps:
                break
    dp.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
