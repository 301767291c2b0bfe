#!/bin/bash
# Builds the mpirt image with podman (runc: the default crun does not work on this kind of
# machine) and prints the size of both stages and the build time.
# Usage: images/build.sh [TAG] [podman build options...]   e.g. images/build.sh localhost/mpirt:mpich --build-arg MPI=mpich
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-localhost/mpirt:cpu}
shift || true
images/wheelhouse.sh
commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)
version=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
args=(--runtime runc --build-arg "MPIRT_GIT_COMMIT=$commit" --build-arg "MPIRT_VERSION=$version" "$@")
start=$(date +%s)
podman build "${args[@]}" --target build -t "$tag-build" -f Containerfile .
podman build "${args[@]}" -t "$tag" -f Containerfile .
took=$(( $(date +%s) - start ))
size() { podman image inspect --format '{{.Size}}' "$1" | awk '{printf "%.0f MiB", $1 / 1048576}'; }
echo "image $tag: runtime stage $(size "$tag"), build stage $(size "$tag-build"), built in ${took} s"
