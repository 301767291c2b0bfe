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
    "scalar": lambda: allreduce(np.float32(3.0)),
}
report = {}
for name, call in cases.items():
    try:
        call()
        report[name] = "no error"
    except (ValueError, TypeError) as e:
        report[name] = str(e)

# Device names the extension refuses, and CUDA buffers it cannot take: a message, not a crash.
import torch  # noqa: E402

from mpirt.comm import MPI, core  # noqa: E402


def raw(device, addr=1):
    core().allreduce(MPI.COMM_WORLD.py2f(), addr, addr, 4, "float32", "sum", "mpi", device)


host = np.zeros(4, np.float32)
device_cases = {"device-name": lambda: raw("gpu"), "device-index": lambda: raw("cuda:x")}
if torch.cuda.is_available():
    device_cases["host-as-cuda"] = lambda: raw("cuda:0", host.ctypes.data)
    device_cases["no-such-device"] = lambda: raw("cuda:99", host.ctypes.data)
else:
    device_cases["cuda"] = lambda: raw("cuda")
    device_cases["cuda-index"] = lambda: raw("cuda:1")
for name, call in device_cases.items():
    try:
        call()
        report[name] = "no error"
    except (ValueError, RuntimeError) as e:
        report[name] = f"{type(e).__name__}: {e}"
print(json.dumps(report))
