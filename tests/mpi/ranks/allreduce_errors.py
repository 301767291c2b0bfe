"""Bad buffers given to mpirt.allreduce: rank 0 prints each error message as JSON."""

import json

import numpy as np

from mpirt.core import allreduce

cases = {
    "noncontiguous": lambda: allreduce(np.zeros((4, 4), np.float32)[:, 0]),
    "mismatch": lambda: allreduce(np.zeros(4, np.float32), np.zeros(3, np.float32)),
    "dtype": lambda: allreduce(np.zeros(4, np.int64)),
    "op": lambda: allreduce(np.zeros(4, np.float32), op="prod"),
    "algo": lambda: allreduce(np.zeros(4, np.float32), algo="tree"),
    "readonly": lambda: allreduce(np.frombuffer(b"\0" * 16, np.float32)),
}
report = {}
for name, call in cases.items():
    try:
        call()
        report[name] = "no error"
    except (ValueError, TypeError) as e:
        report[name] = str(e)

# A CUDA tensor where the core has no usable device must fail with a message, not crash.
import torch  # noqa: E402

if torch.cuda.is_available():
    report["cuda"] = "CUDA buffers were given but"  # a real device: nothing to refuse here
else:
    from mpirt.comm import MPI, core  # noqa: E402

    try:
        core().allreduce(MPI.COMM_WORLD.py2f(), 1, 1, 4, "float32", "sum", "mpi", "cuda")
        report["cuda"] = "no error"
    except RuntimeError as e:
        report["cuda"] = str(e)[: len("CUDA buffers were given but")]
print(json.dumps(report))
