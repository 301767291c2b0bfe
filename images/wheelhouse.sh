#!/bin/bash
# Fills wheelhouse/ with every wheel the image installs, so the image build never reaches PyPI
# (air-gapped clusters need the same). The requirements come from pyproject.toml; TORCH
# (default torch==2.13.0) is fetched first so a looser requirement never pulls a CUDA build.
# Usage: images/wheelhouse.sh   (uses this machine's pip and its configured indexes)
set -euo pipefail
cd "$(dirname "$0")/.."
torch=${TORCH:-torch==2.13.0}
mkdir -p wheelhouse
mapfile -t reqs < <(python3 -c '
import tomllib
d = tomllib.load(open("pyproject.toml", "rb"))
print("\n".join(d["tool"]["dynamic-metadata"][0]["base"] + d["build-system"]["requires"]))')
python3 -m pip download --quiet --dest wheelhouse --only-binary=:all: --python-version 3.11 \
    "$torch" "${reqs[@]}" ninja mpich
echo "wheelhouse: $(find wheelhouse -name '*.whl' | wc -l) wheels, $(du -sh wheelhouse | cut -f1)"
