#!/bin/bash
# Makes a CUDA devel base image where no registry is reachable (the part nvidia/cuda:*-devel
# plays elsewhere): the Debian base of images/base.sh plus CUDA 13.0 from PyPI's nvidia-* wheels
# in /usr/local/cuda (nvcc, runtime, headers, NVML header) and link-time stubs of the driver's
# libcuda and libnvidia-ml in lib64/stubs, which is what UCX's configure links against (NVIDIA's
# devel images ship their own; the NVIDIA container toolkit mounts the real driver at run time).
# Usage: images/cuda-base.sh [NAME]   (needs root, podman, gcc; then
#        images/build.sh localhost/mpirt:gpu --build-arg BASE=NAME --build-arg MPI=openmpi-ucx)
set -euo pipefail
cd "$(dirname "$0")/.."
name=${1:-localhost/mpirt-cuda-base:13.0}
base=docker.io/library/debian:bookworm-slim
if podman image exists "$name"; then
    echo "CUDA base image $name: present"
    exit 0
fi
podman image exists "$base" || images/base.sh "$base"
work=$(mktemp -d /var/tmp/mpirt-cuda.XXXXXX)
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$work/wheels" \
    nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-runtime==13.0.96 \
    nvidia-cuda-cccl==13.0.85 nvidia-nvml-dev==13.0.87
cuda=$work/root/usr/local/cuda-13.0
python3 - "$cuda" "$work"/wheels/*.whl <<'EOF'
"""Merge the wheels' nvidia/cu13/ trees into one toolkit directory, keeping executable bits."""
import os
import sys
import zipfile

root = sys.argv[1]
for wheel in sys.argv[2:]:
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            name = info.filename
            if not name.startswith("nvidia/cu13/") or info.is_dir() or name.endswith(".py"):
                continue
            dest = os.path.join(root, name[len("nvidia/cu13/"):])
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with z.open(info) as src, open(dest, "wb") as out:
                out.write(src.read())
            os.chmod(dest, (info.external_attr >> 16) & 0o777 or 0o644)
EOF
# The layout nvcc.profile and CMake expect, and the unversioned names the linker looks for.
ln -s lib "$cuda/lib64"
mkdir -p "$cuda/targets/x86_64-linux"
for d in include lib lib64; do ln -s "../../${d%64}" "$cuda/targets/x86_64-linux/$d"; done
for so in "$cuda"/lib/lib*.so.[0-9]*; do
    [ -e "${so%.so.*}.so" ] || ln -s "$(basename "$so")" "${so%.so.*}.so"
done
ln -s cuda-13.0 "$work/root/usr/local/cuda"
# Link-time stubs: the symbols configure scripts probe for; every other one resolves against
# the real driver when a program loads (the stubs' sonames are the driver's). Called by mistake,
# they answer as NVIDIA's stubs do: CUDA_ERROR_STUB_LIBRARY (34), NVML_ERROR_LIBRARY_NOT_FOUND (12).
mkdir -p "$cuda/lib/stubs"
echo 'int cuDeviceGetUuid(void) { return 34; } int cuDriverGetVersion(void) { return 34; }' > "$work/cuda.c"
echo 'int nvmlInit(void) { return 12; } int nvmlInit_v2(void) { return 12; }' > "$work/nvml.c"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$cuda/lib/stubs/libcuda.so" "$work/cuda.c"
gcc -shared -fPIC -Wl,-soname,libnvidia-ml.so.1 -o "$cuda/lib/stubs/libnvidia-ml.so" "$work/nvml.c"
"$cuda/bin/nvcc" --version | tail -2
printf '%s\n' "FROM $base" "COPY usr/local/ /usr/local/" \
    "ENV PATH=/usr/local/cuda/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin CUDA_HOME=/usr/local/cuda" \
    > "$work/Containerfile"
podman build --runtime runc -t "$name" -f "$work/Containerfile" "$work/root"
echo "CUDA base image $name: Debian 12 and CUDA 13.0 from PyPI"
