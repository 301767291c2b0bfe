#!/usr/bin/env python3
"""Scaling benchmark to commit: `mpirt bench scaling` on this machine's cores, then
`mpirt bench report` into results/scaling-<device>/ (plots and summary.md, shown in README).
Three training models run: "comm" (few FLOPs per gradient byte, where communication decides),
"compute" (the reverse) and "cnn" (a small ResNet with BatchNorm, whose statistics both runtimes
broadcast every step); each writes results/scaling-<device>-<model>.json.

    python benchmarks/scaling.py                  # 1 and 2 ranks here (one per core), 5 repeats
    python benchmarks/scaling.py --max-np 8 --hostfile hosts   # on a cluster, through mpirt launch

Any further options go to `mpirt bench scaling` unchanged.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--max-np", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeats", type=int, default=5)
    args, rest = ap.parse_known_args()
    outs, runs = [], []
    for model in ("comm", "compute", "cnn"):
        out = Path(os.path.relpath(RESULTS / f"scaling-{args.device}-{model}.json"))  # recorded in the results
        parts = ["--parts", "collective,train"] if model == "comm" else ["--parts", "train"]
        runs.append(["mpirt", "bench", "scaling", "--out", str(out), "--max-np", str(args.max_np), "--repeats",
                     str(args.repeats), "--device", args.device, "--model", model, "-b", "1K", "-e", "64M", "-f", "4",
                     "--batch", "256" if model == "compute" else "32", *parts, *rest])
        outs.append(str(out))
    runs.append(["mpirt", "bench", "report", *outs, "--out", str(RESULTS / f"scaling-{args.device}")])
    for cmd in runs:
        rc = subprocess.run(cmd, check=False).returncode
        if rc != 0:
            print(f"{' '.join(cmd[:3])} failed with exit status {rc}", file=sys.stderr)
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
